//! Jobs, black-box: a real node over a real store, real HTTP. Submission, idempotency, bad
//! input, retries to `dead`, the admin's listing and retry, retention, job events over SSE, and
//! crash-resume of the real binary killed with SIGKILL in the middle of a burst.

mod common;

use std::time::{Duration, Instant};

use common::process::GorgonProcess;
use common::{expect_error, TestApp};
use futures::StreamExt;
use gorgon::jobs::{JobError, JobHandler, JobRegistry};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A kind that always fails, to drive a job to `dead`.
struct AlwaysFails;

#[async_trait::async_trait]
impl JobHandler for AlwaysFails {
    fn kind(&self) -> &'static str {
        "always_fails"
    }
    async fn run(&self, _payload: &Value) -> Result<Value, JobError> {
        Err(JobError::new("this kind never works"))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn submit(app: &TestApp, token: &str, body: &Value, key: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/api/v1/jobs"))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    req.send().await.expect("request")
}

/// Polls a job until it is in `state` (panics after 10 s).
async fn wait_for(app: &TestApp, token: &str, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = app.get_auth(&format!("/api/v1/jobs/{id}"), token).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let job: Value = resp.json().await.expect("job json");
        if job["state"] == state {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never reached {state}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn jobs_in(app: &TestApp, admin: &str, state: &str) -> Vec<Value> {
    let resp = app
        .get_auth(&format!("/api/v1/jobs?state={state}&limit=100"), admin)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.expect("page json");
    page["jobs"].as_array().expect("jobs").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_job_runs_to_done_with_the_payloads_sha256() {
    let app = TestApp::spawn().await;
    let (user_id, token) = app.user("ada@example.com").await;
    let (_, other) = app.user("bob@example.com").await;
    let payload = json!({"a": 1, "b": ["x", {"c": true}]});
    let resp = submit(
        &app,
        &token,
        &json!({"kind": "hash", "payload": payload}),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/jobs/{id}"));
    assert_eq!(job["state"], "queued");
    assert_eq!(job["kind"], "hash");
    assert_eq!(job["user_id"], user_id.as_str());
    assert_eq!(job["attempts"], 0);

    let done = wait_for(&app, &token, &id, "done").await;
    assert_eq!(
        done["result"]["sha256"],
        sha256_hex(br#"{"a":1,"b":["x",{"c":true}]}"#)
    );
    assert_eq!(done["attempts"], 1);
    assert!(done["error"].is_null());
    assert!(done["created_at"].is_string() && done["updated_at"].is_string());

    // Only the owner and admins see it.
    let resp = app.get_auth(&format!("/api/v1/jobs/{id}"), &other).await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let admin = app.admin_token().await;
    let resp = app.get_auth(&format!("/api/v1/jobs/{id}"), &admin).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app.get("/api/v1/jobs/{id}").await;
    assert!(resp.status().is_client_error());
    let resp = app
        .get_auth(&format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()), &token)
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_job_and_refuses_a_different_one() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user("ada@example.com").await;
    let (_, bob) = app.user("bob@example.com").await;
    let body = json!({"kind": "hash", "payload": {"order": 42}});
    let first = submit(&app, &token, &body, Some("order-42")).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = submit(&app, &token, &body, Some("order-42")).await;
    assert_eq!(again.status(), StatusCode::OK, "a repeat answers 200");
    assert!(again.headers().contains_key("location"));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let different = json!({"kind": "hash", "payload": {"order": 43}});
    let resp = submit(&app, &token, &different, Some("order-42")).await;
    expect_error(resp, StatusCode::CONFLICT, "conflict").await;

    // Keys belong to their user.
    let theirs = submit(&app, &bob, &body, Some("order-42")).await;
    assert_eq!(theirs.status(), StatusCode::ACCEPTED);
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_and_create_nothing() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user("ada@example.com").await;
    let admin = app.admin_token().await;

    for payload in [json!([1, 2]), json!("text"), json!(7), Value::Null] {
        let resp = submit(
            &app,
            &token,
            &json!({"kind": "hash", "payload": payload}),
            None,
        )
        .await;
        let body = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
        assert_eq!(body["error"]["field"], "payload");
    }
    let resp = submit(
        &app,
        &token,
        &json!({"kind": "teleport", "payload": {}}),
        None,
    )
    .await;
    let body = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
    assert_eq!(body["error"]["field"], "kind");
    assert!(body["error"]["message"].as_str().unwrap().contains("hash"));
    let resp = submit(&app, &token, &json!({"payload": {}}), None).await;
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
    let resp = submit(
        &app,
        &token,
        &json!({"kind": "hash", "payload": {}, "x": 1}),
        None,
    )
    .await;
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;

    let long = "k".repeat(201);
    for key in ["", long.as_str(), "has space", "tab\tkey"] {
        let resp = submit(
            &app,
            &token,
            &json!({"kind": "hash", "payload": {}}),
            Some(key),
        )
        .await;
        expect_error(resp, StatusCode::BAD_REQUEST, "bad_request").await;
    }
    let resp = app
        .client
        .post(app.url("/api/v1/jobs"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"kind\": \"hash\", \"payload\": ")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "bad_request").await;
    let resp = app
        .post(
            "/api/v1/jobs",
            None,
            &json!({"kind": "hash", "payload": {}}),
        )
        .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    for state in ["queued", "running", "done", "failed", "dead"] {
        assert!(
            jobs_in(&app, &admin, state).await.is_empty(),
            "a {state} job was created"
        );
    }
    let resp = app.get_auth("/api/v1/jobs?state=lost", &admin).await;
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
    let resp = app.get_auth("/api/v1/jobs", &admin).await;
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_ends_dead_and_an_admin_retries_it() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = JobRegistry::default().register(AlwaysFails);
    let app = TestApp::spawn_jobs(
        dir,
        &["--job-max-attempts", "3", "--job-retry-base", "10ms"],
        jobs,
    )
    .await;
    let (_, token) = app.user("ada@example.com").await;
    let admin = app.admin_token().await;
    let resp = submit(
        &app,
        &token,
        &json!({"kind": "always_fails", "payload": {"n": 1}}),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let dead = wait_for(&app, &token, &id, "dead").await;
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["error"], "this kind never works");
    assert!(dead["result"].is_null());

    let listed = jobs_in(&app, &admin, "dead").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    let resp = app.get_auth("/api/v1/jobs?state=dead", &token).await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = app
        .post(
            &format!("/api/v1/jobs/{id}/retry"),
            Some(&token),
            &json!({}),
        )
        .await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;

    let resp = app
        .post(
            &format!("/api/v1/jobs/{id}/retry"),
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let retried: Value = resp.json().await.unwrap();
    assert_eq!(retried["state"], "queued");
    assert_eq!(retried["attempts"], 0);
    // It runs again, and dies again after three more attempts.
    let dead = wait_for(&app, &token, &id, "dead").await;
    assert_eq!(dead["attempts"], 3);

    // A done job is not retried.
    let resp = submit(&app, &token, &json!({"kind": "hash", "payload": {}}), None).await;
    let done_id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&app, &token, &done_id, "done").await;
    let resp = app
        .post(
            &format!("/api/v1/jobs/{done_id}/retry"),
            Some(&admin),
            &json!({}),
        )
        .await;
    expect_error(resp, StatusCode::CONFLICT, "conflict").await;
    let resp = app
        .post(
            &format!("/api/v1/jobs/{}/retry", uuid::Uuid::now_v7()),
            Some(&admin),
            &json!({}),
        )
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_purged_after_the_retention() {
    let app = TestApp::spawn_with(&["--job-retention", "300ms"]).await;
    let (_, token) = app.user("ada@example.com").await;
    let resp = submit(
        &app,
        &token,
        &json!({"kind": "hash", "payload": {"old": true}}),
        None,
    )
    .await;
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&app, &token, &id, "done").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = app.get_auth(&format!("/api/v1/jobs/{id}"), &token).await;
        if resp.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the finished job was never purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_stream_over_sse() {
    let app = TestApp::spawn().await;
    let (user_id, token) = app.user("ada@example.com").await;
    let stream = app
        .get_auth(
            &format!("/api/v1/events?topic=jobs&user_id={user_id}"),
            &token,
        )
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    let resp = submit(&app, &token, &json!({"kind": "hash", "payload": {}}), None).await;
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut body = stream.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("event: job.done") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("job events arrive")
            .expect("stream open")
            .expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let queued = text.find("event: job.queued").expect("job.queued");
    let running = text.find("event: job.running").expect("job.running");
    assert!(queued < running && running < text.find("event: job.done").unwrap());
    assert!(text.contains(&id));
    assert!(!text.contains("event: item."));
}

// ---- crash-resume: the real binary, SIGKILL ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_jobs_running_loses_none_and_leases_reclaim_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    // Each hash takes 40 ms and 8 run at once: 200 jobs need a second of work, so the kill
    // lands with jobs queued and running. A short lease brings the running ones back quickly.
    let flags = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &data,
        "--job-workers",
        "8",
        "--job-hash-delay",
        "40ms",
        "--job-lease",
        "1s",
        "--job-timeout",
        "500ms",
    ];
    let mut node = GorgonProcess::spawn(&flags, &[]);
    let base = node.base();
    let client = Client::new();
    let (_, token) = common::register_and_login(&client, &base, "jobs@example.com").await;

    // Submissions keep going while the process is killed: those in flight then get no 202 and
    // are not counted; every one that got a 202 must be done in the end.
    let burst = common::JobBurst::start(&client, &base, &token, 300);
    burst.wait_acknowledged(200, Duration::from_secs(20)).await;
    node.kill9();
    let accepted = burst.finish().await;
    assert!(
        accepted.len() >= 200 && accepted.len() < 300,
        "{}",
        accepted.len()
    );

    let mut restarted = GorgonProcess::spawn(&flags, &[]);
    let base = restarted.base();
    let retried =
        common::wait_all_done(&client, &base, &token, &accepted, Duration::from_secs(40)).await;
    restarted.kill9();
    eprintln!(
        "{} acknowledged jobs done after SIGKILL; {retried} were claimed again after their lease ended",
        accepted.len()
    );
    assert!(retried > 0, "the kill should have caught some jobs running");
}
