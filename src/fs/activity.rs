//! What the mount is doing, for `bucketfs status`: uploads in flight with their progress,
//! files with changes not yet committed, commits that failed, the block cache's use.
//!
//! Non-obvious problems:
//! 1. Nothing here may wait on a writer: a writer's state lock is held for a whole commit
//!    (minutes on a slow uplink), so a writer whose lock is taken counts as pending, and the
//!    progress of its upload comes from the upload's own atomics (`UploadRegistry`).
//! 2. Failed commits are kept (the last `FAILURES_KEPT`) with a sequence number, so that
//!    `status --wait` can report the failures that happened while it waited, and only those.

use std::collections::VecDeque;

use super::meta::MetaStats;
use super::Fs;
use crate::cache::CacheActivity;
use crate::upload::ProgressSnapshot;

/// Failed commits remembered.
pub const FAILURES_KEPT: usize = 100;

/// One upload in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadActivity {
    /// The file's path in the mount.
    pub path: String,
    /// Its counters.
    pub progress: ProgressSnapshot,
}

/// A file open for writing with changes not yet committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFile {
    /// The file's path in the mount.
    pub path: String,
    /// Its size now.
    pub size: u64,
    /// A write or a commit is running on it now.
    pub busy: bool,
}

/// A commit that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Increases by one per failure of this mount, from 1.
    pub seq: u64,
    /// The file's path in the mount.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// Everything `bucketfs status` shows of the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// Uploads in flight, oldest first.
    pub uploads: Vec<UploadActivity>,
    /// Files with changes not yet committed.
    pub pending: Vec<PendingFile>,
    /// The last failed commits, oldest first.
    pub failures: Vec<Failure>,
    /// The number of the last failure (0: none yet).
    pub last_failure: u64,
    /// The block cache.
    pub cache: CacheActivity,
    /// The metadata held.
    pub meta: MetaStats,
    /// The metadata snapshot, when kept (`--metadata-cache`).
    pub snapshot: Option<SnapshotActivity>,
}

/// What the metadata snapshot did since the mount (fs/remount.rs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotActivity {
    /// Directories answered from their saved listing.
    pub served: u64,
    /// Of those, the ones a kept notification queue proved (not listed again).
    pub proven: u64,
    /// Directories listed again after they were answered so.
    pub revalidated: u64,
    /// Of those, the ones whose listing differed from the saved one (or could not be had).
    pub changed: u64,
    /// Saved files dropped as damaged or foreign.
    pub rejected: u64,
}

/// The failed commits of one mount.
#[derive(Debug, Default)]
pub(super) struct Failures {
    last: u64,
    kept: VecDeque<Failure>,
}

impl Failures {
    pub(super) fn record(&mut self, path: String, message: String) {
        self.last += 1;
        if self.kept.len() == FAILURES_KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(Failure {
            seq: self.last,
            path,
            message,
        });
    }
}

impl Failures {
    /// The failures kept, oldest first.
    pub(super) fn kept(&self) -> Vec<Failure> {
        self.kept.iter().cloned().collect()
    }

    /// The number of the last failure (0: none yet).
    pub(super) fn last(&self) -> u64 {
        self.last
    }
}

impl Fs {
    /// What the mount is doing now; never waits on a writer (see 1.).
    pub fn activity(&self) -> Activity {
        let meta = self.tables.lock().meta.stats();
        let (failures, last_failure) = self.writers.failures();
        Activity {
            uploads: self.writers.uploads(),
            pending: self.writers.pending(),
            failures,
            last_failure,
            cache: self.cache.activity(),
            meta,
            snapshot: self.snapshot_activity(),
        }
    }
}
