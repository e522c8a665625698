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

// ---- slow bodies, connection caps, open files --------------------------------------------------

/// Open file descriptors and resident memory (kB) of process `pid`.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// A POST declaring a 200 kB body (or a chunked one), then sending one byte every `every` until
/// the server answers (or closes); returns what it answered (empty if it closed without a word).
async fn slow_body(addr: String, every: Duration, chunked: bool) -> String {
    let mut socket = TcpStream::connect(&addr).await.expect("connect");
    let (framing, tick): (&str, &[u8]) = if chunked {
        ("Transfer-Encoding: chunked", b"1\r\n \r\n")
    } else {
        ("Content-Length: 200000", b" ")
    };
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: gorgon\r\nContent-Type: application/json\r\n\
         {framing}\r\n\r\n"
    );
    if socket.write_all(head.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        tokio::select! {
            read = socket.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            },
            _ = tokio::time::sleep(every) => {
                if socket.write_all(tick).await.is_err() {
                    // The server closed its side; read what it said before.
                    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_and_the_node_stays_healthy() {
    const SLOW: usize = 300;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().display().to_string();
    let node = common::process::GorgonProcess::spawn(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--data",
            &data,
            "--http-body-timeout",
            "3s",
            "--http-max-connections",
            "1000",
        ],
        &[],
    );
    let base = node.base();
    let addr = base.trim_start_matches("http://").to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    assert_healthy(&client, &base).await;
    let (fds_before, rss_before) = fds_and_rss(node.pid());

    let started = std::time::Instant::now();
    let slow: Vec<_> = (0..SLOW)
        .map(|n| {
            tokio::spawn(slow_body(
                addr.clone(),
                Duration::from_millis(500),
                n % 2 == 0,
            ))
        })
        .collect();
    // Wait until the server holds them all (or most: some may already have timed out).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fds_and_rss(node.pid()).0 < fds_before + SLOW * 9 / 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow connections were never accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (fds_peak, rss_peak) = fds_and_rss(node.pid());
    // Meanwhile the node answers its health checks.
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz answers");
    assert_eq!(health.status(), StatusCode::OK);

    // Every slow body (declared or chunked) is answered 408 and its connection closed, none
    // before the deadline.
    for task in slow {
        let answer = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the slow body was dropped")
            .expect("task");
        assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
        assert!(answer.contains("request_timeout"), "answer: {answer:?}");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the deadline"
    );
    // The server let go of them: its open files are back near where they were.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (fds, _) = fds_and_rss(node.pid());
        if fds <= fds_before + 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{fds} files still open (before: {fds_before})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, rss_after) = fds_and_rss(node.pid());
    eprintln!(
        "{SLOW} slow bodies: fds {fds_before} -> {fds_peak}; RSS {rss_before} -> {rss_peak} -> {rss_after} kB"
    );
    // A few tens of kB per connection at most, not a body's worth each.
    assert!(
        rss_peak.saturating_sub(rss_before) < 100 * 1024,
        "RSS grew from {rss_before} to {rss_peak} kB"
    );
    assert_healthy(&client, &base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_limit_are_closed_at_once() {
    let app = TestApp::spawn_with(&["--http-max-connections-per-ip", "20"]).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // 20 idle connections with a request head still to come hold the address's share.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut socket = TcpStream::connect(&addr).await.expect("connect");
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        held.push(socket);
    }
    // Give the server a moment to accept them all (the count is per accepted connection).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = raw_exchange(
        &app,
        "GET /healthz HTTP/1.1\r\nHost: gorgon\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        refused.is_empty(),
        "the 21st connection was served: {refused}"
    );
    // Once they go, the address may connect again.
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = raw_exchange(
            &app,
            "GET /healthz HTTP/1.1\r\nHost: gorgon\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a struct we own.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let lowered = libc::rlimit {
        rlim_cur: (limit.rlim_max / 2).max(1024).min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
    let app = TestApp::spawn().await;
    let mut now = lowered;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
    assert_eq!(
        now.rlim_cur, limit.rlim_max,
        "soft limit raised to the hard one"
    );
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

// ---- per-user quotas -------------------------------------------------------------------------

/// Asserts a 429 with a `Retry-After` of at least one second.
async fn expect_rate_limited(resp: reqwest::Response) {
    let retry_after: u64 = resp
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in seconds");
    assert!(retry_after >= 1);
    expect_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_item_rate_gets_429_and_others_do_not() {
    let app = TestApp::spawn_with(&["--user-items-per-minute", "3"]).await;
    let (_, greedy) = app.user("greedy@example.com").await;
    let (_, other) = app.user("other@example.com").await;
    for n in 0..3 {
        app.create_item(&greedy, &json!({"title": format!("item {n}")}))
            .await;
    }
    let over = app
        .post(
            "/api/v1/items",
            Some(&greedy),
            &json!({"title": "one too many"}),
        )
        .await;
    expect_rate_limited(over).await;
    // Another user, and an admin, are not affected.
    app.create_item(&other, &json!({"title": "mine"})).await;
    let admin = app.admin_token().await;
    for n in 0..5 {
        app.create_item(&admin, &json!({"title": format!("admin {n}")}))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_too_many_unfinished_jobs_gets_429_and_others_do_not() {
    // No workers: submitted jobs stay queued.
    let app = TestApp::spawn_with(&["--user-max-unfinished-jobs", "2", "--job-workers", "0"]).await;
    let (_, greedy) = app.user("greedy@example.com").await;
    let (_, other) = app.user("other@example.com").await;
    let submit = |token: String, n: u32, key: Option<&'static str>| {
        let request = app
            .client
            .post(app.url("/api/v1/jobs"))
            .bearer_auth(token)
            .json(&json!({"kind": "hash", "payload": {"n": n}}));
        let request = match key {
            Some(key) => request.header("Idempotency-Key", key),
            None => request,
        };
        async move { request.send().await.expect("submit") }
    };
    let first = submit(greedy.clone(), 0, Some("first")).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(
        submit(greedy.clone(), 1, None).await.status(),
        StatusCode::ACCEPTED
    );
    expect_rate_limited(submit(greedy.clone(), 2, None).await).await;
    // Repeating a stored submission is not a new job: still answered.
    assert_eq!(
        submit(greedy.clone(), 0, Some("first")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        submit(other.clone(), 0, None).await.status(),
        StatusCode::ACCEPTED
    );
    let admin = app.admin_token().await;
    for n in 0..4 {
        assert_eq!(
            submit(admin.clone(), n, None).await.status(),
            StatusCode::ACCEPTED
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_job_payloads_and_items_get_413() {
    let app = TestApp::spawn_with(&[
        "--max-job-payload-bytes",
        "1024",
        "--max-item-bytes",
        "2048",
    ])
    .await;
    let (_, token) = app.user("big@example.com").await;
    let big = "x".repeat(3000);
    let resp = app
        .post(
            "/api/v1/jobs",
            Some(&token),
            &json!({"kind": "hash", "payload": {"text": big}}),
        )
        .await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    let resp = app
        .post(
            "/api/v1/jobs",
            Some(&token),
            &json!({"kind": "hash", "payload": {"text": "small"}}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = app
        .post(
            "/api/v1/items",
            Some(&token),
            &json!({"title": "big", "body": big}),
        )
        .await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    let item = app
        .create_item(&token, &json!({"title": "small", "body": "fits"}))
        .await;
    let id = item["id"].as_str().expect("id");
    let resp = app
        .patch(
            &format!("/api/v1/items/{id}"),
            &token,
            &json!({"body": big}),
        )
        .await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

/// `/healthz` answers 200.
async fn assert_healthy(client: &reqwest::Client, base: &str) {
    let resp = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), StatusCode::OK);
}
