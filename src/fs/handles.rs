//! Open file handles: the number the kernel holds, the version each reads, its writer.
//!
//! Non-obvious problems:
//! 1. File and directory handles share one number space, so a number names one handle.
//! 2. A release takes its handle out at once, before the rest of it runs, so an unlink that
//!    follows a close does not count the file as still open.
//! 3. After a crash, the kernel may hold numbers the dead daemon gave out after its last saved
//!    state (fs/state.rs, 6.). They are never given out again (numbering goes on far above
//!    them), and a request naming one fails with EIO, as one naming a handle of a file the
//!    dead daemon had open for writing does (its bytes died with it), rather than EBADF,
//!    which would blame the program.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::writers::Writer;
use super::Ino;
use crate::cache::{ObjectId, ReadState};
use crate::error::{FsError, FsResult};

/// The version of an object a handle reads.
#[derive(Debug, Clone, Default)]
pub(super) struct Version {
    /// `None` for a file created by this handle.
    pub(super) object: Option<Arc<ObjectId>>,
    pub(super) size: u64,
}

/// An open file handle (its fields are the filesystem's own).
#[derive(Debug)]
pub struct OpenFile {
    pub(super) ino: Ino,
    /// The version seen at open; followed to a newer one while no byte of it was read (see 8.).
    pub(super) version: Mutex<Version>,
    /// A byte of `version` was returned through this handle.
    pub(super) served: std::sync::atomic::AtomicBool,
    /// A read through this handle was refused (an archived object): later refusals are not
    /// logged again (the kernel retries a failed read-ahead as a plain read).
    pub(super) refused: std::sync::atomic::AtomicBool,
    pub(super) state: Mutex<ReadState>,
    /// Set for handles opened for writing.
    pub(super) writer: Option<Arc<Writer>>,
    /// The process that opened it (0: unknown, every close commits).
    pub(super) opener: u32,
}

impl Version {
    /// True when `other` is the very version this one names.
    pub(super) fn same_as(&self, other: &Version) -> bool {
        self.object == other.object && self.size == other.size
    }
}

impl OpenFile {
    /// A handle of `ino` that reads `version` (a writer's handle reads through its writer).
    pub(super) fn new(
        ino: Ino,
        version: Version,
        writer: Option<Arc<Writer>>,
        opener: u32,
    ) -> Self {
        Self {
            ino,
            version: Mutex::new(version),
            served: Default::default(),
            refused: Default::default(),
            state: Mutex::default(),
            writer,
            opener,
        }
    }
}

/// The open files, by handle number.
#[derive(Debug)]
pub(super) struct Handles {
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    /// Numbers a crashed predecessor may have given out unrecorded (see 3.), as ranges.
    lost: Mutex<Vec<(u64, u64)>>,
}

/// How many numbers a daemon resumed after a crash skips (see 3.): more than any daemon
/// opens between two saves of its state.
const CRASH_GAP: u64 = 1 << 32;

impl Default for Handles {
    fn default() -> Self {
        Self {
            files: Mutex::default(),
            next_fh: AtomicU64::new(1),
            lost: Mutex::default(),
        }
    }
}

impl Handles {
    /// A handle number never given out before (see 1.).
    pub(super) fn next(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens `file`; returns its handle number.
    pub(super) fn add(&self, file: OpenFile) -> u64 {
        let fh = self.next();
        self.files.lock().insert(fh, Arc::new(file));
        fh
    }

    pub(super) fn get(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| self.unknown(fh, "file"))
    }

    /// The error for a handle number nobody holds (see 3.).
    pub(super) fn unknown(&self, fh: u64, what: &str) -> FsError {
        if self
            .lost
            .lock()
            .iter()
            .any(|&(from, to)| (from..to).contains(&fh))
        {
            FsError::new(
                libc::EIO,
                format!(
                    "{what} open when the daemon was killed: what it had not committed is lost"
                ),
            )
        } else {
            FsError::new(libc::EBADF, format!("unknown {what} handle"))
        }
    }

    /// The writer of handle `fh`; EBADF for a handle not open for writing.
    pub(super) fn writer(&self, fh: u64) -> FsResult<Arc<Writer>> {
        self.get(fh)?
            .writer
            .clone()
            .ok_or_else(|| FsError::new(libc::EBADF, "not open for writing"))
    }

    /// Takes handle `fh` out of the open files (see 2.).
    pub(super) fn take(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().remove(&fh)
    }

    /// Handles of `ino` reading version `from` read `to` from now on: the same bytes under
    /// another key (a copy set aside for them, namespace.rs 4.).
    pub(super) fn repoint(&self, ino: Ino, from: &ObjectId, to: Arc<ObjectId>) {
        for file in self.files.lock().values().filter(|f| f.ino == ino) {
            let mut version = file.version.lock();
            if version.object.as_deref() == Some(from) {
                version.object = Some(Arc::clone(&to));
            }
        }
    }

    /// Every open file with its number, and the next number to give out (fs/state.rs).
    pub(super) fn all(&self) -> (Vec<(u64, Arc<OpenFile>)>, u64) {
        let files = self.files.lock();
        let all = files.iter().map(|(fh, f)| (*fh, Arc::clone(f))).collect();
        (all, self.next_fh.load(Ordering::SeqCst))
    }

    /// How many files are open, and the next number to give out (no copy of the table).
    pub(super) fn counts(&self) -> (usize, u64) {
        let files = self.files.lock();
        (files.len(), self.next_fh.load(Ordering::SeqCst))
    }

    /// Opens `file` under the number a predecessor gave it; numbers from `next` up stay new.
    pub(super) fn restore(&self, fh: u64, file: OpenFile, next: u64) {
        self.next_fh.fetch_max(next.max(fh + 1), Ordering::SeqCst);
        self.files.lock().insert(fh, Arc::new(file));
    }

    /// Goes on with a predecessor's numbering: `next` and up are new, `lost` are ranges it
    /// may have given out unrecorded (see 3.).
    pub(super) fn continue_from(&self, next: u64, lost: Vec<(u64, u64)>) {
        self.next_fh.fetch_max(next, Ordering::SeqCst);
        self.lost.lock().extend(lost);
    }

    /// After a crash: the numbers from the last saved one on may be held by the kernel
    /// without a record; they are skipped and answered with EIO (see 3.).
    pub(super) fn skip_unrecorded(&self) {
        let from = self.next_fh.fetch_add(CRASH_GAP, Ordering::SeqCst);
        self.lost
            .lock()
            .push((from, from.saturating_add(CRASH_GAP)));
    }

    /// After a crash: handle `fh` of a lost writer fails with EIO from now on (see 3.).
    pub(super) fn lose(&self, fh: u64) {
        self.files.lock().remove(&fh);
        self.lost.lock().push((fh, fh.saturating_add(1)));
    }

    /// The ranges `skip_unrecorded` and `lose` left, for a successor.
    pub(super) fn lost(&self) -> Vec<(u64, u64)> {
        self.lost.lock().clone()
    }

    /// True while a handle (reader or writer) of `ino` is open.
    pub(super) fn is_open(&self, ino: Ino) -> bool {
        self.files.lock().values().any(|f| f.ino == ino)
    }
}
