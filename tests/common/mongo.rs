//! A real MongoDB wire-protocol server for the tests: SecantusDB (`secantusd-py`, PyPI,
//! GPL-2.0, installed at test time by `scripts/test.sh`, never vendored) on its own free loopback
//! port and temporary data directory. It presents itself as a single-node replica set (`secantus`),
//! so a plain `mongodb://127.0.0.1:PORT/` works.
//!
//! The server runs in a process group of its own and is SIGKILLed when its `MongoServer` drops;
//! it also gets SIGKILL from the kernel when the test process dies (`PR_SET_PDEATHSIG`, armed from
//! a thread that lives as long as the process), so no server outlives its tests, not even one
//! shared through a `static` (statics are never dropped).
//!
//! Where the server comes from: `GORGON_SECANTUSD` (the path `scripts/test.sh` exports), else
//! `secantusd-py` on PATH, else the venv `scripts/test.sh` installs into
//! (`${GORGON_TEST_VENV:-$HOME/.cache/gorgon/secantus-venv}`). Tests skip (with a message) when
//! none is there, unless `GORGON_REQUIRE_TOOLS` is set: then a missing server fails them.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::servers::{free_port, spawn_tied_to_process, tools_required};

/// How long a (re)started server may take to answer `ping` (a Python process: about half a
/// second on an idle machine, more on a loaded one).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct MongoServer {
    child: Option<Child>,
    program: PathBuf,
    port: u16,
    dir: TempDir,
}

/// Where `secantusd-py` is, if anywhere.
pub fn secantusd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GORGON_SECANTUSD") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("secantusd-py"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let venv = match std::env::var_os("GORGON_TEST_VENV") {
            Some(venv) => PathBuf::from(venv),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/gorgon/secantus-venv"),
        };
        let program = venv.join("bin/secantusd-py");
        program.is_file().then_some(program)
    })
}

impl MongoServer {
    /// Starts a server, or returns `None` after printing why when SecantusDB is not installed.
    /// Panics instead when `GORGON_REQUIRE_TOOLS` is set.
    pub async fn start_or_skip() -> Option<MongoServer> {
        let Some(program) = secantusd() else {
            if tools_required() {
                panic!(
                    "GORGON_REQUIRE_TOOLS is set but secantusd-py is not installed \
                     (scripts/test.sh installs it; or set GORGON_SECANTUSD)"
                );
            }
            eprintln!(
                "skipped: secantusd-py (SecantusDB) not installed; scripts/test.sh installs it"
            );
            return None;
        };
        Some(Self::start_with(program).await)
    }

    /// One server for the whole test binary, started on first use (`None`: not installed, as
    /// for [`start_or_skip`](Self::start_or_skip)). Tests sharing it keep apart by database name.
    pub async fn shared() -> Option<&'static MongoServer> {
        static SHARED: tokio::sync::OnceCell<Option<MongoServer>> =
            tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async { Self::start_or_skip().await })
            .await
            .as_ref()
    }

    async fn start_with(program: PathBuf) -> MongoServer {
        let dir = tempfile::tempdir().expect("temp dir for secantusd");
        let mut server = MongoServer {
            child: None,
            program,
            port: free_port(),
            dir,
        };
        server.launch().await;
        server
    }

    /// The URL of the server, with no database (each user names its own).
    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    /// The URL with a database name in its path.
    pub fn url_for(&self, database: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL to the server's process group, then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Safety: a plain syscall; the group is the child's own (`process_group(0)`).
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and data directory,
    /// and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("secantusd log file");
        let err = log.try_clone().expect("secantusd log file");
        let mut command = Command::new(&self.program);
        command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(self.dir.path().join("data"))
            // Small: many tests start servers on a machine they share.
            .args(["--cache-size", "128M", "--log-level", "WARNING"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        command
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("secantusd.log")
    }

    async fn launch(&mut self) {
        let child = spawn_tied_to_process(self.command()).unwrap_or_else(|e| {
            panic!("cannot start {}: {e}", self.program.display());
        });
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Polls with `ping` until the server answers; panics after [`READY_TIMEOUT`] or if the
    /// server exits, with the end of its log.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("never answered");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "secantusd on port {} exited ({status}) before answering; log:\n{}",
                        self.port,
                        self.log_tail()
                    );
                }
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                match self.ping().await {
                    Ok(()) => return,
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "secantusd on port {} did not answer within {} s (last: {last}); log:\n{}",
                    self.port,
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ping(&self) -> Result<(), String> {
        let url = format!(
            "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=1000&connectTimeoutMS=1000",
            self.port
        );
        let client = mongodb::Client::with_uri_str(&url)
            .await
            .map_err(|e| e.to_string())?;
        let answer = client
            .database("admin")
            .run_command(mongodb::bson::doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        client.shutdown().immediate(true).await;
        answer
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `uri` with its path replaced by `/name` (options kept).
pub fn with_database(uri: &str, name: &str) -> String {
    let (scheme, rest) = uri.split_once("://").expect("a mongodb:// URI");
    let (authority, options) = match rest.split_once('/') {
        Some((authority, path)) => (
            authority,
            path.split_once('?')
                .map(|(_, o)| format!("?{o}"))
                .unwrap_or_default(),
        ),
        None => (rest, String::new()),
    };
    format!("{scheme}://{authority}/{name}{options}")
}
