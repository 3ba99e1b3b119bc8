//! bucketfs: mount an S3 bucket as a local filesystem with FUSE.
//!
//! Crate map (dependencies point down):
//! - `cli`: command line and `-o` mount options into a validated [`config::Config`].
//! - `config`: plain configuration structs and their defaults.
//! - `daemon`: checks, fork and readiness, mount, signals, exit.
//! - `fuse`: the FUSE requests (fuser); spawns each onto tokio. `daemon` uses fuser only to
//!   build and run the session.
//! - `mount`: mount(2) and unmount without opening the mount point (systemd automount).
//! - `fs`: the FUSE-agnostic filesystem: handles, writers, namespace changes; `fs::meta` owns
//!   inodes, attributes, listings and misses behind an event API.
//! - `notify`: S3 event notifications from SQS (or SNS through a queue of the mount's own)
//!   into `fs` invalidations and kernel notes (`fs::remote`).
//! - `cache`: the block cache and read-ahead; `cache::disk` its disk tier (`--disk-cache`).
//! - `upload`: write buffers into PutObject or multipart uploads; staging files on disk.
//! - `store`: the `ObjectStore` trait, the only door to S3 (`s3`), an in-memory one (`memory`)
//!   and, for tests, a failure-injecting wrapper (`faulty`).
//! - `metrics`: S3 requests counted per attempt (an SDK interceptor), and the Prometheus
//!   endpoint of `--metrics-addr`.
//! - `status`: the status socket of a mount and the `bucketfs status` command (`client`).
//! - `error`: errno-carrying errors and the store-error-to-errno table.
//! - `owned_dir`: directories the daemon writes into, made or checked as its own and used
//!   through a descriptor (staging, disk cache, status socket).
//!
//! Read flow: kernel READ → `fuse` → `fs::Fs::read` (handle → key + ETag) → `cache::BlockCache`
//! (hit, or the disk tier, or ranged GET with `If-Match`; sequential readers start read-ahead).
//! A file whole in the disk tier is read by the kernel itself (`fuse::passthrough`).
//! Write flow: CREATE/OPEN → a writer per inode → sequential bytes stream as parts
//! (`upload::Upload`), other changes go to a staging file (`upload::staging`) → FLUSH/FSYNC
//! commit: PutObject or CompleteMultipartUpload, errors returned to close()/fsync().
//! Change flow (with `--notify-queue`/`--notify-topic`): SQS message → `notify::Consumer` →
//! `fs::Fs::changed_elsewhere` → `fs::meta` forgets → kernel notes → `fuse::KernelNotifier`.
//! Listing flow: OPENDIR → `fs::list` pages ListObjectsV2 → entries with attributes → READDIRPLUS.

pub mod cache;
pub mod cli;
pub mod config;
pub mod csi;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod metrics;
pub mod mount;
pub mod notify;
pub mod owned_dir;
pub mod status;
pub mod store;
pub mod upload;
