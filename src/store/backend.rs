//! Which database the store role opens: the embedded store in a directory (the default), or a
//! shared database named by `--store URL`, whose scheme picks the backend.
//!
//! A URL may carry a password: [`StoreUrl`] never shows it (`Debug` and `Display` print the URL
//! with the password replaced), so it cannot reach a log line, an error or `/readyz`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::mongo::{MongoOptions, MongoStore};
use super::postgres::{PgOptions, PgStore};
use super::{BulkLoad, SqliteOptions, SqliteStore};
use crate::error::{Error, Result};

/// The URL of a shared store, parsed at the edge: its scheme is one this build can open.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    url: String,
    kind: SharedKind,
}

/// The shared backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedKind {
    MongoDb,
    Postgres,
}

impl StoreUrl {
    /// Accepts `mongodb://…`, `mongodb+srv://…`, `postgres://…` and `postgresql://…`.
    pub fn parse(value: &str) -> std::result::Result<StoreUrl, String> {
        let value = value.trim();
        let scheme = value.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let kind = match scheme.as_deref() {
            Some("mongodb" | "mongodb+srv") => SharedKind::MongoDb,
            Some("postgres" | "postgresql") => SharedKind::Postgres,
            _ => {
                return Err(format!(
                    "{} is not a store URL: expected mongodb://host:port/database or \
                     postgres://user@host:port/database",
                    redact(value)
                ))
            }
        };
        Ok(StoreUrl {
            url: value.to_string(),
            kind,
        })
    }

    pub fn kind(&self) -> SharedKind {
        self.kind
    }

    /// The URL with its password, for the driver only.
    pub fn expose(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// The URL with the password of its user info (`user:password@`) replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first '/', '?' or '#'; user info is what precedes its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((user_info, hosts)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{hosts}{tail}")
        }
        None => url.to_string(),
    }
}

/// Each backend's settings; [`Backend::open`] uses the one it needs.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    pub sqlite: SqliteOptions,
    pub mongo: MongoOptions,
    pub postgres: PgOptions,
}

/// Where the store role keeps its data.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded store in this directory: one process owns it.
    Embedded(PathBuf),
    /// A shared database: any number of store nodes use it at once.
    Shared(StoreUrl),
}

impl Backend {
    /// `--store` when given, else the embedded store in `data`.
    pub fn choose(store: Option<&StoreUrl>, data: &std::path::Path) -> Backend {
        match store {
            Some(url) => Backend::Shared(url.clone()),
            None => Backend::Embedded(data.to_path_buf()),
        }
    }

    /// Its name in `/readyz`, the cluster table and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Shared(url) => match url.kind() {
                SharedKind::MongoDb => "mongodb",
                SharedKind::Postgres => "postgres",
            },
        }
    }

    /// Whether several store nodes may run on it at once.
    pub fn is_shared(&self) -> bool {
        matches!(self, Backend::Shared(_))
    }

    /// Where it is, without secrets: the directory, or the redacted URL.
    pub fn location(&self) -> String {
        match self {
            Backend::Embedded(dir) => dir.display().to_string(),
            Backend::Shared(url) => url.to_string(),
        }
    }

    /// Opens it. The embedded store opens on a blocking thread (it reads its files); a shared
    /// one connects and makes sure its indexes exist.
    pub async fn open(&self, options: BackendOptions) -> Result<Arc<dyn BulkLoad>> {
        let BackendOptions {
            sqlite,
            mongo,
            postgres,
        } = options;
        match self {
            Backend::Embedded(dir) => {
                let dir = dir.clone();
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(dir, sqlite))
                    .await
                    .map_err(|e| Error::internal(&e))??;
                Ok(Arc::new(store))
            }
            Backend::Shared(url) => match url.kind() {
                SharedKind::MongoDb => {
                    Ok(Arc::new(MongoStore::connect(url.expose(), mongo).await?))
                }
                SharedKind::Postgres => {
                    Ok(Arc::new(PgStore::connect(url.expose(), postgres).await?))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_show_their_password() {
        let url = StoreUrl::parse("mongodb://app:s3cret@db1:27017,db2:27017/gorgon?w=majority")
            .expect("parses");
        for shown in [format!("{url}"), format!("{url:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(
                shown.contains("app:***@db1:27017,db2:27017/gorgon?w=majority"),
                "{shown}"
            );
        }
        assert_eq!(
            url.expose(),
            "mongodb://app:s3cret@db1:27017,db2:27017/gorgon?w=majority"
        );
        let bad = StoreUrl::parse("mysql://root:hunter2@db/x").expect_err("refused");
        assert!(!bad.contains("hunter2"), "{bad}");
        assert_eq!(
            StoreUrl::parse("postgresql://app:pw@db1,db2/x?target_session_attrs=read-write")
                .map(|u| (u.kind(), u.to_string()))
                .ok(),
            Some((
                SharedKind::Postgres,
                "postgresql://app:***@db1,db2/x?target_session_attrs=read-write".to_string()
            ))
        );
        assert_eq!(
            StoreUrl::parse("mongodb+srv://cluster0.example.net/")
                .map(|u| u.kind())
                .ok(),
            Some(SharedKind::MongoDb)
        );
        assert_eq!(
            redact("mongodb://db:27017/?a=b@c"),
            "mongodb://db:27017/?a=b@c"
        );
    }
}
