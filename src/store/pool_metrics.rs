//! The connection pool figures of the shared backends as metrics (`gorgon_store_pool_*`), one
//! set of names whichever backend a node runs.

/// What a pool reports.
pub(in crate::store) struct PoolFigures {
    pub open: u64,
    pub in_use: u64,
    pub waiting: u64,
    /// The most connections the pool opens (per server, for MongoDB).
    pub max: u64,
    /// Calls that got no connection (pool exhausted past the timeout, server gone).
    pub checkout_failures: u64,
    /// Connections thrown away together because their server failed (MongoDB: pools cleared;
    /// PostgreSQL: connections dropped after a fatal error).
    pub cleared: u64,
}

pub(in crate::store) fn publish(figures: PoolFigures) {
    for (state, n) in [
        ("open", figures.open),
        ("in_use", figures.in_use),
        ("waiting", figures.waiting),
    ] {
        metrics::gauge!("gorgon_store_pool_connections", "state" => state).set(n as f64);
    }
    metrics::gauge!("gorgon_store_pool_max_per_server").set(figures.max as f64);
    metrics::counter!("gorgon_store_pool_checkout_failures_total")
        .absolute(figures.checkout_failures);
    metrics::counter!("gorgon_store_pool_cleared_total").absolute(figures.cleared);
}
