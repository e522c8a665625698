//! `gorgon chaos` end to end, as a user runs it: one fault of each kind in a 60-second run on
//! each built-in topology (Redis, HAProxy, the nodes, and PostgreSQL with a standby for the
//! `postgres` one, all on loopback), which must PASS every invariant and name every fault; and a
//! deliberately broken build (every 10th acknowledged write dropped, a hidden flag only tests
//! set), which chaos must catch. The runs go one after the other: measured recoveries on two
//! cores mean nothing while another cluster runs beside them.
//!
//! Skipped with a message when `redis-server`, `haproxy` or PostgreSQL is missing, unless
//! `GORGON_REQUIRE_TOOLS` is set (as `scripts/test.sh` does).

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

fn required() -> bool {
    std::env::var_os("GORGON_REQUIRE_TOOLS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether the servers a chaos run starts are installed.
fn tools_present() -> bool {
    let haproxy = Path::new("/usr/sbin/haproxy").exists() || on_path("haproxy");
    let postgres = std::fs::read_dir("/usr/lib/postgresql")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
        || std::env::var_os("GORGON_PG_BIN").is_some();
    let found = haproxy && postgres && on_path("redis-server");
    if !found {
        assert!(
            !required(),
            "redis-server, haproxy and PostgreSQL are required (scripts/test.sh installs them)"
        );
        eprintln!("SKIPPED: redis-server, haproxy or PostgreSQL is not installed");
    }
    found
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs `gorgon chaos` with `args`: (exit code, stdout, the JSON report if written).
fn chaos(args: &[&str], json: Option<&Path>) -> (i32, String, Option<Value>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gorgon"));
    command.arg("chaos").args(args);
    if let Some(path) = json {
        command.arg("--json").arg(path);
    }
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run gorgon chaos");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    let report = json
        .and_then(|p| std::fs::read(p).ok())
        .map(|bytes| serde_json::from_slice::<Value>(&bytes).expect("the report is JSON"));
    (output.status.code().unwrap_or(-1), stdout, report)
}

fn invariant<'a>(report: &'a Value, prefix: &str) -> &'a Value {
    report["invariants"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no invariant {prefix:?} in {}", report["invariants"]))
}

#[test]
fn the_plan_is_drawn_from_the_seed_alone() {
    let plan = |seed: &str| {
        let (code, out, _) = chaos(
            &[
                "--seed",
                seed,
                "--duration",
                "60s",
                "--topology",
                "postgres",
                "--plan",
            ],
            None,
        );
        assert_eq!(code, 0, "{out}");
        out
    };
    let first = plan("5");
    assert_eq!(first, plan("5"), "the same seed, the same plan");
    assert_ne!(first, plan("6"));
    for kind in ["kill", "pause", "redis", "db", "net", "drain"] {
        assert!(
            first.contains(&format!("  {kind} ")),
            "{kind} missing:\n{first}"
        );
    }
    let (code, out, _) = chaos(&["--duration", "20s", "--plan"], None);
    assert_ne!(code, 0, "a run too short for its faults is refused:\n{out}");
}

#[test]
fn chaos_passes_on_both_topologies_and_catches_a_broken_build() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    for topology in ["embedded", "postgres"] {
        let json = dir.path().join(format!("{topology}.json"));
        let (code, out, report) = chaos(
            &["--seed", "1", "--duration", "60s", "--topology", topology],
            Some(&json),
        );
        let report = report.unwrap_or_else(|| panic!("no report for {topology}:\n{out}"));
        let plan_at = out.find("plan for seed 1").expect("the plan is printed");
        let load_at = out.find("load starts").expect("the load is announced");
        assert!(plan_at < load_at, "the plan comes first");
        assert!(out.contains("RESULT: PASS"), "{topology}:\n{out}");
        assert_eq!(code, 0, "{topology}");
        assert_eq!(report["passed"], true);
        let faults = report["faults"].as_array().expect("faults");
        for kind in ["kill", "pause", "redis", "db", "net", "drain"] {
            let row = faults
                .iter()
                .find(|f| f["kind"] == kind)
                .unwrap_or_else(|| panic!("{topology}: no {kind} fault in the report"));
            assert!(
                out.contains(&format!("#{} {kind} ", row["n"])),
                "{kind} not named"
            );
            assert!(row["recovered_after_s"].is_number(), "{row}");
            assert_eq!(row["applied"]["healed"], true, "{row}");
        }
        for name in [
            "every acknowledged write",
            "every accepted job",
            "every request answered",
            "SSE clients",
            "back under",
        ] {
            assert_eq!(invariant(&report, name)["passed"], true, "{name}");
        }
        assert!(
            report["requests"].as_u64().unwrap_or(0) > 5_000,
            "{}",
            report["requests"]
        );
        assert!(!report["timeline"].as_array().expect("timeline").is_empty());
        // Every fault's band reached the dashboards (at least its end mark, which carries it
        // whole: a start mark is lost while the stats role's node is the one down).
        let taken = report["marks_taken"].as_u64().unwrap_or(0);
        assert!(taken >= faults.len() as u64, "marks taken: {taken}");
    }

    // The broken build: every 10th acknowledged write is never stored.
    let json = dir.path().join("broken.json");
    let (code, out, report) = chaos(
        &[
            "--seed",
            "2",
            "--duration",
            "30s",
            "--faults",
            "drain",
            "--unsafe-drop-every-nth-write",
            "10",
        ],
        Some(&json),
    );
    let report = report.expect("a report of the broken run");
    assert_eq!(code, 2, "a failed invariant exits with 2:\n{out}");
    assert!(out.contains("RESULT: FAIL"));
    let writes = invariant(&report, "every acknowledged write");
    assert_eq!(writes["passed"], false, "{writes}");
    assert!(
        writes["detail"].as_str().unwrap_or("").contains("missing"),
        "{writes}"
    );
}
