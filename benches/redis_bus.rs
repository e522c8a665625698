//! Benchmark of the Redis mailboxes, in one run on this machine, against `redis-benchmark` as the
//! ceiling: durable messages end to end (enqueue → handled → acknowledged) with 1 and 4
//! consumers, and request/reply through Redis (sequential, 64 concurrent, and an open loop at a
//! fixed rate with latency taken from the intended send time).
//!
//! `cargo bench --bench redis_bus` starts its own `redis-server` (AOF, `appendfsync everysec`) on
//! a free loopback port. Sizes: `GORGON_BENCH_MESSAGES` (default 200000), `GORGON_BENCH_CALLS`
//! (default 20000), `GORGON_BENCH_RATE` (default 5000 calls/s).

#[path = "../tests/common/redis.rs"]
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gorgon::bus::redis::Keys;
use gorgon::bus::{
    Bus, BusConfig, Handler, RedisConfig, RedisLink, Role, RoleActor, RoleArgs, Service,
};
use gorgon::error::Result;
use gorgon::shutdown::Shutdown;
use hdrhistogram::Histogram;
use redis_server::{Fsync, RedisServer};
use serde::{Deserialize, Serialize};

gorgon::requests! {
    role Provider, call PingCall;
    /// A durable no-op message (what the queue itself costs).
    Ping => "ping", durable, u64;
}

gorgon::requests! {
    role Stats, call EchoCall;
    /// A direct read-like call.
    Echo => "echo", direct, u64;
}

#[derive(Debug, Serialize, Deserialize)]
struct Msg {
    n: u64,
    /// Some bytes, like a small write.
    pad: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Ping(Msg);

#[derive(Debug, Serialize, Deserialize)]
struct Echo(Msg);

/// Counts what it answers; answers at once, as a cache hit would.
macro_rules! counter {
    ($name:ident, $role:ident, $call:ident, $request:ident) => {
        struct $name(Arc<AtomicU64>);

        impl Service for $name {
            const ROLE: Role = Role::$role;
            type Call = $call;
        }

        impl Handler<$request> for $name {
            fn answer_now(&self, r: $request) -> std::result::Result<Result<u64>, $request> {
                self.0.fetch_add(1, Ordering::Relaxed);
                Ok(Ok(r.0.n))
            }

            async fn handle(self: Arc<Self>, r: $request) -> Result<u64> {
                Ok(r.0.n)
            }
        }
    };
}
counter!(PingCounter, Provider, PingCall, Ping);
counter!(EchoCounter, Stats, EchoCall, Echo);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bus_config() -> BusConfig {
    BusConfig {
        direct_timeout: Duration::from_secs(10),
        durable_timeout: Duration::from_secs(30),
        ..BusConfig::default()
    }
}

async fn node(redis: &RedisServer, ns: &str, name: &str) -> (Arc<RedisLink>, Bus) {
    let link = RedisLink::connect(RedisConfig::new(&redis.url(), ns), name, &Shutdown::new())
        .await
        .expect("connect");
    let bus = Bus::with_redis(bus_config(), link.clone());
    (link, bus)
}

async fn serve<S: Service>(bus: &Bus, counter: impl FnOnce(Arc<AtomicU64>) -> S) -> Arc<AtomicU64> {
    let handled = Arc::new(AtomicU64::new(0));
    ractor::Actor::spawn(
        None,
        RoleActor::<S>::default(),
        RoleArgs {
            service: counter(handled.clone()),
            bus: bus.clone(),
            concurrency: 1024,
        },
    )
    .await
    .expect("spawn");
    bus.serve(&[S::ROLE]).await.expect("serve");
    handled
}

fn msg(n: u64) -> Msg {
    Msg {
        n,
        pad: "x".repeat(100),
    }
}

/// Durable messages end to end with `consumers` consumer nodes; messages per second.
async fn durable(redis: &RedisServer, consumers: usize, messages: u64) -> f64 {
    let ns = format!("bench{}", uuid::Uuid::now_v7().simple());
    let mut counters = Vec::new();
    let mut links = Vec::new();
    for c in 0..consumers {
        let (link, bus) = node(redis, &ns, &format!("consumer-{c}")).await;
        counters.push(serve(&bus, PingCounter).await);
        links.push(link);
    }
    let (producer, _) = node(redis, &ns, "producer").await;
    let started = Instant::now();
    let batch = 1000;
    let mut sent = 0;
    while sent < messages {
        let n = batch.min(messages - sent);
        let requests: Vec<Ping> = (sent..sent + n).map(|i| Ping(msg(i))).collect();
        producer.enqueue(requests).await.expect("enqueue");
        sent += n;
    }
    let enqueued = started.elapsed();
    let keys = Keys::new(&ns);
    let mut conn = redis.connection().await;
    loop {
        let handled: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if handled >= messages {
            // Acknowledged too: nothing left in any processing list.
            let mut pending = 0i64;
            for link in &links {
                pending += redis::cmd("LLEN")
                    .arg(keys.processing("provider", link.node()))
                    .query_async::<i64>(&mut conn)
                    .await
                    .unwrap_or(0);
            }
            if pending == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    let rate = messages as f64 / took.as_secs_f64();
    let spread: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "  durable, {consumers} consumer(s): {messages} messages in {:.2} s = {:>8.0} msg/s end to end (enqueue alone {:.0} msg/s; per consumer {spread:?})",
        took.as_secs_f64(),
        rate,
        messages as f64 / enqueued.as_secs_f64()
    );
    for link in links {
        link.stop_consumers().await;
        link.close().await;
    }
    producer.close().await;
    rate
}

fn summary(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

/// Request/reply: `concurrency` callers making `calls` calls in all; calls per second.
async fn request_reply(caller: &Bus, calls: u64, concurrency: u64) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let caller = caller.clone();
        let share = calls / concurrency + u64::from(w < calls % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            for i in 0..share {
                let t = Instant::now();
                let n = caller.call(Echo(msg(i))).await.expect("call");
                assert_eq!(n, i);
                let _ = h.record(t.elapsed().as_micros() as u64);
            }
            h
        }));
    }
    let mut all = histogram();
    for task in tasks {
        all.add(task.await.expect("caller")).expect("merge");
    }
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    println!(
        "  request/reply, {concurrency:>2} concurrent: {rate:>8.0} calls/s, {}",
        summary(&all)
    );
    rate
}

/// Open loop at `rate` calls/s for `seconds`. Each call is sent on its own task, so a slow reply
/// never delays the next send; latency is reported from the intended send time (what a client
/// on a schedule sees, timer lateness included) and from the actual send.
async fn open_loop(caller: &Bus, rate: u64, seconds: u64) -> (Histogram<u64>, Histogram<u64>) {
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut i = 0;
    while i < total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        // Send every call that is due (the timer wakes at most once a millisecond).
        let now = tokio::time::Instant::now();
        while i < total && start + interval * i as u32 <= now {
            let intended = start + interval * i as u32;
            let caller = caller.clone();
            tasks.push(tokio::spawn(async move {
                let sent = tokio::time::Instant::now();
                let result = caller.call(Echo(msg(i))).await;
                (result.is_ok(), intended.elapsed(), sent.elapsed())
            }));
            i += 1;
        }
    }
    let (mut from_intended, mut from_sent) = (histogram(), histogram());
    let mut errors = 0;
    for task in tasks {
        let (ok, scheduled, sent) = task.await.expect("call task");
        errors += u64::from(!ok);
        let _ = from_intended.record(scheduled.as_micros() as u64);
        let _ = from_sent.record(sent.as_micros() as u64);
    }
    println!(
        "  request/reply, open loop {rate}/s for {seconds} s: from send {}; from intended send {}; errors {errors}",
        summary(&from_sent),
        summary(&from_intended)
    );
    (from_intended, from_sent)
}

/// `redis-benchmark -t lpush` against the same server: the ceiling.
fn redis_benchmark(redis: &RedisServer, extra: &[&str]) -> Option<f64> {
    let port = redis.port().to_string();
    let mut args = vec![
        "-p",
        port.as_str(),
        "-t",
        "lpush",
        "-n",
        "200000",
        "-c",
        "50",
        "-q",
    ];
    args.extend_from_slice(extra);
    let out = std::process::Command::new("redis-benchmark")
        .args(&args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "LPUSH: 84317.03 requests per second, p50=0.311 msec"
    let line = text.lines().rev().find(|l| l.contains("LPUSH"))?;
    let rate = line
        .split_whitespace()
        .find_map(|w| w.parse::<f64>().ok())?;
    println!(
        "  redis-benchmark -t lpush -c 50 {}: {rate:.0} ops/s",
        extra.join(" ")
    );
    Some(rate)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // Built by `cargo test --all-targets` too; it runs only under `cargo bench`.
        println!("run me with: cargo bench --bench redis_bus");
        return;
    }
    let messages = env_or("GORGON_BENCH_MESSAGES", 200_000);
    let calls = env_or("GORGON_BENCH_CALLS", 20_000);
    let rate = env_or("GORGON_BENCH_RATE", 5_000);
    let redis = RedisServer::start(Fsync::EverySec).await;
    println!(
        "Redis mailboxes on {} cores (redis-server, AOF everysec, on the same machine)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let ceiling = redis_benchmark(&redis, &[]);
    let pipelined = redis_benchmark(&redis, &["-P", "16"]);

    let one = durable(&redis, 1, messages).await;
    let four = durable(&redis, 4, messages).await;

    let ns = format!("bench{}", uuid::Uuid::now_v7().simple());
    let (_server_link, server_bus) = node(&redis, &ns, "server").await;
    serve(&server_bus, EchoCounter).await;
    let (_caller_link, caller) = node(&redis, &ns, "caller").await;
    request_reply(&caller, calls / 4, 1).await; // warm-up and the sequential figure
    let sequential = request_reply(&caller, calls / 4, 1).await;
    let concurrent = request_reply(&caller, calls, 64).await;
    let (_, open) = open_loop(&caller, rate, 5).await;

    println!("Ratios");
    if let Some(ceiling) = ceiling {
        println!(
            "  durable end to end / LPUSH ceiling (unpipelined): 1 consumer {:.2}, 4 consumers {:.2}",
            one / ceiling,
            four / ceiling
        );
    }
    if let Some(pipelined) = pipelined {
        println!(
            "  durable (1 consumer) / LPUSH pipelined 16: {:.3}",
            one / pipelined
        );
    }
    println!(
        "  targets: durable >= 40000 msg/s ({}), request/reply >= 1.5x Moleculer (4.3k sequential: {:.2}x; 28.7k at 64: {:.2}x), p99 < 2 ms at {rate}/s ({:.3} ms from send)",
        if one.max(four) >= 40_000.0 { "met" } else { "missed" },
        sequential / 4_300.0,
        concurrent / 28_700.0,
        open.value_at_quantile(0.99) as f64 / 1000.0
    );
}
