//! Names of Gorgon's Redis keys, all under `gorgon:{namespace}:`, in one place.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `q:{queue}` | list | messages waiting (producers `LPUSH`, consumers take from the right) |
//! | `p:{queue}:{consumer}` | list | messages a consumer has taken and not yet acknowledged |
//! | `hb:{consumer}` | string, TTL | the consumer's heartbeat; gone = the consumer is dead |
//! | `consumers:{queue}` | set | consumers that ever took from the queue (the reaper's list) |
//! | `delayed:{queue}` | sorted set | messages waiting for a retry, scored by due time (ms) |
//! | `dlq:{queue}` | list | dead letters: JSON records with the reason and the message |
//! | `queues` | set | every queue name in use (for tools and metrics) |
//! | `r:{node}` | pub/sub channel | replies to a node's requests |
//! | `rb:{node}` | pub/sub channel | the same, several in one message (see `envelope::pack`) |
//! | `d:{role}:{node}` | pub/sub channel | direct requests for the role's instance on a node |
//! | `db:{role}:{node}` | pub/sub channel | the same, several in one message |
//! | `events:{topic}` | pub/sub channel | events |
//! | `lock:reaper` | string, TTL | one reaper at a time, cluster-wide |
//!
//! Queues are named after the role that consumes them: `store` carries its durable requests
//! (writes), `store.direct` its direct ones (reads, at most once). A direct request normally
//! skips its list: the caller publishes it to one live consumer's channel (`d:store:{node}`),
//! which costs Redis half the round trips; the list is the fallback when no consumer is known.

use crate::bus::{Delivery, Role};

/// The queue a role's requests of one delivery class travel on.
pub fn queue_name(role: Role, delivery: Delivery) -> String {
    match delivery {
        Delivery::Durable => role.name().to_string(),
        Delivery::Direct => format!("{}.direct", role.name()),
    }
}

/// Whether a queue name is one of a durable class (the others are at-most-once).
pub fn is_durable(queue: &str) -> bool {
    !queue.ends_with(".direct")
}

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Keys {
            prefix: format!("gorgon:{namespace}:"),
        }
    }

    pub fn queue(&self, queue: &str) -> String {
        format!("{}q:{queue}", self.prefix)
    }

    pub fn processing(&self, queue: &str, consumer: &str) -> String {
        format!("{}p:{queue}:{consumer}", self.prefix)
    }

    pub fn heartbeat(&self, consumer: &str) -> String {
        format!("{}hb:{consumer}", self.prefix)
    }

    pub fn consumers(&self, queue: &str) -> String {
        format!("{}consumers:{queue}", self.prefix)
    }

    pub fn delayed(&self, queue: &str) -> String {
        format!("{}delayed:{queue}", self.prefix)
    }

    pub fn dead(&self, queue: &str) -> String {
        format!("{}dlq:{queue}", self.prefix)
    }

    pub fn queues(&self) -> String {
        format!("{}queues", self.prefix)
    }

    pub fn replies(&self, node: &str) -> String {
        format!("{}r:{node}", self.prefix)
    }

    /// The channel of `node`'s replies packed several to a message.
    pub fn replies_packed(&self, node: &str) -> String {
        format!("{}rb:{node}", self.prefix)
    }

    /// The packed counterpart of a reply channel of this namespace (none for another name).
    pub fn packed_reply_channel(&self, reply_to: &str) -> Option<String> {
        let node = reply_to.strip_prefix(&self.prefix)?.strip_prefix("r:")?;
        Some(self.replies_packed(node))
    }

    /// The channel of direct requests for `role` on `node` (`*` as a pattern).
    pub fn direct(&self, role: &str, node: &str) -> String {
        format!("{}d:{role}:{node}", self.prefix)
    }

    /// The channel of direct requests for `role` on `node` packed several to a message (`*` as
    /// a pattern).
    pub fn direct_packed(&self, role: &str, node: &str) -> String {
        format!("{}db:{role}:{node}", self.prefix)
    }

    /// The role named by a direct-request channel of `node`, and whether the channel carries
    /// packed requests.
    pub fn role_of_direct<'a>(&self, channel: &'a str, node: &str) -> Option<(&'a str, bool)> {
        let rest = channel.strip_prefix(&self.prefix)?;
        let (rest, packed) = match rest.strip_prefix("db:") {
            Some(rest) => (rest, true),
            None => (rest.strip_prefix("d:")?, false),
        };
        let role = rest.strip_suffix(node)?.strip_suffix(':')?;
        Some((role, packed))
    }

    pub fn events(&self, topic: &str) -> String {
        format!("{}events:{topic}", self.prefix)
    }

    pub fn reaper_lock(&self) -> String {
        format!("{}lock:reaper", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_named_after_roles_and_classes() {
        assert_eq!(queue_name(Role::Store, Delivery::Durable), "store");
        assert_eq!(queue_name(Role::Store, Delivery::Direct), "store.direct");
        assert!(is_durable("store"));
        assert!(!is_durable("auth.direct"));
        let keys = Keys::new("shop");
        assert_eq!(keys.queue("store"), "gorgon:shop:q:store");
        assert_eq!(keys.dead("app"), "gorgon:shop:dlq:app");
        assert_eq!(keys.processing("app", "n1/app"), "gorgon:shop:p:app:n1/app");
        let channel = keys.direct("store", "node-1");
        assert_eq!(channel, "gorgon:shop:d:store:node-1");
        assert_eq!(
            keys.role_of_direct(&channel, "node-1"),
            Some(("store", false))
        );
        assert_eq!(keys.role_of_direct(&channel, "node-2"), None);
        let packed = keys.direct_packed("store", "node-1");
        assert_eq!(packed, "gorgon:shop:db:store:node-1");
        assert_eq!(
            keys.role_of_direct(&packed, "node-1"),
            Some(("store", true))
        );
        assert_eq!(
            keys.packed_reply_channel(&keys.replies("node-1")),
            Some("gorgon:shop:rb:node-1".to_string())
        );
        assert_eq!(keys.packed_reply_channel("gorgon:other:r:node-1"), None);
    }
}
