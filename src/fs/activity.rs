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
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

impl Fs {
    /// What the mount is doing now; never waits on a writer (see 1.).
    pub fn activity(&self) -> Activity {
        let (writers, meta): (Vec<_>, _) = {
            let t = self.tables.lock();
            (t.writers.values().map(Arc::clone).collect(), t.meta.stats())
        };
        let mut pending = Vec::new();
        for w in writers {
            if w.unlinked.load(Ordering::SeqCst) {
                continue;
            }
            let busy = match w.state.try_lock() {
                Ok(st) if st.failed.is_some() || !st.dirty => continue,
                Ok(_) => false,
                Err(_) => true,
            };
            pending.push(PendingFile {
                path: w.path(),
                size: w.size.load(Ordering::SeqCst),
                busy,
            });
        }
        pending.sort_by(|a, b| a.path.cmp(&b.path));
        let uploads = self
            .uploads
            .snapshot()
            .into_iter()
            .map(|progress| UploadActivity {
                path: self
                    .names.path_of_key(&progress.key)
                    .unwrap_or_else(|| progress.key.clone()),
                progress,
            })
            .collect();
        let failures = self.failures.lock();
        Activity {
            uploads,
            pending,
            failures: failures.kept.iter().cloned().collect(),
            last_failure: failures.last,
            cache: self.cache.activity(),
            meta,
        }
    }

    /// Remembers a failed commit of `path`.
    pub(super) fn failed_commit(&self, path: String, message: String) {
        self.failures.lock().record(path, message);
    }
}
