//! The deployment files, checked offline by the tools that read them (no container engine, no
//! Kubernetes cluster, no systemd running here):
//!
//! - `deploy/alerts.yml`: `promtool check rules`; one unit test file per alert in
//!   `deploy/alerts.test/` (a case that fires, one that does not), each run by `promtool test
//!   rules`; every metric it names is one the node describes in `src/telemetry.rs`;
//! - `deploy/prometheus.yml` (compose's Prometheus): `promtool check config`, which loads the rules;
//! - `compose.yaml`: `docker-compose config -q` (Debian's docker-compose 1.x needs no engine for
//!   it), refused without the cluster cookie; the files it mounts exist;
//! - `deploy/systemd/`: `systemd-analyze verify` with ExecStart pointed at this build's binary,
//!   and `systemd-analyze security --offline` holding the hardening to an exposure of 2.0 at most;
//! - `deploy/k8s/`: every manifest against the Kubernetes schemas by `kubernetes-validate`
//!   (PyPI, schemas bundled: run without a network where `unshare -n` works), strict about unknown
//!   fields; the kustomization lists every file; rendered by `kubectl kustomize` where kubectl
//!   is installed; its Redis config is deploy/redis.conf's;
//! - every `GORGON_*` variable these files set is one gorgon reads (src/configuration.rs);
//! - `Dockerfile` and `.dockerignore`: what the image promises (the image itself cannot be built
//!   here).
//!
//! `scripts/test.sh` installs the tools (promtool, docker-compose, systemd-analyze, a venv with
//! kubernetes-validate) and sets `GORGON_REQUIRE_TOOLS=1`: then a missing tool fails the test.
//! Under a bare `cargo test` without them these tests say they were skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Whether `name` is on PATH; when it is not, fails under `GORGON_REQUIRE_TOOLS`, else says the
/// test is skipped.
fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        missing(name);
    }
    found
}

fn missing(name: &str) {
    assert!(
        std::env::var_os("GORGON_REQUIRE_TOOLS").is_none(),
        "{name} is required (scripts/test.sh installs it)"
    );
    eprintln!("SKIPPED: {name} is not installed (scripts/test.sh installs it)");
}

/// Runs `command` in the repository; whether it succeeded, and what it printed (both streams).
fn run(command: &mut Command) -> (bool, String) {
    let out = command
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn assert_runs(command: &mut Command) -> String {
    let shown = format!("{command:?}");
    let (ok, text) = run(command);
    assert!(ok, "{shown} failed:\n{text}");
    text
}

/// The files of a directory of the repository with the given extension, sorted.
fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .map(|e| e.expect("read dir").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    found
}

/// The alert names of `deploy/alerts.yml`.
fn alert_names() -> Vec<String> {
    read("deploy/alerts.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

// --- alerts -------------------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check() {
    // Each rule: a duration, a severity, a summary and a description with a runbook sentence.
    let rules = read("deploy/alerts.yml");
    for rule in rules.split("- alert: ").skip(1) {
        let name = rule.lines().next().unwrap_or_default();
        for part in [
            "\n        for: ",
            "\n          severity: ",
            "\n          summary: ",
            "Runbook: ",
        ] {
            assert!(rule.contains(part), "{name}: no {part:?}");
        }
    }
    if !tool("promtool") {
        return;
    }
    let text = assert_runs(Command::new("promtool").args(["check", "rules", "deploy/alerts.yml"]));
    let count = alert_names().len();
    assert!(count >= 8, "the eight alerts of issue #17: {text}");
    assert!(text.contains(&format!("{count} rules found")), "{text}");
}

#[test]
fn every_alert_has_a_unit_test_that_fires_and_one_that_does_not() {
    let tests = files("deploy/alerts.test", "yml");
    for alert in alert_names() {
        let owners: Vec<&PathBuf> = tests
            .iter()
            .filter(|t| {
                std::fs::read_to_string(t)
                    .unwrap()
                    .contains(&format!("alertname: {alert}\n"))
            })
            .collect();
        assert_eq!(
            owners.len(),
            1,
            "{alert}: one test file in deploy/alerts.test/ (found {owners:?})"
        );
        let text = std::fs::read_to_string(owners[0]).unwrap();
        assert!(
            text.contains("rule_files: [../alerts.yml]"),
            "{}: tests deploy/alerts.yml",
            owners[0].display()
        );
        assert!(
            text.contains("exp_alerts: []") && text.contains("- exp_labels:"),
            "{}: a case where {alert} does not fire and one where it fires",
            owners[0].display()
        );
    }
    if !tool("promtool") {
        return;
    }
    assert!(!tests.is_empty());
    for test in &tests {
        let text = assert_runs(Command::new("promtool").arg("test").arg("rules").arg(test));
        assert!(text.contains("SUCCESS"), "{}: {text}", test.display());
    }
}

#[test]
fn alert_rules_name_only_metrics_the_node_exports() {
    let described = common::metric_names_in(&read("src/telemetry.rs"));
    let unknown: Vec<String> = common::metric_names_in(&read("deploy/alerts.yml"))
        .into_iter()
        .filter(|name| {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !described.iter().any(|d| d == base)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/alerts.yml names metrics src/telemetry.rs does not describe: {unknown:?}"
    );
}

#[test]
fn compose_prometheus_config_loads_the_alert_rules() {
    if !tool("promtool") {
        return;
    }
    let text =
        assert_runs(Command::new("promtool").args(["check", "config", "deploy/prometheus.yml"]));
    assert!(text.contains("1 rule files found"), "{text}");
}

// --- settings -----------------------------------------------------------------------------------

/// Every `GORGON_*` word in `text`.
fn env_names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("GORGON_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// gorgon ignores an environment variable it does not know: a misspelt setting in a deployment
/// file would be lost without a word. Every one they set is a flag's (src/configuration.rs).
#[test]
fn deployment_files_set_only_settings_gorgon_knows() {
    let known: Vec<String> = read("src/configuration.rs")
        .split("env = \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(String::from)
        .collect();
    assert!(known.len() > 50, "{known:?}");
    let mut sources = vec![
        "compose.yaml".to_string(),
        ".env.example".to_string(),
        "Dockerfile".to_string(),
    ];
    for dir in ["deploy/k8s", "deploy/systemd"] {
        for path in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = path.unwrap().path();
            sources.push(format!(
                "{dir}/{}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    for source in sources {
        for name in env_names_in(&read(&source)) {
            // `GORGON_*` in prose; deploy/haproxy.cfg's own variables, set on the haproxy service.
            if name.ends_with('_')
                || name.starts_with("GORGON_LB_")
                || name.starts_with("GORGON_FRONT_")
            {
                continue;
            }
            assert!(
                known.contains(&name),
                "{source} sets {name}, which is no setting of gorgon"
            );
        }
    }
}

// --- compose ------------------------------------------------------------------------------------

#[test]
fn compose_file_is_valid_and_needs_a_cookie() {
    if !tool("docker-compose") {
        return;
    }
    // Nothing of the caller's: not a local .env (an empty one instead), no engine, no variables
    // but the ones given here.
    let dir = tempfile::tempdir().expect("temp dir");
    let env_file = dir.path().join("empty.env");
    std::fs::write(&env_file, "").unwrap();
    let compose = || {
        let mut c = Command::new("docker-compose");
        c.arg("--env-file")
            .arg(&env_file)
            .args(["-f", "compose.yaml", "config"])
            .env_remove("GORGON_CLUSTER_COOKIE")
            .env_remove("DOCKER_HOST")
            .env_remove("COMPOSE_FILE");
        c
    };
    assert!(
        read(".gitignore").lines().any(|l| l.trim() == ".env"),
        ".env holds the cookie: git ignores it"
    );
    assert_runs(
        compose()
            .arg("-q")
            .env("GORGON_CLUSTER_COOKIE", "test-cookie"),
    );
    let (ok, text) = run(compose().arg("-q"));
    assert!(!ok, "compose.yaml must refuse to run without a cookie");
    assert!(text.contains("GORGON_CLUSTER_COOKIE"), "{text}");

    // What the services mount from the repository is there.
    let rendered = assert_runs(compose().env("GORGON_CLUSTER_COOKIE", "test-cookie"));
    let prefix = format!("- {}/", root().display());
    for line in rendered.lines() {
        let Some(mount) = line.trim().strip_prefix(&prefix) else {
            continue;
        };
        let source = mount.split(':').next().unwrap();
        assert!(
            root().join(source).exists(),
            "compose.yaml mounts {source}, which does not exist"
        );
    }
}

// --- systemd ------------------------------------------------------------------------------------

#[test]
fn systemd_units_verify_and_stay_hardened() {
    if !tool("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // systemd-analyze checks that ExecStart exists: point it at this build's binary. The
    // template is verified as an instance, so its specifiers resolve.
    let binary = env!("CARGO_BIN_EXE_gorgon");
    let units = [
        ("gorgon.service", "gorgon.service"),
        ("gorgon@.service", "gorgon@backend.service"),
    ];
    for (source, name) in units {
        let text = read(&format!("deploy/systemd/{source}"));
        assert!(
            text.contains("ExecStart=/usr/local/bin/gorgon run"),
            "{source}"
        );
        for setting in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "KillSignal=SIGTERM",
            "EnvironmentFile=-/etc/gorgon/gorgon.env",
        ] {
            assert!(
                text.contains(&format!("\n{setting}\n")),
                "{source}: {setting}"
            );
        }
        let path = dir.path().join(name);
        std::fs::write(&path, text.replace("/usr/local/bin/gorgon", binary)).unwrap();

        let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
        // It only warns about a setting it cannot parse ("…, ignoring"): any word is a failure.
        assert!(
            ok && out.trim().is_empty(),
            "systemd-analyze verify {source}:\n{out}"
        );
        let (ok, out) = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(&path));
        assert!(
            ok,
            "{source}: exposure over 2.0 (systemd-analyze security):\n{out}"
        );
    }
    assert!(root().join("deploy/systemd/gorgon.env.example").exists());
}

// --- Kubernetes ---------------------------------------------------------------------------------

/// `kubernetes-validate`: `GORGON_K8S_VALIDATE`, scripts/test.sh's venv, or on PATH.
fn k8s_validator() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GORGON_K8S_VALIDATE") {
        return Some(PathBuf::from(path));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let venv = Path::new(&home).join(".cache/gorgon/k8s-venv/bin/kubernetes-validate");
        if venv.exists() {
            return Some(venv);
        }
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v kubernetes-validate"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(PathBuf::from(
        String::from_utf8_lossy(&on_path.stdout).trim(),
    ))
}

/// `kubernetes-validate --strict` on `files`, without a network where this user may make an
/// empty network namespace (root, as in CI): the schemas must come with the package.
fn validate_k8s(validator: &Path, files: &[PathBuf]) {
    let offline = Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut command = if offline {
        let mut c = Command::new("unshare");
        c.arg("-n").arg(validator);
        c
    } else {
        eprintln!("note: unshare -n is not permitted here; validating with the network");
        Command::new(validator)
    };
    command.args(["--strict", "--quiet"]).args(files);
    let shown = format!("{command:?}");
    let (ok, out) = run(&mut command);
    assert!(ok, "{shown}:\n{out}");
    assert!(
        !out.contains("Couldn't find schema"),
        "a manifest was not checked:\n{out}"
    );
}

/// The `resources:` of deploy/k8s/kustomization.yaml.
fn kustomization_resources() -> Vec<String> {
    let text = read("deploy/k8s/kustomization.yaml");
    let mut lines = text.lines().skip_while(|l| l.trim_end() != "resources:");
    lines.next().expect("kustomization.yaml has resources:");
    lines
        .map_while(|l| l.strip_prefix("  - "))
        .map(|f| f.trim().to_string())
        .collect()
}

#[test]
fn kubernetes_manifests_match_the_schemas() {
    let listed = kustomization_resources();
    let mut present: Vec<String> = files("deploy/k8s", "yaml")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    present.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, present,
        "kustomization.yaml lists every manifest of deploy/k8s"
    );

    let Some(validator) = k8s_validator() else {
        missing("kubernetes-validate");
        return;
    };
    let paths: Vec<PathBuf> = listed
        .iter()
        .map(|f| root().join("deploy/k8s").join(f))
        .collect();
    validate_k8s(&validator, &paths);

    // kubectl is not in Debian's current packages (only a 1.20 client): used where installed.
    let has_kubectl = Command::new("sh")
        .args(["-c", "command -v kubectl"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_kubectl {
        eprintln!("note: kubectl is not installed: the kustomization was not rendered");
        return;
    }
    let rendered = assert_runs(Command::new("kubectl").args(["kustomize", "deploy/k8s"]));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    validate_k8s(&validator, &[file]);
    for doc in rendered.split("\n---\n").map(|d| format!("{d}\n")) {
        assert!(
            doc.contains("\nkind: Namespace\n") || doc.contains("\n  namespace: gorgon\n"),
            "every resource is in namespace gorgon:\n{doc}"
        );
    }
}

/// The directives of a Redis config, one per line, without comments.
fn redis_directives(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines
}

#[test]
fn kubernetes_redis_config_is_deploy_redis_conf() {
    let manifest = read("deploy/k8s/redis.yaml");
    let block: String = manifest
        .lines()
        .skip_while(|l| l.trim() != "redis.conf: |")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    // Only the network settings differ: a pod listens on its own address.
    let network = |l: &String| l.starts_with("bind ") || l.starts_with("protected-mode ");
    let ours: Vec<String> = redis_directives(&block)
        .into_iter()
        .filter(|l| !network(l))
        .collect();
    let shipped: Vec<String> = redis_directives(&read("deploy/redis.conf"))
        .into_iter()
        .filter(|l| !network(l))
        .collect();
    assert!(ours.contains(&"appendfsync always".to_string()), "{ours:?}");
    assert_eq!(ours, shipped, "deploy/k8s/redis.yaml's redis.conf drifted");
}

// --- image --------------------------------------------------------------------------------------

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let file = read("Dockerfile");
    let lines: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(has("FROM rust:1.95-bookworm AS build"), "build stage");
    assert!(
        file.contains("cargo build --release --locked"),
        "locked build"
    );
    assert!(has("FROM debian:bookworm-slim"), "runtime stage");
    assert!(has("USER gorgon"), "runs as a user without privileges");
    assert!(
        has("HEALTHCHECK ") && file.contains("/healthz"),
        "health check"
    );
    assert!(has("VOLUME [\"/var/lib/gorgon\"]"), "data volume");
    assert!(has("STOPSIGNAL SIGTERM"), "SIGTERM");
    assert!(
        has("ENTRYPOINT [\"/usr/local/bin/gorgon\"]"),
        "exec form, so gorgon is PID 1 and gets the signal"
    );
    // The Rust image must be at least the crate's minimum version.
    let rust_version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("rust-version in Cargo.toml");
    let minor = |v: &str| v.split('.').nth(1).and_then(|m| m.parse::<u32>().ok());
    assert!(minor(&rust_version) <= minor("1.95"), "rust {rust_version}");

    // The build context keeps what `cargo build` reads: the manifest names benches/.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for needed in ["src", "benches", "Cargo.toml", "Cargo.lock"] {
        assert!(
            !ignored.iter().any(|i| i == needed || i == "*" || i == "**"),
            ".dockerignore drops {needed}, which the build needs"
        );
    }
    for kept_out in ["target", ".git", ".env"] {
        assert!(
            ignored.iter().any(|i| i == kept_out),
            ".dockerignore keeps {kept_out} out of the build context"
        );
    }
}
