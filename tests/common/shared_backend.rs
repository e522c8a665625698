//! Checks of what a shared store backend (MongoDB, PostgreSQL) must do beyond the contract: hold
//! up with several store nodes on one database at once, fail cleanly while its server is down and
//! recover, bulk load, and find what the embedded store finds. Each takes stores already
//! connected, so `tests/store_contract.rs` runs the same check against every shared backend with
//! a few lines each.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gorgon::domain::{new_id, now, Email, Extra, Item, NewItem, NewJob, NewUser, Page, UserName};
use gorgon::store::{BulkLoad, SqliteStore, Store};
use gorgon::Error;

pub fn new_user(email: &str) -> NewUser {
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

pub fn new_item(user_id: uuid::Uuid, title: &str, body: &str) -> Item {
    NewItem {
        title: title.into(),
        body: body.into(),
        ..Default::default()
    }
    .into_item(new_id(), user_id, now())
}

/// A redelivered insert (the same item, the same user) racing itself from several nodes (`stores`
/// on one database): every delivery answers with the one stored row.
pub async fn redelivered_inserts_store_once(stores: &[Arc<dyn Store>]) {
    let user = new_user("redelivered@example.com");
    let item = new_item(user.id, "once", "only once");
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let (store, user, item) =
                (stores[n % stores.len()].clone(), user.clone(), item.clone());
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
}

/// Claimers on several nodes at once never get the same job, and together claim every job.
pub async fn claims_are_exclusive_across_nodes(stores: &[Arc<dyn Store>]) {
    let owner = stores[0]
        .insert_user(new_user("claims@example.com"))
        .await
        .expect("user");
    let mut ids = Vec::new();
    for n in 0..60 {
        let job = NewJob {
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
}

/// One address, registered from several nodes at once: one account, the rest `Conflict`.
pub async fn duplicate_email_is_a_conflict(stores: &[Arc<dyn Store>]) {
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = stores[n % stores.len()].clone();
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
}

/// With the server down, calls fail with `Unavailable` within `bound` each instead of hanging.
pub async fn calls_are_unavailable_within(store: &dyn Store, user_id: uuid::Uuid, bound: Duration) {
    for call in ["ping", "get_user", "insert_item"] {
        let started = Instant::now();
        let result = match call {
            "ping" => store.ping().await,
            "get_user" => store.get_user(user_id).await.map(|_| ()),
            _ => store
                .insert_item(new_item(user_id, "lost", ""))
                .await
                .map(|_| ()),
        };
        let took = started.elapsed();
        assert!(
            matches!(result, Err(Error::Unavailable(_))),
            "{call} with the server down: {result:?}"
        );
        assert!(
            took < bound,
            "{call} took {took:?} to fail (bound {bound:?})"
        );
    }
}

/// The server is back: the same store serves again within `within`, with what was acknowledged
/// before it went (`user` and `item`), takes writes, and is unavailable once closed.
pub async fn serves_again(
    store: &dyn Store,
    user: &gorgon::domain::User,
    item: &Item,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(&store.get_user(user.id).await.expect("user kept"), user);
    assert_eq!(&store.get_item(item.id).await.expect("item kept"), item);
    store
        .insert_item(new_item(user.id, "after", "the restart"))
        .await
        .expect("writes again");
    store.close().await;
    assert!(matches!(store.ping().await, Err(Error::Unavailable(_))));
}

/// A bulk load into an empty store (items arriving out of order, in several calls) leaves
/// listings and search as if each item had been inserted alone, with every index in place.
pub async fn bulk_load_then_list_and_search<S: BulkLoad>(store: &S) {
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
    // A load run again skips what is stored.
    store.bulk_items(items[..10].to_vec()).await.expect("again");
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
}

/// `store` finds the same items as the embedded store for the same searches: one tokenizer,
/// words folded as the embedded store's index folds them.
pub async fn search_finds_what_the_embedded_store_finds(store: &dyn Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = SqliteStore::open(dir.path(), Default::default()).expect("open");
    let stores: [&dyn Store; 2] = [store, &embedded];
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
        let from_store = ids(store
            .search_items(query, Page::new(10, 0))
            .await
            .expect("shared store"));
        let from_embedded = ids(embedded
            .search_items(query, Page::new(10, 0))
            .await
            .expect("embedded"));
        assert_eq!(from_store, from_embedded, "search {query:?}");
    }
    embedded.close().await;
}

/// A URL's password (`secret`) never appears in an error: `connect` to `unreachable` (nobody
/// listens there) fails promptly with `Unavailable`, and to `malformed` fails too; neither error,
/// shown or debugged, quotes the password. Returns the second error for backend-specific checks.
pub async fn errors_never_quote_the_password<S, F, Fut>(
    secret: &str,
    unreachable: &str,
    malformed: &str,
    connect: F,
) -> Error
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = gorgon::error::Result<S>>,
{
    let started = Instant::now();
    let Err(e) = connect(unreachable.to_string()).await else {
        panic!("connected to {unreachable:?}, where nobody listens");
    };
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "told after {:?}",
        started.elapsed()
    );
    let Err(bad) = connect(malformed.to_string()).await else {
        panic!("connected with a malformed URL");
    };
    for text in [
        format!("{e}"),
        format!("{e:?}"),
        format!("{bad}"),
        format!("{bad:?}"),
    ] {
        assert!(!text.contains(secret), "{text}");
    }
    bad
}
