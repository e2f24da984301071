//! Directory watchers on inotify: the WatchDir stream, and the polled
//! CreateWatcher / GetWatcherEvents / RemoveWatcher trio.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use warren_proto::connect::{Code, ConnectError};
use warren_proto::filesystem::{Empty, EventType, FilesystemEvent, WatchDirRequest, WatchDirResponse};

use crate::fsops::{io_error, resolve_path};
use crate::server::{RpcCtx, StreamTx};
use crate::state::{Agent, Settings};
use crate::users::User;

/// Events a polled watcher keeps between polls; older ones are dropped.
const MAX_PENDING: usize = 10_000;
/// Watchers one agent keeps at most.
const MAX_WATCHERS: usize = 1_024;

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One inotify instance watching a directory (and, if recursive, its tree).
struct DirWatch {
    fd: AsyncFd<Fd>,
    root: PathBuf,
    recursive: bool,
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

impl DirWatch {
    fn open(req: &WatchDirRequest, user: &User) -> Result<Self, ConnectError> {
        if req.path.is_empty() {
            return Err(ConnectError::invalid("path is required"));
        }
        let root = resolve_path(&req.path, &user.home);
        let meta = std::fs::metadata(&root).map_err(|e| io_error(&e, "watch", &root))?;
        if !meta.is_dir() {
            return Err(ConnectError::invalid(format!("path '{}' is not a directory", root.display())));
        }
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| ConnectError::new(Code::ResourceExhausted, format!("inotify: {e}")))?;
        // SAFETY: the inotify descriptor is owned by `Fd`, which the AsyncFd
        // owns; it stays open and unchanged until the AsyncFd drops.
        let registered = unsafe { AsyncFd::register(Fd(ino)) };
        let fd = registered.map_err(|e| ConnectError::internal(format!("inotify: {e}")))?;
        let mut w = DirWatch { fd, root: root.clone(), recursive: req.recursive, dirs: HashMap::new() };
        w.add_tree(&root)?;
        Ok(w)
    }

    fn add(&mut self, dir: &Path) -> Result<(), ConnectError> {
        let wd = self
            .fd
            .get_ref()
            .0
            .add_watch(dir, mask())
            .map_err(|e| ConnectError::new(Code::ResourceExhausted, format!("watch '{}': {e}", dir.display())))?;
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }

    fn add_tree(&mut self, dir: &Path) -> Result<(), ConnectError> {
        self.add(dir)?;
        if self.recursive {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        // A subdirectory that vanished meanwhile is fine to miss.
                        let _ = self.add_tree(&e.path());
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for and returns the next batch of events.
    async fn next_batch(&mut self) -> Result<Vec<FilesystemEvent>, ConnectError> {
        loop {
            let mut guard = self.fd.readable().await.map_err(|e| ConnectError::internal(format!("inotify: {e}")))?;
            let events = match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(evs)) => evs,
                Ok(Err(e)) => return Err(ConnectError::internal(format!("inotify read: {e}"))),
                Err(_would_block) => continue,
            };
            drop(guard);
            let mut out = Vec::new();
            for ev in events {
                let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                    continue;
                };
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.dirs.remove(&ev.wd);
                    continue;
                }
                let full = match &ev.name {
                    Some(n) => dir.join(n),
                    None => dir.clone(),
                };
                let m = ev.mask;
                let is_dir = m.contains(AddWatchFlags::IN_ISDIR);
                if self.recursive
                    && is_dir
                    && (m.contains(AddWatchFlags::IN_CREATE) || m.contains(AddWatchFlags::IN_MOVED_TO))
                {
                    let _ = self.add_tree(&full);
                }
                let kind = if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                    EventType::Create
                } else if m.contains(AddWatchFlags::IN_MODIFY) {
                    EventType::Write
                } else if m.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_DELETE_SELF) {
                    EventType::Remove
                } else if m.contains(AddWatchFlags::IN_MOVED_FROM) {
                    EventType::Rename
                } else if m.contains(AddWatchFlags::IN_ATTRIB) {
                    EventType::Chmod
                } else {
                    continue;
                };
                let name = full.strip_prefix(&self.root).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                out.push(FilesystemEvent { name, event_type: kind });
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

/// `filesystem.Filesystem/WatchDir`: `start`, then events until the client leaves.
pub async fn watch_stream(_agent: Arc<Agent>, ctx: RpcCtx, req: WatchDirRequest, tx: StreamTx) {
    let mut w = match DirWatch::open(&req, &ctx.user) {
        Ok(w) => w,
        Err(e) => return tx.finish(Some(e)).await,
    };
    if !tx.send(&WatchDirResponse::Start(Empty {})).await {
        return;
    }
    let deadline = ctx.timeout.map(|d| tokio::time::Instant::now() + d);
    loop {
        let ka = async {
            match ctx.keepalive {
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
            batch = w.next_batch() => match batch {
                Ok(evs) => for ev in evs {
                    if !tx.send(&WatchDirResponse::Filesystem(ev)).await {
                        return;
                    }
                },
                Err(e) => return tx.finish(Some(e)).await,
            },
            _ = ka => {
                if !tx.send(&WatchDirResponse::Keepalive(Empty {})).await {
                    return;
                }
            }
            _ = dl => return tx.finish(Some(ConnectError::new(Code::DeadlineExceeded, "the deadline of the call was exceeded"))).await,
            _ = tx.closed() => return,
        }
    }
}

struct Polled {
    events: Arc<Mutex<VecDeque<FilesystemEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Watchers that clients poll.
#[derive(Default)]
pub struct Watchers {
    next: AtomicU64,
    map: Mutex<HashMap<String, Polled>>,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Polled>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(&self, user: &User, _s: &Settings, req: &WatchDirRequest) -> Result<String, ConnectError> {
        if self.lock().len() >= MAX_WATCHERS {
            return Err(ConnectError::new(Code::ResourceExhausted, format!("at most {MAX_WATCHERS} watchers")));
        }
        let mut w = DirWatch::open(req, user)?;
        let events: Arc<Mutex<VecDeque<FilesystemEvent>>> = Arc::default();
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Ok(batch) = w.next_batch().await {
                let mut q = sink.lock().unwrap_or_else(|p| p.into_inner());
                for ev in batch {
                    if q.len() >= MAX_PENDING {
                        q.pop_front();
                    }
                    q.push_back(ev);
                }
            }
        });
        let id = format!("w{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        self.lock().insert(id.clone(), Polled { events, task });
        Ok(id)
    }

    pub fn drain(&self, id: &str) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let map = self.lock();
        let w = map.get(id).ok_or_else(|| ConnectError::not_found(format!("watcher '{id}' not found")))?;
        let mut q = w.events.lock().unwrap_or_else(|p| p.into_inner());
        Ok(q.drain(..).collect())
    }

    pub fn remove(&self, id: &str) -> Result<(), ConnectError> {
        let w = self.lock().remove(id).ok_or_else(|| ConnectError::not_found(format!("watcher '{id}' not found")))?;
        w.task.abort();
        Ok(())
    }
}
