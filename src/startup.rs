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

use crate::actors::notify::NotifyHub;
use crate::actors::stats::StatsHub;
use crate::actors::store as store_role;
use crate::actors::{HttpFront, RoleContext, Spawned};
use crate::bus::{Bus, RedisLink, Role, Transport};
use crate::cluster::{ClusterLink, LocalNode};
use crate::configuration::RunArgs;
use crate::domain::{Email, Extra, UserInput, UserName, UserPatch};
use crate::http::HttpState;
use crate::jobs::{JobRegistry, WorkerPool};
use crate::shutdown::Shutdown;
use crate::store::Store;

/// A running node.
pub struct Node {
    bus: Bus,
    addr: Option<SocketAddr>,
    /// The `--metrics-listen` address, when given.
    metrics_addr: Option<SocketAddr>,
    /// Role actors in start order ([`Role::in_start_order`]); stopped in reverse.
    actors: Vec<Spawned>,
    store: Option<Arc<dyn Store>>,
    hub: Option<Arc<NotifyHub>>,
    redis: Option<Arc<RedisLink>>,
    cluster: Option<Arc<ClusterLink>>,
    /// The app role's job workers, when this node runs the app role and any workers.
    workers: Option<WorkerPool>,
    /// The node's one shutdown: every background task runs on it, every part watches it.
    shutdown: Shutdown,
    stop_timeout: Duration,
    local_node: Arc<LocalNode>,
    /// How long the web role answers `/readyz` with 503 before it stops accepting.
    drain_delay: Duration,
}

/// Starts `role` by calling its file's `start` (one arm per line of [`crate::roles`]).
macro_rules! start_dispatch {
    ($( $(#[$doc:meta])* $role:ident => $module:ident, $name:literal, start $rank:literal, )+) => {
        async fn start_role(role: Role, ctx: &mut RoleContext) -> anyhow::Result<Spawned> {
            match role {
                $( Role::$role => crate::actors::$module::start(ctx).await, )+
            }
        }
    };
}

crate::roles::with_roles!(start_dispatch);

/// What the web role serves: binds `--listen` when the role starts and builds the HTTP server
/// over this node's parts.
fn http_front(
    args: &RunArgs,
    bus: &Bus,
    local_node: &Arc<LocalNode>,
    stats_hub: &Arc<StatsHub>,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    redis: &Option<Arc<RedisLink>>,
    cluster: &Option<Arc<ClusterLink>>,
) -> HttpFront {
    let listen = args.listen.clone();
    let edge = args.tuning.edge.clone();
    let workers = args.tuning.http_workers;
    let limits = args.http_limits();
    let (bus, node, stats, metrics) = (
        bus.clone(),
        local_node.clone(),
        stats_hub.clone(),
        metrics.clone(),
    );
    let (redis, cluster) = (redis.clone(), cluster.clone());
    Box::new(move |notify| {
        if edge.raise_open_files {
            crate::http::limits::raise_open_files();
        }
        let listener = crate::http::limits::bind(&listen, edge.http_backlog)
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener.local_addr()?;
        let _ = node.http_addr.set(bound);
        let state = HttpState {
            node,
            bus,
            quotas: Arc::new(crate::http::quotas::Quotas::new(&limits)),
            limits,
            metrics,
            notify,
            stats,
            redis,
            cluster,
        };
        Ok((crate::http::server(listener, state, workers)?, bound))
    })
}

impl Node {
    /// Starts the roles named in `args` and, with the web role, serves HTTP. Jobs of the
    /// built-in kinds only; see [`Node::start_with`].
    pub async fn start(args: RunArgs) -> anyhow::Result<Node> {
        Node::start_with(args, JobRegistry::default()).await
    }

    /// Like [`Node::start`], with the job kinds of `jobs` (the app role runs them).
    pub async fn start_with(args: RunArgs, jobs: JobRegistry) -> anyhow::Result<Node> {
        // ractor_cluster brings rustls with aws-lc-rs, redis and reqwest with ring: rustls then
        // needs the process's provider chosen once (a second install is a harmless error).
        let _ = rustls::crypto::ring::default_provider().install_default();
        crate::domain::password::configure(
            args.tuning.password_hash_concurrency,
            args.tuning.password_hash_queue,
        );
        let metrics = crate::telemetry::metrics();
        // Every node says which build it runs (the dashboard counts nodes per version).
        metrics::gauge!("gorgon_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        // Bound first, so a taken port stops the node before anything started.
        let metrics_listener = match &args.metrics_listen {
            Some(address) => Some(
                crate::http::limits::bind(address, 128)
                    .with_context(|| format!("cannot listen on {address} (--metrics-listen)"))?,
            ),
            None => None,
        };
        // Random, not time-based: nodes started in the same millisecond must not share an id
        // (it names their Redis processing lists and their cluster identity).
        let node_id = format!("node-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let roles = &args.roles;
        let stats_hub = StatsHub::new(args.tuning.stats_seconds, args.tuning.stats_minutes);
        let shutdown = Shutdown::new();
        shutdown.spawn(crate::telemetry::metrics_upkeep(metrics.clone()));
        shutdown.spawn(stats_hub.clone().clock());
        let metrics_addr = match metrics_listener {
            Some(listener) => {
                let bound = listener.local_addr()?;
                serve_metrics(
                    crate::http::metrics_server(listener, metrics.clone())?,
                    &shutdown,
                );
                tracing::info!(addr = %bound, "metrics listening");
                Some(bound)
            }
            None => None,
        };
        let (redis, cluster, local_node) = connect(&args, &node_id, &stats_hub, &shutdown).await?;
        let bus = Bus::with_transports(
            args.bus_config(),
            redis.clone().map(|l| l as Arc<dyn Transport>),
            cluster.clone().map(|l| l as Arc<dyn Transport>),
        );
        let jobs = match args.jobs.job_hash_delay {
            delay if delay.is_zero() => jobs,
            delay => jobs.register(crate::jobs::hash::HashJob { delay }),
        };
        let http = roles.contains(Role::Web).then(|| {
            http_front(
                &args,
                &bus,
                &local_node,
                &stats_hub,
                &metrics,
                &redis,
                &cluster,
            )
        });
        let mut ctx = RoleContext {
            bus: bus.clone(),
            shutdown: shutdown.clone(),
            settings: args.role_settings(),
            node_id: node_id.clone(),
            roles: roles.0.clone(),
            job_kinds: jobs.kinds().iter().map(|k| k.to_string()).collect(),
            stats_hub: stats_hub.clone(),
            redis: redis.clone(),
            cluster: cluster.clone(),
            http,
            store: None,
            hub: None,
            wake_workers: None,
            addr: None,
        };
        let mut actors = Vec::new();
        for role in Role::in_start_order(&roles.0) {
            if role == Role::Web {
                // Everything the front calls is up: serve other processes, then clients.
                serve_transports(&ctx, &args).await?;
            }
            actors.push(start_role(role, &mut ctx).await?);
        }
        if !roles.contains(Role::Web) {
            serve_transports(&ctx, &args).await?;
        }
        let workers = match (&ctx.wake_workers, args.jobs.job_workers) {
            (Some(wake), n) if n > 0 => Some(WorkerPool::start(
                bus.clone(),
                jobs,
                args.job_config(),
                wake.clone(),
                &shutdown,
            )),
            _ => None,
        };
        tracing::info!(
            node = %node_id,
            roles = ?roles.0.iter().map(|r| r.name()).collect::<Vec<_>>(),
            addr = ?ctx.addr,
            redis = redis.is_some(),
            cluster = cluster.is_some(),
            data = %args.data.display(),
            "node started"
        );
        Ok(Node {
            bus,
            addr: ctx.addr,
            metrics_addr,
            actors,
            store: ctx.store,
            hub: ctx.hub,
            redis,
            cluster,
            workers,
            shutdown,
            stop_timeout: args.tuning.shutdown_timeout + Duration::from_secs(5),
            local_node,
            drain_delay: args.tuning.edge.drain_delay,
        })
    }

    /// The HTTP address, when this node runs the web role.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The `--metrics-listen` address (`/metrics`, `/healthz`), when given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The node's cluster link, when it joined one.
    pub fn cluster(&self) -> Option<&Arc<ClusterLink>> {
        self.cluster.as_ref()
    }

    /// Graceful shutdown: stop accepting, drain in-flight work, commit, close.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        self.local_node
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if self.addr.is_some() && !self.drain_delay.is_zero() {
            // Still serving: the balancer's health checks see 503 and take this node out first.
            tracing::info!(delay = ?self.drain_delay, "draining: /readyz answers 503");
            tokio::time::sleep(self.drain_delay).await;
        }
        if let Some(hub) = &self.hub {
            hub.close();
        }
        if let Some(link) = &self.cluster {
            // Peers stop routing here at once; requests they already sent are finished.
            link.leave(self.stop_timeout).await;
        }
        let mut consuming = self.redis.clone();
        while let Some((role, cell, task)) = self.actors.pop() {
            if role != Role::Web {
                // HTTP has drained; now stop taking work from Redis and finish what was taken,
                // while the roles that work needs are still running.
                if let Some(link) = consuming.take() {
                    link.stop_consumers().await;
                }
            }
            if role == Role::App {
                // No new attempts; running ones report while the store still answers.
                if let Some(workers) = self.workers.take() {
                    workers.stop(self.stop_timeout).await;
                }
            }
            // Drain: the mailbox is worked off before the actor stops, so no caller is dropped.
            if let Err(e) = cell.drain_and_wait(Some(self.stop_timeout)).await {
                tracing::warn!(%role, error = %e, "role did not stop in time");
                cell.kill();
            }
            task.stop().await;
        }
        if let Some(link) = consuming {
            link.stop_consumers().await;
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
        self.shutdown.finish(self.stop_timeout).await;
        tracing::info!("stopped");
    }
}

/// Runs the `--metrics-listen` server until the node's shutdown, the last part to stop (so a
/// scrape during the drain still answers).
fn serve_metrics(server: actix_web::dev::Server, shutdown: &Shutdown) {
    let handle = server.handle();
    let stop = shutdown.clone();
    shutdown.spawn_draining(async move {
        let stopped = async move {
            stop.cancelled().await;
            handle.stop(false).await;
        };
        let (served, _) = tokio::join!(server, stopped);
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
}

/// Connects to Redis and joins the cluster, as configured; the node's description for peers.
async fn connect(
    args: &RunArgs,
    node_id: &str,
    stats_hub: &Arc<StatsHub>,
    shutdown: &Shutdown,
) -> anyhow::Result<(
    Option<Arc<RedisLink>>,
    Option<Arc<ClusterLink>>,
    Arc<LocalNode>,
)> {
    let cluster_config = args
        .cluster
        .cluster_config(node_id, args.tuning.role_concurrency)
        .map_err(anyhow::Error::msg)?;
    let redis = match args.redis_config() {
        Some(config) => Some(RedisLink::connect(config, node_id, shutdown).await?),
        None => None,
    };
    let local_node = Arc::new(LocalNode {
        node_id: node_id.to_string(),
        roles: args.roles.0.clone(),
        store_backend: args
            .roles
            .contains(Role::Store)
            .then(|| args.backend().name()),
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
        draining: Default::default(),
    });
    let cluster = match cluster_config {
        Some(config) => Some(ClusterLink::start(config, local_node.clone(), shutdown).await?),
        None => None,
    };
    if let Some(link) = &cluster {
        if args.roles.contains(Role::Store) {
            if let Err(refusal) = store_nodes_agree(&args.backend(), &link.store_nodes()) {
                link.close().await;
                anyhow::bail!(refusal);
            }
        }
    }
    Ok((redis, cluster, local_node))
}

/// Store nodes of one cluster must share one database: an embedded store belongs to exactly
/// one node, and nodes on different backends would each hold part of the data.
fn store_nodes_agree(
    ours: &crate::store::Backend,
    others: &[(String, String)],
) -> Result<(), String> {
    let names = |pick: &dyn Fn(&str) -> bool| {
        others
            .iter()
            .filter(|(_, b)| pick(b))
            .map(|(n, b)| format!("{n} on {b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !ours.is_shared() && !others.is_empty() {
        return Err(format!(
            "the store role already runs on {}; a cluster on the embedded store has exactly \
             one store node (scale the store out with a shared backend, --store URL, instead). \
             Start this node without the store role.",
            names(&|_| true)
        ));
    }
    let different = names(&|b| b != ours.name());
    if !different.is_empty() {
        return Err(format!(
            "this node's store is {}, but the store role runs on {different}: every store \
             node of a cluster must use the same backend",
            ours.name()
        ));
    }
    Ok(())
}

/// Offers this node's roles to other processes (Redis consumers, cluster gateways), relays
/// events, and creates the configured admin once the store answers.
async fn serve_transports(ctx: &RoleContext, args: &RunArgs) -> anyhow::Result<()> {
    let served: Vec<Role> = args
        .roles
        .0
        .iter()
        .copied()
        .filter(|r| !matches!(r, Role::Web | Role::Notify))
        .collect();
    ctx.bus.serve(&served).await?;
    if let Some(link) = &ctx.redis {
        link.relay_events(ctx.bus.clone());
    }
    if let Some(email) = &args.admin_email {
        if args.roles.contains(Role::Store) {
            bootstrap_admin(&ctx.bus, email, args.admin_password.as_deref()).await?;
        } else {
            tracing::info!("no store role here: the admin is created by a node that has one");
        }
    }
    Ok(())
}

/// Creates the first admin from configuration. An account that already has the address is
/// made admin only if its password is the configured one: someone who registered the address
/// (say, after the admin changed theirs) is never promoted; that is logged, and the node starts
/// without bootstrapping an admin.
async fn bootstrap_admin(bus: &Bus, email: &str, password: Option<&str>) -> anyhow::Result<()> {
    let password =
        password.context("--admin-email needs --admin-password (GORGON_ADMIN_PASSWORD)")?;
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("admin email: {e}"))?;
    let lookup = store_role::GetCredentials {
        email: email.as_str().to_string(),
    };
    let existing = match bus.call(lookup).await {
        Ok(found) => Some((found.user, found.password_hash)),
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
        let user = crate::actors::auth::new_user(crate::domain::new_id(), input)
            .await
            .map_err(|e| anyhow::anyhow!("admin password: {e}"))?;
        bus.call(store_role::InsertUser(user))
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
        bus.call(store_role::UpdateUser {
            id: user.id,
            patch: UserPatch {
                admin: Some(true),
                ..UserPatch::default()
            },
        })
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
