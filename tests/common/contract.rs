//! The store contract: behaviour every `Store` backend must have.
//!
//! Test code only: `tests/store_contract.rs` includes this file and runs [`run_all`] against every
//! backend that is present, one test per backend. A new backend adds one line there: its name and
//! a factory of fresh, empty stores. Each check gets a fresh store from the factory, and uses only
//! the public `Store` API, so the contract means the same for every backend. A failed check
//! panics with its name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Duration;
use uuid::Uuid;

use gorgon::domain::{
    new_id, now, Email, Extra, Item, ItemPatch, JobOutcome, JobState, Location, NewJob, NewUser,
    Page, Token, TokenHash, UserName, UserPatch,
};
use gorgon::store::{ExportCursor, Store};
use gorgon::Error;

type Check = fn(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every check, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("users_round_trip", |s| Box::pin(users_round_trip(s))),
    ("duplicate_email_conflicts", |s| {
        Box::pin(duplicate_email_conflicts(s))
    }),
    ("user_patch_changes_only_given_fields", |s| {
        Box::pin(user_patch_changes_only_given_fields(s))
    }),
    ("delete_user_removes_items_and_tokens", |s| {
        Box::pin(delete_user_removes_items_and_tokens(s))
    }),
    ("tokens_expire_and_revoke", |s| {
        Box::pin(tokens_expire_and_revoke(s))
    }),
    ("items_round_trip_and_idempotent", |s| {
        Box::pin(items_round_trip_and_idempotent(s))
    }),
    ("item_writes_are_owner_only", |s| {
        Box::pin(item_writes_are_owner_only(s))
    }),
    ("listing_is_newest_first_and_paged", |s| {
        Box::pin(listing_is_newest_first_and_paged(s))
    }),
    ("newest_page_follows_every_write", |s| {
        Box::pin(newest_page_follows_every_write(s))
    }),
    ("newest_page_under_concurrent_reads_and_writes", |s| {
        Box::pin(newest_page_under_concurrent_reads_and_writes(s))
    }),
    ("search_matches_title_body_keywords", |s| {
        Box::pin(search_matches_title_body_keywords(s))
    }),
    ("listing_pages_after_a_cursor", |s| {
        Box::pin(listing_pages_after_a_cursor(s))
    }),
    ("search_pages_after_a_cursor", |s| {
        Box::pin(search_pages_after_a_cursor(s))
    }),
    ("missing_things_are_not_found", |s| {
        Box::pin(missing_things_are_not_found(s))
    }),
    ("batch_insert_skips_existing", |s| {
        Box::pin(batch_insert_skips_existing(s))
    }),
    ("jobs_round_trip_and_idempotency", |s| {
        Box::pin(jobs_round_trip_and_idempotency(s))
    }),
    ("job_claims_are_exclusive_and_respect_run_after", |s| {
        Box::pin(job_claims_are_exclusive_and_respect_run_after(s))
    }),
    ("job_lease_expiry_reclaims", |s| {
        Box::pin(job_lease_expiry_reclaims(s))
    }),
    ("job_transitions_and_listing", |s| {
        Box::pin(job_transitions_and_listing(s))
    }),
    ("job_purge_by_age", |s| Box::pin(job_purge_by_age(s))),
    ("writes_need_an_existing_owner", |s| {
        Box::pin(writes_need_an_existing_owner(s))
    }),
    ("look_alike_emails_are_one_account", |s| {
        Box::pin(look_alike_emails_are_one_account(s))
    }),
    ("sessions_are_revoked_per_user", |s| {
        Box::pin(sessions_are_revoked_per_user(s))
    }),
    ("keyed_batches_are_stored_once_per_key", |s| {
        Box::pin(keyed_batches_are_stored_once_per_key(s))
    }),
    ("unfinished_jobs_are_capped_per_user", |s| {
        Box::pin(unfinished_jobs_are_capped_per_user(s))
    }),
    ("exports_page_through_everything_once", |s| {
        Box::pin(exports_page_through_everything_once(s))
    }),
];

/// A user that exists, with an address of its own.
async fn owner(store: &Arc<dyn Store>) -> Uuid {
    let email = format!("owner.{}@example.com", Uuid::now_v7().simple());
    store.insert_user(user(&email)).await.expect("owner").id
}

/// A write for an account that is gone (its token was still trusted somewhere) leaves nothing.
async fn writes_need_an_existing_owner(store: Arc<dyn Store>) {
    let ghost = Uuid::now_v7();
    assert!(matches!(
        store.insert_item(item(ghost, "orphan", "", &[])).await,
        Err(Error::Unauthorized(_))
    ));
    assert!(matches!(
        store
            .insert_job(job(ghost, serde_json::json!({}), None))
            .await,
        Err(Error::Unauthorized(_))
    ));
    assert!(store
        .list_user_items(ghost, PAGE)
        .await
        .expect("list")
        .is_empty());
    assert_eq!(store.counts().await.expect("counts").1, 0);
}

/// Two accounts never share the look of an address (`Email::look_alike_key`), on insert or on
/// an email change; a redelivered insert is still answered with the stored user.
async fn look_alike_emails_are_one_account(store: Arc<dyn Store>) {
    let alice = user("alice@example.com");
    store.insert_user(alice.clone()).await.expect("alice");
    assert_eq!(
        store
            .insert_user(alice.clone())
            .await
            .expect("redelivered")
            .id,
        alice.id
    );
    assert!(matches!(
        store.insert_user(user("al\u{0131}ce@example.com")).await,
        Err(Error::Conflict(_))
    ));
    let bob = store
        .insert_user(user("bob@example.com"))
        .await
        .expect("bob");
    let to = |email: &str| UserPatch {
        email: Some(Email::parse(email).expect("email")),
        ..UserPatch::default()
    };
    assert!(matches!(
        store
            .update_user(bob.id, to("\u{0251}lice@example.com"))
            .await,
        Err(Error::Conflict(_))
    ));
    // Bob moves away; his old look is free again, and a deleted account frees its own.
    store
        .update_user(bob.id, to("robert@example.com"))
        .await
        .expect("move");
    store
        .insert_user(user(
            "b\u{043E}b@example.com".replace('\u{043E}', "o").as_str(),
        ))
        .await
        .expect("bob's old address");
    store.delete_user(alice.id).await.expect("delete");
    store
        .insert_user(user("al\u{0131}ce@example.com"))
        .await
        .expect("alice's look, free again");
}

async fn sessions_are_revoked_per_user(store: Arc<dyn Store>) {
    let (a, b) = (owner(&store).await, owner(&store).await);
    let later = now() + chrono::Duration::hours(1);
    let hashes: Vec<TokenHash> = (0..4).map(|_| Token::generate().hash()).collect();
    for (n, hash) in hashes.iter().enumerate() {
        let who = if n < 3 { a } else { b };
        store.insert_token(*hash, who, later).await.expect("token");
    }
    // Every session of `a` but the one kept goes; `b`'s stays.
    store
        .revoke_sessions(a, Some(hashes[0]))
        .await
        .expect("revoke");
    assert!(store.get_session(hashes[0]).await.expect("get").is_some());
    assert!(store.get_session(hashes[1]).await.expect("get").is_none());
    assert!(store.get_session(hashes[2]).await.expect("get").is_none());
    assert!(store.get_session(hashes[3]).await.expect("get").is_some());
    // Deleting a token says whose it was.
    assert_eq!(
        store.delete_token(hashes[3]).await.expect("delete"),
        Some(b)
    );
    assert_eq!(store.delete_token(hashes[3]).await.expect("again"), None);
    store.revoke_sessions(a, None).await.expect("revoke all");
    assert!(store.get_session(hashes[0]).await.expect("get").is_none());
}

/// Runs every check, each on a fresh store from `factory`, and closes the store after its check.
/// `backend` names the backend in the log.
pub async fn run_all<F, Fut>(backend: &str, factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    for (name, check) in CHECKS {
        let store = factory().await;
        eprintln!("store contract ({backend}): {name}");
        check(store.clone()).await;
        store.close().await;
    }
}

/// One test per backend, one line each: `contract_tests! { test_name => factory, }`, where
/// `factory` is an expression whose value is a `Fn() -> impl Future<Output = Arc<dyn Store>>`
/// making fresh, empty stores (see [`run_all`]).
macro_rules! contract_tests {
    ($($test:ident => $factory:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            $crate::contract::run_all(stringify!($test), $factory).await;
        }
    )*};
}
pub(crate) use contract_tests;

fn user(email: &str) -> NewUser {
    NewUser {
        id: new_id(),
        name: UserName::parse("Ada").expect("valid name"),
        email: Email::parse(email).expect("valid email"),
        group: 7,
        admin: false,
        extra: Extra::parse(
            serde_json::json!({"city": "Paris"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
        .expect("small extra"),
        password_hash: "phc-hash".into(),
        created_at: now(),
    }
}

fn item(user_id: Uuid, title: &str, body: &str, keywords: &[&str]) -> Item {
    Item {
        id: new_id(),
        user_id,
        title: title.into(),
        body: body.into(),
        url: Some("https://example.com/a".into()),
        ts: now(),
        location: Some(Location {
            lat: 48.85,
            lon: 2.35,
        }),
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
        extra: Extra::default(),
    }
}

const PAGE: Page = Page::new(10, 0);

async fn users_round_trip(store: Arc<dyn Store>) {
    let new = user("ada@example.com");
    let created = store.insert_user(new.clone()).await.expect("insert user");
    assert_eq!(created.id, new.id);
    assert_eq!(created.email, "ada@example.com");
    assert_eq!(created.group, 7);
    assert_eq!(store.get_user(new.id).await.expect("get user"), created);
    let creds = store
        .get_credentials("ada@example.com")
        .await
        .expect("credentials");
    assert_eq!(creds.user.id, new.id);
    assert_eq!(creds.password_hash, "phc-hash");
}

async fn duplicate_email_conflicts(store: Arc<dyn Store>) {
    let first = user("dup@example.com");
    let stored = store.insert_user(first.clone()).await.expect("first");
    // The same user again (a redelivered insert) is the stored user, not a conflict.
    assert_eq!(store.insert_user(first).await.expect("idempotent"), stored);
    let second = store.insert_user(user("dup@example.com")).await;
    assert!(matches!(second, Err(Error::Conflict(_))), "got {second:?}");
    let other = store
        .insert_user(user("other@example.com"))
        .await
        .expect("other");
    let clash = store
        .update_user(
            other.id,
            UserPatch {
                email: Some(Email::parse("dup@example.com").expect("email")),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(clash, Err(Error::Conflict(_))), "got {clash:?}");
    assert_eq!(
        store.get_user(other.id).await.expect("unchanged").email,
        "other@example.com"
    );
}

async fn user_patch_changes_only_given_fields(store: Arc<dyn Store>) {
    let created = store
        .insert_user(user("patch@example.com"))
        .await
        .expect("insert");
    let patched = store
        .update_user(
            created.id,
            UserPatch {
                name: Some(UserName::parse("Grace").expect("name")),
                ..Default::default()
            },
        )
        .await
        .expect("patch");
    assert_eq!(patched.name, "Grace");
    assert_eq!(patched.email, created.email);
    assert_eq!(patched.group, created.group);
    assert_eq!(patched.extra, created.extra);
    assert_eq!(store.get_user(created.id).await.expect("get"), patched);
    let creds = store
        .get_credentials("patch@example.com")
        .await
        .expect("creds");
    assert_eq!(creds.password_hash, "phc-hash", "password untouched");
}

async fn delete_user_removes_items_and_tokens(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("gone@example.com"))
        .await
        .expect("insert");
    let it = store
        .insert_item(item(u.id, "t", "b", &[]))
        .await
        .expect("item");
    let token = Token::generate();
    store
        .insert_token(token.hash(), u.id, now() + Duration::hours(1))
        .await
        .expect("token");
    store.delete_user(u.id).await.expect("delete");
    assert!(matches!(
        store.get_user(u.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.get_item(it.id).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        store.get_session(token.hash()).await.expect("session"),
        None
    );
    assert!(matches!(
        store.delete_user(u.id).await,
        Err(Error::NotFound(_))
    ));
}

async fn tokens_expire_and_revoke(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("tok@example.com"))
        .await
        .expect("insert");
    let live = Token::generate();
    let expired = Token::generate();
    store
        .insert_token(live.hash(), u.id, now() + Duration::hours(1))
        .await
        .expect("live");
    store
        .insert_token(expired.hash(), u.id, now() - Duration::seconds(1))
        .await
        .expect("expired");
    let (principal, _) = store
        .get_session(live.hash())
        .await
        .expect("get")
        .expect("live session");
    assert_eq!(principal.user_id, u.id);
    assert!(!principal.admin);
    assert_eq!(store.get_session(expired.hash()).await.expect("get"), None);
    store.delete_token(live.hash()).await.expect("revoke");
    assert_eq!(store.get_session(live.hash()).await.expect("get"), None);
}

async fn items_round_trip_and_idempotent(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("items@example.com"))
        .await
        .expect("insert");
    let new = item(u.id, "Hello", "World", &["greeting"]);
    let stored = store.insert_item(new.clone()).await.expect("insert item");
    assert_eq!(stored, new);
    assert_eq!(store.get_item(new.id).await.expect("get"), new);
    // A redelivered insert returns the stored item and writes nothing twice.
    let again = store.insert_item(new.clone()).await.expect("idempotent");
    assert_eq!(again, new);
    assert_eq!(
        store.list_user_items(u.id, PAGE).await.expect("list").len(),
        1
    );
    // The same id for another owner is a conflict.
    let mut foreign = new.clone();
    foreign.user_id = Uuid::now_v7();
    assert!(matches!(
        store.insert_item(foreign).await,
        Err(Error::Conflict(_))
    ));
}

async fn item_writes_are_owner_only(store: Arc<dyn Store>) {
    let owner = store
        .insert_user(user("owner@example.com"))
        .await
        .expect("owner");
    let other = store
        .insert_user(user("other2@example.com"))
        .await
        .expect("other");
    let it = store
        .insert_item(item(owner.id, "mine", "body", &[]))
        .await
        .expect("item");
    let patch = ItemPatch {
        title: Some("stolen".into()),
        ..Default::default()
    };
    assert!(matches!(
        store.update_item(it.id, other.id, patch.clone()).await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        store.delete_item(it.id, other.id).await,
        Err(Error::Forbidden(_))
    ));
    assert_eq!(
        store.get_item(it.id).await.expect("unchanged").title,
        "mine"
    );
    let updated = store
        .update_item(
            it.id,
            owner.id,
            ItemPatch {
                url: Some(None),
                ..patch
            },
        )
        .await
        .expect("owner update");
    assert_eq!(updated.title, "stolen");
    assert_eq!(updated.url, None, "null clears the url");
    assert_eq!(updated.body, "body", "untouched field kept");
    store
        .delete_item(it.id, owner.id)
        .await
        .expect("owner delete");
    assert!(matches!(
        store.get_item(it.id).await,
        Err(Error::NotFound(_))
    ));
}

async fn listing_is_newest_first_and_paged(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("list@example.com"))
        .await
        .expect("insert");
    let other = store
        .insert_user(user("list2@example.com"))
        .await
        .expect("insert");
    let mut ids = Vec::new();
    for n in 0..25 {
        let it = store
            .insert_item(item(u.id, &format!("item {n}"), "", &[]))
            .await
            .expect("item");
        ids.push(it.id);
        store
            .insert_item(item(other.id, "noise", "", &[]))
            .await
            .expect("noise");
    }
    ids.reverse();
    let first = store
        .list_user_items(u.id, Page::new(10, 0))
        .await
        .expect("page 1");
    let second = store
        .list_user_items(u.id, Page::new(10, 10))
        .await
        .expect("page 2");
    let last = store
        .list_user_items(u.id, Page::new(10, 20))
        .await
        .expect("page 3");
    let got: Vec<Uuid> = first
        .iter()
        .chain(&second)
        .chain(&last)
        .map(|i| i.id)
        .collect();
    assert_eq!(got, ids, "newest first, no gaps, no repeats");
    assert!(first.iter().all(|i| i.user_id == u.id));
    assert!(store
        .list_user_items(Uuid::now_v7(), PAGE)
        .await
        .expect("unknown user")
        .is_empty());
}

/// Every page of a listing or search, each starting after the last item of the one before.
async fn walk_after<F, Fut>(limit: u32, fetch: F) -> Vec<Uuid>
where
    F: Fn(Page) -> Fut,
    Fut: Future<Output = Vec<Item>>,
{
    let mut seen = Vec::new();
    let mut page = Page::new(limit, 0);
    for _ in 0..100 {
        let items = fetch(page).await;
        assert!(
            items.len() <= limit as usize,
            "a page holds at most `limit`"
        );
        seen.extend(items.iter().map(|i| i.id));
        match items.last() {
            Some(last) if items.len() == limit as usize => page.after = Some(last.id),
            _ => return seen,
        }
    }
    panic!("paging after a cursor did not end");
}

/// `after` pages a user's items by cursor: newest first, no gaps, no repeats, from any item
/// (also one deleted since), with `offset` counted from the cursor.
async fn listing_pages_after_a_cursor(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("after@example.com"))
        .await
        .expect("insert");
    let other = store
        .insert_user(user("after2@example.com"))
        .await
        .expect("insert");
    let mut ids = Vec::new();
    for n in 0..23 {
        ids.push(
            store
                .insert_item(item(u.id, &format!("item {n}"), "", &[]))
                .await
                .expect("item")
                .id,
        );
        store
            .insert_item(item(other.id, "noise", "", &[]))
            .await
            .expect("noise");
    }
    ids.reverse();
    let list = |page| {
        let store = store.clone();
        async move { store.list_user_items(u.id, page).await.expect("list") }
    };
    assert_eq!(
        walk_after(5, list).await,
        ids,
        "every item once, newest first"
    );
    let page = |after: Uuid, offset: u32| Page {
        after: Some(after),
        ..Page::new(3, offset)
    };
    let from = |items: Vec<Item>| items.iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(from(list(page(ids[4], 0)).await), ids[5..8]);
    assert_eq!(
        from(list(page(ids[4], 2)).await),
        ids[7..10],
        "offset after the cursor"
    );
    assert!(
        list(page(ids[22], 0)).await.is_empty(),
        "nothing after the oldest"
    );
    // The cursor item is deleted: the page goes on from where it was.
    store.delete_item(ids[4], u.id).await.expect("delete");
    assert_eq!(from(list(page(ids[4], 0)).await), ids[5..8]);
}

/// `after` pages a search by cursor, in the same order as `offset` does.
async fn search_pages_after_a_cursor(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("search-after@example.com"))
        .await
        .expect("insert");
    for n in 0..17 {
        let words: &[&str] = if n % 3 == 0 { &["other"] } else { &["beacon"] };
        store
            .insert_item(item(u.id, &format!("post {n}"), "text", words))
            .await
            .expect("item");
    }
    let by_offset: Vec<Uuid> = store
        .search_items("beacon", Page::new(100, 0))
        .await
        .expect("search")
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(by_offset.len(), 11);
    let search = |page| {
        let store = store.clone();
        async move { store.search_items("beacon", page).await.expect("search") }
    };
    assert_eq!(
        walk_after(4, search).await,
        by_offset,
        "same matches, same order"
    );
    let after = |id: Uuid, offset: u32| Page {
        after: Some(id),
        ..Page::new(2, offset)
    };
    let from = |items: Vec<Item>| items.iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(from(search(after(by_offset[3], 1)).await), by_offset[5..7]);
    // The cursor item is deleted: the page goes on from where it was.
    store.delete_item(by_offset[3], u.id).await.expect("delete");
    assert_eq!(from(search(after(by_offset[3], 0)).await), by_offset[4..6]);
}

/// The newest page as a reader sees it: through the in-memory answer when the backend has one.
async fn newest(store: &Arc<dyn Store>, user_id: Uuid, limit: u32) -> Vec<Uuid> {
    let page = Page::new(limit, 0);
    let items = match store.recent_user_items(user_id, page) {
        Some(items) => items.into_vec(),
        None => store.list_user_items(user_id, page).await.expect("list"),
    };
    items.iter().map(|i| i.id).collect()
}

/// A backend that keeps newest pages in memory (the embedded store does) must show every
/// acknowledged write in the next read: each step reads first, so a page is held when it writes.
async fn newest_page_follows_every_write(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("newest@example.com"))
        .await
        .expect("insert");
    assert!(newest(&store, u.id, 10).await.is_empty());
    let first = store
        .insert_item(item(u.id, "first", "", &[]))
        .await
        .expect("insert");
    assert_eq!(
        newest(&store, u.id, 10).await,
        [first.id],
        "after insert_item"
    );
    let batch: Vec<Item> = (0..12)
        .map(|n| item(u.id, &format!("batch {n}"), "", &[]))
        .collect();
    store.insert_items(batch.clone()).await.expect("batch");
    let expected: Vec<Uuid> = batch.iter().rev().map(|i| i.id).take(10).collect();
    assert_eq!(
        newest(&store, u.id, 10).await,
        expected,
        "after insert_items"
    );
    assert_eq!(
        newest(&store, u.id, 3).await,
        expected[..3],
        "a shorter page"
    );
    let top = batch.last().expect("a batch").id;
    let patch = ItemPatch {
        title: Some("renamed".into()),
        ..Default::default()
    };
    store.update_item(top, u.id, patch).await.expect("update");
    let page = store
        .recent_user_items(u.id, PAGE)
        .map(|kept| kept.into_vec())
        .unwrap_or_default()
        .into_iter()
        .chain(store.list_user_items(u.id, PAGE).await.expect("list"))
        .find(|i| i.id == top)
        .expect("still listed");
    assert_eq!(page.title, "renamed", "after update_item");
    store.delete_item(top, u.id).await.expect("delete");
    assert!(
        !newest(&store, u.id, 10).await.contains(&top),
        "after delete_item"
    );
    store.delete_user(u.id).await.expect("delete user");
    assert!(
        newest(&store, u.id, 10).await.is_empty(),
        "after delete_user"
    );
}

/// Writers each write their own user's items and read them back at once, while readers keep
/// reading every user's newest page: a read racing a commit must never leave a stale page behind.
async fn newest_page_under_concurrent_reads_and_writes(store: Arc<dyn Store>) {
    let mut users = Vec::new();
    for n in 0..6 {
        let u = store
            .insert_user(user(&format!("race{n}@example.com")))
            .await
            .expect("insert");
        users.push(u.id);
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, users, done) = (store.clone(), users.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    for &u in &users {
                        newest(&store, u, 10).await;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let writers: Vec<_> = users
        .iter()
        .map(|&u| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..100 {
                    let written = store
                        .insert_item(item(u, &format!("race {n}"), "", &[]))
                        .await
                        .expect("insert");
                    let seen = newest(&store, u, 10).await;
                    assert_eq!(seen.first(), Some(&written.id), "write {n} not read back");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("reader");
    }
}

async fn search_matches_title_body_keywords(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("search@example.com"))
        .await
        .expect("insert");
    let a = store
        .insert_item(item(u.id, "Lighthouse keeper", "stormy night", &["sea"]))
        .await
        .expect("a");
    let b = store
        .insert_item(item(u.id, "Bakery", "fresh lighthouse bread", &["food"]))
        .await
        .expect("b");
    let c = store
        .insert_item(item(u.id, "Garden", "roses", &["lighthouse"]))
        .await
        .expect("c");
    store
        .insert_item(item(u.id, "Unrelated", "nothing here", &["misc"]))
        .await
        .expect("d");
    let found: Vec<Uuid> = store
        .search_items("lighthouse", PAGE)
        .await
        .expect("search")
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(
        found,
        vec![c.id, b.id, a.id],
        "all three fields, newest first"
    );
    let both = store
        .search_items("stormy LIGHTHOUSE", PAGE)
        .await
        .expect("and");
    assert_eq!(both.len(), 1, "every word must match, case-insensitively");
    assert_eq!(both[0].id, a.id);
    // Operator syntax is treated as words, never as a query language.
    assert!(store.search_items("NEAR(\"x", PAGE).await.is_ok());
    // Updates and deletes keep the index in step.
    store
        .update_item(
            a.id,
            u.id,
            ItemPatch {
                title: Some("Harbour".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(
        store
            .search_items("keeper", PAGE)
            .await
            .expect("after update")
            .len(),
        0
    );
    // Words in both the old and the new text stay findable; new words are found.
    let kept = store.search_items("stormy", PAGE).await.expect("kept word");
    assert_eq!(kept.iter().map(|i| i.id).collect::<Vec<_>>(), vec![a.id]);
    let new_word = store.search_items("harbour", PAGE).await.expect("new word");
    assert_eq!(new_word.len(), 1);
    store.delete_item(b.id, u.id).await.expect("delete");
    assert_eq!(
        store
            .search_items("bread", PAGE)
            .await
            .expect("after delete")
            .len(),
        0
    );
}

async fn missing_things_are_not_found(store: Arc<dyn Store>) {
    let id = Uuid::now_v7();
    assert!(matches!(store.get_user(id).await, Err(Error::NotFound(_))));
    assert!(matches!(store.get_item(id).await, Err(Error::NotFound(_))));
    assert!(matches!(
        store.get_credentials("nobody@example.com").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.update_item(id, id, ItemPatch::default()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.delete_item(id, id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.update_user(id, UserPatch::default()).await,
        Err(Error::NotFound(_))
    ));
    store.ping().await.expect("ping");
}

async fn batch_insert_skips_existing(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("batch@example.com"))
        .await
        .expect("insert");
    let items: Vec<Item> = (0..50)
        .map(|n| item(u.id, &format!("b{n}"), "", &[]))
        .collect();
    assert_eq!(store.insert_items(items.clone()).await.expect("batch"), 50);
    assert_eq!(
        store
            .insert_items(items[..10].to_vec())
            .await
            .expect("replay"),
        0
    );
    let (users, count) = store.counts().await.expect("counts");
    assert_eq!(users, 1);
    assert_eq!(count, 50);
}

fn job(user_id: Uuid, payload: serde_json::Value, key: Option<&str>) -> NewJob {
    NewJob {
        id: new_id(),
        user_id,
        kind: "hash".into(),
        payload,
        idempotency_key: key.map(str::to_string),
        created_at: now(),
        max_unfinished: None,
    }
}

const LONG_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

async fn jobs_round_trip_and_idempotency(store: Arc<dyn Store>) {
    let user = owner(&store).await;
    let new = job(user, serde_json::json!({"n": 1}), None);
    let (stored, created) = store.insert_job(new.clone()).await.expect("insert");
    assert!(created);
    assert_eq!(stored.id, new.id);
    assert_eq!(stored.state, JobState::Queued);
    assert_eq!(stored.attempts, 0);
    assert_eq!(stored.payload, new.payload);
    assert!(stored.run_after.is_some() && stored.lease_until.is_none());
    assert_eq!(store.get_job(new.id).await.expect("get"), stored);
    // A redelivered insert (same id) stores nothing new.
    let (again, created) = store.insert_job(new.clone()).await.expect("redelivered");
    assert!(!created);
    assert_eq!(again, stored);

    let keyed = job(user, serde_json::json!({"n": 2}), Some("key-1"));
    let (first, created) = store.insert_job(keyed.clone()).await.expect("keyed");
    assert!(created);
    let repeat = job(user, serde_json::json!({"n": 2}), Some("key-1"));
    let (second, created) = store.insert_job(repeat).await.expect("repeat");
    assert!(!created);
    assert_eq!(second.id, first.id);
    let different = job(user, serde_json::json!({"n": 3}), Some("key-1"));
    assert!(matches!(
        store.insert_job(different).await,
        Err(Error::Conflict(_))
    ));
    // Keys are per user.
    let other = job(
        owner(&store).await,
        serde_json::json!({"n": 2}),
        Some("key-1"),
    );
    let (theirs, created) = store.insert_job(other).await.expect("other user");
    assert!(created);
    assert_ne!(theirs.id, first.id);
    assert!(matches!(
        store.get_job(Uuid::now_v7()).await,
        Err(Error::NotFound(_))
    ));
}

async fn job_claims_are_exclusive_and_respect_run_after(store: Arc<dyn Store>) {
    let user = owner(&store).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let (j, _) = store
            .insert_job(job(user, serde_json::json!({ "n": n }), None))
            .await
            .expect("insert");
        ids.push(j.id);
    }
    // Concurrent claims never hand out the same job twice.
    let claims = (0..6).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.claim_jobs(LONG_LEASE, 5).await })
    });
    let mut claimed = Vec::new();
    for c in claims {
        claimed.extend(c.await.expect("task").expect("claim"));
    }
    let mut claimed_ids: Vec<Uuid> = claimed.iter().map(|j| j.id).collect();
    claimed_ids.sort();
    claimed_ids.dedup();
    assert_eq!(claimed_ids.len(), claimed.len(), "a job was claimed twice");
    ids.sort();
    assert_eq!(claimed_ids, ids, "every due job is claimed");
    for j in &claimed {
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.attempts, 1);
        assert!(j.lease_until.is_some());
    }
    assert!(store
        .claim_jobs(LONG_LEASE, 5)
        .await
        .expect("claim")
        .is_empty());

    // A failed attempt comes back at its run_after, not before.
    let later = now() + Duration::hours(1);
    let failed = store
        .finish_job(
            ids[0],
            1,
            JobOutcome::Failed {
                error: "later".into(),
                run_after: later,
            },
        )
        .await
        .expect("fail");
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.run_after, Some(later));
    let due = store
        .finish_job(
            ids[1],
            1,
            JobOutcome::Failed {
                error: "now".into(),
                run_after: now(),
            },
        )
        .await
        .expect("fail");
    assert_eq!(due.error.as_deref(), Some("now"));
    let again = store.claim_jobs(LONG_LEASE, 5).await.expect("claim");
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[1]]);
    assert_eq!(again[0].attempts, 2);
}

async fn job_lease_expiry_reclaims(store: Arc<dyn Store>) {
    let user = owner(&store).await;
    let (j, _) = store
        .insert_job(job(user, serde_json::json!({}), None))
        .await
        .expect("insert");
    let lease = std::time::Duration::from_millis(50);
    let first = store.claim_jobs(lease, 10).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert!(store.claim_jobs(lease, 10).await.expect("claim").is_empty());
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    let second = store.claim_jobs(LONG_LEASE, 10).await.expect("reclaim");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, j.id);
    assert_eq!(second[0].attempts, 2);
    // The abandoned attempt can no longer report.
    assert!(matches!(
        store
            .finish_job(j.id, 1, JobOutcome::Done(serde_json::json!({})))
            .await,
        Err(Error::Conflict(_))
    ));
    let done = store
        .finish_job(j.id, 2, JobOutcome::Done(serde_json::json!({"ok": true})))
        .await
        .expect("finish");
    assert_eq!(done.state, JobState::Done);
    assert_eq!(done.result, Some(serde_json::json!({"ok": true})));
}

async fn job_transitions_and_listing(store: Arc<dyn Store>) {
    let user = owner(&store).await;
    for n in 0..3 {
        store
            .insert_job(job(user, serde_json::json!({ "n": n }), None))
            .await
            .expect("insert");
    }
    let claimed = store.claim_jobs(LONG_LEASE, 3).await.expect("claim");
    assert_eq!(claimed.len(), 3);
    let done = store
        .finish_job(
            claimed[0].id,
            1,
            JobOutcome::Done(serde_json::json!({"r": 1})),
        )
        .await
        .expect("done");
    assert_eq!(done.state, JobState::Done);
    assert!(done.run_after.is_none() && done.lease_until.is_none());
    let dead = store
        .finish_job(
            claimed[1].id,
            1,
            JobOutcome::Dead {
                error: "boom".into(),
            },
        )
        .await
        .expect("dead");
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.error.as_deref(), Some("boom"));

    let list = |state| {
        let store = store.clone();
        async move {
            store
                .list_jobs(state, PAGE)
                .await
                .expect("list")
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(JobState::Dead).await, vec![claimed[1].id]);
    assert_eq!(list(JobState::Done).await, vec![claimed[0].id]);
    assert_eq!(list(JobState::Running).await, vec![claimed[2].id]);
    assert!(list(JobState::Queued).await.is_empty());

    let retried = store.retry_job(claimed[1].id).await.expect("retry dead");
    assert_eq!(retried.state, JobState::Queued);
    assert_eq!(retried.attempts, 0);
    assert!(list(JobState::Dead).await.is_empty());
    assert!(matches!(
        store.retry_job(claimed[0].id).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store.retry_job(claimed[2].id).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store.retry_job(Uuid::now_v7()).await,
        Err(Error::NotFound(_))
    ));
    // Finishing a job that is not running is refused.
    assert!(matches!(
        store
            .finish_job(claimed[0].id, 1, JobOutcome::Done(serde_json::json!({})))
            .await,
        Err(Error::Conflict(_))
    ));
}

async fn job_purge_by_age(store: Arc<dyn Store>) {
    let user = owner(&store).await;
    let (finished, _) = store
        .insert_job(job(user, serde_json::json!({"a": 1}), None))
        .await
        .expect("insert");
    store.claim_jobs(LONG_LEASE, 1).await.expect("claim");
    store
        .finish_job(finished.id, 1, JobOutcome::Done(serde_json::json!({})))
        .await
        .expect("done");
    let (waiting, _) = store
        .insert_job(job(user, serde_json::json!({"a": 2}), None))
        .await
        .expect("insert");
    assert_eq!(
        store
            .purge_jobs(now() - Duration::hours(1))
            .await
            .expect("purge"),
        0
    );
    assert_eq!(
        store
            .purge_jobs(now() + Duration::seconds(1))
            .await
            .expect("purge"),
        1
    );
    assert!(matches!(
        store.get_job(finished.id).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        store.get_job(waiting.id).await.expect("kept").state,
        JobState::Queued
    );
}

async fn keyed_batches_are_stored_once_per_key(store: Arc<dyn Store>) {
    let u = store
        .insert_user(user("once@example.com"))
        .await
        .expect("insert");
    let batch = |n: usize| -> Vec<Item> {
        (0..n)
            .map(|i| item(u.id, &format!("once {i}"), "", &[]))
            .collect()
    };
    let until = now() + Duration::minutes(5);
    let first = batch(3);
    let stored = store
        .insert_items_once(b"key-1".to_vec(), until, first.clone())
        .await;
    assert_eq!(stored, Ok(3));
    // The same message delivered again (same items) answers as the first did, writing nothing.
    let again = store
        .insert_items_once(b"key-1".to_vec(), until, first)
        .await;
    assert_eq!(again, Ok(0));
    // The same key with new items is a replayed request: refused, nothing written.
    let replay = store
        .insert_items_once(b"key-1".to_vec(), until, batch(2))
        .await;
    assert!(matches!(replay, Err(Error::Conflict(_))), "{replay:?}");
    // Another key stores; an expired key is forgotten and may be used again.
    let other = store
        .insert_items_once(b"key-2".to_vec(), until, batch(1))
        .await;
    assert_eq!(other, Ok(1));
    let past = now() - Duration::seconds(1);
    let expired = store
        .insert_items_once(b"key-3".to_vec(), past, batch(1))
        .await;
    assert_eq!(expired, Ok(1));
    let reused = store
        .insert_items_once(b"key-3".to_vec(), until, batch(1))
        .await;
    assert_eq!(reused, Ok(1), "an expired key is forgotten");
    let (_, count) = store.counts().await.expect("counts");
    assert_eq!(count, 6);
}

async fn unfinished_jobs_are_capped_per_user(store: Arc<dyn Store>) {
    let (busy, idle) = (owner(&store).await, owner(&store).await);
    let capped = |user: Uuid, n: i64| NewJob {
        max_unfinished: Some(2),
        ..job(user, serde_json::json!({ "n": n }), None)
    };
    let first = capped(busy, 1);
    store.insert_job(first.clone()).await.expect("first");
    store.insert_job(capped(busy, 2)).await.expect("second");
    let third = store.insert_job(capped(busy, 3)).await;
    assert!(matches!(third, Err(Error::RateLimited { .. })), "{third:?}");
    // A redelivered insert of a stored job is not a new one.
    let (_, created) = store.insert_job(first).await.expect("redelivered");
    assert!(!created);
    // Another user is not affected; a finished job frees a place.
    store.insert_job(capped(idle, 1)).await.expect("other user");
    let claimed = store.claim_jobs(LONG_LEASE, 1).await.expect("claim");
    let done = claimed
        .iter()
        .find(|j| j.user_id == busy)
        .expect("a job of busy");
    store
        .finish_job(
            done.id,
            done.attempts,
            JobOutcome::Done(serde_json::json!({})),
        )
        .await
        .expect("finish");
    store.insert_job(capped(busy, 4)).await.expect("room again");
    // A dead job frees its place too, and takes it again when retried.
    let claimed = store.claim_jobs(LONG_LEASE, 10).await.expect("claim");
    let dead = claimed
        .iter()
        .find(|j| j.user_id == busy)
        .expect("a job of busy");
    let error = "gave up".to_string();
    store
        .finish_job(dead.id, dead.attempts, JobOutcome::Dead { error })
        .await
        .expect("dead");
    store
        .insert_job(capped(busy, 5))
        .await
        .expect("room after a death");
    store.retry_job(dead.id).await.expect("retry");
    let over = store.insert_job(capped(busy, 6)).await;
    assert!(matches!(over, Err(Error::RateLimited { .. })), "{over:?}");
}

/// An export's pages, each after the last item (or user) of the one before, hold every item
/// and every user once, whole, whatever the page size, and end with an empty page.
async fn exports_page_through_everything_once(store: Arc<dyn Store>) {
    let mut users = Vec::new();
    let mut expected = std::collections::BTreeMap::new();
    for n in 0..3 {
        let user = user(&format!("export{n}@example.com"));
        users.push(user.id);
        store.insert_user(user).await.expect("user");
    }
    for n in 0..23 {
        let mut item = item(users[n % 3], &format!("Item {n}"), "body", &["k"]);
        item.extra = Extra::parse(
            serde_json::json!({"n": n})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
        .expect("small extra");
        expected.insert(item.id, item.clone());
        store.insert_item(item).await.expect("item");
    }
    for limit in [1, 5, 23, 100] {
        let mut seen = std::collections::BTreeMap::new();
        let mut after: Option<ExportCursor> = None;
        loop {
            let page = store.export_items(after, limit).await.expect("export page");
            assert!(page.len() <= limit as usize);
            for item in &page {
                assert!(
                    seen.insert(item.id, item.clone()).is_none(),
                    "{} twice",
                    item.id
                );
            }
            match page.last() {
                Some(last) => after = Some(ExportCursor::after(last)),
                None => break,
            }
        }
        assert_eq!(seen, expected, "every item once, whole (pages of {limit})");
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.export_users(after, 2).await.expect("export users");
        match page.last() {
            Some(last) => after = Some(last.user.id),
            None => break,
        }
        for credentials in page {
            assert_eq!(credentials.password_hash, "phc-hash");
            seen.push(credentials.user.id);
        }
    }
    seen.sort();
    users.sort();
    assert_eq!(seen, users, "every user once");
}
