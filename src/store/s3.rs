//! `ObjectStore` over aws-sdk-s3: real buckets on AWS or any S3-compatible endpoint.
//!
//! Non-obvious problems:
//! 1. Credentials and region come from aws-config's default chain (environment, profiles, SSO,
//!    web identity, IMDS) exactly like the AWS CLI; we only override what the user asked for.
//! 2. The SDK retries 5xx, throttling and connection errors with jittered backoff (standard mode),
//!    and its timeouts cover connect and the response head. A GET body can still stall after the
//!    head arrived, so each whole GET is also bounded by `request_timeout`.
//! 3. A HEAD has no body, so a 404 carries no error code: we classify by status as well as code.
//! 4. Messages carry the S3 error code and the key, never credentials.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{
    ListPage, ListRequest, ListStart, ObjectMeta, ObjectStore, StoreError, StoreErrorKind,
};
use crate::config::StoreConfig;

/// Region used when neither the options nor the AWS chain name one: S3-compatible servers
/// accept any region in the signature, and AWS's global endpoint starts from this one.
const FALLBACK_REGION: &str = "us-east-1";

/// A bucket reached through aws-sdk-s3.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    request_timeout: Duration,
}

impl S3Store {
    /// Builds the client from the AWS default chain plus the user's overrides.
    pub async fn new(config: &StoreConfig) -> Self {
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
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            builder = builder.region(Region::new(FALLBACK_REGION));
        }
        if config.force_path_style {
            builder = builder.force_path_style(true);
        }
        Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            request_timeout: config.request_timeout,
        }
    }
}

/// Maps an SDK error to a `StoreError`, naming the operation and key.
fn classify<E>(what: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use StoreErrorKind as K;
    match &err {
        SdkError::TimeoutError(_) => StoreError::new(K::Timeout, format!("{what}: timed out")),
        SdkError::DispatchFailure(failure) => {
            let chain = error_chain(&err);
            let kind = if failure.is_timeout() {
                K::Timeout
            } else if failure.is_other() && chain.contains("credentials") {
                K::NoCredentials
            } else {
                K::Unreachable
            };
            StoreError::new(kind, format!("{what}: {chain}"))
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("").to_string();
            let kind = match (status, code.as_str()) {
                (_, "NoSuchBucket") => K::NoSuchBucket,
                (_, "NoSuchKey" | "NotFound") | (404, _) => K::NotFound,
                (_, "PreconditionFailed") | (412, _) => K::PreconditionFailed,
                (_, "InvalidRange") | (416, _) => K::InvalidRange,
                (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")
                | (401 | 403, _) => K::AccessDenied,
                _ => K::Other,
            };
            let code = if code.is_empty() {
                "no error code".to_string()
            } else {
                code
            };
            StoreError::new(kind, format!("{what}: {code} (HTTP {status})"))
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

fn system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn head_bucket(&self) -> Result<(), StoreError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(err) => {
                let mut e = classify(&format!("HeadBucket {}", self.bucket), err);
                if e.kind == StoreErrorKind::NotFound {
                    e.kind = StoreErrorKind::NoSuchBucket;
                }
                Err(e)
            }
        }
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
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
    }

    async fn list_objects_v2(&self, request: &ListRequest) -> Result<ListPage, StoreError> {
        let mut call = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&request.prefix)
            .set_delimiter(request.delimiter.clone())
            .max_keys(request.max_keys);
        call = match &request.start {
            ListStart::Beginning => call,
            ListStart::Token(token) => call.continuation_token(token),
            ListStart::After(key) => call.start_after(key),
        };
        let out = call
            .send()
            .await
            .map_err(|e| classify(&format!("ListObjectsV2 {}", request.prefix), e))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: o.key()?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().unwrap_or_default().to_string(),
                    last_modified: system_time(o.last_modified()),
                })
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_string))
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
    }

    async fn get_object_range(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let what = format!("GetObject {key} bytes={}-{}", range.start, range.end - 1);
        let fetch = async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .range(format!("bytes={}-{}", range.start, range.end - 1))
                .if_match(etag)
                .send()
                .await
                .map_err(|e| classify(&what, e))?;
            let body = out.body.collect().await.map_err(|e| {
                StoreError::new(StoreErrorKind::Other, format!("{what}: body: {e}"))
            })?;
            Ok(body.into_bytes())
        };
        match tokio::time::timeout(self.request_timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!(
                    "{what}: no complete answer within {:?}",
                    self.request_timeout
                ),
            )),
        }
    }
}
