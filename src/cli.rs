//! Command line and mount-helper options into a validated `Config`.
//!
//! Non-obvious problems:
//! 1. Every flag also works as a `-o key[=value]` mount option (`_` or `-` alike), because
//!    mount(8) and fstab pass options that way. `-o` items are translated into flags and parsed
//!    again by clap, so both spellings share one parser and one set of error messages.
//! 2. mount.fuse3 and fstab add options meant for mount(8) or systemd (`dev`, `suid`, `_netdev`,
//!    `nofail`, `x-systemd.*`...): they are accepted and ignored. Anything else unknown is an error.
//! 3. No option takes a secret: credentials come only from the AWS chain, never from argv where
//!    `ps` would show them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::config::{
    CacheConfig, Checksum, Config, DaemonConfig, DiskCacheConfig, FsConfig, MetadataCacheConfig,
    NetworkConfig, NotifyConfig, NotifySource, StoreConfig, UploadConfig,
    DEFAULT_METADATA_CACHE_SIZE, DEFAULT_METADATA_TTL, DEFAULT_STAGING_LIMIT,
    NOTIFIED_METADATA_TTL,
};
use crate::store::headers::{CustomerKey, RequestHeaders, Sse, STORAGE_CLASSES};
use crate::upload::{reach, MAX_OBJECT_SIZE, MAX_PART_SIZE};

/// The version and the commit it was built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BUCKETFS_COMMIT"),
    ")"
);

/// `bucketfs --help`'s description, and the manual page's.
const LONG_ABOUT: &str = "\
Mount an S3 bucket (AWS S3 or any S3-compatible store) as a local filesystem with FUSE. \
Listings are ListObjectsV2 pages, reads are ranged GETs through a block cache with \
read-ahead, and writes stream as multipart uploads committed when the file is closed or \
fsync'd; close() and fsync() report a failed commit. Credentials come from the AWS chain \
(environment, ~/.aws, SSO, web identity, instance metadata), never from the command line.

As a mount helper (mount -t fuse.bucketfs, /etc/fstab, systemd .mount units), every flag \
below is also a -o option, written key[=value] with - or _: -o ro,region=eu-west-1.";

/// `bucketfs --help`'s last part, and the manual page's.
const AFTER_LONG_HELP: &str = "\
Examples:
  bucketfs my-bucket /mnt/data
  bucketfs s3://my-bucket/photos/ /mnt/photos --read-only
  bucketfs --endpoint-url http://127.0.0.1:8333 --force-path-style data /mnt/data
  my-bucket:logs/ /mnt/logs fuse.bucketfs _netdev,x-systemd.automount,region=eu-west-1 0 0   (an /etc/fstab line)

bucketfs status [MOUNTPOINT] shows what a mount is doing: uploads with their progress, files \
not yet committed, failed commits, the caches and S3 requests by kind; --wait returns once \
nothing is pending (exit 1 naming the files whose commit failed).

Units: /lib/systemd/system/bucketfs@.service (one mount per instance, configured in \
/etc/bucketfs/NAME.env) and mnt-data.mount with mnt-data.automount (an example for /mnt/data).
Documentation: README.md and docs/ in the source, or /usr/share/doc/bucketfs.";

/// Mount an S3 bucket as a local filesystem.
#[derive(Debug, Parser)]
#[command(
    name = "bucketfs",
    version = VERSION,
    args_override_self = true,
    override_usage = "bucketfs [OPTIONS] SOURCE MOUNTPOINT\n       \
                      mount -t fuse.bucketfs [-o OPTIONS] SOURCE MOUNTPOINT\n       \
                      bucketfs status [MOUNTPOINT] [--json] [--watch] [--wait [--timeout D]]",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// What to mount: BUCKET, BUCKET:PREFIX or s3://BUCKET/PREFIX
    #[arg(required_unless_present_any = ["completions", "man_page"])]
    pub source: Option<String>,

    /// Where to mount it (an existing directory)
    #[arg(required_unless_present_any = ["completions", "man_page"])]
    pub mountpoint: Option<PathBuf>,

    /// Mount options, comma-separated: any flag below as key[=value], e.g. -o ro,region=eu-west-1
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// S3 endpoint URL, for S3-compatible stores (MinIO, Ceph, SeaweedFS...)
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// AWS region (default: from the AWS profile or environment, else us-east-1)
    #[arg(long)]
    pub region: Option<String>,

    /// Named AWS profile from ~/.aws/config and ~/.aws/credentials
    #[arg(long)]
    pub profile: Option<String>,

    /// Address the bucket as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT
    #[arg(long)]
    pub force_path_style: bool,

    /// Storage class of new objects and copies: STANDARD, STANDARD_IA, INTELLIGENT_TIERING,
    /// ONEZONE_IA, GLACIER_IR, GLACIER, DEEP_ARCHIVE... (default: the bucket's, STANDARD)
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,

    /// Server-side encryption of new objects and copies: AES256 (S3's keys), aws:kms or
    /// aws:kms:dsse (default: the bucket's)
    #[arg(long, value_name = "ALGORITHM", conflicts_with = "sse_c_key_file")]
    pub sse: Option<String>,

    /// With --sse aws:kms or aws:kms:dsse: the KMS key (id, ARN or alias/NAME; default: the
    /// bucket's, else aws/s3)
    #[arg(long, value_name = "ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,

    /// Encrypt and read every object with your own key (SSE-C): a file holding 32 bytes, raw
    /// or in base64, owned by you and not readable by others
    #[arg(long, value_name = "PATH")]
    pub sse_c_key_file: Option<PathBuf>,

    /// Pay for the requests and transfer of a requester-pays bucket
    #[arg(long)]
    pub requester_pays: bool,

    /// Fail every request (403) unless the bucket belongs to this AWS account (12 digits)
    #[arg(long, value_name = "ACCOUNT")]
    pub expected_bucket_owner: Option<String>,

    /// Proxy for https endpoints (AWS), e.g. http://proxy:3128 (default: HTTPS_PROXY); proxy
    /// credentials go in HTTPS_PROXY, not here where `ps` shows them
    #[arg(long, value_name = "URL", value_parser = parse_proxy)]
    pub https_proxy: Option<String>,

    /// Proxy for http endpoints (default: HTTP_PROXY)
    #[arg(long, value_name = "URL", value_parser = parse_proxy)]
    pub http_proxy: Option<String>,

    /// Hosts reached without the proxy, comma-separated (default: NO_PROXY)
    #[arg(long, value_name = "HOSTS")]
    pub no_proxy: Option<String>,

    /// PEM file of the CA certificates to trust for TLS instead of the system's, for private
    /// CAs (default: AWS_CA_BUNDLE)
    #[arg(long, value_name = "PATH")]
    pub ca_bundle: Option<PathBuf>,

    /// Checksum of every upload, verified by the server so that bytes damaged on the way fail
    /// the commit: crc32c, crc64nvme, off, or auto (crc32c on AWS, off elsewhere)
    #[arg(long, value_name = "ALGORITHM", default_value = "auto", value_parser = ["auto", "crc64nvme", "crc32c", "off"])]
    pub checksum: String,

    /// Refuse every change to the bucket (EROFS)
    #[arg(long)]
    pub read_only: bool,

    /// Owner of all files (default: the user who mounts)
    #[arg(long)]
    pub uid: Option<u32>,

    /// Group of all files (default: the group of the user who mounts)
    #[arg(long)]
    pub gid: Option<u32>,

    /// Permission bits of files, in octal
    #[arg(long, value_parser = parse_mode, default_value = "644")]
    pub file_mode: u16,

    /// Permission bits of directories, in octal
    #[arg(long, value_parser = parse_mode, default_value = "755")]
    pub dir_mode: u16,

    /// Let users other than the one who mounts access the mount
    #[arg(long)]
    pub allow_other: bool,

    /// How long attributes and listings are cached (e.g. 5s, 500ms, 1m; 0 disables)
    /// [default: 5s, or 1h with --notify-queue/--notify-topic]
    #[arg(long, value_parser = parse_duration)]
    pub metadata_ttl: Option<Duration>,

    /// How long a missing name is remembered (default: the metadata TTL)
    #[arg(long, value_parser = parse_duration)]
    pub negative_ttl: Option<Duration>,

    /// Memory the metadata of names may take (inode numbers, attributes, listings): past it,
    /// cached listings go, least recently used first, and then the kernel is asked to forget
    /// the directories used longest ago (at least 1MiB)
    #[arg(long, value_parser = parse_metadata_memory, default_value = "256MiB")]
    pub metadata_memory: u64,

    /// SQS queue URL that receives the bucket's S3 event notifications (directly, through SNS
    /// or EventBridge): changes made elsewhere show within about a second, and metadata is
    /// cached for long. One queue per mount
    #[arg(long, value_name = "URL", conflicts_with = "notify_topic")]
    pub notify_queue: Option<String>,

    /// SNS topic ARN that receives the bucket's S3 event notifications: the mount creates a
    /// queue of its own, subscribes it, and deletes both at unmount (for many hosts)
    #[arg(long, value_name = "ARN")]
    pub notify_topic: Option<String>,

    /// Answer no extended-attribute requests (ENOTSUP, asked once per mount): `ls -l` then
    /// sends no per-entry xattr questions, about twice as fast on large directories
    #[arg(long)]
    pub no_xattr: bool,

    /// Content-Type of new objects whose file name's extension says none (others get the type
    /// their extension names, e.g. text/html for .html)
    #[arg(long, value_name = "TYPE", value_parser = parse_content_type, default_value = crate::config::DEFAULT_CONTENT_TYPE)]
    pub content_type_default: String,

    /// Memory budget: half for cached blocks and read-ahead, half for write buffers (e.g. 512MiB, 2GiB)
    #[arg(long, value_parser = parse_size, default_value = "512MiB")]
    pub cache_size: u64,

    /// Size of the first 1,000 parts of an upload; later parts double every 1,000 (min 6MiB)
    #[arg(long, value_parser = parse_size, default_value = "8MiB")]
    pub part_size: u64,

    /// Parts of one file uploaded at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub upload_concurrency: u16,

    /// Directory for staging files of files changed in place (default: /var/cache/bucketfs/staging
    /// for root, /var/tmp/bucketfs-UID for other users)
    #[arg(long, value_name = "PATH")]
    pub staging_dir: Option<PathBuf>,

    /// Disk space staging files may use together; writes past it fail with ENOSPC
    #[arg(long, value_parser = parse_size)]
    pub staging_dir_limit: Option<u64>,

    /// Deprecated spelling of --staging-dir
    #[arg(long, value_name = "PATH", hide = true)]
    pub cache_dir: Option<PathBuf>,

    /// Deprecated spelling of --staging-dir-limit
    #[arg(long, value_parser = parse_size, hide = true)]
    pub cache_dir_limit: Option<u64>,

    /// Keep blocks read from S3 on disk in this directory, across remounts and reboots
    /// (default: /var/cache/bucketfs for root, else ~/.cache/bucketfs); mounts may share it
    #[arg(long, value_name = "DIR", conflicts_with = "no_disk_cache")]
    pub disk_cache: Option<PathBuf>,

    /// Keep no blocks on disk: every read the memory cache misses is a GET
    #[arg(long)]
    pub no_disk_cache: bool,

    /// Disk space the disk cache may use, least recently used objects leaving first (default:
    /// a quarter of the free space of its filesystem at mount, at most 10GiB)
    #[arg(long, value_parser = parse_size, conflicts_with = "no_disk_cache")]
    pub disk_cache_size: Option<u64>,

    /// Read files that are whole in the disk cache through the daemon, not by FUSE passthrough
    #[arg(long)]
    pub no_passthrough: bool,

    /// Keep directory listings in this directory across remounts: after a remount, lookups and
    /// readdir answer from it at once while each directory is listed again in the background
    /// (stale-while-revalidate, docs/SEMANTICS.md); mounts may share it
    #[arg(long, value_name = "DIR")]
    pub metadata_cache: Option<PathBuf>,

    /// Disk space the saved listings may use, those written longest ago leaving first
    /// (default: 512MiB)
    #[arg(long, value_parser = parse_size, requires = "metadata_cache")]
    pub metadata_cache_size: Option<u64>,

    /// Stay in the foreground instead of detaching once mounted
    #[arg(short = 'f', long)]
    pub foreground: bool,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Write logs to this file (default: stderr in the foreground, nowhere in the background)
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 (off by default;
    /// anyone who can reach ADDR can read them: counts, never file names)
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Print the shell completion script for SHELL and exit
    #[arg(long, value_name = "SHELL", exclusive = true)]
    pub completions: Option<clap_complete::Shell>,

    /// Print the manual page bucketfs(8), in roff, and exit
    #[arg(long, exclusive = true)]
    pub man_page: bool,
}

/// Options that mount(8), mount.fuse3, fstab or systemd pass and that have no meaning here.
const IGNORED_OPTIONS: &[&str] = &[
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "async",
    "sync",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "defaults",
    "default_permissions",
];

/// Flags that may be given as `-o` items (in their `--flag` spelling, without the dashes).
const FLAG_OPTIONS: &[&str] = &[
    "endpoint-url",
    "region",
    "profile",
    "force-path-style",
    "storage-class",
    "sse",
    "sse-kms-key-id",
    "sse-c-key-file",
    "requester-pays",
    "expected-bucket-owner",
    "https-proxy",
    "http-proxy",
    "no-proxy",
    "ca-bundle",
    "checksum",
    "read-only",
    "uid",
    "gid",
    "file-mode",
    "dir-mode",
    "allow-other",
    "metadata-ttl",
    "negative-ttl",
    "metadata-memory",
    "notify-queue",
    "notify-topic",
    "content-type-default",
    "no-xattr",
    "cache-size",
    "part-size",
    "upload-concurrency",
    "staging-dir",
    "staging-dir-limit",
    "cache-dir",
    "cache-dir-limit",
    "disk-cache",
    "disk-cache-size",
    "no-disk-cache",
    "no-passthrough",
    "metadata-cache",
    "metadata-cache-size",
    "foreground",
    "log-level",
    "log-file",
    "metrics-addr",
];

/// Translates one `-o` list into command-line flags.
pub fn mount_options_to_flags(list: &str) -> Result<Vec<String>, String> {
    let mut flags = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if IGNORED_OPTIONS.contains(&key) || key.starts_with("x-") || key == "comment" {
            continue;
        }
        let flag = match key {
            "ro" => "read-only".to_string(),
            "noxattr" => "no-xattr".to_string(),
            other => other.replace('_', "-"),
        };
        if !FLAG_OPTIONS.contains(&flag.as_str()) {
            return Err(format!("unknown mount option '{key}'"));
        }
        flags.push(match value {
            Some(v) => format!("--{flag}={v}"),
            None => format!("--{flag}"),
        });
    }
    Ok(flags)
}

/// `bucketfs takeover`: a new process takes a live mount over (docs/RESTART.md).
#[derive(Debug, Parser)]
#[command(name = "bucketfs takeover", version = VERSION)]
pub struct TakeoverArgs {
    /// The mount to take over from the daemon serving it
    pub mountpoint: PathBuf,

    /// Serve in the foreground instead of detaching once the mount is taken over
    #[arg(long, short = 'f')]
    pub foreground: bool,
}

/// True when argv asks for `bucketfs takeover`. (To mount a bucket named `takeover`, write
/// it `s3://takeover`.)
pub fn is_takeover_command(argv: &[std::ffi::OsString]) -> bool {
    argv.get(1).is_some_and(|a| a == "takeover")
}

/// `bucketfs csi`: the Kubernetes CSI node plugin (docs/KUBERNETES.md).
#[derive(Debug, Parser)]
#[command(name = "bucketfs csi", version = VERSION)]
pub struct CsiArgs {
    /// Where to serve CSI: unix:///PATH/csi.sock (default: $CSI_ENDPOINT)
    #[arg(long, env = "CSI_ENDPOINT", value_name = "URL")]
    pub csi_endpoint: String,

    /// This node's name, as NodeGetInfo reports it (default: $KUBE_NODE_NAME)
    #[arg(long, env = "KUBE_NODE_NAME", value_name = "NAME")]
    pub node_id: String,

    /// The plugin's own directory: each volume's mount and record (kept across restarts of
    /// the plugin)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/bucketfs-csi")]
    pub state_dir: PathBuf,

    /// The bucketfs binary each volume is mounted with (default: this one)
    #[arg(long, value_name = "PATH")]
    pub bucketfs: Option<PathBuf>,

    /// A file made once the plugin has taken charge of the node's volumes and listens (for
    /// a readiness probe: a rolling update stops the old plugin only after)
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Mount options for every volume, as bucketfs takes them (`--endpoint-url URL`,
    /// `--region R`, `--notify-topic ARN`...), among the plugin's own or after `--`
    #[arg(last = true, value_name = "OPTIONS")]
    pub mount_options: Vec<String>,
}

impl CsiArgs {
    /// Parses `bucketfs csi ARGS`: the plugin's own options, and every other argument (or
    /// all after `--`) as mount options for every volume, checked later by the daemon's parser.
    pub fn parse_argv(argv: &[std::ffi::OsString]) -> Result<Self, clap::Error> {
        const OWN: &[&str] = &[
            "--csi-endpoint",
            "--node-id",
            "--state-dir",
            "--bucketfs",
            "--ready-file",
        ];
        const ALONE: &[&str] = &["-h", "--help", "-V", "--version"];
        let mut own: Vec<std::ffi::OsString> = vec!["bucketfs csi".into()];
        let mut rest = Vec::new();
        let mut args = argv.iter().skip(2);
        while let Some(arg) = args.next() {
            let text = arg.to_string_lossy();
            let name = text.split('=').next().unwrap_or_default();
            if text == "--" {
                rest.extend(args.by_ref().map(|a| a.to_string_lossy().into_owned()));
            } else if ALONE.contains(&name) {
                own.push(arg.clone());
            } else if OWN.contains(&name) {
                own.push(arg.clone());
                if !text.contains('=') {
                    own.extend(args.next().cloned());
                }
            } else {
                rest.push(text.into_owned());
            }
        }
        let mut parsed = Self::try_parse_from(own)?;
        parsed.mount_options.extend(rest);
        Ok(parsed)
    }
}

/// True when argv asks for `bucketfs csi`. (To mount a bucket named `csi`, write it
/// `s3://csi`.)
pub fn is_csi_command(argv: &[std::ffi::OsString]) -> bool {
    argv.get(1).is_some_and(|a| a == "csi")
}

/// `bucketfs status`: what mounts are doing (docs/STATUS.md).
#[derive(Debug, Parser)]
#[command(name = "bucketfs status", version = VERSION)]
pub struct StatusArgs {
    /// The mount to ask (every bucketfs mount in /proc/mounts when none is given)
    pub mountpoint: Option<PathBuf>,

    /// Print the daemon's answer as JSON (one object; `{"mounts": [...]}` for all mounts)
    #[arg(long)]
    pub json: bool,

    /// Redraw every second until interrupted
    #[arg(long, conflicts_with = "wait")]
    pub watch: bool,

    /// Return once no upload is in flight and no open file has uncommitted changes; exit 1
    /// naming the files whose commit failed meanwhile
    #[arg(long)]
    pub wait: bool,

    /// With --wait: give up after this long (exit 3), e.g. 10m
    #[arg(long, value_parser = parse_duration, requires = "wait")]
    pub timeout: Option<Duration>,
}

/// True when argv asks for `bucketfs status` rather than a mount. (To mount a bucket named
/// `status`, write it `s3://status`.)
pub fn is_status_command(argv: &[std::ffi::OsString]) -> bool {
    argv.get(1).is_some_and(|a| a == "status")
}

/// Parses argv, `-o` options included.
pub fn parse_args<I, T>(argv: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    let first = Args::try_parse_from(&argv)?;
    if first.options.is_empty() {
        return Ok(first);
    }
    let mut full = argv;
    for list in &first.options {
        let flags = mount_options_to_flags(list).map_err(|msg| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{msg}\n"))
        })?;
        full.extend(flags.into_iter().map(Into::into));
    }
    Args::try_parse_from(full)
}

/// The manual page bucketfs(8), in roff, from the command's definition.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_mangen::Man::new(Args::command())
        .section("8")
        .render(&mut out)?;
    Ok(out)
}

/// The completion script of `shell` for `bucketfs`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "bucketfs", &mut out);
    out
}

/// True for AWS's own endpoints (no `--endpoint-url`, or one of amazonaws.com).
fn is_aws(endpoint: Option<&str>) -> bool {
    let Some(url) = endpoint else {
        return true;
    };
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")
}

/// A proxy URL: http or https, with a host, and without credentials (`ps` would show them).
fn parse_proxy(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("give an http:// or https:// URL, e.g. http://proxy.example.com:3128")?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "proxy credentials would show in `ps`: put the URL with them in HTTPS_PROXY (an \
             EnvironmentFile for units) instead"
                .into(),
        );
    }
    if authority.is_empty() {
        return Err("the URL names no host".into());
    }
    Ok(url.to_string())
}

/// The PEM certificates of `--ca-bundle` (or AWS_CA_BUNDLE).
fn read_ca_bundle(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("--ca-bundle {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "--ca-bundle {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(pem)
}

/// A storage class S3 knows, in any case.
fn parse_storage_class(class: &str) -> Result<String, String> {
    let upper = class.to_ascii_uppercase();
    if STORAGE_CLASSES.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(format!(
            "--storage-class {class:?} is not an S3 storage class: give one of {}",
            STORAGE_CLASSES.join(", ")
        ))
    }
}

/// A 12-digit AWS account id.
fn parse_account(account: &str) -> Result<String, String> {
    if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) {
        Ok(account.to_string())
    } else {
        Err(format!(
            "--expected-bucket-owner {account:?} is not an AWS account id (12 digits)"
        ))
    }
}

/// Splits `BUCKET`, `BUCKET:PREFIX` or `s3://BUCKET/PREFIX` into bucket and prefix; the prefix is
/// empty or ends in `/`.
pub fn parse_source(source: &str) -> Result<(String, String), String> {
    let unschemed = source.strip_prefix("s3://").unwrap_or(source);
    if unschemed.starts_with("arn:") {
        return parse_access_point(unschemed)
            .map(|(arn, prefix)| (arn, directory_prefix(prefix)))
            .ok_or_else(|| {
                format!(
                    "'{source}' is not an access point ARN: expected \
                     arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME[/PREFIX]"
                )
            });
    }
    let (bucket, prefix) = match source.strip_prefix("s3://") {
        Some(rest) => rest.split_once('/').unwrap_or((rest, "")),
        None => source.split_once(':').unwrap_or((source, "")),
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if bucket.is_empty() || !bucket.chars().all(valid) {
        return Err(format!(
            "'{source}' is not a bucket: expected BUCKET, BUCKET:PREFIX or s3://BUCKET/PREFIX"
        ));
    }
    Ok((bucket.to_string(), directory_prefix(prefix)))
}

/// `prefix` as a directory's: empty, or ending in `/`.
fn directory_prefix(prefix: &str) -> String {
    let prefix = prefix.trim_start_matches('/');
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// `arn:PARTITION:s3:REGION:ACCOUNT:accesspoint/NAME[/PREFIX]` into the ARN (what the SDK
/// takes as the bucket) and the prefix.
fn parse_access_point(text: &str) -> Option<(String, &str)> {
    let fields: Vec<&str> = text.splitn(6, ':').collect();
    let [_, partition, "s3", region, account, resource] = fields[..] else {
        return None;
    };
    let rest = resource.strip_prefix("accesspoint/")?;
    let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = |s: &str, extra: char| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == extra)
    };
    if !valid(partition, '-') || !valid(region, '-') || !valid(name, '-') {
        return None;
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        format!("arn:{partition}:s3:{region}:{account}:accesspoint/{name}"),
        prefix,
    ))
}

/// The region an access point ARN names.
fn arn_region(bucket: &str) -> Option<String> {
    bucket
        .strip_prefix("arn:")
        .and_then(|rest| rest.split(':').nth(2))
        .map(str::to_string)
}

/// A Content-Type: `type/subtype` (parameters allowed), printable ASCII only.
fn parse_content_type(s: &str) -> Result<String, String> {
    let valid = s.split_once('/').is_some_and(|(t, rest)| {
        !t.is_empty() && !rest.is_empty() && !t.contains(char::is_whitespace)
    }) && s.bytes().all(|b| (0x20..0x7f).contains(&b));
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a content type like application/octet-stream"
        ))
    }
}

/// Parses an octal permission mode such as `644`, `0644` or `0o644`.
pub fn parse_mode(s: &str) -> Result<u16, String> {
    let digits = s.trim_start_matches("0o");
    match u16::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("'{s}' is not an octal mode like 644")),
    }
}

/// Parses `--metadata-memory`: a size of at least 1MiB.
fn parse_metadata_memory(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        n if n < 1 << 20 => Err(format!("'{s}' is below the least metadata memory, 1MiB")),
        n => Ok(n),
    }
}

/// Parses a byte size with an optional binary unit: `512MiB`, `512M`, `2GiB`, `65536`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("'{s}' is not a size like 512MiB")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 512MiB"))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// The longest duration accepted: a TTL beyond ten years means "forever" in practice, and
/// larger values would overflow `Instant` arithmetic later.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a duration: `5s`, `500ms`, `2m`, `1h`, or plain seconds; at most ten years.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 5s or 500ms"))?;
    let duration = match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => return Err(format!("'{s}' is not a duration like 5s or 500ms")),
    };
    duration
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("'{s}' is too long: give at most ten years (87600h)"))
}

impl Args {
    /// Validates the arguments into a `Config`.
    pub fn into_config(self) -> Result<Config, String> {
        let (Some(source), Some(mountpoint)) = (&self.source, &self.mountpoint) else {
            return Err("give the bucket and the mount point: bucketfs BUCKET MOUNTPOINT".into());
        };
        let (bucket, prefix) = parse_source(source)?;
        if self.part_size > MAX_PART_SIZE || reach(self.part_size, u64::MAX) < MAX_OBJECT_SIZE {
            return Err(format!(
                "--part-size {} is out of range: give 6MiB to 5GiB (S3 parts are at least 5MiB, and 10,000 of them must reach 5TiB)",
                self.part_size
            ));
        }
        if self.cache_size / 2 < 2 * self.part_size {
            return Err(format!(
                "--cache-size {} is too small for --part-size {}: give at least four parts' worth",
                self.cache_size, self.part_size
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(format!(
                "--log-level '{}' is not valid: {e}",
                self.log_level
            ));
        }
        let mountpoint = std::path::absolute(mountpoint)
            .map_err(|e| format!("mount point {}: {e}", mountpoint.display()))?;
        let mut store = StoreConfig::new(bucket.clone());
        store.endpoint_url = self.endpoint_url;
        // An access point is reached in its own region.
        store.region = self.region.or_else(|| arn_region(&bucket));
        store.profile = self.profile;
        store.force_path_style = self.force_path_style;
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let ca_bundle = match self
            .ca_bundle
            .or_else(|| std::env::var_os("AWS_CA_BUNDLE").map(PathBuf::from))
        {
            Some(path) => {
                let pem = read_ca_bundle(&path)?;
                Some((path, pem))
            }
            None => None,
        };
        store.checksum = match self.checksum.as_str() {
            "crc64nvme" => Some(Checksum::Crc64Nvme),
            "crc32c" => Some(Checksum::Crc32c),
            "off" => None,
            _ if is_aws(store.endpoint_url.as_deref()) => Some(Checksum::Crc32c),
            _ => None,
        };
        store.network = NetworkConfig {
            https_proxy: self.https_proxy,
            http_proxy: self.http_proxy,
            no_proxy: self.no_proxy,
            ca_bundle,
        };
        store.headers = RequestHeaders {
            storage_class: match self.storage_class {
                Some(class) => Some(parse_storage_class(&class)?),
                None => None,
            },
            sse: match self.sse {
                Some(sse) => Some(Sse::parse(&sse, self.sse_kms_key_id)?),
                None => None,
            },
            customer_key: match &self.sse_c_key_file {
                Some(path) => Some(CustomerKey::from_file(path, euid)?),
                None => None,
            },
            requester_pays: self.requester_pays,
            expected_owner: match self.expected_bucket_owner {
                Some(owner) => Some(parse_account(&owner)?),
                None => None,
            },
        };
        let source = match (self.notify_queue, self.notify_topic) {
            (Some(url), _) => NotifySource::Queue(parse_queue_url(&url)?),
            (None, Some(arn)) => NotifySource::Topic(parse_topic_arn(&arn)?),
            (None, None) => NotifySource::Off,
        };
        let default_ttl = match source {
            NotifySource::Off => DEFAULT_METADATA_TTL,
            _ => NOTIFIED_METADATA_TTL,
        };
        let metadata_ttl = self.metadata_ttl.unwrap_or(default_ttl);
        let negative_ttl = self.negative_ttl.unwrap_or(metadata_ttl);
        let notify = NotifyConfig {
            source,
            fallback_ttls: (
                metadata_ttl.min(DEFAULT_METADATA_TTL),
                negative_ttl.min(DEFAULT_METADATA_TTL),
            ),
        };
        let fs = FsConfig {
            prefix: prefix.clone(),
            read_only: self.read_only,
            uid: self.uid.unwrap_or(euid),
            gid: self.gid.unwrap_or(egid),
            file_mode: self.file_mode,
            dir_mode: self.dir_mode,
            metadata_ttl,
            negative_ttl,
            copy_limit: None,
            content_type_default: self.content_type_default,
            xattr: !self.no_xattr,
            metadata_memory: self.metadata_memory,
        };
        let mut notices = Vec::new();
        if self.cache_dir.is_some() || self.cache_dir_limit.is_some() {
            notices.push(
                "--cache-dir and --cache-dir-limit (cache_dir, cache_dir_limit) are deprecated: \
                 they name the staging directory, now --staging-dir and --staging-dir-limit \
                 (--disk-cache is the cache of blocks read)"
                    .to_owned(),
            );
        }
        if let Some(addr) = self.metrics_addr.filter(|a| !a.ip().is_loopback()) {
            notices.push(format!(
                "--metrics-addr {addr} is reachable from other hosts and has no authentication: \
                 anyone who can connect reads the mount's request counts, errors and cache \
                 figures (bind 127.0.0.1, or firewall the port)"
            ));
        }
        let absolute = |flag: &str, dir: PathBuf| {
            std::path::absolute(&dir).map_err(|e| format!("{flag} {}: {e}", dir.display()))
        };
        let disk_dir = match self.disk_cache {
            _ if self.no_disk_cache => None,
            Some(dir) => Some((absolute("--disk-cache", dir)?, false)),
            // Plaintext of customer-encrypted objects is kept on disk only when asked for.
            None if self.sse_c_key_file.is_some() => None,
            None => default_disk_cache_dir(
                euid,
                std::env::var_os("XDG_CACHE_HOME"),
                std::env::var_os("HOME"),
            )
            .map(|dir| (dir, true)),
        };
        let cache = CacheConfig {
            budget: self.cache_size - self.cache_size / 2,
            disk: disk_dir.map(|(dir, by_default)| DiskCacheConfig {
                size: self
                    .disk_cache_size
                    .unwrap_or_else(|| default_disk_cache_size(free_space_at(&dir))),
                dir,
                // Passthrough makes a writer's open of a file being read fail (ETXTBSY): only
                // for a directory asked for, never by default (SEMANTICS.md).
                passthrough: !self.no_passthrough && !by_default,
                by_default,
            }),
            metadata: match self.metadata_cache {
                Some(dir) => Some(MetadataCacheConfig {
                    dir: absolute("--metadata-cache", dir)?,
                    size: self
                        .metadata_cache_size
                        .unwrap_or(DEFAULT_METADATA_CACHE_SIZE),
                }),
                None => None,
            },
            ..CacheConfig::default()
        };
        let upload = UploadConfig {
            part_size: self.part_size,
            concurrency: usize::from(self.upload_concurrency),
            budget: self.cache_size / 2,
            staging_dir: match self.staging_dir.or(self.cache_dir) {
                Some(dir) => absolute("--staging-dir", dir)?,
                None => default_staging_dir(euid),
            },
            staging_limit: self
                .staging_dir_limit
                .or(self.cache_dir_limit)
                .unwrap_or(DEFAULT_STAGING_LIMIT),
        };
        let daemon = DaemonConfig {
            mountpoint,
            foreground: self.foreground,
            allow_other: self.allow_other,
            log_level: self.log_level,
            log_file: self.log_file,
            fs_name: if prefix.is_empty() {
                bucket
            } else {
                format!("{bucket}:{prefix}")
            },
            fuse_threads: 4,
            notices,
            metrics_addr: self.metrics_addr,
        };
        Ok(Config {
            store,
            fs,
            cache,
            upload,
            daemon,
            notify,
        })
    }
}

/// An SQS queue URL: `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`, or any http(s) URL of
/// an SQS-compatible service.
fn parse_queue_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest.and_then(|r| r.split_once('/')) {
        Some((host, path)) if !host.is_empty() && !path.trim_matches('/').is_empty() => {
            Ok(url.to_string())
        }
        _ => Err(format!(
            "--notify-queue '{url}' is not an SQS queue URL like https://sqs.us-east-1.amazonaws.com/123456789012/bucket-events"
        )),
    }
}

/// An SNS topic ARN: `arn:PARTITION:sns:REGION:ACCOUNT:NAME`.
fn parse_topic_arn(arn: &str) -> Result<String, String> {
    let parts: Vec<&str> = arn.split(':').collect();
    if parts.len() == 6 && parts[0] == "arn" && parts[2] == "sns" && !parts[5].is_empty() {
        Ok(arn.to_string())
    } else {
        Err(format!(
            "--notify-topic '{arn}' is not an SNS topic ARN like arn:aws:sns:us-east-1:123456789012:bucket-events"
        ))
    }
}

#[cfg(test)]
mod tests;

/// Where staging files go unless `--staging-dir` says: root's in a directory only root can
/// write (never world-writable /var/tmp, where another user could make it first); another
/// user's in /var/tmp, checked at mount to be that user's own (owned_dir).
/// The disk cache's directory when none is given: /var/cache/bucketfs for root, the user's
/// cache directory (`$XDG_CACHE_HOME/bucketfs`, else `$HOME/.cache/bucketfs`) for others; none
/// for a user without a home (the disk tier is then off).
pub fn default_disk_cache_dir(
    euid: u32,
    xdg_cache_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    if euid == 0 {
        return Some(PathBuf::from("/var/cache/bucketfs"));
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    match xdg_cache_home.and_then(absolute) {
        Some(dir) => Some(dir.join("bucketfs")),
        None => home.and_then(absolute).map(|h| h.join(".cache/bucketfs")),
    }
}

/// The most the disk cache uses by default.
pub const DISK_CACHE_CAP: u64 = 10 << 30;

/// The disk cache's bound when none is given: a quarter of the `free` bytes of its
/// filesystem, at most `DISK_CACHE_CAP` (an unknown free space: the cap).
pub fn default_disk_cache_size(free: Option<u64>) -> u64 {
    free.map_or(DISK_CACHE_CAP, |f| (f / 4).min(DISK_CACHE_CAP))
}

/// Bytes an unprivileged user may still write on the filesystem of `dir`, or of its nearest
/// existing ancestor when it does not exist yet.
fn free_space_at(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

pub fn default_staging_dir(euid: u32) -> PathBuf {
    if euid == 0 {
        PathBuf::from("/var/cache/bucketfs/staging")
    } else {
        PathBuf::from(format!("/var/tmp/bucketfs-{euid}"))
    }
}
