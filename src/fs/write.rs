//! Files open for writing: one `Writer` per inode, shared by every handle on it.
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

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::posix::{Posix, S_IFMT, S_IFREG};
use super::{Attr, Fs, Ino, Kind, OpenFile, ReadState};
use crate::cache::ObjectId;
use crate::error::{FsError, FsResult};
use crate::store::{
    CopySource, ObjectMeta, StandardHeaders, StoreError, StoreErrorKind, UserMetadata,
};
use crate::upload::staging::StagingFile;
use crate::upload::{Upload, Uploaded};

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
    /// The file's path in the mount.
    pub(super) fn path(&self) -> String {
        self.path.lock().clone()
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

impl Fs {
    pub(super) fn writer_of(&self, ino: Ino) -> Option<Arc<Writer>> {
        self.tables.lock().writers.get(&ino).cloned()
    }

    pub(super) fn writer_attr(&self, w: &Writer) -> Attr {
        let posix = *w.posix.lock();
        let size = w.size.load(Ordering::SeqCst);
        let mut attr = self.attrs.from(w.ino, Kind::File, size, &posix, *w.modified.lock());
        if w.unlinked.load(Ordering::SeqCst) {
            attr.nlink = 0;
        }
        attr
    }

    /// The content changed to `size` bytes: the next commit uploads it with a fresh mtime.
    fn touched(&self, writer: &Writer, st: &mut WriteState, size: u64) {
        st.dirty = true;
        writer.size.store(size, Ordering::SeqCst);
        let mut posix = writer.posix.lock();
        posix.mtime = None;
        posix.ctime = None;
        drop(posix);
        *writer.modified.lock() = SystemTime::now();
    }

    /// An upload to `key`, stored with the Content-Type `kept` from the object it replaces,
    /// else the one its name suggests.
    fn new_upload(&self, key: &str, kept: Option<&str>) -> Upload {
        let content_type = kept.map_or_else(|| self.names.guess_type(key), str::to_string);
        Upload::new(
            Arc::clone(&self.store),
            key.to_string(),
            self.writes.tuning.clone(),
            self.writes.budget.clone(),
            self.writes.tasks.clone(),
        )
        .with_content_type(content_type)
        .tracked(&self.uploads)
    }

    /// Takes one more handle on the registered writer of `ino`, if there is one.
    fn share_writer(t: &super::Tables, ino: Ino) -> Option<Arc<Writer>> {
        let writer = t.writers.get(&ino)?;
        writer.handles.fetch_add(1, Ordering::SeqCst);
        Some(Arc::clone(writer))
    }

    /// Registers a new writer for `ino` at `path`, or shares the one another open registered
    /// while this one was looking at the object (`false`: `content` was dropped).
    #[allow(clippy::too_many_arguments)]
    fn insert_writer(
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
        if let Some(existing) = Self::share_writer(&t, ino) {
            return (existing, false);
        }
        t.writers.insert(ino, Arc::clone(&writer));
        t.meta.entry_changed(path, self.writer_attr(&writer));
        (writer, true)
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
        let shared = {
            let mut t = self.tables.lock();
            let ino = t.meta.ino_for(&path);
            if excl && t.writers.contains_key(&ino) {
                return Err(FsError::new(libc::EEXIST, "file exists"));
            }
            (ino, Self::share_writer(&t, ino))
        };
        let (ino, writer) = match shared {
            (_, Some(writer)) => {
                // Another handle is writing it: share that writer, emptied (O_CREAT|O_TRUNC).
                self.truncate_shared(&writer).await?;
                (writer.ino, writer)
            }
            (ino, None) => {
                // mtime and ctime: the time of the last change (see `touched`).
                let posix = Posix {
                    mtime: None,
                    ctime: None,
                    ..Posix::new_node(S_IFREG | (mode & 0o7777), owner, 0)
                };
                // Even an O_RDWR open streams: front-to-back writers keep the fast path
                // whatever their flags (see 2. for one that goes back).
                let content = Content::Stream(self.new_upload(&self.names.key(&path), None));
                let extra = UserMetadata::new();
                let (writer, new) =
                    self.insert_writer(ino, &path, content, posix, excl, extra, true);
                if !new && excl {
                    // Another create of the name won the race.
                    self.detach(&writer).await;
                    return Err(FsError::new(libc::EEXIST, "file exists"));
                }
                if !new {
                    self.truncate_shared(&writer).await?;
                }
                (ino, writer)
            }
        };
        debug_assert_eq!(ino, writer.ino);
        self.attrs.dir_changed(parent);
        // The kernel holds the new entry from now on.
        self.tables.lock().meta.looked_up(&path);
        Ok((
            self.writer_attr(&writer),
            self.writer_handle(writer, open.opener),
        ))
    }

    /// Empties a writer this open shares (O_TRUNC); on failure the handle is given back.
    async fn truncate_shared(&self, writer: &Writer) -> FsResult<()> {
        if let Err(e) = self.truncate_writer(writer, 0).await {
            self.detach(writer).await;
            return Err(e);
        }
        Ok(())
    }

    fn writer_handle(&self, writer: Arc<Writer>, opener: u32) -> u64 {
        self.add_handle(OpenFile {
            ino: writer.ino,
            version: Mutex::default(),
            served: Default::default(),
            refused: Default::default(),
            state: Mutex::default(),
            writer: Some(writer),
            opener,
        })
    }

    /// The writer of `ino` for a new write handle: the existing one, or a new one over the
    /// committed object.
    pub(super) async fn attach_writer(&self, ino: Ino, mode: OpenMode) -> FsResult<Arc<Writer>> {
        let shared = Self::share_writer(&self.tables.lock(), ino);
        if let Some(writer) = shared {
            if mode.truncate {
                self.truncate_shared(&writer).await?;
            }
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
            self.copier.with_headers(&key, Some(meta))
                .await?
                .ok_or_else(FsError::not_found)?
        };
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
        let content = if mode.truncate {
            Content::Stream(self.new_upload(&meta.key, meta.content_type.as_deref()))
        } else {
            Content::Base(Some(meta))
        };
        let (writer, new) = self.insert_writer(ino, &path, content, posix, false, extra, false);
        if !new && mode.truncate {
            self.truncate_shared(&writer).await?;
        }
        Ok(writer)
    }

    /// A stream whose parts left commits them first (see 2.); then, like `stage`, the
    /// content becomes a staging file holding the same bytes.
    async fn unstream(&self, writer: &Writer, st: &mut WriteState) -> FsResult<()> {
        if let Content::Stream(upload) = &st.content {
            if upload.started() {
                tracing::info!(path = %writer.path(), "going back in a file being streamed: committing what was written, then changing it in a staging copy");
                self.commit_locked(writer, st).await?;
            }
        }
        self.stage(st).await
    }

    /// Turns the content into a staging file holding the same bytes. On failure the content
    /// is left as it was (see 8.).
    async fn stage(&self, st: &mut WriteState) -> FsResult<()> {
        let file = match &st.content {
            Content::Staged(_) => return Ok(()),
            Content::Lost => return Err(st.failed.clone().unwrap_or_else(lost)),
            Content::Base(meta) => {
                let file = self.writes.staging.create().await?;
                if let Some(meta) = meta {
                    self.download(meta, &file).await?;
                }
                file
            }
            Content::Stream(upload) => {
                let Some(buffer) = upload.buffer() else {
                    return Err(FsError::new(
                        libc::EINVAL,
                        "the file's first parts are already uploaded",
                    ));
                };
                let file = self.writes.staging.create().await?;
                file.write_at(0, Bytes::copy_from_slice(buffer)).await?;
                file.set_len(upload.len()).await?;
                file
            }
        };
        // The replaced stream never started a multipart upload: dropping it costs nothing.
        st.content = Content::Staged(file);
        Ok(())
    }

    /// Copies `meta`'s bytes into `file`, a block at a time, pinned to its ETag.
    async fn download(&self, meta: &ObjectMeta, file: &StagingFile) -> FsResult<()> {
        let block = crate::config::DEFAULT_BLOCK_SIZE;
        let mut offset = 0;
        while offset < meta.size {
            let end = (offset + block).min(meta.size);
            let bytes = self
                .store
                .get_object_range(&meta.key, &meta.etag, offset..end)
                .await?;
            file.write_at(offset, bytes).await?;
            offset = end;
        }
        file.set_len(meta.size).await
    }

    /// The writer of handle `fh`; EBADF for a handle not open for writing.
    fn handle_writer(&self, fh: u64) -> FsResult<Arc<Writer>> {
        self.handle(fh)?
            .writer
            .clone()
            .ok_or_else(|| FsError::new(libc::EBADF, "not open for writing"))
    }

    /// Writes `data` at `offset` through handle `fh`.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let writer = self.handle_writer(fh)?;
        let end = object_end(offset, data.len() as u64)?;
        let mut st = writer.state.lock().await;
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if let Content::Base(meta) = &st.content {
            if meta.as_ref().is_none_or(|m| m.size == 0) && offset == 0 {
                let key = self.names.key(&writer.path());
                st.content = Content::Stream(self.new_upload(&key, st.content_type.as_deref()));
            }
        }
        // A stream takes the next bytes, and a gap once it has started (zeros are sent); a
        // write behind it or a gap before any part left is staged instead (holes stay holes).
        let streams = match &st.content {
            Content::Stream(upload) if offset == upload.len() => true,
            Content::Stream(upload) if upload.started() && offset > upload.len() => true,
            _ => false,
        };
        if !streams {
            self.unstream(&writer, &mut st).await?;
        }
        let metadata = self.wanted_metadata(&writer);
        match &mut st.content {
            Content::Stream(upload) => {
                let gap = offset - upload.len();
                // Other handles cannot read a stream: they need not wait for its parts.
                writer.transferring.store(true, Ordering::SeqCst);
                let result = async {
                    if gap > 0 {
                        let zeros = vec![0u8; gap.min(1 << 20) as usize];
                        let mut left = gap;
                        while left > 0 {
                            let n = left.min(zeros.len() as u64) as usize;
                            upload.write(&zeros[..n], &metadata).await?;
                            left -= n as u64;
                        }
                    }
                    upload.write(data, &metadata).await
                }
                .await;
                writer.transferring.store(false, Ordering::SeqCst);
                if let Err(e) = result {
                    let e = FsError::from(e);
                    self.lose(&mut st, e.clone());
                    return Err(e);
                }
            }
            Content::Staged(file) => file.write_at(offset, Bytes::copy_from_slice(data)).await?,
            Content::Base(_) | Content::Lost => return Err(st.failed.clone().unwrap_or_else(lost)),
        }
        let size = writer.size.load(Ordering::SeqCst).max(end);
        self.touched(&writer, &mut st, size);
        Ok(data.len() as u32)
    }

    /// The stream failed: drop it (its multipart upload is aborted in the background),
    /// remember why.
    fn lose(&self, st: &mut WriteState, err: FsError) {
        if let Content::Stream(_) = &st.content {
            st.content = Content::Lost;
        }
        st.failed = Some(err);
    }

    /// Headers the next commit writes: the object's other headers plus mode, owner and times
    /// (mtime and ctime, unless set since, of the last change).
    fn wanted_metadata(&self, writer: &Writer) -> UserMetadata {
        let mut posix = *writer.posix.lock();
        let modified = *writer.modified.lock();
        posix.mtime.get_or_insert(modified);
        posix.ctime.get_or_insert(modified);
        posix.apply_to(&writer.extra.lock())
    }

    /// Reads through a writer: from the staging copy, or (for its own handles) from the last
    /// committed object. `None` when the caller should read its own version instead.
    pub(super) async fn read_writer(
        &self,
        writer: &Writer,
        state: &Mutex<ReadState>,
        mine: bool,
        offset: u64,
        len: u32,
    ) -> FsResult<Option<Bytes>> {
        if !mine && writer.transferring.load(Ordering::SeqCst) {
            // Not behind a transfer: this handle reads the version it opened.
            return Ok(None);
        }
        let mut st = writer.state.lock().await;
        if mine && matches!(st.content, Content::Stream(_)) {
            self.unstream(writer, &mut st).await?;
        }
        match &st.content {
            Content::Staged(file) => Ok(Some(file.read_at(offset, len as usize).await?)),
            // Unlinked: no newer version to follow; every handle reads the last one.
            Content::Base(Some(meta)) if mine || writer.unlinked.load(Ordering::SeqCst) => {
                let object = Arc::new(ObjectId {
                    key: meta.key.clone(),
                    etag: meta.etag.clone(),
                });
                let size = meta.size;
                drop(st);
                Ok(Some(
                    self.cache.read(&object, size, state, offset, len).await?,
                ))
            }
            Content::Base(None) if mine => Ok(Some(Bytes::new())),
            Content::Lost if mine => Err(st.failed.clone().unwrap_or_else(lost)),
            _ => Ok(None),
        }
    }

    /// fallocate(2) through handle `fh`: mode 0 extends the file to `offset + length` (a hole,
    /// as S3 stores no reservation); other modes are not supported (EOPNOTSUPP).
    pub async fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        if mode != 0 {
            return Err(FsError::new(
                libc::EOPNOTSUPP,
                format!("fallocate mode {mode:#x} cannot be done on S3"),
            ));
        }
        let writer = self.handle_writer(fh)?;
        let end = object_end(offset, length)?;
        if end > writer.size.load(Ordering::SeqCst) {
            self.truncate_writer(&writer, end).await?;
        }
        Ok(())
    }

    /// Sets the length of the file behind `writer`.
    pub(super) async fn truncate_writer(&self, writer: &Writer, len: u64) -> FsResult<()> {
        object_end(len, 0)?;
        let mut st = writer.state.lock().await;
        if len == 0 {
            // The old stream, if any, is dropped and its multipart upload aborted.
            let key = self.names.key(&writer.path());
            st.content = Content::Stream(self.new_upload(&key, st.content_type.as_deref()));
            st.failed = None;
        } else {
            let current = writer.size.load(Ordering::SeqCst);
            if len != current || !matches!(st.content, Content::Stream(_)) {
                self.unstream(writer, &mut st).await?;
                if let Content::Staged(file) = &st.content {
                    file.set_len(len).await?;
                }
            }
        }
        self.touched(writer, &mut st, len);
        Ok(())
    }

    /// Commit point of handle `fh` as its opener's close: uploads what changed, returns its
    /// error.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let file = self.handle(fh)?;
        match &file.writer {
            Some(writer) => self.commit(writer).await,
            None => Ok(()),
        }
    }

    /// A close of `fh` by thread `tid`: only the opener's process commits (a forked child
    /// closing an inherited descriptor must not publish the opener's half-written file).
    /// `process_of` maps a thread to its process; it is asked only for a write handle closed
    /// by a thread that is not the opener's main thread, so most closes cost no lookup.
    pub async fn close(&self, fh: u64, tid: u32, process_of: fn(u32) -> u32) -> FsResult<()> {
        let file = self.handle(fh)?;
        let foreign = file.writer.is_some()
            && file.opener != 0
            && file.opener != tid
            && file.opener != process_of(tid);
        if foreign {
            tracing::debug!(
                fh,
                opener = file.opener,
                tid,
                "close by another process: no commit"
            );
            return Ok(());
        }
        self.flush(fh).await
    }

    /// fsync: commits, and publishes a new file even while it is empty.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let file = self.handle(fh)?;
        let Some(writer) = &file.writer else {
            return Ok(());
        };
        let mut st = writer.state.lock().await;
        st.dirty |= st.unpublished;
        self.commit_locked(writer, &mut st).await
    }

    /// Uploads the writer's content (or just its changed headers) if anything changed.
    pub(super) async fn commit(&self, writer: &Writer) -> FsResult<()> {
        let mut st = writer.state.lock().await;
        self.commit_locked(writer, &mut st).await
    }

    async fn commit_locked(&self, writer: &Writer, st: &mut WriteState) -> FsResult<()> {
        {
            let _t = self.tables.lock();
            writer.committing.store(true, Ordering::SeqCst);
        }
        let result = self.commit_now(writer, st).await;
        let unlinked = {
            let _t = self.tables.lock();
            writer.committing.store(false, Ordering::SeqCst);
            writer.unlinked_during_commit.swap(false, Ordering::SeqCst)
        };
        if unlinked {
            // Unlinked meanwhile (see 13.): what is stored under the name now, this commit's
            // version or the one before it, stays for the handles and goes at the last close.
            if let Some((key, etag)) = st.stored.clone() {
                self.deferred
                    .defer(writer.ino, key, etag, self.writer_attr(writer));
            }
        }
        match &result {
            Err(e) if !st.reported => {
                st.reported = true;
                self.failed_commit(writer.path(), e.message.clone());
            }
            Err(_) => {}
            Ok(()) => st.reported = false,
        }
        result
    }

    async fn commit_now(&self, writer: &Writer, st: &mut WriteState) -> FsResult<()> {
        if writer.unlinked.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        let key = self.names.key(&writer.path());
        let headers = writer.headers_changed.swap(false, Ordering::SeqCst);
        let moved = st.stored.as_ref().is_some_and(|(stored, _)| *stored != key);
        if !st.dirty && !headers && !moved {
            return Ok(());
        }
        if let Content::Stream(upload) = &mut st.content {
            // Renamed before a part left: the object goes straight to the new name.
            upload.retarget(&key);
        }
        let metadata = self.wanted_metadata(writer);
        let excl = st.excl;
        writer.transferring.store(true, Ordering::SeqCst);
        let uploaded = self.transfer(st, &key, &metadata, excl).await;
        writer.transferring.store(false, Ordering::SeqCst);
        match uploaded {
            Ok((landed, uploaded)) => self.settle(writer, st, landed, uploaded).await,
            Err(e) => {
                if headers {
                    // Not written: the next commit tries again.
                    writer.headers_changed.store(true, Ordering::SeqCst);
                }
                Err(e)
            }
        }
    }

    /// The upload of a commit: the content, or a copy with new headers. Returns the key it
    /// landed at (a stream keeps the key its multipart upload began with) and what it wrote.
    async fn transfer(
        &self,
        st: &mut WriteState,
        key: &str,
        metadata: &UserMetadata,
        excl: bool,
    ) -> FsResult<(String, Uploaded)> {
        let result = match &mut st.content {
            Content::Stream(upload) => {
                let landed = upload.key().to_string();
                return match upload.finish(metadata, excl).await {
                    Ok(uploaded) => Ok((landed, uploaded)),
                    Err(e) => {
                        let e = commit_error(e, excl);
                        self.lose(st, e.clone());
                        Err(e)
                    }
                };
            }
            Content::Staged(file) => {
                let upload = self.new_upload(key, st.content_type.as_deref());
                self.upload_staged(upload, file, metadata, excl).await
            }
            Content::Base(Some(meta)) => {
                let source = CopySource {
                    key: &meta.key,
                    etag: &meta.etag,
                    size: meta.size,
                    headers: &meta.headers,
                };
                let content_type = meta
                    .content_type
                    .clone()
                    .unwrap_or_else(|| self.names.guess_type(key));
                self.copier.copy(source, key, Some((metadata, Some(&content_type))))
                    .await
                    .map(|etag| Uploaded {
                        etag,
                        size: meta.size,
                        metadata: metadata.clone(),
                    })
            }
            Content::Base(None) => {
                let mut upload = self.new_upload(key, st.content_type.as_deref());
                upload.finish(metadata, excl).await
            }
            Content::Lost => return Err(st.failed.clone().unwrap_or_else(lost)),
        };
        result
            .map(|uploaded| (key.to_string(), uploaded))
            .map_err(|e| commit_error(e, excl))
    }

    /// After a commit's transfer: a rename or a header change made meanwhile is applied (a
    /// copy to the file's current key with its current headers), the version it replaces
    /// under an older name is removed, and the new version is recorded.
    async fn settle(
        &self,
        writer: &Writer,
        st: &mut WriteState,
        mut landed: String,
        mut uploaded: Uploaded,
    ) -> FsResult<()> {
        let content_type = loop {
            let key = self.names.key(&writer.path());
            writer.headers_changed.store(false, Ordering::SeqCst);
            let mut metadata = self.wanted_metadata(writer);
            let posix = *writer.posix.lock();
            for (name, explicit) in [("mtime", posix.mtime), ("ctime", posix.ctime)] {
                // Not set explicitly: the time a multipart upload was started with stands (it
                // is the time of its first part), rather than a server-side copy to move it.
                if let (None, Some(sent)) = (explicit, uploaded.metadata.get(name)) {
                    metadata.insert(name.into(), sent.clone());
                }
            }
            let content_type = st
                .content_type
                .clone()
                .unwrap_or_else(|| self.names.guess_type(&key));
            if landed == key && uploaded.metadata == metadata {
                break content_type;
            }
            // A multipart upload took its headers at its start, and a rename during the
            // transfer moved the name: copying the object (onto itself, or to the new name)
            // applies both.
            // What this mount uploaded carries no standard headers (see `StandardHeaders`).
            let source = CopySource {
                key: &landed,
                etag: &uploaded.etag,
                size: uploaded.size,
                headers: &StandardHeaders::NONE,
            };
            let replace = (&metadata, Some(content_type.as_str()));
            uploaded.etag = self.copier.copy(source, &key, Some(replace)).await?;
            uploaded.metadata = metadata;
            if landed != key {
                self.store.delete_object(&landed).await?;
            }
            landed = key;
        };
        if let Some((old, etag)) = st.stored.take() {
            if old != landed {
                self.remove_moved(&old, &etag).await;
            }
        }
        st.stored = Some((landed.clone(), uploaded.etag.clone()));
        let meta = ObjectMeta {
            key: landed,
            size: uploaded.size,
            etag: uploaded.etag,
            last_modified: SystemTime::now(),
            metadata: Some(uploaded.metadata),
            content_type: Some(content_type),
            headers: StandardHeaders::NONE,
        };
        if matches!(st.content, Content::Stream(_) | Content::Base(_)) {
            st.content = Content::Base(Some(meta.clone()));
        }
        st.dirty = false;
        st.excl = false;
        st.unpublished = false;
        // Not if unlinked meanwhile: the name is gone (checked under the lock the unlink
        // takes, see 13.).
        let path = writer.path();
        let mut t = self.tables.lock();
        if !writer.unlinked.load(Ordering::SeqCst) {
            self.record_in(&mut t, &path, Kind::File, Some(meta));
        }
        Ok(())
    }

    /// The version a renamed writer committed under its old name, now superseded by the one at
    /// its new name: deleted unless another client or file replaced it meanwhile (ETag).
    async fn remove_moved(&self, key: &str, etag: &str) {
        if let Err(e) = super::delete_version(self.store.as_ref(), key, etag).await {
            tracing::warn!(key, "could not remove the old name of a renamed file: {e}");
        }
    }

    /// A rename of a file open for writing (see 11.): returns the moved object when its
    /// committed version was moved now and nothing is pending (`None`: the writer answers for
    /// the new name until its next commit).
    pub(super) async fn rename_writer(
        &self,
        writer: &Writer,
        to: &str,
    ) -> FsResult<Option<ObjectMeta>> {
        let Ok(mut st) = writer.state.try_lock() else {
            // A commit or a write is under way: it lands at the new name when it settles.
            *writer.path.lock() = to.to_string();
            return Ok(None);
        };
        let Some((old_key, etag)) = st.stored.clone() else {
            // Nothing committed yet: the first commit goes to the new name.
            *writer.path.lock() = to.to_string();
            return Ok(None);
        };
        let new_key = self.names.key(to);
        match self.store.head_object(&old_key).await? {
            Some(meta) if super::same_etag(&meta.etag, &etag) => {
                let moved = self.copier.move_object(meta, &new_key).await?;
                st.stored = Some((new_key, moved.etag.clone()));
                if let Content::Base(Some(base)) = &mut st.content {
                    *base = moved.clone();
                }
                *writer.path.lock() = to.to_string();
                Ok((!st.dirty).then_some(moved))
            }
            _ => {
                // Replaced or removed by someone else: theirs stays; the writer's content is
                // published under the new name at its next commit.
                st.stored = None;
                st.dirty = true;
                *writer.path.lock() = to.to_string();
                Ok(None)
            }
        }
    }

    /// Uploads a staging file whole, through the same bounded part pipeline as a stream.
    async fn upload_staged(
        &self,
        mut upload: Upload,
        file: &StagingFile,
        metadata: &UserMetadata,
        excl: bool,
    ) -> Result<Uploaded, StoreError> {
        // On failure the upload is dropped, which aborts it in the background.
        let chunk = crate::config::DEFAULT_BLOCK_SIZE as usize;
        let mut offset = 0;
        while offset < file.len() {
            let bytes = file
                .read_at(offset, chunk)
                .await
                .map_err(|e| StoreError::new(StoreErrorKind::Other, e.message))?;
            upload.write(&bytes, metadata).await?;
            offset += bytes.len() as u64;
        }
        upload.finish(metadata, excl).await
    }

    /// At shutdown: refuses new changes (EROFS), then commits every file still open for
    /// writing, all at once; one that fails is aborted. Returns how many failed.
    pub async fn stop(&self) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        let writers: Vec<Arc<Writer>> = self.tables.lock().writers.values().cloned().collect();
        let commits = writers.iter().map(|writer| async move {
            let mut st = writer.state.lock().await;
            st.dirty |= st.unpublished;
            match self.commit_locked(writer, &mut st).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::warn!(path = %writer.path(), errno = e.errno, "upload at shutdown failed: {}", e.message);
                    self.lose(&mut st, e);
                    1
                }
            }
        });
        futures::future::join_all(commits).await.into_iter().sum()
    }

    /// True while a handle (reader or writer) of `ino` is open.
    pub(super) fn is_open(&self, ino: Ino) -> bool {
        self.files.lock().values().any(|f| f.ino == ino)
    }

    /// Before the object of open file `ino` is deleted: its bytes go into a staging file that
    /// every handle of the inode uses until the last one closes (see 10.).
    pub(super) async fn keep_for_handles(&self, ino: Ino) -> FsResult<()> {
        let mode = OpenMode {
            write: true,
            ..OpenMode::default()
        };
        let writer = self.attach_writer(ino, mode).await?;
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

    /// Unlink of open file `ino` at `path` while a commit of it runs (see 13.): the name goes
    /// at once and the commit's end defers the delete. False when no commit runs (the caller
    /// keeps the bytes for the handles and deletes, as in 10.).
    pub(super) fn unlink_committing(&self, ino: Ino, path: &str) -> bool {
        let mut t = self.tables.lock();
        let Some(writer) = t.writers.get(&ino).cloned() else {
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

    /// Undoes `keep_for_handles` when the name could not be removed after all (the delete or
    /// the rename failed): the file is a normal open file again, and commits as before.
    pub(super) async fn unkeep(&self, ino: Ino) {
        if let Some(writer) = self.writer_of(ino) {
            writer.unlinked.store(false, Ordering::SeqCst);
            if writer.held.swap(false, Ordering::SeqCst) {
                self.detach(&writer).await;
            }
        }
    }

    /// Closes handle `fh`. The last handle of a writer commits what no flush committed (a
    /// write through a shared mapping, a new file left empty) or, after a failure, leaves the
    /// abort running.
    pub async fn release(&self, fh: u64) {
        if let Some(file) = self.take_handle(fh) {
            self.released(file).await;
        }
    }

    /// Takes handle `fh` out of the open files at once (before the rest of its release runs),
    /// so an unlink that follows a close does not count it as still open.
    pub fn take_handle(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().remove(&fh)
    }

    /// The rest of a release: the writer's handle, and an unlinked file's staged bytes.
    pub async fn released(&self, file: Arc<OpenFile>) {
        if let Some(writer) = &file.writer {
            self.detach(writer).await;
        }
        // The last handle of an unlinked file: its staged bytes go (see 10.). Only a held
        // writer sends this release through the scan of the open files.
        let held = self
            .writer_of(file.ino)
            .filter(|w| w.held.load(Ordering::SeqCst));
        if let Some(writer) = held {
            if !self.is_open(file.ino) && writer.held.swap(false, Ordering::SeqCst) {
                self.detach(&writer).await;
                self.tables.lock().meta.orphan_closed(file.ino);
            }
        }
        // The last handle of a file unlinked while only read: its delete is due now.
        if self.deferred.owes(file.ino) && !self.is_open(file.ino) {
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
                let failed = st.failed.clone().unwrap_or_else(lost);
                self.lose(&mut st, failed);
            }
            let mut t = self.tables.lock();
            if committed.is_ok() && writer.headers_changed.load(Ordering::SeqCst) {
                // A chmod or setxattr came in after the commit looked: commit it too.
                continue;
            }
            // An open that came in during the commit shares this writer and keeps it
            // registered.
            if writer.handles.load(Ordering::SeqCst) == 0 && self.is_registered(&t, writer) {
                t.writers.remove(&writer.ino);
            }
            return;
        }
    }

    fn is_registered(&self, t: &super::Tables, writer: &Writer) -> bool {
        t.writers
            .get(&writer.ino)
            .is_some_and(|w| std::ptr::eq(Arc::as_ptr(w), writer))
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
        if !self.is_registered(&t, writer) {
            return Ok(false);
        }
        let mut posix = *writer.posix.lock();
        let mut extra = self.open_headers(writer);
        change(&mut posix, &mut extra)?;
        super::xattr::check_fits(&posix.apply_to(&extra))?;
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

    /// Fails mutations on a read-only mount and names the filesystem cannot hold.
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

    pub(super) fn check_writable(&self, name: &str) -> FsResult<()> {
        self.check_changes_allowed()?;
        check_length(name)?;
        if !super::list::valid_name(name) {
            return Err(FsError::new(
                libc::EINVAL,
                format!("'{name}' cannot be a name"),
            ));
        }
        Ok(())
    }

    /// The path of a new entry `name` in `parent`, when it can be one.
    pub(super) fn new_path(&self, parent: Ino, name: &str) -> FsResult<String> {
        self.check_writable(name)?;
        let path = super::join(&self.path_of(parent)?, name);
        // A directory's marker is one byte longer than its name's key.
        self.names.check_key_length(&path, 1)?;
        Ok(path)
    }

    /// The mode a new file gets when `mode` carries no type bits.
    pub(super) fn file_mode_bits(mode: u32) -> u32 {
        if mode & S_IFMT == 0 {
            S_IFREG | mode
        } else {
            mode
        }
    }
}

/// `offset + len`: EFBIG past S3's 5 TiB object limit.
fn object_end(offset: u64, len: u64) -> FsResult<u64> {
    offset
        .checked_add(len)
        .filter(|end| *end <= crate::upload::MAX_OBJECT_SIZE)
        .ok_or_else(|| FsError::new(libc::EFBIG, "past S3's 5 TiB object limit"))
}

/// ENAMETOOLONG for a name longer than NAME_MAX.
pub(super) fn check_length(name: &str) -> FsResult<()> {
    if name.len() > super::list::NAME_MAX {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            format!("a name has at most {} bytes", super::list::NAME_MAX),
        ));
    }
    Ok(())
}

fn lost() -> FsError {
    FsError::new(
        libc::EIO,
        "the file's unsaved bytes were lost with a failed upload",
    )
}
