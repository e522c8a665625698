//! What a chaos run watches besides the request load: background jobs submitted with an
//! idempotency key and checked to the end, and SSE clients that reconnect with `Last-Event-ID`
//! through the balancer and must see every committed write (or be told they lagged).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::report::Check;

// --- jobs ---------------------------------------------------------------------------------------

/// A job the cluster accepted (202 or 200).
#[derive(Debug, Clone)]
struct Accepted {
    id: String,
    key: String,
    payload: Value,
}

/// Submits `hash` jobs at a steady rate, each under its own `Idempotency-Key`, sent again with
/// the same key when no clean answer came (as a careful client does).
#[derive(Default)]
pub struct JobProbe {
    accepted: Mutex<Vec<Accepted>>,
    /// Submissions given up after every attempt, by last outcome.
    given_up: Mutex<BTreeMap<String, u64>>,
    submitted: AtomicU64,
}

/// Attempts per job submission before it is given up (and not counted as accepted).
const SUBMIT_ATTEMPTS: u32 = 8;

impl JobProbe {
    pub fn start(
        self: &Arc<Self>,
        http: reqwest::Client,
        base: String,
        token: String,
        per_second: f64,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let probe = self.clone();
        tokio::spawn(async move {
            let tag = uuid::Uuid::now_v7().simple().to_string();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            let mut tasks = tokio::task::JoinSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                probe.submitted.fetch_add(1, Ordering::Relaxed);
                let (probe, http, base, token) =
                    (probe.clone(), http.clone(), base.clone(), token.clone());
                let key = format!("chaos-{tag}-{n}");
                let payload = json!({"chaos": n, "run": tag});
                tasks.spawn(async move { probe.submit(&http, &base, &token, key, payload).await });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        })
    }

    async fn submit(
        &self,
        http: &reqwest::Client,
        base: &str,
        token: &str,
        key: String,
        payload: Value,
    ) {
        let mut last = String::new();
        for attempt in 0..SUBMIT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
            let sent = http
                .post(format!("{base}/api/v1/jobs"))
                .bearer_auth(token)
                .header("Idempotency-Key", &key)
                .json(&json!({"kind": "hash", "payload": payload}))
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    if let Ok(job) = resp.json::<Value>().await {
                        if let Some(id) = job["id"].as_str() {
                            self.accepted.lock().push(Accepted {
                                id: id.to_string(),
                                key,
                                payload,
                            });
                            return;
                        }
                    }
                    last = "unreadable answer".into();
                }
                Ok(resp) => last = resp.status().as_u16().to_string(),
                Err(e) if e.is_timeout() => last = "timeout".into(),
                Err(_) => last = "failed".into(),
            }
        }
        *self.given_up.lock().entry(last).or_default() += 1;
    }

    /// Every accepted job reaches `done` within `within` with the right result, and sending its
    /// key again finds the same job (it was stored once).
    pub async fn check(
        &self,
        http: &reqwest::Client,
        base: &str,
        token: &str,
        within: Duration,
    ) -> Check {
        let accepted = self.accepted.lock().clone();
        let deadline = Instant::now() + within;
        let results: Vec<Result<(), String>> = futures::stream::iter(accepted.iter())
            .map(|job| async move {
                let expected = hex::encode(Sha256::digest(crate::jobs::hash::canonical_json(
                    &job.payload,
                )));
                let last = loop {
                    let state = match http
                        .get(format!("{base}/api/v1/jobs/{}", job.id))
                        .bearer_auth(token)
                        .send()
                        .await
                    {
                        Ok(resp) if resp.status() == StatusCode::OK => {
                            resp.json::<Value>().await.unwrap_or(Value::Null)
                        }
                        Ok(resp) => json!({"state": resp.status().as_u16().to_string()}),
                        Err(e) => json!({"state": e.to_string()}),
                    };
                    match state["state"].as_str() {
                        Some("done") => {
                            if state["result"]["sha256"] != expected.as_str() {
                                return Err(format!("{}: done with a wrong result", job.id));
                            }
                            break None;
                        }
                        Some("dead") => {
                            return Err(format!("{}: dead ({})", job.id, state["error"]))
                        }
                        other => {
                            if Instant::now() >= deadline {
                                break Some(other.unwrap_or("?").to_string());
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                };
                if let Some(state) = last {
                    return Err(format!("{}: still {state}", job.id));
                }
                let again = http
                    .post(format!("{base}/api/v1/jobs"))
                    .bearer_auth(token)
                    .header("Idempotency-Key", &job.key)
                    .json(&json!({"kind": "hash", "payload": job.payload}))
                    .send()
                    .await
                    .map_err(|e| format!("{}: resubmit: {e}", job.id))?;
                let status = again.status();
                let found: Value = again.json().await.unwrap_or(Value::Null);
                if status != StatusCode::OK || found["id"] != job.id.as_str() {
                    return Err(format!(
                        "{}: its key found {status} {} (stored twice?)",
                        job.id, found["id"]
                    ));
                }
                Ok(())
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        let given_up = self.given_up.lock().clone();
        let given_up_text = if given_up.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = given_up.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!(
                "; {} submissions given up after {SUBMIT_ATTEMPTS} tries ({})",
                given_up.values().sum::<u64>(),
                parts.join(", ")
            )
        };
        Check {
            name: "every accepted job done, once".into(),
            passed: failures.is_empty() && !accepted.is_empty(),
            detail: if failures.is_empty() {
                format!(
                    "{} of {} submitted jobs accepted; all done with the right result, each \
                     stored once{given_up_text}",
                    accepted.len(),
                    self.submitted.load(Ordering::Relaxed)
                )
            } else {
                format!(
                    "{} of {} accepted jobs not right, e.g. {:?}{given_up_text}",
                    failures.len(),
                    accepted.len(),
                    &failures[..failures.len().min(3)]
                )
            },
        }
    }
}

// --- SSE ----------------------------------------------------------------------------------------

/// What one SSE client saw: the items of `item.created` events, `lagged` notices (whole
/// frames), reconnections.
#[derive(Default)]
pub struct SseLog {
    pub created: HashSet<String>,
    pub lagged: Vec<String>,
    pub reconnects: u64,
}

/// SSE clients of `topic=items` through the balancer, each reconnecting with `Last-Event-ID`
/// whenever its stream ends.
pub struct SseProbe {
    logs: Vec<Arc<Mutex<SseLog>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SseProbe {
    pub fn start(
        clients: usize,
        http: reqwest::Client,
        base: String,
        token: String,
        stop: Arc<AtomicBool>,
    ) -> SseProbe {
        let logs: Vec<_> = (0..clients)
            .map(|_| Arc::new(Mutex::new(SseLog::default())))
            .collect();
        let tasks = logs
            .iter()
            .map(|log| {
                follow(
                    http.clone(),
                    base.clone(),
                    token.clone(),
                    stop.clone(),
                    log.clone(),
                )
            })
            .collect();
        SseProbe { logs, tasks }
    }

    pub async fn finish(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Every item in `written` (acknowledged creates) reached every client, or the client was
    /// told it lagged.
    pub fn check(&self, written: &[String]) -> Check {
        let mut missed_total = 0;
        let mut problems = Vec::new();
        let mut reconnects = 0;
        for (n, log) in self.logs.iter().enumerate() {
            let log = log.lock();
            reconnects += log.reconnects;
            let missed: Vec<&String> = written
                .iter()
                .filter(|id| !log.created.contains(*id))
                .collect();
            missed_total += missed.len();
            if !missed.is_empty() && log.lagged.is_empty() {
                problems.push(format!(
                    "client {n} missed {} of {} events without a lagged notice, e.g. {}",
                    missed.len(),
                    written.len(),
                    missed[0]
                ));
            }
        }
        let lagged: usize = self.logs.iter().map(|l| l.lock().lagged.len()).sum();
        Check {
            name: "SSE clients miss no committed event".into(),
            passed: problems.is_empty() && !written.is_empty(),
            detail: if problems.is_empty() {
                format!(
                    "{} clients, {reconnects} reconnections with Last-Event-ID, {} events each; \
                     {missed_total} missed, {lagged} lagged notices",
                    self.logs.len(),
                    written.len()
                )
            } else {
                problems.join("; ")
            },
        }
    }
}

/// An SSE client of `topic=items` at `base` that reconnects with `Last-Event-ID` whenever its
/// stream ends, until `stop`; what it sees goes to `log`.
pub fn follow(
    http: reqwest::Client,
    base: String,
    token: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<SseLog>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(follow_items(http, base, token, stop, log))
}

async fn follow_items(
    http: reqwest::Client,
    base: String,
    token: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<SseLog>>,
) {
    let mut last_id: Option<u64> = None;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        if !first {
            log.lock().reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first = false;
        let mut req = http
            .get(format!("{base}/api/v1/events?topic=items"))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(3600));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let Ok(resp) = req.send().await else { continue };
        if resp.status() != StatusCode::OK {
            continue;
        }
        let mut body = resp.bytes_stream();
        let mut buffer = String::new();
        loop {
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) { return; }
                    continue;
                }
            };
            let Some(Ok(chunk)) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, "", Value::Null);
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<u64>().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = serde_json::from_str(v.trim()).unwrap_or(Value::Null);
                    }
                }
                if let Some(id) = id {
                    last_id = Some(id);
                }
                let mut log = log.lock();
                match kind {
                    "item.created" => {
                        if let Some(subject) = data["subject_id"].as_str() {
                            log.created.insert(subject.to_string());
                        }
                    }
                    "lagged" => log.lagged.push(frame.clone()),
                    _ => {}
                }
            }
        }
    }
}
