//! Runs the store contract (`gorgon::store::contract`) against every backend present.
//! The embedded store is always present. (The MongoDB backend is not in this build yet.)

use std::sync::Arc;

use gorgon::store::{contract, SqliteStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_contract() {
    let dirs = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keep = dirs.clone();
    contract::run_all(move || {
        let dirs = keep.clone();
        async move {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = SqliteStore::open(dir.path(), Default::default()).expect("open");
            dirs.lock().push(dir);
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
    assert_eq!(dirs.lock().len(), contract::CHECKS.len());
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
