//! `gorgon sim`: the laptop simulator and the measuring instrument.
//!
//! By default it seeds a fresh embedded store, starts every role in this process, and drives
//! load at it over real HTTP on loopback; with `--target URL` it drives a running node or cluster
//! instead, seeding through the API. It shows progress, prints a line per second, a final table
//! per operation, writes JSON, and checks its own invariants (every acknowledged write readable,
//! every request answered, no 5xx). A failed invariant makes the exit code non-zero.
//!
//! Scenario files (`sim/*.toml`) hold the same settings as the flags; flags win.

pub mod connections;
pub mod invariants;
pub mod report;
pub mod schedule;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

pub use crate::configuration::SimArgs;
use crate::configuration::{RunArgs, SeedArgs};
use crate::startup::Node;
use crate::store::{Backend, StoreUrl};
use invariants::Check;
use report::{OpSummary, Outcome, Recorder, SecondSample};
use schedule::Schedule;
use workload::{Mix, Op, Workload};

/// A resolved scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub users: u64,
    pub items: u64,
    pub provider_rate: f64,
    pub clients: usize,
    /// Empty: closed loop. Otherwise open-loop steps.
    pub rates: Vec<f64>,
    pub step_seconds: f64,
    pub duration_seconds: f64,
    pub warmup_seconds: f64,
    pub mix: String,
    pub writers: usize,
    pub timeout_seconds: f64,
    pub target: Option<String>,
}

impl Scenario {
    pub fn resolve(args: &SimArgs) -> anyhow::Result<Scenario> {
        let file: SimArgs = match &args.scenario {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read scenario {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid scenario {}", path.display()))?
            }
            None => SimArgs::default(),
        };
        let rates = match (&args.rate, &args.rates) {
            (Some(r), _) => vec![*r],
            (None, Some(rs)) => rs.clone(),
            (None, None) => file
                .rate
                .map(|r| vec![r])
                .or(file.rates.clone())
                .unwrap_or_default(),
        };
        if rates.iter().any(|r| Schedule::new(*r).is_none()) {
            anyhow::bail!("every rate must be a positive number of requests per second");
        }
        let mix = args
            .mix
            .clone()
            .or(file.mix)
            .unwrap_or_else(|| "read=90,write=5,search=5".into());
        Mix::parse(&mix).map_err(anyhow::Error::msg)?;
        let scenario = Scenario {
            users: args.users.or(file.users).unwrap_or(10_000),
            items: args.items.or(file.items).unwrap_or(1_000_000),
            provider_rate: args
                .provider_rate
                .or(file.provider_rate)
                .unwrap_or(1000.0)
                .max(0.0),
            clients: args.clients.or(file.clients).unwrap_or(16).max(1),
            rates,
            step_seconds: args
                .step
                .or(file.step)
                .unwrap_or(Duration::from_secs(10))
                .as_secs_f64(),
            duration_seconds: args
                .duration
                .or(file.duration)
                .unwrap_or(Duration::from_secs(30))
                .as_secs_f64(),
            warmup_seconds: args
                .warmup
                .or(file.warmup)
                .unwrap_or(Duration::from_secs(3))
                .as_secs_f64(),
            mix,
            writers: args.writers.or(file.writers).unwrap_or(16).max(1),
            timeout_seconds: args
                .timeout
                .or(file.timeout)
                .unwrap_or(Duration::from_secs(10))
                .as_secs_f64(),
            target: args.target.clone(),
        };
        if scenario.users == 0 && scenario.target.is_none() {
            anyhow::bail!("--users must be at least 1");
        }
        Ok(scenario)
    }
}

/// One measured phase: the closed loop, or one open-loop rate.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub operations: Vec<OpSummary>,
}

/// Everything a run found; `--json` writes this.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub scenario: Scenario,
    pub seed_seconds: Option<f64>,
    pub seed_items_per_second: Option<f64>,
    pub phases: Vec<Phase>,
    pub series: Vec<SecondSample>,
    pub invariants: Vec<Check>,
    pub provider_configured_rate: Option<f64>,
    pub provider_achieved_rate: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub passed: bool,
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub(crate) struct Target {
    base: String,
    pub(crate) user_ids: Vec<Uuid>,
    node: Option<Node>,
    _dir: Option<tempfile::TempDir>,
    seed_seconds: Option<f64>,
    seed_rate: Option<f64>,
}

async fn local_target(
    scenario: &Scenario,
    data: Option<PathBuf>,
    store: Option<StoreUrl>,
) -> anyhow::Result<Target> {
    let (dir, keep) = match data {
        Some(path) => (path, None),
        None => {
            let tmp = tempfile::Builder::new().prefix("gorgon-sim-").tempdir()?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    let backend = Backend::choose(store.as_ref(), &dir);
    println!(
        "seeding {} users and {} items into the {} store at {}",
        scenario.users,
        scenario.items,
        backend.name(),
        backend.location()
    );
    let seeded = crate::seed::run(SeedArgs {
        users: scenario.users,
        items: scenario.items,
        data: dir.clone(),
        store: store.clone(),
        batch: 50_000,
        password: "gorgon-password".into(),
        quiet: false,
        item_ids_out: None,
        user_ids_out: None,
    })
    .await?;
    let rate = scenario.provider_rate.to_string();
    let mut args = RunArgs::local(
        &dir,
        &["--provider-rate", &rate, "--login-per-minute", "100000"],
    )?;
    args.store = store;
    let node = Node::start(args).await?;
    let addr = node.local_addr().context("the node has no web role")?;
    println!("node listening on http://{addr} (live dashboard: http://{addr}/dashboard)");
    Ok(Target {
        base: format!("http://{addr}"),
        seed_seconds: Some(seeded.load_seconds + seeded.index_seconds),
        seed_rate: Some(seeded.items_per_second()),
        user_ids: seeded.user_ids,
        node: Some(node),
        _dir: keep,
    })
}

/// Seeds a running node through its API: registers users, then writes items as them.
pub(crate) async fn remote_target(
    scenario: &Scenario,
    base: &str,
    client: &reqwest::Client,
) -> anyhow::Result<Target> {
    let base = base.trim_end_matches('/').to_string();
    let started = Instant::now();
    let tag = &Uuid::now_v7().simple().to_string()[20..];
    let bar = crate::seed::progress(scenario.users, "users", false);
    let registered: Vec<Option<Uuid>> = futures::stream::iter(0..scenario.users)
        .map(|n| {
            let (client, base, bar) = (client.clone(), base.clone(), bar.clone());
            async move {
                let body = serde_json::json!({"name": format!("Sim {n}"), "email": format!("sim{n}.{tag}@sim.gorgon.test"), "password": "gorgon-password"});
                let resp = client.post(format!("{base}/api/v1/auth/register")).json(&body).send().await.ok()?;
                bar.inc(1);
                let user: serde_json::Value = resp.json().await.ok()?;
                user["id"].as_str().and_then(|s| s.parse().ok())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    bar.finish();
    let user_ids: Vec<Uuid> = registered.into_iter().flatten().collect();
    anyhow::ensure!(
        !user_ids.is_empty(),
        "could not register any user at {base}"
    );
    let writers = writer_tokens(client, &base, scenario.writers).await?;
    let bar = crate::seed::progress(scenario.items, "items", false);
    let timeout = Duration::from_secs_f64(scenario.timeout_seconds);
    let connections = connections::Connections::new(&base, 64, timeout)?;
    let workload = Workload::new(connections, user_ids.clone(), writers);
    let done = Arc::new(AtomicU64::new(0));
    futures::stream::iter(0..scenario.items)
        .map(|_| {
            let (workload, bar, done) = (workload.clone(), bar.clone(), done.clone());
            async move {
                if workload.execute(Op::Write).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                bar.inc(1);
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    Ok(Target {
        base,
        user_ids,
        node: None,
        _dir: None,
        seed_seconds: Some(seconds),
        seed_rate: Some(done.load(Ordering::Relaxed) as f64 / seconds.max(1e-9)),
    })
}

/// Registers `count` writer accounts and logs them in.
pub(crate) async fn writer_tokens(
    client: &reqwest::Client,
    base: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let tag = &Uuid::now_v7().simple().to_string()[20..];
    let mut tokens = Vec::with_capacity(count);
    for n in 0..count {
        let email = format!("writer{n}.{tag}@sim.gorgon.test");
        let creds = serde_json::json!({"name": format!("Writer {n}"), "email": email, "password": "gorgon-password"});
        let resp = client
            .post(format!("{base}/api/v1/auth/register"))
            .json(&creds)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "registering a writer failed: {}",
            resp.status()
        );
        let resp = client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&serde_json::json!({"email": email, "password": "gorgon-password"}))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "writer login failed: {}",
            resp.status()
        );
        let body: serde_json::Value = resp.json().await?;
        tokens.push(
            body["token"]
                .as_str()
                .context("login answered without a token")?
                .to_string(),
        );
    }
    Ok(tokens)
}

/// Counts requests sent and those that got no answer.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    unanswered: AtomicU64,
}

async fn send(workload: &Workload, recorder: &Recorder, tally: &Tally, op: Op, intended: Instant) {
    tally.sent.fetch_add(1, Ordering::Relaxed);
    let outcome = workload.execute(op).await;
    if matches!(outcome, Outcome::Timeout | Outcome::Failed) {
        tally.unanswered.fetch_add(1, Ordering::Relaxed);
    }
    recorder.record(op, intended.elapsed(), &outcome);
}

/// C clients, each sending its next request as soon as the previous one is answered.
async fn closed_loop(
    workload: Arc<Workload>,
    recorder: Arc<Recorder>,
    tally: Arc<Tally>,
    mix: Mix,
    clients: usize,
    length: Duration,
) {
    let deadline = Instant::now() + length;
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (workload, recorder, tally, mix) = (
            workload.clone(),
            recorder.clone(),
            tally.clone(),
            mix.clone(),
        );
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let op = mix.pick(&mut rand::rng());
                send(&workload, &recorder, &tally, op, Instant::now()).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Requests at a fixed rate, each timed from when it was meant to be sent.
async fn open_loop(
    workload: Arc<Workload>,
    recorder: Arc<Recorder>,
    tally: Arc<Tally>,
    mix: Mix,
    rate: f64,
    max_in_flight: usize,
    length: Duration,
) {
    let Some(schedule) = Schedule::new(rate) else {
        return;
    };
    let total = schedule.count(length);
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut n = 0;
    let mut due_counts = schedule::pace(schedule, total, start);
    while let Some(due) = due_counts.recv().await {
        while n < due {
            let intended = start + schedule.due(n);
            let op = mix.pick(&mut rand::rng());
            let (workload, recorder, tally, slots) = (
                workload.clone(),
                recorder.clone(),
                tally.clone(),
                slots.clone(),
            );
            tasks.spawn(async move {
                // Waiting for a slot counts as latency: the clock started at `intended`.
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                send(&workload, &recorder, &tally, op, intended).await;
            });
            n += 1;
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Prints a line per second until `stop` is dropped; returns the series.
fn per_second(
    recorder: Arc<Recorder>,
    bar: ProgressBar,
    label: String,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<SecondSample>>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let mut series = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut second = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    second += 1;
                    let s = recorder.take_second(second);
                    bar.println(format!(
                        "{label} {:>4}s {:>8} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  errors {}",
                        s.second, s.requests, s.p50_ms, s.p99_ms, s.max_ms, s.errors
                    ));
                    bar.inc(1);
                    series.push(s);
                }
                _ = &mut stopped => break,
            }
        }
        series
    });
    (stop, handle)
}

/// Runs a simulation and prints its report; `Ok(false)` if an invariant failed.
pub async fn run(args: SimArgs) -> anyhow::Result<bool> {
    let scenario = Scenario::resolve(&args)?;
    let mix = Mix::parse(&scenario.mix).map_err(anyhow::Error::msg)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(scenario.timeout_seconds))
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()?;
    let target = match &scenario.target {
        Some(url) => remote_target(&scenario, url, &client).await?,
        None => local_target(&scenario, args.data.clone(), args.store.clone()).await?,
    };
    let writers = if mix.share(Op::Write) > 0.0 {
        writer_tokens(&client, &target.base, scenario.writers).await?
    } else {
        Vec::new()
    };
    // Closed loop: a connection per client. Open loop: enough for the highest rate at a few
    // milliseconds each, like a load tool's connection count.
    let connection_count = if scenario.rates.is_empty() {
        scenario.clients
    } else {
        scenario.clients.max(256)
    };
    let timeout = Duration::from_secs_f64(scenario.timeout_seconds);
    let connections = connections::Connections::new(&target.base, connection_count, timeout)?;
    let workload = Workload::new(connections, target.user_ids.clone(), writers);
    let recorder = Arc::new(Recorder::default());
    let tally = Arc::new(Tally::default());

    // Warm-up: the same load, not recorded.
    if scenario.warmup_seconds > 0.0 {
        println!("warming up for {:.0} s", scenario.warmup_seconds);
        let warmup = Duration::from_secs_f64(scenario.warmup_seconds);
        match scenario.rates.first() {
            None => {
                closed_loop(
                    workload.clone(),
                    recorder.clone(),
                    tally.clone(),
                    mix.clone(),
                    scenario.clients,
                    warmup,
                )
                .await
            }
            Some(rate) => {
                open_loop(
                    workload.clone(),
                    recorder.clone(),
                    tally.clone(),
                    mix.clone(),
                    *rate,
                    4096,
                    warmup,
                )
                .await
            }
        }
        recorder.reset();
    }

    let mut phases = Vec::new();
    let mut series = Vec::new();
    let plan: Vec<(String, Option<f64>, Duration)> = if scenario.rates.is_empty() {
        vec![(
            format!("closed loop, {} clients", scenario.clients),
            None,
            Duration::from_secs_f64(scenario.duration_seconds),
        )]
    } else {
        let length = if scenario.rates.len() == 1 {
            scenario.duration_seconds
        } else {
            scenario.step_seconds
        };
        scenario
            .rates
            .iter()
            .map(|r| {
                (
                    format!("open loop at {r} req/s"),
                    Some(*r),
                    Duration::from_secs_f64(length),
                )
            })
            .collect()
    };
    for (name, rate, length) in plan {
        println!("== {name} for {:.0} s", length.as_secs_f64());
        recorder.reset();
        let bar = ProgressBar::new(length.as_secs()).with_style(
            ProgressStyle::with_template("       [{bar:40}] {pos}/{len} s")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let label = rate
            .map(|r| format!("@{r}/s"))
            .unwrap_or_else(|| "closed".into());
        let (stop, ticker) = per_second(recorder.clone(), bar.clone(), label);
        let started = Instant::now();
        match rate {
            None => {
                closed_loop(
                    workload.clone(),
                    recorder.clone(),
                    tally.clone(),
                    mix.clone(),
                    scenario.clients,
                    length,
                )
                .await
            }
            Some(r) => {
                open_loop(
                    workload.clone(),
                    recorder.clone(),
                    tally.clone(),
                    mix.clone(),
                    r,
                    4096,
                    length,
                )
                .await
            }
        }
        let elapsed = started.elapsed();
        let _ = stop.send(());
        series.extend(ticker.await.unwrap_or_default());
        bar.finish_and_clear();
        let targets: BTreeMap<Op, f64> = match rate {
            Some(r) => mix.ops().map(|op| (op, r * mix.share(op))).collect(),
            None => BTreeMap::new(),
        };
        let operations = recorder.summaries(elapsed, &targets);
        print!("{}", report::table(&operations));
        phases.push(Phase {
            name,
            seconds: elapsed.as_secs_f64(),
            operations,
        });
    }

    // Provider figures, from the in-process node.
    let (provider_configured_rate, provider_achieved_rate) = match &target.node {
        Some(node) => match node.bus().call(crate::actors::provider::Status).await {
            Ok(s) => (Some(s.configured_rate), Some(s.achieved_rate)),
            Err(_) => (None, None),
        },
        None => (None, None),
    };

    // Invariants.
    let acked = workload.acked.lock().clone();
    let mut checks =
        vec![invariants::acknowledged_writes_readable(&client, &target.base, &acked, 32).await];
    checks.push(invariants::all_answered(
        tally.sent.load(Ordering::Relaxed),
        tally.unanswered.load(Ordering::Relaxed),
    ));
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for phase in &phases {
        for op in &phase.operations {
            for (status, n) in &op.errors_by_status {
                *by_status.entry(status.clone()).or_default() += n;
            }
        }
    }
    let server_errors: u64 = by_status
        .iter()
        .filter(|(s, _)| s.starts_with('5'))
        .map(|(_, n)| n)
        .sum();
    let by_status_text = by_status
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    checks.push(invariants::no_server_errors(server_errors, &by_status_text));
    println!("== invariants");
    for check in &checks {
        println!("{check}");
    }
    let passed = checks.iter().all(|c| c.passed);

    let report = SimReport {
        scenario,
        seed_seconds: target.seed_seconds,
        seed_items_per_second: target.seed_rate,
        phases,
        series,
        invariants: checks,
        provider_configured_rate,
        provider_achieved_rate,
        peak_rss_mb: peak_rss_mb(),
        passed,
    };
    if let (Some(c), Some(a)) = (provider_configured_rate, provider_achieved_rate) {
        println!("provider: {a:.0} items/s achieved of {c:.0} configured");
    }
    if let Some(rss) = report.peak_rss_mb {
        println!("peak RSS: {rss:.0} MiB");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if let Some(node) = target.node {
        node.shutdown().await;
    }
    println!(
        "{}",
        if passed {
            "RESULT: PASS"
        } else {
            "RESULT: FAIL"
        }
    );
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_files_resolve_and_flags_win() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sim/smoke.toml");
        let from_file = Scenario::resolve(&SimArgs {
            scenario: Some(path.into()),
            ..SimArgs::default()
        })
        .unwrap();
        assert_eq!(from_file.users, 100);
        assert_eq!(from_file.duration_seconds, 5.0);
        assert_eq!(from_file.warmup_seconds, 1.0);
        assert!(from_file.rates.is_empty(), "closed loop");
        let overridden = Scenario::resolve(&SimArgs {
            scenario: Some(path.into()),
            users: Some(7),
            duration: Some(Duration::from_millis(1500)),
            rate: Some(50.0),
            ..SimArgs::default()
        })
        .unwrap();
        assert_eq!(overridden.users, 7);
        assert_eq!(overridden.duration_seconds, 1.5);
        assert_eq!(overridden.rates, vec![50.0]);
        assert_eq!(overridden.items, 10_000, "the rest still from the file");
        for file in ["default.toml", "open-loop-steps.toml", "reads-only.toml"] {
            let path = format!("{}/sim/{file}", env!("CARGO_MANIFEST_DIR"));
            Scenario::resolve(&SimArgs {
                scenario: Some(path.into()),
                ..SimArgs::default()
            })
            .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        }
    }

    #[test]
    fn scenario_files_reject_unknown_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typo.toml");
        std::fs::write(&path, "userz = 5\n").unwrap();
        let err = Scenario::resolve(&SimArgs {
            scenario: Some(path),
            ..SimArgs::default()
        });
        assert!(err.is_err());
    }
}
