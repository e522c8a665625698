//! What the test servers (SecantusDB, PostgreSQL) share: starting them so that none outlives the
//! test process, free ports, database names, and whether a missing server skips or fails a test.
//!
//! A server runs in a process group of its own and gets SIGKILL from the kernel when the test process dies
//! (`PR_SET_PDEATHSIG`, armed from a thread that lives as long as the process), even one shared
//! through a `static` (statics are never dropped).

#![allow(dead_code)]

/// Whether a missing tool fails the test instead of skipping it.
pub fn tools_required() -> bool {
    match std::env::var("GORGON_REQUIRE_TOOLS") {
        Ok(v) => !v.is_empty() && v != "0",
        Err(_) => false,
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Starts `command` so that it dies with the test process (see the module's doc); shared with
/// `gorgon chaos`, which starts its servers the same way.
pub use gorgon::chaos::servers::spawn_tied as spawn_tied_to_process;

/// A database name no other test uses: `prefix` and a fresh UUID (MongoDB and PostgreSQL allow 63
/// bytes).
pub fn unique_database(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
