//! `deploy/haproxy.cfg` as shipped, run by Debian's `haproxy` in front of two fronts
//! (`web,notify`) and a backend (`auth,app,store,stats`) on loopback, joined as a cluster with
//! Redis. `gorgon sim --target` drives the balancer while one front drains (SIGTERM: no request
//! may fail) and while one is killed (`kill -9`: only requests in flight on it may fail, every
//! acknowledged write stays readable, and SSE clients resume on the other front with
//! `Last-Event-ID` without missing an event). The fronts believe `X-Forwarded-For` from the
//! balancer only: login limits count the real client, whatever it forges.
//!
//! Skipped with a message when `haproxy` or `redis-server` is missing, unless
//! `GORGON_REQUIRE_TOOLS` is set (as `scripts/test.sh` does).

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::redis::{Fsync, RedisServer};
use common::register_and_login;
use gorgon::chaos::probes::{follow, SseLog};
use parking_lot::Mutex;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// Upper bound of the whole test; every wait inside is bounded well below it.
const TEST_BOUND: Duration = Duration::from_secs(240);

/// Concurrent clients of each simulator run: at most this many requests are in flight at once.
const SIM_CLIENTS: usize = 8;

/// The fronts' drain delay: HAProxy's `inter 500ms` × `fall 2`, with room to spare.
const DRAIN_DELAY: &str = "2s";

/// Debian installs it in /usr/sbin, which is not on every user's PATH.
fn haproxy_program() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

fn haproxy_installed() -> bool {
    let found = Command::new(haproxy_program())
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !common::servers::tools_required(),
            "haproxy is required (scripts/test.sh installs it)"
        );
        eprintln!("skipped: haproxy is not installed");
    }
    found
}

/// HAProxy with `deploy/haproxy.cfg`, its addresses given through the environment as in
/// Compose and Kubernetes. Killed when dropped.
struct Haproxy {
    child: Child,
    base: String,
    stats: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(fronts: [u16; 2]) -> Haproxy {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy.cfg");
        let (port, stats_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("haproxy dir");
        let log = dir.path().join("haproxy.log");
        let child = Command::new(haproxy_program())
            .args(["-db", "-f"])
            .arg(&config)
            .env("GORGON_LB_BIND", format!("127.0.0.1:{port}"))
            .env("GORGON_LB_STATS_BIND", format!("127.0.0.1:{stats_port}"))
            .env("GORGON_FRONT_1", format!("127.0.0.1:{}", fronts[0]))
            .env("GORGON_FRONT_2", format!("127.0.0.1:{}", fronts[1]))
            .stdout(std::fs::File::create(&log).expect("haproxy log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        Haproxy {
            child,
            base: format!("http://127.0.0.1:{port}"),
            stats: format!("http://127.0.0.1:{stats_port}"),
            log,
            _dir: dir,
        }
    }

    /// The state HAProxy's health checks give each front (`UP`, `DOWN`, `UP 1/2`, …).
    async fn server_states(&self, http: &Client) -> BTreeMap<String, String> {
        let Ok(resp) = http.get(format!("{};csv", self.stats_url())).send().await else {
            return BTreeMap::new();
        };
        let text = resp.text().await.unwrap_or_default();
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(status)) = (col("pxname"), col("svname"), col("status"))
        else {
            return BTreeMap::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.get(px) == Some(&"fronts") && f[sv].starts_with("front"))
            .map(|f| (f[sv].to_string(), f[status].to_string()))
            .collect()
    }

    fn stats_url(&self) -> String {
        format!("{}/stats", self.stats)
    }

    /// Waits until HAProxy sees `server` in `state` (exactly `UP` or `DOWN`).
    async fn wait_state(&self, http: &Client, server: &str, state: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let states = self.server_states(http).await;
            if states.get(server).map(String::as_str) == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not see {server} {state} within {within:?}: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(text) = std::fs::read_to_string(&self.log) {
                // Request lines: client [date] frontend backend/server timers status bytes state …
                let unusual: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() < 8 || !f[5].starts_with('2') || f[7] != "----"
                    })
                    .collect();
                eprintln!(
                    "--- haproxy log, all but whole 2xx answers ---\n{}",
                    unusual.join("\n")
                );
            }
        }
    }
}

/// The simulator's reads (`GET /info/{uid}`) a front has answered.
async fn reads_served(http: &Client, base: &str) -> u64 {
    metrics_text(http, base)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("gorgon_http_requests_total{")
                && l.contains("method=\"GET\"")
                && l.contains("route=\"/info/{uid}\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until `front` has answered `more` reads beyond `from` (the simulator is loading it).
async fn wait_reads(
    http: &Client,
    front: &str,
    from: u64,
    more: u64,
    sim: &tokio::task::JoinHandle<Value>,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while reads_served(http, front).await < from + more {
        assert!(
            Instant::now() < deadline && !sim.is_finished(),
            "the simulator never loaded {front}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `gorgon sim --target` the balancer, in the background; its JSON report when it ends.
fn start_sim(target: &str, seconds: u64) -> tokio::task::JoinHandle<Value> {
    let target = target.to_string();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("sim dir");
        let report = dir.path().join("report.json");
        let out = Command::new(env!("CARGO_BIN_EXE_gorgon"))
            .args([
                "sim", "--target", &target, "--users", "20", "--items", "500",
            ])
            .args(["--clients", &SIM_CLIENTS.to_string(), "--writers", "2"])
            .args(["--warmup", "1s", "--duration", &format!("{seconds}s")])
            .arg("--json")
            .arg(&report)
            .stdin(Stdio::null())
            .output()
            .expect("run gorgon sim");
        let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
            panic!(
                "gorgon sim wrote no report ({e}); it said:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        serde_json::from_str(&text).expect("sim report is JSON")
    })
}

/// Failed requests of a report's measured phases, by status.
fn failures(report: &Value) -> BTreeMap<String, u64> {
    let mut by_status = BTreeMap::new();
    for phase in report["phases"].as_array().into_iter().flatten() {
        for op in phase["operations"].as_array().into_iter().flatten() {
            for (status, n) in op["errors_by_status"].as_object().into_iter().flatten() {
                *by_status.entry(status.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    by_status
}

fn requests(report: &Value) -> u64 {
    report["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["operations"].as_array().into_iter().flatten())
        .map(|op| op["requests"].as_u64().unwrap_or(0))
        .sum()
}

fn invariant<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["invariants"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no invariant {name:?} in {}", report["invariants"]))
}

/// Clients on loopback addresses of their own, behind the balancer like distinct hosts.
fn client_from(addr: &str) -> Client {
    Client::builder()
        .local_address(addr.parse::<IpAddr>().expect("address"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A failed login for a new account each time (so only the per-address limit can apply).
async fn login_status(http: &Client, base: &str, forged: Option<&str>) -> StatusCode {
    static N: AtomicU64 = AtomicU64::new(0);
    let email = format!("nobody{}@example.com", N.fetch_add(1, Ordering::Relaxed));
    let mut req = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": "wrong password 1"}));
    if let Some(forged) = forged {
        req = req.header("X-Forwarded-For", forged);
    }
    req.send().await.expect("login through HAProxy").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fronts_behind_haproxy_drain_die_and_resume_streams() {
    if !haproxy_installed() {
        return;
    }
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    tokio::time::timeout(TEST_BOUND, scenario(redis))
        .await
        .unwrap_or_else(|_| panic!("test exceeded {} s", TEST_BOUND.as_secs()));
}

async fn scenario(redis: RedisServer) {
    let ns = "haproxy";
    let http = client();
    let backend = admin(NodeSpec::new("auth,app,store,stats", None))
        .arg("--login-per-address-per-minute", "20");
    let backend_proc = backend.start(Some(&redis), ns);
    let front_spec = |port: u16| {
        NodeSpec::new("web,notify", Some(backend.cluster_port))
            .http_port(port)
            .arg("--trusted-proxies", "127.0.0.1")
            .arg("--drain-delay", DRAIN_DELAY)
    };
    let ports = [free_port(), free_port()];
    let specs = [front_spec(ports[0]), front_spec(ports[1])];
    let mut fronts = [
        specs[0].start(Some(&redis), ns),
        specs[1].start(Some(&redis), ns),
    ];
    let front_base = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    for i in 0..2 {
        wait_ready(&http, &front_base(i)).await;
    }
    let lb = Haproxy::start(ports);
    for server in ["front1", "front2"] {
        lb.wait_state(&http, server, "UP", Duration::from_secs(20))
            .await;
    }
    wait_ready(&http, &lb.base).await;

    // The request id: HAProxy makes one, or passes the client's, and the front returns it.
    let resp = http
        .get(format!("{}/healthz", lb.base))
        .header("X-Request-Id", "probe-42")
        .send()
        .await
        .expect("healthz through HAProxy");
    assert_eq!(resp.headers()["x-request-id"], "probe-42");
    let resp = http
        .get(format!("{}/healthz", lb.base))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()
            .get("x-request-id")
            .is_some_and(|v| v.len() > 8),
        "HAProxy or the front gives every request an id"
    );

    // Login limits count the client HAProxy saw, not the balancer and not what the client says.
    let mallory = client_from("127.0.0.2");
    for n in 0..20 {
        let forged = format!("198.51.100.{n}");
        let status = login_status(&mallory, &lb.base, Some(&forged)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {n}");
    }
    assert_eq!(
        login_status(&mallory, &lb.base, Some("203.0.113.77")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a forged X-Forwarded-For does not escape the per-address limit"
    );
    assert_eq!(
        login_status(&client_from("127.0.0.3"), &lb.base, None).await,
        StatusCode::UNAUTHORIZED,
        "another client behind the same balancer is not limited by the first"
    );

    // (a) SIGTERM a front under load: it answers 503 on /readyz, HAProxy takes it out, then it
    // stops accepting and finishes what it had. No request fails.
    let before = reads_served(&http, &front_base(0)).await;
    let sim = start_sim(&lb.base, 8);
    wait_reads(&http, &front_base(0), before, 300, &sim).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let drain_started = Instant::now();
    fronts[0].terminate();
    lb.wait_state(&http, "front1", "DOWN", Duration::from_secs(10))
        .await;
    let marked_down = drain_started.elapsed();
    let status = tokio::task::block_in_place(|| fronts[0].wait_exit(Duration::from_secs(30)))
        .expect("the drained front exits");
    assert!(status.success(), "drained front exited with {status}");
    let drained_in = drain_started.elapsed();
    fronts[0] = specs[0].start(Some(&redis), ns);
    lb.wait_state(&http, "front1", "UP", Duration::from_secs(20))
        .await;
    let report = sim.await.expect("sim A");
    let failed = failures(&report);
    eprintln!(
        "drain: front1 marked down after {marked_down:?}, exited after {drained_in:?}; \
         {} requests, failed {failed:?}",
        requests(&report)
    );
    assert!(
        failed.is_empty(),
        "a draining front cost requests: {failed:?}"
    );
    for name in [
        "acknowledged writes readable",
        "every request answered",
        "no server errors",
    ] {
        assert_eq!(
            invariant(&report, name)["passed"],
            true,
            "{}",
            invariant(&report, name)
        );
    }

    // (b) kill -9 a front under load, with SSE clients on both fronts and a writer whose items
    // they must all see.
    let (_, token) = register_and_login(&http, &lb.base, "watcher@example.com").await;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_streams = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    let on_front2 = || async { notify_clients(&http, &front_base(1)).await };
    while on_front2().await < 2 || streams.len() < 3 {
        assert!(streams.len() < 16, "HAProxy never sent a stream to front2");
        let log = Arc::new(Mutex::new(SseLog::default()));
        let task = follow(
            http.clone(),
            lb.base.clone(),
            token.clone(),
            stop_streams.clone(),
            log.clone(),
        );
        streams.push((task, log));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let on_killed = on_front2().await;

    let written = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let writes_failed = Arc::new(AtomicU64::new(0));
    let writer = {
        let (http, base, token) = (http.clone(), lb.base.clone(), token.clone());
        let (stop, written, writes_failed) = (stop.clone(), written.clone(), writes_failed.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let title = format!("probe {n}");
                let resp = http
                    .post(format!("{base}/api/v1/items"))
                    .bearer_auth(&token)
                    .json(&json!({"title": title}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let item: Value = r.json().await.expect("item");
                        let id = item["id"].as_str().expect("id").to_string();
                        written.lock().push((id, title));
                    }
                    _ => {
                        writes_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let before = reads_served(&http, &front_base(1)).await;
    let sim = start_sim(&lb.base, 8);
    wait_reads(&http, &front_base(1), before, 300, &sim).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let written_before_kill = written.lock().len();
    fronts[1].kill9();
    let killed_at = Instant::now();
    lb.wait_state(&http, "front2", "DOWN", Duration::from_secs(10))
        .await;
    let out_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fronts[1] = specs[1].start(Some(&redis), ns);
    lb.wait_state(&http, "front2", "UP", Duration::from_secs(20))
        .await;
    let report = sim.await.expect("sim B");
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    // Let the last events reach the streams before they close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_streams.store(true, Ordering::Relaxed);
    for (task, _) in &streams {
        task.abort();
    }

    let failed = failures(&report);
    let failed_total: u64 = failed.values().sum();
    let writes_failed = writes_failed.load(Ordering::Relaxed);
    let written = written.lock().clone();
    eprintln!(
        "kill -9: front2 out of HAProxy after {out_after:?}; simulator: {} requests, {failed_total} \
         failed {failed:?} (at most {SIM_CLIENTS} were in flight); probe writer: {} acknowledged \
         ({written_before_kill} before the kill), {writes_failed} failed; {} SSE streams, \
         {on_killed} of them on the killed front",
        requests(&report),
        written.len(),
        streams.len(),
    );
    assert!(
        failed_total <= SIM_CLIENTS as u64,
        "more requests failed than were in flight on the killed front: {failed:?}"
    );
    assert!(
        writes_failed <= 1,
        "the probe writer had one request in flight at most"
    );
    assert!(
        !failed.contains_key("timeout"),
        "every failure was immediate (a 5xx or a reset connection), none a timeout: {failed:?}"
    );
    // "every request answered" is not asked for: a request in flight on the killed front may
    // have its connection cut (counted above as "failed").
    let readable = invariant(&report, "acknowledged writes readable");
    assert_eq!(readable["passed"], true, "{readable}");
    assert_items_readable(
        &http,
        &lb.base,
        &token,
        written.iter().map(|(id, title)| (id, title)),
    )
    .await;

    let reconnected: u64 = streams.iter().map(|(_, log)| log.lock().reconnects).sum();
    assert!(
        reconnected >= on_killed as u64,
        "the streams on the killed front reconnected ({reconnected} reconnections)"
    );
    for (n, (_, log)) in streams.iter().enumerate() {
        let log = log.lock();
        assert!(
            log.lagged.is_empty(),
            "stream {n} was told it lagged: {:?}",
            log.lagged
        );
        let missed: Vec<&String> = written
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !log.created.contains(*id))
            .collect();
        assert!(
            missed.is_empty(),
            "stream {n} ({} reconnections) missed {} of {} events, e.g. {:?}",
            log.reconnects,
            missed.len(),
            written.len(),
            missed.first()
        );
    }
    drop(backend_proc);
}

/// `gorgon_notify_clients` of a front: its open event streams.
async fn notify_clients(http: &Client, base: &str) -> usize {
    metrics_text(http, base)
        .await
        .lines()
        .find(|l| l.starts_with("gorgon_notify_clients "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as usize
}
