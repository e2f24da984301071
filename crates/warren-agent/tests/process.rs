//! process.Process over a real socket: output, exit codes, users, env, stdin,
//! signals, re-attach, deadlines, keepalives, PTYs, volume and reaping.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Opts};
use warren_proto::client::{AgentClient, CallOptions, ProcessStream};
use warren_proto::connect::Code;
use warren_proto::http::InitRequest;
use warren_proto::process::{
    DataEvent, ProcessConfig, ProcessEvent, ProcessInput, ProcessSelector, Pty, PtySize, Signal, StartRequest,
};

fn sh(script: &str) -> StartRequest {
    StartRequest {
        process: Some(ProcessConfig {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            ..Default::default()
        }),
        stdin: Some(false),
        ..Default::default()
    }
}

async fn wait_gone(c: &AgentClient, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.list().await.unwrap().iter().any(|p| p.pid == pid) {
        assert!(Instant::now() < deadline, "process {pid} still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_exit_codes_and_status() {
    let a = Agent::start();
    let c = a.unix();
    let out = c.sh("echo out; echo err >&2; exit 3").await.unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.status, "exit status 3");
    let out = c.sh("kill -9 $$").await.unwrap();
    assert_eq!(out.exit_code, -1);
    assert_eq!(out.status, "signal: killed");
    // The start event comes first and carries the pid.
    let mut s = c.start(&sh("sleep 0.2; echo done"), &CallOptions::default()).await.unwrap();
    let pid = s.pid().await.unwrap();
    assert!(pid > 1);
    let out = s.collect().await.unwrap();
    assert_eq!(out.stdout, b"done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_cwd_and_users() {
    let a = Agent::start();
    let c = a.unix();
    c.init(
        "init-secret",
        &InitRequest {
            env_vars: Some([("WS".into(), "ws".into()), ("BOTH".into(), "ws".into())].into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut req = sh("echo $WS $BOTH $ONLY $HOME $USER; pwd");
    let p = req.process.as_mut().unwrap();
    p.envs = [("BOTH".into(), "proc".into()), ("ONLY".into(), "p".into())].into();
    p.cwd = Some("/tmp".into());
    let out = c.start(&req, &CallOptions::default()).await.unwrap().collect().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ws proc p /root root\n/tmp\n");

    let bad = {
        let mut r = sh("true");
        r.process.as_mut().unwrap().cwd = Some("/does/not/exist".into());
        r
    };
    let e = c.start(&bad, &CallOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));

    // As another user: nobody exists on every Debian system.
    let out = c.as_user("nobody").sh("id -u; id -g; echo $USER").await.unwrap();
    let nobody = std::process::Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let uid = String::from_utf8_lossy(&nobody.stdout).trim().to_string();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with(&format!("{uid}\n")), "{text}");
    assert!(text.ends_with("nobody\n"), "{text}");
    // nobody cannot read root's files.
    let out = c.as_user("nobody").sh("cat /root/.bashrc >/dev/null 2>&1 || echo denied").await.unwrap();
    assert_eq!(out.stdout, b"denied\n");
    let out = c.as_user("root").sh("id -u").await.unwrap();
    assert_eq!(out.stdout, b"0\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_send_close_and_stream() {
    let a = Agent::start();
    let c = a.unix();
    let mut req = sh("cat; echo closed");
    req.stdin = Some(true);
    req.tag = Some("cat1".into());
    let mut s = c.start(&req, &CallOptions::default()).await.unwrap();
    let pid = s.pid().await.unwrap();
    c.send_input(ProcessSelector::Pid(pid), ProcessInput::Stdin(b"hello ".to_vec())).await.unwrap();
    c.send_input(ProcessSelector::Tag("cat1".into()), ProcessInput::Stdin(b"world\n".to_vec())).await.unwrap();
    let listed = c.list().await.unwrap();
    let me = listed.iter().find(|p| p.pid == pid).unwrap();
    assert_eq!(me.tag.as_deref(), Some("cat1"));
    assert_eq!(me.config.cmd, "/bin/sh");
    c.close_stdin(ProcessSelector::Pid(pid)).await.unwrap();
    let out = s.collect().await.unwrap();
    assert_eq!(out.stdout, b"hello world\nclosed\n");

    // stdin=false: no pipe, input is refused with a clear error.
    let mut s = c.start(&sh("sleep 5"), &CallOptions::default()).await.unwrap();
    let pid = s.pid().await.unwrap();
    let e = c.send_input(ProcessSelector::Pid(pid), ProcessInput::Stdin(b"x".to_vec())).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    c.send_signal(ProcessSelector::Pid(pid), Signal::Sigkill).await.unwrap();

    // Client-streaming input.
    let mut req = sh("wc -c");
    req.stdin = Some(true);
    let mut s = c.start(&req, &CallOptions::default()).await.unwrap();
    let pid = s.pid().await.unwrap();
    let chunks = futures_util::stream::iter((0..10).map(|_| vec![b'x'; 1000]));
    c.stream_input(ProcessSelector::Pid(pid), false, chunks).await.unwrap();
    c.close_stdin(ProcessSelector::Pid(pid)).await.unwrap();
    let out = s.collect().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_and_not_found() {
    let a = Agent::start();
    let c = a.unix();
    for (sig, status) in [(Signal::Sigterm, "signal: terminated"), (Signal::Sigkill, "signal: killed")] {
        let mut s = c.start(&sh("exec sleep 30"), &CallOptions::default()).await.unwrap();
        let pid = s.pid().await.unwrap();
        c.send_signal(ProcessSelector::Pid(pid), sig).await.unwrap();
        let out = s.collect().await.unwrap();
        assert_eq!(out.status, status);
        wait_gone(&c, pid).await;
        let e = c.send_signal(ProcessSelector::Pid(pid), Signal::Sigkill).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::NotFound));
    }
    // A signal reaches the whole process group: no child outlives the kill.
    let mut s = c.start(&sh("sleep 31 & sleep 32; wait"), &CallOptions::default()).await.unwrap();
    let pid = s.pid().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send_signal(ProcessSelector::Pid(pid), Signal::Sigkill).await.unwrap();
    s.collect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ps = c.sh("ps -eo args | grep -c '^sleep 3[12]' || true").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reattaches_by_pid_and_tag() {
    let a = Agent::start();
    let c = a.unix();
    let flag = a.dir.path().join("stop-ticking");
    let mut req =
        sh(&format!("i=0; while [ ! -e {} ]; do i=$((i+1)); echo tick$i; sleep 0.05; done; echo last", flag.display()));
    req.tag = Some("ticker".into());
    let mut first = c.start(&req, &CallOptions::default()).await.unwrap();
    let pid = first.pid().await.unwrap();
    drop(first); // the client goes away; the process keeps running
    let mut by_tag = c.connect(ProcessSelector::Tag("ticker".into()), &CallOptions::default()).await.unwrap();
    assert_eq!(by_tag.pid().await.unwrap(), pid);
    let by_pid = c.connect(ProcessSelector::Pid(pid), &CallOptions::default()).await.unwrap();
    std::fs::write(&flag, b"").unwrap();
    let (a_out, b_out) = tokio::join!(by_tag.collect(), by_pid.collect());
    let (a_out, b_out) = (a_out.unwrap(), b_out.unwrap());
    assert!(String::from_utf8_lossy(&a_out.stdout).ends_with("last\n"), "{a_out:?}");
    assert!(String::from_utf8_lossy(&b_out.stdout).ends_with("last\n"), "{b_out:?}");
    assert_eq!(a_out.exit_code, 0);
    wait_gone(&c, pid).await;
    let e = c.connect(ProcessSelector::Pid(pid), &CallOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_deadline_kills_the_process_and_keepalives_flow() {
    let a = Agent::start();
    let c = a.unix();
    let opts = CallOptions { timeout: Some(Duration::from_millis(500)), keepalive: None };
    let mut s = c.start(&sh("echo begun; exec sleep 60"), &opts).await.unwrap();
    let pid = s.pid().await.unwrap();
    let mut got_err = None;
    while let Some(ev) = s.next_event().await {
        if let Err(e) = ev {
            got_err = Some(e);
        }
    }
    assert_eq!(got_err.unwrap().code(), Some(Code::DeadlineExceeded));
    wait_gone(&c, pid).await;

    let opts = CallOptions { timeout: None, keepalive: Some(1) };
    let mut s = c.start(&sh("sleep 3.5"), &opts).await.unwrap();
    let mut keepalives = 0;
    while let Some(ev) = s.next_event().await {
        if let ProcessEvent::Keepalive(_) = ev.unwrap() {
            keepalives += 1;
        }
    }
    assert!(keepalives >= 2, "got {keepalives} keepalives");
}

async fn read_until(s: &mut ProcessStream, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.contains(needle) {
        assert!(Instant::now() < deadline, "never saw {needle:?} in {seen:?}");
        let ev = tokio::time::timeout(Duration::from_secs(15), s.next_event()).await.unwrap();
        match ev {
            Some(Ok(ProcessEvent::Data(DataEvent::Pty(d)))) => seen.push_str(&String::from_utf8_lossy(&d)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
            None => panic!("stream ended before {needle:?}: {seen:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_shell_resize_and_ctrl_c() {
    let a = Agent::start();
    let c = a.unix();
    let req = StartRequest {
        process: Some(ProcessConfig { cmd: "/bin/bash".into(), args: vec!["-i".into()], ..Default::default() }),
        pty: Some(Pty { size: Some(PtySize { cols: 100, rows: 30 }) }),
        ..Default::default()
    };
    let mut s = c.start(&req, &CallOptions::default()).await.unwrap();
    let pid = s.pid().await.unwrap();
    let sel = ProcessSelector::Pid(pid);
    c.send_input(sel.clone(), ProcessInput::Pty(b"echo $((6*7)) $TERM\n".to_vec())).await.unwrap();
    read_until(&mut s, "42 xterm-256color").await;
    c.send_input(sel.clone(), ProcessInput::Pty(b"stty size\n".to_vec())).await.unwrap();
    read_until(&mut s, "30 100").await;
    c.resize(sel.clone(), PtySize { cols: 132, rows: 43 }).await.unwrap();
    c.send_input(sel.clone(), ProcessInput::Pty(b"stty size\n".to_vec())).await.unwrap();
    read_until(&mut s, "43 132").await;
    // Ctrl-C interrupts the foreground job, the shell survives.
    c.send_input(sel.clone(), ProcessInput::Pty(b"sleep 100\n".to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send_input(sel.clone(), ProcessInput::Pty(b"\x03".to_vec())).await.unwrap();
    c.send_input(sel.clone(), ProcessInput::Pty(b"echo after-$((1+1))\n".to_vec())).await.unwrap();
    read_until(&mut s, "after-2").await;
    c.send_input(sel.clone(), ProcessInput::Pty(b"exit 7\n".to_vec())).await.unwrap();
    let mut code = None;
    while let Some(ev) = s.next_event().await {
        if let ProcessEvent::End(e) = ev.unwrap() {
            code = Some(e.exit_code);
        }
    }
    assert_eq!(code, Some(7));
    // Resizing a process without a terminal is refused.
    let mut p = c.start(&sh("sleep 2"), &CallOptions::default()).await.unwrap();
    let pid = p.pid().await.unwrap();
    let e = c.resize(ProcessSelector::Pid(pid), PtySize { cols: 1, rows: 1 }).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_of_stdout_with_bounded_memory() {
    let a = Agent::start();
    let c = a.unix();
    let before = a.rss_kib();
    let mut s = c
        .start(&sh("head -c 10485760 /dev/urandom | od -An -v -tx1 | head -c 10485760"), &CallOptions::default())
        .await
        .unwrap();
    let mut n = 0usize;
    let mut chunks = 0usize;
    let mut exit = None;
    while let Some(ev) = s.next_event().await {
        match ev.unwrap() {
            ProcessEvent::Data(DataEvent::Stdout(d)) => {
                n += d.len();
                chunks += 1;
            }
            ProcessEvent::End(e) => exit = Some(e.exit_code),
            _ => {}
        }
    }
    assert_eq!(n, 10 * 1024 * 1024);
    assert!(chunks > 10, "streamed chunk by chunk, got {chunks} chunks");
    assert_eq!(exit, Some(0));
    let peak = a.peak_rss_kib();
    assert!(peak < before + 32 * 1024, "agent peak RSS {peak} KiB (was {before} KiB before)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_processes_at_once() {
    let a = Agent::start();
    let c = a.unix();
    let flag = a.dir.path().join("release");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let c = c.clone();
        let script = format!("while [ ! -e {} ]; do sleep 0.05; done; echo n{i}", flag.display());
        tasks.push(tokio::spawn(async move {
            let out = c.sh(&script).await.unwrap();
            assert_eq!(out.stdout, format!("n{i}\n").as_bytes());
        }));
    }
    // All hundred run at the same time: none can finish before the flag exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = c.list().await.unwrap().len();
        if running == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "only {running} of 100 running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&flag, b"").unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    wait_gone_all(&c).await;
}

async fn wait_gone_all(c: &AgentClient) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.list().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "processes still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_when_the_agent_is_pid_1() {
    let a = Agent::start_with(Opts { as_pid1: true, ..Opts::default() });
    let c = a.unix();
    let out = c.sh("echo $$ > /dev/null; cat /proc/1/comm").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "warren-agent");
    // Double-fork: the grandchildren are re-parented to PID 1 and exit.
    for _ in 0..5 {
        c.sh("(sleep 0.1 &) ; (sleep 0.1 &)").await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.sh("grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l").await.unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "zombies left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A command starts clean whatever the agent's own state: its own session,
/// no blocked or ignored signals (the agent ignores SIGPIPE and handles
/// others), only descriptors 0-2 open (none of the agent's sockets, pipes of
/// other commands, PTYs, or descriptors the agent inherited without
/// close-on-exec), and no OOM score inherited from the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_starts_with_clean_process_state() {
    // Give this process (the agent runs in it) an OOM score of its own, as
    // the agent has when it shields itself as a workspace's init (shielding,
    // a negative score, needs CAP_SYS_RESOURCE, which CI may lack).
    std::fs::write("/proc/self/oom_score_adj", "300").unwrap();
    // SAFETY: setting SIGPIPE's disposition to ignore and opening a file
    // without close-on-exec; nothing in the test relies on either.
    let leaky = unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY)
    };
    assert!(leaky > 2);
    let a = Agent::start();
    let c = a.unix();
    // A PTY process alive beside it: its descriptors must not leak either.
    let mut pty = sh("sleep 5");
    pty.pty = Some(Pty { size: Some(PtySize { cols: 80, rows: 24 }) });
    let _other = c.start(&pty, &CallOptions::default()).await.unwrap();
    // Programs the agent execs directly (no shell in between to change things).
    let run = |cmd: &str, args: &[&str]| {
        let req = StartRequest {
            process: Some(ProcessConfig {
                cmd: cmd.into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = c.clone();
        async move {
            let out = c.start(&req, &CallOptions::default()).await.unwrap().collect().await.unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let status = run("grep", &["-E", "^(SigBlk|SigIgn)", "/proc/self/status"]).await;
    assert_eq!(status, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
    assert_eq!(run("cat", &["/proc/self/oom_score_adj"]).await, "0\n");
    // ls's own directory handle is the one beyond 2.
    assert_eq!(run("ls", &["/proc/self/fd"]).await, "0\n1\n2\n3\n");
    // /proc/self/stat: field 1 is the pid, field 6 the session.
    let stat = run("cat", &["/proc/self/stat"]).await;
    let after_comm = stat.rsplit_once(") ").unwrap().1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    assert_eq!(stat.split_whitespace().next(), Some(fields[3]), "its own session: {stat}");
}
