//! Clustering: nodes joined with `ractor_cluster`.
//!
//! Not in this build yet: a node's roles talk through the in-process bus, and to roles in other
//! processes through Redis mailboxes (`src/bus/redis/`). The flags `--cluster-listen`, `--join`
//! and `--mongodb` are accepted by the command line so that configuration is stable, and refused
//! at start-up with a clear message rather than silently ignored.

use crate::configuration::RunArgs;

/// Refuses options whose transport this build does not have.
pub fn check_supported(args: &RunArgs) -> Result<(), String> {
    let mut refused = Vec::new();
    if args.mongodb.is_some() {
        refused.push("--mongodb (the MongoDB store)");
    }
    if args.cluster_listen.is_some() || !args.join.is_empty() {
        refused.push("--cluster-listen/--join (ractor_cluster)");
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not available in this build yet: {}; run a single node (all roles in one process)",
            refused.join(", ")
        ))
    }
}
