//! Black-box tests of the HTTP API: a real node on a random port, real HTTP, the real store.

mod common;

use common::{expect_error, TestApp, ADMIN_EMAIL, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_logout() {
    let app = TestApp::spawn().await;
    let resp = app
        .post(
            "/api/v1/auth/register",
            None,
            &json!({"name": " Ada ", "email": "Ada@Example.COM", "password": PASSWORD, "group": 3, "extra": {"lang": "en"}}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let user: Value = resp.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/users/{}", user["id"].as_str().unwrap())
    );
    assert_eq!(user["name"], "Ada");
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["group"], 3);
    assert_eq!(user["admin"], false);
    assert_eq!(user["extra"]["lang"], "en");
    assert!(user.get("password_hash").is_none());

    let token = app.login("ADA@example.com", PASSWORD).await;
    let me = app.get_auth(&location, &token).await;
    assert_eq!(me.status(), StatusCode::OK);

    let resp = app
        .post("/api/v1/auth/logout", Some(&token), &json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // The token is gone at once (the cache is invalidated, not just left to expire).
    expect_error(
        app.get_auth(&location, &token).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_error(
        app.post("/api/v1/auth/logout", Some(&token), &json!({}))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_rejects_bad_input_and_duplicates() {
    let app = TestApp::spawn().await;
    app.register("Ada", "ada@example.com").await;
    let dup = app
        .post(
            "/api/v1/auth/register",
            None,
            &json!({"name": "Other", "email": "ADA@example.com", "password": PASSWORD}),
        )
        .await;
    expect_error(dup, StatusCode::CONFLICT, "conflict").await;

    let cases = [
        (
            json!({"name": "", "email": "a@example.com", "password": PASSWORD}),
            "name",
        ),
        (
            json!({"name": "A", "email": "not-an-email", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"name": "A", "email": "a@example.com", "password": "short"}),
            "password",
        ),
        (
            json!({"name": "A", "email": "a@example.com", "password": PASSWORD, "group": -1}),
            "group",
        ),
        (
            json!({"name": "A", "email": "a@example.com", "password": PASSWORD, "extra": [1]}),
            "body",
        ),
        (
            json!({"name": "A", "email": "a@example.com", "password": PASSWORD, "admin": true}),
            "admin",
        ),
        (
            json!({"email": "a@example.com", "password": PASSWORD}),
            "name",
        ),
        (
            json!({"name": 5, "email": "a@example.com", "password": PASSWORD}),
            "body",
        ),
    ];
    for (body, field) in cases {
        let resp = app.post("/api/v1/auth/register", None, &body).await;
        let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid").await;
        if field != "body" {
            assert_eq!(err["error"]["field"], field, "for {body}");
        }
    }
    // Nothing was created by the rejected requests.
    let login = app
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "a@example.com", "password": PASSWORD}),
        )
        .await;
    expect_error(login, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_and_oversized_413() {
    let app = TestApp::spawn_with(&["--max-body-bytes", "1024"]).await;
    let resp = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "bad_request").await;
    let resp = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .body("\u{0}\u{1}garbage")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "bad_request").await;
    let big = "x".repeat(4096);
    let resp = app
        .post(
            "/api/v1/auth/register",
            None,
            &json!({"name": big, "email": "b@example.com", "password": PASSWORD}),
        )
        .await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    expect_error(
        app.get("/api/v1/items/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    expect_error(
        app.get("/no/such/route").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_401_then_rate_limited_429() {
    let app = TestApp::spawn_with(&["--login-per-minute", "5"]).await;
    app.register("Ada", "ada@example.com").await;
    let wrong = json!({"email": "ada@example.com", "password": "wrong password"});
    for _ in 0..5 {
        let resp = app.post("/api/v1/auth/login", None, &wrong).await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let resp = app.post("/api/v1/auth/login", None, &wrong).await;
    expect_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Other accounts are not affected.
    app.register("Bob", "bob@example.com").await;
    app.login("bob@example.com", PASSWORD).await;
    let unknown = app
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "nobody@example.com", "password": PASSWORD}),
        )
        .await;
    expect_error(unknown, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_401() {
    let app = TestApp::spawn().await;
    let item = json!({"title": "t"});
    for header in [
        "",
        "Bearer",
        "Bearer not-a-token",
        "Basic abc",
        "Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let mut req = app.client.post(app.url("/api/v1/items")).json(&item);
        if !header.is_empty() {
            req = req.header("authorization", header);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_self_or_admin() {
    let app = TestApp::spawn().await;
    let (ada, ada_token) = app.user("ada@example.com").await;
    let (bob, bob_token) = app.user("bob@example.com").await;
    let admin = app.admin_token().await;

    let path = format!("/api/v1/users/{ada}");
    expect_error(
        app.get_auth(&path, &bob_token).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(app.get_auth(&path, &admin).await.status(), StatusCode::OK);

    // PATCH changes only what is given.
    let resp = app
        .patch(
            &path,
            &ada_token,
            &json!({"name": "Ada L.", "extra": {"k": 1}}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let patched: Value = resp.json().await.unwrap();
    assert_eq!(patched["name"], "Ada L.");
    assert_eq!(patched["email"], "ada@example.com");
    assert_eq!(patched["extra"]["k"], 1);
    let again: Value = app.get_auth(&path, &ada_token).await.json().await.unwrap();
    assert_eq!(again, patched);

    expect_error(
        app.patch(&path, &ada_token, &json!({"admin": true})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        app.patch(&path, &bob_token, &json!({"name": "x"})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        app.patch(
            &path,
            &ada_token,
            &json!({"email": "bob@example.com", "current_password": PASSWORD}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    expect_error(
        app.patch(&path, &ada_token, &json!({"group": "x"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    expect_error(
        app.patch(&path, &ada_token, &json!({"nmae": "typo"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;

    // Password change (with the current one) takes effect.
    let resp = app
        .patch(
            &path,
            &ada_token,
            &json!({"password": "a new password", "current_password": PASSWORD}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    app.login("ada@example.com", "a new password").await;

    // Admin creates users, others may not.
    let new_user =
        json!({"name": "Carol", "email": "carol@example.com", "password": PASSWORD, "admin": true});
    expect_error(
        app.post("/api/v1/users", Some(&bob_token), &new_user).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let resp = app.post("/api/v1/users", Some(&admin), &new_user).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().contains_key("location"));
    let carol: Value = resp.json().await.unwrap();
    assert_eq!(carol["admin"], true);

    // Delete: self or admin; items go too.
    let bob_item = app
        .create_item(&bob_token, &json!({"title": "bob's"}))
        .await;
    let bob_path = format!("/api/v1/users/{bob}");
    expect_error(
        app.delete(&bob_path, &ada_token).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(
        app.delete(&bob_path, &admin).await.status(),
        StatusCode::NO_CONTENT
    );
    expect_error(
        app.get_auth(&bob_path, &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let item_path = format!("/api/v1/items/{}", bob_item["id"].as_str().unwrap());
    expect_error(
        app.get(&item_path).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        app.delete(&path, &ada_token).await.status(),
        StatusCode::NO_CONTENT
    );
    let _ = ADMIN_EMAIL;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_crud_owner_only() {
    let app = TestApp::spawn().await;
    let (ada, ada_token) = app.user("ada@example.com").await;
    let (_, bob_token) = app.user("bob@example.com").await;

    let body = json!({
        "title": "Lighthouse at dawn",
        "body": "The keeper lit the lamp.",
        "url": "https://example.com/lighthouse",
        "location": {"lat": 48.4, "lon": -4.8},
        "keywords": ["Sea", "light", "sea"],
        "extra": {"source": "test"}
    });
    let resp = app.post("/api/v1/items", Some(&ada_token), &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let item: Value = resp.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/items/{}", item["id"].as_str().unwrap())
    );
    assert_eq!(item["user_id"], ada.as_str());
    assert_eq!(item["keywords"], json!(["sea", "light"]));
    assert_eq!(item["location"]["lat"], 48.4);

    let fetched: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(fetched, item);

    expect_error(
        app.patch(&location, &bob_token, &json!({"title": "mine now"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        app.delete(&location, &bob_token).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let resp = app
        .patch(
            &location,
            &ada_token,
            &json!({"title": "Lighthouse at dusk", "url": null}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let patched: Value = resp.json().await.unwrap();
    assert_eq!(patched["title"], "Lighthouse at dusk");
    assert_eq!(patched["url"], Value::Null);
    assert_eq!(patched["body"], item["body"]);
    assert_eq!(patched["keywords"], item["keywords"]);
    let fetched: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(fetched, patched);

    for (bad, field) in [
        (json!({"title": ""}), "title"),
        (json!({"url": "ftp://x"}), "url"),
        (json!({"location": {"lat": 91, "lon": 0}}), "location.lat"),
        (json!({"keywords": vec!["a"; 33]}), "keywords"),
    ] {
        let err = expect_error(
            app.patch(&location, &ada_token, &bad).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        )
        .await;
        assert_eq!(err["error"]["field"], field);
        let err = expect_error(
            app.post(
                "/api/v1/items",
                Some(&ada_token),
                &json!({"title": "ok"})
                    .as_object()
                    .unwrap()
                    .clone()
                    .into_iter()
                    .chain(bad.as_object().unwrap().clone())
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        )
        .await;
        assert_eq!(err["error"]["field"], field);
    }
    let unchanged: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(unchanged, patched, "rejected writes change nothing");

    assert_eq!(
        app.delete(&location, &ada_token).await.status(),
        StatusCode::NO_CONTENT
    );
    expect_error(app.get(&location).await, StatusCode::NOT_FOUND, "not_found").await;
    expect_error(
        app.delete(&location, &ada_token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_info_and_search() {
    let app = TestApp::spawn().await;
    let (ada, token) = app.user("ada@example.com").await;
    let mut ids = Vec::new();
    for n in 0..15 {
        let item = app
            .create_item(&token, &json!({"title": format!("note {n}"), "body": if n % 5 == 0 { "harbor view" } else { "plain" }}))
            .await;
        ids.push(item["id"].as_str().unwrap().to_string());
    }
    ids.reverse();

    let page: Value = app
        .get(&format!("/api/v1/users/{ada}/items?limit=10"))
        .await
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids[..10].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let page: Value = app
        .get(&format!("/api/v1/users/{ada}/items?limit=10&offset=10"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);

    let info: Value = app.get(&format!("/info/{ada}")).await.json().await.unwrap();
    assert_eq!(info["items"].as_array().unwrap().len(), 10);
    assert_eq!(info["items"][0]["id"], ids[0].as_str());
    let info: Value = app
        .get(&format!("/info/{ada}/3/1"))
        .await
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = info["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids[1..4].iter().map(String::as_str).collect::<Vec<_>>()
    );

    let found: Value = app
        .get("/api/v1/items?q=harbor")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 3);
    let found: Value = app
        .get("/api/v1/items?q=harbor%20view&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 1);

    expect_error(
        app.get(&format!("/api/v1/users/{ada}/items?limit=0")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    expect_error(
        app.get(&format!("/api/v1/users/{ada}/items?limit=1000"))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    expect_error(
        app.get(&format!("/api/v1/users/{ada}/items?limit=abc"))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    expect_error(
        app.get(&format!("/info/{ada}/0/0")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    expect_error(
        app.get("/info/nope").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    expect_error(
        app.get("/api/v1/items?q=").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    let punctuation: Value = app
        .get("/api/v1/items?q=%20%2B%2B")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        punctuation["items"].as_array().unwrap().is_empty(),
        "no word, no match"
    );
    let resp = app
        .client
        .put(app.url("/api/v1/items"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "GET, POST");
    expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    expect_error(
        app.get("/api/v1/items").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_stats_metrics_openapi() {
    let app = TestApp::spawn().await;
    let health: Value = app.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let resp = app.get("/readyz").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ready: Value = resp.json().await.unwrap();
    assert_eq!(ready["checks"]["store"], "ok");
    let backend = match std::env::var("GORGON_TEST_API_STORE").as_deref() {
        Ok("mongodb") => "mongodb",
        _ => "embedded",
    };
    assert_eq!(ready["store_backend"], backend, "{ready}");

    let stats: Value = app.get("/api/v1/stats").await.json().await.unwrap();
    assert_eq!(stats["users"], 1, "the bootstrap admin");
    assert_eq!(stats["roles"].as_array().unwrap().len(), 7);

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            "gorgon_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("gorgon_bus_calls_total"));

    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/logout",
        "/api/v1/users",
        "/api/v1/users/{id}",
        "/api/v1/users/{id}/items",
        "/api/v1/items",
        "/api/v1/items/{id}",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/retry",
        "/api/v1/events",
        "/api/v1/ws",
        "/api/v1/stats",
        "/api/v1/openapi.json",
        "/metrics",
        "/healthz",
        "/readyz",
        "/info/{uid}",
        "/info/{uid}/{limit}/{offset}",
        "/api/v1/import/items",
        "/api/v1/export/items",
    ] {
        assert!(paths.contains_key(path), "openapi lacks {path}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_without_the_store_role() {
    let app = TestApp::spawn_with(&["--roles", "web,auth,app"]).await;
    let resp = app.get("/readyz").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    expect_error(
        app.get(&format!("/api/v1/items/{}", uuid::Uuid::now_v7()))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_history_and_dashboard() {
    let app = TestApp::spawn().await;
    for _ in 0..20 {
        app.get("/healthz").await;
    }
    // The stats role closes a second once a second.
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    let stats: Value = app.get("/api/v1/stats?last=10").await.json().await.unwrap();
    let bounds = stats["bucket_bounds_ms"].as_array().unwrap();
    let seconds = stats["seconds"].as_array().unwrap();
    assert!(!seconds.is_empty() && seconds.len() <= 10, "{stats}");
    let counted: u64 = seconds
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert!(counted >= 20, "the 20 requests were counted: {counted}");
    for s in seconds {
        assert_eq!(s["buckets"].as_array().unwrap().len(), bounds.len() + 1);
        let in_buckets: u64 = s["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .sum();
        assert_eq!(in_buckets, s["requests"].as_u64().unwrap());
    }
    let minutes = stats["minutes"].as_array().unwrap();
    let in_minutes: u64 = minutes
        .iter()
        .map(|m| m["requests"].as_u64().unwrap())
        .sum();
    assert!(in_minutes >= counted, "minutes roll the seconds up");
    expect_error(
        app.get("/api/v1/stats?last=5000").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;

    let resp = app.get("/dashboard").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = resp.text().await.unwrap();
    assert!(page.contains("<canvas id=\"heatmap\""));
    assert!(page.contains("/api/v1/stats"));
    // Self-contained: nothing is loaded from anywhere else.
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("src="),
        "external reference in the dashboard"
    );
}
