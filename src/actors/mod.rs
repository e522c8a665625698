//! The roles, one file each: its requests (declared once, in a [`requests!`](crate::requests)
//! table at the top of the file) and the [`Service`](crate::bus::Service) that answers them.
//!
//! | role | file | answers |
//! | --- | --- | --- |
//! | web | `web.rs` | nothing: it runs the HTTP server, which turns HTTP into bus requests |
//! | auth | `auth.rs` | [`auth::AuthCall`]: register, login, logout, token validation |
//! | app | `app.rs` | [`app::AppCall`]: users and jobs, with who-may-do-what |
//! | store | `store.rs` | [`store::StoreCall`]: every read and write of the database |
//! | provider | `provider.rs` | [`provider::ProviderCall`]: status and signed ingest |
//! | notify | `notify.rs` | nothing: it feeds bus events to SSE and WebSocket clients |
//! | stats | `stats.rs` | [`stats::StatsCall`]: the node's snapshot |
//!
//! Every role runs in the same actor ([`RoleActor`](crate::bus::RoleActor)); which roles a node
//! runs, how each is built and the order they stop in is the table in `crate::startup`.

pub mod app;
pub mod auth;
pub mod notify;
pub mod provider;
pub mod stats;
pub mod store;
pub mod web;
