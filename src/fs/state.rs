//! The filesystem's state as plain data, for a successor process that takes the mount over
//! (daemon/takeover.rs moves it; this module only says what it is).
//!
//! Non-obvious problems:
//! 1. The kernel holds inode numbers, file handles and directory handles: the successor must
//!    answer for exactly those. Inode numbers come with their paths and lookup counts, handles
//!    with the version (key and ETag) each reads, so a reader goes on reading the same bytes.
//! 2. What is known of objects (attributes, listings) is not passed: the successor asks again,
//!    as after a TTL expiry. Open directories are listed again and read from where readdir
//!    stopped, like a rewound handle (dir.rs, 5.).
//! 3. Files open for writing pass whole (writers/state.rs): nothing is committed early, and
//!    staging files travel as descriptors (`fds`, by index).
//! 4. Deletes owed at a last close pass too; the successor does not settle the record on disk
//!    at start, since the handles it names are still open.
//! 5. Export changes nothing: a successor that refuses leaves this process serving as before.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::deferred::Pending;
use super::dir::DirHandle;
use super::handles::{OpenFile, Version};
use super::inode::InodeEntry;
use super::writers::WriterState;
use super::{Attr, Fs, Ino};
use crate::cache::ObjectId;
use crate::error::FsResult;

/// One open file handle, as handed over.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FileState {
    fh: u64,
    ino: Ino,
    /// Key and ETag of the version it reads (none: a file this handle created).
    object: Option<(String, String)>,
    size: u64,
    served: bool,
    opener: u32,
    /// Opened for writing: it shares its inode's writer.
    writer: bool,
}

/// Everything a successor needs to answer the kernel for this mount (see the module's 1.).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct FsState {
    inodes: Vec<InodeEntry>,
    next_fh: u64,
    files: Vec<FileState>,
    /// Open directory handles and their inodes.
    dirs: Vec<(u64, Ino)>,
    writers: Vec<WriterState>,
    deferred: Vec<(Ino, Pending, Attr)>,
}

impl FsState {
    /// Open file and directory handles.
    pub fn handles(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    /// Files open for writing.
    pub fn writers(&self) -> usize {
        self.writers.len()
    }
}

impl Fs {
    /// This mount's state; descriptors it refers to (staging files) are appended to `fds`.
    /// Call it with no request under way (fuse/handover.rs): it waits only for uploads'
    /// parts in flight.
    pub async fn export(&self, fds: &mut Vec<OwnedFd>) -> FsResult<FsState> {
        let writers = self.writers.export(fds).await?;
        let inodes = self.tables.lock().meta.inode_entries();
        let (open, next_fh) = self.handles.all();
        let files = open
            .into_iter()
            .map(|(fh, f)| {
                let version = f.version.lock().clone();
                FileState {
                    fh,
                    ino: f.ino,
                    object: version.object.map(|o| (o.key.clone(), o.etag.clone())),
                    size: version.size,
                    served: f.served.load(Ordering::SeqCst),
                    opener: f.opener,
                    writer: f.writer.is_some(),
                }
            })
            .collect();
        let dirs = self
            .dirs
            .lock()
            .iter()
            .map(|(fh, handle)| (*fh, handle.ino()))
            .collect();
        Ok(FsState {
            inodes,
            next_fh,
            files,
            dirs,
            writers,
            deferred: self.deferred.entries(),
        })
    }

    /// Takes over a predecessor's state; `fds` are the descriptors it passed, by index.
    pub async fn import(self: &Arc<Self>, state: FsState, fds: Vec<OwnedFd>) -> FsResult<()> {
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        self.tables.lock().meta.restore_inodes(state.inodes);
        self.writers.import(state.writers, &mut fds)?;
        for f in state.files {
            let writer = if f.writer {
                self.writers.of(f.ino)
            } else {
                None
            };
            let version = Version {
                object: f.object.map(|(key, etag)| Arc::new(ObjectId { key, etag })),
                size: f.size,
            };
            let file = OpenFile::new(f.ino, version, writer, f.opener);
            file.served.store(f.served, Ordering::SeqCst);
            self.handles.restore(f.fh, file, state.next_fh);
        }
        self.deferred.restore(state.deferred);
        let listings = state.dirs.into_iter().map(|(fh, ino)| async move {
            if let Err(e) = self.relist(ino, fh).await {
                let failed = Arc::new(DirHandle::new(ino, Arc::default(), Some(Err(e))));
                self.dirs.lock().insert(fh, failed);
            }
        });
        futures::future::join_all(listings).await;
        Ok(())
    }
}
