//! Import and export (issue #18), black box: the `gorgon` binary run as a process for the
//! commands, real nodes on random ports for the API, real stores. Nothing is mocked.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::postgres::PgServer;
use common::process::GorgonProcess;
use common::{expect_error, TestApp, ADMIN_EMAIL, ADMIN_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADA: &str = "ada@example.com";
const BOB: &str = "bob@example.com";
const ADA_PASSWORD: &str = "ada's long passphrase";

/// Runs `gorgon ARGS` to its end.
fn gorgon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gorgon"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run gorgon")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `gorgon ARGS` and expects exit status `code`; returns standard output.
fn gorgon_ok(args: &[&str], code: i32) -> String {
    let output = gorgon(args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "gorgon {args:?}\nstdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path.display().to_string()
}

fn example_items() -> String {
    format!("{}/examples/items.csv", env!("CARGO_MANIFEST_DIR"))
}

/// Two accounts with fixed ids: Ada with a carried-over argon2id hash, Bob without a password.
fn users_csv(dir: &Path) -> (String, String, String) {
    let ada = uuid::Uuid::now_v7().to_string();
    let bob = uuid::Uuid::now_v7().to_string();
    let password = gorgon::domain::password::Password::parse(ADA_PASSWORD).unwrap();
    let hash = gorgon::domain::password::hash_now(&password).unwrap();
    let csv = format!(
        "id,name,email,group,admin,created_at,extra,password_hash\n\
         {ada},Ada Lovelace,{ADA},7,false,2024-01-02T03:04:05.006Z,\"{{\"\"team\"\": \"\"engines\"\"}}\",\"{hash}\"\n\
         {bob},Bob,{BOB},,,,,\n"
    );
    (write(dir, "users.csv", &csv), ada, bob)
}

/// The summary line of an import's output: (stored, already there, bad).
fn summary(out: &str) -> (u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("imported "))
        .unwrap_or_else(|| panic!("no summary in {out}"));
    let number = |after: &str| -> u64 {
        let end = line
            .find(after)
            .unwrap_or_else(|| panic!("{after} in {line}"));
        line[..end]
            .trim_end()
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number before {after} in {line}"))
    };
    (number(" stored"), number(" already there"), number(" bad"))
}

/// Imports `what` from `file` into the embedded store in `data`, expecting success: the counts.
fn imported(what: &str, file: &str, data: &str) -> (u64, u64, u64) {
    summary(&gorgon_ok(&["import", what, file, "--data", data], 0))
}

/// `import WHAT FILE --data DATA --on-error skip`.
fn skipping<'a>(what: &'a str, file: &'a str, data: &'a str) -> [&'a str; 7] {
    ["import", what, file, "--data", data, "--on-error", "skip"]
}

fn bad_rows(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("bad row: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_imports_a_file_once_and_a_node_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let (users, _, _) = users_csv(dir.path());
    let out = gorgon_ok(&["import", "users", &users, "--data", &data], 0);
    assert_eq!(summary(&out), (2, 0, 0), "{out}");

    let items = example_items();
    let args = ["import", "items", &items, "--data", &data, "--owner", ADA];
    assert_eq!(summary(&gorgon_ok(&args, 0)), (15, 0, 0));
    // The same file again: every derived id is met again, nothing stored twice.
    assert_eq!(summary(&gorgon_ok(&args, 0)), (0, 15, 0));
    let again = gorgon_ok(&["import", "users", &users, "--data", &data], 0);
    assert_eq!(summary(&again), (0, 2, 0), "users are keyed by email");

    // Into a store that holds items: the new row is indexed for search too.
    let more = json!({"owner": BOB, "ts": "2024-05-03T00:00:00Z", "title": "Zeppelin sighted",
                      "keywords": ["sky"]});
    let more = write(dir.path(), "more.ndjson", &format!("{more}\n"));
    assert_eq!(imported("items", &more, &data), (1, 0, 0));

    let app = TestApp::spawn_in(dir, &[]).await;
    let stats: Value = app.get_json("/api/v1/stats").await;
    assert_eq!(stats["items"], 16);
    let sky: Value = app.get_json("/api/v1/items?q=sky").await;
    let titles: Vec<&str> = sky["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Zeppelin sighted", "Comet visible after midnight"]);
    let found: Value = app.get_json("/api/v1/items?q=lighthouse").await;
    let found = found["items"].as_array().unwrap();
    assert_eq!(found.len(), 1, "the search index has the imported items");
    assert_eq!(found[0]["title"], "Lighthouse at dawn");
    assert_eq!(found[0]["keywords"], json!(["sea", "lighthouse", "dawn"]));
    assert_eq!(found[0]["extra"], json!({"photographer": "Ada"}));
    assert_eq!(found[0]["ts"], "2024-05-01T05:42:00Z");
    let owner = found[0]["user_id"].as_str().unwrap().to_string();
    let page: Value = app
        .get_json(&format!("/api/v1/users/{owner}/items?limit=100"))
        .await;
    let ts: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ts"].as_str().unwrap())
        .collect();
    assert_eq!(ts.len(), 15);
    assert!(
        ts.windows(2).all(|w| w[0] > w[1]),
        "newest first by id: {ts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_reported_and_abort_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let (users, _, _) = users_csv(dir.path());
    gorgon_ok(&["import", "users", &users, "--data", &data], 0);
    let file = write(
        dir.path(),
        "mixed.csv",
        "owner,ts,title,url,lat,lon,keywords,extra\n\
         ada@example.com,2024-05-01T10:00:00Z,Fine,,,,a|b,\n\
         ada@example.com,2024-05-01T10:01:00Z,,,,,,\n\
         ada@example.com,yesterday,Bad time,,,,,\n\
         \"ada@example.com\",2024-05-01T10:02:00Z,\"Multi\nline title\",ftp://nope,,,,\n\
         nobody@example.com,2024-05-01T10:03:00Z,Unknown owner,,,,,\n\
         bob@example.com,2024-05-01T10:04:00Z,Too far north,,91,0,,\n\
         bob@example.com,2024-05-01T10:05:00Z,Extra is a list,,,,,[1]\n\
         bob@example.com,2024-05-01T10:06:00Z,Fine too,,,,,\n\
         bob@example.com,2024-05-01T10:07:00Z,Short row\n",
    );
    let expected = [
        "line 3, column title: must not be empty",
        "line 4, column ts: \"yesterday\" is not an RFC 3339 time such as 2024-05-01T12:00:00Z",
        "line 5, column url: must be an absolute http(s) URL",
        "line 7, column owner: no account nobody@example.com",
        "line 8, column lat: must be between -90 and 90",
        "line 9, column extra: must be a JSON object",
        "line 11: 3 field(s) where the header has 8",
    ];

    // abort (the default): every bad row listed, exit 1, nothing stored.
    let output = gorgon(&["import", "items", &file, "--data", &data]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(bad_rows(&stdout(&output)), expected);
    assert!(stderr(&output).contains("7 bad row(s) of 9: nothing was imported"));
    let export = gorgon_ok(&["export", "items", "--data", &data, "--format", "csv"], 0);
    assert_eq!(export.lines().count(), 1, "only the header: {export}");
    for scratch in ["import-stage.db", "search-build.db"] {
        assert!(!dir.path().join(scratch).exists(), "{scratch} left behind");
    }

    // skip: the same report, the two valid rows stored, exit 2.
    let out = gorgon_ok(&skipping("items", &file, &data), 2);
    assert_eq!(bad_rows(&out), expected);
    assert_eq!(summary(&out), (2, 0, 7));
    let export = gorgon_ok(&["export", "items", "--data", &data], 0);
    let titles: BTreeSet<String> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["title"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(titles, BTreeSet::from(["Fine".into(), "Fine too".into()]));
    let app = TestApp::spawn_in(dir, &[]).await;
    let found: Value = app.get_json("/api/v1/items?q=fine").await;
    assert_eq!(found["items"].as_array().unwrap().len(), 2, "{found}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_columns_and_unusable_headers_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let file = write(
        dir.path(),
        "typo.csv",
        "owner,ts,title,bodyy,colour\nada@example.com,2024-05-01T10:00:00Z,x,y,z\n",
    );
    let output = gorgon(&skipping("items", &file, &data));
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(
            "unknown column(s) \"bodyy\", \"colour\" in the header; the columns are id, user_id"
        ),
        "{err}"
    );
    assert!(bad_rows(&stdout(&output)).is_empty());

    // No owner anywhere, and no id or ts to make ids from.
    let file = write(
        dir.path(),
        "no-owner.csv",
        "ts,title\n2024-05-01T10:00:00Z,x\n",
    );
    let err = stderr(&gorgon(&["import", "items", &file, "--data", &data]));
    assert!(err.contains("no owner"), "{err}");
    let file = write(
        dir.path(),
        "no-time.csv",
        "owner,title\nada@example.com,x\n",
    );
    let err = stderr(&gorgon(&["import", "items", &file, "--data", &data]));
    assert!(err.contains("neither id nor ts"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_users_sign_in_with_their_carried_over_hash_and_exports_hide_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let (users, ada_id, _) = users_csv(dir.path());
    let bad = write(
        dir.path(),
        "bad-users.csv",
        "name,email,password_hash\n\
         Eve,eve@example.com,$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\n\
         Trent,trent@example.com,\"$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E\"\n\
         Mallory,mallory@example.com,\"$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n\
         ,nameless@example.com,\n",
    );
    let out = gorgon_ok(&skipping("users", &bad, &data), 2);
    assert_eq!(
        bad_rows(&out),
        [
            "line 2, column password_hash: must be a PHC string such as $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>",
            "line 3, column password_hash: must be an argon2id hash, not scrypt",
            "line 4, column password_hash: costs more than a login may spend (at most m=262144, t=16, p=16)",
            "line 5, column name: must not be empty",
        ]
    );
    gorgon_ok(&["import", "users", &users, "--data", &data], 0);

    // Hashes only when asked for.
    let plain = gorgon_ok(&["export", "users", "--data", &data, "--format", "csv"], 0);
    assert!(
        plain.starts_with("id,name,email,group,admin,created_at,extra\n"),
        "{plain}"
    );
    assert!(!plain.contains("$argon2id$"), "{plain}");
    let json = gorgon_ok(&["export", "users", "--data", &data], 0);
    assert!(!json.contains("password_hash") && !json.contains("$argon2id$"));
    let with = gorgon_ok(
        &["export", "users", "--data", &data, "--with-password-hashes"],
        0,
    );
    let ada: Value = with
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|u| u["email"] == ADA)
        .unwrap();
    assert_eq!(ada["id"], ada_id.as_str());
    assert_eq!(ada["group"], 7);
    assert_eq!(ada["created_at"], "2024-01-02T03:04:05.006Z");
    assert_eq!(ada["extra"], json!({"team": "engines"}));
    assert!(ada["password_hash"]
        .as_str()
        .unwrap()
        .starts_with("$argon2id$v=19$"));

    let app = TestApp::spawn_in(dir, &[]).await;
    app.login(ADA, ADA_PASSWORD).await;
    // Bob was imported without a hash: nobody can sign in as him until an admin sets one.
    let refused = app
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": BOB, "password": ADA_PASSWORD}),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imports_back_to_the_same_rows() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (da, db) = (
        a.path().display().to_string(),
        b.path().display().to_string(),
    );
    let (users, _, _) = users_csv(a.path());
    gorgon_ok(&["import", "users", &users, "--data", &da], 0);
    let items = example_items();
    gorgon_ok(
        &["import", "items", &items, "--data", &da, "--owner", ADA],
        0,
    );
    // Bob's rows as NDJSON, with keywords holding the separator and a location object.
    let ndjson = write(
        a.path(),
        "bob.ndjson",
        &[
            json!({"owner": BOB, "ts": "2024-06-01T10:00:00.123Z", "title": "Pipes | and [brackets]",
                   "keywords": ["a|b", "[c]"], "location": {"lat": 1.5, "lon": -2.25},
                   "extra": {"nested": {"x": [1, 2]}}, "body": "line one\nline two, \"quoted\""}),
            json!({"owner": BOB, "ts": "2024-06-01T11:00:00Z", "title": "Plain"}),
        ]
        .iter()
        .map(|v| format!("{v}\n"))
        .collect::<String>(),
    );
    assert_eq!(imported("items", &ndjson, &da), (2, 0, 0));

    let export = |dir: &str, what: &str, format: &str, out: &Path| {
        let out = out.display().to_string();
        let mut args = vec![
            "export", what, "--data", dir, "--format", format, "--out", &out,
        ];
        if what == "users" {
            args.push("--with-password-hashes");
        }
        let said = gorgon_ok(&args, 0);
        assert!(said.starts_with("exported "), "{said}");
        std::fs::read_to_string(&out).unwrap()
    };
    let users_a = export(&da, "users", "csv", &a.path().join("users-a.csv"));
    let items_a = export(&da, "items", "csv", &a.path().join("items-a.csv"));
    let file = |name: &str| a.path().join(name).display().to_string();
    let (users_file, items_file) = (file("users-a.csv"), file("items-a.csv"));
    assert_eq!(imported("users", &users_file, &db), (2, 0, 0));
    assert_eq!(imported("items", &items_file, &db), (17, 0, 0));
    assert_eq!(
        export(&db, "users", "csv", &b.path().join("users-b.csv")),
        users_a
    );
    assert_eq!(
        export(&db, "items", "csv", &b.path().join("items-b.csv")),
        items_a
    );

    // NDJSON too: the same items, so nothing new.
    let json_a = export(&da, "items", "ndjson", &a.path().join("items-a.ndjson"));
    let json_file = file("items-a.ndjson");
    assert_eq!(imported("items", &json_file, &db), (0, 17, 0));
    assert_eq!(
        export(&db, "items", "ndjson", &b.path().join("items-b.ndjson")),
        json_a
    );
    let bob: Value = json_a
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|i| i["title"] == "Pipes | and [brackets]")
        .unwrap();
    assert_eq!(bob["keywords"], json!(["a|b", "[c]"]));
    assert_eq!(bob["body"], "line one\nline two, \"quoted\"");
    assert_eq!(bob["extra"], json!({"nested": {"x": [1, 2]}}));
}

/// An import's NDJSON report: the bad rows and the summary.
async fn report(resp: reqwest::Response) -> (StatusCode, Vec<Value>, Value) {
    let status = resp.status();
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-ndjson",
        "an NDJSON report"
    );
    let text = resp.text().await.unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let last = lines.pop().expect("a summary line");
    (status, lines, last["summary"].clone())
}

async fn import(
    app: &TestApp,
    token: &str,
    content_type: &str,
    query: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/import/items{query}")))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("import request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_imports_for_admins_only_reports_bad_rows_and_applies_nothing_twice() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (bob_id, bob) = app.user("bob@example.com").await;
    let csv = std::fs::read_to_string(example_items()).unwrap();

    let no_token = app
        .client
        .post(app.url("/api/v1/import/items"))
        .header("content-type", "text/csv")
        .body(csv.clone())
        .send()
        .await
        .unwrap();
    expect_error(no_token, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_error(
        import(&app, &bob, "text/csv", "", csv.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        import(&app, &admin, "application/json", "", csv.clone()).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        import(&app, &admin, "text/csv; charset=latin1", "", csv.clone()).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let refused = expect_error(
        import(&app, &admin, "text/csv", "", "title,colour\nx,y\n").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    assert_eq!(refused["error"]["field"], "columns");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("\"colour\""));

    // The example file, as the admin (no owner column): stored once.
    let (status, bad, done) = report(import(&app, &admin, "text/csv", "", csv.clone()).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(
        done,
        json!({"rows": 15, "inserted": 15, "existing": 0, "invalid": 0, "applied": true, "on_error": "abort"})
    );
    let (_, _, again) = report(import(&app, &admin, "text/csv", "?on_error=skip", csv).await).await;
    assert_eq!(
        (again["inserted"].as_u64(), again["existing"].as_u64()),
        (Some(0), Some(15))
    );

    // NDJSON for Bob, with bad lines: abort stores nothing (422), skip stores the rest.
    let lines = format!(
        "{}\n{}\n\n{}\n{}\n",
        json!({"owner": "bob@example.com", "ts": "2024-07-01T00:00:00Z", "title": "Bob's first"}),
        json!({"owner": "bob@example.com", "ts": "2024-07-01T00:00:01Z", "title": "   "}),
        json!({"user_id": bob_id, "ts": "2024-07-01T00:00:02Z", "title": "Bob's second", "keywords": "x"}),
        json!({"user_id": bob_id, "ts": "2024-07-01T00:00:03Z", "title": "Bob's third", "colour": "red"}),
    );
    let (status, bad, done) =
        report(import(&app, &admin, "application/x-ndjson", "", lines.clone()).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        bad,
        [
            json!({"line": 2, "column": "title", "reason": "must not be empty"}),
            json!({"line": 4, "column": "keywords", "reason": "must be a list of strings"}),
            json!({"line": 5, "column": "colour", "reason": "unknown field; the fields are id, user_id, ts, title, body, url, lat, lon, keywords, extra, owner, location"}),
        ]
    );
    assert_eq!(
        done,
        json!({"rows": 4, "inserted": 0, "existing": 0, "invalid": 3, "applied": false, "on_error": "abort"})
    );
    let listed: Value = app.get_json(&format!("/api/v1/users/{bob_id}/items")).await;
    assert_eq!(listed["items"], json!([]), "abort stored nothing");
    let (status, bad, done) = report(
        import(
            &app,
            &admin,
            "application/x-ndjson",
            "?on_error=skip",
            lines,
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bad.len(), 3);
    assert_eq!(
        (done["inserted"].as_u64(), done["invalid"].as_u64()),
        (Some(1), Some(3))
    );
    let listed: Value = app.get_json(&format!("/api/v1/users/{bob_id}/items")).await;
    assert_eq!(listed["items"][0]["title"], "Bob's first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_exports_every_item_and_it_imports_back() {
    // Two nodes whose stores hold the same two accounts (same ids).
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (users, _, _) = users_csv(a.path());
    for dir in [a.path(), b.path()] {
        let data = dir.display().to_string();
        gorgon_ok(&["import", "users", &users, "--data", &data], 0);
    }
    let (a, b) = (
        TestApp::spawn_in(a, &[]).await,
        TestApp::spawn_in(b, &[]).await,
    );
    let (admin_a, admin_b) = (a.admin_token().await, b.admin_token().await);

    // 2,500 rows (three pages) spread over both accounts.
    let mut csv = String::from("owner,ts,title,keywords\n");
    for n in 0..2500 {
        let owner = if n % 3 == 0 { BOB } else { ADA };
        csv.push_str(&format!(
            "{owner},2024-08-01T00:{:02}:{:02}.{:03}Z,Row {n},k{}|shared\n",
            n / 600,
            (n / 10) % 60,
            n % 1000,
            n % 7
        ));
    }
    let (status, _, done) = report(import(&a, &admin_a, "text/csv", "", csv).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["inserted"], 2500, "{done}");

    let forbidden = a
        .get_auth("/api/v1/export/items", &a.login(ADA, ADA_PASSWORD).await)
        .await;
    expect_error(forbidden, StatusCode::FORBIDDEN, "forbidden").await;
    let export = |app: &TestApp, token: String, format: &'static str| {
        let url = app.url(&format!("/api/v1/export/items?format={format}"));
        let client = app.client.clone();
        async move {
            let resp = client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.text().await.unwrap()
        }
    };
    let csv_a = export(&a, admin_a.clone(), "csv").await;
    assert_eq!(csv_a.lines().count(), 2501);
    let (status, _, done) = report(import(&b, &admin_b, "text/csv", "", csv_a.clone()).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["inserted"], 2500, "{done}");
    assert_eq!(export(&b, admin_b.clone(), "csv").await, csv_a);
    let json_a = export(&a, admin_a, "ndjson").await;
    assert_eq!(export(&b, admin_b, "ndjson").await, json_a);
    let first: Value = serde_json::from_str(json_a.lines().next().unwrap()).unwrap();
    assert!(first["id"].is_string() && first["keywords"].is_array());
}

/// Peak resident memory of a process, in bytes (Linux).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streams_through_in_bounded_memory_and_the_route_has_its_own_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let node = GorgonProcess::spawn(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--data",
            &data,
            "--import-max-body-bytes",
            "200000000",
        ],
        &[
            ("GORGON_ADMIN_EMAIL", ADMIN_EMAIL),
            ("GORGON_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    let base = node.base();
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap().to_string();
    let send = |rows: std::ops::Range<u64>, query: &'static str| {
        // Generated as it is sent (chunked): the client holds one row at a time.
        let lines = rows.map(|n| {
            format!(
                "2024-09-01T00:00:00.000Z,Large row {n},{}\n",
                "lorem ipsum dolor sit amet ".repeat(150)
            )
        });
        let body = futures::stream::iter(
            std::iter::once("ts,title,body\n".to_string())
                .chain(lines)
                .map(Ok::<_, std::io::Error>),
        );
        client
            .post(format!("{base}/api/v1/import/items{query}"))
            .bearer_auth(&token)
            .header("content-type", "text/csv")
            .body(reqwest::Body::wrap_stream(body))
            .send()
    };
    // Warm up (pools, caches), then the peak so far.
    let resp = send(0..2000, "?on_error=skip").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let before = peak_rss(node.pid());
    // ~100 MB in one body: 400 times the JSON body limit.
    let resp = send(0..25_000, "?on_error=skip").await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", &text[..text.len().min(500)]);
    assert!(text.contains("\"inserted\":23000"), "{text}");
    let grew = peak_rss(node.pid()).saturating_sub(before);
    assert!(
        grew < 64 * 1024 * 1024,
        "the node's peak memory grew by {} MiB for a 100 MB body",
        grew / (1024 * 1024)
    );

    // With abort, the body is spooled to a file, not memory: same bound.
    let resp = send(25_000..50_000, "").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let grew = peak_rss(node.pid()).saturating_sub(before);
    assert!(grew < 64 * 1024 * 1024, "grew {} MiB", grew / (1024 * 1024));
    drop(node);

    // The route's own limit: past it, a 413 (declared or streamed).
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(dir, &["--import-max-body-bytes", "100000"]).await;
    let admin = app.admin_token().await;
    let big = format!("ts,title\n{}", "2024-09-01T00:00:00Z,x\n".repeat(10_000));
    expect_error(
        import(&app, &admin, "text/csv", "", big.clone()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    let chunks: Vec<Result<String, std::io::Error>> =
        big.lines().map(|l| Ok(format!("{l}\n"))).collect();
    let streamed = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    expect_error(
        import(&app, &admin, "text/csv", "", streamed).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_imports_into_postgres() {
    let Some(server) = PgServer::shared().await else {
        return;
    };
    let database = server.fresh_database("import").await;
    let url = server.url_for(&database);
    let dir = tempfile::tempdir().unwrap();
    let (users, _, _) = users_csv(dir.path());
    let store = ["--store", url.as_str()];
    let with = |args: &[&str]| {
        [args, &store[..]]
            .concat()
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, code: i32| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        gorgon_ok(&args, code)
    };
    assert_eq!(
        summary(&run(with(&["import", "users", &users]), 0)),
        (2, 0, 0)
    );
    let items = example_items();
    let import = with(&["import", "items", &items, "--owner", ADA]);
    assert_eq!(summary(&run(import.clone(), 0)), (15, 0, 0));
    assert_eq!(summary(&run(import, 0)), (0, 15, 0));
    let exported = run(with(&["export", "items", "--format", "csv"]), 0);
    assert_eq!(exported.lines().count(), 16);
    // The export imports back into the embedded store (the accounts first), row for row.
    let data = dir.path().join("embedded").display().to_string();
    let users_out = dir.path().join("users.csv").display().to_string();
    run(
        with(&[
            "export",
            "users",
            "--format",
            "csv",
            "--with-password-hashes",
            "--out",
            &users_out,
        ]),
        0,
    );
    gorgon_ok(&["import", "users", &users_out, "--data", &data], 0);
    let file = write(dir.path(), "from-pg.csv", &exported);
    assert_eq!(imported("items", &file, &data), (15, 0, 0));
    let back = gorgon_ok(&["export", "items", "--data", &data, "--format", "csv"], 0);
    let sorted = |text: &str| text.lines().map(str::to_string).collect::<BTreeSet<_>>();
    assert_eq!(
        sorted(&back),
        sorted(&exported),
        "the same rows (in another order)"
    );
}
