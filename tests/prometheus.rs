//! Prometheus for real: Debian's `prometheus` scrapes three `gorgon` processes joined as a cluster
//! on Redis, with the shipped scrape configuration (`dashboards/prometheus.yml`: only its targets
//! and intervals rewritten), while traffic runs that exercises what the dashboard shows (reads,
//! writes, logins, jobs, an SSE client, durable work crossing nodes through Redis, 4xx and 5xx).
//! Then every PromQL expression of the Grafana dashboard (`dashboards/gorgon.json`: each panel's
//! targets, panels inside rows included) is evaluated through Prometheus's HTTP API, its Grafana
//! variables substituted: each must parse and return at least one series. The template variables'
//! own queries (`label_values(...)`, a Grafana function, not PromQL) are answered the way Grafana
//! answers them, through `/api/v1/label/NAME/values?match[]=SELECTOR`, and must find the nodes.
//!
//! Also: the shipped scrape configurations pass `promtool check config` (the file-based discovery
//! example with its targets file), and the Kubernetes job's relabelling keeps, names and
//! deduplicates the pods it should — fed to a real Prometheus through file-based discovery with the
//! labels Kubernetes pod discovery would give them, since Debian's build has no Kubernetes
//! discovery.
//!
//! `prometheus`, `promtool` (Debian's `prometheus`) and `redis-server` are installed by
//! `scripts/test.sh`; under a bare `cargo test` without them these tests say they were skipped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{client, free_port, wait_ready, wait_view, NodeSpec};
use common::redis::{Fsync, RedisServer};
use common::tool;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// Scrape (and rule evaluation) interval of the test's Prometheus.
const SCRAPE: Duration = Duration::from_secs(1);
/// Upper bound of each test; every wait inside is bounded well below it.
const TEST_BOUND: Duration = Duration::from_secs(110);
/// How long the dashboard's queries may take to all return series once traffic runs.
const QUERY_DEADLINE: Duration = Duration::from_secs(45);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_BOUND, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {} s", TEST_BOUND.as_secs()));
}

/// `promtool check config PATH`: `Err` with what it printed when it refuses.
fn promtool_check(path: &Path) -> Result<(), String> {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(path)
        .output()
        .expect("run promtool");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A real `prometheus` on a loopback port, its configuration, data and log in a temp dir;
/// killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    http: Client,
}

impl Prometheus {
    /// Checks `config` (a file in `dir`) with `promtool`, starts Prometheus on it and waits until
    /// it is ready (at most 30 s; a port taken meanwhile is tried again with another).
    async fn start(dir: tempfile::TempDir, config: &str) -> Prometheus {
        let config = dir.path().join(config);
        if let Err(e) = promtool_check(&config) {
            panic!(
                "promtool refuses the test's configuration:\n{e}\n{}",
                std::fs::read_to_string(&config).unwrap_or_default()
            );
        }
        let http = client();
        for _ in 0..3 {
            let port = free_port();
            let log_path = dir.path().join("prometheus.log");
            let log = std::fs::File::create(&log_path).expect("prometheus log");
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--storage.tsdb.retention.time=1h")
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(resp) = http.get(format!("{base}/-/ready")).send().await {
                    if resp.status() == StatusCode::OK {
                        return Prometheus {
                            child,
                            base,
                            dir,
                            http,
                        };
                    }
                }
                let exited = child.try_wait().expect("wait for prometheus").is_some();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if exited && log.contains("address already in use") {
                    break;
                }
                if exited || Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("prometheus did not become ready (exited: {exited}):\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("prometheus found its port taken three times");
    }

    /// `GET /api/v1/PATH` with `params`: the `data` of a `success`, or why not.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let resp = self
            .http
            .get(format!("{}/api/v1/{path}", self.base))
            .query(params)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let body: Value = resp.json().await.map_err(|e| format!("not JSON: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!(
                "{} {}: {}",
                body["status"].as_str().unwrap_or("?"),
                body["errorType"].as_str().unwrap_or("?"),
                body["error"].as_str().unwrap_or("?")
            ))
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dashboards/prometheus.yml` with its one target list naming `targets` and its intervals set to
/// `SCRAPE`; every other line (job names, labels, relabelling) as shipped.
fn scrape_config(shipped: &str, targets: &[String]) -> String {
    let (mut lists, mut intervals) = (0, 0);
    let seconds = SCRAPE.as_secs();
    let mut out: Vec<String> = Vec::new();
    for line in shipped.lines() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        if code.starts_with("- targets:") {
            lists += 1;
            out.push(format!("{indent}- targets: {}", json!(targets)));
        } else if code.starts_with("scrape_interval:") || code.starts_with("evaluation_interval:") {
            intervals += 1;
            let key = code.split(':').next().expect("key");
            out.push(format!("{indent}{key}: {seconds}s"));
        } else {
            out.push(line.to_string());
        }
    }
    assert_eq!(
        lists, 1,
        "dashboards/prometheus.yml should list its targets once (`- targets: [...]`): \
         tests/prometheus.rs rewrites that line"
    );
    assert!(
        intervals >= 1,
        "dashboards/prometheus.yml sets no scrape_interval"
    );
    out.join("\n") + "\n"
}

/// Every PromQL expression of the dashboard: each panel's `targets[].expr`, rows' panels included.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let id = target["refId"].as_str().unwrap_or("?");
                    out.push((format!("{title} [{id}]"), expr.to_string()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Grafana's value of a variable in a Prometheus query: one value as it is; several (a multi-value
/// or an "All" variable) as a regex alternation of the values with their regex characters
/// escaped, as Grafana's Prometheus data source writes it (a backslash doubled, for the string).
fn format_values(values: &[String], multi: bool) -> String {
    if !multi {
        return values.first().cloned().unwrap_or_default();
    }
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            let mut out = String::new();
            for c in v.chars() {
                if "\\$^*+?.()|{}[]'".contains(c) {
                    out.push_str("\\\\");
                }
                out.push(c);
            }
            out
        })
        .collect();
    if escaped.len() == 1 {
        escaped[0].clone()
    } else {
        format!("({})", escaped.join("|"))
    }
}

/// Replaces Grafana's variables in `text`: `$name`, `${name}`, `${name:format}` and `[[name]]`
/// from `vars`; a variable not there is an error (a typo in the dashboard).
fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    let ident = |s: &str| {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    loop {
        let Some(at) = rest.find(['$', '[']) else {
            out.push_str(rest);
            return Ok(out);
        };
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let (name, len) = if let Some(braced) = tail.strip_prefix("${") {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text}"))?;
            let name = braced[..end].split(':').next().unwrap_or("");
            (name.to_string(), end + 3)
        } else if let Some(bracketed) = tail.strip_prefix("[[") {
            match bracketed.find("]]") {
                Some(end) => (bracketed[..end].to_string(), end + 4),
                None => (String::new(), 0),
            }
        } else if let Some(plain) = tail.strip_prefix('$') {
            let n = ident(plain);
            (plain[..n].to_string(), n + 1)
        } else {
            (String::new(), 0)
        };
        if name.is_empty() || len == 0 {
            // A `[` of a range or a `$` of a regex: not a variable.
            out.push_str(&tail[..1]);
            rest = &tail[1..];
            continue;
        }
        match vars.get(&name) {
            Some(value) => out.push_str(value),
            None => return Err(format!("unknown variable `{name}` in {text}")),
        }
        rest = &tail[len..];
    }
}

/// A duration as Grafana writes it in a query (`4s`, `1m`).
fn grafana_duration(d: Duration) -> String {
    let s = d.as_secs().max(1);
    if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Grafana's built-in variables for a dashboard whose data source scrapes every `scrape` and
/// whose time range began `range` ago: `$__interval` the scrape interval (Grafana's floor, the
/// data source's `timeInterval`), `$__rate_interval` = max(`$__interval` + scrape, 4 × scrape).
fn builtin_vars(scrape: Duration, range: Duration) -> BTreeMap<String, String> {
    let interval = scrape;
    let rate_interval = (interval + scrape).max(scrape * 4);
    let mut vars = BTreeMap::new();
    vars.insert("__interval".into(), grafana_duration(interval));
    vars.insert(
        "__interval_ms".into(),
        interval.as_millis().max(1).to_string(),
    );
    vars.insert("__rate_interval".into(), grafana_duration(rate_interval));
    vars.insert("__range".into(), grafana_duration(range));
    vars.insert("__range_s".into(), range.as_secs().max(1).to_string());
    vars.insert("__range_ms".into(), range.as_millis().max(1).to_string());
    vars
}

/// Splits `label_values(SELECTOR, LABEL)` / `label_values(LABEL)` at its last top-level comma.
fn label_values_args(query: &str) -> Option<(Option<String>, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (mut depth, mut quoted, mut split) = (0i32, false, None);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' | '{' | '[' if !quoted => depth += 1,
            ')' | '}' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => split = Some(i),
            _ => {}
        }
    }
    Some(match split {
        Some(i) => (
            Some(inner[..i].trim().to_string()),
            inner[i + 1..].trim().to_string(),
        ),
        None => (None, inner.trim().to_string()),
    })
}

/// The dashboard's template variables, in order, each resolved against Prometheus as Grafana
/// would: `(name, Grafana's query after substitution, values found)`, or why it failed.
async fn resolve_variables(
    prom: &Prometheus,
    dashboard: &Value,
    vars: &mut BTreeMap<String, String>,
) -> Result<Vec<(String, String, Vec<String>)>, Vec<String>> {
    let mut resolved = Vec::new();
    let mut failures = Vec::new();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().unwrap_or("?").to_string();
        let multi = var["multi"] == true || var["includeAll"] == true;
        let kind = var["type"].as_str().unwrap_or("query");
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .or(var["definition"].as_str())
            .unwrap_or("")
            .to_string();
        let values: Result<Vec<String>, String> = match kind {
            "query" => match interpolate(&query, vars) {
                Err(e) => Err(e),
                Ok(q) => match label_values_args(&q) {
                    // Grafana asks /api/v1/label/LABEL/values, with match[] when a selector is given.
                    Some((selector, label)) => {
                        let mut params = Vec::new();
                        if let Some(selector) = &selector {
                            params.push(("match[]", selector.as_str()));
                        }
                        prom.api(&format!("label/{label}/values"), &params)
                            .await
                            .map(|data| {
                                data.as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|v| v.as_str().map(String::from))
                                    .collect()
                            })
                    }
                    None => Err(format!(
                        "a variable query other than label_values(): {q} (teach tests/prometheus.rs)"
                    )),
                },
            },
            "custom" => Ok(query
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect()),
            "constant" | "textbox" => Ok(vec![query.clone()]),
            other => Err(format!(
                "a variable of type {other} (teach tests/prometheus.rs)"
            )),
        };
        match values {
            Ok(values) if values.is_empty() => {
                failures.push(format!("variable ${name}: {query} found no value"))
            }
            Ok(values) => {
                vars.insert(name.clone(), format_values(&values, multi));
                resolved.push((name, query, values));
            }
            Err(e) => failures.push(format!("variable ${name}: {query}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(resolved)
    } else {
        Err(failures)
    }
}

/// One round of the dashboard's expressions: each one's series (`result`, an empty array when it
/// failed), why each failure failed, and how many of them are refusals to parse (no point
/// waiting for those).
async fn evaluate(
    prom: &Prometheus,
    exprs: &[(String, String)],
    vars: &BTreeMap<String, String>,
) -> (Vec<Vec<Value>>, Vec<String>, usize) {
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut unparsable = 0;
    for (panel, expr) in exprs {
        let query = match interpolate(expr, vars) {
            Ok(q) => q,
            Err(e) => {
                failures.push(format!("{panel}: {e}"));
                unparsable += 1;
                results.push(Vec::new());
                continue;
            }
        };
        match prom.api("query", &[("query", query.as_str())]).await {
            Ok(data) => {
                let series = match &data["result"] {
                    Value::Array(series) => series.clone(),
                    Value::Null => Vec::new(),
                    // A scalar or a string is one value.
                    other => vec![other.clone()],
                };
                if series.is_empty() {
                    failures.push(format!("{panel}: no series\n    {query}"));
                }
                results.push(series);
            }
            Err(e) => {
                unparsable += usize::from(e.contains("bad_data"));
                failures.push(format!("{panel}: {e}\n    {query}"));
                results.push(Vec::new());
            }
        }
    }
    (results, failures, unparsable)
}

/// How many of Prometheus's targets are up, and each one's scrape URL, health and last error.
async fn target_health(prom: &Prometheus) -> (usize, String) {
    match prom.api("targets", &[]).await {
        Ok(data) => {
            let targets: Vec<&Value> = data["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            let up = targets.iter().filter(|t| t["health"] == "up").count();
            let status = targets
                .iter()
                .map(|t| {
                    format!(
                        "{} {} {}",
                        t["scrapeUrl"].as_str().unwrap_or("?"),
                        t["health"].as_str().unwrap_or("?"),
                        t["lastError"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n  ");
            (up, status)
        }
        Err(e) => (0, e),
    }
}

/// What the traffic got back.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn count(&self, outcome: &reqwest::Result<reqwest::Response>) {
        let counter = match outcome {
            Ok(r) if r.status().is_server_error() => &self.server_errors,
            Ok(r) if r.status().is_client_error() => &self.client_errors,
            Ok(_) => &self.ok,
            Err(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn summary(&self) -> String {
        format!(
            "{} 2xx, {} 4xx, {} 5xx, {} failed",
            self.ok.load(Ordering::Relaxed),
            self.client_errors.load(Ordering::Relaxed),
            self.server_errors.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }
}

/// Paced traffic on each front until stopped: writes (durable, through Redis to the store
/// node), reads of an item, of a user's newest items and by keyword (direct, node to node),
/// logins good and bad, hash jobs and their status, 404s and 401s, and where the front has no
/// notify role an SSE request (503); plus one SSE client held open on the first front.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tally: Arc<Tally>,
}

impl Traffic {
    fn start(http: &Client, fronts: &[String], sse: &str, uid: &str, token: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        for (n, base) in fronts.iter().enumerate() {
            let (http, base, uid, token) = (
                http.clone(),
                base.clone(),
                uid.to_string(),
                token.to_string(),
            );
            let (stop, tally) = (stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                let mut item: Option<String> = None;
                let mut job: Option<String> = None;
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let get = |path: String| http.get(format!("{base}{path}")).bearer_auth(&token);
                    let post = |path: &str| http.post(format!("{base}{path}"));
                    let created = post("/api/v1/items")
                        .bearer_auth(&token)
                        .json(&json!({"title": format!("traffic {n} {round}"), "body": "scraped"}))
                        .send()
                        .await;
                    tally.count(&created);
                    if let Ok(resp) = created {
                        if let Ok(body) = resp.json::<Value>().await {
                            item = body["id"].as_str().map(String::from).or(item);
                        }
                    }
                    let mut reads = vec![
                        format!("/api/v1/users/{uid}/items?limit=10"),
                        format!("/info/{uid}"),
                        "/api/v1/items?q=traffic".to_string(),
                        // 404: an item nobody wrote.
                        format!("/api/v1/items/{}", uuid::Uuid::now_v7()),
                    ];
                    reads.extend(item.iter().map(|id| format!("/api/v1/items/{id}")));
                    reads.extend(job.iter().map(|id| format!("/api/v1/jobs/{id}")));
                    for path in reads {
                        tally.count(&get(path).send().await);
                    }
                    let accepted = post("/api/v1/jobs")
                        .bearer_auth(&token)
                        .json(&json!({"kind": "hash", "payload": {"front": n, "round": round}}))
                        .send()
                        .await;
                    tally.count(&accepted);
                    if let Ok(resp) = accepted {
                        if let Ok(body) = resp.json::<Value>().await {
                            job = body["id"].as_str().map(String::from).or(job);
                        }
                    }
                    // 401: no token.
                    tally.count(&post("/api/v1/items").json(&json!({"title": "x"})).send().await);
                    if round % 20 == n as u64 * 10 {
                        // A login and a wrong password, well under the per-address limit.
                        for password in [common::PASSWORD, "not the password"] {
                            let login = post("/api/v1/auth/login")
                                .json(&json!({"email": "prometheus@example.com", "password": password}))
                                .send()
                                .await;
                            tally.count(&login);
                        }
                    }
                    if n > 0 {
                        // This front runs no notify role: a clean 503.
                        tally.count(&get("/api/v1/events".into()).send().await);
                    }
                    round += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        // One SSE client, held open and read until the end.
        let (sse, token, stop2, tally2) = (
            sse.to_string(),
            token.to_string(),
            stop.clone(),
            tally.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = Client::new();
            let resp = http
                .get(format!("{sse}/api/v1/events"))
                .bearer_auth(&token)
                .send()
                .await;
            tally2.count(&resp);
            let Ok(mut resp) = resp else { return };
            while !stop2.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), resp.chunk()).await {
                    Ok(Ok(Some(_))) | Err(_) => {}
                    Ok(_) => break,
                }
            }
        }));
        Traffic { stop, tasks, tally }
    }

    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        self.tally
    }
}

/// `http://HOST:PORT[/path]` → `HOST:PORT`.
fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    if !tool("prometheus") || !tool("promtool") {
        return;
    }
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
            return;
        };
        let started = Instant::now();
        let ns = format!("p{}", uuid::Uuid::now_v7().simple());
        let http = client();
        // A front with the notify role; a backend without the web role (scraped on
        // --metrics-listen), running the store, the stats and a provider inserting 20 items/s;
        // a second front that also runs auth and app (and no notify).
        let front_spec = NodeSpec::new("web,notify", None);
        let seed = front_spec.cluster_port;
        let front = front_spec.start(Some(&redis), &ns);
        // (Each spec owns its node's data dir: it lives as long as the node.)
        let backend_spec = NodeSpec::new("auth,app,store,stats,provider", Some(seed))
            .arg("--metrics-listen", "127.0.0.1:0")
            .arg("--provider-rate", "20");
        let backend = backend_spec.start(Some(&redis), &ns);
        let edge_spec = NodeSpec::new("web,auth,app", Some(seed));
        let edge = edge_spec.start(Some(&redis), &ns);
        let fronts = [front.base(), edge.base()];
        for base in &fronts {
            wait_ready(&http, base).await;
        }
        wait_view(&http, &fronts[0], Duration::from_secs(15), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(3)
        })
        .await;
        let backend_metrics = backend
            .metrics
            .clone()
            .expect("the backend prints its --metrics-listen address");
        // Its metrics listener answers liveness probes too, and nothing else.
        let listener = backend_metrics.trim_end_matches("/metrics");
        for (path, status) in [("/healthz", StatusCode::OK), ("/api/v1/stats", StatusCode::NOT_FOUND)] {
            let resp = http
                .get(format!("{listener}{path}"))
                .send()
                .await
                .expect("GET the metrics listener");
            assert_eq!(resp.status(), status, "{listener}{path}");
        }
        let mut targets = vec![
            host_port(&fronts[0]),
            host_port(&backend_metrics),
            host_port(&fronts[1]),
        ];
        targets.sort();
        let cluster_up = started.elapsed();

        // Prometheus with the shipped configuration, pointed at the three nodes.
        let dir = tempfile::tempdir().expect("prometheus dir");
        let shipped = read("dashboards/prometheus.yml");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            scrape_config(&shipped, &targets),
        )
        .expect("write prometheus.yml");
        let prom = Prometheus::start(dir, "prometheus.yml").await;

        let (uid, token) =
            common::register_and_login(&http, &fronts[0], "prometheus@example.com").await;
        let traffic = Traffic::start(&http, &fronts, &fronts[0], &uid, &token);
        let traffic_started = Instant::now();

        let dashboard: Value =
            serde_json::from_str(&read("dashboards/gorgon.json")).expect("gorgon.json");
        let exprs = dashboard_exprs(&dashboard);
        assert!(exprs.len() >= 20, "the dashboard's queries: {exprs:#?}");

        // First every node scraped; then poll until every query returns series, or until only
        // refusals to parse are left (waiting cannot mend them), or the deadline.
        let deadline = Instant::now() + QUERY_DEADLINE;
        loop {
            let (up, status) = target_health(&prom).await;
            if up == targets.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus's targets never all came up:\n  {status}\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut rounds = 0;
        let (variables, results) = loop {
            rounds += 1;
            let mut vars = builtin_vars(SCRAPE, prom_range(traffic_started));
            let (variables, results, failures, unparsable) =
                match resolve_variables(&prom, &dashboard, &mut vars).await {
                    Ok(variables) => {
                        let (results, failures, unparsable) =
                            evaluate(&prom, &exprs, &vars).await;
                        (variables, results, failures, unparsable)
                    }
                    Err(failures) => (Vec::new(), Vec::new(), failures, 0),
                };
            if failures.is_empty() {
                break (variables, results);
            }
            if unparsable == failures.len() || Instant::now() >= deadline {
                let (_, targets) = target_health(&prom).await;
                panic!(
                    "{} of {} dashboard queries failed after {rounds} rounds ({:.0?} of traffic):\n{}\n\
                     Prometheus's targets:\n  {targets}\nits log:\n{}",
                    failures.len(),
                    exprs.len(),
                    traffic_started.elapsed(),
                    failures.join("\n"),
                    prom.log()
                );
            }
            tokio::time::sleep(SCRAPE).await;
        };
        let waited = traffic_started.elapsed();
        let tally = traffic.finish().await;

        // The node picker lists exactly the three nodes, and their target is up.
        let instances = variables
            .iter()
            .find(|(name, _, _)| name == "instance")
            .map(|(_, _, values)| values.clone())
            .expect("the dashboard has an instance variable");
        assert_eq!(
            instances, targets,
            "label_values(instance) lists the scraped nodes"
        );
        let counts: Vec<usize> = results.iter().map(Vec::len).collect();
        let series: usize = counts.iter().sum();
        eprintln!(
            "prometheus: {} dashboard expressions and {} variable queries answered, {series} series \
             in all (fewest: {}), after {rounds} rounds, {waited:.1?} of traffic ({}); cluster up \
             in {cluster_up:.1?}, whole test {:.1?}",
            exprs.len(),
            variables.len(),
            counts.iter().min().copied().unwrap_or(0),
            tally.summary(),
            started.elapsed()
        );
        for ((panel, _), n) in exprs.iter().zip(&counts) {
            eprintln!("  {n:>3}  {panel}");
        }
        assert!(
            tally.server_errors.load(Ordering::Relaxed) > 0
                && tally.client_errors.load(Ordering::Relaxed) > 0,
            "the traffic had 4xx and 5xx answers: {}",
            tally.summary()
        );

        // A few panels whose figures the test knows: three nodes, each seeing two peers, all
        // reaching Redis, all on this build, one SSE client.
        let panel = |title: &str, ref_id: &str| -> Vec<f64> {
            let at = exprs
                .iter()
                .position(|(p, _)| p == &format!("{title} [{ref_id}]"))
                .unwrap_or_else(|| panic!("the dashboard has no panel {title} [{ref_id}]"));
            results[at].iter().map(sample_value).collect()
        };
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(panel("Nodes", "A").len(), 3, "a row per node");
        assert_eq!(panel("Build", "A"), [3.0], "three nodes run {version}");
        assert_eq!(panel("Redis reachable (nodes)", "A"), [3.0]);
        assert_eq!(panel("Redis reachable (nodes)", "B"), [3.0]);
        assert_eq!(panel("Cluster: peers each node sees", "A"), [2.0, 2.0, 2.0]);
        assert!(
            panel("Streaming clients", "A")[0] >= 1.0,
            "the SSE client is counted"
        );
    })
    .await;
}

/// The value of one series of an instant query (`[time, "value"]`), or of a scalar.
fn sample_value(series: &Value) -> f64 {
    let value = if series["value"].is_array() {
        &series["value"][1]
    } else {
        &series[1]
    };
    value
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Grafana's `$__range`: from the start of the traffic to now.
fn prom_range(since: Instant) -> Duration {
    since.elapsed().max(SCRAPE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_scrape_configurations_pass_promtool() {
    if !tool("promtool") {
        return;
    }
    let mut refused = Vec::new();
    for path in [
        "dashboards/prometheus.yml",
        // Checks its targets file (targets/gorgon.yml) too.
        "deploy/prometheus/file_sd.yml",
    ] {
        if let Err(e) = promtool_check(&repo(path)) {
            refused.push(format!("{path}: {e}"));
        }
    }
    // Debian's promtool has no Kubernetes discovery and refuses the field; any other refusal
    // (or a promtool that has it and refuses the file) is a failure.
    match promtool_check(&repo("deploy/prometheus/kubernetes.yml")) {
        Ok(()) => {}
        Err(e) if e.contains("field kubernetes_sd_configs not found") => eprintln!(
            "note: this promtool is built without Kubernetes discovery; the Kubernetes job's \
             relabelling is checked by kubernetes_relabelling_keeps_the_annotated_gorgon_pods"
        ),
        Err(e) => refused.push(format!("deploy/prometheus/kubernetes.yml: {e}")),
    }
    assert!(
        refused.is_empty(),
        "promtool refused:\n{}",
        refused.join("\n")
    );
}

/// `deploy/prometheus/kubernetes.yml` with its `kubernetes_sd_configs` block replaced by file-based
/// discovery of `file` (relabelling and everything else as shipped).
fn kubernetes_as_file_sd(shipped: &str, file: &str) -> String {
    let mut out = Vec::new();
    let mut block_indent: Option<usize> = None;
    let mut replaced = 0;
    for line in shipped.lines() {
        let code = line.trim_start();
        let indent = line.len() - code.len();
        if let Some(at) = block_indent {
            if code.is_empty() || code.starts_with('#') || indent > at {
                continue;
            }
            block_indent = None;
        }
        if code.starts_with("kubernetes_sd_configs:") {
            replaced += 1;
            block_indent = Some(indent);
            let pad = " ".repeat(indent);
            out.push(format!("{pad}file_sd_configs:"));
            out.push(format!("{pad}  - files: [{}]", json!(file)));
            continue;
        }
        out.push(line.to_string());
    }
    assert_eq!(
        replaced, 1,
        "kubernetes.yml has one kubernetes_sd_configs block"
    );
    out.join("\n") + "\n"
}

fn as_refs<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// What Kubernetes pod discovery says of one container port of a pod.
fn pod(
    name: &str,
    ip: &str,
    container_port: u16,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    phase: &str,
) -> Value {
    let mut meta = serde_json::Map::new();
    let mut put = |k: String, v: &str| {
        meta.insert(k, json!(v));
    };
    put("__meta_kubernetes_namespace".into(), "gorgon");
    put("__meta_kubernetes_pod_name".into(), name);
    put("__meta_kubernetes_pod_ip".into(), ip);
    put("__meta_kubernetes_pod_phase".into(), phase);
    put(
        "__meta_kubernetes_pod_container_port_number".into(),
        &container_port.to_string(),
    );
    let sanitize = |k: &str| {
        k.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    };
    for (k, v) in labels {
        put(format!("__meta_kubernetes_pod_label_{}", sanitize(k)), v);
        put(
            format!("__meta_kubernetes_pod_labelpresent_{}", sanitize(k)),
            "true",
        );
    }
    for (k, v) in annotations {
        put(
            format!("__meta_kubernetes_pod_annotation_{}", sanitize(k)),
            v,
        );
    }
    json!({"targets": [format!("{ip}:{container_port}")], "labels": meta})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_relabelling_keeps_the_annotated_gorgon_pods() {
    if !tool("prometheus") || !tool("promtool") {
        return;
    }
    bounded(async {
        // Pod addresses on loopback, on ports nobody listens on: scrapes fail at once, which
        // does not matter here (only the targets' labels do).
        let (web_port, metrics_port, cluster_port) = (free_port(), free_port(), free_port());
        let (web_port_s, metrics_port_s) = (web_port.to_string(), metrics_port.to_string());
        let gorgon = |component: &'static str| {
            vec![
                ("app.kubernetes.io/name", "gorgon"),
                ("app.kubernetes.io/component", component),
            ]
        };
        let scrape_on = |port: &str| {
            vec![
                ("prometheus.io/scrape", "true".to_string()),
                ("prometheus.io/port", port.to_string()),
            ]
        };
        let front_ann = scrape_on(&web_port_s);
        let mut worker_ann = scrape_on(&metrics_port_s);
        worker_ann.push(("prometheus.io/path", "/metrics".to_string()));
        let pods = json!([
            // A front declaring two container ports: one target after relabelling.
            pod(
                "gorgon-front-0",
                "127.0.1.1",
                web_port,
                &gorgon("front"),
                &as_refs(&front_ann),
                "Running"
            ),
            pod(
                "gorgon-front-0",
                "127.0.1.1",
                cluster_port,
                &gorgon("front"),
                &as_refs(&front_ann),
                "Running"
            ),
            // A worker scraped on its --metrics-listen port.
            pod(
                "gorgon-worker-7",
                "127.0.1.2",
                metrics_port,
                &gorgon("worker"),
                &as_refs(&worker_ann),
                "Running"
            ),
            // Not annotated, another application, and a pod not started: dropped.
            pod(
                "gorgon-quiet-1",
                "127.0.1.3",
                web_port,
                &gorgon("front"),
                &[],
                "Running"
            ),
            pod(
                "redis-0",
                "127.0.1.4",
                6379,
                &[("app.kubernetes.io/name", "redis")],
                &as_refs(&front_ann),
                "Running"
            ),
            pod(
                "gorgon-front-1",
                "127.0.1.5",
                web_port,
                &gorgon("front"),
                &as_refs(&front_ann),
                "Pending"
            ),
        ]);
        let dir = tempfile::tempdir().expect("prometheus dir");
        std::fs::write(dir.path().join("pods.json"), pods.to_string()).expect("pods.json");
        let config = kubernetes_as_file_sd(&read("deploy/prometheus/kubernetes.yml"), "pods.json");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("prometheus.yml");
        let prom = Prometheus::start(dir, "prometheus.yml").await;

        // Discovery reaches the scrape pools within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (active, dropped) = loop {
            let data = prom.api("targets", &[("state", "any")]).await;
            if let Ok(data) = &data {
                let active: BTreeSet<String> = data["activeTargets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let l = &t["labels"];
                        format!(
                            "{} job={} instance={} namespace={} component={}",
                            t["scrapeUrl"].as_str().unwrap_or("?"),
                            l["job"].as_str().unwrap_or("-"),
                            l["instance"].as_str().unwrap_or("-"),
                            l["namespace"].as_str().unwrap_or("-"),
                            l["component"].as_str().unwrap_or("-"),
                        )
                    })
                    .collect();
                let dropped: BTreeSet<String> = data["droppedTargets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| {
                        t["discoveredLabels"]["__meta_kubernetes_pod_name"]
                            .as_str()
                            .map(String::from)
                    })
                    .collect();
                if active.len() + dropped.len() >= 5 {
                    break (active, dropped);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no targets discovered: {data:?}\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let expected: BTreeSet<String> = [
            format!(
                "http://127.0.1.1:{web_port}/metrics job=gorgon instance=gorgon-front-0 \
                 namespace=gorgon component=front"
            ),
            format!(
                "http://127.0.1.2:{metrics_port}/metrics job=gorgon instance=gorgon-worker-7 \
                 namespace=gorgon component=worker"
            ),
        ]
        .into();
        assert_eq!(active, expected, "the pods scraped, and as what");
        let expected_dropped: BTreeSet<String> = ["gorgon-front-1", "gorgon-quiet-1", "redis-0"]
            .map(String::from)
            .into();
        assert_eq!(dropped, expected_dropped, "the pods left alone");
    })
    .await;
}
