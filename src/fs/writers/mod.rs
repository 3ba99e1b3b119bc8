//! Files open for writing: `Writers` owns the registry (one `Writer` per inode, shared by every
//! handle on it) and the writer state machine (stage, stream, commit, settle, keep after an
//! unlink, move). Namespace operations call its methods; only this module reads a writer's
//! fields. `content.rs` holds the bytes (write, read, truncate, stage); `commit.rs` sends them
//! (commit, settle, rename).
//!
//! Non-obvious problems:
//! 1. Content known to start empty (a new file, O_TRUNC) streams: parts are uploaded while the
//!    application writes. Anything else (a write into existing bytes, append, O_RDWR reads,
//!    truncate to a non-zero size) first copies the object into a staging file, and the whole
//!    file is uploaded at the commit point.
//! 2. A stream cannot go back: its parts are on the server, out of reach until completed.
//!    While nothing has left the buffer the stream quietly becomes a staging file; after that,
//!    a write behind the stream, a read of it through its own handle or a resize commits what
//!    was streamed (as an fsync would), copies it into a staging file and goes on there.
//! 3. Commit points are flush (every `close()`) and fsync; only handles opened for writing
//!    commit, so a reader closing the file never publishes half of someone's write.
//! 4. The first commit of an O_EXCL file sends `If-None-Match: *`: a file created elsewhere in
//!    the meantime makes close() fail with EEXIST instead of being overwritten.
//! 5. A failed stream is aborted in the background until the server answers again: no partial
//!    object appears under the name and no multipart upload is left behind.
//! 6. Opens of one file share one writer: the tables lock covers "is there a writer?" and the
//!    handle count, so a second open never replaces the first's writer, and the last release
//!    unregisters only a writer nobody reattached to meanwhile.
//! 7. A file this mount created is published at the first commit after a write, or at its last
//!    release if it stays empty: a shell redirect (open, dup2, close, write, close) costs one
//!    PUT and never shows an empty object first.
//! 8. A failed staging step (disk full, staging directory removed) leaves the content as it
//!    was: the failing write returns the errno, and nothing written before is lost.
//! 9. Which close commits is decided here from the caller's process id: only the opener's.
//! 10. A file unlinked while open stays readable and writable through its handles until the
//!     last close, as POSIX wants: before the object is deleted its bytes are copied into a
//!     staging file (a download, unless already staged), which every handle of the inode reads
//!     and writes; nothing is committed any more, and the staging file goes with the last close.
//! 11. A rename of a file open for writing never publishes it early. With nothing under way,
//!     its committed version (if any) is copied to the new key now, holding the writer, so a
//!     write that comes in meanwhile waits and streams to the new key. While a commit or a write
//!     holds the writer, only the name moves: that commit lands where it began, then is
//!     copied to the new key, and the version under the old name is deleted if it is still
//!     ours (ETag), never a file someone made under that name since.
//! 12. chmod, chown, utime and setxattr of an open file never wait for its transfer: they
//!     change the pending headers and flag them; a commit under way applies them as it
//!     settles, and the last release commits once more if one came in after it looked.
//! 13. Neither does an unlink while a handle's commit (a close, an fsync) runs: the name goes
//!     at once and nothing is committed after; the commit under way lands (or fails), and its
//!     end defers the delete of what is stored under the name to the last close, as for a
//!     reader's file (deferred.rs): the handles read that version meanwhile, without a
//!     download. The tables lock orders the unlink against the commit's start, its end and
//!     the recording of what it stored.
//!
//! Transitions of a writer's content (`Content`), each in one place:
//! - open: `Base` (the committed object, or none) for a kept file; `Stream` for a new or
//!   O_TRUNC one (`create`, `attach`);
//! - write at the end of a `Base` that is empty, or of a `Stream`: `Stream` (content.rs);
//! - any other write, a read through its own handle, a resize: `Staged` (`unstream`, `stage`);
//! - commit: `Stream`/`Base` become `Base` of what landed; `Staged` stays (commit.rs);
//! - a stream that fails: `Lost`, its error kept for every later write and commit.
//!
//! Invariants:
//! - the registry and each writer's handle count change only under the tables lock;
//! - a writer's state lock is the only lock held across a transfer, and nothing waits for it
//!   while holding the tables lock;
//! - a writer's name, headers and flags (`unlinked`, `committing`, `headers_changed`) are
//!   outside the state lock, so renames, chmods and unlinks never wait for a transfer.

mod commit;
mod content;
mod state;

pub use state::WriterState;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use super::activity::{Failure, Failures, PendingFile, UploadActivity};
use super::attrs::Attrs;
use super::copy::Copier;
use super::deferred::Deferred;
use super::handles::{Handles, OpenFile};
use super::names::Names;
use super::posix::{Posix, S_IFREG};
use super::{Attr, Ino, Kind, Tables, Writes};
use crate::cache::BlockCache;
use crate::error::{FsError, FsResult};
use crate::store::{ObjectMeta, ObjectStore, StoreError, StoreErrorKind, UserMetadata};
use crate::upload::staging::StagingFile;
use crate::upload::Upload;

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// Write access was asked for.
    pub write: bool,
    /// O_TRUNC: the content starts empty.
    pub truncate: bool,
    /// The opening process (0: unknown, every close commits).
    pub opener: u32,
    /// O_DIRECT: never read by passthrough (see `fuse/passthrough.rs`).
    pub direct: bool,
}

/// What a writer holds.
#[derive(Debug)]
enum Content {
    /// The committed object, unchanged since (`None`: there is no object yet).
    Base(Option<ObjectMeta>),
    /// New content, streaming to the store.
    Stream(Upload),
    /// A local copy being changed in place.
    Staged(StagingFile),
    /// A stream failed: its bytes are gone; the error is in `failed`.
    Lost,
}

#[derive(Debug)]
pub(super) struct WriteState {
    content: Content,
    /// Where the last committed version is stored, and its ETag (`None`: nowhere yet). A
    /// commit after a rename lands at the new key and removes this one (see 11.).
    stored: Option<(String, String)>,
    /// Content or attributes changed since the last commit.
    pub(super) dirty: bool,
    /// Send `If-None-Match: *` with the next commit (O_EXCL, nothing committed yet).
    excl: bool,
    /// Why the content was lost, reported by every later write and commit.
    pub(super) failed: Option<FsError>,
    /// Content-Type of the existing object, kept on overwrite (`None`: from the name).
    content_type: Option<String>,
    /// Created by this mount and never committed: the last release publishes it even empty.
    unpublished: bool,
    /// The current failure was recorded for `bucketfs status`.
    reported: bool,
}

/// One file open for writing.
#[derive(Debug)]
pub(super) struct Writer {
    ino: Ino,
    pub(super) path: Mutex<String>,
    pub(super) state: tokio::sync::Mutex<WriteState>,
    pub(super) size: AtomicU64,
    /// Mode, owner and an mtime set explicitly since the last write (`None`: commit time).
    pub(super) posix: Mutex<Posix>,
    /// Open handles; changed only under the tables lock (see 6.).
    handles: AtomicUsize,
    modified: Mutex<SystemTime>,
    /// A commit, or a streaming write, is moving bytes to the store: readers on other handles
    /// read their own version meanwhile instead of waiting behind the upload.
    transferring: AtomicBool,
    /// Headers of the object other than mode, owner and times (kept on overwrite; xattrs).
    /// Outside the state lock: getxattr reads them without waiting for a transfer, and every
    /// write(2) makes the kernel ask for `security.capability`.
    extra: Mutex<UserMetadata>,
    /// The name was unlinked: nothing is committed any more (see 10.).
    pub(super) unlinked: AtomicBool,
    /// The unlink holds one handle until the last handle of the inode, reader or writer, is
    /// closed: the staged bytes live that long.
    pub(super) held: AtomicBool,
    /// Mode, owner, times or other headers changed since the last commit began: the next
    /// commit writes them (set without the state lock, so a chmod never waits for a transfer).
    headers_changed: AtomicBool,
    /// A commit holds the state lock; changed under the tables lock (see 13.).
    committing: AtomicBool,
    /// Unlinked while a commit ran: the commit's end defers the delete of what it stored to
    /// the last close (see 13.).
    unlinked_during_commit: AtomicBool,
}

impl Writer {
    /// The attributes of the file: its size and times as written so far.
    pub(super) fn attr(&self, attrs: &Attrs) -> Attr {
        let posix = *self.posix.lock();
        let size = self.size.load(Ordering::SeqCst);
        let mut attr = attrs.from(self.ino, Kind::File, size, &posix, *self.modified.lock());
        if self.unlinked.load(Ordering::SeqCst) {
            attr.nlink = 0;
        }
        attr
    }

    /// The file's path in the mount.
    pub(super) fn path(&self) -> String {
        self.path.lock().clone()
    }
}

/// The writers of one mount, by inode, under the tables lock (see 6.).
#[derive(Debug, Default)]
pub(super) struct Registry {
    by_ino: HashMap<Ino, Arc<Writer>>,
}

impl Registry {
    /// The writer of `ino`, if one is registered.
    pub(super) fn get(&self, ino: Ino) -> Option<&Arc<Writer>> {
        self.by_ino.get(&ino)
    }

    /// Takes one more handle on the registered writer of `ino`, if there is one.
    fn share(&self, ino: Ino) -> Option<Arc<Writer>> {
        let writer = self.by_ino.get(&ino)?;
        writer.handles.fetch_add(1, Ordering::SeqCst);
        Some(Arc::clone(writer))
    }

    fn insert(&mut self, writer: Arc<Writer>) {
        self.by_ino.insert(writer.ino, writer);
    }

    fn remove(&mut self, ino: Ino) -> Option<Arc<Writer>> {
        self.by_ino.remove(&ino)
    }

    /// True while `writer` is the one registered for its inode.
    fn is_registered(&self, writer: &Writer) -> bool {
        self.by_ino
            .get(&writer.ino)
            .is_some_and(|w| std::ptr::eq(Arc::as_ptr(w), writer))
    }

    /// Files being written directly in directory `dir`, by name (not unlinked ones).
    pub(super) fn pending_in(&self, dir: &str) -> Vec<(String, Arc<Writer>)> {
        self.by_ino
            .values()
            .filter(|w| !w.unlinked.load(Ordering::SeqCst))
            .filter_map(|w| {
                let path = w.path();
                let (parent, name) = crate::fs::split(&path);
                (parent == dir).then(|| (name.to_string(), Arc::clone(w)))
            })
            .collect()
    }

    /// True while a file below directory `path` is open for writing.
    pub(super) fn writing_below(&self, path: &str) -> bool {
        let below = format!("{path}/");
        self.by_ino
            .values()
            .any(|w| !w.unlinked.load(Ordering::SeqCst) && w.path().starts_with(&below))
    }

    /// A rename moved the file of `ino` to `to`: its writer commits there from now on.
    pub(super) fn moved(&self, ino: Ino, to: &str) {
        if let Some(writer) = self.by_ino.get(&ino) {
            *writer.path.lock() = to.to_string();
        }
    }

    /// Every registered writer.
    fn all(&self) -> Vec<Arc<Writer>> {
        self.by_ino.values().cloned().collect()
    }
}

/// Everything writers need besides the tables: where bytes go and what they are.
#[derive(Debug)]
pub(super) struct WriterDeps {
    /// The store uploads go to.
    pub(super) store: Arc<dyn ObjectStore>,
    /// Reads of a file's committed version.
    pub(super) cache: Arc<BlockCache>,
    /// Part size, memory, staging and background tasks.
    pub(super) writes: Writes,
    /// Paths to keys.
    pub(super) names: Names,
    /// Attributes shown.
    pub(super) attrs: Arc<Attrs>,
    /// Server-side copies (headers changed, renames).
    pub(super) copier: Copier,
    /// Names and writers, under one lock.
    pub(super) tables: Arc<Mutex<Tables>>,
    /// Deletes that wait for a last close.
    pub(super) deferred: Arc<Deferred>,
    /// Open handles.
    pub(super) handles: Arc<Handles>,
}

/// The files open for writing, and their state machine.
#[derive(Debug)]
pub struct Writers {
    store: Arc<dyn ObjectStore>,
    cache: Arc<BlockCache>,
    writes: Writes,
    names: Names,
    attrs: Arc<Attrs>,
    copier: Copier,
    tables: Arc<Mutex<Tables>>,
    deferred: Arc<Deferred>,
    handles: Arc<Handles>,
    /// Uploads alive, for `bucketfs status`.
    uploads: crate::upload::UploadRegistry,
    /// Failed commits, for `bucketfs status`.
    failures: Mutex<Failures>,
}

impl Writers {
    /// Writers over `deps`.
    pub(super) fn new(deps: WriterDeps) -> Self {
        Self {
            store: deps.store,
            cache: deps.cache,
            writes: deps.writes,
            names: deps.names,
            attrs: deps.attrs,
            copier: deps.copier,
            tables: deps.tables,
            deferred: deps.deferred,
            handles: deps.handles,
            uploads: Default::default(),
            failures: Default::default(),
        }
    }

    /// The writer of `ino`, if the file is open for writing.
    pub(super) fn of(&self, ino: Ino) -> Option<Arc<Writer>> {
        self.tables.lock().writers.get(ino).cloned()
    }

    /// The attributes of the file `w` writes: its size and times as written so far.
    pub(super) fn attr(&self, w: &Writer) -> Attr {
        let posix = *w.posix.lock();
        let size = w.size.load(Ordering::SeqCst);
        let mut attr = self
            .attrs
            .from(w.ino, Kind::File, size, &posix, *w.modified.lock());
        if w.unlinked.load(Ordering::SeqCst) {
            attr.nlink = 0;
        }
        attr
    }

    /// Registers a new writer for `ino` at `path`, or shares the one another open registered
    /// while this one was looking at the object (`false`: `content` was dropped).
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        ino: Ino,
        path: &str,
        content: Content,
        posix: Posix,
        excl: bool,
        extra: UserMetadata,
        unpublished: bool,
    ) -> (Arc<Writer>, bool) {
        let size = match &content {
            Content::Base(Some(meta)) => meta.size,
            _ => 0,
        };
        let dirty = !matches!(content, Content::Base(_)) && !unpublished;
        let (content_type, stored) = match &content {
            Content::Base(Some(meta)) => (
                meta.content_type.clone(),
                Some((meta.key.clone(), meta.etag.clone())),
            ),
            _ => (None, None),
        };
        let writer = Arc::new(Writer {
            ino,
            path: Mutex::new(path.to_string()),
            state: tokio::sync::Mutex::new(WriteState {
                content,
                stored,
                dirty,
                excl,
                failed: None,
                content_type,
                unpublished,
                reported: false,
            }),
            size: AtomicU64::new(size),
            posix: Mutex::new(posix),
            handles: AtomicUsize::new(1),
            modified: Mutex::new(SystemTime::now()),
            transferring: AtomicBool::new(false),
            unlinked: AtomicBool::new(false),
            held: AtomicBool::new(false),
            headers_changed: AtomicBool::new(false),
            committing: AtomicBool::new(false),
            unlinked_during_commit: AtomicBool::new(false),
            extra: Mutex::new(extra),
        });
        let mut t = self.tables.lock();
        if let Some(existing) = t.writers.share(ino) {
            return (existing, false);
        }
        t.writers.insert(Arc::clone(&writer));
        t.meta.entry_changed(path, self.attr(&writer));
        (writer, true)
    }

    /// The writer of a new file at `path`, for a create (`excl`: O_EXCL), or the one an open
    /// of the name registered, shared and emptied (O_CREAT|O_TRUNC).
    pub(super) async fn create(
        &self,
        path: &str,
        mode: u32,
        owner: (u32, u32),
        excl: bool,
    ) -> FsResult<Arc<Writer>> {
        let (ino, shared) = {
            let mut t = self.tables.lock();
            let ino = t.meta.ino_for(path);
            if excl && t.writers.get(ino).is_some() {
                return Err(FsError::new(libc::EEXIST, "file exists"));
            }
            (ino, t.writers.share(ino))
        };
        if let Some(writer) = shared {
            // Another handle is writing it: share that writer, emptied (O_CREAT|O_TRUNC).
            self.truncate_shared(&writer).await?;
            return Ok(writer);
        }
        // mtime and ctime: the time of the last change (see `touched`).
        let posix = Posix {
            mtime: None,
            ctime: None,
            ..Posix::new_node(S_IFREG | (mode & 0o7777), owner, 0)
        };
        // Even an O_RDWR open streams: front-to-back writers keep the fast path whatever
        // their flags (see 2. for one that goes back).
        let content = Content::Stream(self.new_upload(&self.names.key(path), None));
        let extra = UserMetadata::new();
        let (writer, new) = self.insert(ino, path, content, posix, excl, extra, true);
        if !new && excl {
            // Another create of the name won the race.
            self.detach(&writer).await;
            return Err(FsError::new(libc::EEXIST, "file exists"));
        }
        if !new {
            self.truncate_shared(&writer).await?;
        }
        Ok(writer)
    }

    /// Takes one more handle on the writer of `ino` if there is one, emptied for an O_TRUNC
    /// open (on failure the handle is given back).
    pub(super) async fn share(&self, ino: Ino, truncate: bool) -> FsResult<Option<Arc<Writer>>> {
        let shared = self.tables.lock().writers.share(ino);
        if let (Some(writer), true) = (&shared, truncate) {
            self.truncate_shared(writer).await?;
        }
        Ok(shared)
    }

    /// A new writer of file `ino` at `path` over its committed object `meta` (headers read
    /// unless `truncate`), or the one another open registered meanwhile.
    pub(super) async fn attach(
        &self,
        ino: Ino,
        path: &str,
        meta: ObjectMeta,
        truncate: bool,
    ) -> FsResult<Arc<Writer>> {
        // The file keeps its mode, owner and times (headers, or the mount's defaults) when
        // rewritten; a write moves mtime and ctime (`touched`), a futimens only what it names.
        let attr = self.attrs.of(ino, Kind::File, Some(&meta));
        let posix = Posix {
            mode: Some(S_IFREG | u32::from(attr.perm)),
            uid: Some(attr.uid),
            gid: Some(attr.gid),
            atime: Some(attr.atime),
            mtime: Some(attr.mtime),
            ctime: Some(attr.ctime),
            ..Posix::default()
        };
        let extra = meta.metadata.clone().unwrap_or_default();
        let content = if truncate {
            Content::Stream(self.new_upload(&meta.key, meta.content_type.as_deref()))
        } else {
            Content::Base(Some(meta))
        };
        let (writer, new) = self.insert(ino, path, content, posix, false, extra, false);
        if !new && truncate {
            self.truncate_shared(&writer).await?;
        }
        Ok(writer)
    }

    /// Before the object of an open file is deleted: its bytes go into a staging file that
    /// every handle of the inode uses until the last one closes (see 10.). `writer` is a
    /// handle taken for it, kept by the unlink (or given back when it fails).
    pub(super) async fn keep(&self, writer: Arc<Writer>) -> FsResult<()> {
        let result = async {
            let mut st = writer.state.lock().await;
            self.unstream(&writer, &mut st).await?;
            writer.unlinked.store(true, Ordering::SeqCst);
            Ok(())
        }
        .await;
        if result.is_err() || writer.held.swap(true, Ordering::SeqCst) {
            // Failed, or unlinked twice (a second name cannot exist): give the handle back.
            self.detach(&writer).await;
        }
        result
    }

    /// The unlink of `ino`, a file no handle holds: a writer still registered (its last
    /// release committing) is unregistered, and the unlink waits for that commit to land, so
    /// the delete that follows comes after it, never before.
    pub(super) async fn forget_closed(&self, ino: Ino) {
        let writer = self.tables.lock().writers.remove(ino);
        if let Some(writer) = writer {
            let _st = writer.state.lock().await;
            writer.unlinked.store(true, Ordering::SeqCst);
        }
    }

    /// Empties a writer this open shares (O_TRUNC); on failure the handle is given back.
    async fn truncate_shared(&self, writer: &Writer) -> FsResult<()> {
        if let Err(e) = self.truncate(writer, 0).await {
            self.detach(writer).await;
            return Err(e);
        }
        Ok(())
    }

    /// Unlink of open file `ino` at `path` while a commit of it runs (see 13.): the name goes
    /// at once and the commit's end defers the delete. False when no commit runs (the caller
    /// keeps the bytes for the handles and deletes, as in 10.).
    pub(super) fn unlink_committing(&self, ino: Ino, path: &str) -> bool {
        let mut t = self.tables.lock();
        let Some(writer) = t.writers.get(ino).cloned() else {
            return false;
        };
        if !writer.committing.load(Ordering::SeqCst) || writer.unlinked.load(Ordering::SeqCst) {
            return false;
        }
        writer.unlinked.store(true, Ordering::SeqCst);
        writer.unlinked_during_commit.store(true, Ordering::SeqCst);
        // Held, as in 10., until the last handle of the inode closes: a reader's handle reads
        // through the writer, whose name is gone.
        if !writer.held.swap(true, Ordering::SeqCst) {
            writer.handles.fetch_add(1, Ordering::SeqCst);
        }
        t.meta.unlinked_open(path);
        true
    }

    /// Undoes `keep` when the name could not be removed after all (the delete or
    /// the rename failed): the file is a normal open file again, and commits as before.
    pub(super) async fn unkeep(&self, ino: Ino) {
        if let Some(writer) = self.of(ino) {
            writer.unlinked.store(false, Ordering::SeqCst);
            if writer.held.swap(false, Ordering::SeqCst) {
                self.detach(&writer).await;
            }
        }
    }

    /// The rest of a release: the writer's handle, and an unlinked file's staged bytes.
    pub async fn released(&self, file: Arc<OpenFile>) {
        if let Some(writer) = &file.writer {
            self.detach(writer).await;
        }
        // The last handle of an unlinked file: its staged bytes go (see 10.). Only a held
        // writer sends this release through the scan of the open files.
        let held = self.of(file.ino).filter(|w| w.held.load(Ordering::SeqCst));
        if let Some(writer) = held {
            if !self.handles.is_open(file.ino) && writer.held.swap(false, Ordering::SeqCst) {
                self.detach(&writer).await;
                self.tables.lock().meta.orphan_closed(file.ino);
            }
        }
        // The last handle of a file unlinked while only read: its delete is due now.
        if self.deferred.owes(file.ino) && !self.handles.is_open(file.ino) {
            self.deferred.closed(file.ino, self.store.as_ref()).await;
            self.tables.lock().meta.orphan_closed(file.ino);
        }
    }

    /// Drops one handle of `writer`; the last one commits leftovers and unregisters it.
    pub(super) async fn detach(&self, writer: &Writer) {
        {
            let _t = self.tables.lock();
            if writer.handles.fetch_sub(1, Ordering::SeqCst) != 1 {
                return;
            }
        }
        // Commit and unregister under one hold of the state lock: a setattr that found the
        // writer either changed it before (and this commit carries it) or waits, finds it
        // gone, and writes the headers itself after this commit.
        let mut st = writer.state.lock().await;
        loop {
            if writer.handles.load(Ordering::SeqCst) != 0 {
                return; // reopened meanwhile
            }
            st.dirty |= st.unpublished;
            let committed = self.commit_locked(writer, &mut st).await;
            if let Err(e) = &committed {
                tracing::warn!(path = %writer.path(), errno = e.errno, "upload at release failed: {}", e.message);
            }
            if let Content::Stream(_) = st.content {
                // Never committed (unlinked, or failed): drop it and any multipart upload.
                let failed = st.failed.clone().unwrap_or_else(content::lost);
                self.lose(&mut st, failed);
            }
            let mut t = self.tables.lock();
            if committed.is_ok() && writer.headers_changed.load(Ordering::SeqCst) {
                // A chmod or setxattr came in after the commit looked: commit it too.
                continue;
            }
            // An open that came in during the commit shares this writer and keeps it
            // registered.
            if writer.handles.load(Ordering::SeqCst) == 0 && t.writers.is_registered(writer) {
                t.writers.remove(writer.ino);
            }
            return;
        }
    }

    /// Applies a header change (its POSIX attributes, its other headers) to an open file, for
    /// its next commit. False when the writer was closed meanwhile (the caller then changes
    /// the object itself).
    /// Never waits for a transfer: a commit under way applies it when it settles, or the
    /// last release commits it (the tables lock orders this against that release).
    pub(super) fn change_open(
        &self,
        writer: &Writer,
        change: impl FnOnce(&mut Posix, &mut UserMetadata) -> FsResult<()>,
    ) -> FsResult<bool> {
        let t = self.tables.lock();
        if !t.writers.is_registered(writer) {
            return Ok(false);
        }
        let mut posix = *writer.posix.lock();
        let mut extra = self.open_headers(writer);
        change(&mut posix, &mut extra)?;
        crate::fs::xattr::check_fits(&posix.apply_to(&extra))?;
        *writer.posix.lock() = posix;
        *writer.extra.lock() = extra;
        writer.headers_changed.store(true, Ordering::SeqCst);
        drop(t);
        Ok(true)
    }

    /// The headers an open file will be committed with, other than mode, owner and times.
    pub(super) fn open_headers(&self, writer: &Writer) -> UserMetadata {
        writer.extra.lock().clone()
    }

    /// Files with changes not yet committed, for `bucketfs status` (never waits, see
    /// activity.rs).
    pub(super) fn pending(&self) -> Vec<PendingFile> {
        let writers = self.tables.lock().writers.all();
        let mut pending = Vec::new();
        for w in writers {
            if w.unlinked.load(Ordering::SeqCst) {
                continue;
            }
            let busy = match w.state.try_lock() {
                Ok(st) if st.failed.is_some() || !st.dirty => continue,
                Ok(_) => false,
                Err(_) => true,
            };
            pending.push(PendingFile {
                path: w.path(),
                size: w.size.load(Ordering::SeqCst),
                busy,
            });
        }
        pending.sort_by(|a, b| a.path.cmp(&b.path));
        pending
    }

    /// Uploads in flight, for `bucketfs status`.
    pub(super) fn uploads(&self) -> Vec<UploadActivity> {
        self.uploads
            .snapshot()
            .into_iter()
            .map(|progress| UploadActivity {
                path: self
                    .names
                    .path_of_key(&progress.key)
                    .unwrap_or_else(|| progress.key.clone()),
                progress,
            })
            .collect()
    }

    /// The last failed commits, oldest first, and the number of the last one.
    pub(super) fn failures(&self) -> (Vec<Failure>, u64) {
        let failures = self.failures.lock();
        (failures.kept(), failures.last())
    }
}

fn commit_error(err: StoreError, excl: bool) -> FsError {
    if excl && err.kind == StoreErrorKind::PreconditionFailed {
        FsError::new(
            libc::EEXIST,
            format!("{err}: the name was created elsewhere"),
        )
    } else {
        err.into()
    }
}
