//! The real `gorgon` binary as a child process: started with the given flags, considered up once it
//! prints `gorgon node ready` (and, when it has the web role, `gorgon listening on URL`; with
//! `--metrics-listen`, `gorgon metrics on URL` comes before it), and stopped with SIGKILL or
//! SIGTERM. Nothing is mocked.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a process may take to print `gorgon node ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the stdout reader thread reports.
enum Event {
    Listening(String),
    Metrics(String),
    Ready,
}

pub struct GorgonProcess {
    child: Child,
    /// `http://ADDR` when the process has the web role.
    pub base: Option<String>,
    /// `http://ADDR/metrics` when it was started with `--metrics-listen`.
    pub metrics: Option<String>,
    name: String,
}

impl GorgonProcess {
    /// Starts `gorgon ARGS` with `RUST_LOG=warn` (plus `envs`), stderr inherited, and returns once
    /// it is ready. Panics after 60 s, or if it exits first.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> GorgonProcess {
        let name = describe(args);
        let expect_web = serves_web(args);
        let mut command = Command::new(env!("CARGO_BIN_EXE_gorgon"));
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let tag = name.clone();
        // Reads stdout to the end (so the pipe never fills), reporting the two lines we wait for.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("gorgon listening on ") {
                    let _ = tx.send(Event::Listening(url.trim().to_string()));
                } else if let Some(url) = line.strip_prefix("gorgon metrics on ") {
                    let _ = tx.send(Event::Metrics(url.trim().to_string()));
                } else if line.trim_start().starts_with("gorgon node ready") {
                    let _ = tx.send(Event::Ready);
                } else {
                    eprintln!("[{tag}] {line}");
                }
            }
        });

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut base: Option<String> = None;
        let mut metrics: Option<String> = None;
        let mut ready = false;
        while !(ready && (base.is_some() || !expect_web)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Event::Listening(url)) => base = Some(url),
                Ok(Event::Metrics(url)) => metrics = Some(url),
                Ok(Event::Ready) => ready = true,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let missing = if !ready {
                        "`gorgon node ready`"
                    } else {
                        "`gorgon listening on URL` (it has the web role)"
                    };
                    panic!(
                        "{name} did not print {missing} within {} s",
                        READY_TIMEOUT.as_secs()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the process is exiting; give it 2 s to say how.
                    let until = Instant::now() + Duration::from_secs(2);
                    let status = loop {
                        match child.try_wait() {
                            Ok(Some(status)) => break format!("{status}"),
                            Ok(None) if Instant::now() < until => {
                                std::thread::sleep(Duration::from_millis(50))
                            }
                            _ => {
                                let _ = child.kill();
                                let _ = child.wait();
                                break "still running; killed".to_string();
                            }
                        }
                    };
                    panic!("{name} closed stdout before it was ready (exit: {status})");
                }
            }
        }
        GorgonProcess {
            child,
            base,
            metrics,
            name,
        }
    }

    /// The web address; panics if the process has no web role.
    pub fn base(&self) -> String {
        self.base
            .clone()
            .unwrap_or_else(|| panic!("{} has no web role", self.name))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.child.wait().expect("reap the killed process");
    }

    /// SIGTERM (a graceful stop); does not wait, see `wait_exit`.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("wait for {}: {e}", self.name),
            }
        }
    }
}

impl Drop for GorgonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gorgon run --roles auth,app,store` → "gorgon run [auth,app,store]", for messages.
fn describe(args: &[&str]) -> String {
    let command = args.first().copied().unwrap_or("");
    format!("gorgon {command} [{}]", roles_of(args).unwrap_or("all"))
}

fn roles_of<'a>(args: &[&'a str]) -> Option<&'a str> {
    let mut iter = args.iter().copied();
    while let Some(arg) = iter.next() {
        if arg == "--roles" {
            return iter.next();
        }
        if let Some(value) = arg.strip_prefix("--roles=") {
            return Some(value);
        }
    }
    None
}

/// Whether `gorgon run ARGS` has the web role (the default, `all`, does).
fn serves_web(args: &[&str]) -> bool {
    if args.first().copied() != Some("run") {
        return false;
    }
    match roles_of(args) {
        None => true,
        Some(roles) => roles
            .split(',')
            .map(str::trim)
            .any(|r| r == "web" || r == "all"),
    }
}
