//! The Gorgon nodes of a chaos run: `gorgon run` processes with their roles, joined as a cluster
//! over loopback, on Redis (through the fault proxy) and the topology's store. Each keeps its
//! ports and data directory across restarts, as a node restarted by an orchestrator does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::servers::{free_port, kill_child, log_tail, signal, spawn_tied};
use super::topology::NodeDef;
use crate::bus::Role;

/// How long a node may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// What `gorgon run` prints once it serves.
const READY_LINE: &str = "gorgon node ready";

/// What every node of the run shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub bin: PathBuf,
    pub redis_url: String,
    /// `--store` (PostgreSQL through its proxy); `None`: the embedded store in `--data`.
    pub store_url: Option<String>,
    pub cookie: String,
    pub admin_email: String,
    pub admin_password: String,
    /// Hidden test flag passed to every node (`--unsafe-drop-every-nth-write`).
    pub drop_every_nth_write: u64,
}

/// One node: its definition, ports and process.
pub struct NodeProcess {
    pub def: NodeDef,
    pub http_port: Option<u16>,
    pub cluster_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl NodeProcess {
    pub fn new(def: NodeDef, state: &std::path::Path) -> anyhow::Result<NodeProcess> {
        let dir = state.join(format!("node-{}", def.name));
        std::fs::create_dir_all(&dir)?;
        Ok(NodeProcess {
            http_port: def.has(Role::Web).then(free_port).transpose()?,
            cluster_port: free_port()?,
            def,
            dir,
            child: None,
            paused: false,
        })
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn args(&self, shared: &Shared, seeds: &[u16]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--roles".into(),
            self.def.roles.clone(),
            "--data".into(),
            self.dir.join("data").to_string_lossy().into_owned(),
            "--cluster-listen".into(),
            format!("127.0.0.1:{}", self.cluster_port),
            "--redis".into(),
            shared.redis_url.clone(),
            "--redis-namespace".into(),
            "chaos".into(),
            // Quick to notice a lost consumer or peer, so faults heal within their slot.
            "--queue-heartbeat".into(),
            "1s".into(),
            "--cluster-heartbeat".into(),
            "300ms".into(),
            "--cluster-call-timeout".into(),
            "1s".into(),
            // HAProxy checks every 500 ms and takes a front out after 2 failures.
            "--drain-delay".into(),
            "1500ms".into(),
            "--trusted-proxies".into(),
            "127.0.0.1/32".into(),
            "--login-per-minute".into(),
            "100000".into(),
        ];
        let listen = match self.http_port {
            Some(port) => format!("127.0.0.1:{port}"),
            None => "127.0.0.1:0".into(),
        };
        args.extend(["--listen".into(), listen]);
        let joins: Vec<String> = seeds
            .iter()
            .filter(|p| **p != self.cluster_port)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        if !joins.is_empty() {
            args.extend(["--join".into(), joins.join(",")]);
        }
        if let Some(url) = &shared.store_url {
            args.extend(["--store".into(), url.clone()]);
        }
        if shared.drop_every_nth_write > 0 {
            args.extend([
                "--unsafe-drop-every-nth-write".into(),
                shared.drop_every_nth_write.to_string(),
            ]);
        }
        args
    }

    /// Starts the process and waits until it prints that it is ready.
    pub async fn start(&mut self, shared: &Shared, seeds: &[u16]) -> anyhow::Result<()> {
        let log_path = self.log_path();
        let before = ready_lines(&log_path);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut command = Command::new(&shared.bin);
        command
            .args(self.args(shared, seeds))
            .env("GORGON_CLUSTER_COOKIE", &shared.cookie)
            .env("GORGON_ADMIN_EMAIL", &shared.admin_email)
            .env("GORGON_ADMIN_PASSWORD", &shared.admin_password)
            .env("GORGON_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                std::env::var("GORGON_CHAOS_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = spawn_tied(command)
            .with_context(|| format!("cannot start {}", shared.bin.display()))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "node {} exited ({status}) while starting; log:\n{}",
                    self.def.name,
                    log_tail(&log_path, 20)
                );
            }
            if ready_lines(&log_path) > before {
                break;
            }
            if Instant::now() >= deadline {
                kill_child(&mut child);
                bail!(
                    "node {} not ready within {} s; log:\n{}",
                    self.def.name,
                    READY_TIMEOUT.as_secs(),
                    log_tail(&log_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        self.paused = false;
    }

    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
        }
        self.paused = false;
    }

    /// SIGTERM, then waits up to `within` for the drain to end (SIGKILL after); says how long
    /// the exit took and whether it was clean.
    pub async fn terminate(&mut self, within: Duration) -> (Duration, bool) {
        let started = Instant::now();
        let Some(mut child) = self.child.take() else {
            return (Duration::ZERO, false);
        };
        if self.paused {
            signal(child.id(), libc::SIGCONT);
            self.paused = false;
        }
        signal(child.id(), libc::SIGTERM);
        while started.elapsed() < within {
            if let Ok(Some(status)) = child.try_wait() {
                return (started.elapsed(), status.success());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        kill_child(&mut child);
        (started.elapsed(), false)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill();
    }
}

/// How many times the node's log says it became ready (the log survives restarts).
fn ready_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.matches(READY_LINE).count())
        .unwrap_or(0)
}
