//! The ractor cluster, black-box: real `gorgon` processes on loopback joined with
//! `--cluster-listen` / `--join` (and a real `redis-server` for durable work). Covers three nodes
//! serving the API with direct calls between them, a node started later found by every other
//! through one seed, a node killed with SIGKILL under a load of reads and writes (reads retried on
//! another member, every acknowledged write present, the node restarted and back in the cluster),
//! a node with the wrong cookie refused, and a second embedded store refused.
//!
//! The tests of this file run one at a time. The ones that write need Redis and are skipped with
//! a message when `redis-server` is not installed (unless `GORGON_REQUIRE_TOOLS` is set).

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::GorgonProcess;
use common::redis::{Fsync, RedisServer};
use parking_lot::Mutex;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound of any one test; every wait inside is bounded well below it.
const TEST_BOUND: Duration = Duration::from_secs(150);

/// Runs a test body under the file's lock and `TEST_BOUND`.
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_BOUND, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {} s", TEST_BOUND.as_secs()));
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// One node's command line: roles, a data dir, a cluster listener, seeds, and Redis if given.
struct NodeSpec {
    roles: &'static str,
    cluster_port: u16,
    join: Option<u16>,
    dir: TempDir,
    envs: Vec<(&'static str, String)>,
}

impl NodeSpec {
    fn new(roles: &'static str, join: Option<u16>) -> NodeSpec {
        NodeSpec {
            roles,
            cluster_port: free_port(),
            join,
            dir: tempfile::tempdir().expect("node data dir"),
            envs: Vec::new(),
        }
    }

    fn env(mut self, key: &'static str, value: &str) -> NodeSpec {
        self.envs.push((key, value.to_string()));
        self
    }

    fn args(&self, redis: Option<&RedisServer>, ns: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--roles",
            self.roles,
            "--listen",
            "127.0.0.1:0",
            "--data",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(self.dir.path().to_str().expect("UTF-8 temp path").into());
        args.push("--cluster-listen".into());
        args.push(format!("127.0.0.1:{}", self.cluster_port));
        if let Some(seed) = self.join {
            args.push("--join".into());
            args.push(format!("127.0.0.1:{seed}"));
        }
        // Quick to notice a lost consumer, so redelivery fits in the test.
        args.extend(
            [
                "--queue-heartbeat",
                "1s",
                "--cluster-heartbeat",
                "300ms",
                "--cluster-call-timeout",
                "1s",
            ]
            .map(String::from),
        );
        if let Some(redis) = redis {
            args.extend([
                "--redis".into(),
                redis.url(),
                "--redis-namespace".into(),
                ns.into(),
            ]);
        }
        args
    }

    /// Starts it and waits until it is ready (at most 60 s).
    fn start(&self, redis: Option<&RedisServer>, ns: &str) -> GorgonProcess {
        let args = self.args(redis, ns);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        tokio::task::block_in_place(|| GorgonProcess::spawn(&args, &envs))
    }

    /// Starts it expecting a refusal: the exit status and what it printed on stderr.
    fn start_expecting_exit(&self, redis: Option<&RedisServer>, ns: &str) -> (bool, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gorgon"))
            .args(self.args(redis, ns))
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gorgon");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for gorgon") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} was expected to refuse to start but kept running",
                    self.roles
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status.success(), stderr)
    }
}

fn admin(spec: NodeSpec) -> NodeSpec {
    spec.env("GORGON_ADMIN_EMAIL", common::ADMIN_EMAIL)
        .env("GORGON_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// `GET /api/v1/cluster` of `base`.
async fn cluster_view(http: &Client, base: &str) -> Value {
    http.get(format!("{base}/api/v1/cluster"))
        .send()
        .await
        .expect("GET /api/v1/cluster")
        .json()
        .await
        .expect("cluster JSON")
}

/// The role lists of the nodes `base` sees, sorted.
fn roles_seen(view: &Value) -> Vec<String> {
    let mut roles: Vec<String> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            n["roles"]
                .as_array()
                .expect("roles")
                .iter()
                .map(|r| r.as_str().expect("role").to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    roles.sort();
    roles
}

/// Polls `base`'s cluster view until `check` holds; panics with the last view after `within`.
async fn wait_view(http: &Client, base: &str, within: Duration, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let view = cluster_view(http, base).await;
        if check(&view) {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{base}/api/v1/cluster never matched within {within:?}; last: {view:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_ready(http: &Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = http.get(format!("{base}/readyz")).send().await {
            if resp.status() == StatusCode::OK {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{base}/readyz never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `base`'s Prometheus text.
async fn metrics_text(http: &Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Calls over the cluster with a good outcome, from `base`'s Prometheus text.
async fn cluster_calls_ok(http: &Client, base: &str) -> u64 {
    let text = metrics_text(http, base).await;
    text.lines()
        .filter(|l| l.starts_with("gorgon_bus_calls_total{"))
        .filter(|l| l.contains("transport=\"cluster\"") && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every `gorgon_cluster_*` metric the Grafana dashboard names is exported by a clustered node
/// (the other metrics are checked in tests/observability.rs, in one process).
async fn assert_cluster_metrics_exported(http: &Client, base: &str) {
    let names: Vec<String> = common::dashboard_metric_names()
        .into_iter()
        .filter(|n| n.starts_with("gorgon_cluster_"))
        .collect();
    assert!(
        names.len() >= 3,
        "the dashboard has a cluster row: {names:?}"
    );
    let text = metrics_text(http, base).await;
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !common::exports(&text, n))
        .collect();
    assert!(
        missing.is_empty(),
        "named in dashboards/ but not exported: {missing:?}"
    );
}

async fn create_item(
    http: &Client,
    base: &str,
    token: &str,
    title: &str,
) -> reqwest::Result<Value> {
    http.post(format!("{base}/api/v1/items"))
        .bearer_auth(token)
        .json(&json!({"title": title, "body": "written across the cluster"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_serve_the_api_and_a_late_node_is_found_by_all() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
            return;
        };
        let ns = format!("c{}", uuid::Uuid::now_v7().simple());
        let http = client();
        let front = NodeSpec::new("web,notify", None);
        let seed = front.cluster_port;
        let web = front.start(Some(&redis), &ns);
        let base = web.base();
        let backend = admin(NodeSpec::new("auth,app,store,stats", Some(seed)));
        let _backend = backend.start(Some(&redis), &ns);
        let _app = NodeSpec::new("auth,app", Some(seed)).start(Some(&redis), &ns);
        wait_ready(&http, &base).await;
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(3)
        })
        .await;
        let view = cluster_view(&http, &base).await;
        assert_eq!(view["clustered"], true);
        assert_eq!(
            roles_seen(&view),
            ["auth,app", "auth,app,store,stats", "web,notify"]
        );
        assert!(view["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["reachable"] == "ok"
                && n["health"] == "ok"
                && n["uptime_seconds"].as_f64() > Some(0.0)));

        // The API across three processes: writes through Redis, reads node to node.
        let (_, token) = common::register_and_login(&http, &base, "ada@example.com").await;
        let mut ids = Vec::new();
        for n in 0..20 {
            let item = create_item(&http, &base, &token, &format!("item {n}"))
                .await
                .expect("create an item");
            ids.push(item["id"].as_str().expect("id").to_string());
        }
        for id in &ids {
            let resp = http
                .get(format!("{base}/api/v1/items/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("GET item");
            assert_eq!(resp.status(), StatusCode::OK);
        }
        let over_cluster = cluster_calls_ok(&http, &base).await;
        assert!(
            over_cluster >= 20,
            "reads should have gone node to node; cluster calls: {over_cluster}"
        );
        assert_cluster_metrics_exported(&http, &base).await;
        let stats: Value = http
            .get(format!("{base}/api/v1/stats"))
            .send()
            .await
            .expect("GET stats")
            .json()
            .await
            .expect("stats JSON");
        assert_eq!(
            stats["cluster"]["nodes"], 3,
            "cluster-wide figures: {stats:#}"
        );

        // A node started later, given only the first node as its seed, is found by everyone:
        // it reaches the backend too (transitively), and serves reads with its own web role.
        let late = NodeSpec::new("web,app", Some(seed)).start(Some(&redis), &ns);
        let late_base = late.base();
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(4)
        })
        .await;
        wait_view(&http, &late_base, Duration::from_secs(10), |v| {
            roles_seen(v) == ["auth,app", "auth,app,store,stats", "web,app", "web,notify"]
        })
        .await;
        wait_ready(&http, &late_base).await;
        let resp = http
            .get(format!("{late_base}/api/v1/items/{}", ids[0]))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET item from the late node");
        assert_eq!(resp.status(), StatusCode::OK);
    })
    .await;
}

/// A front (`web,notify`), a backend (`auth,app,store`, with the admin) and a second `auth,app`
/// node, both joined through the front, all in its view and ready.
struct Trio {
    ns: String,
    http: Client,
    web: GorgonProcess,
    base: String,
    /// The backend's command line (to start it again on the same data) and its process.
    backend_spec: NodeSpec,
    backend: GorgonProcess,
    /// The second `auth,app` node's command line and its process.
    second: NodeSpec,
    running: GorgonProcess,
}

impl Trio {
    async fn start(redis: &RedisServer) -> Trio {
        let ns = format!("c{}", uuid::Uuid::now_v7().simple());
        let http = client();
        let front = NodeSpec::new("web,notify", None);
        let seed = front.cluster_port;
        let web = front.start(Some(redis), &ns);
        let base = web.base();
        let backend_spec = admin(NodeSpec::new("auth,app,store", Some(seed)));
        let backend = backend_spec.start(Some(redis), &ns);
        let second = NodeSpec::new("auth,app", Some(seed));
        let running = second.start(Some(redis), &ns);
        wait_ready(&http, &base).await;
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(3)
        })
        .await;
        Trio {
            ns,
            http,
            web,
            base,
            backend_spec,
            backend,
            second,
            running,
        }
    }
}

/// What the load saw.
#[derive(Default)]
struct LoadLog {
    read_errors: Vec<(Instant, String)>,
    reads_ok: u64,
    /// Items whose create answered 201, with their titles.
    written: HashMap<String, String>,
    write_errors: Vec<(Instant, String)>,
}

impl LoadLog {
    /// How long after `at` the last read failed (`None`: no read failed).
    fn last_read_error_after(&self, at: Instant) -> Option<Duration> {
        self.read_errors
            .iter()
            .map(|(when, _)| when.saturating_duration_since(at))
            .max()
    }

    /// Every acknowledged write is there, as written.
    async fn assert_all_written_readable(&self, http: &Client, base: &str, token: &str) {
        for (id, title) in &self.written {
            let item: Value = http
                .get(format!("{base}/api/v1/items/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("GET a written item")
                .error_for_status()
                .unwrap_or_else(|e| panic!("acknowledged item {id} ({title}) is missing: {e}"))
                .json()
                .await
                .expect("item JSON");
            assert_eq!(item["title"], title.as_str());
        }
    }
}

/// A bounded load on a front: 8 readers of one item and 4 writers, until `finish`.
struct Load {
    log: Arc<Mutex<LoadLog>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Registers `email`, writes a first item and starts the load reading it.
    async fn as_new_user(http: &Client, base: &str, email: &str) -> (String, Load) {
        let (_, token) = common::register_and_login(http, base, email).await;
        let first = create_item(http, base, &token, "before the load")
            .await
            .expect("create the first item");
        let load = Load::start(http, base, &token, first["id"].as_str().expect("id"));
        (token, load)
    }

    fn start(http: &Client, base: &str, token: &str, read_id: &str) -> Load {
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (http, base, token) = (http.clone(), base.to_string(), token.to_string());
            let (log, stop, id) = (log.clone(), stop.clone(), read_id.to_string());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = http
                        .get(format!("{base}/api/v1/items/{id}"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    let mut log = log.lock();
                    match outcome {
                        Ok(resp) if resp.status() == StatusCode::OK => log.reads_ok += 1,
                        Ok(resp) => log
                            .read_errors
                            .push((Instant::now(), resp.status().to_string())),
                        Err(e) => log.read_errors.push((Instant::now(), e.to_string())),
                    }
                }
            }));
        }
        for _ in 0..4 {
            let (http, base, token) = (http.clone(), base.to_string(), token.to_string());
            let (log, stop, counter) = (log.clone(), stop.clone(), counter.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let title = format!("load {}", counter.fetch_add(1, Ordering::Relaxed));
                    match create_item(&http, &base, &token, &title).await {
                        Ok(item) => {
                            let id = item["id"].as_str().unwrap_or_default().to_string();
                            log.lock().written.insert(id, title);
                        }
                        Err(e) => log
                            .lock()
                            .write_errors
                            .push((Instant::now(), e.to_string())),
                    }
                }
            }));
        }
        Load { log, stop, tasks }
    }

    /// Writes acknowledged so far.
    fn written(&self) -> usize {
        self.log.lock().written.len()
    }

    /// Stops the load once every request in flight has its answer.
    async fn finish(self) -> LoadLog {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        std::mem::take(&mut *self.log.lock())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_load_costs_at_most_a_blip_and_loses_no_write() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        let Trio {
            ns,
            http,
            web: _web,
            base,
            backend: _backend,
            second: victim_spec,
            running: mut victim,
            ..
        } = Trio::start(&redis).await;
        let (token, load) = Load::as_new_user(&http, &base, "grace@example.com").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before_kill = load.written();
        let killed_at = Instant::now();
        victim.kill9();
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(2)
        })
        .await;
        let gone_after = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        victim = victim_spec.start(Some(&redis), &ns);
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            roles_seen(v) == ["auth,app", "auth,app,store", "web,notify"]
        })
        .await;
        let rejoined_after = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = load.finish().await;
        assert!(victim.is_running());

        let last_read_error = log.last_read_error_after(killed_at);
        eprintln!(
            "kill -9 of an auth,app node under load: {} reads ok, {} read errors (last {:?} after \
             the kill; first: {:?}), node gone from the view after {gone_after:?}, back after \
             {rejoined_after:?}; {} writes acknowledged ({before_kill} before the kill), {} write errors",
            log.reads_ok,
            log.read_errors.len(),
            last_read_error,
            log.read_errors.first().map(|(_, e)| e),
            log.written.len(),
            log.write_errors.len(),
        );
        assert!(log.reads_ok > 100, "the readers barely ran: {}", log.reads_ok);
        // A blip at most: no read fails later than 3 s after the kill, and few fail at all.
        if let Some(last) = last_read_error {
            assert!(last < Duration::from_secs(3), "reads kept failing {last:?} after the kill");
        }
        assert!(
            log.read_errors.len() <= 50,
            "too many failed reads: {:?}",
            &log.read_errors[..log.read_errors.len().min(5)]
        );
        assert!(log.written.len() > before_kill, "writes continued after the kill");

        log.assert_all_written_readable(&http, &base, &token).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_wrong_cookie_cannot_join() {
    bounded(async {
        let http = client();
        let cookie = "the-right-cookie-0123456789";
        let front = admin(NodeSpec::new("all", None)).env("GORGON_CLUSTER_COOKIE", cookie);
        let web = front.start(None, "");
        let base = web.base();
        let intruder = NodeSpec::new("app", Some(front.cluster_port))
            .env("GORGON_CLUSTER_COOKIE", "a-wrong-cookie")
            .env("GORGON_CLUSTER_JOIN_WAIT", "5s");
        let (ok, stderr) = intruder.start_expecting_exit(None, "");
        assert!(!ok, "the intruder must exit with an error");
        assert!(
            stderr.contains("refused this node during authentication")
                && stderr.contains("GORGON_CLUSTER_COOKIE"),
            "the intruder says why: {stderr}"
        );
        let view = cluster_view(&http, &base).await;
        assert_eq!(view["nodes"].as_array().map(Vec::len), Some(1), "{view:#}");

        // The same node with the right cookie joins.
        let friend = NodeSpec::new("app", Some(front.cluster_port))
            .env("GORGON_CLUSTER_COOKIE", cookie)
            .start(None, "");
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(2)
        })
        .await;
        drop(friend);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_embedded_store_is_refused() {
    bounded(async {
        let first = NodeSpec::new("web,store", None);
        let _first = first.start(None, "");
        let second = NodeSpec::new("app,store", Some(first.cluster_port));
        let (ok, stderr) = second.start_expecting_exit(None, "");
        assert!(!ok, "a second store node must not start");
        assert!(
            stderr.contains("the store role already runs on"),
            "it says why: {stderr}"
        );
    })
    .await;
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_node_is_dropped_by_the_heartbeat_and_rejoins_when_it_resumes() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
            return;
        };
        let Trio {
            http,
            web: _web,
            base,
            backend: _backend,
            running: hung,
            ..
        } = Trio::start(&redis).await;
        let (_, token) = common::register_and_login(&http, &base, "hopper@example.com").await;
        let item = create_item(&http, &base, &token, "read while a node hangs")
            .await
            .expect("create an item");
        let id = item["id"].as_str().expect("id").to_string();

        // A stopped process keeps its sockets open: only the heartbeat can tell.
        signal(hung.pid(), "STOP");
        let stopped_at = Instant::now();
        let read = |http: Client| {
            let (base, token, id) = (base.clone(), token.clone(), id.clone());
            async move {
                http.get(format!("{base}/api/v1/items/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map(|r| r.status())
            }
        };
        let mut failed = 0;
        for _ in 0..20 {
            if read(http.clone()).await.ok() != Some(StatusCode::OK) {
                failed += 1;
            }
        }
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(2)
        })
        .await;
        let dropped_after = stopped_at.elapsed();
        for _ in 0..20 {
            assert_eq!(
                read(http.clone()).await.ok(),
                Some(StatusCode::OK),
                "reads after the drop"
            );
        }
        signal(hung.pid(), "CONT");
        wait_view(&http, &base, Duration::from_secs(15), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(3)
                && v["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().all(|n| n["reachable"] == "ok"))
        })
        .await;
        eprintln!(
            "SIGSTOP of an auth,app node: {failed} of 20 reads failed while it hung, session \
             dropped after {dropped_after:?}, back {:?} after the stop",
            stopped_at.elapsed()
        );
        // Reads that met the hung node wait one call timeout, then go to another member.
        assert_eq!(failed, 0, "reads are retried on another member");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_node_killed_under_load_loses_no_acknowledged_write() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        let Trio {
            ns,
            http,
            web: _web,
            base,
            backend_spec,
            backend: mut store_node,
            running: _second,
            ..
        } = Trio::start(&redis).await;
        let (token, load) = Load::as_new_user(&http, &base, "liskov@example.com").await;

        tokio::time::sleep(Duration::from_secs(2)).await;
        let before_kill = load.written();
        let killed_at = Instant::now();
        // The embedded store belongs to this node alone: reads stop until it is back, while
        // writes wait in Redis (the store's durable queue) rather than fail.
        store_node.kill9();
        tokio::time::sleep(Duration::from_secs(2)).await;
        store_node = backend_spec.start(Some(&redis), &ns);
        wait_ready(&http, &base).await;
        let back_after = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = load.finish().await;
        assert!(store_node.is_running());

        let last_read_error = log.last_read_error_after(killed_at);
        eprintln!(
            "kill -9 of the store node under load: {} reads ok, {} read errors (last {:?} after \
             the kill), ready again after {back_after:?}; {} writes acknowledged ({before_kill} \
             before the kill), {} write errors (first: {:?})",
            log.reads_ok,
            log.read_errors.len(),
            last_read_error,
            log.written.len(),
            log.write_errors.len(),
            log.write_errors.first().map(|(_, e)| e),
        );
        if let Some(last) = last_read_error {
            assert!(
                last < back_after + Duration::from_secs(1),
                "reads kept failing {last:?} after the kill, though the store was back after {back_after:?}"
            );
        }
        assert!(log.reads_ok > 100, "the readers barely ran: {}", log.reads_ok);
        assert!(log.written.len() > before_kill, "writes continued");
        log.assert_all_written_readable(&http, &base, &token).await;
    })
    .await;
}
