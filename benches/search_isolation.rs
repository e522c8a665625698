//! Benchmark: do expensive searches slow the node's other reads? Prints reads' latency with and
//! without clients looping the deepest allowed search, and their ratio (goal: p99 within 2x).
//!
//! Seeds a fresh store with the real `gorgon seed` (`GORGON_BENCH_ITEMS`, default 400,000 items
//! over 10,000 users), starts `gorgon run` on it as a child process on 127.0.0.1, then for
//! `GORGON_BENCH_SECS` (default 10) per phase runs `GORGON_BENCH_READERS` (default 4) clients
//! looping reads (an item by id, a user's first page, a user's page at offset 20), first alone,
//! then beside `GORGON_BENCH_SEARCHERS` (default 8) clients looping `q=river` at the deepest
//! offset allowed that still matches (`--max-search-offset`, 1,000 by default; the bench node
//! runs with `GORGON_BENCH_MAX_SEARCH_OFFSET` when set, e.g. 100000 to see deep offsets' cost). `cargo bench --bench
//! search_isolation`.

#[path = "../tests/common/process.rs"]
mod process;
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use process::GorgonProcess;
use support::env_or;

struct Phase {
    reads: Histogram<u64>,
    read_statuses: BTreeMap<u16, u64>,
    search_statuses: BTreeMap<u16, u64>,
}

/// Reads measured for a phase, beside `searchers` clients looping `other` (a path).
async fn phase(
    base: &str,
    ids: Arc<(Vec<String>, Vec<String>)>,
    searchers: usize,
    other: &str,
) -> Phase {
    let secs = env_or("GORGON_BENCH_SECS", 10);
    let readers = env_or("GORGON_BENCH_READERS", 4);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let run = Duration::from_secs(secs);
    let search_tasks: Vec<_> = (0..searchers)
        .map(|_| {
            let client = client.clone();
            let url = format!("{base}{other}");
            tokio::spawn(async move {
                let mut statuses = BTreeMap::<u16, u64>::new();
                while started.elapsed() < run {
                    // The body is read, so the connection is used again (as a real client's).
                    let status = match client.get(&url).send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    *statuses.entry(status).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let read_tasks: Vec<_> = (0..readers)
        .map(|r| {
            let client = client.clone();
            let base = base.to_string();
            let ids = ids.clone();
            tokio::spawn(async move {
                let (users, items) = (&ids.0, &ids.1);
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let mut statuses = BTreeMap::<u16, u64>::new();
                let mut n = r as usize * 104_729;
                while started.elapsed() < run {
                    n += 1;
                    let path = match n % 3 {
                        0 => format!("/api/v1/items/{}", items[(n * 7919) % items.len()]),
                        1 => format!("/api/v1/users/{}/items", users[n % users.len()]),
                        _ => format!(
                            "/api/v1/users/{}/items?limit=20&offset=20",
                            users[n % users.len()]
                        ),
                    };
                    let sent = Instant::now();
                    let status = match client.get(format!("{base}{path}")).send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    let _ = latency.record(sent.elapsed().as_micros().max(1) as u64);
                    *statuses.entry(status).or_default() += 1;
                }
                (latency, statuses)
            })
        })
        .collect();
    let mut reads = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut read_statuses = BTreeMap::new();
    for task in read_tasks {
        let (latency, statuses) = task.await.expect("reader");
        reads.add(latency).expect("same bounds");
        for (status, count) in statuses {
            *read_statuses.entry(status).or_default() += count;
        }
    }
    let mut search_statuses = BTreeMap::new();
    for task in search_tasks {
        for (status, count) in task.await.expect("searcher") {
            *search_statuses.entry(status).or_default() += count;
        }
    }
    Phase {
        reads,
        read_statuses,
        search_statuses,
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn report(name: &str, phase: &Phase, secs: u64) {
    let r = &phase.reads;
    println!(
        "{name:<26} reads {:>8.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  reads by status {:?}  searches by status {:?}",
        r.len() as f64 / secs as f64,
        ms(r.value_at_quantile(0.5)),
        ms(r.value_at_quantile(0.99)),
        ms(r.max()),
        phase.read_statuses,
        phase.search_statuses,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let items = env_or("GORGON_BENCH_ITEMS", 400_000);
    let users = env_or("GORGON_BENCH_USERS", 10_000);
    let searchers = env_or("GORGON_BENCH_SEARCHERS", 8) as usize;
    let secs = env_or("GORGON_BENCH_SECS", 10);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (user_file, item_file) = (dir.path().join("users.txt"), dir.path().join("items.txt"));
    println!("seeding {users} users, {items} items ...");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_gorgon"))
        .args([
            "seed",
            "--quiet",
            "--users",
            &users.to_string(),
            "--items",
            &items.to_string(),
        ])
        .arg("--data")
        .arg(&data)
        .arg("--user-ids-out")
        .arg(&user_file)
        .arg("--item-ids-out")
        .arg(&item_file)
        .status()
        .expect("run gorgon seed");
    assert!(status.success(), "gorgon seed failed");
    let read = |path: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("ids")
            .lines()
            .map(str::to_string)
            .collect()
    };
    let ids = Arc::new((read(&user_file), read(&item_file)));
    let data_arg = data.to_str().expect("utf-8 path").to_string();
    let node = tokio::task::block_in_place(|| {
        let depth =
            std::env::var("GORGON_BENCH_MAX_SEARCH_OFFSET").unwrap_or_else(|_| "1000".into());
        GorgonProcess::spawn(
            &["run", "--listen", "127.0.0.1:0", "--data", &data_arg],
            &[("GORGON_MAX_SEARCH_OFFSET", depth.as_str())],
        )
    });
    let base = node.base();
    let client = reqwest::Client::new();
    // The deepest allowed offset that still holds a match (the search walks all before it).
    let mut depth = 0;
    for offset in [
        100_000u64, 90_000, 80_000, 60_000, 40_000, 20_000, 10_000, 5_000, 1_000, 0,
    ] {
        let url = format!("{base}/api/v1/items?q=river&limit=1&offset={offset}");
        let page: serde_json::Value = client
            .get(url)
            .send()
            .await
            .expect("probe")
            .json()
            .await
            .expect("json");
        if page["items"].as_array().is_some_and(|i| !i.is_empty()) {
            depth = offset;
            break;
        }
    }
    let one = Instant::now();
    let status = client
        .get(format!(
            "{base}/api/v1/items?q=river&limit=100&offset={depth}"
        ))
        .send()
        .await
        .expect("search")
        .status();
    println!(
        "deepest search: q=river offset={depth}: {status} in {:.0} ms alone",
        one.elapsed().as_secs_f64() * 1000.0
    );
    let search = format!("/api/v1/items?q=river&limit=100&offset={depth}");
    // The same number of extra clients looping a cheap read: what the load alone costs on a
    // machine whose cores the clients share.
    let cheap = format!("/api/v1/items/{}", ids.1[0]);
    let _ = phase(&base, ids.clone(), 0, &search).await; // warm-up
    let alone = phase(&base, ids.clone(), 0, &search).await;
    report("reads alone", &alone, secs);
    let busy = phase(&base, ids.clone(), searchers, &cheap).await;
    report(&format!("reads + {searchers} cheap readers"), &busy, secs);
    let loaded = phase(&base, ids.clone(), searchers, &search).await;
    report(
        &format!("reads + {searchers} deep searchers"),
        &loaded,
        secs,
    );
    let p99 = |p: &Phase| p.reads.value_at_quantile(0.99).max(1) as f64;
    let ratio = p99(&loaded) / p99(&alone);
    println!(
        "reads' p99 with searchers / without: {ratio:.2}x (goal: at most 2x) {}",
        if ratio <= 2.0 { "OK" } else { "OVER" }
    );
    println!(
        "reads' p99 with searchers / with as many cheap readers: {:.2}x",
        p99(&loaded) / p99(&busy)
    );
    drop(node);
}
