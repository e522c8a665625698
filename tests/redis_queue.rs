//! The Redis mailboxes from the library side, against a real `redis-server`: a failing durable
//! message is retried with backoff and then succeeds once; one that always fails ends in the
//! dead-letter list after `max_attempts` and replays from there; a consumer that died with a
//! message in its processing list has it delivered again by the reaper; many direct calls at
//! once (their requests and replies share round trips) each get their own answer.
//!
//! A small test protocol (on the provider role's queue name, in a namespace of its own) stands in
//! for a role, so the handler can be told to fail.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{Fsync, RedisServer};
use gorgon::bus::redis::{dlq, Keys};
use gorgon::bus::{
    Bus, BusConfig, Handler, RedisConfig, RedisLink, Role, RoleActor, RoleArgs, Service,
};
use gorgon::error::{Error, Result};
use gorgon::shutdown::Shutdown;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

gorgon::requests! {
    role Provider, call FlakyCall;
    Work => "work", durable, u32;
    Double => "double", direct, u32;
    Secret => "secret_work", secret, u32;
}

#[derive(Debug, Serialize, Deserialize)]
struct Secret {
    n: u32,
    password: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Double {
    n: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: u32,
}

#[derive(Default)]
struct Behaviour {
    /// Failures still to produce before succeeding.
    fail_next: AtomicU32,
    fail_always: AtomicBool,
    attempts: AtomicU32,
    handled: Mutex<Vec<u32>>,
}

struct FlakyHandler(Arc<Behaviour>);

impl Service for FlakyHandler {
    const ROLE: Role = Role::Provider;
    type Call = FlakyCall;
}

impl Handler<Work> for FlakyHandler {
    async fn handle(self: Arc<Self>, work: Work) -> Result<u32> {
        let b = &self.0;
        b.attempts.fetch_add(1, Ordering::SeqCst);
        if b.fail_always.load(Ordering::SeqCst)
            || b.fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(Error::Internal("the handler failed on purpose".into()));
        }
        b.handled.lock().push(work.n);
        Ok(work.n * 2)
    }
}

impl Handler<Double> for FlakyHandler {
    async fn handle(self: Arc<Self>, double: Double) -> Result<u32> {
        // Some answers wait, so replies leave in another order than the requests came.
        if double.n.is_multiple_of(3) {
            tokio::time::sleep(Duration::from_millis(u64::from(double.n % 7))).await;
        }
        Ok(double.n * 2)
    }
}

impl Handler<Secret> for FlakyHandler {
    async fn handle(self: Arc<Self>, secret: Secret) -> Result<u32> {
        // Slow, so a burst finds every slot of a small consumer taken.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(secret.n)
    }
}

fn config(redis: &RedisServer, ns: &str) -> RedisConfig {
    RedisConfig {
        max_attempts: 3,
        heartbeat: Duration::from_millis(600),
        retry_base: Duration::from_millis(50),
        ..RedisConfig::new(&redis.url(), ns)
    }
}

fn bus_config() -> BusConfig {
    BusConfig {
        direct_timeout: Duration::from_secs(2),
        durable_timeout: Duration::from_secs(5),
        ..BusConfig::default()
    }
}

/// A node consuming the test protocol's queue; returns its link and the handler's record.
async fn consumer_node(redis: &RedisServer, ns: &str) -> (Arc<RedisLink>, Arc<Behaviour>) {
    let link = RedisLink::connect(config(redis, ns), &format!("worker-{ns}"), &Shutdown::new())
        .await
        .expect("link");
    let bus = Bus::with_redis(bus_config(), link.clone());
    let behaviour = Arc::new(Behaviour::default());
    ractor::Actor::spawn(
        None,
        RoleActor::<FlakyHandler>::default(),
        RoleArgs {
            service: FlakyHandler(behaviour.clone()),
            bus: bus.clone(),
            concurrency: 16,
        },
    )
    .await
    .expect("spawn the test role");
    bus.serve(&[Role::Provider]).await.expect("serve");
    (link, behaviour)
}

/// A node without the role: its calls go through Redis.
async fn caller_node(redis: &RedisServer, ns: &str) -> Bus {
    let link = RedisLink::connect(config(redis, ns), &format!("caller-{ns}"), &Shutdown::new())
        .await
        .expect("link");
    Bus::with_redis(bus_config(), link)
}

async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_is_retried_with_backoff_then_answered_once() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("retry{}", uuid::Uuid::now_v7().simple());
    let (_worker, behaviour) = consumer_node(&redis, &ns).await;
    behaviour.fail_next.store(2, Ordering::SeqCst);
    let caller = caller_node(&redis, &ns).await;
    let started = Instant::now();
    let reply = caller.call(Work { n: 21 }).await;
    assert_eq!(reply, Ok(42), "answered after two retries");
    // Two backoffs of at least 50 ms and 100 ms (times a jitter of at least 0.5).
    assert!(started.elapsed() >= Duration::from_millis(75));
    assert_eq!(behaviour.attempts.load(Ordering::SeqCst), 3);
    assert_eq!(*behaviour.handled.lock(), vec![21]);
    let keys = Keys::new(&ns);
    assert_eq!(redis.llen(&keys.dead("provider")).await, 0);
    assert_eq!(redis.llen(&keys.queue("provider")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_fails_is_dead_lettered_and_replays() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("dlq{}", uuid::Uuid::now_v7().simple());
    let (_worker, behaviour) = consumer_node(&redis, &ns).await;
    behaviour.fail_always.store(true, Ordering::SeqCst);
    let caller = caller_node(&redis, &ns).await;
    let reply = caller.call(Work { n: 7 }).await;
    assert!(
        matches!(&reply, Err(Error::Unavailable(m)) if m.contains("set aside")),
        "the caller is told: {reply:?}"
    );
    assert_eq!(behaviour.attempts.load(Ordering::SeqCst), 3, "max_attempts");
    let keys = Keys::new(&ns);
    let mut conn = dlq::connect(&redis.url()).await.expect("connect");
    let dead = dlq::list(&mut conn, &keys, "provider", 10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter: serde_json::Value = serde_json::from_str(&dead[0]).expect("JSON record");
    assert_eq!(letter["attempts"], 3);
    assert!(letter["reason"]
        .as_str()
        .is_some_and(|r| r.contains("failed 3 times")));

    // Fixed: replaying hands the message to the handler again, once.
    behaviour.fail_always.store(false, Ordering::SeqCst);
    let replayed = dlq::replay(&mut conn, &keys, "provider", 10)
        .await
        .expect("replay");
    assert_eq!((replayed.requeued, replayed.kept), (1, 0));
    eventually(
        "the replayed message is handled",
        Duration::from_secs(5),
        async || *behaviour.handled.lock() == vec![7],
    )
    .await;
    assert_eq!(redis.llen(&keys.dead("provider")).await, 0);
    assert_eq!(
        dlq::purge(&mut conn, &keys, "provider")
            .await
            .expect("purge"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_delivers_a_dead_consumers_messages_again() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("reap{}", uuid::Uuid::now_v7().simple());
    let keys = Keys::new(&ns);
    // A consumer that took a message and died: its processing list holds it, it has no
    // heartbeat any more.
    let envelope = serde_json::json!({
        "id": uuid::Uuid::now_v7(), "kind": "work", "attempt": 1,
        "enqueued_at": 0, "body": {"Work": {"n": 5}}
    });
    redis
        .lpush(
            &keys.processing("provider", "dead-node"),
            &envelope.to_string(),
        )
        .await;
    let mut conn = redis.connection().await;
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg(keys.consumers("provider"))
        .arg("dead-node")
        .cmd("SADD")
        .arg(keys.queues())
        .arg("provider")
        .query_async(&mut conn)
        .await
        .expect("register the dead consumer");

    let (_worker, behaviour) = consumer_node(&redis, &ns).await;
    eventually(
        "the dead consumer's message is handled",
        Duration::from_secs(10),
        async || *behaviour.handled.lock() == vec![5],
    )
    .await;
    assert_eq!(
        redis.llen(&keys.processing("provider", "dead-node")).await,
        0
    );
    let consumers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.consumers("provider"))
        .query_async(&mut conn)
        .await
        .expect("members");
    assert!(
        consumers.iter().all(|c| !c.starts_with("dead-node")),
        "the dead consumer is forgotten: {consumers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stranded_in_a_live_consumers_list_is_handled() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("strand{}", uuid::Uuid::now_v7().simple());
    let keys = Keys::new(&ns);
    let (worker, behaviour) = consumer_node(&redis, &ns).await;
    // As if a take had moved it and its answer never reached the consumer (a timeout, a Redis
    // restart): the message sits in the live consumer's own list, which no reaper visits.
    let envelope = serde_json::json!({
        "id": uuid::Uuid::now_v7(), "kind": "work", "attempt": 1,
        "enqueued_at": 0, "body": {"Work": {"n": 9}}
    });
    let list = keys.processing("provider", worker.node());
    redis.lpush(&list, &envelope.to_string()).await;
    eventually(
        "the stranded message is handled",
        Duration::from_secs(10),
        async || *behaviour.handled.lock() == vec![9],
    )
    .await;
    eventually("and acknowledged", Duration::from_secs(5), async || {
        redis.llen(&list).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_before_redis_serve_once_it_is_up() {
    let Some(mut redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    redis.kill();
    let ns = format!("late{}", uuid::Uuid::now_v7().simple());
    let (_worker, behaviour) = consumer_node(&redis, &ns).await;
    let caller = caller_node(&redis, &ns).await;
    let refused = caller.call(Work { n: 1 }).await;
    assert!(
        matches!(refused, Err(Error::Unavailable(_))),
        "refused at once while Redis is down: {refused:?}"
    );
    redis.restart().await;
    let mut answered = None;
    eventually(
        "a call succeeds once Redis is up",
        Duration::from_secs(15),
        async || {
            answered = caller.call(Work { n: 4 }).await.ok();
            answered.is_some()
        },
    )
    .await;
    assert_eq!(answered, Some(8));
    assert!(behaviour.handled.lock().contains(&4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_direct_calls_at_once_each_get_their_own_answer() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("many{}", uuid::Uuid::now_v7().simple());
    let (_worker, _) = consumer_node(&redis, &ns).await;
    let caller = caller_node(&redis, &ns).await;
    // Wait until the caller knows the consumer (its direct requests then skip the list).
    eventually(
        "the first call is answered",
        Duration::from_secs(5),
        async || caller.call(Double { n: 1 }).await == Ok(2),
    )
    .await;
    let calls = (0..2000u32).map(|n| {
        let caller = caller.clone();
        tokio::spawn(async move { (n, caller.call(Double { n }).await) })
    });
    for call in futures::future::join_all(calls).await {
        let (n, answer) = call.expect("call task");
        assert_eq!(answer, Ok(n * 2), "call {n}");
    }
    let keys = Keys::new(&ns);
    assert_eq!(redis.llen(&keys.queue("provider.direct")).await, 0);
}

/// A consumer of an earlier build: it listens on the plain channel of direct requests only, and
/// answers each request with a reply of its own on the plain reply channel.
async fn old_build_consumer(
    redis: &RedisServer,
    ns: &str,
    node: &str,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let keys = Keys::new(ns);
    let mut conn = redis.connection().await;
    let _: () = ::redis::pipe()
        .cmd("SET")
        .arg(keys.heartbeat(node))
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .ignore()
        .cmd("SADD")
        .arg(keys.consumers("provider.direct"))
        .arg(node)
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("register the old consumer");
    let client = ::redis::Client::open(redis.url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(keys.direct("provider", node))
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let envelope: serde_json::Value =
                serde_json::from_slice(message.get_payload_bytes()).expect("an envelope");
            let n = envelope["body"]["Double"]["n"].as_u64().expect("a Double");
            let frame = serde_json::json!({"id": envelope["id"], "result": {"Ok": n * 2}});
            let _: i64 = ::redis::cmd("PUBLISH")
                .arg(envelope["reply_to"].as_str().expect("reply_to"))
                .arg(frame.to_string())
                .query_async(&mut conn)
                .await
                .expect("publish the reply");
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_an_earlier_build_gets_every_request_one_by_one() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("old{}", uuid::Uuid::now_v7().simple());
    let old = old_build_consumer(&redis, &ns, "old-node").await;
    let caller = caller_node(&redis, &ns).await;
    eventually(
        "the first call is answered",
        Duration::from_secs(5),
        async || caller.call(Double { n: 1 }).await == Ok(2),
    )
    .await;
    // Many at once: the caller packs them for the old node, which does not listen for packs;
    // nobody hears the pack, and they go again one by one.
    let calls = (0..300u32).map(|n| {
        let caller = caller.clone();
        tokio::spawn(async move { (n, caller.call(Double { n }).await) })
    });
    for call in futures::future::join_all(calls).await {
        let (n, answer) = call.expect("call task");
        assert_eq!(answer, Ok(n * 2), "call {n}");
    }
    old.abort();
}

/// How many `LPUSH` commands the server has run so far.
async fn lpushes(redis: &RedisServer) -> u64 {
    let mut conn = redis.connection().await;
    let stats: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO commandstats");
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_lpush:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_a_busy_consumer_cannot_take_is_refused_never_queued() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("busy{}", uuid::Uuid::now_v7().simple());
    // A consumer that works on two requests at a time.
    let small = RedisConfig {
        inflight: 2,
        ..config(&redis, &ns)
    };
    let link = RedisLink::connect(small, "small-worker", &Shutdown::new())
        .await
        .expect("link");
    let bus = Bus::with_redis(bus_config(), link.clone());
    ractor::Actor::spawn(
        None,
        RoleActor::<FlakyHandler>::default(),
        RoleArgs {
            service: FlakyHandler(Arc::new(Behaviour::default())),
            bus: bus.clone(),
            concurrency: 16,
        },
    )
    .await
    .expect("spawn the test role");
    bus.serve(&[Role::Provider]).await.expect("serve");
    let caller = caller_node(&redis, &ns).await;
    let password = "correct horse battery staple";
    let secret = |n| Secret {
        n,
        password: password.to_string(),
    };
    eventually(
        "the first call is answered",
        Duration::from_secs(5),
        async || caller.call(secret(1)).await == Ok(1),
    )
    .await;
    let before = lpushes(&redis).await;
    let calls = (0..12u32).map(|n| {
        let caller = caller.clone();
        tokio::spawn(async move { (n, caller.call(secret(n)).await) })
    });
    let mut refused = 0;
    for call in futures::future::join_all(calls).await {
        match call.expect("call task") {
            (n, Ok(answer)) => assert_eq!(answer, n),
            (_, Err(Error::Unavailable(_))) => refused += 1,
            (n, Err(e)) => panic!("call {n}: neither answered nor refused at once: {e:?}"),
        }
    }
    assert!(refused > 0, "a burst of 12 on 2 slots: some are refused");
    assert_eq!(
        lpushes(&redis).await,
        before,
        "no request was put on a list"
    );
    // Nothing in the namespace holds the password.
    let mut conn = redis.connection().await;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("gorgon:{ns}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    for key in keys {
        let kind: String = ::redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        if kind == "list" {
            let values: Vec<String> = ::redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .expect("LRANGE");
            assert!(values.iter().all(|v| !v.contains(password)), "{key}");
        }
    }
}
