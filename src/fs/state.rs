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
//! 6. For a crash (daemon/fdstore.rs) the state is taken without waiting (`snapshot_now`),
//!    every few hundred milliseconds when it changed: files open for writing are handed over
//!    as lost (their bytes lived in the dead process), and the multipart uploads under way are
//!    listed for the successor to abort.
//! 7. That state is a little behind the crash: a file open for writing when it was saved may
//!    have been committed and closed since, or its handle may be one the state never recorded.
//!    So a crashed writer stands for nothing in the successor (writers/state.rs, `import`):
//!    the file is what the bucket holds, and the writer's recorded handles answer EIO like
//!    the unrecorded ones (handles.rs, 3.).

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
use crate::upload::PendingAbort;

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
    /// Handle numbers a crashed daemon may have given out unrecorded (handles.rs, 3.).
    #[serde(default)]
    lost_fh: Vec<(u64, u64)>,
    files: Vec<FileState>,
    /// Open directory handles and their inodes.
    dirs: Vec<(u64, Ino)>,
    writers: Vec<WriterState>,
    deferred: Vec<(Ino, Pending, Attr)>,
}

impl FsState {
    /// A state with nothing in it: what a daemon serves when its predecessor's is unreadable.
    pub fn empty() -> Self {
        Self {
            inodes: Vec::new(),
            next_fh: 1,
            lost_fh: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
            writers: Vec::new(),
            deferred: Vec::new(),
        }
    }

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
        Ok(self.state_with(writers))
    }

    /// This mount's state as a daemon started after a crash of this one finds it (see 6.):
    /// files open for writing lost. Never waits for a writer.
    pub fn snapshot_now(&self) -> FsState {
        self.state_with(self.writers.export_lost())
    }

    /// A number that changes when the state `snapshot_now` gives does (inode numbers, handles,
    /// writers, directory changes, multipart uploads begun or ended); lookup counts alone do
    /// not change it.
    pub fn fingerprint(&self) -> u64 {
        let (inodes, seq) = {
            let t = self.tables.lock();
            (t.meta.inode_count() as u64, t.meta.change_seq())
        };
        let (open, next_fh) = self.handles.counts();
        let parts = [
            inodes,
            seq,
            open as u64,
            next_fh,
            self.dirs.lock().len() as u64,
            self.deferred.len() as u64,
            // Multipart uploads begin without any other change (the first part filled).
            self.multipart_uploads()
                .iter()
                .fold(0, |h, u| h ^ super::inode::path_hash(&u.upload_id)),
        ];
        parts.iter().fold(0u64, |h, p| {
            h.rotate_left(13) ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        })
    }

    /// After importing a crashed daemon's state: handle numbers it may have given out after
    /// its last save are never reused, and answer EIO (handles.rs, 3.).
    pub fn skip_unrecorded_handles(&self) {
        self.handles.skip_unrecorded();
    }

    /// The multipart uploads under way (a daemon started after a crash aborts them).
    pub fn multipart_uploads(&self) -> Vec<PendingAbort> {
        self.writers.multipart_uploads()
    }

    /// Aborts, in the background, the multipart uploads a crashed predecessor left.
    pub fn abort_uploads(&self, uploads: Vec<PendingAbort>) {
        for pending in uploads {
            let store = Arc::clone(&self.store);
            self.tasks()
                .spawn(crate::upload::abort_with_retries(store, pending));
        }
    }

    fn state_with(&self, writers: Vec<WriterState>) -> FsState {
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
        FsState {
            inodes,
            next_fh,
            lost_fh: self.handles.lost(),
            files,
            dirs,
            writers,
            deferred: self.deferred.entries(),
        }
    }

    /// Takes over a predecessor's state; `fds` are the descriptors it passed, by index.
    pub async fn import(self: &Arc<Self>, state: FsState, fds: Vec<OwnedFd>) -> FsResult<()> {
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        self.tables.lock().meta.restore_inodes(state.inodes);
        self.handles.continue_from(state.next_fh, state.lost_fh);
        let crashed = self.writers.import(state.writers, &mut fds)?;
        for f in state.files {
            if f.writer && crashed.iter().any(|c| c.ino == f.ino) {
                // A crashed writer's handle (see 7.): EIO from now on, if the kernel holds it.
                self.handles.lose(f.fh);
                continue;
            }
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
        for c in crashed {
            if c.unlinked && !self.handles.is_open(c.ino) {
                self.tables.lock().meta.orphan_closed(c.ino);
            }
        }
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
