//! Opening files: the handle, and what the kernel may keep or read on its own.
//!
//! Non-obvious problems:
//! 1. The kernel drops a file's cached pages at every open unless told to keep them
//!    (FOPEN_KEEP_CACHE). They are kept when the file is opened at the same ETag as the last
//!    open here and no writer of this mount holds it: the pages can only hold that version (an
//!    S3 event or a new size drops them in between). A second `cat` then costs no FUSE read.
//! 2. A read-only open of an object that is whole in the disk cache gets that file for the
//!    kernel to read directly (FUSE passthrough, when `fuse.rs` enabled it). An object of at
//!    most one block is fetched whole at open for that: its first read would GET the same
//!    block, so the open costs what the read would have. An O_DIRECT open does not pass
//!    through (see `fuse/passthrough.rs`), so it skips this: checking a 2 GiB file whole
//!    costs a second of CPU.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::names::check_name;
use super::{Attr, Fs, Ino, Kind, OpenFile, OpenMode, Version, Writer};
use crate::cache::ObjectId;
use crate::error::{FsError, FsResult};

/// Versions remembered for FOPEN_KEEP_CACHE: a file not opened among the last this many is
/// read again from the daemon at its next open, which costs no request when cached.
pub(super) const VERSIONS_KEPT: NonZeroUsize = match NonZeroUsize::new(1 << 16) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// An open file, and what the kernel may do with it.
#[derive(Debug)]
pub struct Opened {
    /// The handle.
    pub fh: u64,
    /// The kernel's cached pages of the file are of this version: keep them.
    pub keep_cache: bool,
    /// The ETag opened (None: a file being written with no object yet).
    pub etag: Option<String>,
    /// The whole object in a local file, for the kernel to read directly (passthrough).
    pub whole: Option<std::fs::File>,
}

impl Fs {
    /// Opens file `ino`, saying whether the kernel may keep its pages and, for a read-only
    /// open with passthrough on, the local file holding the whole object.
    pub async fn open_file(&self, ino: Ino, mode: OpenMode) -> FsResult<Opened> {
        if mode.write {
            self.check_changes_allowed()?;
        }
        let writer = self.writers.of(ino);
        let (object, size) = match (&writer, self.node(ino).await) {
            (_, Ok((Kind::File, Some(meta)))) => (
                Some(Arc::new(ObjectId {
                    key: meta.key,
                    etag: meta.etag,
                })),
                meta.size,
            ),
            (Some(_), _) => (None, 0),
            (None, Ok((Kind::Symlink, _))) => {
                return Err(FsError::new(libc::ELOOP, "is a symlink"))
            }
            (None, Ok(_)) => return Err(FsError::new(libc::EISDIR, "is a directory")),
            (None, Err(e)) => return Err(e),
        };
        let unchanged_here = writer.is_none() && !mode.write;
        let keep_cache = match (&object, unchanged_here) {
            (Some(object), true) => {
                let mut opened = self.opened.lock();
                let same = opened.get(&ino).is_some_and(|etag| *etag == object.etag);
                opened.put(ino, object.etag.clone());
                same
            }
            _ => {
                self.opened.lock().pop(&ino);
                false
            }
        };
        let whole = match &object {
            // An O_DIRECT open never passes through: no need to check the file whole.
            Some(object)
                if unchanged_here && !mode.direct && self.passthrough.load(Ordering::Relaxed) =>
            {
                self.cache.whole_file(object, size, true).await
            }
            _ => None,
        };
        let writer = if mode.write {
            Some(self.attach_writer(ino, mode).await?)
        } else {
            None
        };
        let etag = object.as_ref().map(|o| o.etag.clone());
        let file = OpenFile::new(ino, Version { object, size }, writer, mode.opener);
        Ok(Opened {
            fh: self.handles.add(file),
            keep_cache,
            etag,
            whole,
        })
    }

    /// Lets read-only opens of whole cached objects hand their file to the kernel; set by the
    /// FUSE layer when the kernel accepted passthrough.
    pub fn enable_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    /// True when whole files cached on disk may be handed to the kernel (passthrough).
    pub fn may_pass_through(&self) -> bool {
        self.cache.may_pass_through()
    }

    /// Creates `name` in `parent` and opens it for writing by process `opener`; nothing
    /// reaches the store before the first commit.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        owner: (u32, u32),
        excl: bool,
        open: OpenMode,
    ) -> FsResult<(Attr, u64)> {
        let path = self.new_path(parent, name)?;
        let writer = self.writers.create(&path, mode, owner, excl).await?;
        self.attrs.dir_changed(parent);
        // The kernel holds the new entry from now on.
        self.tables.lock().meta.looked_up(&path);
        let attr = self.writers.attr(&writer);
        let file = OpenFile::new(attr.ino, Version::default(), Some(writer), open.opener);
        Ok((attr, self.handles.add(file)))
    }

    /// The writer of `ino` for a new write handle: the existing one, or a new one over the
    /// committed object.
    pub(super) async fn attach_writer(&self, ino: Ino, mode: OpenMode) -> FsResult<Arc<Writer>> {
        if let Some(writer) = self.writers.share(ino, mode.truncate).await? {
            return Ok(writer);
        }
        let path = self.path_of(ino)?;
        let meta = match self.node(ino).await? {
            (Kind::File, Some(meta)) => meta,
            (Kind::Dir, _) => return Err(FsError::new(libc::EISDIR, "is a directory")),
            _ => return Err(FsError::new(libc::EINVAL, "not a regular file")),
        };
        // Kept content may be committed by a copy with new headers (a chmod or utime of the
        // open file), which must send the object's others again: known from a HEAD only.
        let meta = if mode.truncate {
            meta
        } else {
            let key = meta.key.clone();
            self.copier
                .with_headers(&key, Some(meta))
                .await?
                .ok_or_else(FsError::not_found)?
        };
        self.writers.attach(ino, &path, meta, mode.truncate).await
    }

    /// Before the object of open file `ino` is deleted: its bytes are kept for its handles
    /// (writers/mod.rs, 10.).
    pub(super) async fn keep_for_handles(&self, ino: Ino) -> FsResult<()> {
        let mode = OpenMode {
            write: true,
            ..OpenMode::default()
        };
        let writer = self.attach_writer(ino, mode).await?;
        self.writers.keep(writer).await
    }

    /// At shutdown: refuses new changes (EROFS), then commits every file still open for
    /// writing, all at once; one that fails is aborted. Returns how many failed.
    pub async fn stop(&self) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        self.writers.commit_all().await
    }

    /// Closes handle `fh`. The last handle of a writer commits what no flush committed (a
    /// write through a shared mapping, a new file left empty) or, after a failure, leaves the
    /// abort running.
    pub async fn release(&self, fh: u64) {
        if let Some(file) = self.take_handle(fh) {
            self.writers.released(file).await;
        }
    }

    /// Takes handle `fh` out of the open files at once (before the rest of its release runs),
    /// so an unlink that follows a close does not count it as still open.
    pub fn take_handle(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.handles.take(fh)
    }

    /// EROFS on a read-only mount, and once the daemon is stopping.
    pub(super) fn check_changes_allowed(&self) -> FsResult<()> {
        if self.config.read_only {
            return Err(FsError::read_only());
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(FsError::new(
                libc::EROFS,
                "bucketfs is stopping: no new changes",
            ));
        }
        Ok(())
    }

    /// The path of a new entry `name` in `parent`, when it can be one.
    pub(super) fn new_path(&self, parent: Ino, name: &str) -> FsResult<String> {
        self.check_changes_allowed()?;
        check_name(name)?;
        let path = super::join(&self.path_of(parent)?, name);
        // A directory's marker is one byte longer than its name's key.
        self.names.check_key_length(&path, 1)?;
        Ok(path)
    }
}
