//! Counting a mount's S3 requests: by operation and outcome, retries, bytes each way, and the
//! latency histogram (for `bucketfs status` and Prometheus). The store's clients carry the
//! interceptor; `metrics.rs` only serves what it records.
//!
//! Non-obvious problems:
//! 1. S3 requests are counted per attempt by an interceptor in the SDK, not per store call: a
//!    retried UploadPart is two requests on the wire and on the bill, and the counts must agree
//!    with what a proxy, or the bucket's server access log, sees.
//! 2. The request must be read before it is sent (the SDK hands it to the HTTP client and it is
//!    gone by the end of the attempt): its size and start are kept in the attempt's config bag.
//! 3. The counts `bucketfs status` shows are kept with or without `--metrics-addr` (one short
//!    lock per request, nothing next to a round trip); without it the `metrics` macros do
//!    nothing.
//! 4. Bytes are the Content-Length of requests and responses: a GET body cut short counts in
//!    full, and its resumption again.

use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use metrics::{counter, histogram};

/// Upper bounds of the request latency buckets, in seconds: a HEAD on a LAN to a part on a
/// slow uplink.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Requests (attempts), by operation and outcome.
pub const S3_REQUESTS: &str = "bucketfs_s3_requests_total";
/// Attempts after an operation's first, by operation.
pub const S3_RETRIES: &str = "bucketfs_s3_retries_total";
/// Time from sending a request to the end of its attempt, by operation.
pub const S3_LATENCY: &str = "bucketfs_s3_request_duration_seconds";
/// Request bodies.
pub const S3_BYTES_SENT: &str = "bucketfs_s3_bytes_sent_total";
/// Response bodies.
pub const S3_BYTES_RECEIVED: &str = "bucketfs_s3_bytes_received_total";

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A 1xx-3xx answer (a 304 to a conditional GET included).
    Ok,
    /// 404: an expected answer to most HEADs of names that do not exist.
    NotFound,
    /// 412: a conditional request lost (the object changed).
    PreconditionFailed,
    /// 429 or 503: the server asked us to slow down.
    Throttled,
    /// Another 4xx.
    ClientError,
    /// Another 5xx.
    ServerError,
    /// No answer: connection refused or cut, timeout.
    NetworkError,
}

impl Outcome {
    fn of(status: Option<u16>) -> Self {
        match status {
            None => Self::NetworkError,
            Some(s) if s < 400 => Self::Ok,
            Some(404) => Self::NotFound,
            Some(412) => Self::PreconditionFailed,
            Some(429 | 503) => Self::Throttled,
            Some(s) if s < 500 => Self::ClientError,
            Some(_) => Self::ServerError,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotFound => "not_found",
            Self::PreconditionFailed => "precondition_failed",
            Self::Throttled => "throttled",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::NetworkError => "network_error",
        }
    }
}

/// S3 requests of this mount so far.
#[derive(Debug, Default)]
pub struct RequestStats {
    counts: Mutex<BTreeMap<(String, Outcome), u64>>,
    retries: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

/// A copy of `RequestStats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests by operation (`GetObject`...) and outcome.
    pub by_kind: BTreeMap<(String, Outcome), u64>,
    /// Attempts after an operation's first.
    pub retries: u64,
    /// Request bodies, by Content-Length.
    pub bytes_sent: u64,
    /// Response bodies, by Content-Length.
    pub bytes_received: u64,
}

impl RequestStats {
    /// Counts one request (one attempt of an operation).
    pub fn record(&self, operation: &str, outcome: Outcome, retry: bool, bytes: (u64, u64)) {
        let op = operation.to_string();
        *self.counts.lock().entry((op.clone(), outcome)).or_insert(0) += 1;
        self.bytes_sent.fetch_add(bytes.0, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes.1, Ordering::Relaxed);
        counter!(S3_REQUESTS, "operation" => op.clone(), "outcome" => outcome.as_str())
            .increment(1);
        counter!(S3_BYTES_SENT).increment(bytes.0);
        counter!(S3_BYTES_RECEIVED).increment(bytes.1);
        if retry {
            self.retries.fetch_add(1, Ordering::Relaxed);
            counter!(S3_RETRIES, "operation" => op).increment(1);
        }
    }

    /// The counts now.
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            by_kind: self.counts.lock().clone(),
            retries: self.retries.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}

tokio::task_local! {
    /// SDK attempts made inside `counting_attempts`, counted by `CountRequests`.
    static ATTEMPTS: Cell<u32>;
}

/// Runs `call`, which makes an SDK call and handles its error, counting the attempts the SDK
/// makes (`attempts` tells them inside).
pub async fn counting_attempts<F: Future>(call: F) -> F::Output {
    ATTEMPTS.scope(Cell::new(0), call).await
}

/// The attempts made so far inside `counting_attempts`; 0 outside one, or when no
/// `CountRequests` interceptor counts.
pub fn attempts() -> u32 {
    ATTEMPTS.try_with(Cell::get).unwrap_or(0)
}

/// The SDK interceptor that counts every attempt into a `RequestStats` (see 1. and 2.).
#[derive(Debug, Clone)]
pub struct CountRequests {
    stats: Arc<RequestStats>,
}

impl CountRequests {
    /// Counts into `stats`.
    pub fn new(stats: Arc<RequestStats>) -> Self {
        Self { stats }
    }
}

/// The attempt under way, in its config bag.
#[derive(Debug, Clone)]
struct Attempt {
    /// When its request went out; `None` until it does.
    sent_at: Option<Instant>,
    /// Its body's size.
    body: u64,
}

impl Storable for Attempt {
    type Storer = StoreReplace<Self>;
}

fn content_length(headers: &aws_smithy_runtime_api::http::Headers) -> u64 {
    headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "bucketfs::store::requests::CountRequests"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Attempt {
            sent_at: None,
            body: 0,
        });
        let _ = ATTEMPTS.try_with(|a| a.set(a.get() + 1));
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Attempt {
            sent_at: Some(Instant::now()),
            body: content_length(context.request().headers()),
        });
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // An attempt that never reached the wire (signing failed, say) is not a request.
        let Some(Attempt {
            sent_at: Some(sent_at),
            body,
        }) = cfg.load::<Attempt>().cloned()
        else {
            return Ok(());
        };
        let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        let retry = cfg
            .load::<RequestAttempts>()
            .is_some_and(|a| a.attempts() > 1);
        let response = context.response();
        let outcome = Outcome::of(response.map(|r| r.status().as_u16()));
        let received = response.map_or(0, |r| content_length(r.headers()));
        self.stats
            .record(operation, outcome, retry, (body, received));
        histogram!(S3_LATENCY, "operation" => operation.to_string())
            .record(sent_at.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_status() {
        assert_eq!(Outcome::of(Some(200)), Outcome::Ok);
        assert_eq!(Outcome::of(Some(206)), Outcome::Ok);
        assert_eq!(Outcome::of(Some(304)), Outcome::Ok);
        assert_eq!(Outcome::of(Some(404)), Outcome::NotFound);
        assert_eq!(Outcome::of(Some(412)), Outcome::PreconditionFailed);
        assert_eq!(Outcome::of(Some(503)), Outcome::Throttled);
        assert_eq!(Outcome::of(Some(429)), Outcome::Throttled);
        assert_eq!(Outcome::of(Some(403)), Outcome::ClientError);
        assert_eq!(Outcome::of(Some(500)), Outcome::ServerError);
        assert_eq!(Outcome::of(None), Outcome::NetworkError);
    }

    #[test]
    fn requests_are_counted_by_operation_and_outcome() {
        let stats = RequestStats::default();
        stats.record("GetObject", Outcome::Ok, false, (0, 100));
        stats.record("GetObject", Outcome::Ok, false, (0, 50));
        stats.record("GetObject", Outcome::Throttled, true, (0, 0));
        stats.record("PutObject", Outcome::Ok, false, (10, 0));
        let s = stats.snapshot();
        assert_eq!(s.by_kind[&("GetObject".to_string(), Outcome::Ok)], 2);
        assert_eq!(s.by_kind[&("GetObject".to_string(), Outcome::Throttled)], 1);
        assert_eq!(s.by_kind[&("PutObject".to_string(), Outcome::Ok)], 1);
        assert_eq!(s.by_kind.len(), 3);
        assert_eq!((s.retries, s.bytes_sent, s.bytes_received), (1, 10, 150));
    }
}
