//! The roles, one file each: its requests (declared once, in a [`requests!`](crate::requests)
//! table at the top of the file), the [`Service`] that answers them, and its `start`, which
//! builds the role from a [`RoleContext`] and spawns its actor.
//!
//! Which roles exist, what each is called and the order they start in is the table in
//! [`crate::roles`]; this module declares one submodule per line of it. Every role runs in the
//! same actor ([`RoleActor`]); the web and notify roles answer no requests (the web role runs the
//! HTTP server, which turns HTTP into bus requests; the notify role feeds bus events to SSE and
//! WebSocket clients).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ractor::{Actor, ActorCell};

use crate::bus::{Bus, RedisLink, Role, RoleActor, RoleArgs, Service};
use crate::cluster::ClusterLink;
use crate::shutdown::Shutdown;
use crate::store::{Backend, BackendOptions, Store};

/// Declares `pub mod <module>;` for each role of the table.
macro_rules! role_modules {
    ($( $(#[$doc:meta])* $role:ident => $module:ident, $name:literal, start $rank:literal, )+) => {
        $( pub mod $module; )+
    };
}

crate::roles::with_roles!(role_modules);

/// The settings of the roles, taken from the command line (`RunArgs::role_settings`). No
/// `Debug`: the provider's secrets are in it.
pub struct RoleSettings {
    /// Requests each role instance works on at once.
    pub concurrency: usize,
    /// The store role's database, and its settings per backend.
    pub backend: Backend,
    pub store: BackendOptions,
    pub auth: auth::AuthConfig,
    pub provider: provider::ProviderConfig,
    /// Unfinished jobs one user may have (none: no bound).
    pub user_max_unfinished_jobs: Option<u32>,
    /// Events buffered per SSE or WebSocket client, and kept for resuming.
    pub client_buffer: usize,
    pub event_replay: usize,
}

/// Builds the HTTP server for the web role, given the notify role's hub when the node has one,
/// and says where it listens. Made by `crate::startup`, which knows HTTP: the roles do not.
pub type HttpFront = Box<
    dyn FnOnce(
            Option<Arc<notify::NotifyHub>>,
        ) -> anyhow::Result<(actix_web::dev::Server, SocketAddr)>
        + Send,
>;

/// What the roles of a node are built from, handed to each role's `start` in start order; the
/// roles started so far leave here what the node and the later roles need.
pub struct RoleContext {
    pub bus: Bus,
    pub shutdown: Shutdown,
    pub settings: RoleSettings,
    pub node_id: String,
    /// The roles of this node.
    pub roles: Vec<Role>,
    /// The job kinds this node's app role accepts.
    pub job_kinds: Vec<String>,
    pub stats_hub: Arc<stats::StatsHub>,
    pub redis: Option<Arc<RedisLink>>,
    pub cluster: Option<Arc<ClusterLink>>,
    /// Taken by the web role.
    pub http: Option<HttpFront>,
    // Left by the roles as they start:
    /// The store role's open database (closed last at shutdown).
    pub store: Option<Arc<dyn Store>>,
    /// The notify role's clients (closed first at shutdown).
    pub hub: Option<Arc<notify::NotifyHub>>,
    /// Set by the app role: wakes its job workers when a job is queued.
    pub wake_workers: Option<Arc<tokio::sync::Notify>>,
    /// Where the web role listens.
    pub addr: Option<SocketAddr>,
}

/// A started role: its actor, and the phase of the node's shutdown that counts the actor's task.
pub type Spawned = (Role, ActorCell, Shutdown);

impl RoleContext {
    /// Runs `service` in a role actor.
    pub async fn spawn<S: Service>(&self, service: S) -> anyhow::Result<Spawned> {
        let (actor, handle) = Actor::spawn(
            None,
            RoleActor::<S>::default(),
            RoleArgs {
                service,
                bus: self.bus.clone(),
                concurrency: self.settings.concurrency,
            },
        )
        .await
        .with_context(|| format!("the {} role failed to start", S::ROLE))?;
        let task = self.shutdown.phase();
        task.watch(handle);
        Ok((S::ROLE, actor.get_cell(), task))
    }
}
