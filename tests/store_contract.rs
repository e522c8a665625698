//! Runs the store contract (`tests/common/contract.rs`) against every backend present, and tests
//! what is particular to the embedded store and to the MongoDB store. The embedded store is always
//! present; MongoDB runs against a SecantusDB server the tests start (see `common/mongo.rs`;
//! skipped when it is not installed, a failure under `GORGON_REQUIRE_TOOLS`), and also against
//! `GORGON_TEST_MONGODB_URI` when that is set (a real replica set). A backend joins the contract
//! with one line in `contract_tests!` below, naming a factory of fresh, empty stores.

#[path = "common/contract.rs"]
mod contract;
#[path = "common/mongo.rs"]
mod mongo;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gorgon::domain::{new_id, now, Email, Extra, Item, NewItem, NewUser, Page, UserName};
use gorgon::store::{BulkLoad, MongoOptions, MongoStore, SqliteOptions, SqliteStore, Store};
use gorgon::Error;

use mongo::{unique_database, MongoServer};

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

/// Fresh stores on the deployment at `GORGON_TEST_MONGODB_URI`, each in a database of its own;
/// the databases are dropped when the factory goes.
fn external_mongo_stores() -> Option<impl Fn() -> StoreFuture> {
    struct DropDatabases {
        url: String,
        names: Arc<parking_lot::Mutex<Vec<String>>>,
    }
    impl Drop for DropDatabases {
        /// On a thread with a runtime of its own: the test's runtime is inside this drop.
        fn drop(&mut self) {
            let (url, names) = (self.url.clone(), std::mem::take(&mut *self.names.lock()));
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    for name in names {
                        let store = MongoStore::connect(&url, mongo_options(&name)).await?;
                        store.drop_database().await?;
                        store.close().await;
                    }
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                })?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop the contract's databases on GORGON_TEST_MONGODB_URI");
            }
        }
    }
    let url = external_mongo_url()?;
    let names = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let guard = DropDatabases {
        url: url.clone(),
        names: names.clone(),
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

fn new_user(email: &str) -> NewUser {
    NewUser {
        id: new_id(),
        name: UserName::parse("Ada").expect("name"),
        email: Email::parse(email).expect("email"),
        group: 1,
        admin: false,
        extra: Extra::default(),
        password_hash: "phc-hash".into(),
        created_at: now(),
    }
}

fn new_item(user_id: uuid::Uuid, title: &str, body: &str) -> Item {
    NewItem {
        title: title.into(),
        body: body.into(),
        ..Default::default()
    }
    .into_item(new_id(), user_id, now())
}

/// A redelivered insert (the same item, the same user) racing itself from several nodes: every
/// delivery answers with the one stored document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_redelivered_inserts_store_once() {
    let Some(server) = MongoServer::shared().await else {
        return;
    };
    let first = fresh_mongo_store(&server.url()).await;
    let database = first.database().to_string();
    let second = MongoStore::connect(&server.url(), mongo_options(&database))
        .await
        .expect("second node");
    let stores: Vec<Arc<MongoStore>> = vec![Arc::new(first), Arc::new(second)];
    let user = new_user("redelivered@example.com");
    let item = new_item(user.id, "once", "only once");
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let (store, user, item) = (stores[n % 2].clone(), user.clone(), item.clone());
            tokio::spawn(async move {
                let stored_user = store.insert_user(user).await.expect("user");
                let stored_item = store.insert_item(item).await.expect("item");
                (stored_user.id, stored_item)
            })
        })
        .collect();
    for task in tasks {
        let (user_id, stored) = task.await.expect("task");
        assert_eq!(user_id, user.id);
        assert_eq!(stored, item);
    }
    assert_eq!(stores[0].counts().await.expect("counts"), (1, 1));
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
    for store in &stores {
        store.close().await;
    }
}

/// Claimers on several nodes at once never get the same job, and together claim every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_claims_are_exclusive_across_nodes() {
    let Some(server) = MongoServer::shared().await else {
        return;
    };
    let first = fresh_mongo_store(&server.url()).await;
    let database = first.database().to_string();
    let mut stores = vec![Arc::new(first)];
    for _ in 0..2 {
        let node = MongoStore::connect(&server.url(), mongo_options(&database))
            .await
            .expect("node");
        stores.push(Arc::new(node));
    }
    let owner = stores[0]
        .insert_user(new_user("claims@example.com"))
        .await
        .expect("user");
    let mut ids = Vec::new();
    for n in 0..60 {
        let job = gorgon::domain::NewJob {
            id: new_id(),
            user_id: owner.id,
            kind: "hash".into(),
            payload: serde_json::json!({ "n": n }),
            idempotency_key: None,
            created_at: now(),
            max_unfinished: None,
        };
        ids.push(stores[0].insert_job(job).await.expect("job").0.id);
    }
    let claimers: Vec<_> = (0..9)
        .map(|n| {
            let store = stores[n % stores.len()].clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claimed = store
                        .claim_jobs(Duration::from_secs(60), 3)
                        .await
                        .expect("claim");
                    if claimed.is_empty() {
                        return mine;
                    }
                    mine.extend(claimed.into_iter().map(|j| j.id));
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.expect("claimer"));
    }
    let total = claimed.len();
    claimed.sort();
    claimed.dedup();
    assert_eq!(claimed.len(), total, "a job was claimed twice");
    ids.sort();
    assert_eq!(claimed, ids, "every job claimed once");
    for store in &stores {
        store.close().await;
    }
}

/// One address, registered from several nodes at once: one account, the rest `Conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_duplicate_email_is_a_conflict() {
    let Some(server) = MongoServer::shared().await else {
        return;
    };
    let first = fresh_mongo_store(&server.url()).await;
    let database = first.database().to_string();
    let second = MongoStore::connect(&server.url(), mongo_options(&database))
        .await
        .expect("second node");
    let stores = [Arc::new(first), Arc::new(second)];
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = stores[n % 2].clone();
            // Half of them a look-alike (dotless i) of the same address.
            let email = if n % 4 == 3 {
                "al\u{0131}ce@example.com"
            } else {
                "alice@example.com"
            };
            let user = new_user(email);
            tokio::spawn(async move { store.insert_user(user).await })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => created += 1,
            Err(Error::Conflict(_)) => {}
            Err(other) => panic!("expected Conflict, got {other:?}"),
        }
    }
    assert_eq!(created, 1, "one account per address");
    assert_eq!(stores[0].counts().await.expect("counts").0, 1);
    for store in &stores {
        store.close().await;
    }
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
    for call in ["ping", "get_user", "insert_item"] {
        let started = Instant::now();
        let result = match call {
            "ping" => store.ping().await,
            "get_user" => store.get_user(user.id).await.map(|_| ()),
            _ => store
                .insert_item(new_item(user.id, "lost", ""))
                .await
                .map(|_| ()),
        };
        let took = started.elapsed();
        assert!(
            matches!(result, Err(Error::Unavailable(_))),
            "{call} with the server down: {result:?}"
        );
        assert!(
            took < timeout + Duration::from_secs(3),
            "{call} took {took:?} to fail (server selection timeout {timeout:?})"
        );
    }

    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.get_user(user.id).await.expect("user kept"), user);
    assert_eq!(store.get_item(item.id).await.expect("item kept"), item);
    store
        .insert_item(new_item(user.id, "after", "the restart"))
        .await
        .expect("writes again");
    store.close().await;
    assert!(matches!(store.ping().await, Err(Error::Unavailable(_))));
}

/// A bulk load into an empty store (items arriving out of order, in several calls) leaves
/// listings and search as if each item had been inserted alone, with every index in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_bulk_load_then_list_and_search() {
    let Some(server) = MongoServer::shared().await else {
        return;
    };
    let store = fresh_mongo_store(&server.url()).await;
    let users: Vec<NewUser> = (0..5)
        .map(|n| new_user(&format!("bulk{n}@example.com")))
        .collect();
    let mut items: Vec<(u64, Item)> = (0..600u64)
        .map(|n| {
            let user = &users[n as usize % users.len()];
            let word = if n % 3 == 0 { "lantern" } else { "pebble" };
            (
                n,
                new_item(user.id, &format!("bulk {n}"), &format!("a {word} here")),
            )
        })
        .collect();
    store.begin_bulk(items.len() as u64).await.expect("begin");
    store.bulk_users(users.clone()).await.expect("users");
    items.reverse();
    for chunk in items.chunks(250) {
        store.bulk_items(chunk.to_vec()).await.expect("items");
    }
    // Reads during the load work without the indexes set aside (more slowly).
    let during = store
        .list_user_items(users[1].id, Page::new(5, 0))
        .await
        .expect("list during the load");
    assert_eq!(during.len(), 5);
    store.finish_bulk().await.expect("finish");
    assert_eq!(store.counts().await.expect("counts"), (5, 600));

    let mut expected: Vec<uuid::Uuid> = items
        .iter()
        .filter(|(_, i)| i.user_id == users[0].id)
        .map(|(_, i)| i.id)
        .collect();
    expected.sort();
    expected.reverse();
    let listed: Vec<uuid::Uuid> = store
        .list_user_items(users[0].id, Page::new(500, 0))
        .await
        .expect("list")
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, expected, "newest first");
    let found = store
        .search_items("LANTERN here", Page::new(500, 0))
        .await
        .expect("search");
    assert_eq!(found.len(), 200);
    assert!(found.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let credentials = store
        .get_credentials("bulk3@example.com")
        .await
        .expect("a loaded user logs in");
    assert_eq!(credentials.user.id, users[3].id);
    store.close().await;
}

/// Both backends find the same items for the same searches: one tokenizer, words folded as the
/// embedded store's index folds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_search_finds_what_the_embedded_store_finds() {
    let Some(server) = MongoServer::shared().await else {
        return;
    };
    let mongo = fresh_mongo_store(&server.url()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = SqliteStore::open(dir.path(), Default::default()).expect("open");
    let stores: [&dyn Store; 2] = [&mongo, &embedded];
    let user = new_user("words@example.com");
    let texts = [
        ("Crème brûlée", "dessert, café-style", vec!["French"]),
        ("Cafe au lait", "Milk & coffee; 42 cups", vec!["drinks"]),
        (
            "Ünïcode test",
            "snake_case and CamelCase x2",
            vec!["dev-tools"],
        ),
        ("Hello, World!", "don't panic", vec![]),
    ];
    let items: Vec<Item> = texts
        .iter()
        .map(|(title, body, keywords)| Item {
            keywords: keywords.iter().map(|k| k.to_lowercase()).collect(),
            ..new_item(user.id, title, body)
        })
        .collect();
    for store in stores {
        store.insert_user(user.clone()).await.expect("user");
        for item in &items {
            store.insert_item(item.clone()).await.expect("item");
        }
    }
    let queries = [
        "creme",
        "crème",
        "CAFE",
        "café style",
        "42",
        "unicode",
        "ÜNÏCODE",
        "snake",
        "case",
        "camelcase",
        "x2",
        "dev tools",
        "don",
        "t",
        "hello world",
        "french",
        "milk coffee",
        "missing",
    ];
    for query in queries {
        let ids = |found: Vec<Item>| found.iter().map(|i| i.id).collect::<Vec<_>>();
        let from_mongo = ids(mongo
            .search_items(query, Page::new(10, 0))
            .await
            .expect("mongo"));
        let from_embedded = ids(embedded
            .search_items(query, Page::new(10, 0))
            .await
            .expect("embedded"));
        assert_eq!(from_mongo, from_embedded, "search {query:?}");
    }
    mongo.close().await;
    embedded.close().await;
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
    // Nobody listens on port 1: unreachable, told promptly.
    let unreachable =
        format!("mongodb://gorgon:{secret}@127.0.0.1:1/app?serverSelectionTimeoutMS=300");
    let started = Instant::now();
    let e = MongoStore::connect(&unreachable, MongoOptions::default())
        .await
        .expect_err("no server");
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    for text in [format!("{e}"), format!("{e:?}")] {
        assert!(!text.contains(secret), "{text}");
    }
    let malformed = format!("mongodb://gorgon:{secret}@127.0.0.1/app?w=&readPreference=nonsense");
    let e = MongoStore::connect(&malformed, MongoOptions::default())
        .await
        .expect_err("a bad URL");
    for text in [format!("{e}"), format!("{e:?}")] {
        assert!(!text.contains(secret), "{text}");
    }
}
