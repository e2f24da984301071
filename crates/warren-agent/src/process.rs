//! Processes: spawning (pipes or PTY, as any user), output fan-out to every
//! attached stream, input, signals, PTY resize, and reaping.
//!
//! Every process gets its own session (`setsid`), so a signal or a deadline
//! reaches its whole process group. Exit statuses come from one reaper that
//! calls `waitpid(-1)` on SIGCHLD, which also reaps orphans when the agent
//! runs as PID 1.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use warren_proto::connect::{Code, ConnectError, Decoder};
use warren_proto::process::{
    DataEvent, EndEvent, KeepAlive, ListResponse, ProcessConfig, ProcessEvent, ProcessInfo, ProcessInput,
    ProcessSelector, PtySize, Signal, StartEvent, StartRequest, StartResponse, StreamInputRequest,
};

use crate::fsops::resolve_path;
use crate::server::{RpcCtx, StreamTx};
use crate::state::Agent;

/// Events buffered per attached stream before the process is slowed down.
const SUB_CAPACITY: usize = 64;
/// Read size for process output.
const CHUNK: usize = 32 * 1024;
/// After the process exits, output still buffered is drained until the pipe
/// has been quiet this long (a background grandchild may hold it open).
const DRAIN_QUIET: Duration = Duration::from_millis(25);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

enum Io {
    Pipes { stdin: tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>> },
    Pty { master: Arc<AsyncFd<OwnedFd>>, write_lock: tokio::sync::Mutex<()> },
}

struct Subs {
    list: Vec<mpsc::Sender<ProcessEvent>>,
    ended: bool,
}

/// One running process.
pub struct Proc {
    pid: u32,
    config: ProcessConfig,
    tag: Option<String>,
    io: Io,
    subs: Mutex<Subs>,
}

impl Proc {
    fn lock_subs(&self) -> std::sync::MutexGuard<'_, Subs> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a new stream; `None` once the process has ended.
    fn subscribe(&self) -> Option<mpsc::Receiver<ProcessEvent>> {
        let (tx, rx) = mpsc::channel(SUB_CAPACITY);
        let mut s = self.lock_subs();
        if s.ended {
            return None;
        }
        s.list.push(tx);
        Some(rx)
    }

    /// Sends an event to every attached stream, waiting for slow readers
    /// (backpressure instead of unbounded buffering), dropping gone ones.
    async fn broadcast(&self, ev: ProcessEvent) {
        let subs: Vec<_> = self.lock_subs().list.clone();
        let mut gone = false;
        for s in &subs {
            gone |= s.send(ev.clone()).await.is_err();
        }
        if gone {
            self.lock_subs().list.retain(|s| !s.is_closed());
        }
    }
}

/// All processes the agent started and that have not ended.
#[derive(Default)]
pub struct ProcessTable {
    procs: Mutex<HashMap<u32, Arc<Proc>>>,
    waiters: Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>>,
}

impl ProcessTable {
    fn lock_procs(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Proc>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, sel: &ProcessSelector) -> Result<Arc<Proc>, ConnectError> {
        let procs = self.lock_procs();
        let found = match sel {
            ProcessSelector::Pid(pid) => procs.get(pid).cloned(),
            ProcessSelector::Tag(tag) => {
                let mut matching: Vec<_> = procs.values().filter(|p| p.tag.as_deref() == Some(tag)).collect();
                matching.sort_by_key(|p| p.pid);
                matching.first().map(|p| Arc::clone(p))
            }
        };
        found.ok_or_else(|| match sel {
            ProcessSelector::Pid(pid) => ConnectError::not_found(format!("process with pid {pid} not found")),
            ProcessSelector::Tag(tag) => ConnectError::not_found(format!("process with tag '{tag}' not found")),
        })
    }

    pub fn list(&self) -> ListResponse {
        let mut processes: Vec<ProcessInfo> = self
            .lock_procs()
            .values()
            .map(|p| ProcessInfo { config: p.config.clone(), pid: p.pid, tag: p.tag.clone() })
            .collect();
        processes.sort_by_key(|p| p.pid);
        ListResponse { processes }
    }

    pub fn len(&self) -> usize {
        self.lock_procs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn signal(&self, sel: &ProcessSelector, sig: Signal) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        let sig = match sig {
            Signal::Sigkill => nix::sys::signal::Signal::SIGKILL,
            Signal::Sigterm => nix::sys::signal::Signal::SIGTERM,
            Signal::Unspecified => return Err(ConnectError::invalid("signal is required")),
        };
        kill_group(p.pid, sig);
        Ok(())
    }

    pub async fn send_input(&self, sel: &ProcessSelector, input: ProcessInput) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        write_input(&p, input).await
    }

    pub async fn close_stdin(&self, sel: &ProcessSelector) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        match &p.io {
            Io::Pipes { stdin } => {
                // Dropping the write end delivers EOF.
                stdin.lock().await.take();
                Ok(())
            }
            // A terminal has no separate stdin: send the EOF character.
            Io::Pty { master, write_lock } => {
                let _g = write_lock.lock().await;
                pty_write_all(master, b"\x04").await
            }
        }
    }

    pub fn resize(&self, sel: &ProcessSelector, size: PtySize) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        match &p.io {
            Io::Pty { master, .. } => set_winsize(master.get_ref().as_raw_fd(), size),
            Io::Pipes { .. } => {
                Err(ConnectError::new(Code::FailedPrecondition, format!("process {} has no terminal to resize", p.pid)))
            }
        }
    }

    /// Collects every exited child; called on each SIGCHLD.
    fn reap(&self) {
        loop {
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        if let Some(tx) = waiters.remove(&pid.as_raw()) {
                            let _ = tx.send(status);
                        }
                        // Otherwise an orphan re-parented to us: reaped, done.
                    }
                }
            }
        }
    }
}

/// Starts the reaper. Must run before the first process is spawned.
pub fn spawn_reaper(agent: Arc<Agent>) -> std::io::Result<()> {
    let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            agent.procs.reap();
            if sig.recv().await.is_none() {
                break;
            }
        }
    });
    Ok(())
}

fn kill_group(pid: u32, sig: nix::sys::signal::Signal) {
    let pid = pid as i32;
    if nix::sys::signal::kill(Pid::from_raw(-pid), sig).is_err() {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

fn set_winsize(fd: RawFd, size: PtySize) -> Result<(), ConnectError> {
    let ws = libc::winsize {
        ws_row: size.rows.clamp(1, u16::MAX as u32) as u16,
        ws_col: size.cols.clamp(1, u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points to
    // a live local; `fd` is the PTY master owned by the process record.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(ConnectError::internal(format!("resize: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

async fn pty_write_all(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> Result<(), ConnectError> {
    while !data.is_empty() {
        let mut guard = master.writable().await.map_err(|e| ConnectError::internal(format!("terminal write: {e}")))?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(ConnectError::new(Code::FailedPrecondition, format!("terminal closed: {e}"))),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

async fn write_input(p: &Proc, input: ProcessInput) -> Result<(), ConnectError> {
    match (&p.io, input) {
        (Io::Pty { master, write_lock }, ProcessInput::Pty(d) | ProcessInput::Stdin(d)) => {
            let _g = write_lock.lock().await;
            pty_write_all(master, &d).await
        }
        (Io::Pipes { stdin }, ProcessInput::Stdin(d)) => {
            let mut guard = stdin.lock().await;
            let Some(w) = guard.as_mut() else {
                return Err(ConnectError::new(
                    Code::FailedPrecondition,
                    format!("stdin of process {} is not open (start it with stdin enabled)", p.pid),
                ));
            };
            w.write_all(&d)
                .await
                .map_err(|e| ConnectError::new(Code::FailedPrecondition, format!("writing stdin: {e}")))
        }
        (Io::Pipes { .. }, ProcessInput::Pty(_)) => {
            Err(ConnectError::invalid(format!("process {} has no terminal; send stdin input instead", p.pid)))
        }
    }
}

/// The environment of a new process: base variables, then the workspace's,
/// then the request's (later entries win).
fn build_env(
    user: &crate::users::User,
    workspace: &BTreeMap<String, String>,
    req: &BTreeMap<String, String>,
    pty: bool,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    env.insert("HOME".to_string(), user.home.to_string_lossy().into_owned());
    env.insert("USER".to_string(), user.name.clone());
    env.insert("LOGNAME".to_string(), user.name.clone());
    if pty {
        env.insert("TERM".to_string(), "xterm-256color".to_string());
    }
    env.extend(workspace.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(req.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

fn end_event(status: WaitStatus) -> EndEvent {
    match status {
        WaitStatus::Exited(_, code) => EndEvent {
            exit_code: code,
            exited: true,
            status: format!("exit status {code}"),
            error: (code != 0).then(|| format!("exit status {code}")),
        },
        WaitStatus::Signaled(_, sig, _) => {
            let s = format!("signal: {}", signal_text(sig));
            EndEvent { exit_code: -1, exited: false, status: s.clone(), error: Some(s) }
        }
        other => {
            EndEvent { exit_code: -1, exited: false, status: format!("{other:?}"), error: Some(format!("{other:?}")) }
        }
    }
}

/// Signal descriptions as Go prints them (envd's `status` strings).
fn signal_text(sig: nix::sys::signal::Signal) -> String {
    use nix::sys::signal::Signal as S;
    match sig {
        S::SIGKILL => "killed".into(),
        S::SIGTERM => "terminated".into(),
        S::SIGINT => "interrupt".into(),
        S::SIGHUP => "hangup".into(),
        S::SIGQUIT => "quit".into(),
        S::SIGABRT => "aborted".into(),
        S::SIGSEGV => "segmentation fault".into(),
        S::SIGPIPE => "broken pipe".into(),
        S::SIGBUS => "bus error".into(),
        S::SIGFPE => "floating point exception".into(),
        S::SIGILL => "illegal instruction".into(),
        S::SIGALRM => "alarm clock".into(),
        S::SIGUSR1 => "user defined signal 1".into(),
        S::SIGUSR2 => "user defined signal 2".into(),
        other => other.as_str().to_lowercase(),
    }
}

/// Spawns the process described by `req` and registers it, with `first` as
/// its first attached stream (so no output can be missed).
fn spawn(
    agent: &Agent,
    ctx: &RpcCtx,
    req: &StartRequest,
) -> Result<(Arc<Proc>, mpsc::Receiver<ProcessEvent>), ConnectError> {
    let config = req.process.clone().unwrap_or_default();
    if config.cmd.is_empty() {
        return Err(ConnectError::invalid("process.cmd is required"));
    }
    let settings = agent.settings();
    let user = &ctx.user;
    let cwd: PathBuf = match config.cwd.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => resolve_path(c, &user.home),
        None => settings.default_workdir.clone().unwrap_or_else(|| user.home.clone()),
    };
    let cwd = if cwd.is_dir() {
        cwd
    } else if config.cwd.is_some() {
        return Err(ConnectError::invalid(format!("cwd '{}' does not exist or is not a directory", cwd.display())));
    } else {
        PathBuf::from("/")
    };
    let pty = req.pty.as_ref();
    let env = build_env(user, &settings.env_vars, &config.envs, pty.is_some());

    let am_root = nix::unistd::geteuid().is_root();
    if !am_root && user.uid != nix::unistd::geteuid().as_raw() {
        return Err(ConnectError::new(
            Code::PermissionDenied,
            format!("the agent does not run as root and cannot act as user '{}'", user.name),
        ));
    }
    let credentials = am_root.then(|| (user.uid, user.gid, crate::users::groups_of(&user.name, user.gid)));
    let cstr = |what: &str, v: String| {
        CString::new(v).map_err(|_| ConnectError::invalid(format!("{what} contains a NUL byte")))
    };
    let path = env.get("PATH").map(String::as_str).unwrap_or(DEFAULT_PATH);
    let candidates = crate::spawn::candidates(&config.cmd, path)
        .map_err(|_| ConnectError::invalid("process.cmd contains a NUL byte"))?;
    let mut argv = vec![cstr("process.cmd", config.cmd.clone())?];
    for a in &config.args {
        argv.push(cstr("process.args", a.clone())?);
    }
    let envp = env.iter().map(|(k, v)| cstr("process.envs", format!("{k}={v}"))).collect::<Result<Vec<_>, _>>()?;
    let cwd_c = cstr("process.cwd", cwd.to_string_lossy().into_owned())?;

    // The child's ends of its standard streams; ours stay in `Io`/readers.
    let os = |what: &str, e: std::io::Error| ConnectError::internal(format!("{what}: {e}"));
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| os("pipe", e.into()));
    let mut pty_master: Option<OwnedFd> = None;
    let mut parent_ends: [Option<OwnedFd>; 3] = [None, None, None];
    let child_ends: [OwnedFd; 3] = if let Some(p) = pty {
        let size = p.size.unwrap_or(PtySize { cols: 80, rows: 24 });
        let pair = nix::pty::openpty(None, None).map_err(|e| ConnectError::internal(format!("openpty: {e}")))?;
        set_winsize(pair.master.as_raw_fd(), size)?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| os("dup pty", e));
        for fd in [&pair.master, &pair.slave] {
            set_cloexec(fd.as_raw_fd());
        }
        pty_master = Some(pair.master);
        [dup(&pair.slave)?, dup(&pair.slave)?, pair.slave]
    } else {
        // SDK 2.63 always sends `stdin`; 2.0.0 never did and expected a pipe.
        let stdin = if req.stdin.unwrap_or(true) {
            let (r, w) = pipe()?;
            parent_ends[0] = Some(w);
            r
        } else {
            OwnedFd::from(
                std::fs::File::options().read(true).write(true).open("/dev/null").map_err(|e| os("/dev/null", e))?,
            )
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        parent_ends[1] = Some(out_r);
        parent_ends[2] = Some(err_r);
        [stdin, out_w, err_w]
    };
    let spec = crate::spawn::Spec {
        candidates,
        argv,
        envp,
        cwd: cwd_c,
        stdio: [child_ends[0].as_raw_fd(), child_ends[1].as_raw_fd(), child_ends[2].as_raw_fd()],
        controlling_tty: pty.is_some(),
        credentials,
    };

    // Hold the waiter table while spawning so the reaper cannot collect the
    // child before its waiter is registered.
    let (exit_tx, exit_rx) = oneshot::channel();
    let pid = {
        let mut waiters = agent.procs.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let pid = crate::spawn::spawn(&spec).map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound { Code::NotFound } else { Code::Internal };
            ConnectError::new(code, format!("failed to start '{}': {e}", config.cmd))
        })?;
        waiters.insert(pid as i32, exit_tx);
        pid
    };
    drop(child_ends);
    let [stdin_w, stdout_r, stderr_r] = parent_ends;

    let (io, readers): (Io, Vec<Reader>) = match pty_master {
        Some(master) => {
            set_nonblocking(master.as_raw_fd());
            // SAFETY: `master` is an open PTY master descriptor that the
            // AsyncFd takes ownership of and keeps open until it is dropped.
            let registered = unsafe { AsyncFd::register(master) };
            let master = Arc::new(registered.map_err(|e| ConnectError::internal(format!("pty master: {e}")))?);
            (Io::Pty { master: master.clone(), write_lock: Default::default() }, vec![Reader::Pty(master)])
        }
        None => {
            let stdin = stdin_w.and_then(|s| tokio::net::unix::pipe::Sender::from_owned_fd(s).ok());
            let mut readers = Vec::new();
            if let Some(out) = stdout_r {
                if let Ok(r) = tokio::net::unix::pipe::Receiver::from_owned_fd(out) {
                    readers.push(Reader::Stdout(r));
                }
            }
            if let Some(err) = stderr_r {
                if let Ok(r) = tokio::net::unix::pipe::Receiver::from_owned_fd(err) {
                    readers.push(Reader::Stderr(r));
                }
            }
            (Io::Pipes { stdin: tokio::sync::Mutex::new(stdin) }, readers)
        }
    };

    let (first_tx, first_rx) = mpsc::channel(SUB_CAPACITY);
    // The channel is new and empty: the start event always fits.
    let _ = first_tx.try_send(ProcessEvent::Start(StartEvent { pid }));
    let proc = Arc::new(Proc {
        pid,
        config,
        tag: req.tag.clone(),
        io,
        subs: Mutex::new(Subs { list: vec![first_tx], ended: false }),
    });
    agent.procs.lock_procs().insert(pid, proc.clone());
    supervise(agent, proc.clone(), readers, exit_rx);
    Ok((proc, first_rx))
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own, with plain integer arguments.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own, with plain integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

enum Reader {
    Stdout(tokio::net::unix::pipe::Receiver),
    Stderr(tokio::net::unix::pipe::Receiver),
    Pty(Arc<AsyncFd<OwnedFd>>),
}

/// Reads one output source until EOF, or until it goes quiet after the exit.
async fn pump<R: AsyncRead + Unpin>(
    proc: &Proc,
    mut src: R,
    wrap: fn(Vec<u8>) -> DataEvent,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = if *exited.borrow() {
            match tokio::time::timeout(DRAIN_QUIET, src.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = src.read(&mut buf) => r,
                _ = exited.changed() => continue,
            }
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => proc.broadcast(ProcessEvent::Data(wrap(buf[..n].to_vec()))).await,
        }
    }
}

async fn pump_pty(proc: &Proc, master: &AsyncFd<OwnedFd>, mut exited: watch::Receiver<bool>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let ready = if *exited.borrow() {
            match tokio::time::timeout(DRAIN_QUIET, master.readable()).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = master.readable() => r,
                _ = exited.changed() => continue,
            }
        };
        let Ok(mut guard) = ready else { break };
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref().as_raw_fd(), &mut buf).map_err(std::io::Error::from)) {
            // EIO: every slave end is closed.
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => proc.broadcast(ProcessEvent::Data(DataEvent::Pty(buf[..n].to_vec()))).await,
            Err(_would_block) => continue,
        }
    }
}

fn supervise(agent: &Agent, proc: Arc<Proc>, readers: Vec<Reader>, exit_rx: oneshot::Receiver<WaitStatus>) {
    let (exited_tx, exited_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for r in readers {
        let p = proc.clone();
        let ex = exited_rx.clone();
        tasks.push(tokio::spawn(async move {
            match r {
                Reader::Stdout(rx) => pump(&p, rx, DataEvent::Stdout, ex).await,
                Reader::Stderr(rx) => pump(&p, rx, DataEvent::Stderr, ex).await,
                Reader::Pty(m) => pump_pty(&p, &m, ex).await,
            }
        }));
    }
    let procs = agent.procs.clone();
    tokio::spawn(async move {
        let status = exit_rx.await.unwrap_or(WaitStatus::StillAlive);
        let _ = exited_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        let end = end_event(status);
        let subs = {
            let mut s = proc.lock_subs();
            s.ended = true;
            std::mem::take(&mut s.list)
        };
        procs.lock_procs().remove(&proc.pid);
        for s in subs {
            let _ = s.send(ProcessEvent::End(end.clone())).await;
        }
    });
}

/// Relays a process's events to a stream until the end event, the deadline,
/// or the client going away.
async fn relay(
    proc: Arc<Proc>,
    mut rx: mpsc::Receiver<ProcessEvent>,
    tx: StreamTx,
    deadline: Option<Duration>,
    kill_on_deadline: bool,
    keepalive: Option<Duration>,
) {
    let deadline = deadline.map(|d| tokio::time::Instant::now() + d);
    loop {
        let ka = async {
            match keepalive {
                Some(k) => tokio::time::sleep(k).await,
                None => std::future::pending().await,
            }
        };
        let dl = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    let end = matches!(ev, ProcessEvent::End(_));
                    if !tx.send(&StartResponse { event: ev }).await {
                        return;
                    }
                    if end {
                        return tx.finish(None).await;
                    }
                }
                None => return tx.finish(None).await,
            },
            _ = dl => {
                drop(rx);
                if kill_on_deadline {
                    kill_group(proc.pid, nix::sys::signal::Signal::SIGKILL);
                }
                return tx.finish(Some(ConnectError::new(Code::DeadlineExceeded, "the deadline of the call was exceeded"))).await;
            }
            _ = ka => {
                if !tx.send(&StartResponse { event: ProcessEvent::Keepalive(KeepAlive {}) }).await {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

/// `process.Process/Start`.
pub async fn start_stream(agent: Arc<Agent>, ctx: RpcCtx, req: StartRequest, tx: StreamTx) {
    match spawn(&agent, &ctx, &req) {
        Ok((proc, rx)) => {
            if let Some(limit) = ctx.timeout {
                // The deadline bounds the process's life (envd semantics), also
                // when the client has gone away before it.
                let table = agent.procs.clone();
                let target = Arc::downgrade(&proc);
                tokio::spawn(async move {
                    tokio::time::sleep(limit).await;
                    if let Some(p) = target.upgrade() {
                        if table.lock_procs().get(&p.pid).is_some_and(|q| Arc::ptr_eq(q, &p)) {
                            kill_group(p.pid, nix::sys::signal::Signal::SIGKILL);
                        }
                    }
                });
            }
            relay(proc, rx, tx, ctx.timeout, true, ctx.keepalive).await
        }
        Err(e) => tx.finish(Some(e)).await,
    }
}

/// `process.Process/Connect`.
pub async fn connect_stream(agent: Arc<Agent>, ctx: RpcCtx, sel: ProcessSelector, tx: StreamTx) {
    let proc = match agent.procs.find(&sel) {
        Ok(p) => p,
        Err(e) => return tx.finish(Some(e)).await,
    };
    let Some(rx) = proc.subscribe() else {
        return tx.finish(Some(ConnectError::not_found(format!("process {} has ended", proc.pid)))).await;
    };
    if !tx.send(&StartResponse { event: ProcessEvent::Start(StartEvent { pid: proc.pid }) }).await {
        return;
    }
    relay(proc, rx, tx, ctx.timeout, false, ctx.keepalive).await
}

/// `process.Process/StreamInput`: a start message naming the process, then
/// data messages, applied as they arrive.
pub async fn stream_input(agent: &Agent, mut body: Incoming, limit: usize) -> Result<(), ConnectError> {
    let mut d = Decoder::new(limit);
    let mut target: Option<Arc<Proc>> = None;
    loop {
        while let Some(env) =
            d.next_envelope().map_err(|e| ConnectError::new(crate::server::frame_code(&e), e.to_string()))?
        {
            if env.is_end_stream() {
                return Ok(());
            }
            let msg: StreamInputRequest = crate::server::parse(&env.payload)?;
            match (msg, &target) {
                (StreamInputRequest::Start(s), None) => target = Some(agent.procs.find(&s.process)?),
                (StreamInputRequest::Start(_), Some(_)) => {
                    return Err(ConnectError::invalid("StreamInput: start sent twice"));
                }
                (StreamInputRequest::Data(data), Some(p)) => write_input(p, data.input).await?,
                (StreamInputRequest::Data(_), None) => {
                    return Err(ConnectError::invalid("StreamInput: the first message must be start"));
                }
                (StreamInputRequest::Keepalive(_), _) => {}
            }
        }
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(ConnectError::new(Code::Canceled, format!("reading input stream: {e}"))),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    d.push(&data);
                }
            }
        }
    }
    d.finish().map_err(|e| ConnectError::invalid(e.to_string()))?;
    if target.is_none() {
        return Err(ConnectError::invalid("StreamInput: no start message"));
    }
    Ok(())
}
