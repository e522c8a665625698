//! The operator's console (`/dashboard` after an admin signs in) and the admin API behind it,
//! against a real node on a real `redis-server`.
//!
//! The browser test drives Debian's headless Chromium with Playwright for Python
//! (`tests/console/console.py`, a venv under `~/.cache/gorgon/` made by `scripts/test.sh`; never
//! `playwright install`: the system Chromium is the browser). This test makes the mess first —
//! four dead letters on the `provider` queue (three messages that failed every delivery, one
//! that is no message at all) and a job that died — then the script, as a person would: sees
//! nothing but public stats anonymously or as a non-admin, signs in as the admin, finds the
//! dead letters with their reasons, replays one, deletes one, replays the rest, purges what
//! cannot be replayed (typing the queue's name), sees the queue drained, retries the dead job
//! and sees it `done`, and looks at the nodes; a screenshot of each panel goes to
//! `<target>/test-artifacts/console/`. Then this test checks what really happened: which
//! messages were handled, that Redis holds no dead letter, the job's state, the screenshots.
//!
//! The other tests check the admin API without a browser: who is refused, what a node without
//! Redis answers, the purge's confirmation, and `gorgon dlq --api` printing what `--redis`
//! prints. One more browser test (`tests/console/annotations.py`) checks the dashboard's
//! annotations, the marks `gorgon chaos` puts on the public charts: listed under the heatmap,
//! drawn as bands and lines where they belong, ended when healed.
//!
//! Missing tools (`redis-server`, `chromium`, the Playwright venv) skip these tests with a
//! message, unless `GORGON_REQUIRE_TOOLS` is set (as `scripts/test.sh` does).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{Fsync, RedisServer};
use common::{expect_error, TestApp, ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD};
use gorgon::bus::redis::Keys;
use gorgon::bus::{
    Bus, BusConfig, Handler, RedisConfig, RedisLink, Role, RoleActor, RoleArgs, Service,
};
use gorgon::error::{Error, Result};
use gorgon::jobs::{JobError, JobHandler, JobRegistry};
use gorgon::shutdown::Shutdown;
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

gorgon::requests! {
    role Provider, call ChoreCall;
    Chore => "chore", durable, u32;
}

/// A request of the test's own, on the `provider` queue (the node under test does not run the
/// provider role): every message fails its first [`DELIVERIES`] deliveries, so it is
/// dead-lettered, and is handled when replayed.
#[derive(Debug, Serialize, Deserialize)]
struct Chore {
    n: u32,
}

/// The queue's `--queue-max-attempts`.
const DELIVERIES: u32 = 3;

#[derive(Default)]
struct Chores {
    deliveries: Mutex<HashMap<u32, u32>>,
    handled: Mutex<Vec<u32>>,
}

struct ChoreHandler(Arc<Chores>);

impl Service for ChoreHandler {
    const ROLE: Role = Role::Provider;
    type Call = ChoreCall;
}

impl Handler<Chore> for ChoreHandler {
    async fn handle(self: Arc<Self>, chore: Chore) -> Result<u32> {
        let delivery = {
            let mut deliveries = self.0.deliveries.lock();
            let count = deliveries.entry(chore.n).or_default();
            *count += 1;
            *count
        };
        if delivery <= DELIVERIES {
            return Err(Error::Unavailable(format!(
                "chore {} refused on purpose (delivery {delivery})",
                chore.n
            )));
        }
        self.0.handled.lock().push(chore.n);
        Ok(chore.n)
    }
}

/// A job kind that fails its first two runs, then succeeds: with `--job-max-attempts 2` it
/// dies, and an admin's retry makes it `done`.
#[derive(Default)]
struct Flaky {
    runs: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl JobHandler for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    async fn run(&self, payload: &Value) -> Result<Value, JobError> {
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if run <= 2 {
            return Err(JobError::new("flaky on purpose"));
        }
        Ok(json!({"ok": true, "run": run, "payload": payload}))
    }
}

/// A process of the test's own consuming the `provider` queue of `ns`, and a caller through
/// Redis; returns the caller and the consumer's record.
async fn chore_nodes(redis: &RedisServer, ns: &str) -> (Bus, Arc<Chores>, Vec<Arc<RedisLink>>) {
    let config = RedisConfig {
        max_attempts: DELIVERIES,
        heartbeat: Duration::from_secs(2),
        retry_base: Duration::from_millis(20),
        ..RedisConfig::new(&redis.url(), ns)
    };
    let bus_config = BusConfig {
        durable_timeout: Duration::from_secs(10),
        ..BusConfig::default()
    };
    let worker = RedisLink::connect(config.clone(), "chores-worker", &Shutdown::new())
        .await
        .expect("worker link");
    let worker_bus = Bus::with_redis(bus_config, worker.clone());
    let chores = Arc::new(Chores::default());
    let args = RoleArgs {
        service: ChoreHandler(chores.clone()),
        bus: worker_bus.clone(),
        concurrency: 8,
    };
    ractor::Actor::spawn(None, RoleActor::<ChoreHandler>::default(), args)
        .await
        .expect("spawn the chore role");
    worker_bus
        .serve(&[Role::Provider])
        .await
        .expect("serve chores");
    let caller = RedisLink::connect(config, "chores-caller", &Shutdown::new())
        .await
        .expect("caller link");
    let bus = Bus::with_redis(bus_config, caller.clone());
    (bus, chores, vec![worker, caller])
}

/// Polls `check` every 50 ms until it holds (panics after `within`).
async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node on Redis namespace `ns` running every role but `provider` (the test consumes that
/// queue itself), with the flaky job kind.
async fn console_node(redis: &RedisServer, ns: &str) -> TestApp {
    let url = redis.url();
    let flags = [
        "--redis",
        url.as_str(),
        "--redis-namespace",
        ns,
        "--roles",
        "web,auth,app,store,notify,stats",
        "--job-max-attempts",
        "2",
        "--job-retry-base",
        "10ms",
    ];
    let jobs = JobRegistry::default().register(Flaky::default());
    TestApp::spawn_jobs(tempfile::tempdir().expect("temp dir"), &flags, jobs).await
}

/// Dead-letters chores 1, 2 and 3 and one record that is no message on `provider`.
async fn dead_letters(redis: &RedisServer, ns: &str, caller: &Bus) {
    let keys = Keys::new(ns);
    for n in 1..=3 {
        let answer = caller.call(Chore { n }).await;
        assert!(
            matches!(&answer, Err(Error::Unavailable(m)) if m.contains("set aside")),
            "chore {n} is dead-lettered: {answer:?}"
        );
    }
    redis
        .lpush(&keys.queue("provider"), "not a message, on purpose")
        .await;
    eventually("four dead letters", Duration::from_secs(10), async || {
        redis.llen(&keys.dead("provider")).await == 4
    })
    .await;
}

/// Submits a flaky job as `token` and waits until it is dead; returns its id.
async fn dead_job(app: &TestApp, token: &str) -> String {
    let resp = app
        .post(
            "/api/v1/jobs",
            Some(token),
            &json!({"kind": "flaky", "payload": {"step": "console"}}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = resp.json::<Value>().await.expect("job")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = format!("/api/v1/jobs/{id}");
    eventually("the flaky job dies", Duration::from_secs(15), async || {
        app.get_auth(&path, token)
            .await
            .json::<Value>()
            .await
            .expect("job")["state"]
            == "dead"
    })
    .await;
    id
}

/// The venv's Python with Playwright, or `None` (skipped) when there is none.
fn playwright_python() -> Option<PathBuf> {
    let venv = std::env::var_os("GORGON_TEST_PLAYWRIGHT_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/gorgon/playwright-venv"))
        })?;
    let python = venv.join("bin/python");
    let works = std::process::Command::new(&python)
        .args(["-c", "import playwright.sync_api"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works {
        return Some(python);
    }
    assert!(
        std::env::var_os("GORGON_REQUIRE_TOOLS").is_none(),
        "Playwright for Python is required in {} (scripts/test.sh installs it)",
        venv.display()
    );
    eprintln!(
        "SKIPPED: no Playwright for Python in {} (scripts/test.sh installs it)",
        venv.display()
    );
    None
}

/// `<target>/test-artifacts/{name}`, emptied (one directory per test: they run at once).
fn artifacts_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

/// Whether a PNG shows something: many colours, and a good share of pixels off the background.
fn assert_not_blank(png: &Path) {
    let file = std::fs::File::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    let mut reader = png::Decoder::new(file).read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    let channels = info.color_type.samples();
    let pixels = &pixels[..info.buffer_size()];
    let background = &pixels[..3];
    let mut colours = std::collections::HashSet::new();
    let mut off = 0usize;
    for px in pixels.chunks(channels) {
        colours.insert((px[0], px[1], px[2]));
        if px[..3] != *background {
            off += 1;
        }
    }
    let total = (info.width * info.height) as usize;
    assert!(
        info.width >= 200 && info.height >= 60,
        "{}: {}x{}",
        png.display(),
        info.width,
        info.height
    );
    assert!(
        colours.len() >= 16 && off * 50 >= total,
        "{} looks blank: {} colours, {off} of {total} pixels off the background",
        png.display(),
        colours.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_works_the_console_in_a_real_browser() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    if !common::tool("chromium") {
        return;
    }
    let Some(python) = playwright_python() else {
        return;
    };
    let started = Instant::now();
    let ns = format!("console{}", uuid::Uuid::now_v7().simple());
    let app = console_node(&redis, &ns).await;
    let (caller, chores, _links) = chore_nodes(&redis, &ns).await;
    dead_letters(&redis, &ns, &caller).await;
    let viewer = "viewer@example.com";
    let (_, token) = app.user(viewer).await;
    let job = dead_job(&app, &token).await;
    let artifacts = artifacts_dir("console");
    eprintln!("set up in {:?}", started.elapsed());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .env("CONSOLE_BASE", &app.base)
        .env("CONSOLE_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("CONSOLE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("CONSOLE_USER_EMAIL", viewer)
        .env("CONSOLE_USER_PASSWORD", PASSWORD)
        .env("CONSOLE_QUEUE", "provider")
        .env("CONSOLE_JOB", &job)
        .env("CONSOLE_ARTIFACTS", &artifacts)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser script finished within 180 s")
        .expect("run the browser script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!(
        "browser flow in {:?} (whole test so far)",
        started.elapsed()
    );
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the script's report:\n{stdout}\n{stderr}"));

    // What the page showed, panel by panel (the script asserted it as it went; again here).
    let panels = &report["panels"];
    let text = |name: &str| panels[name].as_str().unwrap_or_default().to_string();
    assert!(text("queues").contains("provider"), "{}", text("queues"));
    assert!(
        text("dead-letters").contains("failed 3 times"),
        "{}",
        text("dead-letters")
    );
    assert!(text("dead-letters").contains("not a Gorgon envelope"));
    assert!(!text("dead-letters").contains("argon2"));
    assert!(text("jobs").contains("done") && text("jobs").contains(&job));
    assert!(text("nodes").contains("(here)"), "{}", text("nodes"));
    assert_eq!(report["anonymous_admin_api"], 401);
    assert_eq!(
        report["console_errors"],
        json!([]),
        "no script error and no Content Security Policy violation"
    );

    // What really happened: chore 1 (replayed alone) and 3 (replayed with the rest) handled
    // once each, chore 2 (deleted) never; nothing dead or waiting; the job done.
    let keys = Keys::new(&ns);
    eventually(
        "the replayed chores are handled",
        Duration::from_secs(10),
        async || chores.handled.lock().len() >= 2,
    )
    .await;
    let mut handled = chores.handled.lock().clone();
    handled.sort();
    assert_eq!(handled, vec![1, 3]);
    assert_eq!(redis.llen(&keys.dead("provider")).await, 0);
    assert_eq!(redis.llen(&keys.queue("provider")).await, 0);
    let done = app
        .get_auth(&format!("/api/v1/jobs/{job}"), &token)
        .await
        .json::<Value>()
        .await
        .expect("job");
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["result"]["ok"], true);

    for panel in ["queues", "dead-letters", "queues-drained", "jobs", "nodes"] {
        assert_not_blank(&artifacts.join(format!("{panel}.png")));
    }
    eprintln!(
        "screenshots in {}; the whole test took {:?}",
        artifacts.display(),
        started.elapsed()
    );
}

/// The dashboard's annotations in a real browser (`tests/console/annotations.py`): marks put
/// through the admin API, as `gorgon chaos` puts them, are drawn on the public charts and listed
/// under the heatmap; one healed through the API ends on the page. Screenshots go to
/// `<target>/test-artifacts/annotations/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_marks_annotations_on_its_charts() {
    if !common::tool("chromium") {
        return;
    }
    let Some(python) = playwright_python() else {
        return;
    };
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let now = chrono::Utc::now().timestamp_millis();
    let marks = [
        (
            "kill-front-1",
            "kill front-1",
            now - 40_000,
            Some(now - 25_000),
        ),
        ("pause-store-1", "pause store-1", now - 12_000, None),
        (
            "drain-web-2",
            "drain web-2",
            now - 60_000,
            Some(now - 60_000),
        ),
        (
            "old-drill",
            "an old drill",
            now - 3_600_000,
            Some(now - 3_590_000),
        ),
    ];
    for (id, text, start_ms, end_ms) in marks {
        let body = json!({"text": text, "start_ms": start_ms, "end_ms": end_ms});
        let resp = app
            .put(
                &format!("/api/v1/admin/annotations/{id}"),
                Some(&admin),
                &body,
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{id}");
    }
    // A light load, so the heatmap has columns under the marks.
    let (base, client) = (app.base.clone(), app.client.clone());
    let load = tokio::spawn(async move {
        loop {
            let _ = client.get(format!("{base}/healthz")).send().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let artifacts = artifacts_dir("annotations");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/annotations.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .env("MARKS_BASE", &app.base)
        .env("MARKS_ADMIN_TOKEN", &admin)
        .env("MARKS_ARTIFACTS", &artifacts)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser script finished within 120 s")
        .expect("run the browser script");
    load.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the script's report:\n{stdout}\n{stderr}"));
    // What the page showed (the script asserted it as it went; again here).
    assert_eq!(
        report["marks"],
        json!(["drain web-2", "kill front-1", "pause store-1"]),
        "the marks of the window, by start, and not the old one"
    );
    let healed = report["healed"].as_str().unwrap_or_default();
    assert!(
        healed.contains("pause store-1") && !healed.contains("going on"),
        "{healed}"
    );
    assert_eq!(
        report["console_errors"],
        json!([]),
        "no script error and no Content Security Policy violation"
    );
    // The page's put went through the API: the fault has its end.
    let list = app
        .get_auth("/api/v1/admin/annotations", &admin)
        .await
        .json::<Value>()
        .await
        .expect("annotations");
    let pause = list["annotations"]
        .as_array()
        .expect("annotations")
        .iter()
        .find(|a| a["id"] == "pause-store-1")
        .expect("pause-store-1 kept");
    assert!(pause["end_ms"].is_i64(), "{pause}");
    for shot in ["heatmap-marks", "dashboard-marks", "heatmap-healed"] {
        assert_not_blank(&artifacts.join(format!("{shot}.png")));
    }
    eprintln!("screenshots in {}", artifacts.display());
}

/// Every admin route, as (method, path).
fn admin_routes(queue: &str) -> Vec<(Method, String)> {
    let letters = format!("/api/v1/admin/queues/{queue}/dead-letters");
    let id = "0123456789abcdef0123456789abcdef";
    vec![
        (Method::GET, "/api/v1/admin/queues".to_string()),
        (Method::GET, letters.clone()),
        (Method::POST, format!("{letters}/replay")),
        (Method::POST, format!("{letters}/{id}/replay")),
        (Method::DELETE, format!("{letters}/{id}")),
        (Method::DELETE, format!("{letters}?confirm={queue}")),
    ]
}

async fn send(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request")
}

/// `send` as `admin`, expecting a 200 with JSON.
async fn ok_json(app: &TestApp, method: Method, path: &str, admin: &str) -> Value {
    let resp = send(app, method, path, Some(admin)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.expect("a JSON answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_anyone_but_an_admin_and_purges_only_when_confirmed() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("consoleapi{}", uuid::Uuid::now_v7().simple());
    let app = console_node(&redis, &ns).await;
    let (caller, _chores, _links) = chore_nodes(&redis, &ns).await;
    dead_letters(&redis, &ns, &caller).await;
    let (_, user) = app.user("someone@example.com").await;
    for (method, path) in admin_routes("provider") {
        let resp = send(&app, method.clone(), &path, None).await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
        let resp = send(&app, method.clone(), &path, Some(&user)).await;
        expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    }
    assert_eq!(
        redis.llen(&Keys::new(&ns).dead("provider")).await,
        4,
        "nothing touched"
    );

    let admin = app.admin_token().await;
    let queues: Value = ok_json(&app, Method::GET, "/api/v1/admin/queues", &admin).await;
    assert_eq!(queues["redis"], true);
    let provider = queues["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["queue"] == "provider")
        .unwrap_or_else(|| panic!("provider listed: {queues}"));
    assert_eq!(
        (provider["dead"].as_u64(), provider["waiting"].as_u64()),
        (Some(4), Some(0))
    );
    assert!(provider["in_flight"].is_u64() && provider["retrying"].is_u64());

    let letters = "/api/v1/admin/queues/provider/dead-letters";
    let page: Value = ok_json(
        &app,
        Method::GET,
        &format!("{letters}?limit=2&offset=1"),
        &admin,
    )
    .await;
    assert_eq!(
        (page["total"].as_u64(), page["offset"].as_u64()),
        (Some(4), Some(1))
    );
    let shown = page["dead_letters"].as_array().expect("letters");
    assert_eq!(shown.len(), 2);
    assert_eq!(
        shown[0]["body"],
        json!({"Chore": {"n": 2}}),
        "oldest first: {page}"
    );
    assert_eq!(shown[0]["kind"], "chore");
    assert_eq!(shown[0]["attempts"], 3);
    assert!(shown[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("refused on purpose")));
    assert!(shown[0]["failed_at"].is_string() && shown[0]["message_id"].is_string());

    // Garbage cannot be replayed; a bad id, a bad queue and a limit out of range are refused,
    // and so is a purge that does not name its queue twice: nothing is deleted.
    let all: Value = ok_json(&app, Method::GET, letters, &admin).await;
    let garbage = all["dead_letters"][3].clone();
    assert_eq!(garbage["replayable"], false, "{all}");
    let garbage = garbage["id"].as_str().expect("id");
    let unknown = "0123456789abcdef0123456789abcdef";
    let refused = [
        (
            Method::POST,
            format!("{letters}/{garbage}/replay"),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            Method::POST,
            format!("{letters}/nope/replay"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            Method::POST,
            format!("{letters}/{unknown}/replay"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            format!("{letters}/{unknown}"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/admin/queues/q%3Ax/dead-letters".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            Method::GET,
            format!("{letters}?limit=0"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            Method::DELETE,
            letters.to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            Method::DELETE,
            format!("{letters}?confirm="),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            Method::DELETE,
            format!("{letters}?confirm=store"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            Method::DELETE,
            format!("{letters}?confirm=Provider"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
    ];
    for (method, path, status, code) in refused {
        let body = expect_error(send(&app, method, &path, Some(&admin)).await, status, code).await;
        if path.contains("confirm") || path == letters {
            assert_eq!(body["error"]["field"], "confirm", "{path}");
        }
    }
    assert_eq!(redis.llen(&Keys::new(&ns).dead("provider")).await, 4);
    let purged = ok_json(
        &app,
        Method::DELETE,
        &format!("{letters}?confirm=provider"),
        &admin,
    )
    .await;
    assert_eq!(purged, json!({"queue": "provider", "purged": 4}));

    // The routes are in the OpenAPI document, behind the bearer scheme.
    let doc = app.get_json("/api/v1/openapi.json").await;
    for path in [
        "/api/v1/admin/queues",
        "/api/v1/admin/queues/{queue}/dead-letters",
        "/api/v1/admin/queues/{queue}/dead-letters/replay",
        "/api/v1/admin/queues/{queue}/dead-letters/{id}",
        "/api/v1/admin/queues/{queue}/dead-letters/{id}/replay",
    ] {
        let route = &doc["paths"][path];
        assert!(route.is_object(), "openapi lacks {path}");
        for (_, operation) in route.as_object().unwrap() {
            assert_eq!(operation["security"], json!([{"bearer": []}]), "{path}");
            assert!(operation["responses"]["403"].is_object(), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_redis_says_it_has_no_queues() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let queues: Value = ok_json(&app, Method::GET, "/api/v1/admin/queues", &admin).await;
    assert_eq!(
        queues,
        json!({"redis": false, "namespace": null, "queues": []})
    );
    for (method, path) in admin_routes("store").into_iter().skip(1) {
        let resp = send(&app, method, &path, Some(&admin)).await;
        let body = expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("without Redis")),
            "{path}: {body}"
        );
    }
    // Anyone else is refused first, Redis or not.
    let resp = send(&app, Method::GET, "/api/v1/admin/queues", None).await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The page is served with its policy.
    let page = app.get("/dashboard").await;
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"),
        "{csp}"
    );
}

/// `gorgon dlq ARGS…` (the real binary) with `env`; its stdout.
async fn gorgon_dlq(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_gorgon"));
    command
        .arg("dlq")
        .args(args)
        .env_remove("GORGON_REDIS_URL")
        .env_remove("GORGON_API_URL")
        .env_remove("GORGON_ADMIN_TOKEN")
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("gorgon dlq within 30 s")
        .expect("run gorgon dlq");
    assert!(
        out.status.success(),
        "gorgon dlq {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gorgon_dlq_through_the_api_prints_what_it_prints_through_redis() {
    let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
        return;
    };
    let ns = format!("consolecli{}", uuid::Uuid::now_v7().simple());
    let app = console_node(&redis, &ns).await;
    let (caller, chores, _links) = chore_nodes(&redis, &ns).await;
    dead_letters(&redis, &ns, &caller).await;
    let admin = app.admin_token().await;
    let url = redis.url();
    let direct = ["--redis", url.as_str(), "--redis-namespace", ns.as_str()];
    let api = ["--api", app.base.as_str()];
    let token = [("GORGON_ADMIN_TOKEN", admin.as_str())];

    let through_redis = gorgon_dlq(&[&["list", "provider"][..], &direct].concat(), &[]).await;
    let through_api = gorgon_dlq(&[&["list", "provider"][..], &api].concat(), &token).await;
    assert_eq!(through_redis.lines().count(), 4, "{through_redis}");
    assert_eq!(through_api, through_redis);
    let first: Value =
        serde_json::from_str(through_api.lines().next().unwrap()).expect("a JSON line");
    let id = first["id"].as_str().expect("id").to_string();

    // Without the token, the API refuses and the command says so.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gorgon"))
        .args(["dlq", "list", "provider", "--api", app.base.as_str()])
        .env("GORGON_ADMIN_TOKEN", "not-a-token")
        .env_remove("GORGON_REDIS_URL")
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    let replayed = gorgon_dlq(
        &[&["replay", "provider", "--id", id.as_str()][..], &api].concat(),
        &token,
    )
    .await;
    assert!(replayed.contains(&id), "{replayed}");
    eventually("chore 1 handled", Duration::from_secs(10), async || {
        chores.handled.lock().contains(&1)
    })
    .await;
    let all = gorgon_dlq(&[&["replay", "provider"][..], &api].concat(), &token).await;
    assert!(
        all.starts_with("replayed 2 message(s) onto provider; 1 dead letter(s) hold no message"),
        "{all}"
    );
    let purged = gorgon_dlq(&[&["purge", "provider"][..], &api].concat(), &token).await;
    assert_eq!(purged.trim(), "purged 1 dead letter(s) of provider");
    assert!(
        gorgon_dlq(&[&["list", "provider"][..], &direct].concat(), &[])
            .await
            .is_empty()
    );
}
