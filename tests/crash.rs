//! Crash safety: the real binary under a bounded burst of writes is killed with SIGKILL (or
//! stopped with SIGTERM); after a restart every write that got a 2xx is there, as written.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct Gorgon {
    child: Child,
    base: String,
}

fn start(dir: &std::path::Path) -> Gorgon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gorgon"))
        .args(["run", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start gorgon");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("gorgon listening on ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("gorgon prints its address");
    Gorgon { child, base }
}

async fn user_token(client: &Client, base: &str) -> String {
    let creds =
        json!({"name": "Crash", "email": "crash@example.com", "password": "crash-password"});
    let resp = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": "crash@example.com", "password": "crash-password"}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

/// Writes items from `writers` tasks until the server stops answering (or a time bound);
/// returns every (id, title) that got a 201.
async fn burst(
    base: String,
    token: String,
    writers: usize,
    until: Duration,
) -> Vec<(String, String)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + until;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (base, token, acked) = (base.clone(), token.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for n in 0.. {
                if Instant::now() > deadline {
                    break;
                }
                let title = format!("writer {w} item {n}");
                let resp = client
                    .post(format!("{base}/api/v1/items"))
                    .bearer_auth(&token)
                    .json(&json!({"title": title, "body": "crash test"}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let item: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => break,
                        };
                        acked
                            .lock()
                            .push((item["id"].as_str().unwrap().to_string(), title));
                    }
                    _ => break,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().clone();
    acked
}

async fn verify(base: &str, acked: &[(String, String)]) {
    let client = Client::new();
    for (id, title) in acked {
        let resp = client
            .get(format!("{base}/api/v1/items/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "acknowledged item {id} lost");
        let item: Value = resp.json().await.unwrap();
        assert_eq!(item["title"], title.as_str());
    }
}

/// Starts the binary on `dir` and 8 writers against it (they stop when it stops answering).
async fn start_with_burst(
    dir: &std::path::Path,
) -> (Gorgon, tokio::task::JoinHandle<Vec<(String, String)>>) {
    let gorgon = start(dir);
    let token = user_token(&Client::new(), &gorgon.base).await;
    let writes = tokio::spawn(burst(
        gorgon.base.clone(),
        token,
        8,
        Duration::from_secs(20),
    ));
    (gorgon, writes)
}

/// Starts the binary again on `dir` and checks every acknowledged write.
async fn restart_and_verify(dir: &std::path::Path, acked: &[(String, String)]) {
    let mut restarted = start(dir);
    verify(&restarted.base, acked).await;
    restarted.child.kill().ok();
    restarted.child.wait().ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut gorgon, writes) = start_with_burst(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gorgon.child.kill().expect("SIGKILL");
    gorgon.child.wait().expect("reaped");
    let acked = writes.await.unwrap();
    assert!(
        acked.len() > 50,
        "the burst wrote too little to mean anything: {}",
        acked.len()
    );

    restart_and_verify(dir.path(), &acked).await;
    eprintln!(
        "{} acknowledged writes all present after SIGKILL",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_writes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut gorgon, writes) = start_with_burst(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = Command::new("kill")
        .args(["-TERM", &gorgon.child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let exit = gorgon.child.wait().expect("exits");
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
    let acked = writes.await.unwrap();
    assert!(!acked.is_empty());

    restart_and_verify(dir.path(), &acked).await;
}
