//! Test support: a real node on a random loopback port, over a real embedded store, and an
//! HTTP client. Nothing is mocked.
//!
//! `contract.rs` beside it (the store contract) is not part of this module: only
//! `tests/store_contract.rs` includes it, so other tests do not compile it.

#![allow(dead_code)]

pub mod cluster;
pub mod mongo;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod servers;

use gorgon::configuration::RunArgs;
use gorgon::jobs::JobRegistry;
use gorgon::startup::Node;
use gorgon::store::StoreUrl;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub base: String,
    pub client: Client,
    node: Option<Node>,
    pub dir: TempDir,
}

pub fn run_args(dir: &std::path::Path, extra: &[&str]) -> RunArgs {
    let mut flags = vec![
        "--admin-email",
        ADMIN_EMAIL,
        "--admin-password",
        ADMIN_PASSWORD,
    ];
    flags.extend_from_slice(extra);
    RunArgs::local(dir, &flags).expect("valid run flags")
}

/// With `GORGON_TEST_API_STORE=mongodb`, the nodes of these tests keep their data in MongoDB (the
/// test server, or `GORGON_TEST_MONGODB_URI`) instead of the embedded store: one database per
/// data directory, so a node started again on the same directory finds its data. `scripts/test.sh`
/// runs the API, edge and security tests this way too, so that bad input gets the same answers on
/// both backends.
async fn shared_store_for(dir: &std::path::Path) -> Option<String> {
    match std::env::var("GORGON_TEST_API_STORE").as_deref() {
        Ok("mongodb") => {}
        Ok("") | Err(_) => return None,
        Ok(other) => panic!("GORGON_TEST_API_STORE={other}: only mongodb is known"),
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let database = format!("api_{:016x}", hasher.finish());
    if let Ok(uri) = std::env::var("GORGON_TEST_MONGODB_URI") {
        return Some(mongo::with_database(&uri, &database));
    }
    let server = mongo::MongoServer::shared()
        .await
        .expect("GORGON_TEST_API_STORE=mongodb needs secantusd-py (scripts/test.sh installs it)");
    Some(server.url_for(&database))
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[&str]) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::spawn_in(dir, extra).await
    }

    pub async fn spawn_in(dir: TempDir, extra: &[&str]) -> TestApp {
        Self::spawn_jobs(dir, extra, JobRegistry::default()).await
    }

    /// A node whose app role knows the job kinds of `jobs`.
    pub async fn spawn_jobs(dir: TempDir, extra: &[&str], jobs: JobRegistry) -> TestApp {
        let mut args = run_args(dir.path(), extra);
        if let Some(url) = shared_store_for(dir.path()).await {
            args.store = Some(StoreUrl::parse(&url).expect("a store URL"));
        }
        let node = Node::start_with(args, jobs).await.expect("node starts");
        let addr = node.local_addr().expect("web role listens");
        TestApp {
            base: format!("http://{addr}"),
            client: Client::new(),
            node: Some(node),
            dir,
        }
    }

    /// Stops the node gracefully and hands back its data directory.
    pub async fn stop(mut self) -> TempDir {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
        self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// GET `path` and parse its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("json body")
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut req = self.client.put(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, name: &str, email: &str) -> Value {
        let resp = self
            .post(
                "/api/v1/auth/register",
                None,
                &json!({"name": name, "email": email, "password": PASSWORD}),
            )
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "register {email}: {body}");
        body
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let resp = self
            .post(
                "/api/v1/auth/login",
                None,
                &json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "login {email}");
        let body: Value = resp.json().await.expect("login json");
        body["token"].as_str().expect("token").to_string()
    }

    /// Registers and logs in a user; returns (user id, token).
    pub async fn user(&self, email: &str) -> (String, String) {
        let user = self.register("Test User", email).await;
        let token = self.login(email, PASSWORD).await;
        (user["id"].as_str().expect("id").to_string(), token)
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    pub async fn create_item(&self, token: &str, body: &Value) -> Value {
        let resp = self.post("/api/v1/items", Some(token), body).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.expect("item json")
    }
}

/// Asserts the status and the error shape `{"error": {"code", "message"}}`; returns the body.
pub async fn expect_error(resp: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status, "status");
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "error code in {body}");
    assert!(body["error"]["message"].is_string(), "message in {body}");
    body
}

/// Registers `email` (password [`PASSWORD`]) on the node at `base` and logs in: (user id, token).
/// Whether the program `name` is on the PATH. `scripts/test.sh` installs the tools the tests use
/// and sets `GORGON_REQUIRE_TOOLS=1`, which makes a missing one fail the test; under a bare
/// `cargo test` without it the test says it was skipped (the caller returns).
pub fn tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("GORGON_REQUIRE_TOOLS").is_none(),
            "{name} is required (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: {name} is not installed (scripts/test.sh installs it)");
    }
    found
}

pub async fn register_and_login(client: &Client, base: &str, email: &str) -> (String, String) {
    let resp = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"name": "Test User", "email": email, "password": PASSWORD}))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), StatusCode::CREATED, "register {email}");
    let user: Value = resp.json().await.expect("user json");
    let resp = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), StatusCode::OK, "login {email}");
    let body: Value = resp.json().await.expect("login json");
    (
        user["id"].as_str().expect("user id").to_string(),
        body["token"].as_str().expect("token").to_string(),
    )
}

/// Polls every accepted job `(id, expected sha256)` until all are `done` with their hash
/// (panics on a lost or dead job, or after `within`); returns how many took more than one attempt.
pub async fn wait_all_done(
    client: &Client,
    base: &str,
    token: &str,
    accepted: &[(String, String)],
    within: std::time::Duration,
) -> usize {
    let deadline = std::time::Instant::now() + within;
    let mut pending = accepted.to_vec();
    let mut retried = 0;
    while !pending.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} accepted jobs never finished",
            pending.len()
        );
        let mut still = Vec::new();
        for (id, sha) in pending {
            let resp = client
                .get(format!("{base}/api/v1/jobs/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("get job");
            assert_eq!(resp.status(), StatusCode::OK, "accepted job {id} lost");
            let job: Value = resp.json().await.expect("job json");
            match job["state"].as_str() {
                Some("done") => {
                    assert_eq!(job["result"]["sha256"], sha.as_str(), "job {id}");
                    if job["attempts"].as_u64().unwrap_or(0) > 1 {
                        retried += 1;
                    }
                }
                Some("dead") => panic!("job {id} died: {job}"),
                _ => still.push((id, sha)),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    retried
}

/// A burst of `hash` jobs `{"n": n}` submitted 8 at a time; a job counts once it got its 202.
pub struct JobBurst {
    acknowledged: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<Option<(String, String)>>>,
}

impl JobBurst {
    pub fn start(client: &Client, base: &str, token: &str, jobs: usize) -> JobBurst {
        use futures::StreamExt;
        let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shared = (
            client.clone(),
            base.to_string(),
            token.to_string(),
            acknowledged.clone(),
        );
        let submissions = (0..jobs).map(move |n| {
            let (client, base, token, acknowledged) = shared.clone();
            async move {
                let resp = client
                    .post(format!("{base}/api/v1/jobs"))
                    .bearer_auth(&token)
                    .json(&json!({"kind": "hash", "payload": {"n": n}}))
                    .send()
                    .await
                    .ok()?;
                if resp.status() != StatusCode::ACCEPTED {
                    return None;
                }
                let job: Value = resp.json().await.ok()?;
                acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // The hash job digests the payload's canonical JSON.
                let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    format!(r#"{{"n":{n}}}"#).as_bytes(),
                ));
                Some((job["id"].as_str()?.to_string(), sha))
            }
        });
        let task = tokio::spawn(futures::stream::iter(submissions).buffered(8).collect());
        JobBurst { acknowledged, task }
    }

    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` jobs were acknowledged (panics after `within`).
    pub async fn wait_acknowledged(&self, n: usize, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.acknowledged() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the burst is too slow"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Every acknowledged job as (id, expected sha256), once all submissions ended.
    pub async fn finish(self) -> Vec<(String, String)> {
        let accepted: Vec<_> = self
            .task
            .await
            .expect("burst")
            .into_iter()
            .flatten()
            .collect();
        let ids: std::collections::HashSet<&str> =
            accepted.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids.len(),
            accepted.len(),
            "every acknowledgement is its own job"
        );
        accepted
    }
}

/// Every `gorgon_*` name in a file under `dashboards/` and in the alert rules
/// (`deploy/alerts.yml`): each must be a metric the node exports.
pub fn dashboard_metric_names() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = Vec::new();
    let mut files = vec![root.join("deploy/alerts.yml")];
    let mut dirs = vec![root.join("dashboards")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dashboards/") {
            let path = entry.expect("read dashboards/").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for path in files {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        names.extend(metric_names_in(&text));
    }
    names.sort();
    names.dedup();
    // The dashboard's own uid and datasource ids are not metrics.
    names.retain(|n| n != "gorgon_prometheus" && n != "gorgon_overview");
    names
}

/// Every `gorgon_*` word in `text`.
pub fn metric_names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("gorgon_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Whether Prometheus text `metrics` has a series named `name`.
/// A histogram's base name (`…_seconds`) counts through its `_bucket` series.
pub fn exports(metrics: &str, name: &str) -> bool {
    [name.to_string(), format!("{name}_bucket")]
        .iter()
        .any(|name| {
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        })
}
