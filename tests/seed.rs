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
    let ids_file = dir.path().join("users.txt");
    let cli = Cli::parse_from([
        "gorgon",
        "seed",
        "--users",
        "50",
        "--items",
        "3000",
        "--batch",
        "700",
        "--quiet",
        "--data",
        dir.path().to_str().unwrap(),
        "--user-ids-out",
        ids_file.to_str().unwrap(),
    ]);
    let Command::Seed(args) = cli.command else {
        unreachable!()
    };
    let report = gorgon::seed::run(args).await.expect("seed");
    assert_eq!(report.users, 50);
    assert_eq!(report.items, 3000);
    let user_ids = std::fs::read_to_string(&ids_file).unwrap();
    assert_eq!(user_ids.lines().count(), 50);

    let app = TestApp::spawn_in(dir, &[]).await;
    let stats: Value = app.get("/api/v1/stats").await.json().await.unwrap();
    assert_eq!(stats["items"], 3000);
    assert_eq!(stats["users"], 51, "50 seeded and the admin");

    let mut total = 0;
    for uid in user_ids.lines() {
        let page: Value = app
            .get(&format!("/api/v1/users/{uid}/items?limit=100"))
            .await
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().unwrap();
        let ts: Vec<&str> = items.iter().map(|i| i["ts"].as_str().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first");
        assert!(items.iter().all(|i| i["user_id"] == uid));
        total += items.len();
    }
    assert!(total > 2000, "most items listed: {total}");

    // The search index was rebuilt after the bulk load; seeded users share one password.
    let found = app.get("/api/v1/items?q=river").await;
    assert_eq!(found.status(), StatusCode::OK);
    let found: Value = found.json().await.unwrap();
    assert!(!found["items"].as_array().unwrap().is_empty());
}
