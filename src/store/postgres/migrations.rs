//! The schema, as versioned migrations embedded in the binary and applied when a store connects.
//!
//! Each migration runs once per database, in order, in one transaction with the record of its
//! version (`gorgon_schema`), under a transaction-level advisory lock: nodes starting together
//! take turns, and the second finds the work done. A database migrated by a newer build is
//! refused (the older build would not know its shape).
//!
//! The items' secondary indexes are not part of a migration: a bulk load into an empty store sets
//! them aside and builds them at its end ([`super::bulk`]); every connect creates those that are
//! missing (after a load that died half-way), in the same locked transaction.

use super::connection::Conn;
use super::errors::{op, PgError};
use crate::error::Result;

/// `(version, name, SQL)`, in order; a version is never edited once released, only added to.
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "schema", include_str!("migrations/0001_schema.sql"))];

/// The advisory lock key of schema changes ("gorgon" in ASCII); advisory locks are per database.
pub(super) const SCHEMA_LOCK: i64 = 0x676f_7267_6f6e;

/// The items' secondary indexes, by name: a user's newest items, and search (the words of each
/// item in a GIN index, queried with `words @> …`).
pub(super) const ITEM_INDEXES: &[(&str, &str)] = &[
    (
        "items_user_newest",
        "CREATE INDEX IF NOT EXISTS items_user_newest ON items (user_id, id DESC)",
    ),
    (
        "items_words",
        "CREATE INDEX IF NOT EXISTS items_words ON items USING gin (words)",
    ),
];

/// Applies the migrations this database lacks and creates missing item indexes.
pub(super) async fn apply(conn: &mut Conn) -> Result<()> {
    let result = async {
        let tx = conn.begin("begin the schema update").await?;
        // Index builds after an interrupted bulk load may take long.
        tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
            .await
            .map_err(op("begin the schema update"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(op("lock the schema"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS gorgon_schema (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(op("create the schema table"))?;
        let applied: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM gorgon_schema", &[])
            .await
            .map_err(op("read the schema version"))?
            .try_get(0)
            .map_err(op("read the schema version"))?;
        let known = MIGRATIONS.last().map_or(0, |(v, _, _)| *v);
        if applied > known {
            return Err(PgError::NewerSchema {
                found: applied,
                known,
            }
            .into());
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > applied) {
            tracing::info!(version, name, "PostgreSQL: applying a schema migration");
            tx.batch_execute(sql)
                .await
                .map_err(op("apply a schema migration"))?;
            tx.execute(
                "INSERT INTO gorgon_schema (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(op("record a schema migration"))?;
        }
        for (name, sql) in ITEM_INDEXES {
            // Only when missing: `IF NOT EXISTS` alone would still lock the table against writes.
            let missing: bool = tx
                .query_one("SELECT to_regclass($1) IS NULL", &[name])
                .await
                .map_err(op("look for an index"))?
                .try_get(0)
                .map_err(op("look for an index"))?;
            if missing {
                tracing::info!(index = name, "PostgreSQL: building a missing index");
                tx.batch_execute(sql).await.map_err(op("create an index"))?;
            }
        }
        tx.commit().await.map_err(op("commit the schema update"))
    }
    .await;
    conn.settle(result)
}
