//! Accounts under attack (issue #19, items 1, 2, 3, 5, 6, 7, 12): rights and sessions that must
//! change at once on every node, a bootstrap that must not be taken over, and login and
//! registration limits. Real nodes on loopback ports, real Redis, real processes.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::process::GorgonProcess;
use common::redis::{Fsync, RedisServer};
use common::{expect_error, TestApp, ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

/// An HTTP client whose connections come from `address` (any of 127.0.0.0/8), so one test can
/// play several clients.
fn client_from(address: &str) -> Client {
    let ip: IpAddr = address.parse().expect("loopback address");
    Client::builder().local_address(ip).build().expect("client")
}

async fn login_as(client: &Client, base: &str, email: &str, password: &str) -> Response {
    client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login")
}

fn retry_after(resp: &Response) -> u64 {
    resp.headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After header"))
}

/// Polls `probe` until it gives `want` (at most `within`); returns how long that took.
async fn until_status<F, Fut>(within: Duration, want: StatusCode, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StatusCode>,
{
    let started = Instant::now();
    loop {
        let got = probe().await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still {got} after {within:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demotion_and_deletion_take_effect_at_once() {
    // The default token cache (30 s): a cached token must not outlive the account's rights.
    let app = TestApp::spawn().await;
    let root = app.admin_token().await;
    let (second_id, second_token) = second_admin(&app, &root, "second@example.com").await;
    // Used once as an admin, so the node has cached it as one.
    assert_eq!(
        app.get_auth("/api/v1/jobs?state=queued", &second_token)
            .await
            .status(),
        StatusCode::OK
    );
    demote(&app, &root, &second_id).await;
    // Demoted: no admin act succeeds any more, not even once.
    creating_an_admin_is_forbidden(&app, &second_token).await;
    let resp = app
        .get_auth("/api/v1/jobs?state=queued", &second_token)
        .await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;

    // A user who deletes their account can write nothing more with the token they still hold.
    let (me, token) = app.user("leaving@example.com").await;
    app.create_item(&token, &json!({"title": "before"})).await;
    let resp = app.delete(&format!("/api/v1/users/{me}"), &token).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = app
        .post("/api/v1/items", Some(&token), &json!({"title": "after"}))
        .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = app
        .post(
            "/api/v1/jobs",
            Some(&token),
            &json!({"kind": "hash", "payload": {"text": "x"}}),
        )
        .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_changes_reach_every_node_at_once() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("sec{}", uuid::Uuid::now_v7().simple());
    let url = redis.url();
    let shared = [
        "--redis",
        url.as_str(),
        "--redis-namespace",
        ns.as_str(),
        "--token-cache-ttl",
        "5m",
    ];
    let mut backend_flags = vec!["--roles", "web,auth,app,store,stats"];
    backend_flags.extend_from_slice(&shared);
    let backend = TestApp::spawn_with(&backend_flags).await;
    // The front validates tokens with its own auth role and cache.
    let mut front_flags = vec!["--roles", "web,auth"];
    front_flags.extend_from_slice(&shared);
    let front = TestApp::spawn_with(&front_flags).await;

    let (id, old) = front.user("roaming@example.com").await;
    let current = front.login("roaming@example.com", PASSWORD).await;
    let me = format!("/api/v1/users/{id}");
    assert_eq!(front.get_auth(&me, &old).await.status(), StatusCode::OK);

    // The password changes through the other node; the front's cached session must go.
    let resp = backend
        .patch(
            &me,
            &current,
            &json!({"password": "a brand new secret", "current_password": PASSWORD}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let took = until_status(Duration::from_secs(3), StatusCode::UNAUTHORIZED, || async {
        front.get_auth(&me, &old).await.status()
    })
    .await;
    eprintln!("the front refused the revoked session {took:?} after the change");
    assert_eq!(front.get_auth(&me, &current).await.status(), StatusCode::OK);

    // A logout on one node ends the session on every node.
    assert_eq!(
        backend.get_auth(&me, &current).await.status(),
        StatusCode::OK
    );
    let resp = front
        .post("/api/v1/auth/logout", Some(&current), &json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    until_status(Duration::from_secs(3), StatusCode::UNAUTHORIZED, || async {
        backend.get_auth(&me, &current).await.status()
    })
    .await;

    // Deleted through the backend: the front's cached token stops working.
    let (gone, token) = front.user("gone@example.com").await;
    assert_eq!(
        front
            .get_auth(&format!("/api/v1/users/{gone}"), &token)
            .await
            .status(),
        StatusCode::OK
    );
    let root = backend.admin_token().await;
    let resp = backend
        .delete(&format!("/api/v1/users/{gone}"), &root)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    until_status(Duration::from_secs(3), StatusCode::UNAUTHORIZED, || async {
        front
            .get_auth(&format!("/api/v1/users/{gone}"), &token)
            .await
            .status()
    })
    .await;
    front.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_needs_the_current_one_and_ends_other_sessions() {
    let app = TestApp::spawn().await;
    let (id, here) = app.user("careful@example.com").await;
    let elsewhere = app.login("careful@example.com", PASSWORD).await;
    let me = format!("/api/v1/users/{id}");
    assert_eq!(app.get_auth(&me, &elsewhere).await.status(), StatusCode::OK);

    let resp = app
        .patch(&me, &here, &json!({"password": "stolen-token-pass"}))
        .await;
    let body = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
    assert_eq!(body["error"]["field"], "current_password");
    let resp = app
        .patch(
            &me,
            &here,
            &json!({"password": "stolen-token-pass", "current_password": "not my password"}),
        )
        .await;
    let body = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
    assert_eq!(body["error"]["field"], "current_password");
    // Nothing changed: the old password still logs in.
    app.login("careful@example.com", PASSWORD).await;

    let resp = app
        .patch(
            &me,
            &here,
            &json!({"password": "a much better one", "current_password": PASSWORD}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(app.get_auth(&me, &here).await.status(), StatusCode::OK);
    let resp = app.get_auth(&me, &elsewhere).await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    app.login("careful@example.com", "a much better one").await;

    // An admin resets someone's password without it, and every session of theirs ends.
    let root = app.admin_token().await;
    let resp = app
        .patch(&me, &root, &json!({"password": "reset by the admin"}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app.get_auth(&me, &here).await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    app.login("careful@example.com", "reset by the admin").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_never_promotes_an_account_it_did_not_create() {
    let app = TestApp::spawn().await;
    let root = app.admin_token().await;
    let admin = admin_user(&app).await;
    let admin_id = admin["id"].as_str().expect("id").to_string();
    // The admin moves to another address; someone registers the configured one.
    let resp = app
        .patch(
            &format!("/api/v1/users/{admin_id}"),
            &root,
            &json!({"email": "boss@example.com", "current_password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let squatter = app.register("Squatter", ADMIN_EMAIL).await;
    assert_eq!(squatter["admin"], false);

    // A restart with the same configuration does not hand them the keys.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, &[]).await;
    let token = app.login(ADMIN_EMAIL, PASSWORD).await;
    let resp = app
        .get_auth(
            &format!("/api/v1/users/{}", squatter["id"].as_str().expect("id")),
            &token,
        )
        .await;
    let me: Value = resp.json().await.expect("user");
    assert_eq!(me["admin"], false, "the squatter was promoted: {me}");
    creating_an_admin_is_forbidden(&app, &token).await;
    // The configured password does not open the squatter's account either.
    let resp = app
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
        )
        .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The real admin is still one.
    let boss = app.login("boss@example.com", ADMIN_PASSWORD).await;
    assert_eq!(
        app.get_auth("/api/v1/jobs?state=queued", &boss)
            .await
            .status(),
        StatusCode::OK
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_limited_per_address_and_per_account() {
    let app = TestApp::spawn_with(&[
        "--login-per-minute",
        "5",
        "--login-per-address-per-minute",
        "8",
    ])
    .await;
    app.register("Victim", "victim@example.com").await;
    let owner = client_from("127.0.0.2");
    let attacker = client_from("127.0.0.3");
    // The owner has signed in from their address before.
    assert_eq!(
        login_as(&owner, &app.base, "victim@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    for _ in 0..5 {
        let resp = login_as(&attacker, &app.base, "victim@example.com", "guess guess").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // The account refuses clients it does not know, even with the right password...
    let resp = login_as(&attacker, &app.base, "victim@example.com", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&resp);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    // ...but its owner, from a known address, is not locked out.
    assert_eq!(
        login_as(&owner, &app.base, "victim@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );

    // One address may try only so often, whatever the accounts.
    let sprayer = client_from("127.0.0.4");
    for n in 0..8 {
        let resp = login_as(
            &sprayer,
            &app.base,
            &format!("nobody{n}@example.com"),
            "guess guess",
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = login_as(&sprayer, &app.base, "victim@example.com", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    retry_after(&resp);
    let other = client_from("127.0.0.5");
    assert_eq!(
        login_as(&other, &app.base, "nobody@example.com", "guess guess")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // A huge email is refused like any wrong login, without being kept.
    let huge = format!("{}@example.com", "a".repeat(200_000));
    let resp = login_as(&client_from("127.0.0.6"), &app.base, &huge, "guess guess").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_email_takes_as_long_as_a_wrong_password() {
    let app = TestApp::spawn().await;
    app.register("Known", "known@example.com").await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for n in 0..6 {
        // A fresh address each time, so no limit is in the way.
        let client = client_from(&format!("127.0.1.{}", n + 1));
        let started = Instant::now();
        let resp = login_as(&client, &app.base, "known@example.com", "wrong password").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        known.push(started.elapsed());
        let started = Instant::now();
        let resp = login_as(
            &client,
            &app.base,
            &format!("ghost{n}@example.com"),
            "wrong password",
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        unknown.push(started.elapsed());
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[3], unknown[3]);
    eprintln!("median: wrong password {k:?}, unknown email {u:?}");
    // Without a dummy hash an unknown email answered >10x faster; the same work now.
    assert!(
        u.as_secs_f64() >= 0.5 * k.as_secs_f64(),
        "unknown email {u:?} vs wrong password {k:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_emails_cannot_take_an_address() {
    let app = TestApp::spawn().await;
    app.register("Ada", "ada@example.com").await;
    let register = |email: &'static str| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/auth/register",
                None,
                &json!({"name": "Mallory", "email": email, "password": PASSWORD}),
            )
            .await
        }
    };
    // Fullwidth letters are the same address.
    expect_error(
        register("ａｄａ@example.com").await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    expect_error(
        register("ADA@EXAMPLE.COM").await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    // A Cyrillic letter among Latin ones, or an invisible character, is refused.
    for email in [
        "\u{0430}da@example.com",
        "a\u{200B}da@example.com",
        "ada@exam\u{200D}ple.com",
    ] {
        let body = expect_error(
            register(email).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        )
        .await;
        assert_eq!(body["error"]["field"], "email", "{email:?}");
    }
    // Latin letters that look like others (dotless ı, Latin alpha, a combining dot) take no
    // second account either.
    for email in [
        "ad\u{0251}@example.com",
        "\u{0251}da@example.com",
        "a\u{0307}da@example.com",
    ] {
        expect_error(register(email).await, StatusCode::CONFLICT, "conflict").await;
    }
    app.register("Alice", "alice@example.com").await;
    expect_error(
        register("al\u{0131}ce@example.com").await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    // The fullwidth spelling logs in to the one account.
    app.login("ａｄａ@example.com", PASSWORD).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_and_hashing_is_bounded() {
    let data = tempfile::tempdir().expect("data dir");
    let node = tokio::task::block_in_place(|| {
        GorgonProcess::spawn(
            &[
                "run",
                "--listen",
                "127.0.0.1:0",
                "--data",
                data.path().to_str().expect("path"),
                "--register-per-address-per-hour",
                "4",
                "--password-hash-concurrency",
                "1",
                "--password-hash-queue",
                "2",
            ],
            &[],
        )
    });
    let base = node.base();
    let register = |client: Client, n: usize| {
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/api/v1/auth/register"))
                .json(&json!({"name": "Flood", "email": format!("flood{n}@example.com"), "password": PASSWORD}))
                .send()
                .await
                .expect("register")
        }
    };
    // One address: four registrations, then 429 with Retry-After.
    let one = client_from("127.0.0.7");
    for n in 0..4 {
        assert_eq!(register(one.clone(), n).await.status(), StatusCode::CREATED);
    }
    let resp = register(one.clone(), 4).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&resp);
    assert!(wait > 60 && wait <= 3600, "Retry-After {wait}");

    // Many addresses at once: one hash runs, two wait, the rest are told to come back.
    let floods: Vec<_> = (0..24)
        .map(|n| register(client_from(&format!("127.0.2.{}", n + 1)), 100 + n))
        .collect();
    let answers = futures::future::join_all(floods).await;
    let mut created = 0;
    let mut busy = 0;
    for resp in answers {
        match resp.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(resp.headers().contains_key("Retry-After"));
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    eprintln!("24 concurrent registrations: {created} created, {busy} told to retry");
    assert!(created >= 3, "{created} created");
    assert!(
        busy > 0,
        "no registration was refused: hashing is not bounded"
    );
    // The node is fine afterwards.
    let resp = register(client_from("127.0.3.1"), 999).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_its_account_changes() {
    let app = TestApp::spawn_with(&["--sse-heartbeat", "200ms"]).await;
    let root = app.admin_token().await;
    let (watcher, token) = second_admin(&app, &root, "watcher@example.com").await;
    // An admin's stream of every user's job events...
    let mut stream = app
        .client
        .get(app.url("/api/v1/events?topic=jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "the stream answers");
    // ...ends once the account is demoted: the client must come back and be checked again.
    demote(&app, &root, &watcher).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the demoted admin's stream stayed open");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_sent_at_once_are_held_to_the_account_limit() {
    let app = TestApp::spawn_with(&["--login-per-minute", "5"]).await;
    app.register("Target", "target@example.com").await;
    let guesses: Vec<_> = (0..30)
        .map(|n| {
            let client = client_from(&format!("127.0.4.{}", n + 1));
            let base = app.base.clone();
            async move {
                login_as(&client, &base, "target@example.com", "a wrong guess")
                    .await
                    .status()
            }
        })
        .collect();
    let answers = futures::future::join_all(guesses).await;
    let checked = answers
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(checked + limited, 30, "{answers:?}");
    assert!(
        checked <= 5,
        "{checked} guesses were checked at once, over the limit of 5"
    );
    app.stop().await;
}

/// Another admin, created by `root` and logged in: (user id, token).
async fn second_admin(app: &TestApp, root: &str, email: &str) -> (String, String) {
    let resp = app
        .post(
            "/api/v1/users",
            Some(root),
            &json!({"name": "Second", "email": email, "password": PASSWORD, "admin": true}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let user: Value = resp.json().await.expect("user");
    let id = user["id"].as_str().expect("id").to_string();
    (id, app.login(email, PASSWORD).await)
}

/// `root` takes the admin flag from user `id`.
async fn demote(app: &TestApp, root: &str, id: &str) {
    let resp = app
        .patch(
            &format!("/api/v1/users/{id}"),
            root,
            &json!({"admin": false}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

/// An admin act (creating another admin) by `token` is refused.
async fn creating_an_admin_is_forbidden(app: &TestApp, token: &str) {
    let resp = app
        .post(
            "/api/v1/users",
            Some(token),
            &json!({"name": "Sneaky", "email": "sneaky@example.com", "password": PASSWORD, "admin": true}),
        )
        .await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
}

/// The bootstrap admin's own record, as its login returns it.
async fn admin_user(app: &TestApp) -> Value {
    let resp = app
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    body["user"].clone()
}
