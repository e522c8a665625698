//! `gorgon seed`: bulk-loads synthetic users and items into the store (embedded or shared), fast.
//!
//! Items are generated user by user, each user's in time order, so rows append in the store's
//! `(user, id)` key order; the secondary indexes and the search index are set aside during the
//! load and built once at the end, which is much faster than maintaining them row by row. Generation runs on its own thread
//! while the store's writer commits the previous batch. Seeded users share one precomputed
//! password hash: seeding must not be bound by argon2 (real registrations always hash).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use uuid::Uuid;

use crate::configuration::SeedArgs;
use crate::domain::password::{self, Password};
use crate::domain::{Email, Extra, Item, NewUser, UserName};
use crate::store::{Backend, BulkLoad};

/// What a seed run did.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub users: u64,
    pub items: u64,
    pub load_seconds: f64,
    pub index_seconds: f64,
    pub user_ids: Vec<Uuid>,
}

impl SeedReport {
    pub fn items_per_second(&self) -> f64 {
        self.items as f64 / (self.load_seconds + self.index_seconds).max(1e-9)
    }
}

const MAX_ID_SAMPLE: u64 = 100_000;

/// A progress bar for `total` things, hidden when `quiet` (also used by the simulator).
pub(crate) fn progress(total: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template =
        format!("{what:>6} [{{bar:40}}] {{human_pos}}/{{human_len}} {{per_sec}} eta {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Opens the store (`args.store`, else the embedded store in `args.data`) and loads it.
pub async fn run(args: SeedArgs) -> anyhow::Result<SeedReport> {
    let backend = Backend::choose(args.store.as_ref(), &args.data);
    let store = backend.open(Default::default()).await.with_context(|| {
        format!(
            "cannot open the {} store at {}",
            backend.name(),
            backend.location()
        )
    })?;
    let report = seed(&store, &args).await;
    store.close().await;
    let report = report?;
    if !args.quiet {
        println!(
            "seeded {} users and {} items in {:.1} s (load {:.1} s + indexes {:.1} s): {:.0} items/s",
            report.users,
            report.items,
            report.load_seconds + report.index_seconds,
            report.load_seconds,
            report.index_seconds,
            report.items_per_second()
        );
    }
    Ok(report)
}

/// Loads `args.users` users and `args.items` items into an open store.
pub async fn seed<S: BulkLoad + ?Sized>(
    store: &Arc<S>,
    args: &SeedArgs,
) -> anyhow::Result<SeedReport> {
    let batch = args.batch.max(1);
    let shared_hash = password::hash(
        Password::parse(&args.password).map_err(|e| anyhow::anyhow!("seed password: {e}"))?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    store
        .begin_bulk(args.items)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Users.
    let run_tag = &Uuid::now_v7().simple().to_string()[20..];
    let bar = progress(args.users, "users", args.quiet);
    let mut user_ids = Vec::with_capacity(args.users as usize);
    let mut rng = rand::rng();
    let mut pending = Vec::with_capacity(batch);
    for n in 0..args.users {
        let id = crate::domain::new_id();
        user_ids.push(id);
        pending.push(NewUser {
            id,
            name: UserName::parse(&crate::fake::user_name(&mut rng, n))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            email: Email::parse(&format!("user{n}.{run_tag}@seed.gorgon.test"))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            group: (n % 100) as i64,
            admin: false,
            extra: Extra::default(),
            password_hash: shared_hash.clone(),
            created_at: crate::domain::now(),
        });
        if pending.len() == batch || n + 1 == args.users {
            let count = pending.len() as u64;
            store
                .bulk_users(std::mem::take(&mut pending))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            bar.inc(count);
        }
    }
    bar.finish();

    // Items: generated on a blocking thread, committed by the store's writer, overlapping.
    let mut sampled_items = Vec::new();
    if args.items > 0 && !user_ids.is_empty() {
        let bar = progress(args.items, "items", args.quiet);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(u64, Item)>>(2);
        let authors = user_ids.clone();
        let total = args.items;
        let generator = tokio::task::spawn_blocking(move || {
            let mut rng = rand::rng();
            // Item n (in time order, spread evenly over the last 30 days) goes to a random user;
            // items are then generated user by user, each user's in time order, so rows arrive
            // in the store's (user, id) key order, each with its position in time order.
            let mut per_user: Vec<Vec<u32>> = vec![Vec::new(); authors.len()];
            for n in 0..total as u32 {
                per_user[rng.random_range(0..authors.len())].push(n);
            }
            let span_ms = 30 * 24 * 3600 * 1000_i64;
            let start = Utc::now().timestamp_millis() - span_ms;
            let mut batch_items = Vec::with_capacity(batch);
            for (author, positions) in authors.iter().zip(per_user) {
                for n in positions {
                    let ms = start + (n as i128 * span_ms as i128 / total.max(1) as i128) as i64;
                    let ts = crate::domain::from_millis(ms);
                    let item = crate::fake::item(&mut rng, crate::domain::id_at(ts), *author, ts);
                    batch_items.push((n as u64, item));
                    if batch_items.len() == batch {
                        let full = std::mem::replace(&mut batch_items, Vec::with_capacity(batch));
                        if tx.blocking_send(full).is_err() {
                            return;
                        }
                    }
                }
            }
            if !batch_items.is_empty() {
                let _ = tx.blocking_send(batch_items);
            }
        });
        let every = (args.items / MAX_ID_SAMPLE).max(1);
        let mut seen = 0u64;
        while let Some(items) = rx.recv().await {
            for (_, item) in &items {
                if seen.is_multiple_of(every) {
                    sampled_items.push(item.id);
                }
                seen += 1;
            }
            let count = items.len() as u64;
            store
                .bulk_items(items)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            bar.inc(count);
        }
        generator.await.context("item generator failed")?;
        bar.finish();
    }
    let load_seconds = started.elapsed().as_secs_f64();

    let spinner = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner().with_message("building the user index and the search index")
    };
    spinner.enable_steady_tick(Duration::from_millis(200));
    let indexing = Instant::now();
    store
        .finish_bulk()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    spinner.finish_and_clear();
    let index_seconds = indexing.elapsed().as_secs_f64();

    if let Some(path) = &args.item_ids_out {
        write_ids(path, &sampled_items)?;
    }
    if let Some(path) = &args.user_ids_out {
        write_ids(path, &user_ids)?;
    }
    Ok(SeedReport {
        users: args.users,
        items: if user_ids.is_empty() { 0 } else { args.items },
        load_seconds,
        index_seconds,
        user_ids,
    })
}

fn write_ids(path: &Path, ids: &[Uuid]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for id in ids {
        writeln!(out, "{id}")?;
    }
    out.flush()?;
    Ok(())
}
