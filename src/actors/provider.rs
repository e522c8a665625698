//! The provider role: external data in and out.
//!
//! - In: signed ingest ([`Ingest`], from `POST /api/v1/providers/{name}/ingest`):
//!   the role holds the providers' secrets, checks the signature and its age, validates the
//!   items and stores them as one durable batch (see `crate::providers`).
//! - In: the random provider, which inserts synthetic items for random existing users at a
//!   configured rate (the simulator's background writer), and reports the rate it achieved.
//! - Out: signed webhooks of every item event to the configured targets.
//!
//! Items go to the store role as durable `insert_items` batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::store::{GetUser, InsertItems, InsertItemsOnce, SampleUserIds};
use super::{RoleContext, Spawned};
use crate::bus::{Bus, Handler, Service};
use crate::error::{Error, Result};
use crate::providers::webhooks::WebhookConfig;
use crate::shutdown::Shutdown;

crate::requests! {
    role Provider, call ProviderCall;
    Status => "status", direct, ProviderStatus;
    Ingest => "ingest", durable, Vec<Uuid>;
}

/// How the random provider is doing.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status;

/// An external provider's batch, exactly as received (the signature covers these bytes); the
/// ids of the stored items, in the order sent.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ingest {
    pub provider: String,
    pub signature: Option<String>,
    pub body: String,
}

/// How the random provider is doing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProviderStatus {
    /// Items per second it was asked to insert.
    pub configured_rate: f64,
    /// Items per second it inserted since it started.
    pub achieved_rate: f64,
    pub inserted_total: u64,
    pub failed_total: u64,
}

/// Tunables of the random provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Items per second; 0 turns the random provider off.
    pub rate: f64,
    /// How often it wakes to insert what is due.
    pub tick: Duration,
    /// Most items sent in one batch.
    pub max_batch: usize,
    /// Ingest secrets by provider name.
    pub secrets: HashMap<String, String>,
    /// How old (or how far in the future) an ingest signature may be.
    pub ingest_window: Duration,
    /// Most items in one ingest request.
    pub ingest_max_items: usize,
    pub webhooks: WebhookConfig,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            rate: 0.0,
            tick: Duration::from_millis(20),
            max_batch: 1000,
            secrets: HashMap::new(),
            ingest_window: Duration::from_secs(300),
            ingest_max_items: 1000,
            webhooks: WebhookConfig::default(),
        }
    }
}

#[derive(Default)]
struct Counters {
    inserted: AtomicU64,
    failed: AtomicU64,
}

/// The provider role: answers status and ingest, and runs the random provider and the webhooks
/// until it stops.
pub struct Provider {
    bus: Bus,
    config: Arc<ProviderConfig>,
    started: Instant,
    counters: Arc<Counters>,
    /// The role's phase of the node's shutdown: the random provider and the webhooks run on it
    /// until the role stops.
    tasks: Shutdown,
}

impl Provider {
    /// Starts the random provider (at a rate above zero) and the webhooks, in a phase of
    /// `shutdown`.
    pub fn start(bus: Bus, config: ProviderConfig, shutdown: &Shutdown) -> Provider {
        let counters = Arc::new(Counters::default());
        let tasks = shutdown.phase();
        crate::providers::webhooks::start(&bus, config.webhooks.clone(), &tasks);
        if config.rate > 0.0 {
            tasks.spawn(random_provider(
                bus.clone(),
                config.clone(),
                counters.clone(),
            ));
        }
        Provider {
            bus,
            config: Arc::new(config),
            started: Instant::now(),
            counters,
            tasks,
        }
    }
}

impl Service for Provider {
    const ROLE: crate::bus::Role = crate::bus::Role::Provider;
    type Call = ProviderCall;

    async fn stop(&self) {
        self.tasks.stop().await;
    }
}

/// Starts the role: the random provider (when its rate is above 0) and the webhooks.
pub async fn start(ctx: &mut RoleContext) -> anyhow::Result<Spawned> {
    let provider = Provider::start(ctx.bus.clone(), ctx.settings.provider.clone(), &ctx.shutdown);
    ctx.spawn(provider).await
}

impl Provider {
    fn status(&self) -> ProviderStatus {
        let inserted = self.counters.inserted.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        ProviderStatus {
            configured_rate: self.config.rate,
            achieved_rate: inserted as f64 / elapsed,
            inserted_total: inserted,
            failed_total: self.counters.failed.load(Ordering::Relaxed),
        }
    }
}

impl Handler<Status> for Provider {
    fn answer_now(&self, _: Status) -> std::result::Result<Result<ProviderStatus>, Status> {
        Ok(Ok(self.status()))
    }

    async fn handle(self: Arc<Self>, _: Status) -> Result<ProviderStatus> {
        Ok(self.status())
    }
}

impl Handler<Ingest> for Provider {
    async fn handle(self: Arc<Self>, r: Ingest) -> Result<Vec<Uuid>> {
        let outcome = ingest(
            &self.bus,
            &self.config,
            &r.provider,
            r.signature.as_deref(),
            &r.body,
        )
        .await;
        let label = if outcome.is_ok() { "ok" } else { "refused" };
        metrics::counter!("gorgon_provider_ingest_total", "provider" => r.provider, "outcome" => label)
            .increment(1);
        outcome
    }
}

/// Inserts `rate` items per second, catching up after a slow tick, never bursting past
/// `max_batch` at once.
async fn random_provider(bus: Bus, config: ProviderConfig, counters: Arc<Counters>) {
    let mut authors: Vec<Uuid> = Vec::new();
    let mut authors_loaded: Option<Instant> = None;
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut sent: u64 = 0;
    loop {
        ticker.tick().await;
        // Refresh the authors now and then; soon when there were none yet.
        let refresh_after = if authors.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(30)
        };
        if authors_loaded.is_none_or(|t| t.elapsed() > refresh_after) {
            match bus.call(SampleUserIds { limit: 10_000 }).await {
                Ok(ids) => {
                    authors = ids;
                    authors_loaded = Some(Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "random provider cannot load users"),
            }
        }
        if authors.is_empty() {
            continue;
        }
        let due = (started.elapsed().as_secs_f64() * config.rate) as u64;
        let count = due.saturating_sub(sent).min(config.max_batch as u64) as usize;
        if count == 0 {
            continue;
        }
        let items: Vec<_> = {
            let mut rng = rand::rng();
            (0..count)
                .map(|_| {
                    let user_id = *authors.choose(&mut rng).unwrap_or(&Uuid::nil());
                    let ts = crate::domain::now();
                    crate::fake::item(&mut rng, crate::domain::new_id(), user_id, ts)
                })
                .collect()
        };
        sent += count as u64;
        match bus.call(InsertItems(items)).await {
            Ok(_) => {
                counters.inserted.fetch_add(count as u64, Ordering::Relaxed);
                metrics::counter!("gorgon_provider_items_total", "provider" => "random", "outcome" => "ok")
                    .increment(count as u64);
            }
            Err(e) => {
                counters.failed.fetch_add(count as u64, Ordering::Relaxed);
                metrics::counter!("gorgon_provider_items_total", "provider" => "random", "outcome" => "error")
                    .increment(count as u64);
                tracing::warn!(error = %e, "random provider insert failed");
            }
        }
    }
}

/// Checks, validates and stores one signed batch; all or nothing.
async fn ingest(
    bus: &Bus,
    config: &ProviderConfig,
    provider: &str,
    signature: Option<&str>,
    body: &str,
) -> Result<Vec<Uuid>> {
    // An unknown provider and a bad signature look the same from outside.
    let secret = config
        .secrets
        .get(provider)
        .ok_or_else(|| Error::Unauthorized(format!("unknown provider {provider:?}")))?;
    let window = config.ingest_window.as_secs() as i64;
    let now = chrono::Utc::now().timestamp();
    let signed =
        crate::providers::verify(secret.as_bytes(), signature, body.as_bytes(), now, window)?;
    let items = crate::providers::ingest::parse(body.as_bytes(), config.ingest_max_items)?;
    let mut owners: Vec<Uuid> = items.iter().map(|i| i.user_id).collect();
    owners.sort();
    owners.dedup();
    for owner in owners {
        bus.call(GetUser { id: owner }).await.map_err(|e| match e {
            Error::NotFound(_) => Error::invalid("items.user_id", format!("no user {owner}")),
            other => other,
        })?;
    }
    let ids = items.iter().map(|i| i.id).collect();
    let count = items.len();
    // Accepted once: the store remembers the signature until it could no longer verify, so a
    // replay within the window is a 409 on every node (the store is what they all share).
    let key = seen_key(provider, &signed.tag);
    // A minute past the window's end: nodes' clocks differ a little.
    let expires_at = chrono::DateTime::from_timestamp(signed.timestamp + window + 60, 0)
        .unwrap_or_else(chrono::Utc::now);
    bus.call(InsertItemsOnce {
        key,
        expires_at,
        items,
    })
    .await
        .inspect_err(|e| {
            if matches!(e, Error::Conflict(_)) {
                metrics::counter!("gorgon_provider_ingest_replays_total", "provider" => provider.to_string())
                    .increment(1);
            }
        })?;
    metrics::counter!("gorgon_provider_items_total", "provider" => provider.to_string(), "outcome" => "ok")
        .increment(count as u64);
    Ok(ids)
}

/// What the store remembers of an accepted signature: a digest of the provider and the tag (the
/// tag alone is already unique; the digest keeps keys one size and names no secret).
fn seen_key(provider: &str, tag: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    digest.update(provider.as_bytes());
    digest.update([0]);
    digest.update(tag);
    digest.finalize().to_vec()
}
