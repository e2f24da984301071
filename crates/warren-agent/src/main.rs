//! `warren-agent`: see `docs/agent.md` for flags and the bootstrap call.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use warren_agent::state::{Agent, Config, Settings};
use warren_proto::endpoint::Endpoint;

const USAGE: &str = "\
warren-agent: the in-workspace agent (envd-compatible)

USAGE: warren-agent [OPTIONS]

OPTIONS:
  --listen URL             unix:///PATH, tcp://ADDR:PORT, or fd://N (an inherited,
                           already listening Unix socket); repeatable
                           (default tcp://0.0.0.0:49983)
  --access-token-file F    require this X-Access-Token (env WARREN_AGENT_ACCESS_TOKEN)
  --init-token-file F      secret for POST /init (env WARREN_AGENT_INIT_TOKEN)
  --user NAME              default user (default: user, or root if absent)
  --workdir DIR            default working directory (default: the user's home)
  --env KEY=VALUE          workspace environment variable; repeatable (values
                           that must stay off the command line go in env
                           WARREN_AGENT_ENV, a JSON object, which wins)
  --max-message-bytes N    largest request message accepted (default 16777216)
  --version                print the version and the envd version it speaks
";

struct Args {
    listen: Vec<Endpoint>,
    /// Already-bound listening Unix sockets handed over by the sandbox helper.
    listen_fds: Vec<i32>,
    settings: Settings,
    config: Config,
}

fn read_secret(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| format!("reading {path}: {e}"))
}

extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

/// Reads a secret from the environment, then wipes it: spawned processes get
/// a fresh environment anyway, and this keeps it out of `/proc/PID/environ`.
fn take_secret_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    let prefix = format!("{name}=");
    // SAFETY: single-threaded at this point (before the runtime starts).
    // `environ` is the process's NUL-terminated array of NUL-terminated
    // strings; we only overwrite bytes inside one string's existing length.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let entry = std::ffi::CStr::from_ptr(*p);
            let bytes = entry.to_bytes();
            if bytes.starts_with(prefix.as_bytes()) {
                let start = (*p).add(prefix.len()) as *mut u8;
                std::ptr::write_bytes(start, b'x', bytes.len() - prefix.len());
            }
            p = p.add(1);
        }
        std::env::remove_var(name);
    }
    value
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut listen = Vec::new();
    let mut listen_fds = Vec::new();
    let mut access_token = take_secret_env("WARREN_AGENT_ACCESS_TOKEN");
    let mut init_token = take_secret_env("WARREN_AGENT_INIT_TOKEN");
    // The workspace's own variables may be secrets: they come through the
    // environment (scrubbed like the tokens), never the command line.
    let secret_env = take_secret_env("WARREN_AGENT_ENV");
    let mut user = None;
    let mut workdir = None;
    let mut env = BTreeMap::new();
    let mut max = 16usize << 20;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--version" => {
                println!("warren-agent {} (envd {})", env!("CARGO_PKG_VERSION"), warren_proto::ENVD_VERSION);
                return Ok(None);
            }
            "--listen" => {
                let v = val("--listen")?;
                match v.strip_prefix("fd://") {
                    Some(n) => listen_fds.push(n.parse::<i32>().map_err(|_| format!("--listen {v}: bad fd number"))?),
                    None => listen.push(v.parse::<Endpoint>()?),
                }
            }
            "--access-token-file" => access_token = Some(read_secret(&val("--access-token-file")?)?),
            "--init-token-file" => init_token = Some(read_secret(&val("--init-token-file")?)?),
            "--user" => user = Some(val("--user")?),
            "--workdir" => workdir = Some(val("--workdir")?),
            "--env" => {
                let kv = val("--env")?;
                let (k, v) = kv.split_once('=').ok_or_else(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
                env.insert(k.to_string(), v.to_string());
            }
            "--max-message-bytes" => {
                max = val("--max-message-bytes")?.parse().map_err(|e| format!("--max-message-bytes: {e}"))?;
                if max < 1024 {
                    return Err("--max-message-bytes must be at least 1024".into());
                }
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if listen.is_empty() && listen_fds.is_empty() {
        listen.push(Endpoint::Tcp(format!("0.0.0.0:{}", warren_proto::DEFAULT_PORT)));
    }
    let default_user = match user {
        Some(u) => {
            if warren_agent::users::by_name(&u).is_none() {
                return Err(format!("--user {u}: no such user in /etc/passwd"));
            }
            u
        }
        None if warren_agent::users::by_name("user").is_some() => "user".into(),
        None => "root".into(),
    };
    if let Some(w) = &workdir {
        if !w.starts_with('/') {
            return Err(format!("--workdir {w}: must be an absolute path"));
        }
    }
    if let Some(raw) = secret_env {
        let vars: BTreeMap<String, String> = serde_json::from_str(&raw)
            .map_err(|e| format!("WARREN_AGENT_ENV: expected a JSON object of strings: {e}"))?;
        env.extend(vars);
    }
    Ok(Some(Args {
        listen,
        listen_fds,
        settings: Settings {
            access_token: access_token.filter(|t| !t.is_empty()),
            default_user,
            default_workdir: workdir.map(Into::into),
            env_vars: env,
        },
        config: Config { init_token: init_token.filter(|t| !t.is_empty()), max_message_bytes: max },
    }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // Reap adopted orphans as PID 1 and grandchildren otherwise.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    // Not dumpable: without CAP_SYS_PTRACE nothing in the workspace, root
    // included, may ptrace the agent or read its memory and environment
    // (its tokens). Commands it starts are dumpable again after exec.
    // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    let agent = Arc::new(Agent::new(args.config, args.settings));
    if let Err(e) = warren_agent::process::spawn_reaper(agent.clone()) {
        eprintln!("warren-agent: cannot install SIGCHLD handler: {e}");
        return ExitCode::FAILURE;
    }
    let mut sockets = Vec::new();
    for ep in &args.listen {
        match warren_agent::bind(ep) {
            Ok(l) => {
                if let warren_agent::Listener::Unix(_, p) = &l {
                    sockets.push(p.clone());
                }
                eprintln!("warren-agent: listening on {ep}");
                tokio::spawn(warren_agent::serve(agent.clone(), l));
            }
            Err(e) => {
                eprintln!("warren-agent: cannot listen on {ep}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for fd in &args.listen_fds {
        match warren_agent::adopt_unix_listener(*fd) {
            Ok(l) => {
                eprintln!("warren-agent: listening on inherited socket fd {fd}");
                tokio::spawn(warren_agent::serve(agent.clone(), l));
            }
            Err(e) => {
                eprintln!("warren-agent: cannot use listening fd {fd}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
    for s in sockets {
        let _ = std::fs::remove_file(s);
    }
    ExitCode::SUCCESS
}
