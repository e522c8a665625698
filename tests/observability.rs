//! Observability against a running node: `/metrics` passes `promtool check metrics`, every metric
//! the Grafana dashboard and Prometheus config name is really exported, and headless Chromium
//! sees the dashboard draw its heatmap. The dashboard's annotations (the marks `gorgon chaos`
//! puts on its charts): who may put and list them, what is refused, that `/api/v1/stats` carries
//! them and that a node keeps a bounded number.
//!
//! `promtool` (Debian's `prometheus`) and `chromium` are installed by `scripts/test.sh`, which
//! sets `GORGON_REQUIRE_TOOLS=1`: then a missing tool fails the test. Under a bare `cargo test`
//! without them these tests say they were skipped.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::redis::{Fsync, RedisServer};
use common::{expect_error, tool, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// What keeps a busy node's Redis side alive: the server and a web-only node calling through it.
type RedisSide = Option<(RedisServer, TestApp)>;

/// A node with a provider, a user, items, reads, a job and an SSE client, so every series exists; with
/// `redis-server` installed, it also consumes Redis queues that a second, web-only node (in the
/// same process, so the same metrics registry) sends requests to, so the queue series exist.
async fn busy_app() -> (TestApp, RedisSide) {
    let redis = RedisServer::start_or_skip(Fsync::EverySec).await;
    let url = redis.as_ref().map(|r| r.url());
    let mut flags = vec!["--provider-rate", "50"];
    if let Some(url) = &url {
        flags.extend([
            "--redis",
            url.as_str(),
            "--redis-namespace",
            "observability",
        ]);
    }
    let app = TestApp::spawn_with(&flags).await;
    let redis_side = match (redis, &url) {
        (Some(redis), Some(url)) => {
            let web = TestApp::spawn_with(&[
                "--roles",
                "web",
                "--redis",
                url.as_str(),
                "--redis-namespace",
                "observability",
            ])
            .await;
            // Through Redis: a direct read (app), a durable write (auth register).
            web.get(&format!("/api/v1/items/{}", uuid::Uuid::now_v7()))
                .await;
            web.register("Queue", "queue@example.com").await;
            Some((redis, web))
        }
        _ => None,
    };
    let (uid, token) = app.user("metrics@example.com").await;
    let item = app.create_item(&token, &json!({"title": "metrics"})).await;
    app.get(&format!("/api/v1/items/{}", item["id"].as_str().unwrap()))
        .await;
    app.get(&format!("/info/{uid}")).await;
    app.get("/api/v1/items?q=metrics").await;
    app.get("/nope").await;
    app.get("/api/v1/stats").await;
    // A job, run to the end, so the job series exist.
    let job: serde_json::Value = app
        .post(
            "/api/v1/jobs",
            Some(&token),
            &json!({"kind": "hash", "payload": {"metrics": true}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let job_path = format!("/api/v1/jobs/{}", job["id"].as_str().unwrap());
    for _ in 0..200 {
        let now: serde_json::Value = app.get_auth(&job_path, &token).await.json().await.unwrap();
        if now["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Let the provider insert, the stats role close a second or two and queue depths be sampled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (app, redis_side)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    if !tool("promtool") {
        return;
    }
    let (app, _redis) = busy_app().await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("gorgon_http_request_duration_seconds_bucket"));
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_redis_metric(name: &str) -> bool {
    [
        "gorgon_queue_",
        "gorgon_redis_",
        "gorgon_bus_pending",
        "gorgon_bus_late",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_exported() {
    let names = common::dashboard_metric_names();
    assert!(
        names.len() >= 8,
        "the dashboard uses the node's metrics: {names:?}"
    );
    let (app, redis_side) = busy_app().await;
    let text = app.get("/metrics").await.text().await.unwrap();
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| {
            if redis_side.is_none() && is_redis_metric(name) {
                eprintln!("skipped: {name} needs redis-server, which is not installed");
                return false;
            }
            if name.starts_with("gorgon_cluster_") {
                // Needs nodes in separate processes: checked in tests/cluster.rs.
                return false;
            }
            !common::exports(&text, name)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "named in dashboards/ or deploy/alerts.yml but not exported: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_sees_the_heatmap_drawn() {
    if !tool("chromium") {
        return;
    }
    let app = TestApp::spawn().await;
    // Light load for a few seconds, so several columns of the heatmap fill.
    let (base, client) = (app.base.clone(), app.client.clone());
    let load = tokio::spawn(async move {
        for _ in 0..300 {
            let _ = client.get(format!("{base}/healthz")).send().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let shot = tempfile::tempdir().unwrap();
    let png = shot.path().join("dashboard.png");
    let status = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
            "--virtual-time-budget=3000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            shot.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("{}/dashboard", app.base))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let status = tokio::time::timeout(Duration::from_secs(60), status)
        .await
        .expect("chromium finished")
        .unwrap();
    load.abort();
    assert!(status.success(), "chromium failed: {status:?}");

    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    // The heatmap canvas spans about x 80..1080, y 190..480 at this window size. Its background
    // and labels are greys; drawn cells are saturated blues and ambers.
    let mut coloured = 0;
    for y in 190..480.min(info.height as usize) {
        for x in 80..1080.min(info.width as usize) {
            let at = (y * info.width as usize + x) * channels;
            let (r, g, b) = (
                pixels[at] as i32,
                pixels[at + 1] as i32,
                pixels[at + 2] as i32,
            );
            if r.max(g).max(b) - r.min(g).min(b) > 60 {
                coloured += 1;
            }
        }
    }
    assert!(
        coloured > 200,
        "the heatmap shows drawn cells ({coloured} coloured pixels)"
    );
}

const ANNOTATIONS: &str = "/api/v1/admin/annotations";

/// `GET /api/v1/admin/annotations` as `admin`.
async fn annotations(app: &TestApp, admin: &str) -> Value {
    let resp = app.get_auth(ANNOTATIONS, admin).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("annotations JSON")
}

/// The ids of a list of annotations, in its order.
fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list of annotations")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_are_put_by_admins_shown_in_the_stats_and_bounded() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.user("watcher@example.com").await;
    let now = chrono::Utc::now().timestamp_millis();
    let fault = format!("{ANNOTATIONS}/kill-front-1");
    let started = json!({"text": "kill front-1", "start_ms": now - 5_000});

    // Nobody but an admin puts or lists them.
    for token in [None, Some(user.as_str())] {
        let (status, code) = match token {
            None => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Some(_) => (StatusCode::FORBIDDEN, "forbidden"),
        };
        expect_error(app.put(&fault, token, &started).await, status, code).await;
        let list = match token {
            None => app.get(ANNOTATIONS).await,
            Some(token) => app.get_auth(ANNOTATIONS, token).await,
        };
        expect_error(list, status, code).await;
    }
    let empty = annotations(&app, &admin).await;
    assert_eq!(empty["annotations"], json!([]), "nothing kept: {empty}");
    let capacity = empty["capacity"].as_u64().expect("capacity") as usize;
    assert_eq!(capacity, 256);

    // Put when the fault starts: open, and on the public stats.
    let resp = app.put(&fault, Some(&admin), &started).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let open: Value = resp.json().await.unwrap();
    assert_eq!(open["id"], "kill-front-1");
    assert_eq!(open["text"], "kill front-1");
    assert_eq!(open["start_ms"], now - 5_000);
    assert_eq!(open["end_ms"], Value::Null);
    let stats = app.get_json("/api/v1/stats?last=60").await;
    assert_eq!(stats["annotations"], json!([open.clone()]), "{stats:#}");

    // Put again when it heals: the same annotation, ended, a newer revision.
    let healed = json!({"text": "kill front-1", "start_ms": now - 5_000, "end_ms": now - 1_000});
    let resp = app.put(&fault, Some(&admin), &healed).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ended: Value = resp.json().await.unwrap();
    assert_eq!(ended["end_ms"], now - 1_000);
    assert!(ended["revision"].as_u64() > open["revision"].as_u64());
    let list = annotations(&app, &admin).await;
    assert_eq!(list["annotations"], json!([ended.clone()]));
    let stats = app.get_json("/api/v1/stats").await;
    assert_eq!(stats["annotations"], json!([ended.clone()]));

    // Bad input: a precise 4xx, and nothing kept or changed.
    let long_id = "x".repeat(65);
    let long_text = "é".repeat(121);
    // Every one names its field (422), but a number given as a string (serde names no field).
    let refused: Vec<(String, Value, &str)> = vec![
        (format!("{ANNOTATIONS}/has%20space"), started.clone(), "id"),
        (format!("{ANNOTATIONS}/{long_id}"), started.clone(), "id"),
        (format!("{ANNOTATIONS}/caf%C3%A9"), started.clone(), "id"),
        (format!("{ANNOTATIONS}/a%2Fb"), started.clone(), "id"),
        (fault.clone(), json!({"text": "", "start_ms": now}), "text"),
        (
            fault.clone(),
            json!({"text": "   ", "start_ms": now}),
            "text",
        ),
        (
            fault.clone(),
            json!({"text": long_text, "start_ms": now}),
            "text",
        ),
        (
            fault.clone(),
            json!({"text": "two\nlines", "start_ms": now}),
            "text",
        ),
        (
            fault.clone(),
            json!({"text": "bell\u{7}", "start_ms": now}),
            "text",
        ),
        (fault.clone(), json!({"start_ms": now}), "text"),
        (
            fault.clone(),
            json!({"text": "t", "start_ms": now, "end_ms": now - 1}),
            "end_ms",
        ),
        (
            fault.clone(),
            json!({"text": "t", "start_ms": -1}),
            "start_ms",
        ),
        (fault.clone(), json!({"text": "t", "start_ms": "soon"}), ""),
        (fault.clone(), json!({"text": "t"}), "start_ms"),
        (
            fault.clone(),
            json!({"text": "t", "start_ms": now, "colour": "red"}),
            "colour",
        ),
    ];
    for (path, body, field) in refused {
        let resp = app.put(&path, Some(&admin), &body).await;
        let answer = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
        if !field.is_empty() {
            assert_eq!(answer["error"]["field"], field, "{path} {body}: {answer}");
        }
    }
    let malformed = app
        .client
        .put(app.url(&fault))
        .bearer_auth(&admin)
        .header("Content-Type", "application/json")
        .body("{\"text\": ")
        .send()
        .await
        .unwrap();
    expect_error(malformed, StatusCode::BAD_REQUEST, "bad_request").await;
    let list = annotations(&app, &admin).await;
    assert_eq!(
        list["annotations"],
        json!([ended.clone()]),
        "nothing changed"
    );

    // The stats carry the annotations of their window only; the list has them all.
    let old = json!({"text": "an old drill", "start_ms": now - 600_000, "end_ms": now - 590_000});
    let resp = app
        .put(&format!("{ANNOTATIONS}/old-drill"), Some(&admin), &old)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let stats = app.get_json("/api/v1/stats?last=60").await;
    assert_eq!(ids(&stats["annotations"]), ["kill-front-1"]);
    let stats = app.get_json("/api/v1/stats?last=3600").await;
    assert_eq!(
        ids(&stats["annotations"]),
        ["old-drill", "kill-front-1"],
        "by start"
    );
    let list = annotations(&app, &admin).await;
    assert_eq!(ids(&list["annotations"]), ["old-drill", "kill-front-1"]);

    // Bounded: `capacity` more puts push out the two put first; one more, the next oldest.
    for n in 0..capacity {
        let body = json!({"text": format!("step {n}"), "start_ms": now + n as i64});
        let resp = app
            .put(&format!("{ANNOTATIONS}/step-{n}"), Some(&admin), &body)
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "step {n}");
    }
    let list = annotations(&app, &admin).await;
    let kept = ids(&list["annotations"]);
    assert_eq!(kept.len(), capacity);
    assert_eq!(kept.first().map(String::as_str), Some("step-0"));
    assert_eq!(
        kept.last().map(String::as_str),
        Some(format!("step-{}", capacity - 1).as_str())
    );
    assert!(
        !kept
            .iter()
            .any(|id| id == "kill-front-1" || id == "old-drill"),
        "{kept:?}"
    );
    let body = json!({"text": "one more", "start_ms": now + 10_000});
    let resp = app
        .put(&format!("{ANNOTATIONS}/one-more"), Some(&admin), &body)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let kept = ids(&annotations(&app, &admin).await["annotations"]);
    assert_eq!(kept.len(), capacity);
    assert_eq!(
        kept.first().map(String::as_str),
        Some("step-1"),
        "step-0 went"
    );
    assert_eq!(kept.last().map(String::as_str), Some("one-more"));

    // In the OpenAPI document, behind the bearer scheme.
    let doc = app.get_json("/api/v1/openapi.json").await;
    for (path, method) in [
        (ANNOTATIONS, "get"),
        ("/api/v1/admin/annotations/{id}", "put"),
    ] {
        let operation = &doc["paths"][path][method];
        assert_eq!(operation["security"], json!([{"bearer": []}]), "{path}");
        assert!(operation["responses"]["403"].is_object(), "{path}");
    }
    assert!(doc["components"]["schemas"]["Annotation"].is_object());
    assert!(doc["components"]["schemas"]["NodeStats"]["properties"]["annotations"].is_object());
}
