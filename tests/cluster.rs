//! The ractor cluster, black-box: real `gorgon` processes on loopback joined with
//! `--cluster-listen` / `--join` (and a real `redis-server` for durable work). Covers three nodes
//! serving the API with direct calls between them, a node started later found by every other
//! through one seed, a node killed with SIGKILL under a load of reads and writes (reads retried on
//! another member, every acknowledged write present, the node restarted and back in the cluster),
//! a node with the wrong cookie refused, a second embedded store refused, a seed named by host
//! (as in Compose and Kubernetes) dialled once, not again at every heartbeat, and a dashboard
//! annotation put through one node shown by every node's stats.
//!
//! The tests of this file run one at a time. The ones that write need Redis and are skipped with
//! a message when `redis-server` is not installed (unless `GORGON_REQUIRE_TOOLS` is set).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::process::GorgonProcess;
use common::redis::{Fsync, RedisServer};
use reqwest::{Client, StatusCode};
use serde_json::Value;

/// The tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound of any one test; every wait inside is bounded well below it.
const TEST_BOUND: Duration = Duration::from_secs(150);

/// Runs a test body under the file's lock and `TEST_BOUND`.
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_BOUND, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {} s", TEST_BOUND.as_secs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_serve_the_api_and_a_late_node_is_found_by_all() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
            return;
        };
        let ns = format!("c{}", uuid::Uuid::now_v7().simple());
        let http = client();
        let front = NodeSpec::new("web,notify", None);
        let seed = front.cluster_port;
        let web = front.start(Some(&redis), &ns);
        let base = web.base();
        let backend = admin(NodeSpec::new("auth,app,store,stats", Some(seed)));
        let _backend = backend.start(Some(&redis), &ns);
        let _app = NodeSpec::new("auth,app", Some(seed)).start(Some(&redis), &ns);
        wait_ready(&http, &base).await;
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(3)
        })
        .await;
        let view = cluster_view(&http, &base).await;
        assert_eq!(view["clustered"], true);
        assert_eq!(
            roles_seen(&view),
            ["auth,app", "auth,app,store,stats", "web,notify"]
        );
        assert!(view["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["reachable"] == "ok"
                && n["health"] == "ok"
                && n["uptime_seconds"].as_f64() > Some(0.0)));

        // The API across three processes: writes through Redis, reads node to node.
        let (_, token) = common::register_and_login(&http, &base, "ada@example.com").await;
        let mut ids = Vec::new();
        for n in 0..20 {
            let item = create_item(&http, &base, &token, &format!("item {n}"))
                .await
                .expect("create an item");
            ids.push(item["id"].as_str().expect("id").to_string());
        }
        for id in &ids {
            let resp = http
                .get(format!("{base}/api/v1/items/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("GET item");
            assert_eq!(resp.status(), StatusCode::OK);
        }
        let over_cluster = cluster_calls_ok(&http, &base).await;
        assert!(
            over_cluster >= 20,
            "reads should have gone node to node; cluster calls: {over_cluster}"
        );
        assert_cluster_metrics_exported(&http, &base).await;
        let stats: Value = http
            .get(format!("{base}/api/v1/stats"))
            .send()
            .await
            .expect("GET stats")
            .json()
            .await
            .expect("stats JSON");
        assert_eq!(
            stats["cluster"]["nodes"], 3,
            "cluster-wide figures: {stats:#}"
        );

        // A node started later, given only the first node as its seed, is found by everyone:
        // it reaches the backend too (transitively), and serves reads with its own web role.
        let late = NodeSpec::new("web,app", Some(seed)).start(Some(&redis), &ns);
        let late_base = late.base();
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(4)
        })
        .await;
        wait_view(&http, &late_base, Duration::from_secs(10), |v| {
            roles_seen(v) == ["auth,app", "auth,app,store,stats", "web,app", "web,notify"]
        })
        .await;
        wait_ready(&http, &late_base).await;
        let resp = http
            .get(format!("{late_base}/api/v1/items/{}", ids[0]))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET item from the late node");
        assert_eq!(resp.status(), StatusCode::OK);
    })
    .await;
}

/// `base`'s `/api/v1/stats` annotation `id`, or `Null`.
async fn stats_annotation(http: &Client, base: &str, id: &str) -> Value {
    let stats: Value = http
        .get(format!("{base}/api/v1/stats"))
        .send()
        .await
        .expect("GET /api/v1/stats")
        .json()
        .await
        .expect("stats JSON");
    stats["annotations"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// Waits (at most 10 s) until every one of `bases` shows annotation `id` as `check` wants.
async fn wait_annotation(
    http: &Client,
    bases: &[String],
    id: &str,
    check: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for base in bases {
        loop {
            let seen = stats_annotation(http, base, id).await;
            if check(&seen) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{base}/api/v1/stats: annotation {id} is {seen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An annotation (a mark on the dashboard, put by `gorgon chaos`) put through one node shows on
/// every node's `/api/v1/stats`, whichever stats instance answers: a node with every role (and
/// the admin), a second with a stats role of its own, and a front without one, no Redis. Put
/// through the second, healed through the front, and still shown once the second is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_annotation_put_through_one_node_shows_on_every_node() {
    bounded(async {
        let http = client();
        let first = admin(NodeSpec::new("all", None));
        let seed = first.cluster_port;
        let first = first.start(None, "");
        let mut second = NodeSpec::new("web,auth,app,stats", Some(seed)).start(None, "");
        let front = NodeSpec::new("web,notify", Some(seed)).start(None, "");
        let bases = [first.base(), second.base(), front.base()];
        for base in &bases {
            wait_ready(&http, base).await;
        }
        wait_view(&http, &bases[0], Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(3)
        })
        .await;
        let login: Value = http
            .post(format!("{}/api/v1/auth/login", bases[0]))
            .json(&serde_json::json!({
                "email": common::ADMIN_EMAIL,
                "password": common::ADMIN_PASSWORD,
            }))
            .send()
            .await
            .expect("log in")
            .json()
            .await
            .expect("login JSON");
        let token = login["token"]
            .as_str()
            .expect("the admin's token")
            .to_string();
        let put = async |base: &str, body: Value| {
            let resp = http
                .put(format!("{base}/api/v1/admin/annotations/pause-app-2"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("PUT annotation");
            assert_eq!(resp.status(), StatusCode::OK, "{base}");
        };
        let now = chrono::Utc::now().timestamp_millis();
        put(
            &bases[1],
            serde_json::json!({"text": "pause app-2", "start_ms": now - 2_000}),
        )
        .await;
        wait_annotation(&http, &bases, "pause-app-2", |a| {
            a["text"] == "pause app-2" && a["end_ms"].is_null()
        })
        .await;
        let healed =
            serde_json::json!({"text": "pause app-2", "start_ms": now - 2_000, "end_ms": now});
        put(&bases[2], healed).await;
        wait_annotation(&http, &bases, "pause-app-2", |a| a["end_ms"] == now).await;
        // The node it was put to goes; the others keep it.
        second.kill9();
        wait_view(&http, &bases[0], Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(2)
        })
        .await;
        let left = [bases[0].clone(), bases[2].clone()];
        wait_annotation(&http, &left, "pause-app-2", |a| a["end_ms"] == now).await;
    })
    .await;
}

/// A front (`web,notify`), a backend (`auth,app,store`, with the admin) and a second `auth,app`
/// node, both joined through the front, all in its view and ready.
struct Trio {
    ns: String,
    http: Client,
    web: GorgonProcess,
    base: String,
    /// The backend's command line (to start it again on the same data) and its process.
    backend_spec: NodeSpec,
    backend: GorgonProcess,
    /// The second `auth,app` node's command line and its process.
    second: NodeSpec,
    running: GorgonProcess,
}

impl Trio {
    async fn start(redis: &RedisServer) -> Trio {
        let ns = format!("c{}", uuid::Uuid::now_v7().simple());
        let http = client();
        let front = NodeSpec::new("web,notify", None);
        let seed = front.cluster_port;
        let web = front.start(Some(redis), &ns);
        let base = web.base();
        let backend_spec = admin(NodeSpec::new("auth,app,store", Some(seed)));
        let backend = backend_spec.start(Some(redis), &ns);
        let second = NodeSpec::new("auth,app", Some(seed));
        let running = second.start(Some(redis), &ns);
        wait_ready(&http, &base).await;
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(3)
        })
        .await;
        Trio {
            ns,
            http,
            web,
            base,
            backend_spec,
            backend,
            second,
            running,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_load_costs_at_most_a_blip_and_loses_no_write() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        let Trio {
            ns,
            http,
            web: _web,
            base,
            backend: _backend,
            second: victim_spec,
            running: mut victim,
            ..
        } = Trio::start(&redis).await;
        let (token, load) = Load::as_new_user(&http, &base, "grace@example.com").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before_kill = load.written();
        let killed_at = Instant::now();
        victim.kill9();
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(2)
        })
        .await;
        let gone_after = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        victim = victim_spec.start(Some(&redis), &ns);
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            roles_seen(v) == ["auth,app", "auth,app,store", "web,notify"]
        })
        .await;
        let rejoined_after = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = load.finish().await;
        assert!(victim.is_running());

        let last_read_error = log.last_read_error_after(killed_at);
        eprintln!(
            "kill -9 of an auth,app node under load: {} reads ok, {} read errors (last {:?} after \
             the kill; first: {:?}), node gone from the view after {gone_after:?}, back after \
             {rejoined_after:?}; {} writes acknowledged ({before_kill} before the kill), {} write errors",
            log.reads_ok,
            log.read_errors.len(),
            last_read_error,
            log.read_errors.first().map(|(_, e)| e),
            log.written.len(),
            log.write_errors.len(),
        );
        assert!(log.reads_ok > 100, "the readers barely ran: {}", log.reads_ok);
        // A blip at most: no read fails later than 3 s after the kill, and few fail at all.
        if let Some(last) = last_read_error {
            assert!(last < Duration::from_secs(3), "reads kept failing {last:?} after the kill");
        }
        assert!(
            log.read_errors.len() <= 50,
            "too many failed reads: {:?}",
            &log.read_errors[..log.read_errors.len().min(5)]
        );
        assert!(log.written.len() > before_kill, "writes continued after the kill");

        log.assert_all_written_readable(&http, &base, &token).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_wrong_cookie_cannot_join() {
    bounded(async {
        let http = client();
        let cookie = "the-right-cookie-0123456789";
        let front = admin(NodeSpec::new("all", None)).env("GORGON_CLUSTER_COOKIE", cookie);
        let web = front.start(None, "");
        let base = web.base();
        let intruder = NodeSpec::new("app", Some(front.cluster_port))
            .env("GORGON_CLUSTER_COOKIE", "a-wrong-cookie")
            .env("GORGON_CLUSTER_JOIN_WAIT", "5s");
        let (ok, stderr) = intruder.start_expecting_exit(None, "");
        assert!(!ok, "the intruder must exit with an error");
        assert!(
            stderr.contains("refused this node during authentication")
                && stderr.contains("GORGON_CLUSTER_COOKIE"),
            "the intruder says why: {stderr}"
        );
        let view = cluster_view(&http, &base).await;
        assert_eq!(view["nodes"].as_array().map(Vec::len), Some(1), "{view:#}");

        // The same node with the right cookie joins.
        let friend = NodeSpec::new("app", Some(front.cluster_port))
            .env("GORGON_CLUSTER_COOKIE", cookie)
            .start(None, "");
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(2)
        })
        .await;
        drop(friend);
    })
    .await;
}

/// A seed named by host, as in Compose (`backend:7400`) and Kubernetes
/// (`gorgon-store-0.gorgon-store:7400`), counts as connected once a session to its address
/// exists: it is not dialled again and again (each time a duplicate session, closed at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seed_named_by_host_is_dialled_once() {
    bounded(async {
        let http = client();
        let seed = NodeSpec::new("all", None);
        let joiner =
            NodeSpec::new("app", None).arg("--join", &format!("localhost:{}", seed.cluster_port));
        let (mut first, first_log, base) = spawn_logged(&seed);
        let (mut second, second_log, _) = spawn_logged(&joiner);
        let base = base.expect("the seed serves HTTP");
        wait_view(&http, &base, Duration::from_secs(20), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(2)
        })
        .await;
        // The heartbeat is 300 ms: a seed taken for missing would be dialled ~5 times by now.
        tokio::time::sleep(Duration::from_secs(4)).await;
        for child in [&mut second, &mut first] {
            let _ = child.kill();
            let _ = child.wait();
        }
        for log in [first_log, second_log] {
            let text = std::fs::read_to_string(log.path()).expect("read log");
            assert!(
                !text.contains("duplicate_connection"),
                "the seed was dialled again while connected:\n{text}"
            );
        }
    })
    .await;
}

/// Starts `spec` with its warnings in a file, waits for `gorgon node ready`; its web address.
fn spawn_logged(spec: &NodeSpec) -> (std::process::Child, tempfile::NamedTempFile, Option<String>) {
    use std::io::BufRead;
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gorgon"))
        .args(spec.args(None, ""))
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log.reopen().expect("log file"))
        .spawn()
        .expect("start gorgon");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut base = None;
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(url) = line.strip_prefix("gorgon listening on ") {
            base = Some(url.trim().to_string());
        } else if line.starts_with("gorgon node ready") {
            break;
        }
    }
    // Keeps reading, so the pipe never fills.
    std::thread::spawn(move || lines.for_each(drop));
    (child, log, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_embedded_store_is_refused() {
    bounded(async {
        let first = NodeSpec::new("web,store", None);
        let _first = first.start(None, "");
        let second = NodeSpec::new("app,store", Some(first.cluster_port));
        let (ok, stderr) = second.start_expecting_exit(None, "");
        assert!(!ok, "a second store node must not start");
        assert!(
            stderr.contains("the store role already runs on"),
            "it says why: {stderr}"
        );
    })
    .await;
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_node_is_dropped_by_the_heartbeat_and_rejoins_when_it_resumes() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::EverySec).await else {
            return;
        };
        let Trio {
            http,
            web: _web,
            base,
            backend: _backend,
            running: hung,
            ..
        } = Trio::start(&redis).await;
        let (_, token) = common::register_and_login(&http, &base, "hopper@example.com").await;
        let item = create_item(&http, &base, &token, "read while a node hangs")
            .await
            .expect("create an item");
        let id = item["id"].as_str().expect("id").to_string();

        // A stopped process keeps its sockets open: only the heartbeat can tell.
        signal(hung.pid(), "STOP");
        let stopped_at = Instant::now();
        let read = |http: Client| {
            let (base, token, id) = (base.clone(), token.clone(), id.clone());
            async move {
                http.get(format!("{base}/api/v1/items/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map(|r| r.status())
            }
        };
        let mut failed = 0;
        for _ in 0..20 {
            if read(http.clone()).await.ok() != Some(StatusCode::OK) {
                failed += 1;
            }
        }
        wait_view(&http, &base, Duration::from_secs(10), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(2)
        })
        .await;
        let dropped_after = stopped_at.elapsed();
        for _ in 0..20 {
            assert_eq!(
                read(http.clone()).await.ok(),
                Some(StatusCode::OK),
                "reads after the drop"
            );
        }
        signal(hung.pid(), "CONT");
        wait_view(&http, &base, Duration::from_secs(15), |v| {
            v["nodes"].as_array().map(Vec::len) == Some(3)
                && v["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().all(|n| n["reachable"] == "ok"))
        })
        .await;
        eprintln!(
            "SIGSTOP of an auth,app node: {failed} of 20 reads failed while it hung, session \
             dropped after {dropped_after:?}, back {:?} after the stop",
            stopped_at.elapsed()
        );
        // Reads that met the hung node wait one call timeout, then go to another member.
        assert_eq!(failed, 0, "reads are retried on another member");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_node_killed_under_load_loses_no_acknowledged_write() {
    bounded(async {
        let Some(redis) = RedisServer::start_or_skip(Fsync::Always).await else {
            return;
        };
        let Trio {
            ns,
            http,
            web: _web,
            base,
            backend_spec,
            backend: mut store_node,
            running: _second,
            ..
        } = Trio::start(&redis).await;
        let (token, load) = Load::as_new_user(&http, &base, "liskov@example.com").await;

        tokio::time::sleep(Duration::from_secs(2)).await;
        let before_kill = load.written();
        let killed_at = Instant::now();
        // The embedded store belongs to this node alone: reads stop until it is back, while
        // writes wait in Redis (the store's durable queue) rather than fail.
        store_node.kill9();
        tokio::time::sleep(Duration::from_secs(2)).await;
        store_node = backend_spec.start(Some(&redis), &ns);
        wait_ready(&http, &base).await;
        let back_after = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = load.finish().await;
        assert!(store_node.is_running());

        let last_read_error = log.last_failed_read_sent_after(killed_at);
        eprintln!(
            "kill -9 of the store node under load: {} reads ok, {} read errors (the last sent {:?} after \
             the kill), ready again after {back_after:?}; {} writes acknowledged ({before_kill} \
             before the kill), {} write errors (first: {:?})",
            log.reads_ok,
            log.read_errors.len(),
            last_read_error,
            log.written.len(),
            log.write_errors.len(),
            log.write_errors.first().map(|(_, e)| e),
        );
        if let Some(last) = last_read_error {
            assert!(
                last < back_after + Duration::from_secs(1),
                "a read sent {last:?} after the kill failed, though the store was back after {back_after:?}"
            );
        }
        assert!(log.reads_ok > 100, "the readers barely ran: {}", log.reads_ok);
        assert!(log.written.len() > before_kill, "writes continued");
        log.assert_all_written_readable(&http, &base, &token).await;
    })
    .await;
}
