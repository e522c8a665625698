//! Connecting: the URL and [`MongoOptions`] become client settings (majority writes, retryable
//! writes, a short server selection timeout unless the URL says otherwise), and the indexes every
//! query needs are created, idempotently, so that any number of nodes may start at once.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::event::cmap::CmapEvent;
use mongodb::event::sdam::SdamEvent;
use mongodb::event::EventHandler;
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReadPreference,
    SelectionCriteria,
};
use mongodb::{Client, Collection, Database, IndexModel};

use super::errors::{op, MongoError};
use super::search::WORDS_INDEX;
use crate::error::Result;
use crate::store::redact::redact;

/// Tunables of the MongoDB backend. The URL's own options (`w`, `retryWrites`,
/// `serverSelectionTimeoutMS`, `connectTimeoutMS`, `maxPoolSize`, …) take precedence.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// Database used when the URL names none (`mongodb://host/NAME`).
    pub database: String,
    /// How long an operation waits for a usable server before failing with `Unavailable`
    /// (the driver's default, 30 s, would hold requests long after clients gave up).
    pub server_selection_timeout: Duration,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// How often the driver checks each server when the URL sets no `heartbeatFrequencyMS`:
    /// also how soon a deployment that was out of reach is seen back (the driver's default is
    /// 10 s; while a deployment is known to be down, calls fail at once instead of waiting).
    pub heartbeat: Duration,
    /// Items per `insert_many` of a bulk load.
    pub bulk_batch: usize,
    /// `insert_many` batches of a bulk load in flight at once.
    pub bulk_parallelism: usize,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            database: "gorgon".into(),
            server_selection_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            bulk_batch: 1000,
            bulk_parallelism: 4,
        }
    }
}

/// The collections of one Gorgon database.
#[derive(Clone)]
pub(super) struct Collections {
    pub database: Database,
    pub users: Collection<Document>,
    /// One document per look of an address (`Email::look_alike_key`), `_id` the key.
    pub email_keys: Collection<Document>,
    pub tokens: Collection<Document>,
    pub items: Collection<Document>,
    pub jobs: Collection<Document>,
    /// Keys of `insert_items_once`, each until it expires.
    pub ingest_seen: Collection<Document>,
}

impl Collections {
    /// Every read goes to the primary, whatever `readPreference` the URL gives: the store
    /// promises that a read sees every write acknowledged before it (a secondary may lag).
    fn of(database: Database) -> Self {
        let primary = || {
            let mut options = CollectionOptions::default();
            options.selection_criteria =
                Some(SelectionCriteria::ReadPreference(ReadPreference::Primary));
            options
        };
        Collections {
            users: database.collection_with_options("users", primary()),
            email_keys: database.collection_with_options("email_keys", primary()),
            tokens: database.collection_with_options("tokens", primary()),
            items: database.collection_with_options("items", primary()),
            jobs: database.collection_with_options("jobs", primary()),
            ingest_seen: database.collection_with_options("ingest_seen", primary()),
            database,
        }
    }
}

/// Parses `url` and connects (lazily: the driver connects on first use). Returns the client and
/// the database named by the URL's path, or else by `options`.
/// Connection pool figures, for metrics: counted from the driver's pool events, over every
/// server of the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// The most connections the pool opens per server (`maxPoolSize`).
    pub max_per_server: u32,
    /// Connections open now.
    pub open: u64,
    /// Connections running an operation now.
    pub in_use: u64,
    /// Operations waiting for a connection now.
    pub waiting: u64,
    /// Operations that got no connection (pool exhausted past the timeout, server gone).
    pub checkout_failures: u64,
    /// Times a pool was emptied because its server failed.
    pub cleared: u64,
}

/// What [`PoolStats`] is read from; the driver's event callback updates it (atomics only: it
/// runs on the driver's tasks).
#[derive(Debug, Default)]
pub(super) struct PoolCounters {
    max_per_server: u32,
    open: AtomicI64,
    in_use: AtomicI64,
    waiting: AtomicI64,
    checkout_failures: AtomicU64,
    cleared: AtomicU64,
}

impl PoolCounters {
    fn record(&self, event: CmapEvent) {
        let add = |n: &AtomicI64, by: i64| {
            n.fetch_add(by, Ordering::Relaxed);
        };
        match event {
            CmapEvent::ConnectionCreated(_) => add(&self.open, 1),
            CmapEvent::ConnectionClosed(_) => add(&self.open, -1),
            CmapEvent::ConnectionCheckoutStarted(_) => add(&self.waiting, 1),
            CmapEvent::ConnectionCheckedOut(_) => {
                add(&self.waiting, -1);
                add(&self.in_use, 1);
            }
            CmapEvent::ConnectionCheckoutFailed(_) => {
                add(&self.waiting, -1);
                self.checkout_failures.fetch_add(1, Ordering::Relaxed);
            }
            CmapEvent::ConnectionCheckedIn(_) => add(&self.in_use, -1),
            CmapEvent::PoolCleared(_) => {
                self.cleared.fetch_add(1, Ordering::Relaxed);
            }
            _ => return,
        }
        self.publish();
    }

    /// The figures as metrics (`gorgon_store_pool_*`), next to the store's latency per operation.
    fn publish(&self) {
        let stats = self.stats();
        crate::store::pool_metrics::publish(crate::store::pool_metrics::PoolFigures {
            open: stats.open,
            in_use: stats.in_use,
            waiting: stats.waiting,
            max: u64::from(stats.max_per_server),
            checkout_failures: stats.checkout_failures,
            cleared: stats.cleared,
        });
    }

    pub fn stats(&self) -> PoolStats {
        let now = |n: &AtomicI64| n.load(Ordering::Relaxed).max(0) as u64;
        PoolStats {
            max_per_server: self.max_per_server,
            open: now(&self.open),
            in_use: now(&self.in_use),
            waiting: now(&self.waiting),
            checkout_failures: self.checkout_failures.load(Ordering::Relaxed),
            cleared: self.cleared.load(Ordering::Relaxed),
        }
    }
}

/// Whether the driver knows a server that takes writes: false from the moment its monitor
/// finds the deployment out of reach (or without a primary) until it finds one again. Calls made
/// meanwhile fail at once with `Unavailable` rather than each waiting out the server selection
/// timeout.
#[derive(Debug, Default)]
pub(super) struct Reachable {
    writable: AtomicBool,
    /// Set once a server took writes: the changes of the first discovery are not news.
    seen: AtomicBool,
    /// Set when the store closes: the client's own shutdown is not an outage.
    closing: AtomicBool,
}

impl Reachable {
    pub fn now(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    pub fn closing(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    fn record(&self, event: SdamEvent) {
        let SdamEvent::TopologyDescriptionChanged(change) = event else {
            return;
        };
        let writable = change.new_description.has_writable_server();
        if self.writable.swap(writable, Ordering::Relaxed) == writable
            || self.closing.load(Ordering::Relaxed)
        {
            return;
        }
        metrics::gauge!("gorgon_store_reachable").set(if writable { 1.0 } else { 0.0 });
        let seen_before = self.seen.fetch_or(writable, Ordering::Relaxed);
        match (writable, seen_before) {
            (true, true) => tracing::info!("MongoDB: a server takes writes again"),
            (false, true) => {
                tracing::warn!("MongoDB: no server takes writes; store calls fail until one does")
            }
            _ => {}
        }
    }
}

/// The client, the collections, and what the driver's monitors tell: its connection pools'
/// counters and whether the deployment takes writes.
pub(super) struct Connected {
    pub client: Client,
    pub collections: Collections,
    pub pool: Arc<PoolCounters>,
    pub reachable: Arc<Reachable>,
}

pub(super) async fn client(url: &str, options: &MongoOptions) -> Result<Connected> {
    let mut settings = ClientOptions::parse(url)
        .await
        .map_err(|e| MongoError::Url(redact(url, &e.to_string())))?;
    let name = settings
        .default_database
        .clone()
        .unwrap_or_else(|| options.database.clone());
    // Acknowledged once a majority has it in its journal (so it survives a failover and a crash)
    // unless the URL asks otherwise. MongoDB implies the journal for majority writes by default;
    // saying it also makes servers that flush their journal lazily (the test server) sync it.
    let concern = settings.write_concern.get_or_insert_with(Default::default);
    if concern.w.is_none() {
        concern.w = Some(Acknowledgment::Majority);
    }
    if concern.journal.is_none() && concern.w != Some(Acknowledgment::Nodes(0)) {
        concern.journal = Some(true);
    }
    settings.retry_writes.get_or_insert(true);
    settings
        .server_selection_timeout
        .get_or_insert(options.server_selection_timeout);
    settings
        .connect_timeout
        .get_or_insert(options.connect_timeout);
    settings.heartbeat_freq.get_or_insert(options.heartbeat);
    settings.app_name.get_or_insert_with(|| "gorgon".into());
    let pool = Arc::new(PoolCounters {
        // The driver's default when the URL sets no `maxPoolSize`.
        max_per_server: settings.max_pool_size.unwrap_or(10),
        ..PoolCounters::default()
    });
    settings.cmap_event_handler = Some(EventHandler::callback({
        let pool = pool.clone();
        move |event| pool.record(event)
    }));
    // Optimistic until the monitor says otherwise: the first call waits for discovery.
    let reachable = Arc::new(Reachable {
        writable: AtomicBool::new(true),
        ..Reachable::default()
    });
    settings.sdam_event_handler = Some(EventHandler::callback({
        let reachable = reachable.clone();
        move |event| reachable.record(event)
    }));
    let client =
        Client::with_options(settings).map_err(|e| MongoError::Url(redact(url, &e.to_string())))?;
    let collections = Collections::of(client.database(&name));
    Ok(Connected {
        client,
        collections,
        pool,
        reachable,
    })
}

/// A user's newest items.
pub(super) const USER_INDEX: &str = "user_newest";
/// Jobs due (claims) and finished (purges).
pub(super) const DUE_INDEX: &str = "due";
/// Jobs by state, newest first.
pub(super) const STATE_INDEX: &str = "state_newest";
/// A user's jobs by state.
pub(super) const USER_JOBS_INDEX: &str = "user_state";

fn index(keys: Document, name: &str) -> IndexModel {
    index_with(keys, IndexOptions::builder().name(name.to_string()).build())
}

fn index_with(keys: Document, options: IndexOptions) -> IndexModel {
    IndexModel::builder().keys(keys).options(options).build()
}

/// The items' secondary indexes: what a bulk load into an empty store builds at the end.
pub(super) fn item_indexes() -> Vec<IndexModel> {
    vec![
        // A user's newest items: equality on user_id, then the id order.
        index(doc! { "user_id": 1, "_id": -1 }, USER_INDEX),
        // Search: one word's items, newest first (multikey on `words`).
        index(doc! { "words": 1, "_id": -1 }, WORDS_INDEX),
    ]
}

/// Creates every index if missing. Creating an index that exists with the same definition is a
/// no-op, so nodes starting together, or restarting, do no harm.
pub(super) async fn create_indexes(c: &Collections, with_items: bool) -> Result<()> {
    let unique = |name: &str| {
        IndexOptions::builder()
            .name(name.to_string())
            .unique(true)
            .build()
    };
    // Expired documents go by themselves (MongoDB's TTL monitor runs about once a minute; reads
    // check the expiry too).
    let ttl = |name: &str| {
        IndexOptions::builder()
            .name(name.to_string())
            .expire_after(Duration::ZERO)
            .build()
    };
    c.users
        .create_indexes([index_with(doc! { "email": 1 }, unique("email_unique"))])
        .await
        .map_err(op("create the users' indexes"))?;
    c.email_keys
        .create_indexes([index(doc! { "user_id": 1 }, "user")])
        .await
        .map_err(op("create the email keys' indexes"))?;
    c.tokens
        .create_indexes([
            index(doc! { "user_id": 1 }, "user"),
            index_with(doc! { "expires_at": 1 }, ttl("expiry")),
        ])
        .await
        .map_err(op("create the tokens' indexes"))?;
    if with_items {
        c.items
            .create_indexes(item_indexes())
            .await
            .map_err(op("create the items' indexes"))?;
    }
    c.jobs
        .create_indexes([
            // Claims (due queued/failed jobs, ended leases) and purges.
            index(doc! { "state": 1, "run_after": 1 }, DUE_INDEX),
            // Listing by state, newest first.
            index(doc! { "state": 1, "_id": -1 }, STATE_INDEX),
            // A user's jobs: unfinished count, deletion with the user.
            index(doc! { "user_id": 1, "state": 1 }, USER_JOBS_INDEX),
            // One job per user and idempotency key; jobs without a key have no `ikey`.
            index_with(
                doc! { "ikey": 1 },
                IndexOptions::builder()
                    .name("idempotency".to_string())
                    .unique(true)
                    .sparse(true)
                    .build(),
            ),
        ])
        .await
        .map_err(op("create the jobs' indexes"))?;
    c.ingest_seen
        .create_indexes([index_with(doc! { "expires_at": 1 }, ttl("expiry"))])
        .await
        .map_err(op("create the ingest keys' indexes"))?;
    Ok(())
}
