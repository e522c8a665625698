//! Starting and stopping a node: the bus, the store, one actor per role, the HTTP server.
//!
//! Shutdown order matters: stop accepting HTTP and let in-flight requests finish, stop taking
//! messages from Redis and finish (and acknowledge) those taken, stop the producers (provider),
//! drain the roles (each waits for its running requests), and close the store last so every
//! acknowledged write is committed before the process exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ractor::{Actor, ActorCell};
use tokio::task::JoinHandle;

use crate::actors::app::{AppHandler, AppProtocol};
use crate::actors::auth::{self, AuthHandler, AuthProtocol, AuthShared};
use crate::actors::notify::{NotifyActor, NotifyArgs, NotifyHub};
use crate::actors::provider::{ProviderActor, ProviderArgs, ProviderProtocol};
use crate::actors::stats::{StatsActor, StatsArgs, StatsHub, StatsProtocol};
use crate::actors::store::{self as store_role, StoreHandler, StoreProtocol};
use crate::actors::web::{WebActor, WebArgs};
use crate::actors::{RoleActor, RoleArgs};
use crate::bus::{Bus, RedisLink, Role};
use crate::cluster::{ClusterConfig, ClusterLink, LocalNode};
use crate::configuration::RunArgs;
use crate::domain::{Email, Extra, UserInput, UserName, UserPatch};
use crate::http::HttpState;
use crate::jobs::{JobRegistry, WorkerPool};
use crate::store::{SqliteStore, Store};

/// A running node.
pub struct Node {
    bus: Bus,
    addr: Option<SocketAddr>,
    /// Actors in start order; stopped in the order of `STOP_ORDER`.
    actors: Vec<(Role, ActorCell, JoinHandle<()>)>,
    store: Option<Arc<dyn Store>>,
    hub: Option<Arc<NotifyHub>>,
    redis: Option<Arc<RedisLink>>,
    cluster: Option<Arc<ClusterLink>>,
    /// The app role's job workers, when this node runs the app role and any workers.
    workers: Option<WorkerPool>,
    upkeep: JoinHandle<()>,
    /// Tasks that follow the bus's events for the roles (the auth cache's invalidations).
    followers: Vec<JoinHandle<()>>,
    /// Closes each second of traffic into the stats history.
    stats_clock: JoinHandle<()>,
    stop_timeout: Duration,
}

const STOP_ORDER: [Role; 7] = [
    Role::Web,
    Role::Provider,
    Role::App,
    Role::Auth,
    Role::Notify,
    Role::Stats,
    Role::Store,
];

async fn spawn<A: Actor>(
    actors: &mut Vec<(Role, ActorCell, JoinHandle<()>)>,
    role: Role,
    actor: A,
    args: A::Arguments,
) -> anyhow::Result<()> {
    let (actor_ref, handle) = Actor::spawn(None, actor, args)
        .await
        .with_context(|| format!("the {role} role failed to start"))?;
    actors.push((role, actor_ref.get_cell(), handle));
    Ok(())
}

impl Node {
    /// Starts the roles named in `args` and, with the web role, serves HTTP. Jobs of the
    /// built-in kinds only; see [`Node::start_with`].
    pub async fn start(args: RunArgs) -> anyhow::Result<Node> {
        Node::start_with(args, JobRegistry::default()).await
    }

    /// Like [`Node::start`], with the job kinds of `jobs` (the app role runs them).
    pub async fn start_with(args: RunArgs, jobs: JobRegistry) -> anyhow::Result<Node> {
        crate::cluster::check_supported(args.mongodb.as_deref()).map_err(anyhow::Error::msg)?;
        // ractor_cluster brings rustls with aws-lc-rs, redis and reqwest with ring: rustls then
        // needs the process's provider chosen once (a second install is a harmless error).
        let _ = rustls::crypto::ring::default_provider().install_default();
        crate::domain::password::configure(
            args.tuning.password_hash_concurrency,
            args.tuning.password_hash_queue,
        );
        let metrics = crate::telemetry::metrics();
        let upkeep = crate::telemetry::spawn_metrics_upkeep(metrics.clone());
        // Random, not time-based: nodes started in the same millisecond must not share an id
        // (it names their Redis processing lists and their cluster identity).
        let node_id = format!("node-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let cluster_config =
            ClusterConfig::from_args(&args.cluster, &node_id, args.tuning.role_concurrency)
                .map_err(anyhow::Error::msg)?;
        let redis = match args.redis_config() {
            Some(config) => Some(RedisLink::connect(config, &node_id).await?),
            None => None,
        };
        let roles = &args.roles;
        let stats_hub = StatsHub::new(args.tuning.stats_seconds, args.tuning.stats_minutes);
        let local_node = Arc::new(LocalNode {
            node_id: node_id.clone(),
            roles: roles.0.clone(),
            started: std::time::Instant::now(),
            started_at: chrono::Utc::now(),
            cluster_addr: cluster_config
                .as_ref()
                .map(|c| c.advertised())
                .unwrap_or_default(),
            data_addr: Default::default(),
            stats: stats_hub.clone(),
            redis: redis.clone(),
            http_addr: Default::default(),
        });
        let cluster = match cluster_config {
            Some(config) => Some(ClusterLink::start(config, local_node.clone()).await?),
            None => None,
        };
        if let Some(link) = &cluster {
            let others = link.embedded_stores();
            if roles.contains(Role::Store) && !others.is_empty() {
                link.close().await;
                anyhow::bail!(
                    "the store role already runs on {} with its embedded database; a cluster \
                     on the embedded store has exactly one store node (scale the store out with \
                     a shared backend instead). Start this node without the store role.",
                    others.join(", ")
                );
            }
        }
        let stats_clock = stats_hub.start_clock();
        let bus = Bus::with_transports(args.bus_config(), redis.clone(), cluster.clone());
        let concurrency = args.tuning.role_concurrency;
        let mut actors = Vec::new();

        let mut store: Option<Arc<dyn Store>> = None;
        if roles.contains(Role::Store) {
            let dir = args.data.clone();
            let options = args.sqlite_options();
            let opened = tokio::task::spawn_blocking(move || SqliteStore::open(dir, options))
                .await
                .context("opening the embedded store")?
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| {
                    format!("cannot open the embedded store in {}", args.data.display())
                })?;
            let opened: Arc<dyn Store> = Arc::new(opened);
            store = Some(opened.clone());
            spawn(
                &mut actors,
                Role::Store,
                RoleActor::default(),
                RoleArgs {
                    handler: StoreHandler {
                        store: opened,
                        bus: bus.clone(),
                    },
                    bus: bus.clone(),
                    concurrency,
                },
            )
            .await?;
        }
        let mut followers = Vec::new();
        if roles.contains(Role::Auth) {
            let shared = AuthShared::new(args.auth_config());
            followers.push(shared.follow_account_changes(&bus));
            spawn(
                &mut actors,
                Role::Auth,
                RoleActor::default(),
                RoleArgs {
                    handler: AuthHandler {
                        bus: bus.clone(),
                        shared,
                    },
                    bus: bus.clone(),
                    concurrency,
                },
            )
            .await?;
        }
        let mut workers = None;
        if roles.contains(Role::App) {
            let jobs = match args.jobs.job_hash_delay {
                delay if delay.is_zero() => jobs,
                delay => jobs.register(crate::jobs::hash::HashJob { delay }),
            };
            let wake_workers = Arc::new(tokio::sync::Notify::new());
            spawn(
                &mut actors,
                Role::App,
                RoleActor::default(),
                RoleArgs {
                    handler: AppHandler {
                        bus: bus.clone(),
                        jobs: jobs.clone(),
                        wake_workers: wake_workers.clone(),
                        max_unfinished_jobs: Some(args.tuning.edge.user_max_unfinished_jobs)
                            .filter(|&n| n > 0),
                    },
                    bus: bus.clone(),
                    concurrency,
                },
            )
            .await?;
            if args.jobs.job_workers > 0 {
                workers = Some(WorkerPool::start(
                    bus.clone(),
                    jobs,
                    args.job_config(),
                    wake_workers,
                ));
            }
        }
        if roles.contains(Role::Stats) {
            spawn(
                &mut actors,
                Role::Stats,
                StatsActor,
                StatsArgs {
                    bus: bus.clone(),
                    node_id: node_id.clone(),
                    roles: roles.0.clone(),
                    hub: stats_hub.clone(),
                },
            )
            .await?;
        }
        let mut hub = None;
        if roles.contains(Role::Notify) {
            let notify_hub = NotifyHub::new(args.tuning.client_buffer, args.tuning.event_replay);
            hub = Some(notify_hub.clone());
            spawn(
                &mut actors,
                Role::Notify,
                NotifyActor,
                NotifyArgs {
                    bus: bus.clone(),
                    hub: notify_hub,
                },
            )
            .await?;
        }
        if roles.contains(Role::Provider) {
            spawn(
                &mut actors,
                Role::Provider,
                ProviderActor,
                ProviderArgs {
                    bus: bus.clone(),
                    config: args.provider_config(),
                },
            )
            .await?;
        }
        if let Some(link) = &redis {
            // Roles here take their share of the work other processes put on Redis.
            let local = |role| roles.contains(role);
            if local(Role::Store) {
                link.serve::<StoreProtocol>(bus.clone());
            }
            if local(Role::Auth) {
                link.serve::<AuthProtocol>(bus.clone());
            }
            if local(Role::App) {
                link.serve::<AppProtocol>(bus.clone());
            }
            if local(Role::Provider) {
                link.serve::<ProviderProtocol>(bus.clone());
            }
            if local(Role::Stats) {
                link.serve::<StatsProtocol>(bus.clone());
            }
            link.relay_events(bus.clone());
        }
        if let Some(link) = &cluster {
            // Other nodes send this node's roles their direct requests (and, without Redis, all).
            let local = |role| roles.contains(role);
            if local(Role::Store) {
                link.serve::<StoreProtocol>(bus.clone(), concurrency)
                    .await?;
            }
            if local(Role::Auth) {
                link.serve::<AuthProtocol>(bus.clone(), concurrency).await?;
            }
            if local(Role::App) {
                link.serve::<AppProtocol>(bus.clone(), concurrency).await?;
            }
            if local(Role::Provider) {
                link.serve::<ProviderProtocol>(bus.clone(), concurrency)
                    .await?;
            }
            if local(Role::Stats) {
                link.serve::<StatsProtocol>(bus.clone(), concurrency)
                    .await?;
            }
        }
        if let Some(email) = &args.admin_email {
            if roles.contains(Role::Store) {
                bootstrap_admin(&bus, email, args.admin_password.as_deref()).await?;
            } else {
                tracing::info!("no store role here: the admin is created by a node that has one");
            }
        }
        let mut addr = None;
        if roles.contains(Role::Web) {
            if args.tuning.edge.raise_open_files {
                crate::http::limits::raise_open_files();
            }
            let listener = crate::http::limits::bind(&args.listen, args.tuning.edge.http_backlog)
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let bound = listener.local_addr()?;
            addr = Some(bound);
            let _ = local_node.http_addr.set(bound);
            let limits = args.http_limits();
            let state = HttpState {
                node: local_node.clone(),
                bus: bus.clone(),
                quotas: Arc::new(crate::http::quotas::Quotas::new(&limits)),
                limits,
                metrics,
                notify: hub.clone(),
                stats: stats_hub.clone(),
            };
            spawn(
                &mut actors,
                Role::Web,
                WebActor,
                WebArgs {
                    listener,
                    state,
                    workers: args.tuning.http_workers,
                },
            )
            .await?;
        }
        tracing::info!(
            node = %node_id,
            roles = ?roles.0.iter().map(|r| r.name()).collect::<Vec<_>>(),
            addr = ?addr,
            redis = redis.is_some(),
            cluster = cluster.is_some(),
            data = %args.data.display(),
            "node started"
        );
        Ok(Node {
            bus,
            addr,
            actors,
            store,
            hub,
            redis,
            cluster,
            workers,
            upkeep,
            followers,
            stats_clock,
            stop_timeout: args.tuning.shutdown_timeout + Duration::from_secs(5),
        })
    }

    /// The HTTP address, when this node runs the web role.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Graceful shutdown: stop accepting, drain in-flight work, commit, close.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        if let Some(hub) = &self.hub {
            hub.close();
        }
        if let Some(link) = &self.cluster {
            // Peers stop routing here at once; requests they already sent are finished.
            link.leave(self.stop_timeout).await;
        }
        for role in STOP_ORDER {
            if role == Role::Provider {
                // HTTP has drained; now stop taking work from Redis and finish what was taken,
                // while the roles that work needs are still running.
                if let Some(link) = &self.redis {
                    link.stop_consumers().await;
                }
            }
            if role == Role::App {
                // No new attempts; running ones report while the store still answers.
                if let Some(workers) = self.workers.take() {
                    workers.stop(self.stop_timeout).await;
                }
            }
            let (stopping, rest): (Vec<_>, Vec<_>) =
                self.actors.drain(..).partition(|(r, _, _)| *r == role);
            self.actors = rest;
            for (_, cell, handle) in stopping {
                // Drain: the mailbox is worked off before the actor stops, so no caller is dropped.
                if let Err(e) = cell.drain_and_wait(Some(self.stop_timeout)).await {
                    tracing::warn!(%role, error = %e, "role did not stop in time");
                    cell.kill();
                }
                let _ = handle.await;
            }
        }
        if let Some(store) = self.store.take() {
            store.close().await;
        }
        if let Some(link) = self.redis.take() {
            link.close().await;
        }
        if let Some(link) = self.cluster.take() {
            link.close().await;
        }
        self.upkeep.abort();
        self.followers.iter().for_each(JoinHandle::abort);
        self.stats_clock.abort();
        tracing::info!("stopped");
    }
}

/// Creates the first admin from configuration. An account that already has the address is
/// made admin only if its password is the configured one: someone who registered the address
/// (say, after the admin changed theirs) is never promoted; that is logged, and the node starts
/// without bootstrapping an admin.
async fn bootstrap_admin(bus: &Bus, email: &str, password: Option<&str>) -> anyhow::Result<()> {
    let password =
        password.context("--admin-email needs --admin-password (GORGON_ADMIN_PASSWORD)")?;
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("admin email: {e}"))?;
    let existing = match store_role::get_credentials(bus, email.as_str().to_string()).await {
        Ok(found) => Some(found),
        Err(crate::Error::NotFound(_)) => None,
        Err(e) => anyhow::bail!("cannot look up the admin account: {e}"),
    };
    let Some((user, hash)) = existing else {
        let input = UserInput {
            name: UserName::parse("admin").map_err(|e| anyhow::anyhow!("{e}"))?,
            email: email.clone(),
            password: password.to_string(),
            group: 0,
            extra: Extra::default(),
            admin: true,
        };
        let user = auth::new_user(crate::domain::new_id(), input)
            .await
            .map_err(|e| anyhow::anyhow!("admin password: {e}"))?;
        store_role::insert_user(bus, user)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the admin: {e}"))?;
        tracing::info!(email = %email.as_str(), "admin account created");
        return Ok(());
    };
    let matches = crate::domain::password::verify(password.to_string(), hash)
        .await
        .map_err(|e| anyhow::anyhow!("cannot check the admin password: {e}"))?;
    if !matches {
        tracing::error!(
            email = %email.as_str(),
            admin = user.admin,
            "GORGON_ADMIN_EMAIL names an existing account whose password is not \
             GORGON_ADMIN_PASSWORD: it is left as it is and not made admin (an account this node \
             did not create is never promoted); no admin was bootstrapped"
        );
        return Ok(());
    }
    if !user.admin {
        store_role::update_user(
            bus,
            user.id,
            UserPatch {
                admin: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot promote the admin: {e}"))?;
    }
    tracing::info!(email = %email.as_str(), "admin account ready");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
