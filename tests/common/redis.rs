//! A real `redis-server` for the tests: its own free loopback port and temp directory, AOF on (so
//! a SIGKILL and a restart on the same port and directory replay what was acknowledged), RDB
//! snapshots off. Tests skip (with a message) when `redis-server` is not installed, unless
//! `GORGON_REQUIRE_TOOLS` is set.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a (re)started server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `--appendfsync`: `Always` fsyncs every write before answering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Always,
    EverySec,
}

impl Fsync {
    fn as_arg(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
        }
    }
}

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    fsync: Fsync,
    dir: TempDir,
}

/// Whether a missing tool fails the test instead of skipping it.
fn tools_required() -> bool {
    match std::env::var("GORGON_REQUIRE_TOOLS") {
        Ok(v) => !v.is_empty() && v != "0",
        Err(_) => false,
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

async fn ping_once(url: &str) -> ::redis::RedisResult<String> {
    let client = ::redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    ::redis::cmd("PING").query_async::<String>(&mut con).await
}

impl RedisServer {
    /// Starts a server, or returns `None` after printing why when `redis-server` is not on PATH.
    /// Panics instead when `GORGON_REQUIRE_TOOLS` is set.
    pub async fn start_or_skip(fsync: Fsync) -> Option<RedisServer> {
        if on_path("redis-server").is_none() {
            if tools_required() {
                panic!("GORGON_REQUIRE_TOOLS is set but redis-server is not on PATH");
            }
            eprintln!("skipped: redis-server not installed");
            return None;
        }
        Some(Self::start(fsync).await)
    }

    /// Starts a server and waits until it answers PING (panics after 10 s).
    pub async fn start(fsync: Fsync) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            fsync,
            dir,
        };
        server.launch().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// SIGKILL, then reaps it. Nothing is flushed beyond what `--appendfsync` already did.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and directory (the AOF
    /// is replayed) and waits until it answers PING.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// A fresh connection (panics if the server does not take it within 5 s).
    pub async fn connection(&self) -> ::redis::aio::MultiplexedConnection {
        let client = ::redis::Client::open(self.url()).expect("redis url");
        tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("redis connection within 5 s")
        .expect("redis connection")
    }

    /// `LLEN key`.
    pub async fn llen(&self, key: &str) -> i64 {
        let mut con = self.connection().await;
        ::redis::cmd("LLEN")
            .arg(key)
            .query_async::<i64>(&mut con)
            .await
            .expect("LLEN")
    }

    /// `LRANGE key 0 -1`.
    pub async fn lrange(&self, key: &str) -> Vec<String> {
        let mut con = self.connection().await;
        ::redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async::<Vec<String>>(&mut con)
            .await
            .expect("LRANGE")
    }

    /// `LPUSH key value`; returns the new length.
    pub async fn lpush(&self, key: &str, value: &str) -> i64 {
        let mut con = self.connection().await;
        ::redis::cmd("LPUSH")
            .arg(key)
            .arg(value)
            .query_async::<i64>(&mut con)
            .await
            .expect("LPUSH")
    }

    fn spawn_child(&self) -> Child {
        let port = self.port.to_string();
        Command::new("redis-server")
            .arg("--port")
            .arg(&port)
            .args(["--bind", "127.0.0.1"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", self.fsync.as_arg()])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server")
    }

    async fn launch(&mut self) {
        self.child = Some(self.spawn_child());
        self.wait_ready().await;
    }

    /// Polls (TCP connect, then PING) until the server answers PONG; panics after 10 s or if the
    /// server exits, with the end of its log.
    async fn wait_ready(&mut self) {
        let url = self.url();
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("never connected");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "redis-server on port {} exited ({status}) before answering PING; log:\n{}",
                        self.port,
                        self.log_tail()
                    );
                }
            }
            let connected = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok();
            if connected {
                match tokio::time::timeout(Duration::from_secs(1), ping_once(&url)).await {
                    Ok(Ok(pong)) if pong == "PONG" => return,
                    Ok(Ok(other)) => last = format!("PING answered {other:?}"),
                    Ok(Err(e)) => last = e.to_string(), // e.g. LOADING while the AOF replays
                    Err(_) => last = "PING took over 1 s".into(),
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {} did not answer PING within {} s (last: {last}); log:\n{}",
                    self.port,
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
