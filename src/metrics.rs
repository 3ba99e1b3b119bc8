//! The Prometheus endpoint of `--metrics-addr`: the S3 request counts the store records
//! (`store::requests`), and everything else (the caches, uploads, metadata, FUSE operations by
//! kind and errno). The names and their meaning are listed in docs/STATUS.md.
//!
//! Non-obvious problems:
//! 1. Without `--metrics-addr` no recorder is installed and the `metrics` macros do nothing.
//! 2. State (cache use, uploads in flight, metadata entries) and the block cache's counters
//!    are published once a second by `publish`, from what `Fs::activity` already keeps, so the
//!    read path pays nothing for them. This module sits above `fs` and `store`, which never
//!    call into it.

use std::net::SocketAddr;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::fs::Activity;
use crate::store::requests::{
    LATENCY_BUCKETS, S3_BYTES_RECEIVED, S3_BYTES_SENT, S3_LATENCY, S3_REQUESTS, S3_RETRIES,
};

const FUSE_OPS: &str = "bucketfs_fuse_operations_total";
const FUSE_ERRORS: &str = "bucketfs_fuse_errors_total";

/// Starts the Prometheus endpoint at `addr` (`/metrics`, any path answers) on the current
/// runtime and describes every metric.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(S3_LATENCY.to_string()), LATENCY_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    describe();
    Ok(())
}

fn describe() {
    describe_counter!(
        S3_REQUESTS,
        "S3 requests (attempts), by operation and outcome"
    );
    describe_counter!(
        S3_RETRIES,
        "S3 attempts after an operation's first, by operation"
    );
    describe_histogram!(
        S3_LATENCY,
        metrics::Unit::Seconds,
        "Time from sending an S3 request to the end of its attempt, by operation"
    );
    describe_counter!(
        S3_BYTES_SENT,
        metrics::Unit::Bytes,
        "S3 request bodies (Content-Length)"
    );
    describe_counter!(
        S3_BYTES_RECEIVED,
        metrics::Unit::Bytes,
        "S3 response bodies (Content-Length)"
    );
    describe_counter!(FUSE_OPS, "FUSE operations received, by kind");
    describe_counter!(
        FUSE_ERRORS,
        "FUSE operations answered with an error, by kind and errno"
    );
    describe_counter!(
        "bucketfs_cache_hits_total",
        "Block reads served by the block cache"
    );
    describe_counter!("bucketfs_cache_misses_total", "Block reads that fetched");
    describe_counter!(
        "bucketfs_cache_evictions_total",
        "Blocks evicted from the block cache to make room"
    );
    describe_gauge!(
        "bucketfs_cache_bytes",
        metrics::Unit::Bytes,
        "Bytes held by the block cache (cached or in flight)"
    );
    describe_gauge!(
        "bucketfs_cache_capacity_bytes",
        metrics::Unit::Bytes,
        "Bytes the block cache may hold"
    );
    describe_gauge!("bucketfs_uploads_in_flight", "Uploads under way");
    describe_gauge!(
        "bucketfs_upload_bytes_pending",
        metrics::Unit::Bytes,
        "Bytes written to files being uploaded and not yet sent"
    );
    describe_gauge!(
        "bucketfs_files_uncommitted",
        "Files open for writing with changes not yet committed"
    );
    describe_counter!("bucketfs_commits_failed_total", "Commits that failed");
    describe_gauge!("bucketfs_metadata_inodes", "Inode numbers held");
    describe_gauge!(
        "bucketfs_metadata_entries",
        "Names with attributes, listings' entries and remembered misses held"
    );
    describe_gauge!(
        "bucketfs_metadata_bytes",
        "Memory the metadata takes, estimated (bounded by --metadata-memory)"
    );
    describe_counter!(
        "bucketfs_metadata_shed_total",
        "Directories the kernel was asked to forget to stay within --metadata-memory"
    );
}

/// Publishes the state gauges and the block cache's counters (see 4.).
pub fn publish(a: &Activity) {
    let c = &a.cache;
    counter!("bucketfs_cache_hits_total").absolute(c.hits);
    counter!("bucketfs_cache_misses_total").absolute(c.misses);
    counter!("bucketfs_cache_evictions_total").absolute(c.evictions);
    gauge!("bucketfs_cache_bytes").set((c.blocks * c.block_size) as f64);
    gauge!("bucketfs_cache_capacity_bytes").set((c.capacity * c.block_size) as f64);
    gauge!("bucketfs_uploads_in_flight").set(a.uploads.len() as f64);
    let unsent: u64 = a
        .uploads
        .iter()
        .map(|u| u.progress.written.saturating_sub(u.progress.sent))
        .sum();
    gauge!("bucketfs_upload_bytes_pending").set(unsent as f64);
    gauge!("bucketfs_files_uncommitted").set(a.pending.len() as f64);
    counter!("bucketfs_commits_failed_total").absolute(a.last_failure);
    gauge!("bucketfs_metadata_inodes").set(a.meta.inodes as f64);
    let entries = a.meta.nodes + a.meta.listed_entries + a.meta.misses;
    gauge!("bucketfs_metadata_entries").set(entries as f64);
    gauge!("bucketfs_metadata_bytes").set(a.meta.bytes as f64);
    counter!("bucketfs_metadata_shed_total").absolute(a.meta.shed);
}

/// Counts one FUSE operation of kind `op`.
pub fn fuse_op(op: &'static str) {
    counter!(FUSE_OPS, "op" => op).increment(1);
}

/// Counts one FUSE operation of kind `op` answered with `errno`.
pub fn fuse_error(op: &'static str, errno: i32) {
    use nix::errno::Errno;
    // The usual answers by name without formatting (getxattr's ENODATA comes once per file
    // of an `ls -l`); others through nix's names.
    let name: metrics::SharedString = match Errno::from_raw(errno) {
        Errno::ENOENT => "ENOENT".into(),
        Errno::ENODATA => "ENODATA".into(),
        Errno::EACCES => "EACCES".into(),
        Errno::EIO => "EIO".into(),
        Errno::EEXIST => "EEXIST".into(),
        Errno::ENOTEMPTY => "ENOTEMPTY".into(),
        Errno::EROFS => "EROFS".into(),
        Errno::ERANGE => "ERANGE".into(),
        Errno::ENOSYS => "ENOSYS".into(),
        other => format!("{other:?}").into(),
    };
    counter!(FUSE_ERRORS, "op" => op, "errno" => name).increment(1);
}

#[cfg(test)]
mod tests {

    #[test]
    fn errno_labels_are_names() {
        assert_eq!(
            format!("{:?}", nix::errno::Errno::from_raw(libc::ENOENT)),
            "ENOENT"
        );
    }
}
