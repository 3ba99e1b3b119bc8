//! The only door to S3: one narrow trait named after the S3 calls we make.
//!
//! `s3.rs` implements it with aws-sdk-s3 for real buckets, counting every request
//! (`requests.rs`); `memory.rs` implements it in memory for unit tests of logic (compiled for
//! tests only, as are `faulty.rs` and the contract both keep, `contract.rs`). Callers hold
//! `Arc<dyn ObjectStore>`.
//!
//! Non-obvious problems:
//! 1. Keys are full bucket keys (the mount prefix included); the filesystem adds and strips it.
//! 2. ETags are kept exactly as the server sent them, quotes included, because `If-Match` wants
//!    them back that way.
//! 3. Errors are classified into a small `StoreErrorKind` here, so that `error.rs` can map them to
//!    an errno in one place and no AWS type leaks above this module.
//! 4. How much of a request body has gone out is told through a task-local counter
//!    (`counting_body`), not the trait: only a store that streams bodies (`s3`) can say, and
//!    only `bucketfs status` asks.

#[cfg(test)]
pub mod contract;
#[cfg(test)]
pub mod faulty;
pub mod headers;
#[cfg(test)]
pub mod memory;
pub mod requests;
pub mod s3;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

tokio::task_local! {
    /// Bytes of the request body of the call under way handed to the network in its current
    /// attempt (a retry starts again from 0); see 4.
    pub static BODY_SENT: Arc<AtomicU64>;
}

/// Runs `call` (one store call with a body) with its body's progress counted in `counter`.
pub async fn counting_body<F: Future>(counter: Arc<AtomicU64>, call: F) -> F::Output {
    BODY_SENT.scope(counter, call).await
}

/// What a HEAD or a listing says about one object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    /// Full key in the bucket.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag as sent by the server, quotes included.
    pub etag: String,
    /// Last-Modified.
    pub last_modified: SystemTime,
    /// User metadata (`x-amz-meta-*`, names without the prefix); `None` when not known, as in
    /// a listing, which carries none.
    pub metadata: Option<UserMetadata>,
    /// Content-Type, when known (a HEAD says it; a listing does not).
    pub content_type: Option<String>,
    /// The other headers S3 keeps with it (a HEAD says them; empty from a listing).
    pub headers: StandardHeaders,
}

/// Headers S3 stores with an object besides its Content-Type and user metadata. A copy that
/// replaces the metadata (chmod, utime, rename...) drops them, and the storage class falls
/// back to STANDARD, unless they are sent again: `CopySource::headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StandardHeaders {
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// Content-Encoding (`gzip` objects served to browsers).
    pub content_encoding: Option<String>,
    /// Content-Language.
    pub content_language: Option<String>,
    /// Expires, as the server sent it.
    pub expires: Option<String>,
    /// x-amz-storage-class (a HEAD names it only when not STANDARD).
    pub storage_class: Option<String>,
}

impl StandardHeaders {
    /// None of them.
    pub const NONE: Self = Self {
        cache_control: None,
        content_disposition: None,
        content_encoding: None,
        content_language: None,
        expires: None,
        storage_class: None,
    };
}

/// User metadata of an object: `x-amz-meta-NAME: VALUE` as `NAME -> VALUE`, names in lower case.
pub type UserMetadata = BTreeMap<String, String>;

/// How an object is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// User metadata stored with the object.
    pub metadata: UserMetadata,
    /// Content-Type (the server's default when `None`).
    pub content_type: Option<String>,
    /// `If-None-Match: *`: fail with `PreconditionFailed` when the key already exists.
    pub if_none_match: bool,
}

/// A part of a multipart upload, as CompleteMultipartUpload wants it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompletedPart {
    /// Part number, from 1.
    pub number: i32,
    /// ETag the server gave the part.
    pub etag: String,
    /// Its checksum as the server computed it (base64), when the upload has an algorithm
    /// (`--checksum`): CompleteMultipartUpload must repeat it.
    pub checksum: Option<String>,
}

/// The source of a server-side copy: one version of one object.
#[derive(Debug, Clone, Copy)]
pub struct CopySource<'a> {
    /// Full key of the source.
    pub key: &'a str,
    /// Its ETag, sent as `x-amz-copy-source-if-match` so a changed source fails the copy.
    pub etag: &'a str,
    /// Its size in bytes (or of the range a part copies): a copy's deadline grows with it.
    pub size: u64,
    /// Its standard headers, sent again by a copy that replaces its metadata.
    pub headers: &'a StandardHeaders,
}

/// One page of a ListObjectsV2 answer.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Objects directly under the prefix (with a delimiter) or all below it (without).
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes, each ending in the delimiter.
    pub common_prefixes: Vec<String>,
    /// Token for the next page; `None` when the server says the listing is complete.
    pub next_continuation_token: Option<String>,
}

/// Where a listing page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ListStart {
    /// The first page.
    #[default]
    Beginning,
    /// A continuation token from the previous page.
    Token(String),
    /// Keys strictly after this one (`StartAfter`).
    After(String),
}

/// A ListObjectsV2 request.
#[derive(Debug, Clone)]
pub struct ListRequest {
    /// Key prefix.
    pub prefix: String,
    /// Delimiter, normally `/`.
    pub delimiter: Option<String>,
    /// Where to start.
    pub start: ListStart,
    /// Page size (the server may return fewer).
    pub max_keys: i32,
}

/// Copies what fits of `chunk` into `out` from `at`; returns how much (a body longer than the
/// buffer is cut at its end: S3 never sends more than the range asked for).
fn copy_at(out: &mut [u8], at: usize, chunk: &[u8]) -> usize {
    let n = chunk.len().min(out.len().saturating_sub(at));
    out[at..at + n].copy_from_slice(&chunk[..n]);
    n
}

/// Cuts a body arriving in chunks into pieces of a fixed size, each in a buffer of its own,
/// copying every byte once.
#[derive(Debug)]
pub struct Pieces {
    size: usize,
    left: usize,
    current: bytes::BytesMut,
    done: Vec<Bytes>,
}

impl Pieces {
    /// Pieces of `piece` bytes (at least 1) for a body of `total` bytes.
    pub fn new(total: u64, piece: u64) -> Self {
        let (total, size) = (total as usize, piece.max(1) as usize);
        Self {
            size,
            left: total,
            current: bytes::BytesMut::with_capacity(size.min(total)),
            done: Vec::with_capacity(total.div_ceil(size)),
        }
    }

    /// Adds the next chunk of the body.
    pub fn push(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let take = chunk.len().min(self.size - self.current.len());
            self.current.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            self.left = self.left.saturating_sub(take);
            if self.current.len() == self.size {
                let next = bytes::BytesMut::with_capacity(self.size.min(self.left));
                self.done
                    .push(std::mem::replace(&mut self.current, next).freeze());
            }
        }
    }

    /// The pieces, the last one possibly shorter.
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.done.push(self.current.freeze());
        }
        self.done
    }
}

/// How a store request failed, in the few classes the filesystem cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The key does not exist.
    NotFound,
    /// The bucket does not exist.
    NoSuchBucket,
    /// Credentials were refused or lack permission.
    AccessDenied,
    /// No credentials could be loaded from the AWS chain.
    NoCredentials,
    /// A condition failed: `If-Match` (the object changed) or `If-None-Match` (it exists).
    PreconditionFailed,
    /// The requested range is outside the object.
    InvalidRange,
    /// The object would pass what S3 (or the write budget's part size) can hold.
    TooLarge,
    /// The endpoint could not be reached (DNS, refused connection, TLS).
    Unreachable,
    /// The request timed out after retries.
    Timeout,
    /// The object is archived (S3 Glacier Flexible Retrieval, Deep Archive) and not restored:
    /// its bytes cannot be read until it is.
    Archived,
    /// Anything else (5xx after retries, malformed answers).
    Other,
}

/// A failed store request: its class and a message safe to show (never a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// The class of failure.
    pub kind: StoreErrorKind,
    /// Human-readable detail, including the S3 error code when there is one.
    pub message: String,
}

impl StoreError {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The S3 calls bucketfs makes. Every S3 request goes through this trait.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// HeadBucket: does the bucket exist and may we use it?
    async fn head_bucket(&self) -> Result<(), StoreError>;

    /// HeadObject: metadata of one key, `Ok(None)` when it does not exist.
    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;

    /// ListObjectsV2: one page.
    async fn list_objects_v2(&self, request: &ListRequest) -> Result<ListPage, StoreError>;

    /// GetObject of `range` (start inclusive, end exclusive) with `If-Match: etag`.
    async fn get_object_range(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError>;

    /// GetObject of `range` like `get_object_range`, returned as consecutive pieces of `piece`
    /// bytes (the last may be shorter), each in a buffer of its own so that one can be freed
    /// while the others are still in use. The default splits one body by copying.
    async fn get_object_pieces(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
        piece: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        let len = range.end - range.start;
        let body = self.get_object_range(key, etag, range).await?;
        let mut pieces = Pieces::new(len, piece);
        pieces.push(&body);
        Ok(pieces.finish())
    }

    /// GetObject of `range` like `get_object_range`, copied into `out` (at most its length);
    /// returns the bytes written, fewer when the object ends first. A caller that reads many
    /// ranges reuses one buffer instead of a fresh one per GET (a fill: `cache/fill.rs`).
    /// The default copies one body.
    async fn get_object_into(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
        out: &mut [u8],
    ) -> Result<usize, StoreError> {
        let body = self.get_object_range(key, etag, range).await?;
        Ok(copy_at(out, 0, &body))
    }

    /// PutObject of a whole body; returns the new ETag.
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
    ) -> Result<String, StoreError>;

    /// CreateMultipartUpload with the object's metadata and Content-Type; returns the upload id.
    /// With `checksummed`, its parts are sent with the mount's checksum (`--checksum`), which
    /// the server verifies; copies pass false (the server copies bytes it verified already).
    async fn create_multipart_upload(
        &self,
        key: &str,
        metadata: &UserMetadata,
        content_type: Option<&str>,
        checksummed: bool,
    ) -> Result<String, StoreError>;

    /// UploadPart; returns the part as CompleteMultipartUpload wants it.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StoreError>;

    /// UploadPartCopy of `range` (start inclusive, end exclusive) of `source`; returns the
    /// part as CompleteMultipartUpload wants it.
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: CopySource<'_>,
        range: std::ops::Range<u64>,
    ) -> Result<CompletedPart, StoreError>;

    /// True when ListObjectsV2 returns keys in order, as general-purpose buckets do; S3
    /// Express directory buckets return them in no particular order.
    fn sorted_listings(&self) -> bool {
        true
    }

    /// CompleteMultipartUpload (`If-None-Match: *` when asked); returns the object's ETag.
    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_none_match: bool,
    ) -> Result<String, StoreError>;

    /// AbortMultipartUpload: drops the parts; the key is untouched.
    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;

    /// CopyObject (up to 5 GiB) of `source` to `key`: with `replace` (metadata and
    /// Content-Type) REPLACE, else COPY. Returns the new ETag.
    async fn copy_object(
        &self,
        source: CopySource<'_>,
        key: &str,
        replace: Option<(&UserMetadata, Option<&str>)>,
    ) -> Result<String, StoreError>;

    /// DeleteObject; deleting a missing key succeeds, as on S3.
    async fn delete_object(&self, key: &str) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::Pieces;

    #[test]
    fn pieces_cut_chunks_at_piece_boundaries() {
        let body: Vec<u8> = (0..250u8).collect();
        let mut pieces = Pieces::new(250, 100);
        for chunk in body.chunks(33) {
            pieces.push(chunk);
        }
        let pieces = pieces.finish();
        assert_eq!(
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert_eq!(pieces.concat(), body);
    }
}
