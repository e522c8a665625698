//! Runs the store contract (`tests/common/contract.rs`) against every backend present, and tests
//! what is particular to the embedded store and to the shared stores. The embedded store is always
//! present; MongoDB runs against a SecantusDB server the tests start (see `common/mongo.rs`), and
//! PostgreSQL against a throwaway cluster of Debian's server (see `common/postgres.rs`), each
//! skipped when not installed (a failure under `GORGON_REQUIRE_TOOLS`); both also run against
//! `GORGON_TEST_MONGODB_URI` / `GORGON_TEST_POSTGRES_URI` when set (a real replica set, a real
//! server). A backend joins the contract with one line in `contract_tests!` below, naming a
//! factory of fresh, empty stores; the shared backends' own checks are in
//! `common/shared_backend.rs`, run here for each.

#[path = "common/contract.rs"]
mod contract;
#[path = "common/mongo.rs"]
mod mongo;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/servers.rs"]
mod servers;
#[path = "common/shared_backend.rs"]
mod shared;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gorgon::store::{
    MongoOptions, MongoStore, PgOptions, PgStore, SqliteOptions, SqliteStore, Store,
};
use gorgon::Error;

use mongo::MongoServer;
use postgres::PgServer;
use servers::unique_database;
use shared::{new_item, new_user};

/// The factory, or the end of the test (skipped) when its backend is not there.
macro_rules! or_skip {
    ($factory:expr) => {
        match $factory {
            Some(factory) => factory,
            None => return,
        }
    };
}

contract::contract_tests! {
    embedded_store_passes_the_contract => embedded_stores(),
    mongo_store_passes_the_contract => or_skip!(mongo_stores().await),
    mongo_uri_store_passes_the_contract => or_skip!(external_mongo_stores()),
    postgres_store_passes_the_contract => or_skip!(pg_stores().await),
    postgres_uri_store_passes_the_contract => or_skip!(external_pg_stores().await),
}

/// Fresh embedded stores, each in a temporary directory of its own; the directories go when the
/// factory is dropped, after the contract closed every store.
fn embedded_stores() -> impl Fn() -> std::future::Ready<Arc<dyn Store>> {
    let dirs = parking_lot::Mutex::new(Vec::new());
    move || {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path(), Default::default()).expect("open");
        dirs.lock().push(dir);
        std::future::ready(Arc::new(store) as Arc<dyn Store>)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_is_owned_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = SqliteStore::open(dir.path(), Default::default()).expect("open");
    let second = SqliteStore::open(dir.path(), Default::default());
    assert!(matches!(second, Err(gorgon::Error::Conflict(_))));
    first.close().await;
    drop(first);
    SqliteStore::open(dir.path(), Default::default()).expect("reopen after close");
}

/// Writes 1,000 items and says how large the database file (not its log) is after `wait`.
async fn database_size_after_writes(options: SqliteOptions, wait: std::time::Duration) -> u64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path(), options).expect("open");
    let user = gorgon::domain::new_id();
    for batch in 0..10 {
        let items = (0..100)
            .map(|n| {
                gorgon::domain::NewItem {
                    title: format!("item {batch}-{n}"),
                    body: "x".repeat(300),
                    ..Default::default()
                }
                .into_item(gorgon::domain::new_id(), user, gorgon::domain::now())
            })
            .collect();
        store.insert_items(items).await.expect("insert");
    }
    tokio::time::sleep(wait).await;
    let size = std::fs::metadata(dir.path().join("gorgon.db"))
        .expect("database file")
        .len();
    store.close().await;
    size
}

/// The background checkpointer moves committed pages into the database file while the store
/// runs; without it (and below SQLite's automatic threshold of 1,000 log pages) they stay in
/// the log until the store closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_moves_commits_into_the_database() {
    let wait = std::time::Duration::from_millis(500);
    let background = SqliteOptions {
        checkpoint_every: Some(std::time::Duration::from_millis(20)),
        ..Default::default()
    };
    let automatic = SqliteOptions {
        checkpoint_every: None,
        ..Default::default()
    };
    let checkpointed = database_size_after_writes(background, wait).await;
    let left_in_log = database_size_after_writes(automatic, wait).await;
    assert!(
        checkpointed > 300_000,
        "1,000 items of 300+ bytes checkpointed: the database is {checkpointed} bytes"
    );
    assert!(
        left_in_log < checkpointed / 2,
        "without the checkpointer the items stay in the log: {left_in_log} bytes"
    );
}

/// A burst of large writes grows the write-ahead log; once writes stop, the store truncates it
/// (before: SQLite kept the log at its largest size, 748 MB after a burst of 250 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_ahead_log_shrinks_after_a_burst() {
    const BOUND: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions {
        checkpoint_every: Some(std::time::Duration::from_millis(20)),
        checkpoint_idle: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let store = Arc::new(SqliteStore::open(dir.path(), options).expect("open"));
    let wal = dir.path().join("gorgon.db-wal");
    let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    // 4 writers x 10 batches x 20 items of 50 KB: 40 MB, each batch a 1 MB transaction.
    let user = gorgon::domain::new_id();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for batch in 0..10 {
                    let items = (0..20)
                        .map(|n| {
                            gorgon::domain::NewItem {
                                title: format!("item {w}-{batch}-{n}"),
                                body: "x".repeat(50_000),
                                ..Default::default()
                            }
                            .into_item(
                                gorgon::domain::new_id(),
                                user,
                                gorgon::domain::now(),
                            )
                        })
                        .collect();
                    store.insert_items(items).await.expect("insert");
                }
            })
        })
        .collect();
    let mut peak = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        peak = peak.max(wal_size());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    peak = peak.max(wal_size());
    assert!(
        peak > BOUND,
        "the burst should grow the log past {BOUND} bytes (peak {peak})"
    );
    // Quiet now: the log is folded back within a few idle periods.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while wal_size() > BOUND && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let after = wal_size();
    assert!(
        after <= BOUND,
        "20 s after the burst the log is {after} bytes (peak {peak}); bound {BOUND}"
    );
    assert_eq!(
        store.counts().await.expect("counts").1,
        800,
        "nothing lost on the way"
    );
    store.close().await;
}

// --- MongoDB -------------------------------------------------------------------------------------

type StoreFuture = Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>>;

/// Options for test stores: a short server selection timeout, so a dead server fails fast.
fn mongo_options(database: &str) -> MongoOptions {
    MongoOptions {
        database: database.to_string(),
        server_selection_timeout: Duration::from_secs(2),
        ..MongoOptions::default()
    }
}

/// A fresh store in a database of its own on the server at `url` (whose path names no database).
async fn fresh_mongo_store(url: &str) -> MongoStore {
    let database = unique_database("gorgon_contract");
    MongoStore::connect(url, mongo_options(&database))
        .await
        .unwrap_or_else(|e| panic!("connect to MongoDB: {e}"))
}

/// Fresh MongoDB stores on the test binary's one SecantusDB server, each in a database of its own.
async fn mongo_stores() -> Option<impl Fn() -> StoreFuture> {
    let url = MongoServer::shared().await?.url();
    Some(move || {
        let url = url.clone();
        Box::pin(async move { Arc::new(fresh_mongo_store(&url).await) as Arc<dyn Store> })
            as StoreFuture
    })
}

/// `GORGON_TEST_MONGODB_URI` with its database path taken out (each check names its own; the
/// path's database stays the one credentials are checked against).
fn external_mongo_url() -> Option<String> {
    let uri = std::env::var("GORGON_TEST_MONGODB_URI")
        .ok()
        .filter(|u| !u.is_empty());
    let Some(uri) = uri else {
        eprintln!(
            "skipped: GORGON_TEST_MONGODB_URI is not set (a MongoDB replica set to test against)"
        );
        return None;
    };
    let (scheme, rest) = uri
        .split_once("://")
        .expect("GORGON_TEST_MONGODB_URI: a mongodb:// URL");
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    let mut options: Vec<String> = query
        .split('&')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect();
    let has_credentials = authority.contains('@');
    if has_credentials && !path.is_empty() && !options.iter().any(|o| o.starts_with("authSource="))
    {
        options.push(format!("authSource={path}"));
    }
    Some(format!("{scheme}://{authority}/?{}", options.join("&")))
}

type DropFuture = Pin<Box<dyn Future<Output = Result<(), Box<dyn std::error::Error>>>>>;

/// The databases a factory of stores on an external server made, dropped when the factory goes.
struct DropDatabases {
    url: String,
    names: Arc<parking_lot::Mutex<Vec<String>>>,
    /// Which variable named the server, for the message when dropping fails.
    variable: &'static str,
    drop_one: fn(String, String) -> DropFuture,
}

impl Drop for DropDatabases {
    /// On a thread with a runtime of its own: the test's runtime is inside this drop.
    fn drop(&mut self) {
        let (url, names) = (self.url.clone(), std::mem::take(&mut *self.names.lock()));
        let drop_one = self.drop_one;
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                for name in names {
                    drop_one(url.clone(), name)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not drop the contract's databases on {}",
                self.variable
            );
        }
    }
}

/// Fresh stores on the deployment at `GORGON_TEST_MONGODB_URI`, each in a database of its own;
/// the databases are dropped when the factory goes.
fn external_mongo_stores() -> Option<impl Fn() -> StoreFuture> {
    let url = external_mongo_url()?;
    let names = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let guard = DropDatabases {
        url: url.clone(),
        names: names.clone(),
        variable: "GORGON_TEST_MONGODB_URI",
        drop_one: |url, name| {
            Box::pin(async move {
                let store = MongoStore::connect(&url, mongo_options(&name)).await?;
                store.drop_database().await?;
                store.close().await;
                Ok(())
            })
        },
    };
    Some(move || {
        let _keep_until_the_factory_goes = &guard;
        let (url, names) = (url.clone(), names.clone());
        Box::pin(async move {
            let store = fresh_mongo_store(&url).await;
            names.lock().push(store.database().to_string());
            Arc::new(store) as Arc<dyn Store>
        }) as StoreFuture
    })
}

/// The stores of `nodes` MongoDB store nodes on one fresh database.
async fn mongo_nodes(server: &MongoServer, nodes: usize) -> Vec<Arc<MongoStore>> {
    let first = fresh_mongo_store(&server.url()).await;
    let database = first.database().to_string();
    let mut stores = vec![Arc::new(first)];
    while stores.len() < nodes {
        let node = MongoStore::connect(&server.url(), mongo_options(&database))
            .await
            .expect("node");
        stores.push(Arc::new(node));
    }
    stores
}

fn as_stores<S: Store>(stores: &[Arc<S>]) -> Vec<Arc<dyn Store>> {
    stores.iter().map(|s| s.clone() as Arc<dyn Store>).collect()
}

async fn close_all<S: Store>(stores: &[Arc<S>]) {
    for store in stores {
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_redelivered_inserts_store_once() {
    let Some(server) = MongoServer::shared().await else {
        return;
    };
    let stores = mongo_nodes(server, 2).await;
    shared::redelivered_inserts_store_once(&as_stores(&stores)).await;
    // Pool figures: connections were opened, and all are handed back once calls are done
    // (a check-in may follow its answer by a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    let pool = loop {
        let pool = stores[0].pool_stats();
        if pool.in_use == 0 || Instant::now() > deadline {
            break pool;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(pool.max_per_server, 10);
    assert!(pool.open >= 1 && pool.in_use == 0, "{pool:?}");
    close_all(&stores).await;
}

/// The server dies: calls fail with `Unavailable` within the server selection timeout instead
/// of hanging; it comes back on the same port and data: the same store serves again, with what
/// was acknowledged before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_server_loss_is_unavailable_then_recovers() {
    let Some(mut server) = MongoServer::start_or_skip().await else {
        return;
    };
    let timeout = Duration::from_secs(1);
    let options = MongoOptions {
        server_selection_timeout: timeout,
        ..mongo_options("gorgon_recovery")
    };
    let store = MongoStore::connect(&server.url(), options)
        .await
        .expect("connect");
    let user = store
        .insert_user(new_user("survivor@example.com"))
        .await
        .expect("user");
    let item = store
        .insert_item(new_item(user.id, "kept", "acknowledged before the kill"))
        .await
        .expect("item");
    server.kill();
    shared::calls_are_unavailable_within(&store, user.id, timeout + Duration::from_secs(3)).await;
    server.restart().await;
    shared::serves_again(&store, &user, &item, Duration::from_secs(15)).await;
}

/// The URL's database path names the database; a URL's password never appears in an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_url_names_the_database_and_errors_never_quote_a_password() {
    if let Some(server) = MongoServer::shared().await {
        let name = unique_database("gorgon_named");
        let store = MongoStore::connect(&server.url_for(&name), mongo_options("not_this_one"))
            .await
            .expect("connect");
        assert_eq!(store.database(), name);
        store.close().await;
    }
    let secret = "hunter2-secret";
    // Nobody listens on port 1.
    shared::errors_never_quote_the_password(
        secret,
        &format!("mongodb://gorgon:{secret}@127.0.0.1:1/app?serverSelectionTimeoutMS=300"),
        &format!("mongodb://gorgon:{secret}@127.0.0.1/app?w=&readPreference=nonsense"),
        |url: String| async move { MongoStore::connect(&url, MongoOptions::default()).await },
    )
    .await;
}

/// One test per shared backend and check of several store nodes on one database (the checks are
/// in `common/shared_backend.rs`): `name => server type, nodes factory, nodes, check;`.
macro_rules! nodes_tests {
    ($($test:ident => $server:ty, $nodes:ident, $count:expr, $check:path;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let Some(server) = <$server>::shared().await else {
                return;
            };
            let stores = $nodes(server, $count).await;
            $check(&as_stores(&stores)).await;
            close_all(&stores).await;
        }
    )*};
}

nodes_tests! {
    mongo_claims_are_exclusive_across_nodes => MongoServer, mongo_nodes, 3, shared::claims_are_exclusive_across_nodes;
    mongo_duplicate_email_is_a_conflict => MongoServer, mongo_nodes, 2, shared::duplicate_email_is_a_conflict;
    pg_claims_are_exclusive_across_nodes => PgServer, pg_nodes, 3, shared::claims_are_exclusive_across_nodes;
    pg_duplicate_email_is_a_conflict => PgServer, pg_nodes, 2, shared::duplicate_email_is_a_conflict;
}

/// One test per shared backend and check of one fresh store: `name => server type, fresh store
/// factory, check;`.
macro_rules! one_store_tests {
    ($($test:ident => $server:ty, $fresh:ident, $check:path;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let Some(server) = <$server>::shared().await else {
                return;
            };
            let store = $fresh(server).await;
            $check(&store).await;
            store.close().await;
        }
    )*};
}

one_store_tests! {
    mongo_bulk_load_then_list_and_search => MongoServer, fresh_mongo_store_on, shared::bulk_load_then_list_and_search;
    mongo_search_finds_what_the_embedded_store_finds => MongoServer, fresh_mongo_store_on, shared::search_finds_what_the_embedded_store_finds;
    pg_search_finds_what_the_embedded_store_finds => PgServer, fresh_pg_store, shared::search_finds_what_the_embedded_store_finds;
}

/// A fresh store in a database of its own on `server`.
async fn fresh_mongo_store_on(server: &MongoServer) -> MongoStore {
    fresh_mongo_store(&server.url()).await
}

/// The PostgreSQL bulk load also leaves the indexes it set aside in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_bulk_load_then_list_and_search() {
    let Some(server) = PgServer::shared().await else {
        return;
    };
    let store = fresh_pg_store(server).await;
    shared::bulk_load_then_list_and_search(&store).await;
    let indexes = server
        .query_text(
            store.database(),
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('items_user_newest', 'items_words')",
        )
        .await
        .expect("indexes");
    assert_eq!(indexes.as_deref(), Some("2"), "the indexes are back");
    store.close().await;
}

// --- PostgreSQL ----------------------------------------------------------------------------------

/// Options for test stores: small pools (many stores share one server), quick connect timeouts.
fn pg_options() -> PgOptions {
    PgOptions {
        pool_size: 4,
        connect_timeout: Duration::from_secs(2),
        ..PgOptions::default()
    }
}

/// A fresh store in a database of its own on `server`.
async fn fresh_pg_store(server: &PgServer) -> PgStore {
    let database = server.fresh_database("gorgon_contract").await;
    PgStore::connect(&server.url_for(&database), pg_options())
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"))
}

/// Fresh PostgreSQL stores on the test binary's one server, each in a database of its own.
async fn pg_stores() -> Option<impl Fn() -> StoreFuture> {
    let server = PgServer::shared().await?;
    Some(move || {
        Box::pin(async move { Arc::new(fresh_pg_store(server).await) as Arc<dyn Store> })
            as StoreFuture
    })
}

/// `url` (a `postgres://` URL) naming database `database` instead of its own.
fn pg_url_with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    format!("{scheme}://{authority}/{database}{query}")
}

/// Fresh stores on the server at `GORGON_TEST_POSTGRES_URI` (whose user may create databases),
/// each in a database of its own; the databases are dropped when the factory goes.
async fn external_pg_stores() -> Option<impl Fn() -> StoreFuture> {
    let uri = std::env::var("GORGON_TEST_POSTGRES_URI")
        .ok()
        .filter(|u| !u.is_empty());
    let Some(uri) = uri else {
        eprintln!(
            "skipped: GORGON_TEST_POSTGRES_URI is not set (a PostgreSQL server to test against)"
        );
        return None;
    };
    let names = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let guard = DropDatabases {
        url: uri.clone(),
        names: names.clone(),
        variable: "GORGON_TEST_POSTGRES_URI",
        drop_one: |url, name| {
            Box::pin(async move {
                let (client, connection) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await?;
                Ok(())
            })
        },
    };
    Some(move || {
        let _keep_until_the_factory_goes = &guard;
        let (uri, names) = (uri.clone(), names.clone());
        Box::pin(async move {
            let name = unique_database("gorgon_contract");
            let (client, connection) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
                .await
                .expect("connect to GORGON_TEST_POSTGRES_URI");
            tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("CREATE DATABASE on GORGON_TEST_POSTGRES_URI");
            names.lock().push(name.clone());
            let store = PgStore::connect(&pg_url_with_database(&uri, &name), pg_options())
                .await
                .unwrap_or_else(|e| panic!("connect to GORGON_TEST_POSTGRES_URI: {e}"));
            Arc::new(store) as Arc<dyn Store>
        }) as StoreFuture
    })
}

/// The stores of `nodes` PostgreSQL store nodes on one fresh database.
async fn pg_nodes(server: &PgServer, nodes: usize) -> Vec<Arc<PgStore>> {
    let url = server.url_for(&server.fresh_database("gorgon_nodes").await);
    let mut stores = Vec::new();
    for _ in 0..nodes {
        let node = PgStore::connect(&url, pg_options()).await.expect("node");
        stores.push(Arc::new(node));
    }
    stores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_redelivered_inserts_store_once() {
    let Some(server) = PgServer::shared().await else {
        return;
    };
    let stores = pg_nodes(server, 2).await;
    shared::redelivered_inserts_store_once(&as_stores(&stores)).await;
    // Pool figures: connections were opened, all are handed back, none failed.
    let pool = stores[0].pool_stats();
    assert_eq!(pool.max_size, 4);
    assert!(pool.open >= 1 && pool.in_use == 0, "{pool:?}");
    assert!(pool.reachable && pool.connect_failures == 0, "{pool:?}");
    close_all(&stores).await;
}

/// Nodes starting together on a new database: each applies the migrations or finds them applied
/// (the advisory lock makes them take turns), and the schema is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_nodes_starting_at_once_migrate_once() {
    let Some(server) = PgServer::shared().await else {
        return;
    };
    let database = server.fresh_database("gorgon_migrate").await;
    let url = server.url_for(&database);
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url, pg_options()).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(Arc::new(start.await.expect("task").expect("connect")));
    }
    let versions = server
        .query_text(
            &database,
            "SELECT count(*) || ':' || max(version) FROM gorgon_schema",
        )
        .await
        .expect("schema table");
    assert_eq!(versions.as_deref(), Some("1:1"));
    assert_eq!(stores[3].backend(), "postgres");
    close_all(&stores).await;
}

/// The server dies: calls fail with `Unavailable` promptly (at once while the last connection
/// attempt failed under a second ago) instead of hanging; it comes back on the same port and data
/// (crash recovery): the same store serves again, with what was acknowledged before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_server_loss_is_unavailable_then_recovers() {
    let Some(mut server) = PgServer::start_or_skip().await else {
        return;
    };
    let database = server.fresh_database("gorgon_recovery").await;
    let store = PgStore::connect(&server.url_for(&database), pg_options())
        .await
        .expect("connect");
    let user = store
        .insert_user(new_user("survivor@example.com"))
        .await
        .expect("user");
    let item = store
        .insert_item(new_item(user.id, "kept", "acknowledged before the kill"))
        .await
        .expect("item");

    server.kill();
    shared::calls_are_unavailable_within(&store, user.id, Duration::from_secs(3)).await;
    // Known down: told at once, without a connection attempt.
    let started = Instant::now();
    assert!(matches!(store.ping().await, Err(Error::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_millis(100));
    let pool = store.pool_stats();
    assert!(!pool.reachable && pool.connect_failures >= 1, "{pool:?}");

    server.restart().await;
    shared::serves_again(&store, &user, &item, Duration::from_secs(15)).await;
}

/// A URL's password never appears in an error, whether the server is out of reach or the URL is
/// malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_errors_never_quote_a_password() {
    let secret = "hunter2-secret";
    // Nobody listens on port 1.
    let bad = shared::errors_never_quote_the_password(
        secret,
        &format!("postgres://gorgon:{secret}@127.0.0.1:1/app?connect_timeout=1"),
        &format!("postgres://gorgon:{secret}@127.0.0.1:notaport/app?sslmode=nonsense"),
        |url: String| async move { PgStore::connect(&url, PgOptions::default()).await },
    )
    .await;
    assert!(matches!(bad, Error::Invalid { .. }), "{bad:?}");
}

/// The harness's failover pieces, and the store across a failover: a primary with a synchronous
/// standby; a write acknowledged by the primary; the primary killed (`kill -9`); the standby
/// promoted; the same store, on a URL naming both hosts, reads the write on the new primary and
/// writes there, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_standby_takes_over_when_the_primary_dies() {
    let Some(mut primary) = PgServer::start_or_skip().await else {
        return;
    };
    let database = primary.fresh_database("gorgon_failover").await;
    let standby = PgServer::start_standby_of(&primary).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let store = PgStore::connect(&url, pg_options()).await.expect("connect");
    let user = store
        .insert_user(new_user("failover@example.com"))
        .await
        .expect("user");
    let item = store
        .insert_item(new_item(
            user.id,
            "replicated",
            "acknowledged by the primary",
        ))
        .await
        .expect("item");
    // Synchronous (`synchronous_commit = on`): in the standby's log once acknowledged; visible
    // there once replayed, a moment later (promotion replays all of it first).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let replicated = standby
            .query_text(
                &database,
                &format!("SELECT title FROM items WHERE id = '{}'", item.id),
            )
            .await;
        if matches!(&replicated, Ok(Some(title)) if title == "replicated") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not on the standby: {replicated:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    primary.kill();
    // While no server takes writes: a clean Unavailable, never a hang.
    let result = store.insert_item(new_item(user.id, "lost", "")).await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
    standby.promote().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.ping().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the store did not find the new primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.get_item(item.id).await.expect("the write survived"),
        item
    );
    store
        .insert_item(new_item(user.id, "after", "the failover"))
        .await
        .expect("writes on the new primary");
    assert_eq!(store.counts().await.expect("counts"), (1, 2));
    store.close().await;
}
