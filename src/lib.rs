//! Gorgon: a message-driven web application platform.
//!
//! One binary runs a whole application: every role (`web`, `auth`, `app`, `store`, `provider`,
//! `notify`, `stats`) is a `ractor` actor, and roles talk only through the [`bus`], addressed by
//! role name. On a laptop every role lives in one process over the embedded store; the same code
//! runs as one node of a cluster when the bus is given a transport between processes.
//!
//! Where to look:
//! - a role: its line in `src/roles.rs` (the table of roles) and `src/actors/<role>.rs`
//! - a route: `src/http/<resource>.rs`
//! - a message: the `requests!` table at the top of the file of the role that receives it; its
//!   queue is named after that role (`q:{role}`, see `src/bus/redis/keys.rs`)
//! - the database: `src/store/`
//! - background jobs (handlers, registry, workers): `src/jobs/`
//! - `gorgon chaos` (a local cluster, seeded faults, invariants): `src/chaos/`

pub mod actors;
pub mod bus;
pub mod chaos;
pub mod cluster;
pub mod configuration;
pub mod dlq;
pub mod domain;
pub mod error;
pub mod fake;
pub mod http;
pub mod import_export;
pub mod jobs;
pub mod providers;
pub mod roles;
pub mod seed;
pub mod shutdown;
pub mod sim;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod transfer;

pub use error::Error;
