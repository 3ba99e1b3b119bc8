//! `ObjectStore` over aws-sdk-s3: real buckets on AWS or any S3-compatible endpoint.
//!
//! Non-obvious problems:
//! 1. Credentials and region come from aws-config's default chain (environment, profiles, SSO,
//!    web identity, IMDS) exactly like the AWS CLI; we only override what the user asked for.
//! 2. The SDK retries 5xx, throttling and connection errors with jittered backoff (standard mode),
//!    and its timeouts cover connect and the response head. Transfers are bounded by lack of
//!    progress instead of a deadline, so a slow link (a 8 MiB part at 4 Mbit/s takes 16 s, and
//!    several share the link) never fails a transfer that is still moving:
//!    - request bodies (PutObject, UploadPart) are sent through `ProgressBody`, which stamps
//!      each chunk hyper takes; the SDK's per-attempt and response timeouts are switched off
//!      for them, and the request fails once no byte moved for `stall_timeout`;
//!    - a GET body that stalls for `stall_timeout` or breaks mid-stream is resumed from the
//!      first missing byte with `If-Match`, so a flaky link costs the rest, not the whole.
//!
//!    Requests without a body keep a whole-request bound (`request_timeout`).
//!    A streamed body is signed as UNSIGNED-PAYLOAD (the SDK cannot hash what it has not
//!    read): TLS guards it on https endpoints.
//! 3. A HEAD has no body, so a 404 carries no error code: we classify by status as well as code.
//! 4. Messages carry the S3 error code and the key, never credentials.
//! 5. Uploads carry the checksum of `--checksum` (CRC-32C on AWS by default) in a header
//!    (`x-amz-checksum-*`), computed here from the body in memory before it is sent: the server
//!    verifies it, so bytes damaged on the way (a proxy, a bad NIC; TCP's 16-bit sum misses
//!    some) fail the commit instead of being stored. A header, not the SDK's aws-chunked
//!    trailer: SeaweedFS ignores trailers, and some servers refuse aws-chunked bodies. The
//!    body stays UNSIGNED-PAYLOAD, so no SHA-256 is paid. Part checksums are repeated in
//!    CompleteMultipartUpload. Server-side copies carry none.
//! 6. A copy source is `bucket/key` URL-encoded, or keys with spaces, `+` or `%` fail.
//! 8. Without a region (none given, none in the AWS chain) requests are signed for us-east-1,
//!    and AWS answers a bucket elsewhere with a 301 (or a 400) that names its region in
//!    `x-amz-bucket-region`: `locate` reads it there, and the daemon rebuilds the clients for
//!    that region before anything else is sent.
//! 9. Proxies: the SDK's own client honours HTTPS_PROXY, HTTP_PROXY and NO_PROXY; fstab lines
//!    and units have no environment, so `--https-proxy` and friends build the same client with
//!    those given, and `--ca-bundle` (or AWS_CA_BUNDLE, which the Rust SDK ignores) one that
//!    trusts the given CAs instead of the system's.
//! 7. An error says what boto3's `ClientError.response` says: code, message, HTTP status,
//!    request id, and the attempts made. The attempts come from the request-counting
//!    interceptor through a task-local scope that every call runs in (`requests::counting_attempts`
//!    in `within`, `progressing` and the calls made without them).
//! 10. Listings ask for `encoding-type=url`: XML 1.0 cannot carry most control characters,
//!     so a key with one would make the whole page unparsable. Keys are decoded only when the
//!     answer says it encoded them (`EncodingType`; a server that ignores the parameter sends
//!     keys as they are); a key whose bytes are not UTF-8 once decoded is left out.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use bytes::Bytes;

use aws_sdk_s3::primitives::{ByteStream, DateTime, SdkBody};
use aws_sdk_s3::types::{CompletedMultipartUpload, MetadataDirective, StorageClass};

use super::requests::{CountRequests, RequestStats};
use super::{
    copy_at, CompletedPart, CopySource, ListPage, ListRequest, ListStart, ObjectMeta, ObjectStore,
    Pieces, PutOptions, StandardHeaders, StoreError, StoreErrorKind, UserMetadata,
};
use crate::config::{Checksum, NetworkConfig, StoreConfig};

/// Region used when neither the options nor the AWS chain name one: S3-compatible servers
/// accept any region in the signature, and AWS's global endpoint starts from this one.
const FALLBACK_REGION: &str = "us-east-1";

/// Bytes a request body hands hyper at a time: small enough that progress is seen often on
/// a slow link, large enough to cost nothing on a fast one.
const BODY_CHUNK: usize = 64 << 10;

/// The slowest link a transfer is promised to survive (1 Mbit/s). Once a body has been handed
/// to the network, up to several MiB of it may still sit in socket buffers, invisible to us:
/// the answer is awaited for `stall_timeout` plus the body's size at this rate.
const MIN_LINK_RATE: u64 = 128 << 10;

/// The slowest server-side copy a copy's deadline allows for (8 MiB/s): a copy sends no
/// bytes of its own to measure progress by, and the server may say nothing until it is done,
/// so each attempt is given the usual timeout plus its size at this rate (a 5 GiB CopyObject:
/// about 11 minutes), instead of the 30 s a request without a body gets.
const MIN_COPY_RATE: u64 = 8 << 20;

/// A bucket reached through aws-sdk-s3.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    request_timeout: Duration,
    stall_timeout: Duration,
    /// Connect and read timeouts, for the per-request settings of copies.
    connect_timeout: Duration,
    read_timeout: Duration,
    max_attempts: u32,
    /// Timeouts for requests with a body: connect only (see 2.).
    transfer_timeouts: TimeoutConfig,
    /// The checksum uploads carry (see 5.).
    checksum: Option<Checksum>,
}

/// When a transfer last moved a byte.
#[derive(Debug)]
struct Progress {
    start: Instant,
    /// Milliseconds after `start` of the last byte moved.
    last: AtomicU64,
    /// The body's size.
    len: u64,
    /// The current attempt's body has been handed over whole.
    sent: AtomicBool,
}

impl Progress {
    fn new(len: usize) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            len: len as u64,
            sent: AtomicBool::new(false),
        })
    }

    /// How long the transfer may go without a byte moving now.
    fn allowance(&self, stall: Duration) -> Duration {
        if self.sent.load(Ordering::Relaxed) {
            stall + Duration::from_secs(self.len / MIN_LINK_RATE)
        } else {
            stall
        }
    }

    fn tick(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// Time since the last byte moved.
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A request body of `data`, handed out in `BODY_CHUNK` pieces, each stamped in `progress`.
struct ProgressBody {
    data: Bytes,
    sent: usize,
    progress: Arc<Progress>,
    /// The caller's count of bytes handed over (`super::BODY_SENT`).
    counter: Option<Arc<AtomicU64>>,
}

impl http_body::Body for ProgressBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.sent >= this.data.len() {
            return Poll::Ready(None);
        }
        let end = (this.sent + BODY_CHUNK).min(this.data.len());
        let chunk = this.data.slice(this.sent..end);
        if let Some(counter) = &this.counter {
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        this.sent = end;
        this.progress.tick();
        if end == this.data.len() {
            this.progress.sent.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}

/// A retryable body of `data` whose progress shows in `progress` (every retry resends it),
/// and in the caller's `BODY_SENT` counter when it set one.
fn progress_body(data: Bytes, progress: &Arc<Progress>) -> ByteStream {
    let progress = Arc::clone(progress);
    let counter = super::BODY_SENT.try_with(Arc::clone).ok();
    ByteStream::new(SdkBody::retryable(move || {
        progress.sent.store(false, Ordering::Relaxed);
        if let Some(counter) = &counter {
            counter.store(0, Ordering::Relaxed);
        }
        SdkBody::from_body_1_x(ProgressBody {
            data: data.clone(),
            sent: 0,
            progress: Arc::clone(&progress),
            counter: counter.clone(),
        })
    }))
}

/// The AWS configuration every client of a mount shares: credentials from the AWS chain (or
/// `--profile`), the region, retries and timeouts. Endpoints stay per service: `--endpoint-url`
/// is S3's alone, and other services find theirs the SDK's way (`AWS_ENDPOINT_URL_SQS`, a
/// profile's `services` section). The flag says whether the region was given (options or
/// chain) rather than the fallback.
pub async fn load_shared(config: &StoreConfig) -> (aws_config::SdkConfig, bool) {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.read_timeout)
                .operation_attempt_timeout(config.read_timeout)
                .build(),
        );
    if let Some(profile) = &config.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if config.network != NetworkConfig::default() {
        loader = loader.http_client(http_client(&config.network, config.endpoint_url.as_deref()));
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return (with_region(shared, FALLBACK_REGION), false);
    }
    (shared, true)
}

/// The HTTP client the SDK would build (rustls, the proxy environment variables), with the
/// proxies and CAs of `network` instead where given (see 9.).
fn http_client(
    network: &NetworkConfig,
    endpoint: Option<&str>,
) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let plain_http = endpoint.is_some_and(|e| e.starts_with("http://"));
    let chosen = if plain_http {
        network.http_proxy.as_deref().map(ProxyConfig::http)
    } else {
        network.https_proxy.as_deref().map(ProxyConfig::https)
    };
    // The URLs were checked by the options' parser; a failure here falls back to the
    // environment, as without the option.
    let mut proxy = match chosen {
        Some(Ok(config)) => config,
        Some(Err(e)) => {
            tracing::warn!("proxy ignored: {e}");
            ProxyConfig::from_env()
        }
        None => ProxyConfig::from_env(),
    };
    if let (Some(rules), false) = (&network.no_proxy, proxy.is_from_env()) {
        proxy = proxy.no_proxy(rules);
    }
    let context = network.ca_bundle.as_ref().and_then(|(_, pem)| {
        let store = tls::TrustStore::default()
            .with_native_roots(false)
            .with_pem_certificate(pem.clone());
        tls::TlsContext::builder()
            .with_trust_store(store)
            .build()
            .map_err(|e| tracing::warn!("--ca-bundle ignored: {e}"))
            .ok()
    });
    aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
        let mut builder = aws_smithy_http_client::Connector::builder()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .proxy_config(proxy.clone());
        if let Some(context) = &context {
            builder = builder.tls_context(context.clone());
        }
        builder.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            builder.set_sleep_impl(components.sleep_impl());
        }
        builder.build()
    })
}

/// `checksum` of `data`, as S3's headers carry it: the big-endian value in base64.
fn checksum_of(checksum: Checksum, data: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    match checksum {
        Checksum::Crc32c => {
            let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32;
            b64.encode(crc.to_be_bytes())
        }
        Checksum::Crc64Nvme => {
            b64.encode(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data).to_be_bytes())
        }
    }
}

/// `value` in the field of its algorithm: (CRC-32C, CRC-64/NVME), the other `None`.
fn by_algorithm(
    checksum: Option<Checksum>,
    value: Option<String>,
) -> (Option<String>, Option<String>) {
    match checksum {
        Some(Checksum::Crc32c) => (value, None),
        Some(Checksum::Crc64Nvme) => (None, value),
        None => (None, None),
    }
}

/// The SDK's name of `checksum`.
fn algorithm(checksum: Checksum) -> aws_sdk_s3::types::ChecksumAlgorithm {
    match checksum {
        Checksum::Crc32c => aws_sdk_s3::types::ChecksumAlgorithm::Crc32C,
        Checksum::Crc64Nvme => aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme,
    }
}

/// `shared` with `region` instead of its own.
pub fn with_region(shared: aws_config::SdkConfig, region: &str) -> aws_config::SdkConfig {
    shared
        .into_builder()
        .region(Region::new(region.to_string()))
        .build()
}

impl S3Store {
    /// Builds the client from the AWS default chain plus the user's overrides.
    pub async fn new(config: &StoreConfig) -> Self {
        Self::with_shared(&load_shared(config).await.0, config)
    }

    /// A store on an AWS configuration already loaded with `load_shared` (SQS and SNS clients
    /// share it); the endpoint URL applies to S3 alone.
    pub fn with_shared(shared: &aws_config::SdkConfig, config: &StoreConfig) -> Self {
        Self::build(shared, config, None)
    }

    /// The same store, counting every request it sends into `requests`.
    pub fn counted(
        shared: &aws_config::SdkConfig,
        config: &StoreConfig,
        requests: Arc<RequestStats>,
    ) -> Self {
        Self::build(shared, config, Some(requests))
    }

    fn build(
        shared: &aws_config::SdkConfig,
        config: &StoreConfig,
        requests: Option<Arc<RequestStats>>,
    ) -> Self {
        let mut builder = aws_sdk_s3::config::Builder::from(shared);
        if let Some(requests) = requests {
            builder = builder.interceptor(CountRequests::new(requests));
        }
        if !config.headers.is_empty() {
            builder = builder.interceptor(config.headers.clone());
        }
        if shared.region().is_none() {
            builder = builder.region(Region::new(FALLBACK_REGION));
        }
        if let Some(endpoint) = &config.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        if config.force_path_style {
            builder = builder.force_path_style(true);
        }
        builder = builder.request_checksum_calculation(
            aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
        );
        Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            request_timeout: config.request_timeout,
            stall_timeout: config.stall_timeout,
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            max_attempts: config.max_attempts,
            checksum: config.checksum,
            transfer_timeouts: TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout)
                .disable_read_timeout()
                .disable_operation_attempt_timeout()
                .disable_operation_timeout()
                .build(),
        }
    }
}

/// ", 3 attempts" when the SDK retried (see `requests::counting_attempts`), else nothing.
fn attempts_note() -> String {
    match super::requests::attempts() {
        0 | 1 => String::new(),
        n => format!(", {n} attempts"),
    }
}

/// Maps an SDK error to a `StoreError`, naming the operation and key, and saying what S3
/// said: its error code and message, the HTTP status, the request id (what AWS support asks
/// for) and the attempts made (see 7.).
fn classify<E>(what: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use StoreErrorKind as K;
    let attempts = attempts_note();
    match &err {
        SdkError::TimeoutError(_) => StoreError::new(
            K::Timeout,
            format!("{what}: timed out{}", attempts.replace(", ", " after ")),
        ),
        SdkError::DispatchFailure(failure) => {
            let chain = error_chain(&err);
            let kind = if failure.is_timeout() {
                K::Timeout
            } else if failure.is_other() && chain.contains("credentials") {
                K::NoCredentials
            } else {
                K::Unreachable
            };
            let attempts = attempts.replace(", ", " after ");
            StoreError::new(kind, format!("{what}: {chain}{attempts}"))
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("").to_string();
            let message = service
                .err()
                .message()
                .filter(|m| !m.is_empty())
                .map_or_else(String::new, |m| format!(": {m}"));
            let request_id = service
                .raw()
                .headers()
                .get("x-amz-request-id")
                .map_or_else(String::new, |id| format!(", request id {id}"));
            let kind = match (status, code.as_str()) {
                (_, "NoSuchBucket") => K::NoSuchBucket,
                (_, "NoSuchKey" | "NotFound") | (404, _) => K::NotFound,
                // Only a failed condition: other 409s (OperationAborted, BucketNotEmpty...)
                // are not "the object changed".
                (_, "PreconditionFailed" | "ConditionalRequestConflict") | (412, _) => {
                    K::PreconditionFailed
                }
                (_, "InvalidRange") | (416, _) => K::InvalidRange,
                (_, "InvalidObjectState") => K::Archived,
                (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")
                | (401 | 403, _) => K::AccessDenied,
                _ => K::Other,
            };
            let code = match (code.is_empty(), status) {
                // A 2xx the SDK could not read (a malformed header, say): say what it found.
                (true, 200..=299) => format!("unreadable answer ({})", error_chain(&err)),
                (true, _) => "no error code".to_string(),
                (false, _) => code,
            };
            let hint = if kind == K::Archived {
                ": the object is archived (Glacier Flexible Retrieval or Deep Archive) and not \
                 restored; restore it first (aws s3api restore-object --restore-request Days=N), \
                 then read it again"
            } else {
                ""
            };
            StoreError::new(
                kind,
                format!("{what}: {code}{message} (HTTP {status}{request_id}{attempts}){hint}"),
            )
        }
        _ => StoreError::new(K::Other, format!("{what}: {}", error_chain(&err))),
    }
}

/// The error and its sources on one line, each message once: the SDK's own `Display` of a
/// dispatch failure is a bare "dispatch failure", and its `Debug` is pages long.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// `x-amz-copy-source`: `bucket/key` with everything but unreserved characters and `/`
/// A key as a listing gave it: decoded when the server URL-encoded it (`+` is a space there,
/// a literal `+` comes as `%2B`); `None`, and a log line, when the bytes are not UTF-8.
fn listed_key(raw: &str, encoded: bool) -> Option<String> {
    if !encoded {
        return Some(raw.to_string());
    }
    let spaced = raw.replace('+', " ");
    match percent_encoding::percent_decode_str(&spaced).decode_utf8() {
        Ok(key) => Some(key.into_owned()),
        Err(_) => {
            tracing::warn!("listing: key {raw:?} is not UTF-8 once decoded; left out");
            None
        }
    }
}

/// percent-encoded.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn metadata_map(metadata: &UserMetadata) -> Option<std::collections::HashMap<String, String>> {
    Some(
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

fn system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl S3Store {
    /// GetObject of `range`, its body handed to `sink` chunk by chunk as the connection reads
    /// it, in order; a body cut short or stalled is resumed where it broke (up to
    /// `max_attempts` requests), so `sink` sees every byte once.
    async fn get_body(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
        mut sink: impl FnMut(&[u8]) + Send,
    ) -> Result<(), StoreError> {
        let what = format!("GetObject {key} bytes={}-{}", range.start, range.end - 1);
        let mut next = range.start;
        let mut resumes = 0;
        loop {
            let mut out = self
                .within(&what, async {
                    self.client
                        .get_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .range(format!("bytes={next}-{}", range.end - 1))
                        .if_match(etag)
                        .send()
                        .await
                        .map_err(|e| classify(&what, e))
                })
                .await?;
            // The body arrives in chunks of the connection's reads; each is copied once, where
            // the caller keeps it (what collecting it into one buffer would cost too).
            let broken = loop {
                match tokio::time::timeout(self.stall_timeout, out.body.try_next()).await {
                    Ok(Ok(Some(chunk))) => {
                        next += chunk.len() as u64;
                        sink(&chunk);
                    }
                    Ok(Ok(None)) => break None,
                    Ok(Err(e)) => break Some(format!("body: {e}")),
                    Err(_) => break Some(format!("no byte for {:?}", self.stall_timeout)),
                }
            };
            match broken {
                // The whole answer (a range past the end is cut there, as S3 does); a body
                // cut short by the connection is an error above, not an end.
                None => return Ok(()),
                Some(why) if resumes + 1 < self.max_attempts => {
                    resumes += 1;
                    tracing::debug!("{what}: {why}; resuming at byte {next}");
                }
                Some(why) => {
                    return Err(StoreError::new(
                        StoreErrorKind::Timeout,
                        format!("{what}: {why}, after {resumes} resumes"),
                    ))
                }
            }
        }
    }

    /// The `--checksum` of `body`, when uploads carry one.
    fn checksum_of(&self, body: &[u8]) -> Option<String> {
        self.checksum.map(|c| checksum_of(c, body))
    }

    /// The bucket's region, as a HeadBucket answer says it (`x-amz-bucket-region`), also when
    /// the answer is a redirect or a refusal because this client signs for another region (see
    /// 8.); `None` when the server names none (most S3-compatible ones). Other failures are
    /// errors, as `head_bucket`'s.
    pub async fn locate(&self) -> Result<Option<String>, StoreError> {
        let what = format!("HeadBucket {}", self.bucket);
        super::requests::counting_attempts(async {
            match self.client.head_bucket().bucket(&self.bucket).send().await {
                Ok(out) => Ok(out.bucket_region().map(str::to_string)),
                Err(err) => {
                    let named = match &err {
                        SdkError::ServiceError(e) => e
                            .raw()
                            .headers()
                            .get("x-amz-bucket-region")
                            .map(str::to_string),
                        _ => None,
                    };
                    if named.is_some() {
                        return Ok(named);
                    }
                    let mut e = classify(&what, err);
                    if e.kind == StoreErrorKind::NotFound {
                        e.kind = StoreErrorKind::NoSuchBucket;
                    }
                    Err(e)
                }
            }
        })
        .await
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn head_bucket(&self) -> Result<(), StoreError> {
        self.locate().await.map(drop)
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        super::requests::counting_attempts(async {
            let result = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await;
            match result {
                Ok(out) => Ok(Some(ObjectMeta {
                    key: key.to_string(),
                    size: out.content_length().unwrap_or(0).max(0) as u64,
                    etag: out.e_tag().unwrap_or_default().to_string(),
                    last_modified: system_time(out.last_modified()),
                    metadata: Some(
                        out.metadata()
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    content_type: out.content_type().map(str::to_string),
                    headers: StandardHeaders {
                        cache_control: out.cache_control().map(str::to_string),
                        content_disposition: out.content_disposition().map(str::to_string),
                        content_encoding: out.content_encoding().map(str::to_string),
                        content_language: out.content_language().map(str::to_string),
                        expires: out.expires_string().map(str::to_string),
                        storage_class: out.storage_class().map(|c| c.as_str().to_string()),
                    },
                })),
                Err(err) => {
                    let e = classify(&format!("HeadObject {key}"), err);
                    if e.kind == StoreErrorKind::NotFound {
                        Ok(None)
                    } else {
                        Err(e)
                    }
                }
            }
        })
        .await
    }

    async fn list_objects_v2(&self, request: &ListRequest) -> Result<ListPage, StoreError> {
        super::requests::counting_attempts(async {
            let mut call = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&request.prefix)
                .set_delimiter(request.delimiter.clone())
                .max_keys(request.max_keys)
                .encoding_type(aws_sdk_s3::types::EncodingType::Url);
            call = match &request.start {
                ListStart::Beginning => call,
                ListStart::Token(token) => call.continuation_token(token),
                ListStart::After(key) => call.start_after(key),
            };
            let out = call
                .send()
                .await
                .map_err(|e| classify(&format!("ListObjectsV2 {}", request.prefix), e))?;
            // Keys come URL-encoded when the server says so (XML 1.0 cannot carry control
            // characters); one that does not decode to UTF-8 is left out (see 10.).
            let encoded = out.encoding_type() == Some(&aws_sdk_s3::types::EncodingType::Url);
            let key = |raw: &str| listed_key(raw, encoded);
            let objects = out
                .contents()
                .iter()
                .filter_map(|o| {
                    Some(ObjectMeta {
                        key: key(o.key()?)?,
                        size: o.size().unwrap_or(0).max(0) as u64,
                        etag: o.e_tag().unwrap_or_default().to_string(),
                        last_modified: system_time(o.last_modified()),
                        metadata: None,
                        content_type: None,
                        headers: StandardHeaders::default(),
                    })
                })
                .collect();
            let common_prefixes = out
                .common_prefixes()
                .iter()
                .filter_map(|p| key(p.prefix()?))
                .collect();
            let next_continuation_token = if out.is_truncated().unwrap_or(false) {
                out.next_continuation_token().map(str::to_string)
            } else {
                None
            };
            Ok(ListPage {
                objects,
                common_prefixes,
                next_continuation_token,
            })
        })
        .await
    }

    async fn get_object_range(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let len = range.end - range.start;
        let mut pieces = self.get_object_pieces(key, etag, range, len).await?;
        Ok(pieces.pop().unwrap_or_default())
    }

    async fn get_object_pieces(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
        piece: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        let mut pieces = Pieces::new(range.end - range.start, piece);
        self.get_body(key, etag, range, |chunk| pieces.push(chunk))
            .await?;
        Ok(pieces.finish())
    }

    async fn get_object_into(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
        out: &mut [u8],
    ) -> Result<usize, StoreError> {
        let mut at = 0;
        self.get_body(key, etag, range, |chunk| at += copy_at(out, at, chunk))
            .await?;
        Ok(at)
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
    ) -> Result<String, StoreError> {
        let what = format!("PutObject {key}");
        let progress = Progress::new(body.len());
        let (crc32c, crc64nvme) = by_algorithm(self.checksum, self.checksum_of(&body));
        let mut call = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_checksum_algorithm(self.checksum.map(algorithm))
            .set_checksum_crc32_c(crc32c)
            .set_checksum_crc64_nvme(crc64nvme)
            .content_length(body.len() as i64)
            .body(progress_body(body, &progress))
            .set_metadata(metadata_map(&options.metadata))
            .set_content_type(options.content_type.clone());
        if options.if_none_match {
            call = call.if_none_match("*");
        }
        let call = call
            .customize()
            .config_override(self.transfer_config())
            .send();
        let out = self.progressing(&what, &progress, call).await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn create_multipart_upload(
        &self,
        key: &str,
        metadata: &UserMetadata,
        content_type: Option<&str>,
        checksummed: bool,
    ) -> Result<String, StoreError> {
        let what = format!("CreateMultipartUpload {key}");
        let checksum = self.checksum.filter(|_| checksummed);
        let call = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(metadata_map(metadata))
            .set_content_type(content_type.map(str::to_string))
            .set_checksum_algorithm(checksum.map(algorithm))
            .set_checksum_type(checksum.map(|c| match c {
                Checksum::Crc32c => aws_sdk_s3::types::ChecksumType::Composite,
                Checksum::Crc64Nvme => aws_sdk_s3::types::ChecksumType::FullObject,
            }));
        let out = self.bounded(&what, call.send()).await?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::new(StoreErrorKind::Other, format!("{what}: no upload id")))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StoreError> {
        let what = format!("UploadPart {key} #{number}");
        let progress = Progress::new(body.len());
        let checksum = self.checksum_of(&body);
        let (crc32c, crc64nvme) = by_algorithm(self.checksum, checksum.clone());
        let call = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(body.len() as i64)
            .body(progress_body(body, &progress))
            .set_checksum_algorithm(self.checksum.map(algorithm))
            .set_checksum_crc32_c(crc32c)
            .set_checksum_crc64_nvme(crc64nvme)
            .customize()
            .config_override(self.transfer_config())
            .send();
        let out = self.progressing(&what, &progress, call).await?;
        Ok(CompletedPart {
            number,
            etag: out.e_tag().unwrap_or_default().to_string(),
            checksum,
        })
    }

    /// Directory buckets (`name--azid--x-s3`) list in no particular order.
    fn sorted_listings(&self) -> bool {
        !self.bucket.ends_with("--x-s3")
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: CopySource<'_>,
        range: std::ops::Range<u64>,
    ) -> Result<CompletedPart, StoreError> {
        let what = format!("UploadPartCopy {} -> {key} #{number}", source.key);
        let call = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(copy_source(&self.bucket, source.key))
            .copy_source_if_match(source.etag)
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .customize()
            .config_override(self.copy_config(range.end - range.start))
            .send();
        let out = self.copying(&what, range.end - range.start, call).await?;
        Ok(CompletedPart {
            number,
            etag: out
                .copy_part_result()
                .and_then(|r| r.e_tag())
                .unwrap_or_default()
                .to_string(),
            checksum: None,
        })
    }

    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_none_match: bool,
    ) -> Result<String, StoreError> {
        let what = format!("CompleteMultipartUpload {key}");
        let parts = parts
            .iter()
            .map(|p| {
                let (crc32c, crc64nvme) = by_algorithm(self.checksum, p.checksum.clone());
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(&p.etag)
                    .set_checksum_crc32_c(crc32c)
                    .set_checksum_crc64_nvme(crc64nvme)
                    .build()
            })
            .collect();
        let mut call = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if if_none_match {
            call = call.if_none_match("*");
        }
        let out = self.bounded(&what, call.send()).await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let what = format!("AbortMultipartUpload {key}");
        let call = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id);
        match self.bounded(&what, call.send()).await {
            Ok(_) => Ok(()),
            // Already gone (completed elsewhere or aborted by a retry): nothing left to drop.
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn copy_object(
        &self,
        source: CopySource<'_>,
        key: &str,
        replace: Option<(&UserMetadata, Option<&str>)>,
    ) -> Result<String, StoreError> {
        let what = format!("CopyObject {} -> {key}", source.key);
        let mut call = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(key)
            .copy_source(copy_source(&self.bucket, source.key))
            .copy_source_if_match(source.etag);
        if let Some((metadata, content_type)) = replace {
            // REPLACE drops every header not sent again (see `StandardHeaders`); the mount's
            // own --storage-class, if any, is added by the header interceptor and wins.
            let kept = source.headers;
            call = call
                .metadata_directive(MetadataDirective::Replace)
                .set_metadata(metadata_map(metadata))
                .set_content_type(content_type.map(str::to_string))
                .set_cache_control(kept.cache_control.clone())
                .set_content_disposition(kept.content_disposition.clone())
                .set_content_encoding(kept.content_encoding.clone())
                .set_content_language(kept.content_language.clone())
                .set_storage_class(kept.storage_class.as_deref().map(StorageClass::from))
                .set_expires(kept.expires.as_deref().and_then(|e| {
                    DateTime::from_str(e, aws_sdk_s3::primitives::DateTimeFormat::HttpDate).ok()
                }));
        }
        let call = call
            .customize()
            .config_override(self.copy_config(source.size))
            .send();
        let out = self.copying(&what, source.size, call).await?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string())
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let what = format!("DeleteObject {key}");
        let call = self.client.delete_object().bucket(&self.bucket).key(key);
        match self.bounded(&what, call.send()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl S3Store {
    /// Per-request settings for a request with a body: no deadline but our stall watchdog
    /// (the SDK's own upload stall check sees a body parked in socket buffers as stalled).
    fn transfer_config(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default()
            .timeout_config(self.transfer_timeouts.clone())
            .stalled_stream_protection(
                aws_sdk_s3::config::StalledStreamProtectionConfig::enabled()
                    .upload_enabled(false)
                    .build(),
            )
    }

    /// Runs one SDK call that sends a body until it answers, failing it once no byte of its
    /// body moved for `stall_timeout` (retries resend the body, which counts as progress).
    async fn progressing<T, E>(
        &self,
        what: &str,
        progress: &Progress,
        call: impl std::future::Future<
            Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
        >,
    ) -> Result<T, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        super::requests::counting_attempts(async {
            tokio::pin!(call);
            loop {
                let (idle, allowed) = (progress.idle(), progress.allowance(self.stall_timeout));
                if idle >= allowed {
                    return Err(StoreError::new(
                        StoreErrorKind::Timeout,
                        format!("{what}: no progress for {allowed:?}{}", attempts_note()),
                    ));
                }
                tokio::select! {
                    result = &mut call => return result.map_err(|e| classify(what, e)),
                    () = tokio::time::sleep(allowed - idle) => {}
                }
            }
        })
        .await
    }

    /// How long one attempt of a server-side copy of `bytes` may take (see `MIN_COPY_RATE`).
    fn copy_attempt(&self, bytes: u64) -> Duration {
        self.read_timeout + Duration::from_secs(bytes / MIN_COPY_RATE)
    }

    /// Per-request settings for a server-side copy of `bytes`: its attempts and reads are
    /// bounded by its size, not by the timeout of a request without a body.
    fn copy_config(&self, bytes: u64) -> aws_sdk_s3::config::Builder {
        let attempt = self.copy_attempt(bytes);
        aws_sdk_s3::config::Builder::default().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(self.connect_timeout)
                .read_timeout(attempt)
                .operation_attempt_timeout(attempt)
                .build(),
        )
    }

    /// Runs a server-side copy of `bytes` under a deadline that grows with its size (every
    /// attempt's, plus the usual whole-request bound), and classifies its error.
    async fn copying<T, E>(
        &self,
        what: &str,
        bytes: u64,
        call: impl std::future::Future<
            Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
        >,
    ) -> Result<T, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let limit = self.request_timeout + self.copy_attempt(bytes) * self.max_attempts;
        within_limit(what, limit, async {
            call.await.map_err(|e| classify(what, e))
        })
        .await
    }

    /// Runs one SDK call under `request_timeout` (retries included) and classifies its error.
    async fn bounded<T, E>(
        &self,
        what: &str,
        call: impl std::future::Future<
            Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
        >,
    ) -> Result<T, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.within(what, async { call.await.map_err(|e| classify(what, e)) })
            .await
    }

    /// Bounds a whole request (retries and body included) by `request_timeout`.
    async fn within<T>(
        &self,
        what: &str,
        request: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        within_limit(what, self.request_timeout, request).await
    }
}

/// Bounds a whole request (retries and body included, its attempts counted) by `limit`.
async fn within_limit<T>(
    what: &str,
    limit: Duration,
    request: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, super::requests::counting_attempts(request))
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("{what}: no complete answer within {limit:?}"),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_the_standard_crcs_in_base64() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        // The check values of CRC-32C and CRC-64/NVME (the CRC catalogue's "123456789").
        assert_eq!(
            checksum_of(Checksum::Crc32c, b"123456789"),
            b64.encode(0xE306_9283u32.to_be_bytes())
        );
        assert_eq!(
            checksum_of(Checksum::Crc64Nvme, b"123456789"),
            b64.encode(0xAE8B_1486_0A79_9888u64.to_be_bytes())
        );
    }

    #[test]
    fn encoded_keys_decode_and_undecodable_ones_are_left_out() {
        assert_eq!(listed_key("a+b%2Bc%25", true).as_deref(), Some("a b+c%"));
        assert_eq!(listed_key("bell%07", true).as_deref(), Some("bell\u{7}"));
        assert_eq!(listed_key("%FF%FE", true), None, "not UTF-8 once decoded");
        assert_eq!(
            listed_key("a+b%2B", false).as_deref(),
            Some("a+b%2B"),
            "not encoded"
        );
    }
}
