//! The Redis transport, black-box: a real `redis-server` and real `gorgon` processes — a web node
//! and a backend node (auth, app, store) — joined only by Redis. Covers the API served across
//! processes (and by two web nodes at once), a backend killed with SIGKILL in the middle of a
//! burst of writes, Redis itself killed and restarted under load (AOF, `appendfsync always`),
//! garbage on a queue ending in the dead-letter list, and a call nobody answers failing as a
//! clean 504. Every write that got a 201 must be readable as written, and applied once.
//!
//! Each test has its own redis-server, namespace and data directories; the tests of this file
//! run one at a time (they are heavy on a small machine and two of them measure deadlines).
//! Skipped with a message when `redis-server` is not installed, unless `GORGON_REQUIRE_TOOLS`
//! is set.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::GorgonProcess;
use common::redis::{Fsync, RedisServer};
use common::{expect_error, ADMIN_EMAIL, ADMIN_PASSWORD};
use futures::StreamExt;
use parking_lot::Mutex;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use uuid::Uuid;

/// The tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound of any one test; every wait inside is bounded well below it.
const TEST_BOUND: Duration = Duration::from_secs(120);

const BACKEND_ROLES: &str = "auth,app,store";

// ---------------------------------------------------------------------------------------------
// Processes

/// `gorgon:{ns}:{suffix}`, e.g. `key(ns, "q:store")`.
fn key(ns: &str, suffix: &str) -> String {
    format!("gorgon:{ns}:{suffix}")
}

fn namespace() -> String {
    format!("t{}", Uuid::now_v7().simple())
}

fn run_args(
    roles: &str,
    redis: &RedisServer,
    ns: &str,
    data: &Path,
    extra: &[String],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--roles".into(),
        roles.into(),
        "--redis".into(),
        redis.url(),
        "--redis-namespace".into(),
        ns.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data".into(),
        data.to_str().expect("UTF-8 temp path").into(),
    ];
    args.extend(extra.iter().cloned());
    args
}

/// Starts `gorgon run --roles ROLES` on `redis` (blocking until it is ready, at most 60 s).
fn start_node(
    roles: &str,
    redis: &RedisServer,
    ns: &str,
    data: &Path,
    extra: &[String],
    envs: &[(&str, &str)],
) -> GorgonProcess {
    let args = run_args(roles, redis, ns, data, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| GorgonProcess::spawn(&args, envs))
}

/// The auth, app and store roles, with the bootstrap admin.
fn backend(redis: &RedisServer, ns: &str, data: &Path, extra: &[String]) -> GorgonProcess {
    start_node(
        BACKEND_ROLES,
        redis,
        ns,
        data,
        extra,
        &[
            ("GORGON_ADMIN_EMAIL", ADMIN_EMAIL),
            ("GORGON_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    )
}

/// The web role alone.
/// A front: the web role and the notify role (its SSE clients get every node's events).
fn web(redis: &RedisServer, ns: &str, data: &Path, extra: &[String]) -> GorgonProcess {
    let node = start_node("web,notify", redis, ns, data, extra, &[]);
    assert!(node.base.is_some(), "a web node prints its address");
    node
}

/// A redis-server, a backend node and a web node on one namespace, ready to serve.
struct Deployment {
    web: GorgonProcess,
    backend: GorgonProcess,
    base: String,
    extra: Vec<String>,
    ns: String,
    backend_dir: TempDir,
    _web_dir: TempDir,
    redis: RedisServer,
}

impl Deployment {
    /// `None` when redis-server is not installed (the test is skipped).
    async fn start(fsync: Fsync, extra: &[&str]) -> Option<Deployment> {
        let redis = RedisServer::start_or_skip(fsync).await?;
        let ns = namespace();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let backend_dir = tempfile::tempdir().expect("backend data dir");
        let web_dir = tempfile::tempdir().expect("web data dir");
        let backend = backend(&redis, &ns, backend_dir.path(), &extra);
        let web = web(&redis, &ns, web_dir.path(), &extra);
        let base = web.base();
        wait_readyz(&base, StatusCode::OK, Duration::from_secs(30)).await;
        Some(Deployment {
            web,
            backend,
            base,
            extra,
            ns,
            backend_dir,
            _web_dir: web_dir,
            redis,
        })
    }

    /// SIGKILLs the backend node.
    fn kill_backend(&mut self) {
        self.backend.kill9();
    }

    /// Starts the backend node again on the same data directory.
    fn restart_backend(&mut self) {
        self.backend = backend(&self.redis, &self.ns, self.backend_dir.path(), &self.extra);
    }

    /// Starts another web node on the same Redis namespace.
    fn another_web(&self) -> (GorgonProcess, TempDir) {
        let dir = tempfile::tempdir().expect("web data dir");
        let node = web(&self.redis, &self.ns, dir.path(), &self.extra);
        (node, dir)
    }
}

/// Runs a test body under the file's lock and `TEST_BOUND`.
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_BOUND, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {} s", TEST_BOUND.as_secs()));
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn client(timeout: Duration) -> Client {
    Client::builder()
        .timeout(timeout)
        .build()
        .expect("HTTP client")
}

/// Polls `GET /readyz` until it answers `want`; panics after `within`.
async fn wait_readyz(base: &str, want: StatusCode, within: Duration) {
    let client = client(Duration::from_secs(5));
    let deadline = Instant::now() + within;
    loop {
        let last = match client.get(format!("{base}/readyz")).send().await {
            Ok(resp) if resp.status() == want => return,
            Ok(resp) => {
                let status = resp.status();
                format!("{status}: {}", resp.text().await.unwrap_or_default())
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            panic!(
                "{base}/readyz did not answer {want} within {} s (last: {last})",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers and logs in a user through `base`; returns (user id, token).
async fn user(base: &str, email: &str) -> (String, String) {
    common::register_and_login(&client(Duration::from_secs(30)), base, email).await
}

/// `POST /api/v1/items` expecting 201; returns the item.
async fn create_item(base: &str, token: &str, title: &str) -> Value {
    let resp = client(Duration::from_secs(30))
        .post(format!("{base}/api/v1/items"))
        .bearer_auth(token)
        .json(&json!({"title": title, "body": "over redis"}))
        .send()
        .await
        .expect("create item");
    assert_eq!(resp.status(), StatusCode::CREATED, "create {title}");
    resp.json().await.expect("item json")
}

/// `GET /api/v1/items/{id}` expecting 200; returns the item.
async fn get_item(base: &str, id: &str) -> Value {
    let resp = client(Duration::from_secs(30))
        .get(format!("{base}/api/v1/items/{id}"))
        .send()
        .await
        .expect("get item");
    assert_eq!(resp.status(), StatusCode::OK, "get {id} from {base}");
    resp.json().await.expect("item json")
}

/// Every item of a user as (id, title), paging `?limit=100&offset=N` until a short page. An
/// item seen twice with the same id (a page boundary shifted by a late insert) counts once.
async fn list_all(base: &str, uid: &str) -> Vec<(String, String)> {
    let client = client(Duration::from_secs(30));
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    for page in 0..1000u32 {
        let offset = page * 100;
        let resp = client
            .get(format!(
                "{base}/api/v1/users/{uid}/items?limit=100&offset={offset}"
            ))
            .send()
            .await
            .expect("list items");
        assert_eq!(resp.status(), StatusCode::OK, "listing at offset {offset}");
        let body: Value = resp.json().await.expect("page json");
        let items = body["items"].as_array().expect("items array");
        for item in items {
            let id = item["id"].as_str().expect("id").to_string();
            let title = item["title"].as_str().expect("title").to_string();
            if seen.insert(id.clone()) {
                all.push((id, title));
            }
        }
        if items.len() < 100 {
            return all;
        }
    }
    panic!("more than 100 000 items listed for {uid}");
}

// ---------------------------------------------------------------------------------------------
// Write bursts

#[derive(Debug, Clone)]
struct Ack {
    id: String,
    title: String,
    at: Instant,
}

/// What a burst saw: every 201, and a count per outcome ("201", "504", "transport: timeout" …).
#[derive(Debug, Default)]
struct Burst {
    acked: Vec<Ack>,
    outcomes: BTreeMap<String, usize>,
    /// The first few answers other than 201, 503 or 504, with their bodies.
    unexpected: Vec<String>,
}

impl Burst {
    fn acked_since(&self, t: Instant) -> usize {
        self.acked.iter().filter(|a| a.at >= t).count()
    }

    /// Writes may fail while a process or Redis is down, but only as 503 or 504, and never by
    /// hanging past the client's timeout.
    fn assert_only_clean_failures(&self) {
        let bad: Vec<(&String, &usize)> = self
            .outcomes
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "201" | "503" | "504"))
            .collect();
        assert!(
            bad.is_empty(),
            "writes must answer 201, 503 or 504; outcomes {:?}; examples {:?}",
            self.outcomes,
            self.unexpected
        );
    }
}

/// `n` tasks writing items (unique titles) until told to stop, each waiting for its answer before
/// the next write; a failed write is recorded and followed by a short pause, never retried.
struct Writers {
    state: Arc<Mutex<Burst>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One writer: posts items titled `{prefix} item {i}` until `stop` (or `hard_deadline`).
async fn write_until_stopped(
    base: String,
    token: String,
    prefix: String,
    client_timeout: Duration,
    hard_deadline: Instant,
    state: Arc<Mutex<Burst>>,
    stop: Arc<AtomicBool>,
) {
    let client = client(client_timeout);
    for i in 0u64.. {
        if stop.load(Ordering::SeqCst) || Instant::now() >= hard_deadline {
            break;
        }
        let title = format!("{prefix} item {i}");
        let resp = client
            .post(format!("{base}/api/v1/items"))
            .bearer_auth(&token)
            .json(&json!({"title": title, "body": "redis bus test"}))
            .send()
            .await;
        let (outcome, detail) = match resp {
            Ok(r) if r.status() == StatusCode::CREATED => match r.json::<Value>().await {
                Ok(item) => match item["id"].as_str() {
                    Some(id) => {
                        let ack = Ack {
                            id: id.to_string(),
                            title,
                            at: Instant::now(),
                        };
                        let mut s = state.lock();
                        s.acked.push(ack);
                        *s.outcomes.entry("201".to_string()).or_default() += 1;
                        continue;
                    }
                    None => ("201 without id".to_string(), item.to_string()),
                },
                Err(e) => ("201 with unreadable body".to_string(), e.to_string()),
            },
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                (status.as_u16().to_string(), body)
            }
            Err(e) if e.is_timeout() => ("transport: timeout".to_string(), e.to_string()),
            Err(e) if e.is_connect() => ("transport: connect".to_string(), e.to_string()),
            Err(e) => ("transport: other".to_string(), e.to_string()),
        };
        record_failure(&state, outcome, detail);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts a write that got no 201; keeps the first few unexpected ones with their details.
fn record_failure(state: &Mutex<Burst>, outcome: String, detail: String) {
    let mut s = state.lock();
    let expected = outcome == "503" || outcome == "504";
    if !expected && s.unexpected.len() < 5 {
        s.unexpected.push(format!("{outcome}: {detail}"));
    }
    *s.outcomes.entry(outcome).or_default() += 1;
}

/// Hard bound of a burst, whatever the test does.
const BURST_BOUND: Duration = Duration::from_secs(60);

impl Writers {
    fn start(base: &str, token: &str, n: usize, client_timeout: Duration) -> Writers {
        let state = Arc::new(Mutex::new(Burst::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let run = Uuid::now_v7().simple().to_string();
        let hard_deadline = Instant::now() + BURST_BOUND;
        let mut tasks = Vec::new();
        for w in 0..n {
            tasks.push(tokio::spawn(write_until_stopped(
                base.to_string(),
                token.to_string(),
                format!("burst {run} writer {w}"),
                client_timeout,
                hard_deadline,
                state.clone(),
                stop.clone(),
            )));
        }
        Writers { state, stop, tasks }
    }

    fn acked(&self) -> usize {
        self.state.lock().acked.len()
    }

    fn acked_since(&self, t: Instant) -> usize {
        self.state.lock().acked_since(t)
    }

    /// Polls until at least `n` writes were acknowledged since `since`; panics after `within`.
    async fn wait_acked_since(&self, since: Instant, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acked_since(since) < n {
            if Instant::now() >= deadline {
                let s = self.state.lock();
                panic!(
                    "fewer than {n} writes acknowledged within {} s (outcomes {:?}, examples {:?})",
                    within.as_secs(),
                    s.outcomes,
                    s.unexpected
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the writers, waits for their last answers, and returns what they saw.
    async fn finish(self) -> Burst {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("writer task");
        }
        let burst = std::mem::take(&mut *self.state.lock());
        burst
    }
}

/// Every acknowledged write is readable through `base` with its title.
async fn assert_readable(base: &str, acked: &[Ack]) {
    let client = client(Duration::from_secs(30));
    let failures: Vec<String> = futures::stream::iter(acked.iter().cloned())
        .map(|ack| {
            let client = client.clone();
            let url = format!("{base}/api/v1/items/{}", ack.id);
            async move {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => match r.json::<Value>().await {
                        Ok(item) if item["title"] == ack.title.as_str() => None,
                        Ok(item) => Some(format!(
                            "{}: title {} instead of {:?}",
                            ack.id, item["title"], ack.title
                        )),
                        Err(e) => Some(format!("{}: unreadable body: {e}", ack.id)),
                    },
                    Ok(r) => Some(format!("{}: {}", ack.id, r.status())),
                    Err(e) => Some(format!("{}: {e}", ack.id)),
                }
            }
        })
        .buffer_unordered(8)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} of {} acknowledged writes not readable as written, e.g. {:?}",
        failures.len(),
        acked.len(),
        &failures[..failures.len().min(10)]
    );
}

/// The user's full listing holds every acknowledged write, and no title twice (each write was
/// applied once, even when its message was delivered again).
async fn assert_applied_once(base: &str, uid: &str, acked: &[Ack]) {
    let listed = list_all(base, uid).await;
    let mut per_title: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, title) in &listed {
        per_title
            .entry(title.as_str())
            .or_default()
            .push(id.as_str());
    }
    let twice: Vec<(&&str, &Vec<&str>)> =
        per_title.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} titles applied more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let missing: Vec<&str> = acked
        .iter()
        .filter(|a| !per_title.contains_key(a.title.as_str()))
        .map(|a| a.id.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged items missing from the user's listing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_serve_the_api() {
    bounded(async {
        let Some(d) = Deployment::start(Fsync::Always, &[]).await else {
            return;
        };
        let base = d.base.clone();
        let (uid, token) = user(&base, "ada@example.com").await;

        let mut created = Vec::new();
        for n in 0..20 {
            let item = create_item(&base, &token, &format!("note {n}")).await;
            assert_eq!(item["user_id"], uid.as_str());
            created.push(item);
        }
        for item in &created {
            let fetched = get_item(&base, item["id"].as_str().unwrap()).await;
            assert_eq!(&fetched, item, "an item reads back as created");
        }
        let listed = list_all(&base, &uid).await;
        let listed_ids: HashSet<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
        let created_ids: HashSet<&str> =
            created.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(
            listed_ids, created_ids,
            "the listing holds exactly the 20 items"
        );

        let http = client(Duration::from_secs(30));
        expect_error(
            http.get(format!("{base}/api/v1/items/{}", Uuid::now_v7()))
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        expect_error(
            http.post(format!("{base}/api/v1/items"))
                .json(&json!({"title": "no token"}))
                .send()
                .await
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;

        // A second web node on the same Redis serves the same data, and takes the same token.
        let (second, _second_dir) = d.another_web();
        let base2 = second.base();
        wait_readyz(&base2, StatusCode::OK, Duration::from_secs(30)).await;
        for item in &created {
            let fetched = get_item(&base2, item["id"].as_str().unwrap()).await;
            assert_eq!(&fetched, item, "the second web node reads the same item");
        }
        let listed2 = list_all(&base2, &uid).await;
        assert_eq!(listed2, listed, "both web nodes list the same items");
        let via_second = create_item(&base2, &token, "through the second node").await;
        let back = get_item(&base, via_second["id"].as_str().unwrap()).await;
        assert_eq!(
            back, via_second,
            "a write through one web node is read through the other"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_burst_loses_no_acknowledged_write() {
    bounded(async {
        let flags = [
            "--queue-heartbeat",
            "1s",
            "--direct-timeout",
            "2s",
            "--durable-timeout",
            "10s",
        ];
        let Some(mut d) = Deployment::start(Fsync::Always, &flags).await else {
            return;
        };
        let base = d.base.clone();
        let (uid, token) = user(&base, "burst@example.com").await;

        let started = Instant::now();
        let writers = Writers::start(&base, &token, 8, Duration::from_secs(15));
        writers
            .wait_acked_since(started, 1, Duration::from_secs(10))
            .await;
        let elapsed = started.elapsed();
        if elapsed < Duration::from_millis(1500) {
            tokio::time::sleep(Duration::from_millis(1500) - elapsed).await;
        }
        let before_kill = writers.acked();
        d.kill_backend();
        d.restart_backend();
        let restarted = Instant::now();
        // Keep writing for 3 s after the restart, and until the new backend acknowledged writes.
        tokio::time::sleep(Duration::from_secs(3)).await;
        writers
            .wait_acked_since(restarted, 1, Duration::from_secs(20))
            .await;
        let burst = writers.finish().await;
        eprintln!(
            "backend SIGKILL: {} acknowledged ({before_kill} before the kill, {} after the restart); outcomes {:?}",
            burst.acked.len(),
            burst.acked_since(restarted),
            burst.outcomes
        );
        assert!(
            before_kill >= 5,
            "the burst wrote too little before the kill to mean anything: {before_kill}"
        );
        burst.assert_only_clean_failures();

        wait_readyz(&base, StatusCode::OK, Duration::from_secs(20)).await;
        assert_readable(&base, &burst.acked).await;
        assert_applied_once(&base, &uid, &burst.acked).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_burst_recovers_without_restarting_nodes() {
    bounded(async {
        let durable_timeout = Duration::from_secs(2);
        let flags = [
            "--queue-heartbeat",
            "1s",
            "--direct-timeout",
            "1s",
            "--durable-timeout",
            "2s",
        ];
        let Some(mut d) = Deployment::start(Fsync::Always, &flags).await else {
            return;
        };
        let base = d.base.clone();
        let (uid, token) = user(&base, "outage@example.com").await;

        let started = Instant::now();
        let writers = Writers::start(&base, &token, 8, Duration::from_secs(10));
        writers
            .wait_acked_since(started, 20, Duration::from_secs(20))
            .await;

        d.redis.kill();
        let killed = Instant::now();
        wait_readyz(&base, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(10)).await;

        // A write while Redis is down fails cleanly and in time: 503 or 504, not 500, no hang.
        let probe = Instant::now();
        let resp = client(Duration::from_secs(10))
            .post(format!("{base}/api/v1/items"))
            .bearer_auth(&token)
            .json(&json!({"title": "during the outage"}))
            .send()
            .await
            .expect("a write during the outage is answered (no hang past 10 s)");
        let took = probe.elapsed();
        let status = resp.status();
        let body: Value = resp.json().await.expect("error body is JSON");
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "unavailable", "{body}")
            }
            StatusCode::GATEWAY_TIMEOUT => assert_eq!(body["error"]["code"], "timeout", "{body}"),
            other => panic!("a write while Redis is down answered {other}: {body}"),
        }
        assert!(
            took <= durable_timeout + Duration::from_secs(2),
            "a write while Redis is down took {took:?}"
        );
        assert!(d.web.is_running() && d.backend.is_running(), "nodes survive the outage");

        d.redis.restart().await;
        let restarted = Instant::now();
        eprintln!("redis was down for {:?}", restarted - killed);
        wait_readyz(&base, StatusCode::OK, Duration::from_secs(20)).await;
        // Writes succeed again, through the same nodes.
        writers
            .wait_acked_since(restarted, 10, Duration::from_secs(20))
            .await;
        let burst = writers.finish().await;
        eprintln!(
            "redis SIGKILL: {} acknowledged ({} before the kill, {} after the restart); outcomes {:?}",
            burst.acked.len(),
            burst.acked.iter().filter(|a| a.at < killed).count(),
            burst.acked_since(restarted),
            burst.outcomes
        );
        burst.assert_only_clean_failures();
        assert!(d.web.is_running() && d.backend.is_running(), "no node restarted");

        assert_readable(&base, &burst.acked).await;
        assert_applied_once(&base, &uid, &burst.acked).await;
    })
    .await;
}

/// `gorgon dlq ACTION QUEUE` against the deployment's Redis; returns stdout.
async fn dlq(d: &Deployment, action: &str, queue: &str) -> String {
    let url = d.redis.url();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_gorgon"))
            .args([
                "dlq",
                action,
                queue,
                "--redis",
                url.as_str(),
                "--redis-namespace",
                d.ns.as_str(),
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("gorgon dlq {action} did not exit within 30 s"))
    .expect("run gorgon dlq");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    assert!(
        output.status.success(),
        "gorgon dlq {action} {queue} failed ({}); stdout: {stdout}",
        output.status
    );
    stdout
}

/// Non-empty lines of a command's output.
fn lines(out: &str) -> Vec<&str> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_queue_goes_to_the_dlq() {
    bounded(async {
        let flags = ["--queue-heartbeat", "1s", "--queue-max-attempts", "2"];
        let Some(mut d) = Deployment::start(Fsync::Always, &flags).await else {
            return;
        };
        let base = d.base.clone();
        let queue = key(&d.ns, "q:store");
        let dead = key(&d.ns, "dlq:store");
        let garbage = "not json at all";
        d.redis.lpush(&queue, garbage).await;

        let deadline = Instant::now() + Duration::from_secs(10);
        while d.redis.llen(&dead).await < 1 {
            assert!(
                Instant::now() < deadline,
                "the garbage did not reach {dead} within 10 s ({queue} holds {})",
                d.redis.llen(&queue).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(d.redis.llen(&dead).await, 1, "one dead letter");
        let records = d.redis.lrange(&dead).await;
        let record: Value = serde_json::from_str(&records[0]).expect("a dead letter is JSON");
        assert!(
            record["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "a dead letter says why: {record}"
        );
        assert!(
            records[0].contains(garbage),
            "a dead letter keeps the message: {record}"
        );
        assert!(d.backend.is_running(), "the consumer survives garbage");

        let listed = dlq(&d, "list", "store").await;
        let listed = lines(&listed);
        assert_eq!(
            listed.len(),
            1,
            "one JSON line per dead message: {listed:?}"
        );
        let entry: Value = serde_json::from_str(listed[0]).expect("dlq list prints JSON lines");
        assert!(entry["reason"].is_string(), "{entry}");
        assert!(listed[0].contains(garbage), "{entry}");

        // The API keeps working.
        let (_, token) = user(&base, "dlq@example.com").await;
        let item = create_item(&base, &token, "after the garbage").await;
        let back = get_item(&base, item["id"].as_str().unwrap()).await;
        assert_eq!(back, item);

        let purged = dlq(&d, "purge", "store").await;
        assert!(
            purged
                .split(|c: char| !c.is_ascii_digit())
                .any(|n| n == "1"),
            "purge prints how many it removed (1): {purged:?}"
        );
        assert_eq!(
            d.redis.llen(&dead).await,
            0,
            "purge empties the dead-letter list"
        );
        assert!(lines(&dlq(&d, "list", "store").await).is_empty());
    })
    .await;
}

/// A token of the shape the server issues (32 random bytes, URL-safe base64), known to nobody.
fn unknown_token() -> String {
    use base64::Engine;
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(Uuid::now_v7().as_bytes());
    bytes.extend_from_slice(Uuid::now_v7().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_timeout_is_a_clean_504() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        let ns = namespace();
        let dir = tempfile::tempdir().expect("web data dir");
        let flags: Vec<String> = ["--direct-timeout", "1s", "--durable-timeout", "1s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Only a web node: every call it makes goes onto Redis and nobody answers.
        let node = web(&redis, &ns, dir.path(), &flags);
        let base = node.base();
        let http = client(Duration::from_secs(10));

        let health = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(
            health.status(),
            StatusCode::OK,
            "the web node itself is alive"
        );

        // A public read: its first hop is the app role (a direct call).
        let started = Instant::now();
        let resp = http
            .get(format!("{base}/api/v1/items/{}", Uuid::now_v7()))
            .bearer_auth(unknown_token())
            .send()
            .await
            .expect("answered");
        let took = started.elapsed();
        expect_error(resp, StatusCode::GATEWAY_TIMEOUT, "timeout").await;
        assert!(
            took < Duration::from_secs(3),
            "a 1 s deadline answered after {took:?}"
        );

        // A write: its first hop is the token check at the auth role (a direct call).
        let started = Instant::now();
        let resp = http
            .post(format!("{base}/api/v1/items"))
            .bearer_auth(unknown_token())
            .json(&json!({"title": "nobody home"}))
            .send()
            .await
            .expect("answered");
        let took = started.elapsed();
        expect_error(resp, StatusCode::GATEWAY_TIMEOUT, "timeout").await;
        assert!(
            took < Duration::from_secs(3),
            "a 1 s deadline answered after {took:?}"
        );

        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(
            ready.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "a web node without backend is not ready"
        );
        drop(node);
    })
    .await;
}

/// Reads SSE frames until `n` events arrived (at most 15 s); returns (event name, data).
async fn read_events(resp: reqwest::Response, n: usize) -> Vec<(String, Value)> {
    let mut stream = resp.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while events.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{n} events within 15 s; got {events:?}"))
            .expect("stream open")
            .expect("chunk");
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut kind = String::new();
            let mut data = Value::Null;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).expect("event data is JSON");
                }
            }
            if !kind.is_empty() {
                events.push((kind, data));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_clients_of_every_front() {
    bounded(async {
        let Some(d) = Deployment::start(Fsync::EverySec, &[]).await else {
            return;
        };
        let (other, _dir) = d.another_web();
        let other_base = other.base();
        wait_readyz(&other_base, StatusCode::OK, Duration::from_secs(30)).await;
        let (uid, token) = user(&d.base, "events@example.com").await;
        let http = client(Duration::from_secs(30));
        // One SSE client on each front; the writes go through the first front only.
        let mut streams = Vec::new();
        for base in [&d.base, &other_base] {
            let resp = http
                .get(format!("{base}/api/v1/events?topic=items&user_id={uid}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("subscribe");
            assert_eq!(resp.status(), StatusCode::OK);
            streams.push(resp);
        }
        // Subscriptions are live once the response headers are in; give the relay a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let item = create_item(&d.base, &token, "seen everywhere").await;
        let id = item["id"].as_str().expect("id").to_string();
        let resp = http
            .delete(format!("{}/api/v1/items/{id}", d.base))
            .bearer_auth(&token)
            .send()
            .await
            .expect("delete");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        for stream in streams {
            let events = read_events(stream, 2).await;
            let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(kinds, ["item.created", "item.deleted"], "{events:?}");
            assert_eq!(events[0].1["subject_id"], id.as_str());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_burst_of_jobs_finishes_every_accepted_job() {
    bounded(async {
        // Jobs run on the backend (the app role's workers); each hash takes 40 ms, 8 at once, so
        // the kill lands with jobs queued in Redis, stored, and running.
        let flags = [
            "--queue-heartbeat",
            "1s",
            "--durable-timeout",
            "15s",
            "--job-workers",
            "8",
            "--job-hash-delay",
            "40ms",
            "--job-lease",
            "1s",
            "--job-timeout",
            "500ms",
        ];
        let Some(mut d) = Deployment::start(Fsync::Always, &flags).await else {
            return;
        };
        let base = d.base.clone();
        let (_, token) = user(&base, "jobs@example.com").await;
        let http = client(Duration::from_secs(30));
        let burst = common::JobBurst::start(&http, &base, &token, 240);
        burst.wait_acknowledged(80, Duration::from_secs(30)).await;
        let before_kill = burst.acknowledged();
        d.kill_backend();
        d.restart_backend();
        // Submissions made while the backend was down wait in Redis and are accepted after.
        let accepted = burst.finish().await;
        assert!(accepted.len() > before_kill, "jobs were accepted after the restart too");

        common::wait_all_done(&http, &base, &token, &accepted, Duration::from_secs(60)).await;
        eprintln!(
            "backend SIGKILL with jobs: {} accepted ({before_kill} before the kill), all done with the right hash",
            accepted.len()
        );
    })
    .await;
}
