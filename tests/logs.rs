//! Logs as pipelines and people read them, from the real binary: `--log-format json` writes one
//! JSON object per line, and every request's line carries its request id (the caller's
//! `X-Request-Id`, returned in the response), route pattern, status, latency, client and node;
//! the client is what a trusted proxy names, never what an untrusted peer claims; and the
//! commands whose report people read (`gorgon sim`) print it with no log line in between.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A node started with `--log-format json` and `RUST_LOG` unset; its stderr lines, as they come.
struct JsonNode {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    base: String,
    _dir: tempfile::TempDir,
}

impl JsonNode {
    fn start(extra: &[&str]) -> JsonNode {
        let dir = tempfile::tempdir().expect("dir");
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gorgon"))
            .args(["--log-format", "json", "run", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(dir.path())
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gorgon");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        JsonNode {
            child,
            lines,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Every line until one satisfies `found` (each must be a JSON object); panics after 20 s.
    fn until(&self, found: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("the log line did not come");
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(value.is_object(), "{line}");
            if found(&value) {
                return value;
            }
        }
    }
}

impl Drop for JsonNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_from(addr: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(addr.parse::<std::net::IpAddr>().expect("address"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_are_json_with_the_request_id_and_the_trusted_client() {
    let node = JsonNode::start(&["--trusted-proxies", "127.0.0.2"]);
    let started = node.until(|v| v["message"] == "node started");
    assert_eq!(started["level"], "INFO", "{started}");
    let node_id = started["node"].as_str().expect("node id").to_string();

    // Through the "proxy" (127.0.0.2, trusted): the client it names is the one logged.
    let resp = client_from("127.0.0.2")
        .get(format!("{}/api/v1/items/not-an-id", node.base))
        .header("X-Request-Id", "trace-7")
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["x-request-id"], "trace-7");
    let line = node.until(|v| v["request_id"] == "trace-7");
    assert_eq!(line["target"], "gorgon::access", "{line}");
    assert_eq!(
        line["route"], "/api/v1/items/{id}",
        "the pattern, not the path: {line}"
    );
    assert_eq!(line["method"], "GET");
    assert_eq!(line["status"], 400);
    assert!(line["latency_us"].as_u64().is_some(), "{line}");
    assert_eq!(line["client"], "203.0.113.9", "{line}");
    assert_eq!(line["node"], node_id.as_str());

    // From an untrusted peer the header is ignored, and a missing or unusable id is made.
    let resp = client_from("127.0.0.3")
        .get(format!("{}/healthz", node.base))
        .header("X-Request-Id", "has spaces, so no")
        .header("X-Forwarded-For", "198.51.100.1")
        .send()
        .await
        .expect("request");
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(made, "has spaces, so no");
    assert_eq!(made.len(), 32, "{made}");
    let line = node.until(|v| v["request_id"] == made.as_str());
    assert_eq!(line["client"], "127.0.0.3", "{line}");
    assert_eq!(line["route"], "/healthz");
}

#[test]
fn the_simulators_report_is_not_interleaved_with_log_lines() {
    let dir = tempfile::tempdir().expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_gorgon"))
        .args([
            "sim",
            "--users",
            "20",
            "--items",
            "200",
            "--provider-rate",
            "0",
        ])
        .args(["--warmup", "0s", "--duration", "1s", "--data"])
        .arg(dir.path().join("data"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run gorgon sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sim failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("== invariants"), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(" INFO "),
            "an info log line reached the report:\n{text}"
        );
    }
}
