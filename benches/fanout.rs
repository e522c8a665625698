//! Benchmark of the notify role's fan-out: N connected SSE clients (default 1,000) on one
//! in-process node, while the random provider inserts items at a fixed rate; prints the events
//! delivered per second in all, per-client spread, drops, and the delay from commit to delivery.
//!
//! `cargo bench --bench fanout`; sizes: `GORGON_BENCH_CLIENTS` (1000), `GORGON_BENCH_RATE`
//! (items/s, 200), `GORGON_BENCH_SECONDS` (10).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gorgon::configuration::RunArgs;
use gorgon::startup::Node;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("run me with: cargo bench --bench fanout");
        return;
    }
    let clients = support::env_or("GORGON_BENCH_CLIENTS", 1000) as usize;
    let rate = support::env_or("GORGON_BENCH_RATE", 200);
    let seconds = support::env_or("GORGON_BENCH_SECONDS", 10);
    let dir = tempfile::tempdir().expect("temp dir");
    let rate_flag = rate.to_string();
    let args = RunArgs::local(
        dir.path(),
        &[
            "--provider-rate",
            &rate_flag,
            "--client-buffer",
            "4096",
            "--login-per-minute",
            "1000",
        ],
    )
    .expect("flags");
    let node = Node::start(args).await.expect("node");
    let base = format!("http://{}", node.local_addr().expect("addr"));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients + 10)
        .build()
        .expect("client");
    // The provider writes for existing users; a client needs a token.
    let token = support::token(&http, &base, "fan@example.com").await;

    let delivered = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicU64::new(0));
    let delays = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let per_client: Arc<Vec<AtomicU64>> =
        Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    let connect_started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let resp = http
            .get(format!("{base}/api/v1/events"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("subscribe");
        let (delivered, lagged, delays, per_client) = (
            delivered.clone(),
            lagged.clone(),
            delays.clone(),
            per_client.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut stream = resp.bytes_stream();
            let mut buffer = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buffer.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&frame);
                    if text.contains("event: lagged") {
                        lagged.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    if !text.contains("event: item.") {
                        continue;
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                    per_client[c].fetch_add(1, Ordering::Relaxed);
                    // One client in fifty samples the delay from the event's time to now.
                    if c % 50 == 0 {
                        if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                            if let Ok(event) = serde_json::from_str::<serde_json::Value>(data) {
                                if let Some(at) = event["at"]
                                    .as_str()
                                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                                {
                                    let delay = chrono::Utc::now().signed_duration_since(at);
                                    let _ =
                                        delays.lock().record(
                                            delay.num_microseconds().unwrap_or(0).max(1) as u64,
                                        );
                                }
                            }
                        }
                    }
                }
            }
        }));
    }
    println!(
        "{clients} SSE clients connected in {:.2} s; provider at {rate} items/s for {seconds} s",
        connect_started.elapsed().as_secs_f64()
    );
    let start_count = delivered.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let took = started.elapsed().as_secs_f64();
    let count = delivered.load(Ordering::Relaxed) - start_count;
    let spread: Vec<u64> = per_client
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let (min, max) = (
        spread.iter().min().copied().unwrap_or(0),
        spread.iter().max().copied().unwrap_or(0),
    );
    let delays = delays.lock().clone();
    println!(
        "fan-out: {:.0} events delivered/s in all ({:.0} items/s × {clients} clients); per client {min}..{max} events; {} clients dropped as lagging",
        count as f64 / took,
        count as f64 / took / clients as f64,
        lagged.load(Ordering::Relaxed)
    );
    println!(
        "delay from the event's time to its delivery (1 client in 50): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        delays.value_at_quantile(0.5) as f64 / 1000.0,
        delays.value_at_quantile(0.99) as f64 / 1000.0,
        delays.max() as f64 / 1000.0
    );
    for task in tasks {
        task.abort();
    }
    node.shutdown().await;
}
