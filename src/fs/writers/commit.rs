//! Commits: what changed goes to the store at close and fsync, lands under the file's current
//! name with its current headers, and is recorded (see writers/mod.rs, 3., 4., 5., 11.-13.).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::content::lost;
use super::{commit_error, Content, WriteState, Writer, Writers};
use crate::error::FsResult;
use crate::fs::Kind;
use crate::store::{
    CopySource, ObjectMeta, StandardHeaders, StoreError, StoreErrorKind, UserMetadata,
};
use crate::upload::staging::StagingFile;
use crate::upload::{Upload, Uploaded};

impl Writers {
    /// Commit point of handle `fh` as its opener's close: uploads what changed, returns its
    /// error.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let file = self.handles.get(fh)?;
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
        let file = self.handles.get(fh)?;
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
        let file = self.handles.get(fh)?;
        let Some(writer) = &file.writer else {
            return Ok(());
        };
        let mut st = writer.state.lock().await;
        st.dirty |= st.unpublished;
        self.commit_locked(writer, &mut st).await
    }

    /// Uploads the writer's content (or just its changed headers) if anything changed.
    pub(in crate::fs) async fn commit(&self, writer: &Writer) -> FsResult<()> {
        let mut st = writer.state.lock().await;
        self.commit_locked(writer, &mut st).await
    }

    pub(super) async fn commit_locked(&self, writer: &Writer, st: &mut WriteState) -> FsResult<()> {
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
            // Unlinked meanwhile (mod.rs, 13.): what is stored under the name now, this commit's
            // version or the one before it, stays for the handles and goes at the last close.
            if let Some((key, etag)) = st.stored.clone() {
                self.deferred
                    .defer(writer.ino, key, etag, self.attr(writer));
            }
        }
        match &result {
            Err(e) if !st.reported => {
                st.reported = true;
                self.failures
                    .lock()
                    .record(writer.path(), e.message.clone());
            }
            Err(_) => {}
            Ok(()) => st.reported = false,
        }
        result
    }

    pub(super) async fn commit_now(&self, writer: &Writer, st: &mut WriteState) -> FsResult<()> {
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
    pub(super) async fn transfer(
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
                self.copier
                    .copy(source, key, Some((metadata, Some(&content_type))))
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
    pub(super) async fn settle(
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
        // takes, mod.rs 13.).
        let path = writer.path();
        let mut t = self.tables.lock();
        if !writer.unlinked.load(Ordering::SeqCst) {
            t.record(&self.attrs, &path, Kind::File, Some(meta));
        }
        Ok(())
    }

    /// The version a renamed writer committed under its old name, now superseded by the one at
    /// its new name: deleted unless another client or file replaced it meanwhile (ETag).
    pub(super) async fn remove_moved(&self, key: &str, etag: &str) {
        if let Err(e) = crate::fs::delete_version(self.store.as_ref(), key, etag).await {
            tracing::warn!(key, "could not remove the old name of a renamed file: {e}");
        }
    }

    /// A rename of a file open for writing (mod.rs, 11.): returns the moved object when its
    /// committed version was moved now and nothing is pending (`None`: the writer answers for
    /// the new name until its next commit).
    pub(in crate::fs) async fn rename(
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
            Some(meta) if crate::fs::same_etag(&meta.etag, &etag) => {
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
    pub(super) async fn upload_staged(
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

    /// At shutdown: commits every file still open for writing, all at once; one that fails is
    /// aborted. Returns how many failed.
    pub(in crate::fs) async fn commit_all(&self) -> usize {
        let writers = self.tables.lock().writers.all();
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
}
