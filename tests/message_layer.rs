//! The message layer, black-box, with real processes on a real `redis-server` (issue 14, items 1
//! and 7):
//!
//! - no password and no token ever reaches Redis (its keys, its append-only file, its dead
//!   letters as `gorgon dlq list` prints them) or a node's log, whether the backend is away, back,
//!   or failing so that a registration is dead-lettered;
//! - messages queued in the format of the build before requests were types (`{"InsertItem":
//!   {..}}` on `q:store`, `{"CreateItem": {..}}` on `q:app`) are still handled after an upgrade.
//!
//! Each test has its own redis-server and namespace; the tests of this file run one at a time.
//! Skipped with a message when `redis-server` is not installed, unless `GORGON_REQUIRE_TOOLS` is
//! set.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::redis::{Fsync, RedisServer};
use common::{ADMIN_EMAIL, ADMIN_PASSWORD};
use parking_lot::Mutex;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use uuid::Uuid;

/// The tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound of any one test; every wait inside is bounded well below it.
const TEST_BOUND: Duration = Duration::from_secs(240);

/// How long a process may take to print `gorgon node ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The most verbose logging: every log line any node could write is scanned.
const LOG_LEVEL: &str = "trace";

/// Runs a test body under the file's lock and `TEST_BOUND`.
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_BOUND, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {} s", TEST_BOUND.as_secs()));
}

fn namespace() -> String {
    format!("t{}", Uuid::now_v7().simple())
}

/// `gorgon:{ns}:{suffix}`, e.g. `key(ns, "q:store")`.
fn key(ns: &str, suffix: &str) -> String {
    format!("gorgon:{ns}:{suffix}")
}

// ---------------------------------------------------------------------------------------------
// Processes whose whole output (stdout and stderr) is kept

/// A `gorgon run` child process whose stdout and stderr are captured in full.
struct Node {
    name: String,
    child: Child,
    base: Option<String>,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Starts `gorgon run --roles ROLES ...` on `redis`, with `RUST_LOG=LOG_LEVEL`, and returns
    /// once it is ready (and listening, when it has the web role). Blocking.
    fn start(
        name: &str,
        roles: &str,
        redis: &RedisServer,
        ns: &str,
        data: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Node {
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
        args.extend(extra.iter().map(|s| s.to_string()));
        let web = roles.split(',').any(|r| r == "web" || r == "all");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gorgon"));
        command
            .args(&args)
            .env("RUST_LOG", LOG_LEVEL)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
        let stdout = child.stdout.take().expect("piped stdout");
        let out = output.clone();
        let stdout_reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader
                .read_until(b'\n', &mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                out.lock().extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line);
                if let Some(url) = text.strip_prefix("gorgon listening on ") {
                    let _ = tx.send(Some(url.trim().to_string()));
                } else if text.trim_start().starts_with("gorgon node ready") {
                    let _ = tx.send(None);
                }
                line.clear();
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let err = output.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 64 * 1024];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => err.lock().extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut node = Node {
            name: name.to_string(),
            child,
            base: None,
            output,
            readers: vec![stdout_reader, stderr_reader],
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = false;
        while !(ready && (node.base.is_some() || !web)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some(url)) => node.base = Some(url),
                Ok(None) => ready = true,
                Err(_) => {
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    panic!(
                        "{name} was not ready within {} s; its output ends with:\n{}",
                        READY_TIMEOUT.as_secs(),
                        node.tail(40)
                    );
                }
            }
        }
        node
    }

    fn base(&self) -> String {
        self.base
            .clone()
            .unwrap_or_else(|| panic!("{} has no web role", self.name))
    }

    /// SIGTERM, waits for the exit (SIGKILL after 30 s) and for the whole output.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status()
                .expect("run kill -TERM");
            assert!(status.success(), "kill -TERM {} failed", self.name);
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    eprintln!("{} did not stop within 30 s of SIGTERM; killed", self.name);
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Everything the process wrote so far (stdout and stderr).
    fn output(&self) -> Vec<u8> {
        self.output.lock().clone()
    }

    fn tail(&self, lines: usize) -> String {
        let text = String::from_utf8_lossy(&self.output()).into_owned();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node without blocking the runtime's other tasks.
fn start_node(
    name: &str,
    roles: &str,
    redis: &RedisServer,
    ns: &str,
    data: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Node {
    tokio::task::block_in_place(|| Node::start(name, roles, redis, ns, data, extra, envs))
}

fn stop_node(node: &mut Node) {
    tokio::task::block_in_place(|| node.stop())
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Sends a request; returns its status and JSON body (`null` when there is none).
async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let resp = request.send().await.expect("an HTTP answer");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn register(base: &str, email: &str, password: &str) -> (StatusCode, Value) {
    send(
        http()
            .post(format!("{base}/api/v1/auth/register"))
            .json(&json!({"name": "Secret Keeper", "email": email, "password": password})),
    )
    .await
}

async fn login(base: &str, email: &str, password: &str) -> (StatusCode, Value) {
    send(
        http()
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password})),
    )
    .await
}

async fn change_password(
    base: &str,
    token: &str,
    user_id: &str,
    current: &str,
    new: &str,
) -> (StatusCode, Value) {
    send(
        http()
            .patch(format!("{base}/api/v1/users/{user_id}"))
            .bearer_auth(token)
            .json(&json!({"current_password": current, "password": new})),
    )
    .await
}

async fn get_user(base: &str, token: &str, user_id: &str) -> (StatusCode, Value) {
    send(
        http()
            .get(format!("{base}/api/v1/users/{user_id}"))
            .bearer_auth(token),
    )
    .await
}

/// Logs in, expecting 200; returns the token.
async fn token(base: &str, email: &str, password: &str) -> String {
    let (status, body) = login(base, email, password).await;
    assert_eq!(status, StatusCode::OK, "login {email} at {base}: {body}");
    body["token"].as_str().expect("a token").to_string()
}

/// Repeats `attempt` every 200 ms until it answers `want` (panics after `within`).
async fn eventually<F, Fut>(what: &str, want: StatusCode, within: Duration, mut attempt: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (StatusCode, Value)>,
{
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = attempt().await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {status} after {} s (want {want}): {body}",
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_readyz(base: &str, within: Duration) {
    eventually("readyz", StatusCode::OK, within, || {
        send(http().get(format!("{base}/readyz")))
    })
    .await;
}

/// A failure of a request made while the backend is away: a 503 or a 504, never a success.
fn assert_unavailable(what: &str, (status, body): &(StatusCode, Value)) {
    assert!(
        *status == StatusCode::SERVICE_UNAVAILABLE || *status == StatusCode::GATEWAY_TIMEOUT,
        "{what} with the backend away: {status} {body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets and where they must not be

/// A secret and every form in which it would betray itself.
struct Secret {
    label: String,
    forms: Vec<(&'static str, Vec<u8>)>,
}

impl Secret {
    fn password(label: &str, password: &str) -> Secret {
        let b = password.as_bytes();
        Secret {
            label: label.to_string(),
            forms: vec![
                ("as is", b.to_vec()),
                ("hex", hex::encode(b).into_bytes()),
                (
                    "base64",
                    base64::engine::general_purpose::STANDARD_NO_PAD
                        .encode(b)
                        .into_bytes(),
                ),
                (
                    "base64url",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(b)
                        .into_bytes(),
                ),
            ],
        }
    }

    fn token(label: &str, token: &str) -> Secret {
        let mut secret = Secret::password(label, token);
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .expect("a token is URL-safe base64");
        let array = format!(
            "[{}]",
            raw.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        secret.forms.extend([
            ("raw bytes", raw.clone()),
            ("raw bytes, hex", hex::encode(&raw).into_bytes()),
            (
                "raw bytes, base64",
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(&raw)
                    .into_bytes(),
            ),
            ("raw bytes, JSON array", array.into_bytes()),
        ]);
        secret
    }
}

/// Every place in `haystack` (named `place`) where a form of a secret occurs, with context.
fn leaks(place: &str, haystack: &[u8], secrets: &[Secret]) -> Vec<String> {
    let mut found = Vec::new();
    for secret in secrets {
        for (form, needle) in &secret.forms {
            let mut from = 0;
            while let Some(at) = find(&haystack[from..], needle) {
                let at = from + at;
                let start = at.saturating_sub(160);
                let end = (at + needle.len() + 160).min(haystack.len());
                found.push(format!(
                    "{} ({form}) in {place}: …{}…",
                    secret.label,
                    String::from_utf8_lossy(&haystack[start..end])
                ));
                from = at + needle.len();
                if found.len() > 20 {
                    return found;
                }
            }
        }
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    find(haystack, needle.as_bytes()).is_some()
}

/// Every bulk string, string and number inside a Redis reply, concatenated (newline-separated).
fn flatten(value: &redis::Value, out: &mut Vec<u8>) {
    use redis::Value as V;
    match value {
        V::BulkString(bytes) => out.extend_from_slice(bytes),
        V::SimpleString(s) => out.extend_from_slice(s.as_bytes()),
        V::VerbatimString { text, .. } => out.extend_from_slice(text.as_bytes()),
        V::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
        V::Array(items) | V::Set(items) => {
            for item in items {
                flatten(item, out);
                out.push(b'\n');
            }
        }
        V::Map(pairs) => {
            for (k, v) in pairs {
                flatten(k, out);
                out.push(b'\n');
                flatten(v, out);
                out.push(b'\n');
            }
        }
        V::Attribute { data, .. } => flatten(data, out),
        V::Push { data, .. } => {
            for item in data {
                flatten(item, out);
                out.push(b'\n');
            }
        }
        _ => {}
    }
}

/// Every key in Redis (all namespaces) with its type and its whole content: (key, type, bytes).
async fn dump_redis(redis: &RedisServer) -> Vec<(String, String, Vec<u8>)> {
    let mut conn = redis.connection().await;
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    let mut dump = Vec::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        let read = match kind.as_str() {
            "list" => {
                let mut c = redis::cmd("LRANGE");
                c.arg(&k).arg(0).arg(-1);
                c
            }
            "zset" => {
                let mut c = redis::cmd("ZRANGE");
                c.arg(&k).arg(0).arg(-1).arg("WITHSCORES");
                c
            }
            "string" => {
                let mut c = redis::cmd("GET");
                c.arg(&k);
                c
            }
            "hash" => {
                let mut c = redis::cmd("HGETALL");
                c.arg(&k);
                c
            }
            "set" => {
                let mut c = redis::cmd("SMEMBERS");
                c.arg(&k);
                c
            }
            "stream" => {
                let mut c = redis::cmd("XRANGE");
                c.arg(&k).arg("-").arg("+");
                c
            }
            // Expired between SCAN and TYPE.
            "none" => continue,
            other => panic!(
                "key {} has a type this scan does not read: {other}",
                String::from_utf8_lossy(&k)
            ),
        };
        let value: redis::Value = read
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("read {}: {e}", String::from_utf8_lossy(&k)));
        let mut bytes = k.clone();
        bytes.push(b'\n');
        flatten(&value, &mut bytes);
        dump.push((String::from_utf8_lossy(&k).into_owned(), kind, bytes));
    }
    dump
}

/// Every file under `dir` (the Redis data directory: the append-only files and the log).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read the Redis directory") {
            let path = entry.expect("read the Redis directory").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read a Redis file");
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

/// `gorgon dlq ACTION QUEUE` against `redis` and `ns`; returns stdout and stderr together. A
/// `list` is run twice: `--raw` (the records as stored, password hashes included) first, then
/// the redacted view the admin API shows too, so a scan of the output covers both.
async fn dlq(redis: &RedisServer, ns: &str, action: &str, queue: &str) -> Vec<u8> {
    if action == "list" {
        let mut all = dlq_run(redis, ns, &[action, queue, "--raw"]).await;
        all.extend(dlq_run(redis, ns, &[action, queue]).await);
        return all;
    }
    dlq_run(redis, ns, &[action, queue]).await
}

async fn dlq_run(redis: &RedisServer, ns: &str, args: &[&str]) -> Vec<u8> {
    let url = redis.url();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_gorgon"))
            .arg("dlq")
            .args(args)
            .args(["--redis", url.as_str(), "--redis-namespace", ns])
            .env("RUST_LOG", LOG_LEVEL)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("gorgon dlq {args:?} did not exit within 30 s"))
    .expect("run gorgon dlq");
    assert!(
        output.status.success(),
        "gorgon dlq {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut all = output.stdout;
    all.extend_from_slice(&output.stderr);
    all
}

/// A password nobody else uses: letters, digits and dashes only, so it reads the same in JSON,
/// in a log line and in Redis.
fn password(tag: &str) -> String {
    format!("pw-{tag}-{}", Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------------
// No secret in a queue, a log or a dead letter

/// A front (web, auth, app) and a web-only edge on Redis; the store (and the other roles) on a
/// backend that is away, then back, then failing. Registrations, logins, a password change and
/// an admin creating a user go through both fronts in each state; afterwards no password and no
/// token is in any Redis key, Redis's append-only file (everything ever written to Redis), the
/// dead letters `gorgon dlq list` prints, or any node's log (at `trace`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_token_reaches_redis_or_the_log() {
    bounded(async {
        let started = Instant::now();
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        let ns = namespace();
        let edge_dir = tempfile::tempdir().expect("edge data dir");
        let front_dir = tempfile::tempdir().expect("front data dir");
        let backend_dir = tempfile::tempdir().expect("backend data dir");
        let failing_dir = tempfile::tempdir().expect("failing backend data dir");
        // Short deadlines, so calls made while the backend is away fail soon; a long token cache,
        // so the front still knows a token the store cannot be asked about.
        let front_flags = [
            "--direct-timeout",
            "2s",
            "--durable-timeout",
            "3s",
            "--token-cache-ttl",
            "10m",
        ];
        let edge_flags = ["--direct-timeout", "5s", "--durable-timeout", "5s"];
        let backend_roles = "store,stats,notify,provider";
        let admin_env = [
            ("GORGON_ADMIN_EMAIL", ADMIN_EMAIL),
            ("GORGON_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ];
        let mut secrets = vec![Secret::password("the admin password", ADMIN_PASSWORD)];
        let mut logs: Vec<(String, Vec<u8>)> = Vec::new();

        // Phase 0: an edge alone, no auth role anywhere. A request carrying a password is never
        // queued for a consumer that may never come: 503 at once.
        let mut edge = start_node("edge [web]", "web", &redis, &ns, edge_dir.path(), &edge_flags, &[]);
        let edge_base = edge.base();
        let pw_nobody = password("nobody-home");
        secrets.push(Secret::password("the password sent with no auth role anywhere", &pw_nobody));
        let email_nobody = format!("nobody-{ns}@example.com");
        let t = Instant::now();
        let answer = register(&edge_base, &email_nobody, &pw_nobody).await;
        assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE, "register with no auth role: {}", answer.1);
        let answer = login(&edge_base, &email_nobody, &pw_nobody).await;
        assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE, "login with no auth role: {}", answer.1);
        assert!(t.elapsed() < Duration::from_secs(3), "503s took {:?}", t.elapsed());
        for queue in ["auth", "auth.direct"] {
            assert_eq!(redis.llen(&key(&ns, &format!("q:{queue}"))).await, 0, "nothing queued on q:{queue}");
        }

        // The whole deployment; a first user logs in and uses the token (the front caches it).
        let mut backend = start_node("backend", backend_roles, &redis, &ns, backend_dir.path(), &[], &admin_env);
        let mut front = start_node("front [web,auth,app]", "web,auth,app", &redis, &ns, front_dir.path(), &front_flags, &[]);
        let front_base = front.base();
        wait_readyz(&front_base, Duration::from_secs(30)).await;
        let pw0 = password("first");
        let pw0_new = password("first-changed");
        secrets.push(Secret::password("user 0's first password", &pw0));
        secrets.push(Secret::password("user 0's new password", &pw0_new));
        let email0 = format!("zero-{ns}@example.com");
        let (status, user0) = register(&front_base, &email0, &pw0).await;
        assert_eq!(status, StatusCode::CREATED, "{user0}");
        let id0 = user0["id"].as_str().expect("id").to_string();
        let token0 = token(&front_base, &email0, &pw0).await;
        secrets.push(Secret::token("user 0's token", &token0));
        let (status, body) = get_user(&front_base, &token0, &id0).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // Phase 1: the backend is away (stopped gracefully).
        stop_node(&mut backend);
        logs.push(("the backend's log (first run)".into(), backend.output()));
        let pw1 = password("queued-registration");
        secrets.push(Secret::password("the password of the registration made with the store away", &pw1));
        let email1 = format!("one-{ns}@example.com");
        let pw1_edge = password("queued-registration-edge");
        secrets.push(Secret::password("the password of the registration made at the edge with the store away", &pw1_edge));
        let email1_edge = format!("one-edge-{ns}@example.com");
        // The token is cached: the change reaches the app role and fails on the store.
        let answer = change_password(&front_base, &token0, &id0, &pw0, &pw0_new).await;
        assert_unavailable("a password change at the front", &answer);
        let answer = change_password(&edge_base, &token0, &id0, &pw0, &pw0_new).await;
        assert_unavailable("a password change at the edge", &answer);
        let answer = register(&front_base, &email1, &pw1).await;
        assert_unavailable("a registration at the front", &answer);
        let answer = register(&edge_base, &email1_edge, &pw1_edge).await;
        assert_unavailable("a registration at the edge", &answer);
        let answer = login(&front_base, &email0, &pw0).await;
        assert_unavailable("a login at the front", &answer);
        let answer = login(&edge_base, &email0, &pw0).await;
        assert_unavailable("a login at the edge", &answer);
        // The registrations wait for the store, as hashes.
        let waiting = redis.lrange(&key(&ns, "q:store")).await;
        let registration = waiting
            .iter()
            .find(|m| m.contains(&email1))
            .unwrap_or_else(|| panic!("the front's registration waits on q:store: {waiting:?}"));
        assert!(registration.contains("$argon2id$"), "a queued registration carries a hash: {registration}");

        // Phase 2: the backend is back; everything works, through both fronts.
        let mut backend = start_node("backend (again)", backend_roles, &redis, &ns, backend_dir.path(), &[], &admin_env);
        wait_readyz(&front_base, Duration::from_secs(30)).await;
        // The registrations queued while it was away were stored, with the passwords given.
        let t1 = eventually("the queued registration", StatusCode::OK, Duration::from_secs(15), || {
            login(&front_base, &email1, &pw1)
        })
        .await;
        secrets.push(Secret::token("user 1's token", t1["token"].as_str().expect("token")));
        let pw2 = password("second");
        let pw2_new = password("second-changed");
        secrets.push(Secret::password("user 2's first password", &pw2));
        secrets.push(Secret::password("user 2's new password", &pw2_new));
        let email2 = format!("two-{ns}@example.com");
        let (status, user2) = register(&front_base, &email2, &pw2).await;
        assert_eq!(status, StatusCode::CREATED, "{user2}");
        let id2 = user2["id"].as_str().expect("id").to_string();
        let token2 = token(&front_base, &email2, &pw2).await;
        secrets.push(Secret::token("user 2's first token", &token2));
        let (status, body) = change_password(&front_base, &token2, &id2, &pw2, &pw2_new).await;
        assert_eq!(status, StatusCode::OK, "password change: {body}");
        let (status, body) = login(&front_base, &email2, &pw2).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "the old password no longer works: {body}");
        let token2_new = token(&front_base, &email2, &pw2_new).await;
        secrets.push(Secret::token("user 2's second token", &token2_new));
        let (status, body) = get_user(&front_base, &token2_new, &id2).await;
        assert_eq!(status, StatusCode::OK, "the new token works: {body}");
        assert_eq!(body["email"], email2.as_str());
        // User 0 changes the password that could not be changed before.
        let (status, body) = change_password(&front_base, &token0, &id0, &pw0, &pw0_new).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // At the edge the secrets travel through Redis, to the front's live auth and app roles.
        let edge_login = eventually("a login at the edge", StatusCode::OK, Duration::from_secs(15), || {
            login(&edge_base, &email0, &pw0_new)
        })
        .await;
        let token0_edge = edge_login["token"].as_str().expect("token").to_string();
        secrets.push(Secret::token("user 0's token from the edge", &token0_edge));
        let (status, body) = get_user(&edge_base, &token0_edge, &id0).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let pw0_edge = password("first-changed-at-the-edge");
        secrets.push(Secret::password("user 0's password changed at the edge", &pw0_edge));
        let (status, body) = change_password(&edge_base, &token0_edge, &id0, &pw0_new, &pw0_edge).await;
        assert_eq!(status, StatusCode::OK, "a password change at the edge: {body}");
        let pw3_edge = password("registered-at-the-edge");
        secrets.push(Secret::password("a password registered at the edge", &pw3_edge));
        let (status, body) = register(&edge_base, &format!("edge-{ns}@example.com"), &pw3_edge).await;
        assert_eq!(status, StatusCode::CREATED, "a registration at the edge: {body}");
        // The edge's registration made while the store was away was stored too.
        eventually("the edge's queued registration", StatusCode::OK, Duration::from_secs(15), || {
            login(&front_base, &email1_edge, &pw1_edge)
        })
        .await;
        // An admin creates a user (a password in the request), and a user logs out (a token).
        let admin_token = token(&front_base, ADMIN_EMAIL, ADMIN_PASSWORD).await;
        secrets.push(Secret::token("the admin's token", &admin_token));
        let pw4 = password("created-by-the-admin");
        secrets.push(Secret::password("the password of a user the admin created", &pw4));
        let (status, body) = send(
            http()
                .post(format!("{edge_base}/api/v1/users"))
                .bearer_auth(&admin_token)
                .json(&json!({"name": "Made", "email": format!("made-{ns}@example.com"), "password": pw4})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "an admin creates a user: {body}");
        let (status, body) = send(
            http()
                .post(format!("{edge_base}/api/v1/auth/logout"))
                .bearer_auth(&token2_new),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "logout: {body}");

        // Phase 3: a registration made while the backend is away is dead-lettered by a store that
        // fails every write it takes from Redis (its deadline for them is zero).
        stop_node(&mut backend);
        logs.push(("the backend's log (second run)".into(), backend.output()));
        let pw5 = password("dead-lettered");
        secrets.push(Secret::password("the password of the dead-lettered registration", &pw5));
        let email5 = format!("dead-{ns}@example.com");
        let answer = register(&front_base, &email5, &pw5).await;
        assert_unavailable("the registration to be dead-lettered", &answer);
        // It waits on q:store (as a hash) for the failing store.
        let waited = Instant::now();
        while !redis.lrange(&key(&ns, "q:store")).await.iter().any(|m| m.contains(&email5)) {
            assert!(waited.elapsed() < Duration::from_secs(10), "the registration never reached q:store");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let dead_key = key(&ns, "dlq:store");
        let dead_before = redis.llen(&dead_key).await;
        let mut failing = start_node(
            "failing store",
            "store",
            &redis,
            &ns,
            failing_dir.path(),
            &["--durable-timeout", "0s", "--queue-max-attempts", "1"],
            &[],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let letters = redis.lrange(&dead_key).await;
            if letters.iter().any(|l| l.contains(&email5)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the registration was not dead-lettered within 20 s ({} dead letters before, {} now; q:store holds {}; it was answered {answer:?}): {letters:?}",
                dead_before,
                letters.len(),
                redis.llen(&key(&ns, "q:store")).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop_node(&mut failing);
        logs.push(("the failing store's log".into(), failing.output()));
        let listed = dlq(&redis, &ns, "list", "store").await;
        let listed_text = String::from_utf8_lossy(&listed).into_owned();
        let letter = listed_text
            .lines()
            .find(|l| l.contains(&email5))
            .unwrap_or_else(|| panic!("`gorgon dlq list store` shows the dead-lettered registration:\n{listed_text}"));
        assert!(letter.contains("$argon2id$"), "the dead letter holds the hash: {letter}");
        let found = leaks("`gorgon dlq list store`", &listed, &secrets);
        assert!(found.is_empty(), "secrets in a dead letter:\n{}", found.join("\n"));

        // Every node stops (gracefully, so its log is complete).
        stop_node(&mut edge);
        stop_node(&mut front);
        logs.push(("the edge's log".into(), edge.output()));
        logs.push(("the front's log".into(), front.output()));

        // The scans. First, proof that they see what there is to see: a planted canary is found
        // in the keys and in the append-only file, and the logs hold what logs hold.
        let canary = format!("canary-{}", Uuid::new_v4().simple());
        let canary_secret = [Secret::password("the canary", &canary)];
        redis.lpush(&format!("canary:{ns}"), &format!("{{\"password\":\"{canary}\"}}")).await;
        let dump = dump_redis(&redis).await;
        assert!(
            dump.iter().any(|(_, _, bytes)| !leaks("", bytes, &canary_secret).is_empty()),
            "the key scan finds a planted canary"
        );
        let files = files_under(redis.dir());
        assert!(
            files.iter().any(|(_, bytes)| !leaks("", bytes, &canary_secret).is_empty()),
            "the append-only file scan finds a planted canary"
        );
        assert!(
            files.iter().any(|(_, bytes)| contains(bytes, &email1)),
            "the append-only file holds the queued registration"
        );
        for (place, log) in &logs {
            assert!(contains(log, "gorgon node ready"), "{place} holds the process's stdout");
            assert!(contains(log, " TRACE "), "{place} holds its stderr, at trace");
        }

        // `GORGON_TEST_KEEP_LOGS=DIR` keeps what was scanned, for a look after the run.
        if let Some(dir) = std::env::var_os("GORGON_TEST_KEEP_LOGS") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("create GORGON_TEST_KEEP_LOGS");
            for (n, (place, log)) in logs.iter().enumerate() {
                let name = format!("{n}-{}.log", place.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
                std::fs::write(dir.join(name), log).expect("keep a log");
            }
            let keys: Vec<u8> = dump.iter().flat_map(|(_, _, b)| b.iter().copied().chain([b'\n'])).collect();
            std::fs::write(dir.join("redis-keys.txt"), keys).expect("keep the keys");
        }
        let mut found = Vec::new();
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for (name, kind, bytes) in &dump {
            *kinds.entry(kind.clone()).or_default() += 1;
            found.extend(leaks(&format!("Redis key {name} ({kind})"), bytes, &secrets));
        }
        for (path, bytes) in &files {
            found.extend(leaks(&format!("Redis file {path}"), bytes, &secrets));
        }
        for (place, log) in &logs {
            found.extend(leaks(place, log, &secrets));
        }
        // Every queue's dead letters, as the tool prints them.
        let mut queues: Vec<String> = {
            let mut conn = redis.connection().await;
            redis::cmd("SMEMBERS")
                .arg(key(&ns, "queues"))
                .query_async(&mut conn)
                .await
                .expect("SMEMBERS queues")
        };
        for role in ["auth", "app", "store", "stats", "notify", "provider", "web"] {
            queues.push(role.to_string());
            queues.push(format!("{role}.direct"));
        }
        queues.sort();
        queues.dedup();
        let mut dead_letters = 0;
        for queue in &queues {
            let listed = dlq(&redis, &ns, "list", queue).await;
            dead_letters += String::from_utf8_lossy(&listed)
                .lines()
                .filter(|l| l.starts_with('{'))
                .count();
            found.extend(leaks(&format!("`gorgon dlq list {queue}`"), &listed, &secrets));
        }
        eprintln!(
            "scanned {} Redis keys {kinds:?}, {} Redis files ({} bytes), {} logs ({} bytes), \
             {dead_letters} dead letters in {} queues, for {} secrets; {:.1} s",
            dump.len(),
            files.len(),
            files.iter().map(|(_, b)| b.len()).sum::<usize>(),
            logs.len(),
            logs.iter().map(|(_, b)| b.len()).sum::<usize>(),
            queues.len(),
            secrets.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(found.is_empty(), "{} secrets leaked:\n{}", found.len(), found.join("\n\n"));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Messages queued by the previous build

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An envelope exactly as the build before requests were types queued it (`enqueue`: no reply
/// channel, no deadline).
fn old_envelope(kind: &str, body: Value) -> String {
    json!({
        "id": Uuid::now_v7(),
        "kind": kind,
        "attempt": 1,
        "enqueued_at": now_ms(),
        "body": body,
    })
    .to_string()
}

/// A timestamp as the previous build wrote one (chrono's RFC 3339, milliseconds, `Z`).
fn old_ts() -> String {
    let ts = chrono::DateTime::from_timestamp_millis(now_ms()).expect("now");
    ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A store write (`InsertItem`, on `q:store`), an app write (`CreateItem`, on `q:app`) and a
/// registration (`Register`, on `q:auth`) queued in the previous build's format are handled by
/// this one: both items become readable, as written, the account can log in, and nothing is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_in_the_old_format_is_handled() {
    bounded(async {
        let started = Instant::now();
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        let ns = namespace();
        let backend_dir: TempDir = tempfile::tempdir().expect("backend data dir");
        let front_dir: TempDir = tempfile::tempdir().expect("front data dir");
        let mut backend = start_node(
            "backend [store,auth,app]",
            "store,auth,app",
            &redis,
            &ns,
            backend_dir.path(),
            &[],
            &[],
        );
        let mut front = start_node(
            "front [web]",
            "web",
            &redis,
            &ns,
            front_dir.path(),
            &[],
            &[],
        );
        let base = front.base();
        wait_readyz(&base, Duration::from_secs(30)).await;
        let pw = password("owner");
        let email = format!("owner-{ns}@example.com");
        let user = eventually(
            "register",
            StatusCode::CREATED,
            Duration::from_secs(15),
            || register(&base, &email, &pw),
        )
        .await;
        let user_id = user["id"].as_str().expect("user id").to_string();

        // The store's own write, as `StoreRequest::InsertItem(Item)` serialized.
        let item_id = Uuid::now_v7();
        let item = json!({
            "id": item_id,
            "user_id": user_id,
            "title": "Queued by the previous build",
            "body": "An InsertItem that waited in Redis through an upgrade.",
            "url": "https://example.com/old-format",
            "ts": old_ts(),
            "location": {"lat": 48.8566, "lon": 2.3522},
            "keywords": ["upgrade", "wire"],
            "extra": {"source": "old-build", "n": 1},
        });
        redis
            .lpush(
                &key(&ns, "q:store"),
                &old_envelope("insert_item", json!({"InsertItem": item})),
            )
            .await;

        // The app's write, as `AppRequest::CreateItem { actor, id, ts, item: NewItem }` serialized.
        let created_id = Uuid::now_v7();
        let created_ts = old_ts();
        let new_item = json!({
            "title": "Created through the app role by the previous build",
            "body": "A CreateItem that waited in Redis through an upgrade.",
            "url": null,
            "location": null,
            "keywords": ["app"],
            "extra": {},
        });
        let create = json!({"CreateItem": {
            "actor": {"user_id": user_id, "admin": false},
            "id": created_id,
            "ts": created_ts,
            "item": new_item,
        }});
        redis
            .lpush(&key(&ns, "q:app"), &old_envelope("create_item", create))
            .await;

        // A registration, durable in the previous build (so it could be waiting in `q:auth`):
        // `AuthRequest::Register { id, input: UserInput, client }` serialized.
        let old_email = format!("queued-{ns}@example.com");
        let old_password = password("queued-by-the-previous-build");
        let registration = json!({"Register": {
            "id": Uuid::now_v7(),
            "input": {
                "name": "Queued Before The Upgrade",
                "email": old_email,
                "password": old_password,
                "group": 0,
                "extra": {},
                "admin": false,
            },
            "client": null,
        }});
        redis
            .lpush(&key(&ns, "q:auth"), &old_envelope("register", registration))
            .await;

        let stored = eventually(
            "the old InsertItem",
            StatusCode::OK,
            Duration::from_secs(15),
            || send(http().get(format!("{base}/api/v1/items/{item_id}"))),
        )
        .await;
        assert_eq!(stored, item, "the item is stored as the old message had it");
        let created = eventually(
            "the old CreateItem",
            StatusCode::OK,
            Duration::from_secs(15),
            || send(http().get(format!("{base}/api/v1/items/{created_id}"))),
        )
        .await;
        let mut expected = new_item.clone();
        let fields = expected.as_object_mut().expect("an object");
        fields.insert("id".into(), json!(created_id));
        fields.insert("user_id".into(), json!(user_id));
        fields.insert("ts".into(), json!(created_ts));
        assert_eq!(
            created, expected,
            "the item is created as the old message asked"
        );
        // Listed as the owner's, newest first.
        let (status, listed) =
            send(http().get(format!("{base}/api/v1/users/{user_id}/items"))).await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        let ids: Vec<&str> = listed["items"]
            .as_array()
            .expect("a page of items")
            .iter()
            .filter_map(|i| i["id"].as_str())
            .collect();
        assert!(
            ids.contains(&item_id.to_string().as_str())
                && ids.contains(&created_id.to_string().as_str()),
            "both items are the user's: {listed}"
        );

        let logged_in = eventually(
            "a login with the old registration's password",
            StatusCode::OK,
            Duration::from_secs(15),
            || login(&base, &old_email, &old_password),
        )
        .await;
        assert_eq!(logged_in["user"]["email"], old_email.as_str());

        for suffix in [
            "q:store",
            "q:app",
            "q:auth",
            "dlq:store",
            "dlq:app",
            "dlq:auth",
        ] {
            assert_eq!(redis.llen(&key(&ns, suffix)).await, 0, "{suffix} is empty");
        }
        stop_node(&mut front);
        stop_node(&mut backend);
        eprintln!(
            "old-format messages handled; {:.1} s",
            started.elapsed().as_secs_f64()
        );
    })
    .await;
}

/// A logout queued by the previous build (`AuthRequest::Logout { token }`, durable, on `q:auth`)
/// still ends the session after an upgrade, and leaves no token in a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_queued_in_the_old_format_ends_the_session() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        let ns = namespace();
        let backend_dir: TempDir = tempfile::tempdir().expect("backend data dir");
        let front_dir: TempDir = tempfile::tempdir().expect("front data dir");
        let mut backend = start_node(
            "backend [store,auth,app]",
            "store,auth,app",
            &redis,
            &ns,
            backend_dir.path(),
            &[],
            &[],
        );
        let mut front = start_node(
            "front [web]",
            "web",
            &redis,
            &ns,
            front_dir.path(),
            &[],
            &[],
        );
        let base = front.base();
        wait_readyz(&base, Duration::from_secs(30)).await;
        let email = format!("leaving-{ns}@example.com");
        let pw = password("leaving");
        let user = eventually(
            "register",
            StatusCode::CREATED,
            Duration::from_secs(15),
            || register(&base, &email, &pw),
        )
        .await;
        let user_id = user["id"].as_str().expect("user id").to_string();
        let session = token(&base, &email, &pw).await;
        let (status, body) = get_user(&base, &session, &user_id).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        redis
            .lpush(
                &key(&ns, "q:auth"),
                &old_envelope("logout", json!({"Logout": {"token": session}})),
            )
            .await;
        eventually(
            "the token after the old logout",
            StatusCode::UNAUTHORIZED,
            Duration::from_secs(15),
            || get_user(&base, &session, &user_id),
        )
        .await;
        let letters = dlq(&redis, &ns, "list", "auth").await;
        let found = leaks(
            "`gorgon dlq list auth`",
            &letters,
            &[Secret::token("the session", &session)],
        );
        assert!(found.is_empty(), "{}", found.join("\n"));
        assert_eq!(
            redis.llen(&key(&ns, "dlq:auth")).await,
            0,
            "nothing dead-lettered"
        );
        stop_node(&mut front);
        stop_node(&mut backend);
    })
    .await;
}
