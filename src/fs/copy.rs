//! Server-side copies: renames and header changes of objects, a multipart copy above
//! CopyObject's limit.
//!
//! Non-obvious problems:
//! 1. S3 changes headers only by copying an object (onto itself, REPLACE directive), which
//!    drops the standard headers (Cache-Control, Content-Disposition, ...) unless they are
//!    sent again: the source's, read with a HEAD, go with every copy.
//! 2. CopyObject takes objects up to 5 GiB; above `limit` the copy is a multipart upload of
//!    `UploadPartCopy` parts, four at a time, aborted in the background if one fails.
//! 3. A `dir/` marker is copied like any object, but some servers (SeaweedFS) refuse to copy
//!    markers and an implicit directory has none: then it is written anew.
//! 4. The store bounds each copy attempt by the bytes it copies (`s3.rs`), not by the deadline
//!    of a small request.
//! 5. A directory is every key under it, all copied before any is deleted, so a crash midway
//!    leaves both names, never neither; `TREE_CONCURRENCY` at a time.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::names::Names;
use super::namespace::DIRECTORY_TYPE;
use super::posix::Posix;
use crate::error::{FsError, FsResult};
use crate::store::{
    CopySource, ListRequest, ListStart, ObjectMeta, ObjectStore, PutOptions, StandardHeaders,
    StoreError, StoreErrorKind, UserMetadata,
};
use crate::upload::{abort_with_retries, PendingAbort};

/// CopyObject's limit; larger objects are copied in parts.
pub const COPY_LIMIT: u64 = 5 << 30;
/// Part size of a multipart copy: 10,000 of them cover S3's 5 TiB object limit.
const COPY_PART: u64 = 512 << 20;

/// Objects copied or deleted at once when a directory is renamed.
const TREE_CONCURRENCY: usize = 16;

/// Copies objects within the bucket.
#[derive(Debug, Clone)]
pub(super) struct Copier {
    store: Arc<dyn ObjectStore>,
    names: Names,
    /// Objects above this size are copied in parts (`None`: CopyObject's 5 GiB).
    copy_limit: Option<u64>,
    /// Where the aborts of failed multipart copies run.
    tasks: tokio_util::task::TaskTracker,
}

impl Copier {
    /// Copies through `store`; `copy_limit` overrides CopyObject's limit (tests).
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        names: Names,
        copy_limit: Option<u64>,
        tasks: tokio_util::task::TaskTracker,
    ) -> Self {
        Self {
            store,
            names,
            copy_limit,
            tasks,
        }
    }

    /// Server-side copy of `source` to `key`; headers replaced when given.
    pub(super) async fn copy(
        &self,
        source: CopySource<'_>,
        key: &str,
        replace: Option<(&UserMetadata, Option<&str>)>,
    ) -> Result<String, StoreError> {
        let size = source.size;
        if source.key.ends_with('/') {
            // A `dir/` marker is copied like any object (its other headers stay); where there
            // is none (an implicit directory) or the server refuses to copy markers
            // (SeaweedFS), it is written anew.
            match self.store.copy_object(source, key, replace).await {
                Err(e) if e.kind == StoreErrorKind::NotFound => {}
                copied => return copied,
            }
            let (metadata, _) = self.copied_headers(source, replace).await?;
            let options = PutOptions {
                metadata,
                content_type: Some(DIRECTORY_TYPE.to_string()),
                if_none_match: false,
            };
            return self.store.put_object(key, Bytes::new(), &options).await;
        }
        if size <= self.limit() {
            return self.store.copy_object(source, key, replace).await;
        }
        let (metadata, content_type) = self.copied_headers(source, replace).await?;
        let id = self
            .store
            .create_multipart_upload(key, &metadata, content_type.as_deref(), false)
            .await?;
        let part = self.part_size(size);
        let ranges: Vec<(i32, std::ops::Range<u64>)> = (0..size.div_ceil(part))
            .map(|i| (i as i32 + 1, i * part..((i + 1) * part).min(size)))
            .collect();
        let result = stream::iter(ranges)
            .map(|(number, range)| {
                let id = id.clone();
                async move {
                    self.store
                        .upload_part_copy(key, &id, number, source, range)
                        .await
                }
            })
            .buffered(4)
            .try_collect::<Vec<_>>()
            .await;
        let result = match result {
            Ok(parts) => {
                self.store
                    .complete_multipart_upload(key, &id, &parts, false)
                    .await
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            let pending = PendingAbort {
                key: key.to_string(),
                upload_id: id,
            };
            self.tasks
                .spawn(abort_with_retries(Arc::clone(&self.store), pending));
        }
        result
    }

    /// The headers a copy gets: `replace` when given, else the source's (one HEAD).
    async fn copied_headers(
        &self,
        source: CopySource<'_>,
        replace: Option<(&UserMetadata, Option<&str>)>,
    ) -> Result<(UserMetadata, Option<String>), StoreError> {
        if let Some((metadata, content_type)) = replace {
            return Ok((metadata.clone(), content_type.map(str::to_string)));
        }
        let head = self.store.head_object(source.key).await?;
        Ok(head
            .map(|m| (m.metadata.unwrap_or_default(), m.content_type))
            .unwrap_or_default())
    }

    fn limit(&self) -> u64 {
        self.copy_limit.unwrap_or(COPY_LIMIT)
    }

    fn part_size(&self, size: u64) -> u64 {
        let part = if self.copy_limit.is_some() {
            self.limit()
        } else {
            COPY_PART
        };
        part.max(size.div_ceil(10_000))
    }

    /// The object or marker behind `path` with its headers, read with a HEAD when the cached
    /// one came from a listing.
    pub(super) async fn with_headers(
        &self,
        key: &str,
        meta: Option<ObjectMeta>,
    ) -> FsResult<Option<ObjectMeta>> {
        match meta {
            Some(m) if m.metadata.is_some() => Ok(Some(m)),
            _ => Ok(self.store.head_object(key).await?),
        }
    }

    /// Copies `meta` (headers read) to `new_key` and deletes it; returns the moved object.
    pub(super) async fn move_object(
        &self,
        meta: ObjectMeta,
        new_key: &str,
    ) -> FsResult<ObjectMeta> {
        let source = CopySource {
            key: &meta.key,
            etag: &meta.etag,
            size: meta.size,
            headers: &meta.headers,
        };
        // A rename changes the node's status: its ctime moves (headers otherwise kept).
        let moved = Posix {
            ctime: Some(SystemTime::now()),
            ..Posix::default()
        };
        let headers = moved.apply_to(meta.metadata.as_ref().unwrap_or(&Default::default()));
        // The type guessed from the old name follows the name; a type set otherwise stays.
        let content_type = match &meta.content_type {
            Some(t) if *t != self.names.guess_type(&meta.key) => t.clone(),
            _ => self.names.guess_type(new_key),
        };
        let replace = (&headers, Some(content_type.as_str()));
        let etag = self.copy(source, new_key, Some(replace)).await?;
        self.store.delete_object(&meta.key).await?;
        Ok(ObjectMeta {
            key: new_key.to_string(),
            etag,
            metadata: Some(headers),
            content_type: Some(content_type),
            ..meta
        })
    }

    /// Copies every key under `old_prefix` (a directory's, `dir/`) to `new_prefix`, then
    /// deletes the originals (see 5.). An empty target directory's marker simply stays: it is
    /// the moved directory's marker now.
    pub(super) async fn move_tree(&self, old_prefix: &str, new_prefix: &str) -> FsResult<()> {
        let objects = self.list_all(old_prefix).await?;
        stream::iter(objects.iter().map(Ok::<_, FsError>))
            .try_for_each_concurrent(TREE_CONCURRENCY, |o| {
                let new_key = format!("{new_prefix}{}", &o.key[old_prefix.len()..]);
                async move {
                    // Copied with their headers (COPY): none need sending again.
                    let source = CopySource {
                        key: &o.key,
                        etag: &o.etag,
                        size: o.size,
                        headers: &StandardHeaders::NONE,
                    };
                    self.copy(source, &new_key, None).await?;
                    Ok(())
                }
            })
            .await?;
        stream::iter(objects.iter().map(Ok::<_, FsError>))
            .try_for_each_concurrent(TREE_CONCURRENCY, |o| async move {
                self.store.delete_object(&o.key).await?;
                Ok(())
            })
            .await?;
        // Some servers (SeaweedFS) keep a folder for every prefix that once held keys and go on
        // listing it: delete the old directory prefixes too, deepest first (a no-op on S3).
        let mut dirs: Vec<&str> = objects
            .iter()
            .flat_map(|o| {
                o.key[old_prefix.len()..]
                    .match_indices('/')
                    .map(|(i, _)| &o.key[..old_prefix.len() + i + 1])
            })
            .chain([old_prefix])
            .collect();
        dirs.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        dirs.dedup();
        for dir in dirs {
            self.store.delete_object(dir).await?;
        }
        if objects.is_empty() {
            // An empty directory known only to this mount still gets its marker at the new name.
            let options = PutOptions {
                content_type: Some(DIRECTORY_TYPE.to_string()),
                ..PutOptions::default()
            };
            self.store
                .put_object(new_prefix, Bytes::new(), &options)
                .await?;
        }
        Ok(())
    }

    /// Every object under `prefix`, no delimiter.
    pub(super) async fn list_all(&self, prefix: &str) -> FsResult<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut start = ListStart::Beginning;
        loop {
            let request = ListRequest {
                prefix: prefix.to_string(),
                delimiter: None,
                start,
                max_keys: super::list::PAGE_SIZE,
            };
            let page = self.store.list_objects_v2(&request).await?;
            let full = page.objects.len() >= super::list::PAGE_SIZE as usize;
            let last = page.objects.last().map(|o| o.key.clone());
            out.extend(page.objects);
            start = match (page.next_continuation_token, last) {
                (Some(token), _) => ListStart::Token(token),
                (None, Some(last)) if full => ListStart::After(last),
                _ => break,
            };
        }
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }
}
