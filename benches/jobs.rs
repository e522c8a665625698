//! Benchmark of durable jobs through the real API on one in-process node: `hash` jobs submitted
//! by concurrent clients (accepted/s: each 202 means stored durably), and completed/s, counted
//! from the `job.done` events of the authenticated SSE stream.
//!
//! `cargo bench --bench jobs`; sizes: `GORGON_BENCH_JOBS` (10000), `GORGON_BENCH_CLIENTS` (32),
//! `GORGON_BENCH_WORKERS` (job workers, 16).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gorgon::configuration::RunArgs;
use gorgon::startup::Node;
use serde_json::json;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("run me with: cargo bench --bench jobs");
        return;
    }
    let jobs = support::env_or("GORGON_BENCH_JOBS", 10_000);
    let clients = support::env_or("GORGON_BENCH_CLIENTS", 32);
    let workers = support::env_or("GORGON_BENCH_WORKERS", 16).to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let args = RunArgs::local(dir.path(), &["--job-workers", &workers]).expect("flags");
    let node = Node::start(args).await.expect("node");
    let base = format!("http://{}", node.local_addr().expect("addr"));
    let http = reqwest::Client::new();
    let token = support::token(&http, &base, "jobs@example.com").await;

    // Count completions from the event stream.
    let done = Arc::new(AtomicU64::new(0));
    let stream = http
        .get(format!("{base}/api/v1/events?topic=jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("subscribe");
    let counter = done.clone();
    let watcher = tokio::spawn(async move {
        let mut body = stream.bytes_stream();
        let mut tail = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            tail.extend_from_slice(&chunk);
            let text = String::from_utf8_lossy(&tail).to_string();
            let complete = text.rfind("\n\n").map(|i| i + 2).unwrap_or(0);
            let n = text[..complete].matches("event: job.done").count() as u64;
            counter.fetch_add(n, Ordering::Relaxed);
            tail.drain(..complete.min(tail.len()));
        }
    });

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, base, token, next) = (http.clone(), base.clone(), token.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs {
                    return;
                }
                let resp = http
                    .post(format!("{base}/api/v1/jobs"))
                    .bearer_auth(&token)
                    .json(&json!({"kind": "hash", "payload": {"n": n, "text": "the quick brown fox"}}))
                    .send()
                    .await
                    .expect("submit");
                assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let accepted_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while done.load(Ordering::Relaxed) < jobs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let completed_in = started.elapsed();
    println!(
        "{jobs} hash jobs, {clients} clients, {workers} workers: accepted {:.0}/s ({:.2} s); completed {:.0}/s ({} done in {:.2} s)",
        jobs as f64 / accepted_in.as_secs_f64(),
        accepted_in.as_secs_f64(),
        done.load(Ordering::Relaxed) as f64 / completed_in.as_secs_f64(),
        done.load(Ordering::Relaxed),
        completed_in.as_secs_f64()
    );
    watcher.abort();
    node.shutdown().await;
}
