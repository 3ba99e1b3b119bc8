//! Plain configuration structs with their defaults; `cli.rs` fills them, each component takes
//! its own part.
//!
//! Non-obvious problems:
//! 1. Defaults live here, once, so that `docs/CONFIGURATION.md` and the code can be checked
//!    against one place.

use std::path::{Path, PathBuf};

use base64::Engine;
use std::time::Duration;

/// Everything a mount needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach the bucket.
    pub store: StoreConfig,
    /// Filesystem semantics.
    pub fs: FsConfig,
    /// Block cache and read-ahead.
    pub cache: CacheConfig,
    /// Write buffers, uploads and staging files.
    pub upload: UploadConfig,
    /// Process and mount behaviour.
    pub daemon: DaemonConfig,
    /// Cache invalidation by S3 event notifications.
    pub notify: NotifyConfig,
}

/// How to reach the bucket.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bucket name.
    pub bucket: String,
    /// Custom endpoint (MinIO, Ceph, SeaweedFS...); `None` for AWS.
    pub endpoint_url: Option<String>,
    /// Region override; `None` lets the AWS chain decide.
    pub region: Option<String>,
    /// Named profile in `~/.aws/config`.
    pub profile: Option<String>,
    /// `http://endpoint/bucket/key` instead of `http://bucket.endpoint/key`.
    pub force_path_style: bool,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed to wait for a response head, per attempt.
    pub read_timeout: Duration,
    /// Time allowed for a whole request without a body to move (HEAD, LIST, copies,
    /// CompleteMultipartUpload, DELETE), retries included.
    pub request_timeout: Duration,
    /// Transfers (GET bodies, PutObject and UploadPart bodies) are bounded by lack of
    /// progress, not by a deadline: no byte moved for this long fails (or resumes) them.
    pub stall_timeout: Duration,
    /// Attempts per request (first try included) for retryable failures.
    pub max_attempts: u32,
    /// Storage class, encryption, requester pays, expected owner: headers of every request.
    pub headers: RequestHeaders,
    /// Proxies and trusted CAs; all `None`: the SDK's own client (which honours the proxy
    /// environment variables).
    pub network: NetworkConfig,
    /// The checksum every upload carries for the server to verify; `None`: none.
    pub checksum: Option<Checksum>,
}

/// A checksum S3 verifies on upload (`--checksum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// CRC-32C: per part (a multipart object's checksum is composite).
    Crc32c,
    /// CRC-64/NVME: of the whole object, multipart too (the AWS SDKs' own default).
    Crc64Nvme,
}

/// The storage classes S3 knows (`--storage-class`).
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "OUTPOSTS",
    "SNOW",
    "EXPRESS_ONEZONE",
];

/// Server-side encryption with keys S3 or KMS holds (`--sse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// `AES256`: S3-managed keys (SSE-S3).
    S3,
    /// `aws:kms`, with a key id or ARN (the bucket's default KMS key without one).
    Kms(Option<String>),
    /// `aws:kms:dsse`: two layers of KMS encryption.
    KmsDsse(Option<String>),
}

impl Sse {
    /// `--sse VALUE` with `--sse-kms-key-id`.
    pub fn parse(value: &str, key_id: Option<String>) -> Result<Self, String> {
        match (value, key_id) {
            ("AES256", None) => Ok(Self::S3),
            ("AES256", Some(_)) => {
                Err("--sse-kms-key-id goes with --sse aws:kms or aws:kms:dsse, not AES256".into())
            }
            ("aws:kms", id) => Ok(Self::Kms(id)),
            ("aws:kms:dsse", id) => Ok(Self::KmsDsse(id)),
            (other, _) => Err(format!(
                "--sse {other:?} is not known: give AES256, aws:kms or aws:kms:dsse"
            )),
        }
    }
}

/// A customer-provided key (SSE-C): 32 bytes, with its base64 and the base64 of its MD5 as
/// the headers carry them.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey {
    pub(crate) key_b64: String,
    pub(crate) md5_b64: String,
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomerKey(hidden)")
    }
}

impl CustomerKey {
    /// The key in `path`: 32 raw bytes, or their base64 (surrounding whitespace ignored). The
    /// file must belong to `uid` and give no access to group or others (see 3.).
    pub fn from_file(path: &Path, uid: u32) -> Result<Self, String> {
        use std::os::unix::fs::MetadataExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("--sse-c-key-file {shown}: {e}"))?;
        if meta.uid() != uid {
            return Err(format!(
                "--sse-c-key-file {shown} belongs to uid {}, not to the user who mounts (uid {uid}): refusing a key someone else controls",
                meta.uid()
            ));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "--sse-c-key-file {shown} has mode {:o}: others may read the key; chmod 600 it",
                meta.mode() & 0o777
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("--sse-c-key-file {shown}: {e}"))?;
        Self::from_bytes(&bytes).ok_or_else(|| {
            format!("--sse-c-key-file {shown} holds no 32-byte key (raw, or base64)")
        })
    }

    /// A key from its 32 raw bytes or their base64.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let key: Vec<u8> = if bytes.len() == 32 {
            bytes.to_vec()
        } else {
            let text = std::str::from_utf8(bytes).ok()?.trim();
            b64.decode(text).ok().filter(|k| k.len() == 32)?
        };
        use md5::Digest;
        Some(Self {
            key_b64: b64.encode(&key),
            md5_b64: b64.encode(md5::Md5::digest(&key)),
        })
    }
}

/// The headers of a mount's requests (`store::headers` adds them, by operation, through an SDK
/// interceptor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    /// `x-amz-storage-class` of new objects and copies.
    pub storage_class: Option<String>,
    /// `x-amz-server-side-encryption` of new objects and copies.
    pub sse: Option<Sse>,
    /// SSE-C: the key of every object written and read.
    pub customer_key: Option<CustomerKey>,
    /// `x-amz-request-payer: requester` on every request.
    pub requester_pays: bool,
    /// `x-amz-expected-bucket-owner` on every request.
    pub expected_owner: Option<String>,
}

/// How requests reach the endpoint: proxies and the CAs trusted for TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Proxy for https endpoints (`--https-proxy`; else `HTTPS_PROXY`).
    pub https_proxy: Option<String>,
    /// Proxy for http endpoints (`--http-proxy`; else `HTTP_PROXY`).
    pub http_proxy: Option<String>,
    /// Hosts reached without a proxy (`--no-proxy`; else `NO_PROXY`).
    pub no_proxy: Option<String>,
    /// PEM certificates of the CAs to trust instead of the system's (`--ca-bundle`; else
    /// `AWS_CA_BUNDLE`), read at start-up.
    pub ca_bundle: Option<(PathBuf, Vec<u8>)>,
}

impl StoreConfig {
    /// Defaults for `bucket`.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint_url: None,
            region: None,
            profile: None,
            force_path_style: false,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(30),
            max_attempts: 4,
            headers: RequestHeaders::default(),
            network: NetworkConfig::default(),
            checksum: None,
        }
    }
}

/// Filesystem semantics.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Key prefix the mount shows: empty or ending in `/`.
    pub prefix: String,
    /// Refuse every mutation with EROFS.
    pub read_only: bool,
    /// Owner of every file and directory.
    pub uid: u32,
    /// Group of every file and directory.
    pub gid: u32,
    /// Permission bits of files.
    pub file_mode: u16,
    /// Permission bits of directories.
    pub dir_mode: u16,
    /// How long attributes and listings are trusted.
    pub metadata_ttl: Duration,
    /// How long "no such name" is trusted.
    pub negative_ttl: Duration,
    /// Largest object copied with one CopyObject; `None` is S3's 5 GiB (tests lower it to
    /// exercise the multipart copy).
    pub copy_limit: Option<u64>,
    /// Content-Type of new objects whose name's extension says none.
    pub content_type_default: String,
    /// Extended attributes are served (else the kernel is told, once, there are none).
    pub xattr: bool,
    /// Bytes the metadata in memory may take (fs/meta.rs, 9.).
    pub metadata_memory: u64,
}

/// Default of `--metadata-memory`: about 1.1 million paths at 226 bytes each
/// (docs/SEMANTICS.md, "Memory per path").
pub const DEFAULT_METADATA_MEMORY: u64 = 256 << 20;

/// What S3 and s3fs use for bytes of unknown type.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            read_only: false,
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: DEFAULT_METADATA_TTL,
            negative_ttl: DEFAULT_METADATA_TTL,
            copy_limit: None,
            content_type_default: DEFAULT_CONTENT_TYPE.to_string(),
            xattr: true,
            metadata_memory: DEFAULT_METADATA_MEMORY,
        }
    }
}

/// Block cache and read-ahead.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Memory budget for cached and in-flight blocks, in bytes.
    pub budget: u64,
    /// Size of one ranged GET and one cache entry.
    pub block_size: u64,
    /// Largest read-ahead window of one sequential reader, in bytes.
    pub max_readahead: u64,
    /// Largest GET that read-ahead sends for a run of consecutive blocks, in bytes.
    pub readahead_get_size: u64,
    /// The disk tier under the memory cache (`--disk-cache`), off when None.
    pub disk: Option<DiskCacheConfig>,
    /// Listings kept on disk across remounts (`--metadata-cache`), off when None.
    pub metadata: Option<MetadataCacheConfig>,
}

/// Where the metadata snapshot lives and how large it may grow (fs/snapshot.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataCacheConfig {
    /// The directory (mounts that name the same one share it).
    pub dir: PathBuf,
    /// Bytes all saved listings may use together.
    pub size: u64,
}

/// 512 MiB of saved listings: about 2.5 million entries (~200 bytes each, the name, version
/// and headers as JSON), a bucket's worth for most workloads, a small part of most disks.
pub const DEFAULT_METADATA_CACHE_SIZE: u64 = 512 << 20;

/// Where the disk cache lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCacheConfig {
    /// The cache directory (mounts that name the same one share it).
    pub dir: PathBuf,
    /// Bytes all cached blocks may use together.
    pub size: u64,
    /// Let the kernel read whole cached files directly (FUSE passthrough) where it can.
    pub passthrough: bool,
    /// The default directory, not one given with `--disk-cache`: when it cannot be used the
    /// mount goes on without a disk tier (a warning) instead of failing.
    pub by_default: bool,
}

/// 1 MiB blocks: large enough that a GET's fixed cost (a round trip, a request's CPU) is small
/// next to its transfer, small enough that a random 4 KiB read does not pull megabytes.
pub const DEFAULT_BLOCK_SIZE: u64 = 1 << 20;

/// 8 MiB read-ahead GETs: against SeaweedFS on this 2-core machine, one stream of 8 MiB GETs
/// reads 1.8 GiB/s where 1 MiB GETs reach 1 GiB/s, the server's CPU per byte being the limit
/// (docs/benchmarks.md); larger GETs only delay the first bytes of each.
pub const DEFAULT_READAHEAD_GET_SIZE: u64 = 8 << 20;

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            budget: 512 << 20,
            block_size: DEFAULT_BLOCK_SIZE,
            max_readahead: 64 << 20,
            readahead_get_size: DEFAULT_READAHEAD_GET_SIZE,
            disk: None,
            metadata: None,
        }
    }
}

/// Write buffers, uploads and staging files.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Size of the first 1,000 parts of a multipart upload (later parts double every 1,000).
    pub part_size: u64,
    /// Parts uploaded at once per file.
    pub concurrency: usize,
    /// Memory all write buffers share, in bytes.
    pub budget: u64,
    /// Directory for staging files.
    pub staging_dir: PathBuf,
    /// Disk space all staging files share, in bytes.
    pub staging_limit: u64,
}

/// 8 MiB parts: above the 6 MiB floor that lets 10,000 growing parts pass 5 TiB. Measured against
/// 6, 16 and 32 MiB (docs/CONFIGURATION.md): the same throughput, with memory growing with size.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            part_size: DEFAULT_PART_SIZE,
            concurrency: 4,
            budget: 256 << 20,
            staging_dir: PathBuf::from("/var/cache/bucketfs/staging"),
            staging_limit: DEFAULT_STAGING_LIMIT,
        }
    }
}

/// 10 GiB of staging files: room for a few large files changed in place at once.
pub const DEFAULT_STAGING_LIMIT: u64 = 10 << 30;

/// Process and mount behaviour.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where to mount (absolute).
    pub mountpoint: PathBuf,
    /// Stay attached to the terminal instead of detaching once mounted.
    pub foreground: bool,
    /// Let other users see the mount (FUSE `allow_other`).
    pub allow_other: bool,
    /// tracing filter, e.g. `info` or `bucketfs=debug`.
    pub log_level: String,
    /// Where logs go in background mode; `None` discards them.
    pub log_file: Option<PathBuf>,
    /// Name shown as the mount's source in /proc/mounts.
    pub fs_name: String,
    /// Threads reading FUSE requests.
    pub fuse_threads: usize,
    /// Notices about the options given (a deprecated spelling), logged once logging is up.
    pub notices: Vec<String>,
    /// Where to serve Prometheus metrics (`--metrics-addr`); `None`: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The metadata TTL while S3 event notifications keep the caches coherent: changes arrive as
/// events within about a second, so what is cached may be trusted for long.
pub const NOTIFIED_METADATA_TTL: Duration = Duration::from_secs(3600);

/// The metadata TTL without notifications, and while they fail.
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(5);

/// Where S3 event notifications come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NotifySource {
    /// None: caches trust the metadata TTL alone.
    #[default]
    Off,
    /// An SQS queue that receives the bucket's events (`--notify-queue URL`).
    Queue(String),
    /// An SNS topic the bucket's events go to; the mount subscribes a queue of its own
    /// (`--notify-topic ARN`).
    Topic(String),
}

/// Cache invalidation by S3 event notifications.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Where events come from.
    pub source: NotifySource,
    /// The metadata and negative TTLs while the queue fails (the filesystem's own apply
    /// while it works).
    pub fallback_ttls: (Duration, Duration),
}
