//! Staging files: local copies of objects being changed in place (random writes, append,
//! O_RDWR, truncate), uploaded whole at the commit point.
//!
//! Non-obvious problems:
//! 1. Disk use is bounded by `limit`: the sum of the blocks the staging files hold on disk may
//!    not pass it, and a write that could is refused with ENOSPC, as a full disk would. Holes
//!    cost nothing: `truncate -s 20G` of an empty file needs no staging space. A write reserves
//!    its length plus two blocks first, then the file's real allocation (`st_blocks`) is taken
//!    from the disk.
//! 2. Each file is unlinked as soon as it is created, so a crash leaves no stray copies: the
//!    open descriptor is the only reference.
//! 3. Reads and writes are positioned (`pread`/`pwrite`), so handles never share a file offset.
//! 4. Disk I/O runs on tokio's blocking pool, never on the async workers, so a slow disk stalls
//!    only the file being written, not every FUSE operation.
//! 5. The directory may vanish under a long-lived mount (systemd-tmpfiles cleaning /var/tmp):
//!    it is created again (and checked again) when a new staging file finds it missing.
//! 6. The directory is the daemon's own (`owned_dir`): made 0700 or checked (owner, mode, not
//!    a symlink), and files are made through its descriptor with `O_TMPFILE` or `O_EXCL |
//!    O_NOFOLLOW`, so a name planted by another user can never redirect or truncate a file.

use parking_lot::Mutex;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{FsError, FsResult};
use crate::owned_dir::{OwnedDir, OwnedDirError};

/// The directory staging files live in, and its disk budget.
#[derive(Debug)]
pub struct StagingDir {
    /// The directory, opened again when it was removed (5.).
    dir: Mutex<Arc<OwnedDir>>,
    limit: u64,
    used: AtomicU64,
}

/// One staging file.
#[derive(Debug)]
pub struct StagingFile {
    file: Arc<File>,
    dir: Arc<StagingDir>,
    len: AtomicU64,
    /// Bytes it holds on disk, as last measured (counted in the directory's `used`).
    held: AtomicU64,
}

/// Slack a write reserves on top of its length: it may touch a partial block at each end.
const BLOCK_SLACK: u64 = 2 * 4096;

/// Bytes `file` holds on disk.
fn allocated(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}

fn io_error(what: &str, e: std::io::Error) -> FsError {
    FsError::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

/// Runs blocking file I/O on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

impl StagingDir {
    /// Creates (mode 0700) or opens and checks `path` (6.), allowing `limit` bytes of staging
    /// files. Fails now, at mount time, rather than at the first write.
    pub fn new(path: &Path, limit: u64) -> Result<Arc<Self>, OwnedDirError> {
        let dir = OwnedDir::open_or_create(path)?;
        dir.unnamed_file().map_err(|e| OwnedDirError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(Arc::new(Self {
            dir: Mutex::new(Arc::new(dir)),
            limit,
            used: AtomicU64::new(0),
        }))
    }

    /// Replaces the small record file `name` (a daemon's notes for its next start).
    pub fn save_record(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        Arc::clone(&self.dir.lock()).replace_file(name, bytes)
    }

    /// The record file `name`, if there is one.
    pub fn load_record(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        Arc::clone(&self.dir.lock()).read_file(name)
    }

    /// Removes the record file `name`.
    pub fn remove_record(&self, name: &str) -> std::io::Result<()> {
        Arc::clone(&self.dir.lock()).remove_file(name)
    }

    /// Bytes held by staging files now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// A new, empty staging file (the directory is made again if it was removed).
    pub async fn create(self: &Arc<Self>) -> FsResult<StagingFile> {
        let this = Arc::clone(self);
        let file = blocking(move || {
            let dir = Arc::clone(&this.dir.lock());
            match dir.unnamed_file() {
                // O_TMPFILE in a removed directory fails with EPERM, a name with ENOENT.
                Err(_) if dir.removed() => {
                    tracing::warn!(
                        "staging directory {} was removed: making it again",
                        dir.path().display()
                    );
                    let again = Arc::new(OwnedDir::open_or_create(dir.path())?);
                    let file = again.unnamed_file()?;
                    *this.dir.lock() = again;
                    Ok(file)
                }
                other => other,
            }
        })
        .await
        .map_err(|e| io_error("creating a staging file", e))?;
        Ok(StagingFile {
            file: Arc::new(file),
            dir: Arc::clone(self),
            len: AtomicU64::new(0),
            held: AtomicU64::new(0),
        })
    }

    /// A staging file a predecessor process handed over (its descriptor and length), counted
    /// in this directory's use.
    pub fn adopt(self: &Arc<Self>, file: File, len: u64) -> StagingFile {
        let held = allocated(&file).unwrap_or(len);
        self.used.fetch_add(held, Ordering::SeqCst);
        StagingFile {
            file: Arc::new(file),
            dir: Arc::clone(self),
            len: AtomicU64::new(len),
            held: AtomicU64::new(held),
        }
    }

    fn grow(&self, by: u64) -> FsResult<()> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(by).filter(|total| *total <= self.limit)
            })
            .map(|_| ())
            .map_err(|used| {
                FsError::new(
                    libc::ENOSPC,
                    format!(
                        "staging space full: {used} of {} bytes in use (--staging-dir-limit)",
                        self.limit
                    ),
                )
            })
    }
}

impl StagingFile {
    /// Current length.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::SeqCst)
    }

    /// A second descriptor of the file, for a successor process (see `StagingDir::adopt`).
    pub fn duplicate(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.file.as_fd().try_clone_to_owned()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts the file's new allocation `now` instead of what it held, and lets go of
    /// `reserved`.
    fn measured(&self, now: u64, reserved: u64) {
        let before = self.held.swap(now, Ordering::SeqCst);
        // Add first: `used` includes `before` and `reserved`, so the subtraction cannot wrap.
        self.dir.used.fetch_add(now, Ordering::SeqCst);
        self.dir.used.fetch_sub(before + reserved, Ordering::SeqCst);
    }

    /// Changes the length. Growing makes a hole (no disk space); shrinking gives blocks back.
    pub async fn set_len(&self, len: u64) -> FsResult<()> {
        let file = Arc::clone(&self.file);
        let resized = blocking(move || {
            file.set_len(len)?;
            allocated(&file)
        })
        .await;
        match resized {
            Ok(now) => {
                self.measured(now, 0);
                self.len.store(len, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => Err(io_error("resizing a staging file", e)),
        }
    }

    /// Writes `data` at `offset`, growing the file as needed.
    pub async fn write_at(&self, offset: u64, data: Bytes) -> FsResult<()> {
        let end = offset + data.len() as u64;
        let reserve = data.len() as u64 + BLOCK_SLACK;
        self.dir.grow(reserve)?;
        let file = Arc::clone(&self.file);
        let old = self.len();
        let written = blocking(move || {
            let written = file.write_all_at(&data, offset);
            if written.is_err() && end > old {
                // Keep only what the file really held.
                let _ = file.set_len(old);
            }
            Ok((written, allocated(&file)))
        })
        .await;
        let (written, now) = match written {
            Ok(both) => both,
            Err(e) => (Err(e), Ok(self.held.load(Ordering::SeqCst))),
        };
        let held = self.held.load(Ordering::SeqCst);
        self.measured(now.unwrap_or(held), reserve);
        match written {
            Ok(()) => {
                self.len.fetch_max(end, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => Err(io_error("writing a staging file", e)),
        }
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end).
    pub async fn read_at(&self, offset: u64, len: usize) -> FsResult<Bytes> {
        let size = self.len();
        if offset >= size {
            return Ok(Bytes::new());
        }
        let n = (len as u64).min(size - offset) as usize;
        let file = Arc::clone(&self.file);
        let read = blocking(move || {
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        });
        let buf = read
            .await
            .map_err(|e| io_error("reading a staging file", e))?;
        Ok(buf.into())
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        self.dir
            .used
            .fetch_sub(*self.held.get_mut(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limit_gives_enospc_holes_are_free_and_space_comes_back() {
        const K: u64 = 1024;
        let tmp = tempfile::tempdir().unwrap();
        let dir = StagingDir::new(tmp.path(), 40 * K).unwrap();
        let a = dir.create().await.unwrap();
        a.write_at(0, Bytes::from(vec![1; 16 * K as usize]))
            .await
            .unwrap();
        assert_eq!(dir.used(), 16 * K, "what the file holds on disk");
        let b = dir.create().await.unwrap();
        let full = b.write_at(0, Bytes::from(vec![2; 20 * K as usize])).await;
        assert_eq!(full.unwrap_err().errno, libc::ENOSPC);
        assert_eq!((b.len(), dir.used()), (0, 16 * K));
        b.set_len(1 << 30).await.expect("a hole needs no space");
        assert_eq!((b.len(), dir.used()), (1 << 30, 16 * K));
        b.write_at(4 * K, Bytes::from(vec![2; 8 * K as usize]))
            .await
            .unwrap();
        assert_eq!(dir.used(), 24 * K);
        assert_eq!(
            &b.read_at(0, 16 * K as usize).await.unwrap()[..],
            &[&[0u8; 4096][..], &[2; 8192], &[0; 4096]].concat()[..]
        );
        a.set_len(4 * K).await.unwrap();
        assert_eq!(dir.used(), 12 * K);
        drop(b);
        assert_eq!(dir.used(), 4 * K);
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "files are unlinked"
        );
    }

    #[tokio::test]
    async fn a_removed_directory_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("staging");
        let dir = StagingDir::new(&path, 1 << 20).unwrap();
        std::fs::remove_dir(&path).unwrap();
        let f = dir.create().await.expect("recreated");
        f.write_at(0, Bytes::from_static(b"ok")).await.unwrap();
        assert!(path.is_dir());
    }
}
