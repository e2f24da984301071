//! warren-agent: the process inside every workspace through which all
//! commands and file traffic pass. It speaks envd's protocol (Connect RPC,
//! JSON codec, plus `/files`, `/health` and warren's `/init`), so E2B SDKs
//! work against it unchanged. See `docs/agent.md`.

pub mod body;
pub mod files;
pub mod forward;
pub mod fsops;
pub mod process;
pub mod server;
pub mod spawn;
pub mod state;
pub mod users;
pub mod watch;

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use warren_proto::endpoint::Endpoint;

use crate::state::Agent;

/// A bound listener.
pub enum Listener {
    Unix(tokio::net::UnixListener, std::path::PathBuf),
    Tcp(tokio::net::TcpListener),
}

/// Binds an endpoint. A stale Unix socket file is replaced.
pub fn bind(ep: &Endpoint) -> std::io::Result<Listener> {
    match ep {
        Endpoint::Unix(p) => {
            if let Ok(m) = std::fs::symlink_metadata(p) {
                use std::os::unix::fs::FileTypeExt as _;
                if m.file_type().is_socket() {
                    std::fs::remove_file(p)?;
                }
            }
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let l = tokio::net::UnixListener::bind(p)?;
            use std::os::unix::fs::PermissionsExt as _;
            if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)) {
                // gVisor's gofer creates host sockets but refuses chmod on
                // them; the directory holding the socket guards it there.
                if e.kind() != std::io::ErrorKind::PermissionDenied {
                    return Err(e);
                }
            }
            Ok(Listener::Unix(l, p.clone()))
        }
        Endpoint::Tcp(a) => {
            let std = std::net::TcpListener::bind(a.as_str())?;
            std.set_nonblocking(true)?;
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(std)?))
        }
        Endpoint::Gateway { .. } | Endpoint::Https { .. } => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot listen on {ep}: gateway and https endpoints are for clients"),
        )),
    }
}

/// Takes over an inherited, already bound and listening Unix socket.
pub fn adopt_unix_listener(fd: i32) -> std::io::Result<Listener> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: fstat only reads the descriptor's metadata.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for fstat.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(std::io::Error::other(format!("fd {fd} is not a socket")));
    }
    // SAFETY: the descriptor was handed to this process to own (checked to be
    // a socket above); nothing else in the agent uses it.
    let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std.set_nonblocking(true)?;
    // SAFETY: FD_CLOEXEC so spawned processes do not inherit the listener.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    Ok(Listener::Unix(tokio::net::UnixListener::from_std(std)?, std::path::PathBuf::new()))
}

/// Accepts connections forever, serving HTTP/1.1 and HTTP/2 on each.
pub async fn serve(agent: Arc<Agent>, listener: Listener) {
    loop {
        let accepted = match &listener {
            Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("warren-agent: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(server::handle(agent, req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http2()
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .max_frame_size(1 << 20);
            let _ = match conn {
                Conn::Unix(s) => builder.serve_connection(TokioIo::new(s), svc).await,
                Conn::Tcp(s) => builder.serve_connection(TokioIo::new(s), svc).await,
            };
        });
    }
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}
