//! The bytes of a file open for writing: writes into a stream or a staging file, reads
//! through the writer, truncation, and the step from a stream back to a staging file (see
//! writers/mod.rs, 1., 2. and 8.).

use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::{Content, WriteState, Writer, Writers};
use crate::cache::{ObjectId, ReadState};
use crate::error::{FsError, FsResult};
use crate::store::{ObjectMeta, UserMetadata};
use crate::upload::staging::StagingFile;
use crate::upload::Upload;

impl Writers {
    /// The content changed to `size` bytes: the next commit uploads it with a fresh mtime.
    pub(super) fn touched(&self, writer: &Writer, st: &mut WriteState, size: u64) {
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
    pub(super) fn new_upload(&self, key: &str, kept: Option<&str>) -> Upload {
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

    /// A stream whose parts left commits them first (mod.rs, 2.); then, like `stage`, the
    /// content becomes a staging file holding the same bytes.
    pub(super) async fn unstream(&self, writer: &Writer, st: &mut WriteState) -> FsResult<()> {
        if let Content::Stream(upload) = &st.content {
            if upload.started() {
                tracing::info!(path = %writer.path(), "going back in a file being streamed: committing what was written, then changing it in a staging copy");
                self.commit_locked(writer, st).await?;
            }
        }
        self.stage(st).await
    }

    /// Turns the content into a staging file holding the same bytes. On failure the content
    /// is left as it was (mod.rs, 8.).
    pub(super) async fn stage(&self, st: &mut WriteState) -> FsResult<()> {
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
    pub(super) async fn download(&self, meta: &ObjectMeta, file: &StagingFile) -> FsResult<()> {
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

    /// Writes `data` at `offset` through handle `fh`.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let writer = self.handles.writer(fh)?;
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
    pub(super) fn lose(&self, st: &mut WriteState, err: FsError) {
        if let Content::Stream(_) = &st.content {
            st.content = Content::Lost;
        }
        st.failed = Some(err);
    }

    /// Headers the next commit writes: the object's other headers plus mode, owner and times
    /// (mtime and ctime, unless set since, of the last change).
    pub(super) fn wanted_metadata(&self, writer: &Writer) -> UserMetadata {
        let mut posix = *writer.posix.lock();
        let modified = *writer.modified.lock();
        posix.mtime.get_or_insert(modified);
        posix.ctime.get_or_insert(modified);
        posix.apply_to(&writer.extra.lock())
    }

    /// Reads through a writer: from the staging copy, or (for its own handles) from the last
    /// committed object. `None` when the caller should read its own version instead.
    pub(in crate::fs) async fn read(
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
        let writer = self.handles.writer(fh)?;
        let end = object_end(offset, length)?;
        if end > writer.size.load(Ordering::SeqCst) {
            self.truncate(&writer, end).await?;
        }
        Ok(())
    }

    /// Sets the length of the file behind `writer`.
    pub(in crate::fs) async fn truncate(&self, writer: &Writer, len: u64) -> FsResult<()> {
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
}

/// `offset + len`: EFBIG past S3's 5 TiB object limit.
fn object_end(offset: u64, len: u64) -> FsResult<u64> {
    offset
        .checked_add(len)
        .filter(|end| *end <= crate::upload::MAX_OBJECT_SIZE)
        .ok_or_else(|| FsError::new(libc::EFBIG, "past S3's 5 TiB object limit"))
}

pub(super) fn lost() -> FsError {
    FsError::new(
        libc::EIO,
        "the file's unsaved bytes were lost with a failed upload",
    )
}
