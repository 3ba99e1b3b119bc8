//! An in-memory `ObjectStore` for unit tests of logic: paging, lookups, caching, read-ahead.
//!
//! Non-obvious problems:
//! 1. Listing must follow S3's rules exactly (keys in byte order, common prefixes rolled up at the
//!    first delimiter after the prefix, `max_keys` counting keys and prefixes together), or the
//!    tests of paging prove nothing about a real server.
//! 2. Request counters let tests assert costs ("ls of N entries is ceil(N/1000) LISTs").

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CompletedPart, CopySource, ListPage, ListRequest, ListStart, ObjectMeta, ObjectStore,
    PutOptions, StoreError, StoreErrorKind, UserMetadata,
};

/// Requests served so far, per S3 call.
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// HeadObject calls.
    pub head: AtomicU64,
    /// ListObjectsV2 calls.
    pub list: AtomicU64,
    /// GetObject calls.
    pub get: AtomicU64,
    /// Bytes returned by GetObject calls.
    pub get_bytes: AtomicU64,
    /// PutObject calls.
    pub put: AtomicU64,
    /// UploadPart and UploadPartCopy calls.
    pub part: AtomicU64,
    /// CopyObject calls.
    pub copy: AtomicU64,
    /// DeleteObject calls.
    pub delete: AtomicU64,
}

#[derive(Debug, Clone)]
struct Stored {
    body: Bytes,
    etag: String,
    metadata: UserMetadata,
    content_type: Option<String>,
}

/// What S3 answers for an object stored without a Content-Type.
const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";

#[derive(Debug, Default)]
struct PendingUpload {
    key: String,
    metadata: UserMetadata,
    content_type: Option<String>,
    parts: BTreeMap<i32, (Bytes, String)>,
}

/// A bucket held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Stored>>,
    uploads: Mutex<HashMap<String, PendingUpload>>,
    version: AtomicU64,
    /// Request counters.
    pub counts: RequestCounts,
    /// The next this many UploadPart calls fail with `Unreachable`, as a dead server's would.
    pub fail_parts: AtomicU64,
    /// List in no particular order, as an S3 Express directory bucket does.
    unsorted: bool,
}

impl MemoryStore {
    /// An empty bucket.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty bucket that lists like an S3 Express directory bucket: each listing's entries
    /// (keys and common prefixes) in a scrambled but stable order, paged by continuation
    /// tokens only.
    pub fn unsorted() -> Self {
        Self {
            unsorted: true,
            ..Self::default()
        }
    }

    /// Puts `body` under `key`, with a fresh ETag.
    pub fn put(&self, key: &str, body: impl Into<Bytes>) {
        self.store(key, body.into(), UserMetadata::new(), None);
    }

    fn store(
        &self,
        key: &str,
        body: Bytes,
        metadata: UserMetadata,
        content_type: Option<String>,
    ) -> String {
        let n = self.version.fetch_add(1, Ordering::Relaxed);
        let etag = format!("\"etag-{n}\"");
        let stored = Stored {
            body,
            etag: etag.clone(),
            metadata,
            content_type,
        };
        self.objects.lock().insert(key.to_string(), stored);
        etag
    }

    /// The body and user metadata under `key`.
    pub fn object(&self, key: &str) -> Option<(Bytes, UserMetadata)> {
        let objects = self.objects.lock();
        objects
            .get(key)
            .map(|o| (o.body.clone(), o.metadata.clone()))
    }

    /// Multipart uploads begun and neither completed nor aborted.
    pub fn pending_uploads(&self) -> usize {
        self.uploads.lock().len()
    }

    /// What a HEAD (`headers`) or a listing says of `o`.
    fn meta(key: &str, o: &Stored, headers: bool) -> ObjectMeta {
        let content_type = o.content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE);
        ObjectMeta {
            key: key.to_string(),
            size: o.body.len() as u64,
            etag: o.etag.clone(),
            last_modified: SystemTime::UNIX_EPOCH,
            metadata: headers.then(|| o.metadata.clone()),
            content_type: headers.then(|| content_type.to_string()),
            headers: Default::default(),
        }
    }

    fn source(&self, source: CopySource<'_>) -> Result<Stored, StoreError> {
        let objects = self.objects.lock();
        let o = objects.get(source.key).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::NotFound,
                format!("NoSuchKey: {}", source.key),
            )
        })?;
        if o.etag != source.etag {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                format!("PreconditionFailed: {}", source.key),
            ));
        }
        Ok(o.clone())
    }

    fn exists(&self, key: &str) -> bool {
        self.objects.lock().contains_key(key)
    }

    /// A listing page in scrambled order (see `unsorted`); the token is the next entry's index.
    fn list_unsorted(&self, request: &ListRequest) -> Result<ListPage, StoreError> {
        let objects = self.objects.lock();
        let mut entries: Vec<(String, Option<ObjectMeta>)> = Vec::new();
        for (key, object) in objects.range(request.prefix.clone()..) {
            if !key.starts_with(&request.prefix) {
                break;
            }
            match rolled_up(request, key) {
                Some(entry) => {
                    if entries.last().map(|e| &e.0) != Some(&entry) {
                        entries.push((entry, None));
                    }
                }
                None => entries.push((key.clone(), Some(Self::meta(key, object, false)))),
            }
        }
        // A stable scramble: by a hash of the entry (FNV-1a).
        let scramble = |s: &str| {
            s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        };
        entries.sort_by_key(|(entry, _)| scramble(entry));
        let from = match &request.start {
            ListStart::Beginning => 0,
            ListStart::Token(t) => t.parse::<usize>().map_err(|_| {
                StoreError::new(StoreErrorKind::Other, format!("bad continuation token {t}"))
            })?,
            ListStart::After(_) => {
                return Err(StoreError::new(
                    StoreErrorKind::Other,
                    "InvalidArgument: directory buckets take no StartAfter",
                ))
            }
        };
        let to = (from + request.max_keys.max(1) as usize).min(entries.len());
        let mut page = ListPage::default();
        for (entry, meta) in entries.get(from..to).unwrap_or_default() {
            match meta {
                Some(meta) => page.objects.push(meta.clone()),
                None => page.common_prefixes.push(entry.clone()),
            }
        }
        if to < entries.len() {
            page.next_continuation_token = Some(to.to_string());
        }
        Ok(page)
    }

    fn add_part(
        &self,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StoreError> {
        let etag = format!("\"part-{number}-{}\"", body.len());
        let mut uploads = self.uploads.lock();
        let upload = uploads.get_mut(upload_id).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::NotFound,
                format!("NoSuchUpload: {upload_id}"),
            )
        })?;
        upload.parts.insert(number, (body, etag.clone()));
        Ok(CompletedPart {
            number,
            etag,
            checksum: None,
        })
    }
}

/// The common prefix `key` rolls up into under `request`'s delimiter, if any.
fn rolled_up(request: &ListRequest, key: &str) -> Option<String> {
    let rest = &key[request.prefix.len()..];
    let delimiter = request.delimiter.as_deref()?;
    rest.find(delimiter)
        .map(|i| format!("{}{}", request.prefix, &rest[..i + delimiter.len()]))
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn head_bucket(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.counts.head.fetch_add(1, Ordering::Relaxed);
        let objects = self.objects.lock();
        Ok(objects.get(key).map(|o| Self::meta(key, o, true)))
    }

    fn sorted_listings(&self) -> bool {
        !self.unsorted
    }

    async fn list_objects_v2(&self, request: &ListRequest) -> Result<ListPage, StoreError> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        if self.unsorted {
            return self.list_unsorted(request);
        }
        let objects = self.objects.lock();
        let after = match &request.start {
            ListStart::Beginning => None,
            ListStart::Token(t) | ListStart::After(t) => Some(t.clone()),
        };
        let mut page = ListPage::default();
        let mut count = 0;
        let mut last: Option<String> = None;
        for (key, object) in objects.range(request.prefix.clone()..) {
            if !key.starts_with(&request.prefix) {
                break;
            }
            let common = rolled_up(request, key);
            let is_common = common.is_some();
            let entry = common.unwrap_or_else(|| key.clone());
            if after.as_ref().is_some_and(|a| entry.as_str() <= a.as_str()) {
                continue;
            }
            if last.as_ref() == Some(&entry) {
                continue;
            }
            if count == request.max_keys {
                page.next_continuation_token = last.clone();
                break;
            }
            count += 1;
            if is_common {
                page.common_prefixes.push(entry.clone());
            } else {
                page.objects.push(Self::meta(key, object, false));
            }
            last = Some(entry);
        }
        Ok(page)
    }

    async fn get_object_range(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let objects = self.objects.lock();
        let Stored {
            body,
            etag: current,
            ..
        } = objects.get(key).ok_or_else(|| {
            StoreError::new(StoreErrorKind::NotFound, format!("NoSuchKey: {key}"))
        })?;
        if current != etag {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                format!("PreconditionFailed: {key}"),
            ));
        }
        let len = body.len() as u64;
        // As S3: a range that starts at or past the end (any range of an empty object) is 416.
        if range.start >= len {
            return Err(StoreError::new(
                StoreErrorKind::InvalidRange,
                "InvalidRange",
            ));
        }
        let end = range.end.min(len);
        let start = range.start.min(len);
        self.counts
            .get_bytes
            .fetch_add(end.saturating_sub(start), Ordering::Relaxed);
        Ok(body.slice(start as usize..end as usize))
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
    ) -> Result<String, StoreError> {
        self.counts.put.fetch_add(1, Ordering::Relaxed);
        if options.if_none_match && self.exists(key) {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                format!("PreconditionFailed: {key} exists"),
            ));
        }
        Ok(self.store(
            key,
            body,
            options.metadata.clone(),
            options.content_type.clone(),
        ))
    }

    async fn create_multipart_upload(
        &self,
        key: &str,
        metadata: &UserMetadata,
        content_type: Option<&str>,
        _checksummed: bool,
    ) -> Result<String, StoreError> {
        let id = format!("upload-{}", self.version.fetch_add(1, Ordering::Relaxed));
        let upload = PendingUpload {
            key: key.to_string(),
            metadata: metadata.clone(),
            content_type: content_type.map(str::to_string),
            parts: BTreeMap::new(),
        };
        self.uploads.lock().insert(id.clone(), upload);
        Ok(id)
    }

    async fn upload_part(
        &self,
        _key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StoreError> {
        self.counts.part.fetch_add(1, Ordering::Relaxed);
        let failing = self
            .fail_parts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(StoreError::new(
                StoreErrorKind::Unreachable,
                "UploadPart: connection refused (injected)",
            ));
        }
        self.add_part(upload_id, number, body)
    }

    async fn upload_part_copy(
        &self,
        _key: &str,
        upload_id: &str,
        number: i32,
        source: CopySource<'_>,
        range: std::ops::Range<u64>,
    ) -> Result<CompletedPart, StoreError> {
        self.counts.part.fetch_add(1, Ordering::Relaxed);
        let body = self.source(source)?.body;
        let end = range.end.min(body.len() as u64) as usize;
        self.add_part(upload_id, number, body.slice(range.start as usize..end))
    }

    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_none_match: bool,
    ) -> Result<String, StoreError> {
        if if_none_match && self.exists(key) {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                format!("PreconditionFailed: {key} exists"),
            ));
        }
        let upload = self.uploads.lock().remove(upload_id).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::NotFound,
                format!("NoSuchUpload: {upload_id}"),
            )
        })?;
        // As S3: parts listed in ascending order, each but the last at least 5 MiB.
        if parts.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                format!("InvalidPartOrder: {key}"),
            ));
        }
        let mut body = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let small = upload
                .parts
                .get(&part.number)
                .is_some_and(|(bytes, _)| (bytes.len() as u64) < crate::upload::MIN_PART_SIZE);
            if small && i + 1 < parts.len() {
                return Err(StoreError::new(
                    StoreErrorKind::Other,
                    format!("EntityTooSmall: part {} of {key}", part.number),
                ));
            }
            match upload.parts.get(&part.number) {
                Some((bytes, etag)) if *etag == part.etag => body.extend_from_slice(bytes),
                _ => {
                    return Err(StoreError::new(
                        StoreErrorKind::Other,
                        format!("InvalidPart: {} of {key}", part.number),
                    ))
                }
            }
        }
        debug_assert_eq!(upload.key, key);
        Ok(self.store(key, body.into(), upload.metadata, upload.content_type))
    }

    async fn abort_multipart_upload(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.uploads.lock().remove(upload_id);
        Ok(())
    }

    async fn copy_object(
        &self,
        source: CopySource<'_>,
        key: &str,
        replace: Option<(&UserMetadata, Option<&str>)>,
    ) -> Result<String, StoreError> {
        self.counts.copy.fetch_add(1, Ordering::Relaxed);
        let stored = self.source(source)?;
        // REPLACE sets both; a missing Content-Type falls back to the default, as on S3.
        let (metadata, content_type) = match replace {
            Some((m, t)) => (m.clone(), t.map(str::to_string)),
            None => (stored.metadata, stored.content_type),
        };
        Ok(self.store(key, stored.body, metadata, content_type))
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.counts.delete.fetch_add(1, Ordering::Relaxed);
        self.objects.lock().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        let store = MemoryStore::new();
        let broken = crate::store::contract::run_all(&store, "contract/").await;
        assert!(broken.is_empty(), "{broken:#?}");
    }
}
