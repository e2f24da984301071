//! End to end: the real `warren serve` on the local provider, driven by the
//! real `warren` CLI. Runs as root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "e2b_0123456789abcdef0123456789abcdef01234567";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_warren")
}

/// The sandbox helper next to the warren binary (built if missing).
fn ensure_helper() {
    let helper = Path::new(bin()).with_file_name("warren-sandbox");
    if !helper.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "warren-provider-local", "--bin", "warren-sandbox"])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

struct Serve {
    child: Child,
    url: String,
}

mod common;
use common::{free_port, ok};

fn serve(data: &Path, port: u16) -> Serve {
    serve_with(data, port, None, warren_provider::conformance::agent_binary())
}

fn serve_with(data: &Path, port: u16, config: Option<&Path>, agent: PathBuf) -> Serve {
    ensure_helper();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(data);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .env("WARREN_ADMIN_KEY", KEY)
        .env("WARREN_AGENT_BIN", agent)
        .env_remove("WARREN_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = common::ready_url(&mut child, "server");
    Serve { child, url }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(s: &Serve, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(bin())
        .args(args)
        .env("WARREN_URL", &s.url)
        .env("WARREN_API_KEY", KEY)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    c.wait_with_output().unwrap()
}

#[test]
fn create_exec_files_shell_kill() {
    let data = tempfile::tempdir().unwrap();
    let s = serve(data.path(), free_port());
    let id = ok(&cli(&s, &["create", "--timeout", "600", "--env", "HELLO=world"], None));
    assert_eq!(id.len(), 20);

    let o =
        cli(&s, &["exec", &id, "--", "bash", "-c", "echo $HELLO $(id -un) $(hostname); echo oops >&2; exit 3"], None);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("world user {id}\n"));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "oops\n");
    assert_eq!(ok(&cli(&s, &["exec", &id, "echo $((40+2)) | tr 4 X"], None)), "X2");
    assert_eq!(ok(&cli(&s, &["exec", "-i", &id, "--", "wc", "-c"], Some("12345"))), "5");

    // Files in and out.
    let local = data.path().join("in.txt");
    std::fs::write(&local, "payload\n").unwrap();
    ok(&cli(&s, &["cp", local.to_str().unwrap(), &format!("{id}:/home/user/in.txt")], None));
    assert_eq!(ok(&cli(&s, &["exec", &id, "--", "cat", "/home/user/in.txt"], None)), "payload");
    let out = data.path().join("out.txt");
    ok(&cli(&s, &["cp", &format!("{id}:/home/user/in.txt"), out.to_str().unwrap()], None));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "payload\n");
    assert_eq!(ok(&cli(&s, &["cp", &format!("{id}:/home/user/in.txt"), "-"], None)), "payload");

    // A shell through a PTY (stdin is a pipe here, so no raw mode).
    let o = cli(&s, &["shell", &id], Some("echo shell-$((6*7))\nexit 5\n"));
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("shell-42"));

    // Listing, info, timeout, templates.
    assert!(ok(&cli(&s, &["ls"], None)).contains(&id));
    let listed: serde_json::Value = serde_json::from_str(&ok(&cli(&s, &["ls", "--json"], None))).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(ok(&cli(&s, &["info", &id], None)).contains("running"));
    assert!(ok(&cli(&s, &["timeout", &id, "900"], None)).contains("expires at"));
    assert!(ok(&cli(&s, &["templates"], None)).contains("base"));

    // Keys: an admin makes a tenant key; the tenant sees only its own.
    let tenant_key = ok(&cli(&s, &["keys", "create", "--tenant", "acme"], None));
    assert!(tenant_key.starts_with("e2b_"));
    let as_tenant = Command::new(bin())
        .args(["ls", "--json"])
        .env("WARREN_URL", &s.url)
        .env("WARREN_API_KEY", &tenant_key)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&as_tenant.stdout).trim(), "[]");
    assert!(ok(&cli(&s, &["keys"], None)).contains("acme"));

    // Kill; then the documented exit codes.
    assert_eq!(ok(&cli(&s, &["kill", &id], None)), id);
    assert_eq!(cli(&s, &["info", &id], None).status.code(), Some(3));
    assert_eq!(cli(&s, &["exec", &id, "--", "true"], None).status.code(), Some(3));
    let bad_key = Command::new(bin())
        .args(["ls"])
        .env("WARREN_URL", &s.url)
        .env("WARREN_API_KEY", "e2b_nope_nope_nope_nope")
        .output()
        .unwrap();
    assert_eq!(bad_key.status.code(), Some(4));
    let usage = Command::new(bin()).args(["exec"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let down = Command::new(bin())
        .args(["ls"])
        .env("WARREN_URL", "http://127.0.0.1:1")
        .env("WARREN_API_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach warren"));
}

/// Limits are on by default: a workspace above the default size cap gets a
/// clear refusal naming the limit; a tenant quota in the configuration is
/// enforced; "unlimited" must be said explicitly, and a wrong value stops
/// the server before it starts.
#[test]
fn safe_default_limits() {
    let data = tempfile::tempdir().unwrap();
    let s = serve(data.path(), free_port());
    // The server is shielded from the OOM killer far more than workspaces.
    // (Where root lacks CAP_SYS_RESOURCE, as in some sandboxes, nobody can
    // go below 0, the server included.)
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    let sys_resource = u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0;
    let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", s.child.id())).unwrap();
    assert_eq!(adj.trim(), if sys_resource { "-900" } else { "0" });
    // The state (tokens) and the template store are root's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.path().join("state.redb")), 0o600);
    assert_eq!(mode(&data.path().join("local/templates")), 0o700);
    let id = ok(&cli(&s, &["create"], None));
    let inside = ok(&cli(
        &s,
        &[
            "exec",
            "-u",
            "root",
            &id,
            "cat /proc/self/oom_score_adj; echo -900 > /proc/self/oom_score_adj 2>/dev/null || echo refused",
        ],
        None,
    ));
    assert_eq!(inside, "0\nrefused", "a workspace starts at 0 and cannot go below");
    ok(&cli(&s, &["kill", &id], None));
    let big = cli(&s, &["create", "--memory", "16384"], None);
    assert_eq!(big.status.code(), Some(1));
    let err = String::from_utf8_lossy(&big.stderr);
    assert!(err.contains("8192") && err.contains("max_size.memory_mib"), "{err}");
    let cpus = cli(&s, &["create", "--cpus", "8"], None);
    assert!(String::from_utf8_lossy(&cpus.stderr).contains("max_size.millicpus"));
    assert!(ok(&cli(&s, &["ls", "--json"], None)).trim() == "[]", "nothing was created");
    drop(s);

    let cfg = data.path().join("warren.toml");
    std::fs::write(&cfg, "[default_quota]\nmax_workspaces = 1\n[max_size]\nmemory_mib = \"unlimited\"\n").unwrap();
    let s = serve_with(data.path(), free_port(), Some(&cfg), warren_provider::conformance::agent_binary());
    let tenant_key = ok(&cli(&s, &["keys", "create", "--tenant", "capped"], None));
    let as_tenant = |args: &[&str]| {
        Command::new(bin()).args(args).env("WARREN_URL", &s.url).env("WARREN_API_KEY", &tenant_key).output().unwrap()
    };
    let first = as_tenant(&["create", "--memory", "9000"]);
    assert!(first.status.success(), "unlimited memory size: {}", String::from_utf8_lossy(&first.stderr));
    let second = as_tenant(&["create"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("quota is 1"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    ok(&as_tenant(&["kill", String::from_utf8_lossy(&first.stdout).trim()]));
    drop(s);

    std::fs::write(&cfg, "[default_quota]\nmax_workspaces = \"lots\"\n").unwrap();
    let o =
        Command::new(bin()).args(["serve", "--config"]).arg(&cfg).arg("--data-dir").arg(data.path()).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unlimited"), "{}", String::from_utf8_lossy(&o.stderr));
}

fn workspace_dirs(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("local/workspaces"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn kill_9_and_restart_lose_nothing() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = serve(data.path(), port);
    let started = Instant::now();
    let a = ok(&cli(&s, &["create"], None));
    let a_running = Instant::now();
    let b = ok(&cli(&s, &["create"], None));
    let b_running = Instant::now();
    ok(&cli(&s, &["exec", &a, "echo kept > ~/state.txt"], None));
    // kill -9: no chance to clean up.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = serve(data.path(), port);
    let ls = ok(&cli(&s, &["ls"], None));
    assert!(ls.contains(&a) && ls.contains(&b), "{ls}");
    assert_eq!(ok(&cli(&s, &["exec", &a, "cat ~/state.txt"], None)), "kept");
    assert_eq!(ok(&cli(&s, &["exec", &b, "echo alive"], None)), "alive");
    // Nothing orphaned: one backend workspace per record.
    assert_eq!(workspace_dirs(data.path()).len(), 2);
    // Both certainly ran (and were metered) from their create's reply to here.
    let ran = (a_running.elapsed() + b_running.elapsed()).as_secs_f64();
    ok(&cli(&s, &["kill", &a, &b], None));
    let lived = started.elapsed().as_secs_f64();
    assert_eq!(workspace_dirs(data.path()).len(), 0);
    // Metering across the kill -9: both workspaces ran the whole time, no
    // second lost while the server was down, none counted twice.
    let usage: serde_json::Value =
        serde_json::from_str(&ok(&cli(&s, &["--json", "usage", "--bucket", "month"], None))).unwrap();
    let running: f64 = usage.as_array().unwrap().iter().map(|r| r["runningSeconds"].as_f64().unwrap()).sum();
    assert!(running <= 2.0 * lived + 0.01, "counted twice? {running} s metered for 2 x {lived} s");
    assert!(running >= ran - 0.05, "lost time? {running} s metered, both ran for {ran} s in all");
    // SIGTERM shuts the server down cleanly.
    let mut s = s;
    Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_configuration_is_refused_clearly() {
    let data = tempfile::tempdir().unwrap();
    let bad_provider = data.path().join("bad-provider.toml");
    std::fs::write(&bad_provider, "provider = \"kubernetes\"\n").unwrap();
    let bad_route = data.path().join("bad-route.toml");
    std::fs::write(&bad_route, "[routing]\ndefault = \"local\"\noverflow = \"nomad\"\n").unwrap();
    let (bad_provider, bad_route) = (bad_provider.to_str().unwrap(), bad_route.to_str().unwrap());
    for (args, code, needle) in [
        (vec!["serve", "--listen", "nonsense"], 1, "expected an address"),
        // A flag value clap knows is wrong is bad usage (2), naming them all.
        (
            vec!["serve", "--listen", "127.0.0.1:0", "--provider", "kubernetes"],
            2,
            "possible values: local, docker, e2b, ecs, process",
        ),
        (vec!["serve", "--config", bad_provider], 1, "expected one of `local`, `docker`, `e2b`, `ecs`, `process`"),
        (vec!["serve", "--config", bad_route], 1, "backend \"nomad\": expected local, docker, e2b, ecs or process"),
        (vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", "relative/dir"], 1, "absolute"),
    ] {
        let o = Command::new(bin()).args(&args).env("WARREN_DATA_DIR", data.path()).output().unwrap();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let cfg = data.path().join("warren.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nbogus_key = 1\n").unwrap();
    let o = Command::new(bin()).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bogus_key"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn cost_tables_simulation_and_bad_input() {
    let o = Command::new(bin()).args(["cost"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("$16,134") && out.contains("Where the study disagrees with itself"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("day.svg");
    let o = Command::new(bin())
        .args(["--json", "cost", "simulate", "--setup", "ecs-ec2-ri", "--days", "2", "--peak", "40", "--svg"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["setup"], "ecs-ec2-ri");
    assert!(v[0]["sessions"].as_u64().unwrap() > 0 && v[0]["instanceHours"].as_f64().unwrap() > 0.0, "{v}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    for (args, needle) in [
        (vec!["cost", "--catalog", "/nonexistent.toml"], "/nonexistent.toml"),
        (vec!["cost", "simulate", "--setup", "mainframe"], "unknown setup \"mainframe\""),
        (vec!["cost", "simulate", "--pool", "9:1"], "min is above max"),
        (vec!["cost", "simulate", "--profile", "weekly"], "business-hours or burst"),
        (vec!["cost", "--price=-5"], "--price must be positive"),
    ] {
        let o = Command::new(bin()).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

use warren_test_support::static_agent;

fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Restarts the Docker engine the way it was started (systemd or a plain
/// process), and waits until it answers again.
fn restart_dockerd() {
    let systemd =
        Command::new("systemctl").args(["is-active", "--quiet", "docker"]).status().is_ok_and(|s| s.success());
    if systemd {
        assert!(Command::new("systemctl").args(["restart", "docker"]).status().unwrap().success());
    } else {
        let pid = docker_pid();
        let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "dockerd did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::File::create("/tmp/warren-test-dockerd.log").unwrap();
        // `setsid -f`: the engine runs on in its own session after we return.
        let st = Command::new("setsid")
            .arg("-f")
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success() {
        assert!(Instant::now() < deadline, "dockerd did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn docker_pid() -> u32 {
    let out = Command::new("pgrep").args(["-x", "dockerd"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("dockerd runs").parse().unwrap()
}

/// The Docker backend through the real server: create and exec, kill -9 of
/// the server (adopted on restart, orphans removed), and an engine restart
/// (workspaces that died with it are marked failed; new ones work).
#[test]
fn docker_kill_9_reconcile_and_engine_restart() {
    let st = Command::new(repo_root().join("scripts/docker-test-image.sh")).status().unwrap();
    assert!(st.success());
    let data = tempfile::tempdir().unwrap();
    let owner = format!("e2e-{}", std::process::id());
    let cfg = data.path().join("warren.toml");
    std::fs::write(&cfg, format!("provider = \"docker\"\n[docker]\nowner = \"{owner}\"\n")).unwrap();
    let port = free_port();
    let mut s = serve_with(data.path(), port, Some(&cfg), static_agent());
    let a = ok(&cli(&s, &["create", "--template", "warren-test-busybox"], None));
    assert_eq!(ok(&cli(&s, &["exec", &a, "echo hi from docker"], None)), "hi from docker");

    // A container of ours that the store does not know (a create cut short).
    let ghost = "ghost0000000000000000";
    docker(&[
        "run",
        "-d",
        "--name",
        &format!("warren-{ghost}"),
        "--label",
        &format!("warren.owner={owner}"),
        "--label",
        &format!("warren.id={ghost}"),
        "--entrypoint",
        "/bin/sleep",
        "warren-test-busybox",
        "600",
    ]);
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = serve_with(data.path(), port, Some(&cfg), static_agent());
    assert!(ok(&cli(&s, &["ls"], None)).contains(&a));
    assert_eq!(ok(&cli(&s, &["exec", &a, "echo adopted"], None)), "adopted");
    assert_eq!(docker(&["ps", "-aq", "--filter", &format!("name=warren-{ghost}")]), "", "orphan removed");

    // The engine restarts under running workspaces.
    restart_dockerd();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let info: serde_json::Value = serde_json::from_str(&ok(&cli(&s, &["--json", "info", &a], None))).unwrap();
        let state = info["state"].as_str().unwrap_or("").to_string();
        if state == "failed" {
            assert!(info["error"].as_str().unwrap_or("").contains("exited"), "{info}");
            break;
        }
        // With live-restore the container survives and keeps working.
        if state == "running" && cli(&s, &["exec", &a, "echo alive"], None).status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "workspace state after the engine restart: {info}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let b = ok(&cli(&s, &["create", "--template", "warren-test-busybox"], None));
    assert_eq!(ok(&cli(&s, &["exec", &b, "echo after restart"], None)), "after restart");
    let _ = cli(&s, &["kill", &a, &b], None);
    let left = docker(&["ps", "-aq", "--filter", &format!("label=warren.owner={owner}")]);
    assert_eq!(left, "", "nothing of ours is left");
}

/// `warren bench pool` end to end on a small burst: the pool row and the
/// bare-process floor row come out with their sample counts and numbers;
/// variants not asked for do not run; a selection of nothing is refused
/// before any work.
#[test]
fn bench_pool_runs_a_small_burst_next_to_its_floor() {
    ensure_helper();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["bench", "pool", "--burst", "4", "--only", "pool sized right,peer: bare", "--dir"])
        .arg(dir.path())
        .env("WARREN_AGENT_BIN", warren_provider::conformance::agent_binary())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let row = |prefix: &str| -> Vec<String> {
        let line =
            text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no row {prefix:?} in\n{text}"));
        line.split('|').map(|c| c.trim().to_string()).collect()
    };
    for prefix in ["| pool sized right (4), burst of 4 — 4 hits, 0 misses", "| peer: bare processes"] {
        let cols = row(prefix);
        assert_eq!(cols[2], "4", "sample count of {prefix}");
        let (min, p50, p99): (f64, f64, f64) =
            (cols[3].parse().unwrap(), cols[4].parse().unwrap(), cols[6].parse().unwrap());
        assert!(0.0 < min && min <= p50 && p50 <= p99, "{cols:?}");
    }
    assert!(!text.contains("pool too small") && !text.contains("bwrap"), "{text}");

    let out = Command::new(bin()).args(["bench", "pool", "--only", "nothing like it"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("selects no variant"), "{out:?}");
}

/// `--log-format json`: every stderr line is one JSON object, and the
/// background jobs' lines carry their fields (job, count); a bad WARREN_LOG
/// filter stops the server with the reason.
#[test]
fn json_logs_with_fields() {
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("stderr.log");
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["serve", "--log-format", "json", "--provider", "process", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data.path())
        .env("WARREN_ADMIN_KEY", KEY)
        .env("WARREN_AGENT_BIN", warren_provider::conformance::agent_binary())
        .env("WARREN_LOG", "info")
        .env_remove("WARREN_CONFIG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let url = common::ready_url(&mut child, "server");
    let mut s = Serve { child, url };
    let id = ok(&cli(&s, &["create", "--timeout", "1"], None));
    // The reap job ends it within a second or two of its timeout.
    let deadline = Instant::now() + Duration::from_secs(15);
    while cli(&s, &["exec", id.trim(), "true"], None).status.success() {
        assert!(Instant::now() < deadline, "never reaped");
        std::thread::sleep(Duration::from_millis(200));
    }
    Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(s.child.wait().unwrap().success(), "a TERM is an orderly shutdown");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["job"] == "reap" && l["count"] == 1 && l["level"] == "INFO"),
        "no reap line with its fields: {log}"
    );
    assert!(lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.starts_with("shutting down"))), "{log}");

    let bad = Command::new(bin())
        .args(["serve", "--provider", "process", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("WARREN_LOG", "warren=[nope")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("WARREN_LOG"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// `warren shell` on a real terminal: the client runs on the slave side of a
/// pseudo-terminal the test holds the master of, as under tmux or ssh.
struct Terminal {
    master: std::fs::File,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    child: Child,
}

impl Terminal {
    fn spawn(cmd: &mut Command) -> Terminal {
        use std::os::unix::process::CommandExt as _;
        let size = nix::pty::Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        let slave = std::fs::File::from(pty.slave);
        cmd.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave);
        // SAFETY: between fork and exec only async-signal-safe calls: a new
        // session, then the inherited slave (fd 0) as its controlling tty.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = Default::default();
        let (mut reader, sink) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut buf = [0u8; 4096];
            // EIO once the last slave end closes.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { master, seen, child }
    }

    /// Types `keys` as a person would: one write, no newline added.
    fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Waits until `needle` shows up in what the terminal displayed.
    fn expect(&self, needle: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned();
            if seen.contains(needle) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {needle:?} never showed up; the terminal shows:\n{seen}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn shell_in_a_real_terminal() {
    let data = tempfile::tempdir().unwrap();
    let s = serve(data.path(), free_port());
    let id = ok(&cli(&s, &["create"], None)).trim().to_string();
    // Killed also when an assertion fails half-way: local workspaces
    // outlive their server.
    struct KillOnDrop<'a>(&'a Serve, String);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = cli(self.0, &["kill", &self.1], None);
        }
    }
    let _guard = KillOnDrop(&s, id.clone());
    let mut t = Terminal::spawn(
        Command::new(bin())
            .args(["shell", &id])
            .env("WARREN_URL", &s.url)
            .env("WARREN_API_KEY", KEY)
            .env("TERM", "xterm"),
    );
    // Each command prints something its own echo does not contain, and is
    // checked before anything else is typed: output may not wait for the
    // next keystroke.
    t.type_keys("echo typed-$((40+2))\r");
    t.expect("typed-42", "a typed line");
    t.type_keys("echo again-$((1+1))\r");
    t.expect("again-2", "the next typed line");
    // Ctrl-C reaches the remote foreground process.
    t.type_keys("sleep 600; echo not-$((5+5))\r");
    std::thread::sleep(Duration::from_millis(500));
    t.type_keys("\x03");
    t.type_keys("echo after-$((3+4))\r");
    t.expect("after-7", "the prompt after Ctrl-C");
    assert!(!String::from_utf8_lossy(&t.seen.lock().unwrap()).contains("not-10"));
    // A window resize (the kernel signals the client, which tells the
    // workspace's terminal).
    let size = libc::winsize { ws_row: 41, ws_col: 123, ws_xpixel: 0, ws_ypixel: 0 };
    use std::os::fd::AsRawFd as _;
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    assert_eq!(unsafe { libc::ioctl(t.master.as_raw_fd(), libc::TIOCSWINSZ, &size) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    t.type_keys("stty size\r");
    t.expect("41 123", "the new window size");
    // The remote shell's exit code is the client's, and the client returns.
    t.type_keys("exit 3\r");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = t.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the client never returned after the remote shell exited");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3));
}
