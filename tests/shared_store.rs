//! The shared stores (MongoDB, PostgreSQL) under real processes: several `gorgon` nodes run the
//! store role on one database, joined by a cluster and Redis. For each backend: read-your-writes
//! across store nodes, a store node killed with SIGKILL under load (the other serves every
//! acknowledged write, the killed one comes back), the database server killed and restarted under
//! load (the nodes recover without a restart; `/readyz` says 503 while it is gone). And the
//! cluster refusing to mix backends, and PostgreSQL's primary killed under writes and its
//! synchronous standby promoted (the node follows it; no acknowledged write lost).
//!
//! MongoDB is SecantusDB, a wire-protocol server (see `tests/common/mongo.rs`), or a real MongoDB
//! when `GORGON_TEST_MONGODB_URI` is set; PostgreSQL is Debian's, in clusters the tests create
//! (`tests/common/postgres.rs`). The tests of this file run one at a time.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::mongo::MongoServer;
use common::postgres::PgServer;
use common::process::GorgonProcess;
use common::redis::{Fsync, RedisServer};
use common::servers::unique_database;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound of any one test; every wait inside is bounded well below it.
const TEST_BOUND: Duration = Duration::from_secs(180);

async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_BOUND, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {} s", TEST_BOUND.as_secs()));
}

/// Two nodes with every role, each its own front and store node, on one database, joined in a
/// cluster (through the first) and on Redis.
struct Pair {
    ns: String,
    http: Client,
    specs: [NodeSpec; 2],
    nodes: [GorgonProcess; 2],
    bases: [String; 2],
}

impl Pair {
    async fn start(redis: &RedisServer, store_url: &str) -> Pair {
        let ns = format!("m{}", uuid::Uuid::now_v7().simple());
        let http = client();
        let first = admin(NodeSpec::new("all", None)).arg("--store", store_url);
        let seed = first.cluster_port;
        let second = NodeSpec::new("all", Some(seed)).arg("--store", store_url);
        let a = first.start(Some(redis), &ns);
        let b = second.start(Some(redis), &ns);
        let bases = [a.base(), b.base()];
        for base in &bases {
            wait_ready(&http, base).await;
            wait_view(&http, base, Duration::from_secs(15), |v| {
                v["nodes"].as_array().map(Vec::len) == Some(2)
            })
            .await;
        }
        Pair {
            ns,
            http,
            specs: [first, second],
            nodes: [a, b],
            bases,
        }
    }
}

/// The shared backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Mongo,
    Postgres,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Mongo => "mongodb",
            Db::Postgres => "postgres",
        }
    }
}

/// The database of one test: a fresh one on the backend's shared test server (for MongoDB, on the
/// real one named by `GORGON_TEST_MONGODB_URI` when set). `None` when the server is not installed
/// (the test is skipped, unless `GORGON_REQUIRE_TOOLS` is set: then it fails).
async fn database(db: Db, prefix: &str) -> Option<String> {
    match db {
        Db::Mongo => {
            let name = unique_database(prefix);
            if let Ok(uri) = std::env::var("GORGON_TEST_MONGODB_URI") {
                return Some(common::mongo::with_database(&uri, &name));
            }
            Some(MongoServer::shared().await?.url_for(&name))
        }
        Db::Postgres => {
            let server = PgServer::shared().await?;
            let name = server.fresh_database(prefix).await;
            Some(server.url_for(&name))
        }
    }
}

/// A database server of the test's own (the test kills it): its URL for a fresh database, and a
/// handle to kill and restart it.
enum OwnServer {
    Mongo(MongoServer),
    Postgres(PgServer),
}

impl OwnServer {
    async fn start(db: Db) -> Option<(OwnServer, String)> {
        match db {
            Db::Mongo => {
                let server = MongoServer::start_or_skip().await?;
                let url = server.url_for(&unique_database("down"));
                Some((OwnServer::Mongo(server), url))
            }
            Db::Postgres => {
                let server = PgServer::start_or_skip().await?;
                let name = server.fresh_database("down").await;
                let url = server.url_for(&name);
                Some((OwnServer::Postgres(server), url))
            }
        }
    }

    fn kill(&mut self) {
        match self {
            OwnServer::Mongo(s) => s.kill(),
            OwnServer::Postgres(s) => s.kill(),
        }
    }

    async fn restart(&mut self) {
        match self {
            OwnServer::Mongo(s) => s.restart().await,
            OwnServer::Postgres(s) => s.restart().await,
        }
    }
}

async fn readyz(http: &Client, base: &str) -> (StatusCode, Value) {
    let resp = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    let status = resp.status();
    (status, resp.json().await.expect("readyz JSON"))
}

async fn get_item(http: &Client, base: &str, token: &str, id: &str) -> reqwest::Response {
    http.get(format!("{base}/api/v1/items/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET an item")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_a_write_through_one_store_node_is_read_at_once_through_the_other() {
    read_your_writes(Db::Mongo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_write_through_one_store_node_is_read_at_once_through_the_other() {
    read_your_writes(Db::Postgres).await;
}

async fn read_your_writes(db: Db) {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
            return;
        };
        let Some(url) = database(db, "ryw").await else {
            return;
        };
        let pair = Pair::start(&redis, &url).await;
        let (http, [a, b]) = (&pair.http, &pair.bases);
        for base in [a, b] {
            let (status, body) = readyz(http, base).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["store_backend"], db.name(), "{body}");
        }
        let view = cluster_view(http, a).await;
        let backends: Vec<&Value> = view["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| &n["store_backend"])
            .collect();
        assert_eq!(backends, vec![db.name(), db.name()], "{view:#}");

        // Each front calls the store role of its own process first: a write through `a` is
        // written by a's store node, the read through `b` is answered by b's.
        let (user, token) = common::register_and_login(http, a, "hopper@example.com").await;
        for n in 0..100 {
            let title = format!("written through a, read through b {n}");
            let item = create_item(http, a, &token, &title)
                .await
                .expect("create through a");
            let id = item["id"].as_str().expect("id");
            let resp = get_item(http, b, &token, id).await;
            assert_eq!(
                resp.status(),
                StatusCode::OK,
                "item {n} not yet visible on b"
            );
            let read: Value = resp.json().await.expect("item JSON");
            assert_eq!(read["title"], title.as_str());

            // And back: changed through b, the change is what a reads next.
            let retitled = format!("changed through b {n}");
            let resp = http
                .patch(format!("{b}/api/v1/items/{id}"))
                .bearer_auth(&token)
                .json(&json!({"title": retitled}))
                .send()
                .await
                .expect("PATCH through b");
            assert_eq!(resp.status(), StatusCode::OK);
            let read: Value = get_item(http, a, &token, id)
                .await
                .json()
                .await
                .expect("item JSON");
            assert_eq!(read["title"], retitled.as_str(), "a read a stale item");
        }
        // A user's newest items, listed through the other node, include the latest write.
        let listed: Value = http
            .get(format!("{b}/api/v1/users/{user}/items?limit=5"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("list through b")
            .json()
            .await
            .expect("list JSON");
        let first = &listed["items"][0]["title"];
        assert_eq!(first, "changed through b 99", "{listed:#}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_a_store_node_killed_under_load_costs_nothing_acknowledged() {
    store_node_killed(Db::Mongo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_store_node_killed_under_load_costs_nothing_acknowledged() {
    store_node_killed(Db::Postgres).await;
}

async fn store_node_killed(db: Db) {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        let Some(url) = database(db, "kill").await else {
            return;
        };
        let mut pair = Pair::start(&redis, &url).await;
        let http = pair.http.clone();
        let [a, b] = pair.bases.clone();
        let (token, load_a) = Load::as_new_user(&http, &a, "lamport@example.com").await;
        let first = create_item(&http, &b, &token, "before the load on b")
            .await
            .expect("create through b");
        let load_b = Load::start(&http, &b, &token, first["id"].as_str().expect("id"));

        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = load_b.written();
        let killed_at = Instant::now();
        pair.nodes[0].kill9();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let log_b = load_b.finish().await;
        let log_a = load_a.finish().await;
        eprintln!(
            "{db:?}: kill -9 of one of two store nodes: through the survivor {} reads ok, {} read \
             errors, {} writes acknowledged ({before} before the kill), {} write errors \
             (first: {:?}); through the killed front {} writes acknowledged",
            log_b.reads_ok,
            log_b.read_errors.len(),
            log_b.written.len(),
            log_b.write_errors.len(),
            log_b.write_errors.first(),
            log_a.written.len(),
        );
        assert!(log_b.written.len() > before, "the survivor kept writing");
        assert!(
            log_b.write_errors.is_empty() && log_b.read_errors.is_empty(),
            "the survivor has its own store node on the shared database: nothing should fail \
             ({:?} / {:?})",
            log_b.write_errors.first(),
            log_b.read_errors.first()
        );
        // Everything either front acknowledged is there, read through the survivor.
        log_a.assert_all_written_readable(&http, &b, &token).await;
        log_b.assert_all_written_readable(&http, &b, &token).await;
        eprintln!(
            "{} + {} acknowledged writes read back through the survivor, {:?} after the kill",
            log_a.written.len(),
            log_b.written.len(),
            killed_at.elapsed()
        );

        // The killed node comes back on the same database and serves.
        pair.nodes[0] = pair.specs[0].start(Some(&redis), &pair.ns);
        let a = pair.nodes[0].base();
        wait_ready(&http, &a).await;
        log_b.assert_all_written_readable(&http, &a, &token).await;
        create_item(&http, &a, &token, "after the restart")
            .await
            .expect("the restarted node writes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_the_database_killed_under_load_comes_back_without_a_node_restart() {
    if std::env::var("GORGON_TEST_MONGODB_URI").is_ok() {
        eprintln!("skipped against GORGON_TEST_MONGODB_URI: this test kills its own server");
        return;
    }
    database_killed(Db::Mongo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_the_database_killed_under_load_comes_back_without_a_node_restart() {
    database_killed(Db::Postgres).await;
}

async fn database_killed(db: Db) {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        // A server of its own: this test kills it.
        let Some((mut server, url)) = OwnServer::start(db).await else {
            return;
        };
        let pair = Pair::start(&redis, &url).await;
        let http = pair.http.clone();
        let [a, b] = pair.bases.clone();
        let (token, load) = Load::as_new_user(&http, &a, "gray@example.com").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = load.written();

        server.kill();
        let down_at = Instant::now();
        // Unreachable: not ready, and a request fails with 503 instead of waiting.
        let deadline = Instant::now() + Duration::from_secs(15);
        let (status, body) = loop {
            let (status, body) = readyz(&http, &b).await;
            if status == StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let noticed = down_at.elapsed();
        let asked = Instant::now();
        let resp = http
            .get(format!("{b}/api/v1/items?q=load&limit=5"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET while the database is down");
        let answered = asked.elapsed();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_secs(1)).await;

        server.restart().await;
        let up_at = Instant::now();
        wait_ready(&http, &a).await;
        wait_ready(&http, &b).await;
        let recovered = up_at.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = load.finish().await;
        eprintln!(
            "{db:?}: kill -9 of the database under load: /readyz 503 after {noticed:?}, a read \
             answered 503 in {answered:?}, ready again {recovered:?} after the restart; {} \
             writes acknowledged ({before} before the kill), {} write errors (first: {:?}), \
             {} read errors",
            log.written.len(),
            log.write_errors.len(),
            log.write_errors.first(),
            log.read_errors.len(),
        );
        assert!(
            answered < Duration::from_secs(2),
            "a request waited {answered:?} on a database known to be down"
        );
        assert!(
            log.written.len() > before,
            "writes resumed after the restart"
        );
        log.assert_all_written_readable(&http, &b, &token).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_refuses_store_nodes_on_different_backends() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
            return;
        };
        let Some(url) = database(Db::Mongo, "mixed").await else {
            return;
        };
        let ns = format!("m{}", uuid::Uuid::now_v7().simple());
        let shared = NodeSpec::new("all", None).arg("--store", &url);
        let _running = shared.start(Some(&redis), &ns);
        let embedded = NodeSpec::new("auth,app,store", Some(shared.cluster_port));
        let (ok, stderr) = embedded.start_expecting_exit(Some(&redis), &ns);
        assert!(!ok, "an embedded store node joined a cluster on MongoDB");
        assert!(
            stderr.contains("same backend") || stderr.contains("embedded"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("mongodb://"),
            "the URL is not shown: {stderr}"
        );
    })
    .await;
}

/// PostgreSQL's primary `kill -9`ed under writes from 8 clients and its synchronous standby
/// promoted: the node, on a two-host URL, follows the new primary without a restart; every
/// write that got a 2xx is on it; the writes in between got a clean 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_primary_lost_standby_promoted_no_acknowledged_write_lost() {
    bounded(async {
        let Some(mut primary) = PgServer::start_or_skip().await else {
            return;
        };
        let standby = PgServer::start_standby_of(&primary).await;
        let name = primary.fresh_database("failover").await;
        let url = format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{name}?target_session_attrs=read-write",
            primary.port(),
            standby.port()
        );
        let http = client();
        let spec = NodeSpec::new("all", None).arg("--store", &url);
        let node = spec.start(None, "failover");
        let base = node.base();
        wait_ready(&http, &base).await;
        let (_, token) = common::register_and_login(&http, &base, "liskov@example.com").await;

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = std::sync::Arc::new(parking_lot::Mutex::new(FailoverLog::default()));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                let (stop, log) = (stop.clone(), log.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n += 1;
                        let title = format!("writer {w} item {n}");
                        let resp = http
                            .post(format!("{base}/api/v1/items"))
                            .bearer_auth(&token)
                            .json(&json!({"title": title, "body": "across a failover"}))
                            .send()
                            .await;
                        let at = Instant::now();
                        match resp {
                            Ok(resp) if resp.status() == StatusCode::CREATED => {
                                let item: Value = resp.json().await.expect("item JSON");
                                let id = item["id"].as_str().expect("id").to_string();
                                log.lock().acknowledged.push((id, title));
                            }
                            Ok(resp) => log.lock().failed.push((at, resp.status().as_u16())),
                            Err(_) => log.lock().failed.push((at, 0)),
                        }
                        if log.lock().failed.last().is_some_and(|(t, _)| *t == at) {
                            // Failing fast: do not spin on a database that is being replaced.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();

        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = log.lock().acknowledged.len();
        primary.kill();
        let killed_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        standby.promote().await;
        let promoted_after = killed_at.elapsed();
        // Carry on until writes have succeeded for a while on the new primary.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let recovered = {
                let log = log.lock();
                log.acknowledged.len() > before + 50
                    && log
                        .failed
                        .last()
                        .is_none_or(|(t, _)| t.elapsed() > Duration::from_secs(1))
            };
            if recovered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "writes did not resume within 30 s of the promotion"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for writer in writers {
            writer.await.expect("writer");
        }
        let log = std::mem::take(&mut *log.lock());
        let window = match (log.failed.first(), log.failed.last()) {
            (Some((first, _)), Some((last, _))) => last.duration_since(*first),
            _ => Duration::ZERO,
        };
        let mut by_status = std::collections::BTreeMap::new();
        for (_, status) in &log.failed {
            *by_status.entry(*status).or_insert(0) += 1;
        }
        eprintln!(
            "PostgreSQL failover under 8 writers: {} writes acknowledged ({before} before the \
             kill), {} failed by status {by_status:?} over {window:?}; standby promoted \
             {promoted_after:?} after the kill",
            log.acknowledged.len(),
            log.failed.len(),
        );
        assert!(
            by_status.keys().all(|s| *s == 503),
            "writes during the failover fail with a clean 503: {by_status:?}"
        );
        let acknowledged = log.acknowledged.iter().map(|(id, title)| (id, title));
        assert_items_readable(&http, &base, &token, acknowledged).await;
        // And they are on the new primary itself, counted there.
        let stored = standby
            .query_text(&name, "SELECT count(*)::text FROM items")
            .await
            .expect("count on the new primary");
        let stored: usize = stored.and_then(|n| n.parse().ok()).expect("a count");
        assert!(
            stored >= log.acknowledged.len(),
            "{stored} items on the new primary, {} acknowledged",
            log.acknowledged.len()
        );
        drop(node);
    })
    .await;
}

#[derive(Default)]
struct FailoverLog {
    acknowledged: Vec<(String, String)>,
    failed: Vec<(Instant, u16)>,
}
