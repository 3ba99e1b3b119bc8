//! Write buffers into objects: one PutObject for a small file, a multipart upload for a large
//! one, with parts uploaded while the application keeps writing.
//!
//! Non-obvious problems:
//! 1. Memory is bounded twice: each file has at most `concurrency` parts in flight, and every
//!    buffered byte of every file holds a permit of one shared `WriteBudget`. A writer that finds
//!    the budget spent waits (backpressure: its `write()` blocks) instead of growing.
//! 2. Permits are taken per write, not per part, so a thousand small files open at once hold
//!    only what they wrote. If the budget is held entirely by half-filled buffers of other files
//!    (more writers than budget / part size), nothing would ever free it: after `OVERDRAFT_WAIT`
//!    a writer with no part in flight goes ahead without permits and says so in the log.
//! 3. S3 allows 10,000 parts; parts double in size every 1,000 so that a file can reach 5 TiB
//!    (S3's object limit) while small files still use small parts. A part never grows past
//!    what the write budget can hold (else its writer would wait forever on permits it holds
//!    itself); a file past the last part gets EFBIG.
//! 6. Parts are reaped from a `JoinSet`, and CompleteMultipartUpload is sent only when parts
//!    1..n all succeeded: S3 accepts gaps in part numbers, so a lost part would otherwise
//!    silently drop bytes from the middle of the object.
//! 4. A file no larger than one part is one PutObject; the multipart upload starts only when
//!    the first part is full, so `If-None-Match` and metadata go with whichever request creates
//!    the object.
//! 5. A failed upload is aborted, never completed: no partial object appears under the name.
//! 8. A handover to a successor process (daemon/takeover.rs) pauses an upload: the parts in
//!    flight finish, and the upload id, the parts sent and the bytes not yet sent go to the
//!    successor, which goes on where this process stopped (`pause`, `resume`).
//! 7. Each upload counts its progress (bytes written and sent, parts done, the total once
//!    known) in atomics that `bucketfs status` reads through an `UploadRegistry` of weak
//!    references: a finished or dropped upload leaves the registry by itself. Bytes of a part
//!    under way count as the store hands them to the network (`store::counting_body`), so a
//!    slow link shows progress within an 8 MiB part; a retried part starts again from 0.

pub mod staging;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::store::{
    CompletedPart, ObjectStore, PutOptions, StoreError, StoreErrorKind, UserMetadata,
};

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's largest part count.
pub const MAX_PARTS: i32 = 10_000;
/// Parts per size step: part sizes double after every this many parts.
const PARTS_PER_STEP: i32 = 1_000;
/// S3's largest object.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;
/// How long a writer with nothing in flight waits for budget before it overdraws (see 2.).
const OVERDRAFT_WAIT: Duration = Duration::from_secs(5);

/// Size of part `number` (from 1) when the first part is `base` bytes, parts never larger
/// than `cap` (the write budget) nor than S3 allows.
pub fn part_size(base: u64, number: i32, cap: u64) -> u64 {
    let step = ((number.max(1) - 1) / PARTS_PER_STEP) as u32;
    let grown = base.saturating_mul(1 << step);
    grown.min(MAX_PART_SIZE).min(cap.max(base))
}

/// The largest object `MAX_PARTS` parts of the growing sizes reach from `base` under `cap`.
pub fn reach(base: u64, cap: u64) -> u64 {
    (1..=MAX_PARTS).map(|n| part_size(base, n, cap)).sum()
}

/// Upload tuning shared by every file.
#[derive(Debug, Clone)]
pub struct UploadTuning {
    /// Size of the first parts.
    pub part_size: u64,
    /// Parts in flight per file.
    pub concurrency: usize,
}

/// The memory all write buffers share, in bytes.
#[derive(Debug, Clone)]
pub struct WriteBudget {
    permits: Arc<Semaphore>,
    total: u64,
}

impl WriteBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        let bytes = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(bytes)),
            total: bytes as u64,
        }
    }

    /// Bytes not held by any buffer.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// The whole budget: no one part may be larger.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// What a finished upload produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The object's ETag.
    pub etag: String,
    /// Its size.
    pub size: u64,
    /// The metadata it was created with.
    pub metadata: UserMetadata,
}

/// How far one upload is, shared with `bucketfs status`.
#[derive(Debug)]
pub struct Progress {
    /// The object's key (moved by a rename before the upload started).
    key: Mutex<String>,
    /// When the upload was created.
    pub started: Instant,
    written: AtomicU64,
    /// Bytes of parts acknowledged, and the counters of the requests under way (bytes of their
    /// bodies handed to the network): one lock, so that a part moving from one to the other
    /// never shows twice or not at all.
    sent: Mutex<Sending>,
    parts: AtomicU64,
    /// The object's size once the upload is finishing (`UNKNOWN` before).
    total: AtomicU64,
    /// The multipart upload under way, for a successor to abort after a crash.
    multipart: Mutex<Option<String>>,
}

/// See `Progress::sent`.
#[derive(Debug, Default)]
struct Sending {
    acknowledged: u64,
    under_way: Vec<Arc<AtomicU64>>,
}

/// What a `Progress` says at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// The object's key.
    pub key: String,
    /// Bytes the application wrote.
    pub written: u64,
    /// Bytes sent: those of acknowledged parts, and those handed to the network of the parts
    /// under way (at most `written`).
    pub sent: u64,
    /// Parts the server acknowledged.
    pub parts: u64,
    /// The object's size, once the upload is finishing.
    pub total: Option<u64>,
    /// Since the upload was created.
    pub elapsed: Duration,
}

/// A total not known yet.
const UNKNOWN: u64 = u64::MAX;

impl Progress {
    fn new(key: &str) -> Self {
        Self {
            key: Mutex::new(key.to_owned()),
            started: Instant::now(),
            written: AtomicU64::new(0),
            sent: Mutex::new(Sending::default()),
            parts: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN),
            multipart: Mutex::new(None),
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let total = self.total.load(Ordering::Relaxed);
        let written = self.written.load(Ordering::Relaxed);
        let sent = {
            let s = self.sent.lock();
            let under_way: u64 = s.under_way.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            s.acknowledged + under_way
        };
        ProgressSnapshot {
            key: self.key.lock().clone(),
            written,
            sent: sent.min(written),
            parts: self.parts.load(Ordering::Relaxed),
            total: (total != UNKNOWN).then_some(total),
            elapsed: self.started.elapsed(),
        }
    }

    /// Runs `call`, a store call sending `len` bytes, counting its body as it goes out; once
    /// it succeeds, the bytes count as acknowledged.
    async fn sending<T>(
        &self,
        len: u64,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let counter = Arc::new(AtomicU64::new(0));
        self.sent.lock().under_way.push(Arc::clone(&counter));
        let result = crate::store::counting_body(Arc::clone(&counter), call).await;
        let mut s = self.sent.lock();
        s.under_way.retain(|c| !Arc::ptr_eq(c, &counter));
        if result.is_ok() {
            s.acknowledged += len;
        }
        result
    }
}

/// The uploads of one mount that are still alive, for `bucketfs status`.
#[derive(Debug, Clone, Default)]
pub struct UploadRegistry {
    live: Arc<Mutex<Vec<Weak<Progress>>>>,
}

impl UploadRegistry {
    /// Every live upload that has bytes to send, oldest first.
    pub fn snapshot(&self) -> Vec<ProgressSnapshot> {
        let mut live = self.live.lock();
        live.retain(|w| w.strong_count() > 0);
        live.iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.snapshot())
            .filter(|p| p.written > 0 || p.total.is_some())
            .collect()
    }

    /// The multipart uploads under way: what a daemon started after a crash of this one
    /// aborts (daemon/fdstore.rs).
    pub fn multipart_uploads(&self) -> Vec<PendingAbort> {
        let live = self.live.lock();
        live.iter()
            .filter_map(Weak::upgrade)
            .filter_map(|p| {
                let upload_id = p.multipart.lock().clone()?;
                Some(PendingAbort {
                    key: p.key.lock().clone(),
                    upload_id,
                })
            })
            .collect()
    }

    fn add(&self, progress: &Arc<Progress>) {
        let mut live = self.live.lock();
        // Dead entries go now and then, so the list stays as long as the uploads alive.
        if live.len() >= 64 && live.len().is_power_of_two() {
            live.retain(|w| w.strong_count() > 0);
        }
        live.push(Arc::downgrade(progress));
    }
}

/// One object being written front to back.
#[derive(Debug)]
pub struct Upload {
    progress: Arc<Progress>,
    store: Arc<dyn ObjectStore>,
    key: String,
    tuning: UploadTuning,
    budget: WriteBudget,
    /// Where aborts of a dropped upload run, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Content-Type of the object (the server's default when `None`).
    content_type: Option<String>,
    buffer: Vec<u8>,
    held: Option<OwnedSemaphorePermit>,
    upload_id: Option<String>,
    /// Metadata sent with CreateMultipartUpload.
    sent: Option<UserMetadata>,
    in_flight: JoinSet<Result<CompletedPart, StoreError>>,
    done: Vec<CompletedPart>,
    next_part: i32,
    len: u64,
    failed: Option<StoreError>,
}

/// An upload as a successor process takes it over: the parts sent, the bytes not yet sent.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UploadState {
    key: String,
    content_type: Option<String>,
    upload_id: Option<String>,
    sent: Option<UserMetadata>,
    done: Vec<CompletedPart>,
    next_part: i32,
    len: u64,
    /// The bytes not yet sent, base64.
    buffer: String,
    failed: Option<String>,
}

/// Handle for aborting a multipart upload after its `Upload` is gone.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PendingAbort {
    /// The key the upload was for.
    pub key: String,
    /// Its upload id.
    pub upload_id: String,
}

impl Upload {
    /// An empty upload to `key`; an abandoned multipart upload is aborted on `tasks`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: String,
        tuning: UploadTuning,
        budget: WriteBudget,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            progress: Arc::new(Progress::new(&key)),
            store,
            key,
            tuning,
            budget,
            tasks,
            content_type: None,
            buffer: Vec::new(),
            held: None,
            upload_id: None,
            sent: None,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            next_part: 1,
            len: 0,
            failed: None,
        }
    }

    /// The same upload, storing the object with this Content-Type.
    pub fn with_content_type(mut self, content_type: String) -> Self {
        self.content_type = Some(content_type);
        self
    }

    /// The same upload, listed in `registry` while it lives.
    pub fn tracked(self, registry: &UploadRegistry) -> Self {
        registry.add(&self.progress);
        self
    }

    /// The key the object will be stored at.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Stores the object at `key` instead, when no part has left yet (a rename of a file
    /// being written); false once the multipart upload exists under the old key.
    pub fn retarget(&mut self, key: &str) -> bool {
        if self.started() {
            return false;
        }
        self.key = key.to_string();
        *self.progress.key.lock() = self.key.clone();
        true
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once a part has left the buffer: the bytes before the buffer are no longer held.
    pub fn started(&self) -> bool {
        self.upload_id.is_some()
    }

    /// The bytes written, when no part has been uploaded yet (to copy them elsewhere).
    pub fn buffer(&self) -> Option<&[u8]> {
        (!self.started()).then_some(&self.buffer[..])
    }

    /// Size of the part being filled now.
    fn current_part_size(&self) -> u64 {
        part_size(self.tuning.part_size, self.next_part, self.budget.total())
    }

    /// Appends `data`, uploading full parts; waits while the budget or the file's in-flight
    /// limit is reached. `metadata` goes with CreateMultipartUpload if this write starts one.
    pub async fn write(
        &mut self,
        mut data: &[u8],
        metadata: &UserMetadata,
    ) -> Result<(), StoreError> {
        self.check_failed()?;
        while !data.is_empty() {
            if self.next_part > MAX_PARTS {
                return Err(StoreError::new(
                    StoreErrorKind::TooLarge,
                    format!(
                        "{}: past the {} bytes that S3's 10,000 parts hold at this part size",
                        self.key, self.len
                    ),
                ));
            }
            let room = self.current_part_size() as usize - self.buffer.len();
            let take = room.min(data.len()).min(u32::MAX as usize);
            self.reserve(take).await;
            if self.buffer.capacity() == 0 {
                // Reserved lazily: untouched capacity costs no resident memory.
                self.buffer = Vec::with_capacity(room);
            }
            self.buffer.extend_from_slice(&data[..take]);
            self.len += take as u64;
            self.progress.written.store(self.len, Ordering::Relaxed);
            data = &data[take..];
            if self.buffer.len() as u64 == self.current_part_size() {
                self.send_part(metadata).await?;
            }
        }
        Ok(())
    }

    async fn reserve(&mut self, bytes: usize) {
        let sem = Arc::clone(&self.budget.permits);
        let n = bytes as u32;
        let permit = if self.in_flight.is_empty() {
            match tokio::time::timeout(OVERDRAFT_WAIT, sem.acquire_many_owned(n)).await {
                Ok(p) => p.ok(),
                Err(_) => {
                    tracing::warn!(
                        key = %self.key,
                        "write budget spent by other files' buffers; going over it by {bytes} bytes"
                    );
                    None
                }
            }
        } else {
            sem.acquire_many_owned(n).await.ok()
        };
        if let Some(permit) = permit {
            match &mut self.held {
                Some(held) => held.merge(permit),
                None => self.held = Some(permit),
            }
        }
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Collects finished parts without waiting; records the first failure.
    fn reap(&mut self) {
        while let Some(result) = self.in_flight.try_join_next() {
            self.record(result);
        }
    }

    fn record(
        &mut self,
        result: Result<Result<CompletedPart, StoreError>, tokio::task::JoinError>,
    ) {
        match result {
            Ok(Ok(part)) => self.done.push(part),
            Ok(Err(e)) => {
                self.failed.get_or_insert(e);
            }
            Err(e) => {
                self.failed.get_or_insert(StoreError::new(
                    StoreErrorKind::Other,
                    format!("part upload task: {e}"),
                ));
            }
        }
    }

    async fn wait_one(&mut self) {
        if let Some(result) = self.in_flight.join_next().await {
            self.record(result);
        }
    }

    /// Sorts the finished parts; an error unless they are exactly 1..next_part.
    fn check_contiguous(&mut self) -> Result<(), StoreError> {
        self.done.sort_by_key(|p| p.number);
        let contiguous = self.done.len() == (self.next_part - 1) as usize
            && self
                .done
                .iter()
                .zip(1..)
                .all(|(part, number)| part.number == number);
        if !contiguous {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                format!(
                    "{}: {} of {} parts uploaded; not completing an object with a gap",
                    self.key,
                    self.done.len(),
                    self.next_part - 1
                ),
            ));
        }
        Ok(())
    }

    /// Uploads the buffer as the next part, starting the multipart upload if needed.
    async fn send_part(&mut self, metadata: &UserMetadata) -> Result<(), StoreError> {
        if self.upload_id.is_none() {
            let id = self
                .store
                .create_multipart_upload(&self.key, metadata, self.content_type.as_deref(), true)
                .await?;
            *self.progress.multipart.lock() = Some(id.clone());
            self.upload_id = Some(id);
            self.sent = Some(metadata.clone());
        }
        self.reap();
        while self.in_flight.len() >= self.tuning.concurrency.max(1) {
            self.wait_one().await;
        }
        self.check_failed()?;
        let body = Bytes::from(std::mem::take(&mut self.buffer));
        let permit = self.held.take();
        let number = self.next_part;
        self.next_part += 1;
        let store = Arc::clone(&self.store);
        let key = self.key.clone();
        let Some(id) = self.upload_id.clone() else {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                "no multipart upload",
            ));
        };
        let progress = Arc::clone(&self.progress);
        self.in_flight.spawn(async move {
            let len = body.len() as u64;
            let part = progress
                .sending(len, store.upload_part(&key, &id, number, body))
                .await?;
            progress.parts.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            Ok(part)
        });
        Ok(())
    }

    /// Finishes the object: one PutObject, or the last part and CompleteMultipartUpload.
    /// On failure the multipart upload is left for `abort` (see `pending_abort`).
    pub async fn finish(
        &mut self,
        metadata: &UserMetadata,
        if_none_match: bool,
    ) -> Result<Uploaded, StoreError> {
        self.check_failed()?;
        self.progress.total.store(self.len, Ordering::Relaxed);
        if self.upload_id.is_none() {
            let body = Bytes::from(std::mem::take(&mut self.buffer));
            let options = PutOptions {
                metadata: metadata.clone(),
                content_type: self.content_type.clone(),
                if_none_match,
            };
            let etag = self
                .progress
                .sending(self.len, self.store.put_object(&self.key, body, &options))
                .await?;
            self.progress.parts.store(1, Ordering::Relaxed);
            self.held = None;
            return Ok(Uploaded {
                etag,
                size: self.len,
                metadata: metadata.clone(),
            });
        }
        if !self.buffer.is_empty() {
            self.send_part(metadata).await?;
        }
        while !self.in_flight.is_empty() {
            self.wait_one().await;
        }
        self.check_failed()?;
        let Some(id) = self.upload_id.clone() else {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                "no multipart upload",
            ));
        };
        self.check_contiguous()?;
        let etag = self
            .store
            .complete_multipart_upload(&self.key, &id, &self.done, if_none_match)
            .await?;
        self.upload_id = None;
        *self.progress.multipart.lock() = None;
        Ok(Uploaded {
            etag,
            size: self.len,
            metadata: self.sent.clone().unwrap_or_default(),
        })
    }

    /// Waits for the parts in flight and returns what a successor process needs to go on
    /// with this upload (`resume`); the upload itself goes on unchanged here.
    pub async fn pause(&mut self) -> UploadState {
        while !self.in_flight.is_empty() {
            self.wait_one().await;
        }
        self.done.sort_by_key(|p| p.number);
        UploadState {
            key: self.key.clone(),
            content_type: self.content_type.clone(),
            upload_id: self.upload_id.clone(),
            sent: self.sent.clone(),
            done: self.done.clone(),
            next_part: self.next_part,
            len: self.len,
            buffer: BASE64.encode(&self.buffer),
            failed: self.failed.as_ref().map(|e| e.message.clone()),
        }
    }

    /// Goes on with an upload a predecessor paused (`pause`).
    pub fn resume(
        state: UploadState,
        store: Arc<dyn ObjectStore>,
        tuning: UploadTuning,
        budget: WriteBudget,
        tasks: TaskTracker,
    ) -> Result<Self, StoreError> {
        let buffer = BASE64
            .decode(state.buffer.as_bytes())
            .map_err(|e| StoreError::new(StoreErrorKind::Other, format!("upload state: {e}")))?;
        let mut upload = Self::new(store, state.key, tuning, budget, tasks);
        // Its bytes are held already: taken from the budget if it has room, not waited for.
        upload.held = u32::try_from(buffer.len())
            .ok()
            .filter(|n| *n > 0)
            .and_then(|n| {
                Arc::clone(&upload.budget.permits)
                    .try_acquire_many_owned(n)
                    .ok()
            });
        upload.content_type = state.content_type;
        *upload.progress.multipart.lock() = state.upload_id.clone();
        upload.upload_id = state.upload_id;
        upload.sent = state.sent;
        upload.done = state.done;
        upload.next_part = state.next_part;
        upload.len = state.len;
        upload.buffer = buffer;
        upload.failed = state
            .failed
            .map(|message| StoreError::new(StoreErrorKind::Other, message));
        upload.progress.written.store(upload.len, Ordering::Relaxed);
        Ok(upload)
    }

    /// Stops the parts in flight and returns what must be aborted on the server, if anything.
    pub fn cancel(&mut self) -> Option<PendingAbort> {
        self.in_flight.abort_all();
        self.buffer = Vec::new();
        self.held = None;
        *self.progress.multipart.lock() = None;
        self.upload_id.take().map(|upload_id| PendingAbort {
            key: self.key.clone(),
            upload_id,
        })
    }
}

impl Upload {
    /// Cancels the upload and aborts its multipart upload (if it began one) in a tracked
    /// background task.
    pub fn abandon(&mut self) {
        if let Some(pending) = self.cancel() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let store = Arc::clone(&self.store);
                    self.tasks.spawn_on(abort_with_retries(store, pending), &rt);
                }
                Err(_) => tracing::warn!(
                    key = %pending.key,
                    "upload dropped outside the runtime; id {} is left to the bucket's lifecycle rule",
                    pending.upload_id
                ),
            }
        }
    }
}

impl Drop for Upload {
    /// An upload dropped mid-way (a commit cancelled by a timeout or by shutdown) is aborted,
    /// never left behind.
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Aborts `pending`, retrying with backoff for about ten minutes while the server is away.
pub async fn abort_with_retries(store: Arc<dyn ObjectStore>, pending: PendingAbort) {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=20 {
        match store
            .abort_multipart_upload(&pending.key, &pending.upload_id)
            .await
        {
            Ok(()) => {
                tracing::info!(key = %pending.key, "aborted the failed upload");
                return;
            }
            Err(e) => {
                tracing::warn!(key = %pending.key, attempt, "aborting the failed upload: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
    tracing::error!(
        key = %pending.key,
        "gave up aborting upload {}: remove it with AbortMultipartUpload or a lifecycle rule",
        pending.upload_id
    );
}

#[cfg(test)]
mod tests;
