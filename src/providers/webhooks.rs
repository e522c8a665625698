//! Outbound webhooks: every item event, POSTed as JSON to each configured target, signed with the
//! webhook secret, retried with exponential backoff.
//!
//! Each target has its own bounded queue and its own delivery task, one delivery at a time (so a
//! target sees events in order): a slow or dead target only fills its own queue, and once that is
//! full its newest events are dropped and counted — it never blocks the other targets, the bus or
//! the writers. Queues live in memory: deliveries pending at shutdown are not kept.

use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;

use super::signature::{sign, SIGNATURE_HEADER};
use crate::bus::Bus;
use crate::shutdown::Shutdown;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub targets: Vec<String>,
    /// Signs deliveries when set.
    pub secret: Option<String>,
    pub max_attempts: u32,
    pub retry_base: Duration,
    /// Events queued per target before new ones are dropped.
    pub queue: usize,
    /// Deadline of one delivery attempt.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            targets: Vec::new(),
            secret: None,
            max_attempts: 8,
            retry_base: Duration::from_millis(500),
            queue: 10_000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One event to deliver: its kind and its JSON body.
#[derive(Clone)]
struct Delivery {
    kind: &'static str,
    body: bytes::Bytes,
}

/// Starts the fan-out from the bus and one delivery task per target, on `shutdown` (they end
/// when it is cancelled).
pub fn start(bus: &Bus, config: WebhookConfig, shutdown: &Shutdown) {
    if config.targets.is_empty() {
        return;
    }
    let client = match reqwest::Client::builder().timeout(config.timeout).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhooks disabled: no HTTP client");
            return;
        }
    };
    let mut queues = Vec::new();
    for target in &config.targets {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        queues.push((target.clone(), tx));
        shutdown.spawn(deliver(target.clone(), rx, client.clone(), config.clone()));
    }
    let mut events = bus.subscribe();
    shutdown.spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    metrics::counter!("gorgon_webhook_events_dropped_total", "target" => "all", "reason" => "lagged")
                        .increment(missed);
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if event.is_internal() {
                continue;
            }
            let Ok(body) = serde_json::to_vec(&*event) else {
                continue;
            };
            let delivery = Delivery {
                kind: event.kind.name(),
                body: body.into(),
            };
            for (target, queue) in &queues {
                if queue.try_send(delivery.clone()).is_err() {
                    metrics::counter!("gorgon_webhook_events_dropped_total", "target" => target.clone(), "reason" => "queue_full")
                        .increment(1);
                }
            }
        }
    });
}

async fn deliver(
    target: String,
    mut queue: mpsc::Receiver<Delivery>,
    client: reqwest::Client,
    config: WebhookConfig,
) {
    while let Some(delivery) = queue.recv().await {
        let mut attempt = 1;
        let outcome = loop {
            let mut request = client
                .post(&target)
                .header("Content-Type", "application/json")
                .header("X-Gorgon-Event", delivery.kind)
                .header("X-Gorgon-Attempt", attempt.to_string());
            if let Some(secret) = &config.secret {
                let now = chrono::Utc::now().timestamp();
                request = request.header(
                    SIGNATURE_HEADER,
                    sign(secret.as_bytes(), now, &delivery.body),
                );
            }
            let failure = match request.body(delivery.body.clone()).send().await {
                Ok(resp) if resp.status().is_success() => break "delivered",
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => e.to_string(),
            };
            if attempt >= config.max_attempts {
                tracing::warn!(%target, attempts = attempt, %failure, "webhook delivery given up");
                break "given_up";
            }
            metrics::counter!("gorgon_webhook_retries_total", "target" => target.clone())
                .increment(1);
            let jitter = rand::rng().random_range(0.5..1.5);
            let delay = config
                .retry_base
                .mul_f64(2f64.powi(attempt as i32 - 1) * jitter);
            tokio::time::sleep(delay.min(Duration::from_secs(60))).await;
            attempt += 1;
        };
        metrics::counter!("gorgon_webhook_deliveries_total", "target" => target.clone(), "outcome" => outcome)
            .increment(1);
    }
}
