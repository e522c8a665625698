//! `gorgon seed` loads a store that a node then serves: listings newest first, search rebuilt.

mod common;

use clap::Parser;
use common::TestApp;
use gorgon::configuration::{Cli, Command};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_data_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (report, user_ids) = seed_into(dir.path(), 50, 3000).await;
    assert_eq!(report.users, 50);
    assert_eq!(report.items, 3000);
    assert_eq!(user_ids.len(), 50);

    let app = TestApp::spawn_in(dir, &[]).await;
    let stats: Value = app.get_json("/api/v1/stats").await;
    assert_eq!(stats["items"], 3000);
    assert_eq!(stats["users"], 51, "50 seeded and the admin");

    let mut total = 0;
    for uid in &user_ids {
        let page: Value = app
            .get_json(&format!("/api/v1/users/{uid}/items?limit=100"))
            .await;
        let items = page["items"].as_array().unwrap();
        let ts: Vec<&str> = items.iter().map(|i| i["ts"].as_str().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first");
        assert!(items.iter().all(|i| i["user_id"] == uid.as_str()));
        total += items.len();
    }
    assert!(total > 2000, "most items listed: {total}");

    // The search index was rebuilt after the bulk load; seeded users share one password.
    let found = app.get("/api/v1/items?q=river").await;
    assert_eq!(found.status(), StatusCode::OK);
    let found: Value = found.json().await.unwrap();
    assert!(!found["items"].as_array().unwrap().is_empty());
}

/// Seeds `items` into `dir` (as `users` new users); returns the report and the new users' ids.
async fn seed_into(
    dir: &std::path::Path,
    users: u64,
    items: u64,
) -> (gorgon::seed::SeedReport, Vec<String>) {
    let ids_file = dir.join(format!("users-{items}.txt"));
    let cli = Cli::parse_from([
        "gorgon",
        "seed",
        "--users",
        &users.to_string(),
        "--items",
        &items.to_string(),
        "--batch",
        "700",
        "--quiet",
        "--data",
        dir.to_str().unwrap(),
        "--user-ids-out",
        ids_file.to_str().unwrap(),
    ]);
    let Command::Seed(args) = cli.command else {
        unreachable!()
    };
    let report = gorgon::seed::run(args).await.expect("seed");
    let ids = std::fs::read_to_string(&ids_file).unwrap();
    (report, ids.lines().map(str::to_string).collect())
}

/// Every id the search answers for `word`, all pages (walked with `after` cursors).
async fn search_all(app: &TestApp, word: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut after = String::new();
    loop {
        let page: Value = app
            .get_json(&format!("/api/v1/items?q={word}&limit=100{after}"))
            .await;
        let items = page["items"].as_array().unwrap();
        found.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) if items.len() == 100 => after = format!("&after={next}"),
            _ => return found,
        }
    }
}

/// Checks the search against the listings of `users` (which must hold `total` items): for the
/// two most common words and the rarest, exactly the items holding them. Returns the most
/// common word.
async fn assert_search_exact(app: &TestApp, users: &[String], total: usize) -> String {
    let mut expected: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut listed = 0;
    for uid in users {
        for offset in (0..).step_by(100) {
            let page: Value = app
                .get_json(&format!(
                    "/api/v1/users/{uid}/items?limit=100&offset={offset}"
                ))
                .await;
            let items = page["items"].as_array().unwrap();
            for item in items {
                listed += 1;
                let keywords: Vec<&str> = item["keywords"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                let text = format!(
                    "{} {} {}",
                    item["title"].as_str().unwrap(),
                    item["body"].as_str().unwrap(),
                    keywords.join(" ")
                );
                for word in text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                {
                    expected
                        .entry(word.to_lowercase())
                        .or_default()
                        .insert(item["id"].as_str().unwrap().to_string());
                }
            }
            if items.len() < 100 {
                break;
            }
        }
    }
    assert_eq!(listed, total, "every item listed");
    let mut words: Vec<(&String, usize)> = expected.iter().map(|(w, ids)| (w, ids.len())).collect();
    words.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let rare = words.last().map(|(w, _)| (*w).clone()).unwrap();
    for word in words
        .iter()
        .take(2)
        .map(|(w, _)| (*w).clone())
        .chain([rare])
    {
        let found = search_all(app, &word).await;
        assert_eq!(found, expected[&word], "search for {word:?}");
    }
    words[0].0.clone()
}

/// The first load into an empty store builds its search index aside and copies it in; a second
/// load into the now non-empty store indexes in the writer. After each, the index must hold
/// exactly the items; live writes afterwards must add to it without losing what was copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_index_of_bulk_loads_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut users) = seed_into(dir.path(), 40, 3000).await;
    assert!(
        !dir.path().join("search-build.db").exists(),
        "the scratch index was removed"
    );
    let app = TestApp::spawn_in(dir, &[]).await;
    assert_search_exact(&app, &users, 3000).await;
    let dir = app.stop().await;

    users.extend(seed_into(dir.path(), 10, 1000).await.1);
    let app = TestApp::spawn_in(dir, &[]).await;
    let common = assert_search_exact(&app, &users, 4000).await;

    // A live write after the loads: found, and the loaded index is still whole.
    let (_, token) = app.user("live@example.com").await;
    let before = search_all(&app, &common).await.len();
    let item = app
        .create_item(
            &token,
            &serde_json::json!({"title": format!("zebracorn {common}"), "body": "live"}),
        )
        .await;
    let found = search_all(&app, "zebracorn").await;
    assert!(found.contains(item["id"].as_str().unwrap()));
    assert_eq!(search_all(&app, &common).await.len(), before + 1);
}
