//! The servers a chaos run starts around the Gorgon nodes, on loopback ports, in its state
//! directory: Redis (AOF, fsync on every write), PostgreSQL (a primary and a synchronous standby,
//! rebuilt after each failover), and HAProxy with `deploy/haproxy.cfg` as shipped.
//!
//! Every child runs in a process group of its own and gets SIGKILL from the kernel if the chaos
//! command dies (`PR_SET_PDEATHSIG`), so an interrupted run leaves nothing behind.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a server may take to answer after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `command` in a process group of its own, from a thread that lives as long as this
/// process: `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, so forking
/// from a runtime worker could kill a server when that worker thread is retired.
pub fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("chaos-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static: park so the children's parent thread stays.
                loop {
                    std::thread::park();
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the spawner thread");
        }
        Mutex::new(tx)
    });
    let parent = std::process::id() as libc::pid_t;
    // Safety: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.process_group(0);
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| std::io::Error::other("spawner poisoned"))?
        .send((command, reply))
        .map_err(|_| std::io::Error::other("spawner gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("spawner gone"))?
}

/// Sends `signal` to a process.
pub fn signal(pid: u32, signal: libc::c_int) {
    // Safety: a plain syscall on a process this run started.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// SIGKILL to a child and its process group, and reaps it.
pub fn kill_child(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // Safety: plain syscalls on a process group this run started.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `program` can be run (found on PATH or at its path).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Polls a TCP port until `check` succeeds, the child exits, or the time is up.
async fn wait_until<F, Fut>(
    child: &mut Child,
    what: &str,
    log: &Path,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{what} exited ({status}) while starting; log:\n{}",
                log_tail(log, 20)
            );
        }
        let last = match tokio::time::timeout(Duration::from_secs(2), check()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "no answer within 2 s".into(),
        };
        if Instant::now() >= deadline {
            bail!(
                "{what} not ready within {} s ({last}); log:\n{}",
                READY_TIMEOUT.as_secs(),
                log_tail(log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- Redis --------------------------------------------------------------------------------------

/// `redis-server` with the AOF fsynced at every write, so a write it acknowledged survives
/// `kill -9`.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start(dir: PathBuf) -> anyhow::Result<RedisServer> {
        std::fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            port: free_port()?,
            dir,
            child: None,
        };
        server.launch().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn launch(&mut self) -> anyhow::Result<()> {
        let log = self.dir.join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = spawn_tied(command).context("cannot start redis-server")?;
        let url = self.url();
        let ready = wait_until(&mut child, "redis-server", &log, || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).map_err(|e| e.to_string())?;
                let mut con = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        self.child = Some(child);
        ready
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// --- PostgreSQL ---------------------------------------------------------------------------------

const PG_SUPERUSER: &str = "gorgon";

/// Where Debian keeps the server programs: `GORGON_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `initdb` on PATH.
pub fn pg_bin() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("GORGON_PG_BIN") {
        let dir = PathBuf::from(dir);
        return usable(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| usable(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("initdb"))
        .find(|candidate| candidate.is_file())
        .and_then(|initdb| std::fs::canonicalize(initdb).ok())
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .filter(|dir| usable(dir))
}

/// Who the server programs run as: this user, unless it is root (PostgreSQL refuses root):
/// then `postgres` (or `nobody`).
fn pg_owner() -> anyhow::Result<Option<(u32, u32)>> {
    // Safety: plain libc calls; `getpwnam` returns a pointer into static storage, read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(None);
        }
        for name in [c"postgres", c"nobody"] {
            let entry = libc::getpwnam(name.as_ptr());
            if !entry.is_null() {
                return Ok(Some(((*entry).pw_uid, (*entry).pw_gid)));
            }
        }
    }
    bail!("running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")
}

/// One PostgreSQL server in a directory of its own.
pub struct PgServer {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PgServer {
    fn empty(bin: PathBuf, dir: PathBuf) -> anyhow::Result<PgServer> {
        std::fs::create_dir_all(&dir)?;
        let owner = pg_owner()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", dir.display()))?;
            // The owner must be able to reach its directory through the state directory.
            if let Some(parent) = dir.parent() {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755));
            }
        }
        Ok(PgServer {
            port: free_port()?,
            bin,
            dir,
            owner,
            child: None,
        })
    }

    /// `initdb` and a start: a primary with fsync on, ready for a standby.
    pub async fn primary(bin: PathBuf, dir: PathBuf) -> anyhow::Result<PgServer> {
        let mut server = Self::empty(bin, dir)?;
        let data = server.data().to_string_lossy().into_owned();
        server
            .run_tool(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    PG_SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
            )
            .await?;
        server.append_conf(
            "postgresql.conf",
            "\n# gorgon chaos\nfsync = on\nsynchronous_commit = on\nmax_connections = 300\n\
             shared_buffers = 128MB\nwal_level = replica\nmax_wal_senders = 5\n\
             hot_standby = on\nlog_min_messages = warning\n",
        )?;
        std::fs::write(
            server.data().join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\n\
             local replication all trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        server.launch().await?;
        Ok(server)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started, which `primary` then
    /// waits for at every commit: a write the primary acknowledged is on the standby too.
    pub async fn standby_of(primary: &PgServer, dir: PathBuf) -> anyhow::Result<PgServer> {
        let _ = std::fs::remove_dir_all(&dir);
        let mut standby = Self::empty(primary.bin.clone(), dir)?;
        let name = format!("gorgon_standby_{}", standby.port);
        let data = standby.data().to_string_lossy().into_owned();
        standby
            .run_tool(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    PG_SUPERUSER,
                    "-D",
                    &data,
                    "-R",
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                    "--no-sync",
                ],
            )
            .await?;
        // Later lines of postgresql.auto.conf win over what -R wrote.
        standby.append_conf(
            "postgresql.auto.conf",
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user={PG_SUPERUSER} \
                 application_name={name}'\nsynchronous_standby_names = ''\n",
                primary.port
            ),
        )?;
        standby.launch().await?;
        for sql in [
            format!("ALTER SYSTEM SET synchronous_standby_names = '\"{name}\"'"),
            "SELECT pg_reload_conf()".to_string(),
        ] {
            primary.sql(&sql).await?;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let state = primary
                .query_text(&format!(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'"
                ))
                .await;
            if matches!(&state, Ok(Some(s)) if s == "sync") {
                return Ok(standby);
            }
            if Instant::now() >= deadline {
                bail!("the standby did not become synchronous ({state:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `pg_ctl promote`; returns once it takes writes.
    pub async fn promote(&self) -> anyhow::Result<()> {
        let data = self.data().to_string_lossy().into_owned();
        self.run_tool("pg_ctl", &["promote", "-w", "-t", "60", "-D", &data])
            .await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let recovering = self.query_text("SELECT pg_is_in_recovery()").await;
            if matches!(&recovering, Ok(Some(s)) if s == "f") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the standby was not promoted ({recovering:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` the postmaster and its backends (each in a session of its own).
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let children = children_of(pid);
        kill_child(&mut child);
        for c in &children {
            signal(*c, libc::SIGKILL);
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{PG_SUPERUSER}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    pub async fn sql(&self, sql: &str) -> anyhow::Result<()> {
        let client = self.client().await?;
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("PostgreSQL: {sql}"))
    }

    async fn query_text(&self, sql: &str) -> anyhow::Result<Option<String>> {
        let client = self.client().await?;
        let rows = client.simple_query(sql).await?;
        Ok(rows.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        }))
    }

    async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user={PG_SUPERUSER} dbname=postgres connect_timeout=2",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .context("connect to PostgreSQL")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn program(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command.current_dir(&self.dir).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    async fn run_tool(&self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut command = self.program(name);
        command.args(args).stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await?
            .with_context(|| format!("cannot run {name}"))?;
        if !output.status.success() {
            bail!(
                "{name} failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn append_conf(&self, file: &str, text: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join(file))
            .with_context(|| format!("open {file}"))?;
        conf.write_all(text.as_bytes())?;
        Ok(())
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        if let Some((uid, gid)) = self.owner {
            let _ = std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid));
        }
        let mut command = self.program("postgres");
        command
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = spawn_tied(command).context("cannot start postgres")?;
        let port = self.port;
        let result = wait_until(&mut child, "postgres", &self.log_path(), || async move {
            let (client, connection) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user={PG_SUPERUSER} dbname=postgres"),
                tokio_postgres::NoTls,
            )
            .await
            .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        self.child = Some(child);
        result
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    // The fields after the command name, which is in parentheses.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

// --- HAProxy ------------------------------------------------------------------------------------

/// The balancer's configuration as shipped in `deploy/`.
const HAPROXY_CFG: &str = include_str!("../../deploy/haproxy.cfg");

pub fn haproxy_program() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// HAProxy in front of the two fronts.
pub struct Haproxy {
    pub port: u16,
    child: Child,
}

impl Haproxy {
    pub async fn start(dir: &Path, fronts: [u16; 2]) -> anyhow::Result<Haproxy> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, HAPROXY_CFG)?;
        let port = free_port()?;
        let log = dir.join("haproxy.log");
        let mut command = Command::new(haproxy_program());
        command
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .env("GORGON_LB_BIND", format!("127.0.0.1:{port}"))
            .env(
                "GORGON_LB_STATS_BIND",
                format!("127.0.0.1:{}", free_port()?),
            )
            .env("GORGON_FRONT_1", format!("127.0.0.1:{}", fronts[0]))
            .env("GORGON_FRONT_2", format!("127.0.0.1:{}", fronts[1]))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null());
        let mut child = spawn_tied(command).context("cannot start haproxy")?;
        wait_until(&mut child, "haproxy", &log, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await?;
        Ok(Haproxy { port, child })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}
