//! SSE: a real client on a real socket receives the events of writes made through the API, and
//! resumes with Last-Event-ID.

mod common;

use std::time::Duration;

use common::TestApp;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Reads SSE frames until `n` non-comment events arrived (or a timeout).
async fn read_events(resp: reqwest::Response, n: usize) -> Vec<(u64, String, Value)> {
    let mut stream = resp.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events arrive in time")
            .expect("stream open")
            .expect("chunk");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut id = 0;
            let mut kind = String::new();
            let mut data = Value::Null;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().unwrap();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).unwrap();
                }
            }
            if !kind.is_empty() {
                events.push((id, kind, data));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_item_events_and_resumes() {
    let app = TestApp::spawn().await;
    let (ada, token) = app.user("ada@example.com").await;
    let (_, bob_token) = app.user("bob@example.com").await;

    // Streams are for authenticated clients only.
    let anonymous = app.get("/api/v1/events").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let all = app.get_auth("/api/v1/events", &token).await;
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(all.headers()["content-type"], "text/event-stream");
    let only_ada = app
        .get_auth(
            &format!("/api/v1/events?topic=items&user_id={ada}"),
            &bob_token,
        )
        .await;

    let item = app.create_item(&token, &json!({"title": "first"})).await;
    app.create_item(&bob_token, &json!({"title": "bob"})).await;
    let path = format!("/api/v1/items/{}", item["id"].as_str().unwrap());
    app.patch(&path, &token, &json!({"title": "changed"})).await;
    app.delete(&path, &token).await;

    let events = read_events(all, 4).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "item.created",
            "item.created",
            "item.updated",
            "item.deleted"
        ]
    );
    assert_eq!(events[0].2["data"]["title"], "first");
    assert_eq!(events[2].2["data"]["title"], "changed");
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");

    let ada_events = read_events(only_ada, 3).await;
    assert!(ada_events.iter().all(|e| e.2["user_id"] == ada.as_str()));

    // Resume after the first event: the three later ones are replayed.
    let resumed = app
        .client
        .get(app.url("/api/v1/events"))
        .bearer_auth(&token)
        .header("Last-Event-ID", events[0].0.to_string())
        .send()
        .await
        .unwrap();
    let replayed = read_events(resumed, 3).await;
    let ids: Vec<u64> = replayed.iter().map(|e| e.0).collect();
    assert_eq!(ids, events[1..].iter().map(|e| e.0).collect::<Vec<_>>());

    let bad = app
        .client
        .get(app.url("/api/v1/events"))
        .bearer_auth(&token)
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad = app.get_auth("/api/v1/events?topic=weather", &token).await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// Reads WebSocket text messages until `n` events arrived (at most 10 s).
async fn ws_events<S>(socket: &mut S, n: usize) -> Vec<Value>
where
    S: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < n {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("messages arrive in time")
            .expect("socket open")
            .expect("a message");
        if let WsMessage::Text(text) = message {
            events.push(serde_json::from_str(text.as_str()).expect("JSON message"));
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_streams_item_events() {
    let app = TestApp::spawn().await;
    let (ada, token) = app.user("ada@example.com").await;
    let ws_url = app.base.replace("http://", "ws://");

    // Without a token the upgrade is refused with the API's 401.
    let refused = app.get("/api/v1/ws").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let mut request = format!("{ws_url}/api/v1/ws?topic=items&user_id={ada}")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade");

    let item = app.create_item(&token, &json!({"title": "over ws"})).await;
    let path = format!("/api/v1/items/{}", item["id"].as_str().unwrap());
    app.delete(&path, &token).await;
    let events = ws_events(&mut socket, 2).await;
    assert_eq!(events[0]["event"], "item.created");
    assert_eq!(events[0]["data"]["data"]["title"], "over ws");
    assert_eq!(events[1]["event"], "item.deleted");
    assert!(events[1]["id"].as_u64() > events[0]["id"].as_u64());
    socket.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_client_is_dropped_and_slows_nobody() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(&["--client-buffer", "16"]).await;
    let (_, token) = app.user("ada@example.com").await;
    let fast = app.get_auth("/api/v1/events", &token).await;
    assert_eq!(fast.status(), StatusCode::OK);
    // A client that subscribes and then never reads: once the socket's buffers are full, the
    // node cannot send it anything more.
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stuck = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stuck.write_all(request.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Big events, so the stuck socket's buffers fill well before the writes end.
    let body = "x".repeat(60_000);
    let writes = 200;
    let started = std::time::Instant::now();
    let fast_reader = tokio::spawn(read_events(fast, writes));
    for n in 0..writes {
        let resp = app
            .post(
                "/api/v1/items",
                Some(&token),
                &json!({"title": format!("big {n}"), "body": body}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let wrote_in = started.elapsed();
    // The fast client got every event, in order.
    let events = fast_reader.await.expect("fast reader");
    assert_eq!(events.len(), writes);
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0));
    // The stuck client was dropped, with a reason at the end of what it was sent.
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stuck.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.contains("event: lagged") && text.contains("client too slow"),
        "the stuck client is told why it is dropped ({} bytes received)",
        received.len()
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gorgon_notify_clients_dropped_total{reason=\"lagged\"}")),
        "the drop is counted"
    );
    eprintln!("{writes} writes of 60 kB events with a stuck client attached: {wrote_in:?}");
}
