//! Real PostgreSQL servers for the tests: Debian's `postgresql` package (installed by
//! `scripts/test.sh`), a throwaway cluster per server made with `initdb` in a temporary
//! directory, listening on a free loopback port (and a Unix socket in that directory), trust
//! authentication, `fsync = on`.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI here does), every server
//! program (`initdb`, `postgres`, `pg_basebackup`, `pg_ctl`) runs as the `postgres` system user
//! the package creates (else `nobody`): the temporary directory is handed to that user, and the
//! programs are started with its uid and gid (`Command::uid`/`gid`: setgid, setgroups and setuid
//! in the child before exec, no `su`/`runuser` process in between, so the process started is the
//! server itself and can be signalled and reaped directly).
//!
//! No server outlives its tests: the postmaster runs in a process group of its own and gets
//! SIGKILL from the kernel when the test process dies (see `servers.rs`); its backends and helper
//! processes exit by themselves when it dies (PostgreSQL watches for that). A `PgServer` that
//! drops stops its server at once (SIGQUIT: an immediate shutdown), then SIGKILLs what is left.
//! [`PgServer::kill`] is `kill -9` of the postmaster and every process it started, as when a
//! machine dies; [`PgServer::restart`] starts it again on the same port and data (crash recovery).
//!
//! Where PostgreSQL comes from: `GORGON_PG_BIN` (a directory holding `initdb` and `postgres`),
//! else the newest `/usr/lib/postgresql/*/bin`, else `initdb` on PATH. Tests skip (with a message)
//! when none is there, unless `GORGON_REQUIRE_TOOLS` is set: then a missing server fails them.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::servers::{free_port, spawn_tied_to_process, tools_required, unique_database};

/// How long a (re)started server may take to accept connections (crash recovery included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The superuser every test connects as (trust authentication: no password).
pub const SUPERUSER: &str = "postgres";

pub struct PgServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    dir: TempDir,
    /// The uid and gid the server programs run as (when the tests run as root).
    owner: Option<(u32, u32)>,
    /// Its name as a standby of another server (what that server's
    /// `synchronous_standby_names` lists).
    standby_name: Option<String>,
}

/// Where the server programs are (shared with `gorgon chaos`).
pub use gorgon::chaos::servers::pg_bin;

/// Who the server programs run as: `None` (this user) unless the tests run as root.
fn server_owner() -> Option<(u32, u32)> {
    // Safety: plain libc calls; `getpwnam` returns a pointer into static storage, read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        for name in [c"postgres", c"nobody"] {
            let entry = libc::getpwnam(name.as_ptr());
            if !entry.is_null() {
                return Some(((*entry).pw_uid, (*entry).pw_gid));
            }
        }
    }
    panic!(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL"
    );
}

impl PgServer {
    /// Starts a server, or returns `None` after printing why when PostgreSQL is not installed.
    /// Panics instead when `GORGON_REQUIRE_TOOLS` is set.
    pub async fn start_or_skip() -> Option<PgServer> {
        let Some(bin) = pg_bin() else {
            if tools_required() {
                panic!(
                    "GORGON_REQUIRE_TOOLS is set but PostgreSQL's initdb is not installed \
                     (scripts/test.sh installs Debian's postgresql; or set GORGON_PG_BIN)"
                );
            }
            eprintln!("skipped: PostgreSQL (initdb) not installed; scripts/test.sh installs it");
            return None;
        };
        let mut server = Self::empty(bin);
        server.init().await;
        server.launch().await;
        Some(server)
    }

    /// One server for the whole test binary, started on first use (`None`: not installed, as
    /// for [`start_or_skip`](Self::start_or_skip)). Tests sharing it keep apart by database:
    /// see [`fresh_database`](Self::fresh_database).
    pub async fn shared() -> Option<&'static PgServer> {
        static SHARED: tokio::sync::OnceCell<Option<PgServer>> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async { Self::start_or_skip().await })
            .await
            .as_ref()
    }

    fn empty(bin: PathBuf) -> PgServer {
        let dir = tempfile::tempdir().expect("temp dir for PostgreSQL");
        let owner = server_owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the temp dir to the PostgreSQL user");
        }
        PgServer {
            child: None,
            bin,
            port: free_port(),
            dir,
            owner,
            standby_name: None,
        }
    }

    /// The URL of database `database` (user `postgres`, no password).
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The URL of the `postgres` database (administration).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a database of its own for one test (`prefix` and a fresh UUID); returns its name.
    pub async fn fresh_database(&self, prefix: &str) -> String {
        let name = unique_database(prefix);
        self.sql(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        name
    }

    /// Runs `sql` (one or more statements) in the `postgres` database.
    pub async fn sql(&self, sql: &str) -> Result<(), String> {
        let client = self.admin().await?;
        client.batch_execute(sql).await.map_err(|e| describe(&e))
    }

    /// The first column of the first row of `sql`, as text, in database `database`.
    pub async fn query_text(&self, database: &str, sql: &str) -> Result<Option<String>, String> {
        let client = self.client(database).await?;
        let messages = client.simple_query(sql).await.map_err(|e| describe(&e))?;
        Ok(messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        }))
    }

    async fn admin(&self) -> Result<tokio_postgres::Client, String> {
        self.client("postgres").await
    }

    /// A plain connection (its driver task ends with the client).
    pub async fn client(&self, database: &str) -> Result<tokio_postgres::Client, String> {
        let config = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname={database} connect_timeout=2",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
            .await
            .map_err(|e| describe(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// SIGKILL to the postmaster and to every process it started, as when the machine dies;
    /// returns once they are gone.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // Its backends run in sessions of their own (PostgreSQL calls setsid for each): found
        // by parent, before the postmaster goes.
        let children = children_of(pid);
        // Safety: plain syscalls on processes this test started.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
            for child in &children {
                libc::kill(*child, libc::SIGKILL);
            }
        }
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while children.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An immediate shutdown (SIGQUIT to the postmaster), then [`kill`](Self::kill) for what is
    /// left after a few seconds.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Safety: a plain syscall on the process this test started.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// Kills the server if it runs, then starts it again on the same port and data directory
    /// and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// A streaming standby of `primary`, made with `pg_basebackup -R` and started, which
    /// `primary` then waits for at every commit (`synchronous_standby_names` names it,
    /// `synchronous_commit = on`): a write acknowledged by the primary is on the standby too.
    /// Returns once the primary reports the standby as synchronous.
    pub async fn start_standby_of(primary: &PgServer) -> PgServer {
        let mut standby = Self::empty(primary.bin.clone());
        let name = format!("gorgon_standby_{}", standby.port);
        standby
            .run_tool(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    SUPERUSER,
                    "-D",
                    &standby.data().to_string_lossy(),
                    "-R",
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                    "--no-sync",
                ],
            )
            .await;
        // Later lines of postgresql.auto.conf win over what -R wrote: the standby's name, and
        // no synchronous standby of its own once promoted (it has none).
        let conninfo = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} application_name={name}",
            primary.port
        );
        standby.append_conf(
            "postgresql.auto.conf",
            &format!("primary_conninfo = '{conninfo}'\nsynchronous_standby_names = ''\n"),
        );
        standby.standby_name = Some(name.clone());
        standby.launch().await;
        // One statement each: ALTER SYSTEM refuses to run in a (multi-statement) transaction.
        for sql in [
            format!("ALTER SYSTEM SET synchronous_standby_names = '\"{name}\"'"),
            "ALTER SYSTEM SET synchronous_commit = 'on'".to_string(),
            "SELECT pg_reload_conf()".to_string(),
        ] {
            primary
                .sql(&sql)
                .await
                .unwrap_or_else(|e| panic!("make the standby synchronous ({sql}): {e}"));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let state = primary
                .query_text(
                    "postgres",
                    &format!(
                        "SELECT sync_state FROM pg_stat_replication \
                         WHERE application_name = '{name}'"
                    ),
                )
                .await;
            if matches!(&state, Ok(Some(s)) if s == "sync") {
                return standby;
            }
            assert!(
                Instant::now() < deadline,
                "the standby on port {} did not become synchronous ({state:?}); log:\n{}",
                standby.port,
                standby.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Promotes this standby to a primary (`pg_ctl promote`), and returns once it takes writes.
    pub async fn promote(&self) {
        self.run_tool(
            "pg_ctl",
            &[
                "promote",
                "-w",
                "-t",
                "60",
                "-D",
                &self.data().to_string_lossy(),
            ],
        )
        .await;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let recovering = self
                .query_text("postgres", "SELECT pg_is_in_recovery()")
                .await;
            if matches!(&recovering, Ok(Some(s)) if s == "f") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server on port {} was not promoted ({recovering:?}); log:\n{}",
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the server programs, as the server's owner, in the temp dir (the
    /// owner may not enter the test's working directory).
    fn program(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command.current_dir(self.dir.path()).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Runs a tool to its end; panics with its output if it fails.
    async fn run_tool(&self, name: &str, args: &[&str]) {
        let mut command = self.program(name);
        command.args(args).stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("tool thread")
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        assert!(
            output.status.success(),
            "{name} {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn append_conf(&self, file: &str, text: &str) {
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join(file))
            .unwrap_or_else(|e| panic!("open {file}: {e}"));
        conf.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write {file}: {e}"));
    }

    /// `initdb`, then the settings every test server has.
    async fn init(&mut self) {
        let data = self.data().to_string_lossy().into_owned();
        self.run_tool(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                // The cluster is thrown away with the test; the server itself runs with fsync.
                "--no-sync",
                "--no-instructions",
            ],
        )
        .await;
        self.append_conf(
            "postgresql.conf",
            "\n# Gorgon's test server\n\
             fsync = on\n\
             synchronous_commit = on\n\
             max_connections = 300\n\
             shared_buffers = 128MB\n\
             wal_level = replica\n\
             max_wal_senders = 5\n\
             hot_standby = on\n\
             log_min_messages = warning\n\
             log_min_error_statement = panic\n",
        );
        std::fs::write(
            self.data().join("pg_hba.conf"),
            "local all all trust\n\
             host all all 127.0.0.1/32 trust\n\
             local replication all trust\n\
             host replication all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
    }

    /// Starts the postmaster (this server's port and socket directory given on its command line,
    /// so that a base backup of it does not inherit them) and waits until it accepts connections.
    async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("PostgreSQL log file");
        let err = log.try_clone().expect("PostgreSQL log file");
        let mut command = self.program("postgres");
        command
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = spawn_tied_to_process(command).unwrap_or_else(|e| {
            panic!("cannot start {}: {e}", self.bin.join("postgres").display());
        });
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Polls with `SELECT 1` until the server answers; panics after [`READY_TIMEOUT`] or if the
    /// server exits, with the end of its log.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "PostgreSQL on port {} exited ({status}) before accepting connections; \
                         log:\n{}",
                        self.port,
                        self.log_tail()
                    );
                }
            }
            let last = match self.admin().await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return,
                    Err(e) => describe(&e),
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "PostgreSQL on port {} did not accept connections within {} s (last: {last}); \
                     log:\n{}",
                    self.port,
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The driver error with its cause (the server's message).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// The processes whose parent is `pid` (from `/proc`).
fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|candidate| parent_of(*candidate) == Some(pid))
        .collect()
}

/// The parent of `pid`: the fourth field of `/proc/PID/stat` (after the command in parentheses).
fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_command) = stat.rsplit_once(')')?;
    after_command.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` runs (a zombie, killed and waiting to be reaped, does not).
fn alive(pid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}
