//! Files open for writing, as a successor process takes them over (fs/state.rs): each
//! writer's fields and content. A stream passes its multipart upload (id, parts sent, bytes
//! not yet sent), a staging file its descriptor; nothing is committed for the handover.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::{Content, WriteState, Writer, Writers};
use crate::error::{FsError, FsResult};
use crate::fs::posix::Posix;
use crate::fs::Ino;
use crate::store::{ObjectMeta, UserMetadata};
use crate::upload::{Upload, UploadState};

/// What a writer holds, as handed over.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum ContentState {
    Base(Option<ObjectMeta>),
    Stream(UploadState),
    /// The staging file: its index among the descriptors passed, and its length.
    Staged {
        fd: usize,
        len: u64,
    },
    Lost,
}

/// One file open for writing, as handed over.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct WriterState {
    ino: Ino,
    path: String,
    size: u64,
    posix: Posix,
    handles: usize,
    modified: SystemTime,
    extra: UserMetadata,
    unlinked: bool,
    held: bool,
    headers_changed: bool,
    unlinked_during_commit: bool,
    content: ContentState,
    stored: Option<(String, String)>,
    dirty: bool,
    excl: bool,
    /// errno and message of the failure every later write and commit reports.
    failed: Option<(i32, String)>,
    content_type: Option<String>,
    unpublished: bool,
    reported: bool,
    /// Taken for a crash (`export_lost`): the successor does not register it (see `import`).
    #[serde(default)]
    crashed: bool,
}

/// A writer of a crashed predecessor, as `Writers::import` leaves it to its handles.
#[derive(Debug, Clone, Copy)]
pub(in crate::fs) struct Crashed {
    pub(in crate::fs) ino: Ino,
    /// Its file was unlinked while open: the inode number was pinned for it.
    pub(in crate::fs) unlinked: bool,
}

/// `w` as handed over, with `content`; `st` is its state when its lock was taken.
fn state_of(w: &Writer, content: ContentState, st: Option<&WriteState>) -> WriterState {
    WriterState {
        ino: w.ino,
        path: w.path(),
        size: w.size.load(Ordering::SeqCst),
        posix: *w.posix.lock(),
        handles: w.handles.load(Ordering::SeqCst),
        modified: *w.modified.lock(),
        extra: w.extra.lock().clone(),
        unlinked: w.unlinked.load(Ordering::SeqCst),
        held: w.held.load(Ordering::SeqCst),
        headers_changed: w.headers_changed.load(Ordering::SeqCst),
        unlinked_during_commit: w.unlinked_during_commit.load(Ordering::SeqCst),
        content,
        stored: st.and_then(|st| st.stored.clone()),
        dirty: st.is_some_and(|st| st.dirty),
        excl: st.is_some_and(|st| st.excl),
        failed: st
            .and_then(|st| st.failed.as_ref())
            .map(|e| (e.errno, e.message.clone())),
        content_type: st.and_then(|st| st.content_type.clone()),
        unpublished: st.is_some_and(|st| st.unpublished),
        reported: st.is_some_and(|st| st.reported),
        crashed: false,
    }
}

fn handover_error(what: &str, e: impl std::fmt::Display) -> FsError {
    FsError::new(libc::EIO, format!("handover: {what}: {e}"))
}

impl Writers {
    /// Every writer's state; staging files' descriptors are appended to `fds`. Waits for
    /// each stream's parts in flight; changes nothing.
    pub(in crate::fs) async fn export(&self, fds: &mut Vec<OwnedFd>) -> FsResult<Vec<WriterState>> {
        let writers = self.tables.lock().writers.all();
        let mut states = Vec::with_capacity(writers.len());
        for w in writers {
            let mut st = w.state.lock().await;
            let content = match &mut st.content {
                Content::Base(meta) => ContentState::Base(meta.clone()),
                Content::Stream(upload) => ContentState::Stream(upload.pause().await),
                Content::Staged(file) => {
                    let fd = file
                        .duplicate()
                        .map_err(|e| handover_error("staging file", e))?;
                    fds.push(fd);
                    ContentState::Staged {
                        fd: fds.len() - 1,
                        len: file.len(),
                    }
                }
                Content::Lost => ContentState::Lost,
            };
            states.push(state_of(&w, content, Some(&st)));
        }
        Ok(states)
    }

    /// Every writer as a daemon started after a crash of this one finds it: its bytes lost
    /// (they live in this process), so its next write or commit fails with EIO and nothing is
    /// published under its name. Never waits: taken while requests run, and so possibly a
    /// little behind the crash (see `import`).
    pub(in crate::fs) fn export_lost(&self) -> Vec<WriterState> {
        let writers = self.tables.lock().writers.all();
        writers
            .into_iter()
            .map(|w| {
                let st = w.state.try_lock().ok();
                WriterState {
                    headers_changed: false,
                    unlinked_during_commit: false,
                    dirty: false,
                    excl: false,
                    failed: Some((
                        libc::EIO,
                        "the daemon was killed before this file was committed: what was written since its last commit is lost".into(),
                    )),
                    content_type: None,
                    unpublished: false,
                    reported: true,
                    crashed: true,
                    ..state_of(&w, ContentState::Lost, st.as_deref())
                }
            })
            .collect()
    }

    /// The multipart uploads under way, for a successor to abort after a crash.
    pub(in crate::fs) fn multipart_uploads(&self) -> Vec<crate::upload::PendingAbort> {
        self.uploads.multipart_uploads()
    }

    /// Registers the writers a predecessor handed over; `fds` holds the descriptors their
    /// staging files refer to (taken by index).
    ///
    /// A crashed predecessor's writers are not registered, only returned: its state was saved
    /// a little before it died, and a file written then may have been committed and closed
    /// since (or never had its handle recorded). Registered, such a writer would stand for
    /// the file until the remount, with a stale size or as a name no object has. Instead the
    /// file is what the bucket holds, and only the writer's own handles fail (fs/state.rs).
    pub(in crate::fs) fn import(
        &self,
        states: Vec<WriterState>,
        fds: &mut [Option<OwnedFd>],
    ) -> FsResult<Vec<Crashed>> {
        let mut crashed = Vec::new();
        for s in states {
            if s.crashed {
                crashed.push(Crashed {
                    ino: s.ino,
                    unlinked: s.unlinked || s.held,
                });
                continue;
            }
            let content = match s.content {
                ContentState::Base(meta) => Content::Base(meta),
                ContentState::Stream(upload) => {
                    let upload = Upload::resume(
                        upload,
                        Arc::clone(&self.store),
                        self.writes.tuning.clone(),
                        self.writes.budget.clone(),
                        self.writes.tasks.clone(),
                    )
                    .map_err(|e| handover_error("upload", e))?;
                    Content::Stream(upload.tracked(&self.uploads))
                }
                ContentState::Staged { fd, len } => {
                    let fd = fds
                        .get_mut(fd)
                        .and_then(Option::take)
                        .ok_or_else(|| handover_error("staging file", "descriptor missing"))?;
                    Content::Staged(self.writes.staging.adopt(std::fs::File::from(fd), len))
                }
                ContentState::Lost => Content::Lost,
            };
            let writer = Arc::new(Writer {
                ino: s.ino,
                path: Mutex::new(s.path),
                state: tokio::sync::Mutex::new(WriteState {
                    content,
                    stored: s.stored,
                    dirty: s.dirty,
                    excl: s.excl,
                    failed: s
                        .failed
                        .map(|(errno, message)| FsError::new(errno, message)),
                    content_type: s.content_type,
                    unpublished: s.unpublished,
                    reported: s.reported,
                }),
                size: AtomicU64::new(s.size),
                posix: Mutex::new(s.posix),
                handles: AtomicUsize::new(s.handles),
                modified: Mutex::new(s.modified),
                transferring: AtomicBool::new(false),
                extra: Mutex::new(s.extra),
                unlinked: AtomicBool::new(s.unlinked),
                held: AtomicBool::new(s.held),
                headers_changed: AtomicBool::new(s.headers_changed),
                committing: AtomicBool::new(false),
                unlinked_during_commit: AtomicBool::new(s.unlinked_during_commit),
            });
            self.tables.lock().writers.insert(writer);
        }
        Ok(crashed)
    }
}
