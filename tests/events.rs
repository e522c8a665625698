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

/// One SSE frame: its id (0 when it has none), event name and JSON data.
type Frame = (u64, String, Value);

/// An SSE response read frame by frame.
struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            stream: resp.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next non-comment frame (panics after 10 s).
    async fn next(&mut self) -> Frame {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
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
                    return (id, kind, data);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("events arrive in time")
                .expect("stream open")
                .expect("chunk");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every frame up to and including the first that `last` accepts (panics after 10 s each).
    async fn until(&mut self, last: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            let done = last(&frame);
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }
}

/// Reads SSE frames until `n` non-comment events arrived (or a timeout).
async fn read_events(resp: reqwest::Response, n: usize) -> Vec<Frame> {
    let mut reader = SseReader::new(resp);
    let mut events = Vec::new();
    while events.len() < n {
        events.push(reader.next().await);
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

/// The WebSocket stream of `path`, opened with `token` and, when given, a `Last-Event-ID` header.
async fn ws_connect(
    app: &TestApp,
    path: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let url = format!("{}{path}", app.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    if let Some(id) = last_event_id {
        request
            .headers_mut()
            .insert("Last-Event-ID", id.parse().expect("header"));
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The HTTP status a refused WebSocket upgrade was answered with.
fn refused_with(
    result: Result<impl Sized, tokio_tungstenite::tungstenite::Error>,
) -> Option<StatusCode> {
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            Some(StatusCode::from_u16(resp.status().as_u16()).expect("status"))
        }
        _ => None,
    }
}

/// WebSocket messages up to and including the first that `last` accepts (at most 10 s each).
async fn ws_until<S>(socket: &mut S, last: impl Fn(&Value) -> bool) -> Vec<Value>
where
    S: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut events = Vec::new();
    loop {
        let event = ws_events(socket, 1).await.remove(0);
        let done = last(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}

/// Whether an SSE frame or a WebSocket message (as text) mentions `needle` anywhere.
fn mentions(frames: &[impl std::fmt::Debug], needle: &str) -> bool {
    frames.iter().any(|f| format!("{f:?}").contains(needle))
}

/// Job events go to the job's owner and to admins only: live and replayed, over SSE and over
/// WebSocket, whatever `user_id` the query names. Item events stay public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_reach_only_their_owner_and_admins() {
    let app = TestApp::spawn().await;
    let (ada, ada_token) = app.user("ada@example.com").await;
    let (_, bob_token) = app.user("bob@example.com").await;
    let admin = app.admin_token().await;

    let mut bob_sse = SseReader::new(app.get_auth("/api/v1/events", &bob_token).await);
    let mut bob_ws = ws_connect(&app, "/api/v1/ws", &bob_token, None)
        .await
        .expect("upgrade");
    let mut ada_sse = SseReader::new(app.get_auth("/api/v1/events?topic=jobs", &ada_token).await);
    let mut admin_sse = SseReader::new(
        app.get_auth(&format!("/api/v1/events?topic=jobs&user_id={ada}"), &admin)
            .await,
    );
    // A first item of Bob's: the resume point of the replays below.
    let start = app
        .create_item(&bob_token, &json!({"title": "start"}))
        .await;
    let start_id = start["id"].as_str().unwrap().to_string();
    let start_event_id = bob_sse.next().await.0;
    let started = ws_events(&mut bob_ws, 1).await;
    assert_eq!(started[0]["data"]["subject_id"], start_id.as_str());

    // Ada's job, with an idempotency key, runs to done.
    let resp = app
        .client
        .post(app.url("/api/v1/jobs"))
        .bearer_auth(&ada_token)
        .header("Idempotency-Key", "ada-secret-key")
        .json(&json!({"kind": "hash", "payload": {"secret": 1}}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job_id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let is_done = |f: &Frame| f.1 == "job.done" && f.2["subject_id"] == job_id.as_str();
    let owner_saw = ada_sse.until(is_done).await;
    assert!(
        mentions(&owner_saw, "ada-secret-key"),
        "the owner sees her key"
    );
    assert!(mentions(&owner_saw, "\"result\""), "and the result");
    let admin_saw = admin_sse.until(is_done).await;
    assert!(mentions(&admin_saw, "ada-secret-key"), "an admin sees all");

    // Then an item of Bob's: in the node's stream it comes after every event of Ada's job.
    let after = app
        .create_item(&bob_token, &json!({"title": "after"}))
        .await;
    let after_id = after["id"].as_str().unwrap().to_string();
    let bob_saw = bob_sse
        .until(|f| f.2["subject_id"] == after_id.as_str())
        .await;
    assert!(
        !bob_saw.iter().any(|f| f.1.starts_with("job.")) && !mentions(&bob_saw, &job_id),
        "Bob's SSE stream carries none of Ada's job events: {bob_saw:?}"
    );
    let bob_ws_saw = ws_until(&mut bob_ws, |m| {
        m["data"]["subject_id"] == after_id.as_str()
    })
    .await;
    assert!(
        !mentions(&bob_ws_saw, &job_id) && !mentions(&bob_ws_saw, "ada-secret-key"),
        "Bob's WebSocket carries none of Ada's job events: {bob_ws_saw:?}"
    );

    // Replayed with Last-Event-ID: the same.
    let replay = resume_sse(
        &app,
        "/api/v1/events",
        &bob_token,
        &start_event_id.to_string(),
    )
    .await;
    let bob_replayed = SseReader::new(replay)
        .until(|f| f.2["subject_id"] == after_id.as_str())
        .await;
    assert_eq!(
        bob_replayed.len(),
        1,
        "only Bob's later item: {bob_replayed:?}"
    );
    assert!(
        !mentions(&bob_replayed, &job_id),
        "Bob's SSE replay carries none of Ada's job events: {bob_replayed:?}"
    );
    let mut bob_ws_replay = ws_connect(
        &app,
        "/api/v1/ws",
        &bob_token,
        Some(&start_event_id.to_string()),
    )
    .await
    .expect("upgrade");
    let bob_ws_replayed = ws_until(&mut bob_ws_replay, |m| {
        m["data"]["subject_id"] == after_id.as_str()
    })
    .await;
    assert_eq!(
        bob_ws_replayed.len(),
        1,
        "only Bob's later item: {bob_ws_replayed:?}"
    );
    assert!(
        !mentions(&bob_ws_replayed, &job_id),
        "Bob's WebSocket replay carries none of Ada's job events: {bob_ws_replayed:?}"
    );
    let replay = resume_sse(
        &app,
        "/api/v1/events?topic=jobs",
        &ada_token,
        &start_event_id.to_string(),
    )
    .await;
    let ada_replayed = SseReader::new(replay).until(is_done).await;
    assert!(
        mentions(&ada_replayed, "ada-secret-key"),
        "the owner's replay"
    );

    // Naming Ada in the query changes nothing for Bob: a 403, as for GET /api/v1/jobs/{id}.
    let snoop = format!("/api/v1/events?topic=jobs&user_id={ada}");
    let resp = app.get_auth(&snoop, &bob_token).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = app
        .get_auth(&format!("/api/v1/jobs/{job_id}"), &bob_token)
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let snoop_ws = format!("/api/v1/ws?topic=jobs&user_id={ada}");
    assert_eq!(
        refused_with(ws_connect(&app, &snoop_ws, &bob_token, None).await),
        Some(StatusCode::FORBIDDEN)
    );
    // Ada's items are public, to Bob too.
    let resp = app
        .get_auth(
            &format!("/api/v1/events?topic=items&user_id={ada}"),
            &bob_token,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // And anonymous clients get nothing without a token.
    assert_eq!(app.get(&snoop).await.status(), StatusCode::UNAUTHORIZED);
}

/// An SSE stream resumed from `last_event_id` (a raw header value).
async fn resume_sse(
    app: &TestApp,
    path: &str,
    token: &str,
    last_event_id: &str,
) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .header("Last-Event-ID", last_event_id)
        .send()
        .await
        .expect("request")
}

/// Event ids never repeat across a restart on the same data: a client resuming with an id of the
/// earlier run, an id from the future (`u64::MAX`) or one older than the replay buffer is told
/// so (`lagged`, with an id to resume from) and then gets the new events; garbage is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_resume_across_a_restart() {
    let app = TestApp::spawn().await;
    let (_, token) = app.user("ada@example.com").await;
    let stream = app.get_auth("/api/v1/events", &token).await;
    app.create_item(&token, &json!({"title": "before the restart"}))
        .await;
    let before = read_events(stream, 1).await;
    let last_before = before[0].0;

    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, &["--event-replay", "2"]).await;
    let token = app.login("ada@example.com", common::PASSWORD).await;

    // An id of the earlier run: a notice, then the new events, numbered above the old ones.
    let mut earlier =
        SseReader::new(resume_sse(&app, "/api/v1/events", &token, &last_before.to_string()).await);
    let mut ahead =
        SseReader::new(resume_sse(&app, "/api/v1/events", &token, &u64::MAX.to_string()).await);
    let mut ws_earlier = ws_connect(&app, "/api/v1/ws", &token, Some(&last_before.to_string()))
        .await
        .expect("upgrade");
    let notice = earlier.next().await;
    assert_eq!(notice.1, "lagged", "{notice:?}");
    assert!(
        notice.2["reason"].as_str().unwrap().contains("earlier run"),
        "{notice:?}"
    );
    let notice = ahead.next().await;
    assert_eq!(notice.1, "lagged", "{notice:?}");
    assert!(
        notice.2["reason"].as_str().unwrap().contains("ahead"),
        "{notice:?}"
    );
    let restart_position = notice.0;
    let ws_notice = ws_events(&mut ws_earlier, 1).await.remove(0);
    assert_eq!(ws_notice["event"], "lagged", "{ws_notice}");
    assert_eq!(ws_notice["id"].as_u64(), Some(restart_position));

    let item = app
        .create_item(&token, &json!({"title": "after the restart"}))
        .await;
    let after = earlier.next().await;
    assert_eq!(
        (after.1.as_str(), &after.2["subject_id"]),
        ("item.created", &item["id"])
    );
    assert!(
        after.0 > last_before,
        "ids grow across the restart: {} then {}",
        last_before,
        after.0
    );
    assert!(after.0 < 1 << 53, "ids are exact as JSON numbers");
    assert_eq!(
        ahead.next().await.0,
        after.0,
        "u64::MAX no longer mutes the stream"
    );
    let ws_after = ws_events(&mut ws_earlier, 1).await.remove(0);
    assert_eq!(ws_after["id"].as_u64(), Some(after.0));

    // The notice's id is a position this run resumes from without a notice.
    let resumed = read_events(
        resume_sse(
            &app,
            "/api/v1/events",
            &token,
            &restart_position.to_string(),
        )
        .await,
        1,
    )
    .await;
    assert_eq!(resumed[0].0, after.0);

    // Older than the replay buffer (two events here): still the notice of old.
    for n in 0..3 {
        app.create_item(&token, &json!({"title": format!("more {n}")}))
            .await;
    }
    let old = read_events(
        resume_sse(&app, "/api/v1/events", &token, &after.0.to_string()).await,
        1,
    )
    .await;
    assert_eq!(old[0].1, "lagged");
    assert!(old[0].2["reason"]
        .as_str()
        .unwrap()
        .contains("older than the replay buffer"));
    assert!(old[0].0 > after.0 + 2, "resume from the newest: {old:?}");

    // Garbage is a 400, and changes nothing.
    for garbage in ["abc", "-1", "1.5", "", "18446744073709551616", "0x10"] {
        let resp = resume_sse(&app, "/api/v1/events", &token, garbage).await;
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "Last-Event-ID: {garbage:?}"
        );
    }
    let resp = app
        .get_auth("/api/v1/events?last_event_id=abc", &token)
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        refused_with(ws_connect(&app, "/api/v1/ws", &token, Some("abc")).await),
        Some(StatusCode::BAD_REQUEST)
    );
}
