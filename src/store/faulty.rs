//! A failure-injecting wrapper around any `ObjectStore`, for unit tests of failure paths: fail
//! the next N calls of one operation (by its S3 name), hold them until released, or make them
//! panic (a bug).
//!
//! Non-obvious problems:
//! 1. Faults are armed per operation name ("HeadObject", "UploadPart", ...) and counted down
//!    atomically, so concurrent calls consume them one each, as they would on a real server.
//! 2. A held operation waits on a `Notify` until `release`: tests use it to open a race window
//!    deterministically (two opens of one file, both between their HEAD and their insert).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::{
    CompletedPart, CopySource, ListPage, ListRequest, ObjectMeta, ObjectStore, PutOptions,
    StoreError, StoreErrorKind, UserMetadata,
};

/// Counts down the armed calls of `op` in `armed`; true when this call was one of them.
fn take_one(armed: &Mutex<HashMap<&'static str, u64>>, op: &'static str) -> bool {
    match armed.lock().get_mut(op) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

/// An `ObjectStore` that passes calls to `inner` unless a fault is armed for them.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<HashMap<&'static str, (u64, StoreErrorKind)>>,
    held: Mutex<HashMap<&'static str, u64>>,
    /// Operations whose next calls panic (a bug, injected).
    panics: Mutex<HashMap<&'static str, u64>>,
    /// Calls seen, by operation.
    calls: Mutex<HashMap<&'static str, u64>>,
    release: Notify,
}

impl FaultyStore {
    /// Wraps `inner`, with nothing armed.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            faults: Mutex::default(),
            held: Mutex::default(),
            panics: Mutex::default(),
            calls: Mutex::default(),
            release: Notify::new(),
        }
    }

    /// The next `count` calls of `op` fail with `kind`.
    pub fn fail(&self, op: &'static str, count: u64, kind: StoreErrorKind) {
        self.faults.lock().insert(op, (count, kind));
    }

    /// The next `count` calls of `op` wait until `release`.
    pub fn hold(&self, op: &'static str, count: u64) {
        self.held.lock().insert(op, count);
    }

    /// The next `count` calls of `op` panic, as a bug in the code around them would.
    pub fn panic_on(&self, op: &'static str, count: u64) {
        self.panics.lock().insert(op, count);
    }

    /// Lets every held call go on.
    pub fn release(&self) {
        self.held.lock().clear();
        self.release.notify_waiters();
    }

    /// How many calls of `op` were made.
    pub fn calls(&self, op: &'static str) -> u64 {
        self.calls.lock().get(op).copied().unwrap_or(0)
    }

    async fn enter(&self, op: &'static str) -> Result<(), StoreError> {
        *self.calls.lock().entry(op).or_default() += 1;
        if take_one(&self.held, op) {
            let released = self.release.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.held.lock().contains_key(op) {
                released.await;
            }
        }
        if take_one(&self.panics, op) {
            panic!("{op}: injected panic");
        }
        let mut faults = self.faults.lock();
        if let Some((n, kind)) = faults.get_mut(op) {
            if *n > 0 {
                *n -= 1;
                return Err(StoreError::new(*kind, format!("{op}: injected fault")));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn head_bucket(&self) -> Result<(), StoreError> {
        self.enter("HeadBucket").await?;
        self.inner.head_bucket().await
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.enter("HeadObject").await?;
        self.inner.head_object(key).await
    }

    async fn list_objects_v2(&self, request: &ListRequest) -> Result<ListPage, StoreError> {
        self.enter("ListObjectsV2").await?;
        self.inner.list_objects_v2(request).await
    }

    async fn get_object_range(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        self.enter("GetObject").await?;
        self.inner.get_object_range(key, etag, range).await
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
    ) -> Result<String, StoreError> {
        self.enter("PutObject").await?;
        self.inner.put_object(key, body, options).await
    }

    async fn create_multipart_upload(
        &self,
        key: &str,
        metadata: &UserMetadata,
        content_type: Option<&str>,
        checksummed: bool,
    ) -> Result<String, StoreError> {
        self.enter("CreateMultipartUpload").await?;
        self.inner
            .create_multipart_upload(key, metadata, content_type, checksummed)
            .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StoreError> {
        self.enter("UploadPart").await?;
        self.inner.upload_part(key, upload_id, number, body).await
    }

    fn sorted_listings(&self) -> bool {
        self.inner.sorted_listings()
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: CopySource<'_>,
        range: std::ops::Range<u64>,
    ) -> Result<CompletedPart, StoreError> {
        self.enter("UploadPartCopy").await?;
        self.inner
            .upload_part_copy(key, upload_id, number, source, range)
            .await
    }

    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_none_match: bool,
    ) -> Result<String, StoreError> {
        self.enter("CompleteMultipartUpload").await?;
        self.inner
            .complete_multipart_upload(key, upload_id, parts, if_none_match)
            .await
    }

    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.enter("AbortMultipartUpload").await?;
        self.inner.abort_multipart_upload(key, upload_id).await
    }

    async fn copy_object(
        &self,
        source: CopySource<'_>,
        key: &str,
        replace: Option<(&UserMetadata, Option<&str>)>,
    ) -> Result<String, StoreError> {
        self.enter("CopyObject").await?;
        self.inner.copy_object(source, key, replace).await
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.enter("DeleteObject").await?;
        self.inner.delete_object(key).await
    }
}
