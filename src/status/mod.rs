//! The status socket of a mount: `bucketfs status` asks it what the mount is doing (uploads
//! with their progress, files not yet committed, failed commits, the caches, S3 requests by
//! kind) and gets
//! one JSON object back. `client.rs` is the command's side.
//!
//! Non-obvious problems:
//! 1. One socket per mount, named by a hash of the mount point (a long path would not fit in
//!    a socket address's 108 bytes), in `/run/bucketfs/` for root and
//!    `$XDG_RUNTIME_DIR/bucketfs/` otherwise (`/tmp/bucketfs-UID` without one, checked to be
//!    the user's own); the socket is mode 0600 in a 0700 directory, so another user's connect
//!    fails with "permission denied" and learns no file names.
//! 2. The mount point is the path /proc/mounts shows, resolved before the mount: resolving
//!    it after would ask the mount itself, which does not answer until the session runs.
//! 3. A socket left by a daemon that died is replaced; one a live daemon answers on (the
//!    same mount point mounted over) is left alone and this mount has no status socket.
//! 4. The answer is built from atomics and try-locks (`Fs::activity`): a status request
//!    never waits behind an upload.
//! 5. The directory is the daemon's own (`owned_dir`), mode 0700, so the socket is never
//!    reachable by another user, not even between `bind` and `chmod`; and the server checks
//!    each client's credentials (`SO_PEERCRED`): the mount's user or root, no one else.

pub mod client;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::fs::{Activity, Fs};
use crate::notify::{NotifySnapshot, NotifyStats};
use crate::owned_dir::OwnedDir;
use crate::store::requests::{RequestCounts, RequestStats};

/// What a request line may be at most, and how long a client may take to send it.
const REQUEST_LIMIT: u64 = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory of the status sockets of mounts made by `uid`.
pub fn socket_dir(uid: u32, runtime_dir: Option<&Path>) -> PathBuf {
    if uid == 0 {
        return PathBuf::from("/run/bucketfs");
    }
    match runtime_dir {
        Some(dir) => dir.join("bucketfs"),
        None => PathBuf::from(format!("/tmp/bucketfs-{uid}")),
    }
}

/// The directory of this process's status sockets (its effective user's).
pub fn own_socket_dir() -> PathBuf {
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    socket_dir(crate::owned_dir::euid(), runtime_dir.as_deref())
}

/// The status socket of the mount at `mountpoint` (as /proc/mounts shows it) in `dir`.
pub fn socket_path(dir: &Path, mountpoint: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(mountpoint.as_os_str().as_bytes());
    let name: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.sock"))
}

/// `path` as /proc/mounts would show it once mounted: made absolute, its parent resolved,
/// the last component left alone (looking at it would ask the mount, or trigger an
/// automount).
pub fn mount_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

/// What a mount says about itself besides its activity.
#[derive(Debug, Clone)]
pub struct MountInfo {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// `bucket` or `bucket:prefix`.
    pub source: String,
    /// The endpoint URL, or "AWS" for the default.
    pub endpoint: String,
    /// The region in use.
    pub region: String,
    /// When it was mounted.
    pub started: SystemTime,
    /// Its S3 requests so far.
    pub requests: Arc<RequestStats>,
    /// Its S3 event notifications, when on.
    pub notifications: Option<Arc<NotifyStats>>,
}

/// The status socket while it is served; removed when dropped.
#[derive(Debug)]
pub struct StatusSocket {
    path: PathBuf,
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl StatusSocket {
    /// Binds the socket of `info.mountpoint` in `dir` (creating it, private to this user unless
    /// it is root's) and serves it on the current runtime until the process ends.
    pub fn start(
        dir: &Path,
        info: MountInfo,
        fs: Arc<Fs>,
        takeover: Option<Arc<dyn TakeoverPort>>,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        // Made 0700 or checked as ours (owned_dir), and made private if an earlier version
        // left it 0755: the socket is bound where no other user can reach it, so the moment
        // between bind and chmod is safe (5.).
        let owned = OwnedDir::open_or_create(dir)?;
        owned.make_private()?;
        let path = socket_path(dir, &info.mountpoint);
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is served by another live mount", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let info = Arc::new(info);
        let socket = Arc::new(path.clone());
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) if peer_allowed(&stream) => stream,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!("status socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (info, fs) = (Arc::clone(&info), Arc::clone(&fs));
                let (takeover, socket) = (takeover.clone(), Arc::clone(&socket));
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &info, &fs, takeover, &socket).await {
                        tracing::debug!("status socket: {e}");
                    }
                });
            }
        });
        Ok(Self { path })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// True when the peer is this daemon's user or root (`SO_PEERCRED`); another user is
/// refused without an answer (5.).
fn peer_allowed(stream: &tokio::net::UnixStream) -> bool {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || cred.uid() == crate::owned_dir::euid() => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "status socket: refused a client of another user"
            );
            false
        }
        Err(e) => {
            tracing::debug!("status socket: no peer credentials: {e}");
            false
        }
    }
}

/// Serves `bucketfs takeover` on its connection (daemon/takeover.rs): the status socket only
/// passes the connection on.
pub trait TakeoverPort: Send + Sync {
    /// Runs the handover conversation on `stream` (blocking), which came in on the status
    /// socket at `socket` (a daemon that hands over removes it before it exits, so its
    /// successor binds its own at once).
    fn serve(&self, stream: std::os::unix::net::UnixStream, socket: &Path);
}

/// Reads one request line and answers it.
async fn answer(
    stream: tokio::net::UnixStream,
    info: &MountInfo,
    fs: &Fs,
    takeover: Option<Arc<dyn TakeoverPort>>,
    socket: &Path,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, REQUEST_LIMIT));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    if let ("takeover", Some(port)) = (line.trim(), takeover) {
        let stream = reader
            .into_inner()
            .into_inner()
            .reunite(write)
            .map_err(|e| std::io::Error::other(format!("status socket: {e}")))?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let socket = socket.to_path_buf();
        tokio::task::spawn_blocking(move || port.serve(stream, &socket));
        return Ok(());
    }
    let reply = match line.trim() {
        "status" => report(
            info,
            &fs.activity(),
            &info.requests.snapshot(),
            info.notifications.as_ref().map(|n| n.snapshot()),
        ),
        other => {
            json!({ "error": format!("unknown request {other:?}; this daemon knows \"status\" and \"takeover\"") })
        }
    };
    let mut text = reply.to_string();
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// The JSON answer to "status" (documented in docs/STATUS.md).
pub fn report(
    info: &MountInfo,
    a: &Activity,
    s3: &RequestCounts,
    notify: Option<NotifySnapshot>,
) -> Value {
    let uploads: Vec<Value> = a
        .uploads
        .iter()
        .map(|u| {
            json!({
                "path": u.path,
                "bytes_written": u.progress.written,
                "bytes_sent": u.progress.sent,
                "parts_done": u.progress.parts,
                "bytes_total": u.progress.total,
                "seconds": u.progress.elapsed.as_secs_f64(),
            })
        })
        .collect();
    let pending: Vec<Value> = a
        .pending
        .iter()
        .map(|p| json!({ "path": p.path, "size": p.size, "busy": p.busy }))
        .collect();
    let failures: Vec<Value> = a
        .failures
        .iter()
        .map(|f| json!({ "seq": f.seq, "path": f.path, "error": f.message }))
        .collect();
    let requests: Vec<Value> = s3
        .by_kind
        .iter()
        .map(|((operation, outcome), count)| {
            json!({ "operation": operation, "outcome": outcome.as_str(), "count": count })
        })
        .collect();
    let uptime = SystemTime::now()
        .duration_since(info.started)
        .unwrap_or_default();
    json!({
        "mountpoint": info.mountpoint.to_string_lossy(),
        "source": info.source,
        "endpoint": info.endpoint,
        "region": info.region,
        "pid": std::process::id(),
        "uptime_seconds": uptime.as_secs(),
        "uploads": uploads,
        "pending": pending,
        "failures": failures,
        "last_failure": a.last_failure,
        "cache": {
            "blocks": a.cache.blocks,
            "capacity_blocks": a.cache.capacity,
            "block_size": a.cache.block_size,
            "hits": a.cache.hits,
            "misses": a.cache.misses,
            "evictions": a.cache.evictions,
        },
        "metadata": {
            "inodes": a.meta.inodes,
            "nodes": a.meta.nodes,
            "listings": a.meta.listings,
            "listed_entries": a.meta.listed_entries,
            "misses": a.meta.misses,
            "bytes": a.meta.bytes,
            "shed": a.meta.shed,
        },
        "snapshot": a.snapshot.map(|s| json!({
            "served": s.served,
            "proven": s.proven,
            "revalidated": s.revalidated,
            "changed": s.changed,
            "rejected": s.rejected,
        })),
        "s3": {
            "requests": requests,
            "retries": s3.retries,
            "bytes_sent": s3.bytes_sent,
            "bytes_received": s3.bytes_received,
        },
        "notifications": notify.map(|n| json!({
            "queue": n.queue,
            "events": n.events,
            "last_lag_seconds": n.last_lag.map(|l| l.as_secs_f64()),
            "failing": n.failing,
        })),
    })
}

#[cfg(test)]
mod tests;
