//! The embedded store at its limits, on real processes: a full disk, and expensive searches
//! looping beside the node's other reads.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::GorgonProcess;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// A tmpfs mounted on a directory for the test's lifetime; unmounted on drop, even on failure.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (with the reason) when this machine cannot mount one (not root, no privilege).
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file until the disk refuses more; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler file");
    let chunk = vec![7u8; 16 * 1024];
    for _ in 0..10_000 {
        if file.write_all(&chunk).and_then(|_| file.sync_data()).is_err() {
            break;
        }
    }
    // Whatever is left is smaller than a chunk: take it byte-sized.
    while file.write_all(&[7u8; 512]).and_then(|_| file.flush()).is_ok() {}
    path
}

async fn status_of(client: &Client, url: &str) -> StatusCode {
    client.get(url).send().await.expect("request").status()
}

/// With its data on a full 8 MB disk, the node answers writes 507 `insufficient_storage` (not
/// 500) and `/readyz` 503; once space is freed, it is ready and writes again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let _tmpfs = match Tmpfs::mount(&data, "8m") {
        Ok(mounted) => mounted,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_answers_507: cannot mount a tmpfs here ({why})");
            return;
        }
    };
    // Declared after the mount: dropped (killed) before it is unmounted.
    let data_arg = data.to_str().expect("utf-8 path").to_string();
    let node = tokio::task::block_in_place(|| {
        GorgonProcess::spawn(
            &[
                "run",
                "--listen",
                "127.0.0.1:0",
                "--data",
                &data_arg,
                "--store-checkpoint-idle",
                "200ms",
            ],
            &[],
        )
    });
    let base = node.base();
    let client = Client::new();
    let (_, token) = common::register_and_login(&client, &base, "full@example.com").await;
    let write = |n: usize| {
        let client = client.clone();
        let url = format!("{base}/api/v1/items");
        let token = token.clone();
        async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"title": format!("item {n}"), "body": "x".repeat(60_000)}))
                .send()
                .await
                .expect("request");
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    assert_eq!(write(0).await.0, StatusCode::CREATED);
    assert_eq!(
        status_of(&client, &format!("{base}/readyz")).await,
        StatusCode::OK
    );

    let filler = tokio::task::block_in_place(|| fill(&data));
    // The log may still have room for a few writes; the first refusal must be a clean 507.
    let mut refused = None;
    for n in 1..=300 {
        let (status, body) = write(n).await;
        if status != StatusCode::CREATED {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("300 writes of 60 KB fit on a full 8 MB disk");
    assert_eq!(
        status,
        StatusCode::INSUFFICIENT_STORAGE,
        "a write on a full disk: {body}"
    );
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = ready.json().await.expect("readyz body");
    assert_eq!(ready["status"], "not_ready", "{ready}");
    assert!(
        ready["checks"]["store"]
            .as_str()
            .is_some_and(|s| s.contains("full")),
        "{ready}"
    );
    // Reads still work.
    assert_eq!(
        status_of(&client, &format!("{base}/healthz")).await,
        StatusCode::OK
    );

    std::fs::remove_file(&filler).expect("free the space");
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_of(&client, &format!("{base}/readyz")).await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "not ready 15 s after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = write(1000).await;
    assert_eq!(status, StatusCode::CREATED, "a write once space is back: {body}");
    drop(node);
}
