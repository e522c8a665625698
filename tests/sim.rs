//! The simulator: a short real run's report, the open loop's rate, and the invariant checker
//! catching a write the target lost.

mod common;

use clap::Parser;
use common::TestApp;
use gorgon::configuration::{Cli, Command};
use gorgon::sim::invariants;
use gorgon::sim::workload::AckedWrite;
use serde_json::{json, Value};

async fn simulate(extra: &[&str]) -> (bool, Value) {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let mut argv = vec![
        "gorgon",
        "sim",
        "--users",
        "20",
        "--items",
        "400",
        "--provider-rate",
        "50",
        "--warmup",
        "0s",
        "--writers",
        "2",
        "--json",
        json_path.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    let Command::Sim(args) = Cli::parse_from(argv).command else {
        unreachable!()
    };
    let passed = gorgon::sim::run(args).await.expect("simulation runs");
    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    (passed, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_closed_loop_run_reports_every_operation_and_passes() {
    let (passed, report) = simulate(&[
        "--clients",
        "4",
        "--duration",
        "2s",
        "--mix",
        "read=80,write=10,search=10",
    ])
    .await;
    assert!(passed, "{report:#}");
    assert_eq!(report["passed"], true);
    assert_eq!(report["scenario"]["users"], 20);
    let phase = &report["phases"][0];
    assert!(phase["name"].as_str().unwrap().starts_with("closed loop"));
    let ops = phase["operations"].as_array().unwrap();
    let names: Vec<&str> = ops.iter().map(|o| o["op"].as_str().unwrap()).collect();
    assert_eq!(names, ["read", "write", "search"]);
    for op in ops {
        assert!(op["requests"].as_u64().unwrap() > 0, "{op}");
        assert!(op["p50_ms"].as_f64().unwrap() > 0.0);
        assert!(op["p50_ms"].as_f64() <= op["p99_ms"].as_f64());
        assert!(op["p99_ms"].as_f64() <= op["max_ms"].as_f64());
        assert_eq!(op["errors"], 0);
        assert!(
            op["target_rate"].is_null(),
            "closed loop has no target rate"
        );
    }
    let series = report["series"].as_array().unwrap();
    assert!(
        !series.is_empty() && series.len() <= 3,
        "about one sample per second: {}",
        series.len()
    );
    let checks = report["invariants"].as_array().unwrap();
    assert_eq!(checks.len(), 3);
    assert!(checks.iter().all(|c| c["passed"] == true));
    assert!(checks[0]["detail"]
        .as_str()
        .unwrap()
        .contains("read back as written"));
    assert!(report["provider_achieved_rate"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_keeps_its_rate() {
    let (passed, report) =
        simulate(&["--rate", "200", "--duration", "3s", "--mix", "read=1"]).await;
    assert!(passed, "{report:#}");
    let op = &report["phases"][0]["operations"][0];
    assert_eq!(op["target_rate"], 200.0);
    let achieved = op["achieved_rate"].as_f64().unwrap();
    assert!(
        (150.0..=230.0).contains(&achieved),
        "achieved {achieved} req/s of 200"
    );
    assert_eq!(
        op["requests"], 600,
        "exactly rate x duration requests are sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariant_checker_catches_a_lost_write() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user("writer@example.com").await;
    let mut acked = Vec::new();
    for n in 0..5 {
        let title = format!("kept {n}");
        let item = app
            .create_item(&token, &json!({"title": title, "body": "b"}))
            .await;
        acked.push(AckedWrite {
            id: item["id"].as_str().unwrap().into(),
            title,
            body: "b".into(),
        });
    }
    let ok = invariants::acknowledged_writes_readable(&app.client, &app.base, &acked, 4).await;
    assert!(ok.passed, "{ok}");

    // The target loses one acknowledged write, and another comes back altered.
    app.delete(&format!("/api/v1/items/{}", acked[1].id), &token)
        .await;
    app.patch(
        &format!("/api/v1/items/{}", acked[3].id),
        &token,
        &json!({"title": "altered"}),
    )
    .await;
    let check = invariants::acknowledged_writes_readable(&app.client, &app.base, &acked, 4).await;
    assert!(!check.passed);
    assert!(
        check.detail.starts_with("2 of 5 missing or wrong"),
        "{check}"
    );
    assert!(check.to_string().starts_with("FAIL"));
}
