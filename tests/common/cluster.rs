//! Gorgon nodes as real processes joined into a cluster (`--cluster-listen` / `--join`, and
//! Redis for durable work), and a bounded load of reads and writes against a front: shared by
//! the cluster tests and the shared-store tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::process::GorgonProcess;
use super::redis::RedisServer;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// One node's command line: roles, a data dir, a cluster listener, seeds, and Redis if given.
pub struct NodeSpec {
    pub roles: &'static str,
    pub cluster_port: u16,
    pub join: Option<u16>,
    pub dir: TempDir,
    pub envs: Vec<(&'static str, String)>,
    /// More flags, after the others.
    pub extra: Vec<String>,
    /// HTTP address (`127.0.0.1:0`: a free port, chosen at each start).
    pub listen: String,
}

impl NodeSpec {
    pub fn new(roles: &'static str, join: Option<u16>) -> NodeSpec {
        NodeSpec {
            roles,
            cluster_port: free_port(),
            join,
            dir: tempfile::tempdir().expect("node data dir"),
            envs: Vec::new(),
            extra: Vec::new(),
            listen: "127.0.0.1:0".into(),
        }
    }

    /// Serves HTTP on this loopback port at every start (a restart keeps its address).
    pub fn http_port(mut self, port: u16) -> NodeSpec {
        self.listen = format!("127.0.0.1:{port}");
        self
    }

    /// Adds `flag value` to its command line.
    pub fn arg(mut self, flag: &str, value: &str) -> NodeSpec {
        self.extra.extend([flag.to_string(), value.to_string()]);
        self
    }

    pub fn env(mut self, key: &'static str, value: &str) -> NodeSpec {
        self.envs.push((key, value.to_string()));
        self
    }

    pub fn args(&self, redis: Option<&RedisServer>, ns: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--roles",
            self.roles,
            "--listen",
            &self.listen,
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
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts it and waits until it is ready (at most 60 s).
    pub fn start(&self, redis: Option<&RedisServer>, ns: &str) -> GorgonProcess {
        let args = self.args(redis, ns);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        tokio::task::block_in_place(|| GorgonProcess::spawn(&args, &envs))
    }

    /// Starts it expecting a refusal: the exit status and what it printed on stderr.
    pub fn start_expecting_exit(&self, redis: Option<&RedisServer>, ns: &str) -> (bool, String) {
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

pub fn admin(spec: NodeSpec) -> NodeSpec {
    spec.env("GORGON_ADMIN_EMAIL", super::ADMIN_EMAIL)
        .env("GORGON_ADMIN_PASSWORD", super::ADMIN_PASSWORD)
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// `GET /api/v1/cluster` of `base`.
pub async fn cluster_view(http: &Client, base: &str) -> Value {
    http.get(format!("{base}/api/v1/cluster"))
        .send()
        .await
        .expect("GET /api/v1/cluster")
        .json()
        .await
        .expect("cluster JSON")
}

/// The role lists of the nodes `base` sees, sorted.
pub fn roles_seen(view: &Value) -> Vec<String> {
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
pub async fn wait_view(
    http: &Client,
    base: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) {
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

pub async fn wait_ready(http: &Client, base: &str) {
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
pub async fn metrics_text(http: &Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Calls over the cluster with a good outcome, from `base`'s Prometheus text.
pub async fn cluster_calls_ok(http: &Client, base: &str) -> u64 {
    let text = metrics_text(http, base).await;
    text.lines()
        .filter(|l| l.starts_with("gorgon_bus_calls_total{"))
        .filter(|l| l.contains("transport=\"cluster\"") && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every `gorgon_cluster_*` metric the Grafana dashboard names is exported by a clustered node
/// (the other metrics are checked in tests/observability.rs, in one process).
pub async fn assert_cluster_metrics_exported(http: &Client, base: &str) {
    let names: Vec<String> = super::dashboard_metric_names()
        .into_iter()
        .filter(|n| n.starts_with("gorgon_cluster_"))
        .collect();
    assert!(
        names.len() >= 3,
        "the dashboard has a cluster row: {names:?}"
    );
    let text = metrics_text(http, base).await;
    let missing: Vec<&String> = names.iter().filter(|n| !super::exports(&text, n)).collect();
    assert!(
        missing.is_empty(),
        "named in dashboards/ or deploy/alerts.yml but not exported: {missing:?}"
    );
}

pub async fn create_item(
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

/// What the load saw.
#[derive(Default)]
pub struct LoadLog {
    /// Failed reads: when each ended, and why.
    pub read_errors: Vec<(Instant, String)>,
    /// When each failed read was sent (in the order of `read_errors`).
    pub failed_reads_sent: Vec<Instant>,
    pub reads_ok: u64,
    /// Items whose create answered 201, with their titles.
    pub written: HashMap<String, String>,
    pub write_errors: Vec<(Instant, String)>,
}

impl LoadLog {
    /// How long after `at` the last read failed (`None`: no read failed).
    pub fn last_read_error_after(&self, at: Instant) -> Option<Duration> {
        self.read_errors
            .iter()
            .map(|(when, _)| when.saturating_duration_since(at))
            .max()
    }

    /// How long after `at` the last read that failed was sent: a read sent while a node was down
    /// may fail when its deadline passes, later than the node's return.
    pub fn last_failed_read_sent_after(&self, at: Instant) -> Option<Duration> {
        self.failed_reads_sent
            .iter()
            .map(|sent| sent.saturating_duration_since(at))
            .max()
    }

    /// Every acknowledged write is there, as written.
    pub async fn assert_all_written_readable(&self, http: &Client, base: &str, token: &str) {
        assert_items_readable(http, base, token, &self.written).await;
    }
}

/// Every item of `written` (id → title) reads back through `base` with its title.
pub async fn assert_items_readable<'a>(
    http: &Client,
    base: &str,
    token: &str,
    written: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    for (id, title) in written {
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

/// A bounded load on a front: 8 readers of one item and 4 writers, until `finish`.
pub struct Load {
    log: Arc<Mutex<LoadLog>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Registers `email`, writes a first item and starts the load reading it.
    pub async fn as_new_user(http: &Client, base: &str, email: &str) -> (String, Load) {
        let (_, token) = super::register_and_login(http, base, email).await;
        let first = create_item(http, base, &token, "before the load")
            .await
            .expect("create the first item");
        let load = Load::start(http, base, &token, first["id"].as_str().expect("id"));
        (token, load)
    }

    pub fn start(http: &Client, base: &str, token: &str, read_id: &str) -> Load {
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (http, base, token) = (http.clone(), base.to_string(), token.to_string());
            let (log, stop, id) = (log.clone(), stop.clone(), read_id.to_string());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let outcome = http
                        .get(format!("{base}/api/v1/items/{id}"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    let mut log = log.lock();
                    match outcome {
                        Ok(resp) if resp.status() == StatusCode::OK => log.reads_ok += 1,
                        Ok(resp) => {
                            log.read_errors
                                .push((Instant::now(), resp.status().to_string()));
                            log.failed_reads_sent.push(sent);
                        }
                        Err(e) => {
                            log.read_errors.push((Instant::now(), e.to_string()));
                            log.failed_reads_sent.push(sent);
                        }
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
    pub fn written(&self) -> usize {
        self.log.lock().written.len()
    }

    /// Stops the load once every request in flight has its answer.
    pub async fn finish(self) -> LoadLog {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        std::mem::take(&mut *self.log.lock())
    }
}
