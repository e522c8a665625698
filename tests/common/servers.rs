//! What the test servers (SecantusDB, PostgreSQL) share: starting them so that none outlives the
//! test process, free ports, database names, and whether a missing server skips or fails a test.
//!
//! A server runs in a process group of its own and gets SIGKILL from the kernel when the test process dies
//! (`PR_SET_PDEATHSIG`, armed from a thread that lives as long as the process), even one shared
//! through a `static` (statics are never dropped).

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Whether a missing tool fails the test instead of skipping it.
pub fn tools_required() -> bool {
    match std::env::var("GORGON_REQUIRE_TOOLS") {
        Ok(v) => !v.is_empty() && v != "0",
        Err(_) => false,
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `command` from a thread that lives as long as the test process: the child's
/// `PR_SET_PDEATHSIG` fires when the thread that forked it ends, so forking from a test's own
/// runtime thread would kill a shared server when that test ends.
pub fn spawn_tied_to_process(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-server-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The channel is in a static and never closes: park so that this thread, the
                // children's parent, lives until the process exits.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id() as libc::pid_t;
    // Safety: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the signal was armed.
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

/// A database name no other test uses: `prefix` and a fresh UUID (MongoDB and PostgreSQL allow 63
/// bytes).
pub fn unique_database(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
