//! Benchmark of one direct read, the newest page of a user's items (what `/info/{uid}` asks the
//! store for), through the three paths a request can take, in one run on this machine:
//!
//! 1. **in one process**: a node with every role, its bus calling the local store actor;
//! 2. **across cluster nodes**: a `web`-only node in this process joined (`--cluster-listen`,
//!    `--join`) to a real `gorgon run --roles auth,app,store,stats` child process: the read is a
//!    `ractor_cluster` call to the backend's store gateway;
//! 3. **through Redis**: a `web`-only node with `--redis` only, sending the same read to the same
//!    backend process as a Redis request/reply.
//!
//! Each path runs sequentially (one caller) and with 64 concurrent callers; latency is per call,
//! from the caller. `cargo bench --bench cluster` starts its own `redis-server` (AOF,
//! `appendfsync everysec`) and skips when none is installed. Sizes: `GORGON_BENCH_CALLS`
//! (default 20000 per mode and path), `GORGON_BENCH_WARMUP` (default 1000), `GORGON_BENCH_ITEMS`
//! (items of the user read, default 200).

#[path = "../tests/common/process.rs"]
mod process;
#[path = "../tests/common/redis.rs"]
mod redis_server;
// Only `env_or` is used here.
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use gorgon::actors::store;
use gorgon::bus::{Bus, Role};
use gorgon::configuration::RunArgs;
use gorgon::domain::Page;
use gorgon::domain::{Email, Extra, Item, NewUser, UserName};
use gorgon::startup::Node;
use hdrhistogram::Histogram;
use process::GorgonProcess;
use redis_server::{Fsync, RedisServer};
use uuid::Uuid;

/// What `/info/{uid}` reads: the 10 newest items.
const PAGE: Page = Page::new(10, 0);

/// Concurrent callers of the concurrent mode.
const CALLERS: u64 = 64;

/// One line of the table.
struct Row {
    path: &'static str,
    mode: String,
    rate: f64,
    latency: Histogram<u64>,
    errors: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// A loopback port nobody listens on right now (for the cluster listeners).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local addr of 127.0.0.1:0")
        .port()
}

/// `n` plausible items of `user_id`, one a second up to now (ids follow the timestamps).
fn fake_items(user_id: Uuid, n: u64) -> Vec<Item> {
    let mut rng = rand::rng();
    let now = gorgon::domain::now();
    (0..n)
        .map(|i| {
            let ts = now - chrono::Duration::seconds((n - i) as i64);
            gorgon::fake::item(&mut rng, gorgon::domain::id_at(ts), user_id, ts)
        })
        .collect()
}

/// Creates one user with `items` items through `bus` (writes are durable: over Redis when the
/// store is in another process); the user's id.
async fn seed(bus: &Bus, items: u64) -> Uuid {
    let tag = Uuid::now_v7().simple().to_string();
    let user = NewUser {
        id: gorgon::domain::new_id(),
        name: UserName::parse("Bench Reader").expect("valid user name"),
        email: Email::parse(&format!("reader.{tag}@bench.gorgon.test")).expect("valid email"),
        group: 0,
        admin: false,
        extra: Extra::default(),
        // Nobody logs in as this user: any string will do.
        password_hash: "!bench-no-login".into(),
        created_at: gorgon::domain::now(),
    };
    let user = bus
        .call(store::InsertUser(user))
        .await
        .expect("insert the bench user");
    bus.call(store::InsertItems(fake_items(user.id, items)))
        .await
        .expect("insert the bench user's items");
    user.id
}

/// `calls` reads by `callers` concurrent tasks; one row of the table.
async fn measure(
    path: &'static str,
    mode: String,
    bus: &Bus,
    user: Uuid,
    calls: u64,
    callers: u64,
) -> Row {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let bus = bus.clone();
        let share = calls / callers + u64::from(c < calls % callers);
        tasks.push(tokio::spawn(async move {
            let (mut latency, mut errors) = (histogram(), 0u64);
            for _ in 0..share {
                let t = Instant::now();
                let result = bus.call(store::ListUserItems::new(user, PAGE)).await;
                latency.saturating_record(t.elapsed().as_micros() as u64);
                errors += u64::from(result.is_err());
            }
            (latency, errors)
        }));
    }
    let (mut latency, mut errors) = (histogram(), 0);
    for task in tasks {
        let (h, e) = task.await.expect("a caller task panicked");
        latency.add(h).expect("merge histograms");
        errors += e;
    }
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    Row {
        path,
        mode,
        rate,
        latency,
        errors,
    }
}

/// Checks the path answers a full page, warms it up, then measures and prints both modes:
/// (sequential, concurrent).
async fn run_path(
    path: &'static str,
    bus: &Bus,
    user: Uuid,
    calls: u64,
    warmup: u64,
) -> (Row, Row) {
    let page = bus
        .call(store::ListUserItems::new(user, PAGE))
        .await
        .unwrap_or_else(|e| panic!("{path}: the first read failed: {e}"));
    assert_eq!(
        page.len(),
        PAGE.limit as usize,
        "{path}: a full page of items"
    );
    // Warm-up: connections, pools, caches, with one caller and with many.
    measure(path, String::new(), bus, user, warmup, 1).await;
    measure(path, String::new(), bus, user, warmup, CALLERS).await;
    let sequential = measure(path, "sequential".into(), bus, user, calls, 1).await;
    print_row(&sequential);
    let concurrent = measure(
        path,
        format!("{CALLERS} concurrent"),
        bus,
        user,
        calls,
        CALLERS,
    )
    .await;
    print_row(&concurrent);
    (sequential, concurrent)
}

fn print_row(row: &Row) {
    println!(
        "{:<20} {:<14} {:>9.0} {:>8.3} {:>8.3} {:>8}",
        row.path,
        row.mode,
        row.rate,
        row.latency.value_at_quantile(0.5) as f64 / 1000.0,
        row.latency.value_at_quantile(0.99) as f64 / 1000.0,
        row.errors
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // Built by `cargo test --all-targets` too; it runs only under `cargo bench`.
        println!("run me with: cargo bench --bench cluster");
        return;
    }
    let calls = support::env_or("GORGON_BENCH_CALLS", 20_000);
    let warmup = support::env_or("GORGON_BENCH_WARMUP", 1_000);
    let items = support::env_or("GORGON_BENCH_ITEMS", 200).max(PAGE.limit as u64);
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        println!("cluster bench skipped: redis-server is not installed (path 3 needs it)");
        return;
    };
    println!(
        "list_user_items (10 newest of {items}), {calls} calls per row, on {} cores (everything on this machine)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "{:<20} {:<14} {:>9} {:>8} {:>8} {:>8}",
        "path", "mode", "calls/s", "p50 ms", "p99 ms", "errors"
    );

    // 1. In one process, measured first and stopped, so the other nodes cannot take its CPU.
    let local_dir = tempfile::tempdir().expect("temp dir for the in-process node");
    let local =
        Node::start(RunArgs::local(local_dir.path(), &[]).expect("flags of the in-process node"))
            .await
            .expect("start the in-process node with all roles");
    let user = seed(local.bus(), items).await;
    run_path("in one process", local.bus(), user, calls, warmup).await;
    local.shutdown().await;

    // The backend: a real process with the store, reachable both over the cluster and Redis.
    let url = redis.url();
    let ns = format!("bench{}", Uuid::now_v7().simple());
    let backend_dir = tempfile::tempdir().expect("temp dir for the backend process");
    let backend_data = backend_dir.path().display().to_string();
    let (port_a, port_b) = (free_port(), free_port());
    let (listen_a, listen_b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));
    let backend_args: &[&str] = &[
        "run",
        "--roles",
        "auth,app,store,stats",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &backend_data,
        "--redis",
        &url,
        "--redis-namespace",
        &ns,
        "--cluster-listen",
        &listen_a,
    ];
    // `spawn` blocks until the process prints `gorgon node ready`.
    let backend = tokio::task::block_in_place(|| GorgonProcess::spawn(backend_args, &[]));

    // 2. and 3.: two web-only fronts in this process, one joined to the cluster, one on Redis only.
    let cluster_dir = tempfile::tempdir().expect("temp dir for the cluster front");
    let cluster_front = Node::start(
        RunArgs::local(
            cluster_dir.path(),
            &[
                "--roles",
                "web",
                "--redis",
                &url,
                "--redis-namespace",
                &ns,
                "--cluster-listen",
                &listen_b,
                "--join",
                &listen_a,
            ],
        )
        .expect("flags of the cluster front"),
    )
    .await
    .expect("start the cluster front (web role, joined to the backend)");
    let redis_dir = tempfile::tempdir().expect("temp dir for the Redis front");
    let redis_front = Node::start(
        RunArgs::local(
            redis_dir.path(),
            &["--roles", "web", "--redis", &url, "--redis-namespace", &ns],
        )
        .expect("flags of the Redis front"),
    )
    .await
    .expect("start the Redis front (web role, Redis only)");

    // Direct reads take the cluster only once the backend's store gateway is a member.
    let link = cluster_front
        .cluster()
        .expect("the cluster front has a cluster link");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !link.has_member(Role::Store) {
        assert!(
            Instant::now() < deadline,
            "the cluster front (on {listen_b}) did not see the backend's store gateway \
             (on {listen_a}) within 10 s: the cluster did not form"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes are durable: they go through Redis to the backend from either front.
    let user = seed(cluster_front.bus(), items).await;
    let (cluster_seq, cluster_conc) = run_path(
        "across cluster nodes",
        cluster_front.bus(),
        user,
        calls,
        warmup,
    )
    .await;
    let (redis_seq, redis_conc) =
        run_path("through Redis", redis_front.bus(), user, calls, warmup).await;

    println!(
        "cluster vs redis: sequential {:.1}x, {CALLERS} concurrent {:.1}x (target: >= 2x)",
        cluster_seq.rate / redis_seq.rate,
        cluster_conc.rate / redis_conc.rate
    );

    // Proof that path 2 really crossed the cluster (the bus counts calls per transport).
    let text = gorgon::telemetry::metrics().render();
    let over_cluster = text
        .lines()
        .any(|l| l.contains(r#"transport="cluster""#) && l.contains(r#"role="store""#));
    if !over_cluster {
        let warning = "WARNING: no `transport=\"cluster\"` store call in the metrics: the \
                       \"across cluster nodes\" figures did NOT go over the cluster";
        println!("\n{warning}\n");
        eprintln!("\n{warning}\n");
    }

    cluster_front.shutdown().await;
    redis_front.shutdown().await;
    drop(backend); // killed and reaped on drop
    drop(redis);
}
