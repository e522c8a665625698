//! Runs the store contract (`tests/common/contract.rs`) against every backend present, and tests
//! what is particular to the embedded store. The embedded store is always present. (The MongoDB
//! backend is not in this build yet.) A backend joins the contract with one line in
//! `contract_tests!` below, naming a factory of fresh, empty stores.

#[path = "common/contract.rs"]
mod contract;

use std::sync::Arc;

use gorgon::store::{SqliteOptions, SqliteStore, Store};

contract::contract_tests! {
    embedded_store_passes_the_contract => embedded_stores(),
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
