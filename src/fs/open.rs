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

use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Fs, Ino, Kind, OpenFile, OpenMode, Version};
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
    /// Opens file `ino`; a handle opened for writing shares the file's writer.
    pub async fn open(&self, ino: Ino, mode: OpenMode) -> FsResult<u64> {
        self.open_file(ino, mode).await.map(|opened| opened.fh)
    }

    /// Opens file `ino`, saying whether the kernel may keep its pages and, for a read-only
    /// open with passthrough on, the local file holding the whole object.
    pub async fn open_file(&self, ino: Ino, mode: OpenMode) -> FsResult<Opened> {
        if mode.write {
            self.check_changes_allowed()?;
        }
        let writer = self.writer_of(ino);
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
        let file = OpenFile {
            ino,
            version: Mutex::new(Version { object, size }),
            served: Default::default(),
            refused: Default::default(),
            state: Mutex::default(),
            writer,
            opener: mode.opener,
        };
        Ok(Opened {
            fh: self.add_handle(file),
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

    pub(super) fn add_handle(&self, file: OpenFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().insert(fh, Arc::new(file));
        fh
    }
}
