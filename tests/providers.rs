//! External providers over real HTTP: signed ingest (good, bad, missing, expired signatures;
//! invalid items; all or nothing) and signed webhooks to a real local HTTP server that fails the
//! first attempts, proving the retries.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestApp;
use gorgon::providers::{sign, verify, SIGNATURE_HEADER};
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "acme-secret-0123456789";

async fn post_signed(
    app: &TestApp,
    provider: &str,
    body: &Value,
    signature: Option<String>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(&format!("/api/v1/providers/{provider}/ingest")))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    request.send().await.expect("ingest request")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_ingest_stores_items_and_refuses_the_rest() {
    let secret_flag = format!("acme={SECRET}");
    let app = TestApp::spawn_with(&["--provider-secret", &secret_flag]).await;
    let (uid, _) = app.user("ada@example.com").await;
    let body = json!({"items": [
        {"user_id": uid, "title": "from acme", "keywords": ["wire"]},
        {"user_id": uid, "title": "second", "body": "more"},
    ]});
    let bytes = body.to_string();
    let resp = post_signed(
        &app,
        "acme",
        &body,
        Some(sign(SECRET.as_bytes(), now(), bytes.as_bytes())),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let stored: Value = resp.json().await.expect("json");
    assert_eq!(stored["inserted"], 2);
    let first = stored["ids"][0].as_str().expect("id");
    let item: Value = app
        .get(&format!("/api/v1/items/{first}"))
        .await
        .json()
        .await
        .expect("item");
    assert_eq!(item["title"], "from acme");
    assert_eq!(item["user_id"], uid.as_str());

    let listed = || async {
        let items: Value = app
            .get(&format!("/api/v1/users/{uid}/items"))
            .await
            .json()
            .await
            .expect("list");
        items["items"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(usize::MAX)
    };
    assert_eq!(listed().await, 2);
    // Refused, each with a 401, and nothing stored.
    let other = json!({"items": [{"user_id": uid, "title": "forged"}]});
    let other_bytes = other.to_string();
    for signature in [
        None,
        Some(sign(
            b"not-the-secret-at-all",
            now(),
            other_bytes.as_bytes(),
        )),
        Some(sign(SECRET.as_bytes(), now(), bytes.as_bytes())), // signs another body
        Some(sign(
            SECRET.as_bytes(),
            now() - 3600,
            other_bytes.as_bytes(),
        )), // a replay
        Some("t=abc,v1=00".to_string()),
    ] {
        let resp = post_signed(&app, "acme", &other, signature.clone()).await;
        common::expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let unknown = post_signed(
        &app,
        "globex",
        &other,
        Some(sign(SECRET.as_bytes(), now(), other_bytes.as_bytes())),
    )
    .await;
    common::expect_error(unknown, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let unnamable = post_signed(
        &app,
        "Not%20A%20Name",
        &other,
        Some(sign(SECRET.as_bytes(), now(), other_bytes.as_bytes())),
    )
    .await;
    common::expect_error(unnamable, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Well signed but invalid: a 422 naming the item and field; nothing of the batch stored.
    let invalid =
        json!({"items": [{"user_id": uid, "title": "fine"}, {"user_id": uid, "title": ""}]});
    let invalid_bytes = invalid.to_string();
    let resp = post_signed(
        &app,
        "acme",
        &invalid,
        Some(sign(SECRET.as_bytes(), now(), invalid_bytes.as_bytes())),
    )
    .await;
    let error = common::expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
    assert!(
        error["error"]["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("items[1].")),
        "{error}"
    );
    let nobody = json!({"items": [{"user_id": uuid::Uuid::now_v7(), "title": "orphan"}]});
    let nobody_bytes = nobody.to_string();
    let resp = post_signed(
        &app,
        "acme",
        &nobody,
        Some(sign(SECRET.as_bytes(), now(), nobody_bytes.as_bytes())),
    )
    .await;
    common::expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
    assert_eq!(listed().await, 2, "refused batches stored nothing");
}

/// One request received by the webhook server.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP/1.1 server on a loopback port that answers 500 to its first `failures` requests
/// and 204 afterwards, recording each.
async fn webhook_server(failures: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
            let headers: Vec<(String, String)> = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buffer.len() < head_end + length {
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = buffer[head_end..].to_vec();
            let count = {
                let mut log = log.lock();
                log.push(Received { headers, body });
                log.len()
            };
            let status = if count <= failures {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            let response =
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried_until_delivered() {
    let (target, received) = webhook_server(2).await;
    let (dead_target, _) = ("http://127.0.0.1:9/nobody-listens".to_string(), ());
    let app = TestApp::spawn_with(&[
        "--webhook",
        &target,
        "--webhook",
        &dead_target,
        "--webhook-secret",
        "hook-secret-0123456789",
        "--webhook-retry-base",
        "50ms",
    ])
    .await;
    let (_, token) = app.user("hooks@example.com").await;
    let item = app.create_item(&token, &json!({"title": "hooked"})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Two refusals, then the delivery; the dead target beside it changes nothing.
    while received.lock().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries: {:?}",
            received.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deliveries = received.lock().clone();
    for (n, delivery) in deliveries.iter().take(3).enumerate() {
        assert_eq!(delivery.header("X-Gorgon-Event"), Some("item.created"));
        assert_eq!(
            delivery.header("X-Gorgon-Attempt"),
            Some((n + 1).to_string().as_str())
        );
        verify(
            b"hook-secret-0123456789",
            delivery.header(SIGNATURE_HEADER),
            &delivery.body,
            now(),
            300,
        )
        .expect("a valid signature");
        let event: Value = serde_json::from_slice(&delivery.body).expect("JSON event");
        assert_eq!(event["subject_id"], item["id"]);
    }
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("gorgon_webhook_retries_total"),
        "retries are counted"
    );
}
