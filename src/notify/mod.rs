//! Cache invalidation pushed by S3 event notifications: a task long-polls an SQS queue that
//! receives the bucket's events (directly, through SNS, or through EventBridge), applies each
//! record through the filesystem, and deletes the messages.
//!
//! Non-obvious problems:
//! 1. Events come at least once and in no order. The last `sequencer` seen per key (at most
//!    `MAX_SEQUENCERS` keys) drops older or repeated records; what is left is an invalidation,
//!    which is safe to apply twice.
//! 2. A queue that fails must not stop the mount: receives are retried with backoff, and
//!    while they fail the filesystem falls back to short TTLs (logged once); the first receive
//!    that works again brings the long TTLs back. Messages held by a queue that was only
//!    unreachable arrive late, and are still applied.
//! 3. A malformed or foreign message is logged and deleted: left in the queue, it would come
//!    back after every visibility timeout.
//! 4. The loop never blocks a FUSE request: it is a task of its own, applying a record holds
//!    the filesystem's tables for an update in memory, and kernel notes are queued.
//! 5. Records of other buckets, and keys outside the mount's prefix, are skipped: one queue
//!    may serve several buckets and mounts.

pub mod event;
pub mod sqs;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lru::LruCache;
use tokio_util::sync::CancellationToken;

use crate::fs::{Elsewhere, Fs};
use event::Record;

/// Keys whose last sequencer is kept: about 100 bytes each.
const MAX_SEQUENCERS: usize = 64 << 10;
/// The first wait after a failed receive; it doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between receives that fail: changes show within this once the queue works.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How much of a malformed body a log line shows.
const LOGGED_BODY: usize = 200;

/// One message of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What deletes it.
    pub receipt: String,
    /// Its body (JSON).
    pub body: String,
}

/// A queue call that failed, with a message that names the queue and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// Where events arrive: SQS, or a queue in memory for tests.
#[async_trait]
pub trait EventQueue: Send + Sync + std::fmt::Debug {
    /// Waits for messages (long poll) and returns up to ten; none when the wait ran out.
    async fn receive(&self) -> Result<Vec<Message>, QueueError>;
    /// Deletes handled messages by their receipts.
    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError>;
    /// The queue's name or URL, for logs.
    fn name(&self) -> &str;
}

/// What the consumer changes: the filesystem, or a recorder in tests.
pub trait Sink: Send + Sync {
    /// `key` changed elsewhere; returns whether anything was forgotten.
    fn changed(&self, key: &str, change: &Elsewhere) -> bool;
    /// Trust attributes and listings for `ttl`, misses for `negative_ttl`.
    fn set_ttls(&self, ttl: Duration, negative_ttl: Duration);
}

impl Sink for Fs {
    fn changed(&self, key: &str, change: &Elsewhere) -> bool {
        self.changed_elsewhere(key, change)
    }

    fn set_ttls(&self, ttl: Duration, negative_ttl: Duration) {
        Fs::set_ttls(self, ttl, negative_ttl);
    }
}

/// TTLs while notifications work, and while they do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// Attributes and listings, then misses, while events arrive.
    pub pushed: (Duration, Duration),
    /// The same while the queue fails.
    pub fallback: (Duration, Duration),
}

/// Counts of what the consumer did, for tests and the debug log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records that made the filesystem forget something.
    pub applied: u64,
    /// Records skipped: older or repeated, another bucket, nothing to forget.
    pub skipped: u64,
    /// Messages that were not S3 events.
    pub malformed: u64,
}

/// What `bucketfs status` and the metrics show of the notifications.
#[derive(Debug)]
pub struct NotifyStats {
    queue: String,
    /// Records of this bucket received.
    events: AtomicU64,
    /// Milliseconds from the last timed record's change to its arrival; `u64::MAX`: none yet.
    last_lag_ms: AtomicU64,
    /// Receives fail now.
    failing: AtomicBool,
}

/// A copy of `NotifyStats`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySnapshot {
    /// The queue's name or URL.
    pub queue: String,
    /// Records of this bucket received.
    pub events: u64,
    /// How long after the change the last timed record arrived (S3's clock against ours).
    pub last_lag: Option<Duration>,
    /// Receives fail now (the short TTLs apply).
    pub failing: bool,
}

impl NotifyStats {
    fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_string(),
            events: AtomicU64::new(0),
            last_lag_ms: AtomicU64::new(u64::MAX),
            failing: AtomicBool::new(false),
        }
    }

    /// The figures now.
    pub fn snapshot(&self) -> NotifySnapshot {
        let lag = self.last_lag_ms.load(Ordering::Relaxed);
        NotifySnapshot {
            queue: self.queue.clone(),
            events: self.events.load(Ordering::Relaxed),
            last_lag: (lag != u64::MAX).then(|| Duration::from_millis(lag)),
            failing: self.failing.load(Ordering::Relaxed),
        }
    }

    /// A record of this bucket arrived; `time` is when its change happened.
    fn arrived(&self, time: Option<SystemTime>) {
        self.events.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("bucketfs_notification_events_total").increment(1);
        if let Some(time) = time {
            // A clock behind S3's gives no negative lag, only none.
            let lag = SystemTime::now().duration_since(time).unwrap_or_default();
            self.last_lag_ms
                .store(lag.as_millis() as u64, Ordering::Relaxed);
            metrics::histogram!("bucketfs_notification_lag_seconds").record(lag.as_secs_f64());
        }
    }
}

/// The loop from queue to filesystem.
pub struct Consumer {
    queue: Arc<dyn EventQueue>,
    sink: Arc<dyn Sink>,
    bucket: String,
    ttls: Ttls,
    sequencers: LruCache<String, String>,
    failing: bool,
    counts: Counts,
    stats: Arc<NotifyStats>,
}

impl Consumer {
    /// A consumer of `queue` for events of `bucket`, applied to `sink`.
    pub fn new(
        queue: Arc<dyn EventQueue>,
        sink: Arc<dyn Sink>,
        bucket: impl Into<String>,
        ttls: Ttls,
    ) -> Self {
        let stats = Arc::new(NotifyStats::new(queue.name()));
        Self {
            queue,
            sink,
            bucket: bucket.into(),
            ttls,
            sequencers: LruCache::unbounded(),
            failing: false,
            counts: Counts::default(),
            stats,
        }
    }

    /// Its figures, for `bucketfs status` and the metrics.
    pub fn stats(&self) -> Arc<NotifyStats> {
        Arc::clone(&self.stats)
    }

    /// What was done so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Receives and applies events until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                received = self.queue.receive() => received,
            };
            match received {
                Ok(messages) => {
                    backoff = MIN_BACKOFF;
                    self.working();
                    self.handle_batch(&messages).await;
                }
                Err(e) => {
                    self.failed(&e);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Applies `messages` and deletes them from the queue.
    pub async fn handle_batch(&mut self, messages: &[Message]) {
        if messages.is_empty() {
            return;
        }
        let receipts: Vec<String> = messages
            .iter()
            .map(|m| {
                self.handle(&m.body);
                m.receipt.clone()
            })
            .collect();
        if let Err(e) = self.queue.delete(&receipts).await {
            // They come back after the visibility timeout and are applied again: harmless.
            tracing::warn!("cannot delete handled messages: {e}");
        }
    }

    /// Applies the records of one message body (see 3. for bodies that are not events).
    pub fn handle(&mut self, body: &str) {
        match event::parse(body) {
            Ok(records) => {
                for record in records {
                    self.apply(record);
                }
            }
            Err(e) => {
                self.counts.malformed += 1;
                let shown: String = body.chars().take(LOGGED_BODY).collect();
                tracing::warn!(
                    queue = self.queue.name(),
                    "skipping a message: {e}: {shown:?}"
                );
            }
        }
    }

    fn apply(&mut self, record: Record) {
        if record.bucket != self.bucket {
            self.counts.skipped += 1;
            return;
        }
        self.stats.arrived(record.time);
        if !self.in_order(&record) {
            self.counts.skipped += 1;
            return;
        }
        if self.sink.changed(&record.key, &record.change) {
            self.counts.applied += 1;
        } else {
            self.counts.skipped += 1;
        }
    }

    /// False for a record older than, or the same as, one already seen for its key (see 1.).
    fn in_order(&mut self, record: &Record) -> bool {
        let Some(sequencer) = &record.sequencer else {
            return true;
        };
        if let Some(last) = self.sequencers.get(&record.key) {
            if !event::newer(sequencer, last) {
                return false;
            }
        }
        self.sequencers.put(record.key.clone(), sequencer.clone());
        if self.sequencers.len() > MAX_SEQUENCERS {
            self.sequencers.pop_lru();
        }
        true
    }

    fn working(&mut self) {
        if self.failing {
            self.failing = false;
            self.stats.failing.store(false, Ordering::Relaxed);
            let (ttl, negative) = self.ttls.pushed;
            tracing::info!(
                queue = self.queue.name(),
                "notifications work again: metadata trusted for {ttl:?}"
            );
            self.sink.set_ttls(ttl, negative);
        }
    }

    fn failed(&mut self, error: &QueueError) {
        if self.failing {
            tracing::debug!("notifications still failing: {error}");
            return;
        }
        self.failing = true;
        self.stats.failing.store(true, Ordering::Relaxed);
        let (ttl, negative) = self.ttls.fallback;
        tracing::warn!(
            "notifications failed ({error}): metadata trusted for {ttl:?} until they work again"
        );
        self.sink.set_ttls(ttl, negative);
    }
}

#[cfg(test)]
mod tests;
