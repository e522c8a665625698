//! What `gorgon chaos` starts: the store (embedded, or a PostgreSQL primary with a synchronous
//! standby), Redis, HAProxy, and the Gorgon nodes with their roles. Two topologies are built in
//! (`embedded`, `postgres`); a TOML file describes any other.
//!
//! ```toml
//! store = "postgres"          # or "embedded"
//! [[node]]
//! name = "front-1"
//! roles = "web,notify"
//! [[node]]
//! name = "back-1"
//! roles = "auth,app,store,stats"
//! ```
//!
//! Exactly two nodes run `web`: HAProxy balances them, so a front can die without the clients
//! noticing more than the requests it had in flight.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::bus::Role;
use crate::configuration::parse_roles;

/// Where the nodes keep their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite in the one node that runs the store role.
    Embedded,
    /// A PostgreSQL primary and a synchronous standby, reached through a fault proxy that moves
    /// to the standby when it is promoted.
    Postgres,
}

/// One Gorgon process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    pub name: String,
    /// As `gorgon run --roles` takes them.
    pub roles: String,
}

impl NodeDef {
    fn new(name: &str, roles: &str) -> NodeDef {
        NodeDef {
            name: name.into(),
            roles: roles.into(),
        }
    }

    pub fn has(&self, role: Role) -> bool {
        parse_roles(&self.roles).is_ok_and(|set| set.contains(role))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub name: String,
    pub store: StoreKind,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeDef>,
}

impl Topology {
    /// `embedded`, `postgres`, or the path of a TOML file.
    pub fn load(value: &str) -> anyhow::Result<Topology> {
        let topology = match value {
            "embedded" => Topology {
                name: "embedded".into(),
                store: StoreKind::Embedded,
                nodes: vec![
                    NodeDef::new("front-1", "web,notify"),
                    NodeDef::new("front-2", "web,notify"),
                    NodeDef::new("store", "auth,app,store"),
                    NodeDef::new("worker", "auth,app,stats"),
                ],
            },
            "postgres" => Topology {
                name: "postgres".into(),
                store: StoreKind::Postgres,
                nodes: vec![
                    NodeDef::new("front-1", "web,notify"),
                    NodeDef::new("front-2", "web,notify"),
                    NodeDef::new("back-1", "auth,app,store,stats"),
                    NodeDef::new("back-2", "auth,app,store"),
                ],
            },
            path => {
                let text = std::fs::read_to_string(Path::new(path)).with_context(|| {
                    format!("{path:?} is neither `embedded`, `postgres` nor a readable file")
                })?;
                let mut topology: Topology =
                    toml::from_str(&text).with_context(|| format!("invalid topology {path}"))?;
                if topology.name.is_empty() {
                    topology.name = path.into();
                }
                topology
            }
        };
        topology.validate()?;
        Ok(topology)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut names = std::collections::HashSet::new();
        for node in &self.nodes {
            anyhow::ensure!(
                !node.name.is_empty()
                    && node.name.len() <= 32
                    && node
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "node name {:?}: 1-32 letters, digits or '-'",
                node.name
            );
            anyhow::ensure!(names.insert(&node.name), "two nodes named {}", node.name);
            parse_roles(&node.roles).map_err(|e| anyhow::anyhow!("node {}: {e}", node.name))?;
        }
        anyhow::ensure!(
            self.fronts().count() == 2,
            "exactly two nodes must run `web` (HAProxy balances them)"
        );
        // The provider role is optional: its random items would only blur the measurements.
        for role in Role::ALL.iter().filter(|r| **r != Role::Provider) {
            anyhow::ensure!(
                self.nodes.iter().any(|n| n.has(*role)),
                "no node runs the {} role",
                role.name()
            );
        }
        let stores = self.nodes.iter().filter(|n| n.has(Role::Store)).count();
        if self.store == StoreKind::Embedded {
            anyhow::ensure!(
                stores == 1,
                "the embedded store belongs to one process: exactly one node runs `store`"
            );
        }
        Ok(())
    }

    /// The nodes that serve HTTP, in order.
    pub fn fronts(&self) -> impl Iterator<Item = (usize, &NodeDef)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.has(Role::Web))
    }

    /// The node that holds the embedded store, if the store is embedded.
    pub fn embedded_store_node(&self) -> Option<usize> {
        (self.store == StoreKind::Embedded)
            .then(|| self.nodes.iter().position(|n| n.has(Role::Store)))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_topologies_are_valid() {
        let embedded = Topology::load("embedded").unwrap();
        assert_eq!(embedded.fronts().count(), 2);
        assert_eq!(embedded.embedded_store_node(), Some(2));
        let postgres = Topology::load("postgres").unwrap();
        assert_eq!(postgres.embedded_store_node(), None);
    }

    #[test]
    fn files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let write = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Topology::load(path.to_str().unwrap())
        };
        let one_front = "store = \"embedded\"\n[[node]]\nname = \"a\"\nroles = \"all\"\n";
        assert!(write(one_front).unwrap_err().to_string().contains("two"));
        let two_stores = "store = \"embedded\"\n\
            [[node]]\nname = \"a\"\nroles = \"all\"\n[[node]]\nname = \"b\"\nroles = \"all\"\n";
        assert!(write(two_stores).is_err());
        let shared = two_stores.replace("embedded", "postgres");
        assert!(write(&shared).is_ok());
        assert!(write(&shared.replace("all\"\n[", "al\"\n[")).is_err());
        assert!(write("store = \"embedded\"\nnodes = 3\n").is_err());
    }
}
