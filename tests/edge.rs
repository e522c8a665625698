//! The HTTP edge under abuse, over real sockets: replayed signed ingest, HEAD probes and the
//! bearer scheme's case, slow request bodies, and per-user quotas.

mod common;

use std::time::Duration;

use common::{expect_error, TestApp};
use gorgon::providers::{sign, SIGNATURE_HEADER};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "acme-secret-0123456789";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn ingest(app: &TestApp, body: &str, signature: String) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/providers/acme/ingest"))
        .header("Content-Type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_string())
        .send()
        .await
        .expect("ingest request")
}

async fn item_count(app: &TestApp, uid: &str) -> usize {
    let page = app
        .get_json(&format!("/api/v1/users/{uid}/items?limit=100"))
        .await;
    page["items"].as_array().map(Vec::len).unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_ingest_is_refused_and_a_fresh_signature_accepted() {
    let secret_flag = format!("acme={SECRET}");
    let app = TestApp::spawn_with(&["--provider-secret", &secret_flag]).await;
    let (uid, _) = app.user("ada@example.com").await;
    let body = json!({"items": [{"user_id": uid, "title": "once"}]}).to_string();
    let signature = sign(SECRET.as_bytes(), now(), body.as_bytes());
    let first = ingest(&app, &body, signature.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    // The very same request again, twice: refused, nothing stored.
    for _ in 0..2 {
        let replay = ingest(&app, &body, signature.clone()).await;
        expect_error(replay, StatusCode::CONFLICT, "conflict").await;
    }
    // The same tag spelled in upper-case hex is the same signature.
    let (stamp, tag) = signature.split_once(",v1=").expect("t=..,v1=..");
    let shouted = format!("{stamp},v1={}", tag.to_uppercase());
    expect_error(
        ingest(&app, &body, shouted).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert_eq!(item_count(&app, &uid).await, 1, "a replay stored nothing");
    // The same body signed anew (another timestamp) is a new request: accepted.
    let fresh = sign(SECRET.as_bytes(), now() - 1, body.as_bytes());
    assert_ne!(fresh, signature);
    let resp = ingest(&app, &body, fresh).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(item_count(&app, &uid).await, 2);
}

/// Sends raw bytes on a new connection and reads until the server closes it.
async fn raw_exchange(app: &TestApp, request: &str) -> String {
    let addr = app.base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .expect("read answer");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_probes_get_200_without_a_body() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz"] {
        let answer = raw_exchange(
            &app,
            &format!("HEAD {path} HTTP/1.1\r\nHost: gorgon\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "HEAD {path}: {answer}");
        let (_, body) = answer.split_once("\r\n\r\n").expect("a head");
        assert!(body.is_empty(), "HEAD {path} sent a body: {body:?}");
        // GET still has its body.
        assert_eq!(app.get(path).await.status(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::spawn().await;
    let (uid, token) = app.user("grace@example.com").await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = app
            .client
            .get(app.url(&format!("/api/v1/users/{uid}")))
            .header("Authorization", format!("{scheme} {token}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::OK, "scheme {scheme}");
    }
    for header in [format!("Basic {token}"), format!("Bearer{token}"), token] {
        let resp = app
            .client
            .get(app.url(&format!("/api/v1/users/{uid}")))
            .header("Authorization", header.clone())
            .send()
            .await
            .expect("request");
        expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}
