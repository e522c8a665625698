//! `gorgon chaos`: a seeded fault-injecting run of a whole local cluster, with invariants.
//!
//! It starts Redis, the topology's store (embedded, or a PostgreSQL primary with a synchronous
//! standby), the Gorgon nodes and HAProxy on loopback ports; the nodes reach Redis and
//! PostgreSQL through fault proxies. It seeds through the API, then drives an open-loop load
//! through HAProxy while it injects the faults of a plan drawn from the seed (printed first;
//! `--plan` prints it and exits), each healed after its length. Background jobs and SSE clients
//! run alongside. At the end it checks the invariants — every acknowledged write readable
//! exactly once, every accepted job done once, every request answered, no SSE event missed,
//! recovery after each fault — and prints a table per fault. Any FAIL makes the exit code 2.
//!
//! While it runs, each fault is marked on `/dashboard`'s heatmap.

pub mod nodes;
pub mod plan;
pub mod probes;
pub mod proxy;
pub mod report;
pub mod servers;
pub mod topology;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use crate::configuration::ChaosArgs;
use crate::sim::workload::{Mix, Workload};
use nodes::{NodeProcess, Shared};
use plan::{FaultKind, Link, NetMode, Plan};
use proxy::{FaultProxy, Mode};
use report::{Applied, ChaosReport, Check, RequestLog, Sample, TimelineEvent};
use servers::{Haproxy, PgServer, RedisServer};
use topology::{StoreKind, Topology};

const ADMIN_EMAIL: &str = "chaos-admin@example.com";
/// Seeded users and items, through the API before the run.
const SEED_USERS: u64 = 50;
const SEED_ITEMS: u64 = 300;
/// Writer accounts of the load.
const WRITERS: usize = 8;
/// How long a node may take to drain after SIGTERM before it is killed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long jobs may take to finish after the run.
const JOBS_SETTLE: Duration = Duration::from_secs(60);

/// The PostgreSQL pair and the proxy the nodes reach it through.
struct Postgres {
    primary: PgServer,
    standby: Option<PgServer>,
    proxy: FaultProxy,
    /// Data directories are numbered: each failover builds a new standby.
    generation: u32,
}

/// Everything the run started.
struct Cluster {
    dir: PathBuf,
    redis: RedisServer,
    redis_proxy: FaultProxy,
    postgres: Option<Postgres>,
    nodes: Vec<NodeProcess>,
    shared: Shared,
    _haproxy: Haproxy,
    base: String,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Cluster {
    async fn start(topology: &Topology, dir: &Path, args: &ChaosArgs) -> anyhow::Result<Cluster> {
        for program in ["redis-server", servers::haproxy_program()] {
            anyhow::ensure!(
                servers::on_path(program),
                "{program} is not installed (Debian: apt-get install redis-server haproxy)"
            );
        }
        println!("starting redis");
        let redis = RedisServer::start(dir.join("redis")).await?;
        let redis_proxy = FaultProxy::start("redis", loopback(redis.port)).await?;
        let postgres = match topology.store {
            StoreKind::Embedded => None,
            StoreKind::Postgres => {
                let bin = servers::pg_bin().context(
                    "PostgreSQL is not installed (Debian: apt-get install postgresql; or set \
                     GORGON_PG_BIN)",
                )?;
                println!("starting postgresql: a primary and a synchronous standby");
                let primary = PgServer::primary(bin.clone(), dir.join("pg-1")).await?;
                primary.sql("CREATE DATABASE gorgon").await?;
                let standby = PgServer::standby_of(&primary, dir.join("pg-2")).await?;
                let proxy = FaultProxy::start("postgres", loopback(primary.port)).await?;
                Some(Postgres {
                    primary,
                    standby: Some(standby),
                    proxy,
                    generation: 2,
                })
            }
        };
        let shared = Shared {
            bin: match &args.bin {
                Some(bin) => bin.clone(),
                None => std::env::current_exe().context("cannot find this program")?,
            },
            redis_url: format!("redis://{}", redis_proxy.addr()),
            store_url: postgres
                .as_ref()
                .map(|pg| format!("postgres://gorgon@{}/gorgon", pg.proxy.addr())),
            cookie: uuid::Uuid::new_v4().simple().to_string(),
            admin_email: ADMIN_EMAIL.into(),
            admin_password: uuid::Uuid::new_v4().simple().to_string(),
            drop_every_nth_write: args.unsafe_drop_every_nth_write,
        };
        let mut nodes = topology
            .nodes
            .iter()
            .map(|def| NodeProcess::new(def.clone(), dir))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let seeds: Vec<u16> = nodes.iter().map(|n| n.cluster_port).collect();
        // The store's node first: the others' roles call it as soon as they start.
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by_key(|i| !nodes[*i].def.has(crate::bus::Role::Store));
        for i in order {
            println!(
                "starting node {} ({})",
                nodes[i].def.name, nodes[i].def.roles
            );
            nodes[i].start(&shared, &seeds).await?;
        }
        let fronts: Vec<u16> = nodes.iter().filter_map(|n| n.http_port).collect();
        let [a, b] = fronts[..] else {
            bail!("the topology needs exactly two fronts");
        };
        let haproxy = Haproxy::start(&dir.join("haproxy"), [a, b]).await?;
        let base = format!("http://127.0.0.1:{}", haproxy.port);
        Ok(Cluster {
            dir: dir.to_path_buf(),
            redis,
            redis_proxy,
            postgres,
            nodes,
            shared,
            _haproxy: haproxy,
            base,
        })
    }

    fn seeds(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.cluster_port).collect()
    }

    fn node(&mut self, name: &str) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.def.name == name)
            .with_context(|| format!("no node {name}"))
    }

    /// Waits until the balancer answers `/readyz` with 200 several times in a row and the
    /// cluster answers a read.
    async fn wait_ready(&self, http: &reqwest::Client, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut streak = 0;
        while streak < 5 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the cluster was not ready through HAProxy within {} s (logs in {})",
                within.as_secs(),
                self.dir.display()
            );
            let ready = http
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            streak = if ready { streak + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Injects `fault`, waits its length, heals it.
    async fn apply(&mut self, fault: &plan::Fault, run_start: Instant) -> Applied {
        let t = || run_start.elapsed().as_secs_f64();
        let started_s = t();
        let outcome = self.inject_and_heal(fault).await;
        let healed_s = t();
        match outcome {
            Ok(note) => Applied {
                started_s,
                healed_s,
                note,
                healed: true,
            },
            Err(e) => Applied {
                started_s,
                healed_s,
                note: format!("{e:#}"),
                healed: false,
            },
        }
    }

    /// `kill -9` a node, wait `down`, start it again; says how long the start took.
    async fn kill_and_restart(&mut self, name: &str, down: Duration) -> anyhow::Result<Duration> {
        let seeds = self.seeds();
        let i = self.node(name)?;
        self.nodes[i].kill();
        tokio::time::sleep(down).await;
        let restarted = Instant::now();
        self.nodes[i].start(&self.shared, &seeds).await?;
        Ok(restarted.elapsed())
    }

    async fn inject_and_heal(&mut self, fault: &plan::Fault) -> anyhow::Result<String> {
        let seeds = self.seeds();
        match fault.kind {
            FaultKind::Kill => {
                let took = self.kill_and_restart(&fault.target, fault.length).await?;
                Ok(format!(
                    "restarted, ready after {:.2} s",
                    took.as_secs_f64()
                ))
            }
            FaultKind::Pause => {
                let i = self.node(&fault.target)?;
                self.nodes[i].pause();
                tokio::time::sleep(fault.length).await;
                self.nodes[i].resume();
                Ok("resumed".into())
            }
            FaultKind::Drain => {
                let i = self.node(&fault.target)?;
                let (took, clean) = self.nodes[i].terminate(DRAIN_TIMEOUT).await;
                let restarted = Instant::now();
                self.nodes[i].start(&self.shared, &seeds).await?;
                Ok(format!(
                    "drained and exited {} in {:.2} s, ready again after {:.2} s",
                    if clean { "cleanly" } else { "NOT cleanly" },
                    took.as_secs_f64(),
                    restarted.elapsed().as_secs_f64()
                ))
            }
            FaultKind::Redis => {
                self.redis.kill();
                tokio::time::sleep(fault.length).await;
                let restarted = Instant::now();
                self.redis.launch().await?;
                Ok(format!(
                    "restarted from its AOF in {:.2} s",
                    restarted.elapsed().as_secs_f64()
                ))
            }
            FaultKind::Db => match self.postgres.as_mut() {
                Some(pg) => {
                    pg.primary.kill();
                    // The time a failover manager takes to notice and decide.
                    tokio::time::sleep(fault.length).await;
                    let standby = pg
                        .standby
                        .take()
                        .context("no standby to promote (the last one was not rebuilt)")?;
                    let promoted = Instant::now();
                    standby.promote().await?;
                    pg.proxy.retarget(loopback(standby.port))?;
                    let old = std::mem::replace(&mut pg.primary, standby);
                    drop(old);
                    Ok(format!(
                        "standby promoted in {:.2} s; the proxy now points at it",
                        promoted.elapsed().as_secs_f64()
                    ))
                }
                None => {
                    let took = self.kill_and_restart(&fault.target, fault.length).await?;
                    Ok(format!(
                        "store node restarted, ready after {:.2} s",
                        took.as_secs_f64()
                    ))
                }
            },
            FaultKind::Net => {
                let (link, mode) = fault.net.context("a net fault without a link")?;
                let proxy = match link {
                    Link::Redis => &self.redis_proxy,
                    Link::Db => {
                        &self
                            .postgres
                            .as_ref()
                            .context("a db link without PostgreSQL")?
                            .proxy
                    }
                };
                proxy.set(match mode {
                    NetMode::Latency { ms } => Mode::Latency(Duration::from_millis(ms)),
                    NetMode::Drop => Mode::Drop,
                    NetMode::BlackHole => Mode::BlackHole,
                });
                tokio::time::sleep(fault.length).await;
                proxy.set(Mode::Pass);
                Ok("link restored".into())
            }
        }
    }

    /// After a failover: a new synchronous standby of the new primary, so the next `db` fault
    /// loses nothing either. Outside the fault's window: the cluster already writes again.
    async fn rebuild_standby(&mut self) -> anyhow::Result<Option<String>> {
        let Some(pg) = self.postgres.as_mut() else {
            return Ok(None);
        };
        if pg.standby.is_some() {
            return Ok(None);
        }
        let started = Instant::now();
        pg.generation += 1;
        let dir = self.dir.join(format!("pg-{}", pg.generation));
        pg.standby = Some(PgServer::standby_of(&pg.primary, dir).await?);
        Ok(Some(format!(
            "new synchronous standby ready in {:.2} s",
            started.elapsed().as_secs_f64()
        )))
    }
}

/// Puts each fault on the dashboards' heatmap (best effort: a dashboard is not an invariant).
#[derive(Clone)]
struct Annotator {
    http: reqwest::Client,
    base: String,
    token: String,
    run: String,
    /// Marks put, and those the cluster took (200).
    sent: Arc<AtomicU64>,
    taken: Arc<AtomicU64>,
    pending: Arc<Mutex<JoinSet<()>>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Annotator {
    fn mark(&self, fault: &plan::Fault, start_ms: u64, end_ms: Option<u64>) {
        let this = self.clone();
        let id = format!("chaos-{}-{}", self.run, fault.n);
        let body = json!({"text": fault.label(), "start_ms": start_ms, "end_ms": end_ms});
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().spawn(async move {
            let sent = this
                .http
                .put(format!("{}/api/v1/admin/annotations/{id}", this.base))
                .bearer_auth(&this.token)
                .timeout(Duration::from_secs(3))
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    this.taken.fetch_add(1, Ordering::Relaxed);
                }
                Ok(resp) => tracing::debug!(status = %resp.status(), "annotation refused"),
                Err(e) => tracing::debug!(error = %e, "annotation not sent"),
            }
        });
    }
}

/// The open-loop load: `rate` requests a second for `length`, each timed from when it was due.
async fn drive(
    workload: Arc<Workload>,
    log: Arc<RequestLog>,
    mix: Mix,
    rate: f64,
    length: Duration,
    start: Instant,
) {
    let Some(schedule) = crate::sim::schedule::Schedule::new(rate) else {
        return;
    };
    let total = schedule.count(length);
    let slots = Arc::new(Semaphore::new(4096));
    let mut tasks = JoinSet::new();
    let mut n = 0;
    let mut due = crate::sim::schedule::pace(schedule, total, start);
    while let Some(upto) = due.recv().await {
        while n < upto {
            let intended = start + schedule.due(n);
            let op = mix.pick(&mut rand::rng());
            let (workload, log, slots) = (workload.clone(), log.clone(), slots.clone());
            tasks.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let outcome = workload.execute(op).await;
                log.push(Sample::new(
                    intended.saturating_duration_since(start),
                    intended.elapsed(),
                    &outcome,
                ));
            });
            n += 1;
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn login(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "login of {email}: {}",
        resp.status()
    );
    let body: Value = resp.json().await?;
    body["token"]
        .as_str()
        .map(str::to_string)
        .context("login answered without a token")
}

/// Every acknowledged write is readable with its content, and stored exactly once (counted in
/// a full export: once by id, once by its unique title).
async fn writes_exactly_once(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    workload: &Workload,
) -> Check {
    let acked = workload.acked.lock().clone();
    let readable =
        crate::sim::invariants::acknowledged_writes_readable(http, base, &acked, 16).await;
    let mut by_id: HashMap<&str, u32> = acked.iter().map(|w| (w.id.as_str(), 0)).collect();
    let mut by_title: HashMap<&str, u32> = acked.iter().map(|w| (w.title.as_str(), 0)).collect();
    let export = async {
        let resp = http
            .get(format!("{base}/api/v1/export/items?format=ndjson"))
            .bearer_auth(admin)
            .timeout(Duration::from_secs(300))
            .send()
            .await?
            .error_for_status()?;
        let mut body = resp.bytes_stream();
        let mut buffer = Vec::new();
        let mut lines = 0u64;
        while let Some(chunk) = body.next().await {
            buffer.extend_from_slice(&chunk?);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                lines += 1;
                if let Ok(item) = serde_json::from_slice::<Value>(&line) {
                    if let Some(n) = item["id"].as_str().and_then(|id| by_id.get_mut(id)) {
                        *n += 1;
                    }
                    if let Some(n) = item["title"].as_str().and_then(|t| by_title.get_mut(t)) {
                        *n += 1;
                    }
                }
            }
        }
        Ok::<u64, anyhow::Error>(lines)
    };
    let exported = export.await;
    let twice =
        by_id.values().filter(|n| **n > 1).count() + by_title.values().filter(|n| **n > 1).count();
    let missing = by_id.values().filter(|n| **n == 0).count();
    let detail = match &exported {
        Ok(lines) => format!(
            "{}; in an export of {lines} items: {missing} missing, {twice} stored more than once",
            readable.detail
        ),
        Err(e) => format!("{}; the export failed: {e:#}", readable.detail),
    };
    Check {
        name: "every acknowledged write readable, exactly once".into(),
        passed: readable.passed
            && exported.is_ok()
            && missing == 0
            && twice == 0
            && !acked.is_empty(),
        detail,
    }
}

/// Runs `gorgon chaos`; `Ok(false)` when an invariant failed.
pub async fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    let topology = Topology::load(&args.topology)?;
    let kinds = FaultKind::parse_list(&args.faults).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 5000.0,
        "--rate must be above 0 and at most 5000"
    );
    let plan = Plan::draw(args.seed, args.duration, &kinds, &topology)?;
    println!("topology {}: {}", topology.name, describe_nodes(&topology));
    print!("{plan}");
    println!(
        "replay: gorgon chaos --seed {} --duration {}s --topology {} --faults {}",
        args.seed,
        args.duration.as_secs(),
        args.topology,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
    );
    if args.plan {
        return Ok(true);
    }

    let (dir, temp) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new().prefix("gorgon-chaos-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let outcome = run_in(&args, &topology, plan, &dir).await;
    let keep = !matches!(outcome, Ok(true));
    if let Some(temp) = temp {
        if keep {
            let kept = temp.keep();
            println!("logs and data kept in {}", kept.display());
        }
    }
    outcome
}

/// When the plan kills a front (milliseconds from the start).
fn front_kills(plan: &Plan, topology: &Topology) -> Vec<u32> {
    plan.faults
        .iter()
        .filter(|f| f.kind == FaultKind::Kill)
        .filter(|f| topology.fronts().any(|(_, node)| node.name == f.target))
        .map(|f| f.at.as_millis().min(u128::from(u32::MAX)) as u32)
        .collect()
}

fn describe_nodes(topology: &Topology) -> String {
    let nodes: Vec<String> = topology
        .nodes
        .iter()
        .map(|n| format!("{} ({})", n.name, n.roles))
        .collect();
    format!(
        "{} store, redis, haproxy, {}",
        match topology.store {
            StoreKind::Embedded => "embedded",
            StoreKind::Postgres => "postgresql primary + synchronous standby",
        },
        nodes.join(", ")
    )
}

async fn run_in(
    args: &ChaosArgs,
    topology: &Topology,
    plan: Plan,
    dir: &Path,
) -> anyhow::Result<bool> {
    let http = reqwest::Client::builder().timeout(args.deadline).build()?;
    let mut cluster = Cluster::start(topology, dir, args).await?;
    cluster.wait_ready(&http, Duration::from_secs(60)).await?;
    let base = cluster.base.clone();
    println!("cluster ready behind haproxy at {base} (live dashboard: {base}/dashboard)");

    let scenario = crate::sim::Scenario {
        users: SEED_USERS,
        items: SEED_ITEMS,
        provider_rate: 0.0,
        clients: 1,
        rates: vec![args.rate],
        step_seconds: 0.0,
        duration_seconds: plan.duration.as_secs_f64(),
        warmup_seconds: 0.0,
        mix: "read=80,write=15,search=5".into(),
        writers: WRITERS,
        timeout_seconds: args.deadline.as_secs_f64(),
        target: Some(base.clone()),
    };
    println!("seeding {SEED_USERS} users and {SEED_ITEMS} items through the API");
    let target = crate::sim::remote_target(&scenario, &base, &http).await?;
    let writers = crate::sim::writer_tokens(&http, &base, WRITERS).await?;
    let probe_tokens = crate::sim::writer_tokens(&http, &base, 2).await?;
    let admin = login(&http, &base, ADMIN_EMAIL, &cluster.shared.admin_password).await?;
    let connections = crate::sim::connections::Connections::new(&base, 512, args.deadline)?;
    let workload = Workload::new(connections, target.user_ids.clone(), writers);
    let mix = Mix::parse(&scenario.mix).map_err(anyhow::Error::msg)?;

    // Probes: SSE clients and the job writer, from before the first request to after the last.
    let stop = Arc::new(AtomicBool::new(false));
    let sse_http = reqwest::Client::new();
    let sse = probes::SseProbe::start(
        args.sse_clients.max(1),
        sse_http,
        base.clone(),
        probe_tokens[0].clone(),
        stop.clone(),
    );
    let jobs = Arc::new(probes::JobProbe::default());
    let jobs_task = jobs.start(
        http.clone(),
        base.clone(),
        probe_tokens[1].clone(),
        args.jobs_per_second.clamp(0.1, 100.0),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let annotator = Annotator {
        http: http.clone(),
        base: base.clone(),
        token: admin.clone(),
        run: format!("{}-{}", plan.seed, unix_ms()),
        sent: Arc::default(),
        taken: Arc::default(),
        pending: Arc::default(),
    };
    let timeline = Mutex::new(Vec::<TimelineEvent>::new());
    let log = Arc::new(RequestLog::default());
    let start = Instant::now();
    let note = |event: String| {
        let t_s = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        println!("{t_s:>7.1} s  {event}");
        timeline.lock().push(TimelineEvent { t_s, event });
    };
    note(format!(
        "load starts: {} req/s for {} s (baseline {} s)",
        args.rate,
        plan.duration.as_secs(),
        plan.baseline.as_secs()
    ));
    let load = tokio::spawn(drive(
        workload.clone(),
        log.clone(),
        mix,
        args.rate,
        plan.duration,
        start,
    ));
    let mut applied = Vec::with_capacity(plan.faults.len());
    for fault in &plan.faults {
        let due = start + fault.at;
        tokio::time::sleep_until(due.into()).await;
        let from = unix_ms();
        annotator.mark(fault, from, None);
        note(format!("{}: {}", fault.label(), fault.describe()));
        let result = cluster.apply(fault, start).await;
        annotator.mark(fault, from, Some(unix_ms()));
        note(format!(
            "{} {}: {}",
            fault.label(),
            if result.healed {
                "healed"
            } else {
                "NOT healed"
            },
            result.note
        ));
        applied.push(result);
        match cluster.rebuild_standby().await {
            Ok(Some(text)) => note(text),
            Ok(None) => {}
            Err(e) => note(format!("standby not rebuilt: {e:#}")),
        }
    }
    let _ = load.await;
    note("load ends".into());
    let pending = std::mem::take(&mut *annotator.pending.lock());
    pending.join_all().await;
    note(format!(
        "dashboard marks: {} of {} taken by the cluster",
        annotator.taken.load(Ordering::Relaxed),
        annotator.sent.load(Ordering::Relaxed)
    ));
    // Let the last events and jobs land before the probes stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = jobs_task.await;

    println!("checking invariants");
    let samples = log.sorted();
    let (baseline, threshold, rows, recovery) = report::analyse(&plan, &applied, &samples);
    let acked_ids: Vec<String> = workload.acked.lock().iter().map(|w| w.id.clone()).collect();
    let mut invariants = vec![
        writes_exactly_once(&http, &base, &admin, &workload).await,
        jobs.check(&http, &base, &probe_tokens[1], JOBS_SETTLE)
            .await,
        report::all_answered(&samples, args.deadline, &front_kills(&plan, topology)),
        sse.check(&acked_ids),
        recovery,
    ];
    sse.finish().await;
    let healed = applied.iter().all(|a| a.healed);
    invariants.push(Check {
        name: "every fault healed".into(),
        passed: healed,
        detail: format!(
            "{} of {} faults healed as planned",
            applied.iter().filter(|a| a.healed).count(),
            applied.len()
        ),
    });
    let passed = invariants.iter().all(|c| c.passed);
    let report = ChaosReport {
        topology: topology.name.clone(),
        plan,
        rate: args.rate,
        requests: samples.len() as u64,
        baseline_p99_ms: baseline,
        recovery_threshold_ms: threshold,
        faults: rows,
        invariants,
        timeline: timeline.into_inner(),
        series: report::per_second(&samples),
        marks_sent: annotator.sent.load(Ordering::Relaxed),
        marks_taken: annotator.taken.load(Ordering::Relaxed),
        passed,
    };
    print!("{}", report.text());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    println!("stopping the cluster");
    for node in cluster.nodes.iter_mut() {
        node.kill();
    }
    Ok(passed)
}
