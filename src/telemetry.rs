//! Logs (`tracing`) and metrics (`metrics` with the Prometheus exporter), set up once per process.

pub mod annotations;
pub mod history;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Latency buckets in seconds: 50 µs to 10 s, roughly ×2 apart, so the heatmap can tell
/// sub-millisecond from a few milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for pipelines.
    Json,
}

/// Lines waiting for stderr; past it new lines are dropped (and counted), never waited for.
const LOG_BUFFER_LINES: usize = 64 * 1024;

/// Log lines dropped because stderr did not keep up (exported by [`metrics_upkeep`]).
static DROPPED_LOG_LINES: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Logs to stderr, filtered by `RUST_LOG` (else `level`, e.g. `info`). Request logs are the
/// `gorgon::access` target: `RUST_LOG=info,gorgon::access=off` turns them off.
///
/// Lines are written by a thread of their own: a slow reader of stderr (a full pipe, a stalled
/// log shipper) must not stall the async workers that log a line per request. Keep the guard
/// until exit: dropping it writes what is buffered.
pub fn init_logging(format: LogFormat, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    // ractor_cluster logs every session step at info; its warnings (a peer lost) still show.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},ractor_cluster=warn,ractor=warn")));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("gorgon-log")
        .finish(std::io::stderr());
    let _ = DROPPED_LOG_LINES.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    guard
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_BUCKETS)
                });
            let builder = match builder {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "metric buckets rejected; using defaults");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe_metrics();
            handle
        })
        .clone()
}

/// Histograms are drained into their buckets by upkeep; run it in the background.
pub async fn metrics_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
        if let Some(dropped) = DROPPED_LOG_LINES.get() {
            metrics::counter!("gorgon_log_lines_dropped_total")
                .absolute(dropped.dropped_lines() as u64);
        }
    }
}

/// Help texts and units of every metric the node exports (one place to find them all).
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "gorgon_log_lines_dropped_total",
        "Log lines dropped because stderr did not keep up (the writer never blocks a worker)."
    );
    describe_histogram!(
        "gorgon_store_read_wait_seconds",
        Unit::Seconds,
        "Time a store read waited for a connection of its pool, by pool (pages, heavy)."
    );
    describe_counter!(
        "gorgon_store_searches_demoted_total",
        "Searches that ran past their first slice at normal priority and went to the heavy pool."
    );
    describe_counter!(
        "gorgon_store_search_timeouts_total",
        "Searches and deep pages stopped at their time budget (--search-timeout)."
    );
    describe_counter!(
        "gorgon_password_hashes_refused_total",
        "Password hashes refused at once because the hashing pool and its queue were full."
    );
    describe_counter!(
        "gorgon_auth_registrations_limited_total",
        "Registrations refused by the per-address limit."
    );
    describe_counter!(
        "gorgon_quota_refusals_total",
        "Requests refused by a per-user quota, by quota."
    );
    describe_counter!(
        "gorgon_provider_ingest_replays_total",
        "Signed ingest requests refused as replays of one already accepted."
    );
    describe_counter!(
        "gorgon_http_connections_refused_total",
        "Connections closed at once because their address had too many open."
    );
    describe_counter!(
        "gorgon_http_body_timeouts_total",
        "Requests whose body did not arrive within --http-body-timeout (answered 408)."
    );
    describe_counter!(
        "gorgon_http_requests_total",
        "HTTP requests answered, by method, route pattern and status."
    );
    describe_histogram!(
        "gorgon_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method and route pattern."
    );
    describe_counter!(
        "gorgon_bus_calls_total",
        "Calls between roles over the bus, by role, request kind, outcome and transport (local, redis)."
    );
    describe_histogram!(
        "gorgon_bus_call_duration_seconds",
        Unit::Seconds,
        "Time from sending a request to a role until its reply, by role and kind."
    );
    describe_counter!(
        "gorgon_events_published_total",
        "Events published on the bus, by topic."
    );
    describe_histogram!(
        "gorgon_store_op_duration_seconds",
        Unit::Seconds,
        "Time the store role took per operation, by operation."
    );
    describe_histogram!(
        "gorgon_store_write_batch_size",
        Unit::Count,
        "Writes committed together in one transaction (group commit)."
    );
    describe_counter!(
        "gorgon_store_recent_lookups_total",
        "Lookups of a user's newest items in the embedded store's memory: hit, or miss (read from the database)."
    );
    describe_gauge!(
        "gorgon_store_wal_frames",
        "Frames in the embedded store's write-ahead log after the background checkpointer's last run."
    );
    describe_counter!(
        "gorgon_store_checkpoints_total",
        "Background checkpoints of the embedded store's write-ahead log."
    );
    describe_counter!(
        "gorgon_auth_login_total",
        "Login attempts, by outcome (ok, denied, rate_limited)."
    );
    describe_counter!(
        "gorgon_provider_items_total",
        "Items inserted by providers, by provider and outcome."
    );
    describe_gauge!(
        "gorgon_notify_clients",
        "Streaming (SSE) clients connected to this node."
    );
    describe_counter!(
        "gorgon_notify_clients_dropped_total",
        "Streaming clients disconnected for falling behind, by reason."
    );
    describe_counter!(
        "gorgon_notify_events_lost_total",
        "Bus events the notify role missed because it fell behind."
    );
    describe_gauge!(
        "gorgon_redis_up",
        "1 while this node reaches Redis (its health check answers), else 0."
    );
    describe_gauge!(
        "gorgon_queue_depth",
        "Messages waiting in a Redis queue, by queue (sampled every second)."
    );
    describe_gauge!(
        "gorgon_queue_delayed",
        "Failed durable messages waiting for their retry, by queue."
    );
    describe_gauge!(
        "gorgon_queue_dead",
        "Dead letters in a queue's dead-letter list, by queue."
    );
    describe_gauge!(
        "gorgon_queue_inflight",
        "Messages this node has taken from a queue and not yet answered, by queue."
    );
    describe_counter!(
        "gorgon_queue_messages_total",
        "Messages this node took from Redis, by queue and outcome (ok, error, retried, dead, expired)."
    );
    describe_counter!(
        "gorgon_queue_redelivered_total",
        "Deliveries after the first (a retry, or a dead consumer's message given back), by queue."
    );
    describe_gauge!(
        "gorgon_bus_pending_replies",
        "Calls through Redis waiting for their reply on this node."
    );
    describe_counter!(
        "gorgon_bus_late_replies_total",
        "Replies that arrived after their caller had given up (dropped)."
    );
    describe_counter!(
        "gorgon_events_dropped_total",
        "Events not sent to other nodes, by reason (outbox_full, redis)."
    );
    describe_counter!(
        "gorgon_provider_ingest_total",
        "Signed ingest requests, by provider and outcome (ok, refused)."
    );
    describe_counter!(
        "gorgon_webhook_deliveries_total",
        "Webhook deliveries finished, by target and outcome (delivered, given_up)."
    );
    describe_counter!(
        "gorgon_webhook_retries_total",
        "Webhook delivery attempts that failed and were retried, by target."
    );
    describe_counter!(
        "gorgon_webhook_events_dropped_total",
        "Events not queued for a webhook target, by target and reason (queue_full, lagged)."
    );
    describe_counter!(
        "gorgon_jobs_total",
        "Job attempts finished on this node, by kind and outcome (done, failed, dead)."
    );
    describe_histogram!(
        "gorgon_job_duration_seconds",
        Unit::Seconds,
        "Time one attempt of a job took on this node, by kind."
    );
    describe_gauge!(
        "gorgon_jobs_running",
        "Job attempts running on this node now."
    );
    describe_gauge!(
        "gorgon_cluster_peers",
        "Cluster nodes this node has a session with (its peers; 0 when it is alone)."
    );
    describe_counter!(
        "gorgon_cluster_peers_dropped_total",
        "Peer sessions dropped because the peer missed --cluster-missed-pings heartbeats."
    );
    describe_counter!(
        "gorgon_cluster_auth_failures_total",
        "Cluster sessions and direct-call connections refused at authentication (cookies differ)."
    );
    describe_gauge!(
        "gorgon_node_uptime_seconds",
        Unit::Seconds,
        "Seconds since this node started."
    );
    describe_gauge!(
        "gorgon_build_info",
        "Always 1; the version label says which build runs."
    );
}
