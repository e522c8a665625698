//! The roles of a node: the one table that names them.
//!
//! Each line is a role: its variant of [`Role`](crate::bus::Role), its file under
//! `src/actors/`, its name (on the command line, in Redis keys and process groups, on the wire)
//! and its place in the start order (a node starts its roles by rank and stops them in reverse:
//! the store first, so every role that needs it finds it; the web front last, so no client
//! arrives before the roles it calls).
//!
//! The table is read by three macros, so that nothing else lists the roles: the bus writes the
//! `Role` enum from it, `crate::actors` declares the role modules, and `crate::startup` starts
//! each role by calling its file's `start`. Adding a role is one line here and its file, which
//! holds the role's requests, its [`Service`](crate::bus::Service) and its `start`.

/// Calls the macro named by its argument with the table of roles, one line each:
/// `Variant => module, "name", start rank,`.
macro_rules! with_roles {
    ($($then:tt)+) => {
        $($then)+! {
            /// The HTTP front: turns HTTP into bus requests.
            Web => web, "web", start 6,
            /// Accounts, logins and tokens.
            Auth => auth, "auth", start 1,
            /// Users and jobs, with who may do what.
            App => app, "app", start 2,
            /// The only role that touches the database.
            Store => store, "store", start 0,
            /// Signed ingest from providers, webhooks out.
            Provider => provider, "provider", start 5,
            /// Bus events to SSE and WebSocket clients.
            Notify => notify, "notify", start 4,
            /// The node's figures.
            Stats => stats, "stats", start 3,
        }
    };
}
pub(crate) use with_roles;
