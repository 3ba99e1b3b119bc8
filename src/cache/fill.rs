//! Background fill: an object read at random is fetched whole into the disk tier, so that its
//! later reads are served from local disk instead of a ranged GET each (what s3fs does for
//! every file, and why its cold random reads were 87x bucketfs's: docs/benchmarks.md).
//!
//! Non-obvious problems:
//! 1. When: after `FILL_AFTER` random reads in a row by one reader, on an object of more than
//!    one block (a smaller one is fetched whole by its first read) and at most half the disk
//!    tier's bound (a larger one would evict itself and everything else: it keeps its ranged
//!    reads). Once per object at a time: a second random reader joins the fill under way.
//! 2. How fast and how much memory: runs of `readahead_get_size` (8 MiB) GETs, as many at once
//!    as one sequential reader's read-ahead window holds, so a fill costs what a sequential
//!    read of the object costs, in requests, bytes and memory. A run already on disk is not
//!    fetched again.
//! 3. The readers do not wait for it: a read of a block not yet landed still sends its own
//!    small GET; a block that landed is read from disk (`read_on_disk`, checksummed).
//! 4. It stops, quietly, when a GET fails (a replaced object fails its `If-Match`: the fill
//!    was of the version the reader opened) or when the tier does not keep what it wrote (a
//!    full disk pauses inserts): nothing is retried in a loop.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::disk::DiskCache;
use super::{block_len, ObjectId};
use crate::error::{FsError, FsResult};
use crate::store::ObjectStore;

/// Random reads in a row by one reader that start a fill of its object.
pub const FILL_AFTER: u32 = 4;

/// What a fill works with.
pub struct Fill {
    pub store: Arc<dyn ObjectStore>,
    pub disk: Arc<DiskCache>,
    pub object: Arc<ObjectId>,
    pub size: u64,
    pub block_size: u64,
    /// Blocks per GET.
    pub get_blocks: u64,
    /// GETs at once.
    pub parallel: usize,
}

impl Fill {
    /// True when an object of `size` bytes is worth filling into `disk` (see 1.).
    pub fn fits(disk: &DiskCache, size: u64, block_size: u64) -> bool {
        size > block_size && size <= disk.limit() / 2
    }

    /// Fetches every run of the object that is not on disk yet and writes it there.
    pub async fn run(self) -> FsResult<()> {
        let blocks = self.size.div_ceil(self.block_size);
        let step = self.get_blocks.max(1);
        let runs = (0..blocks)
            .step_by(step as usize)
            .map(|start| start..(start + step).min(blocks));
        futures::stream::iter(runs)
            .map(|run| self.run_of(run))
            .buffer_unordered(self.parallel.max(1))
            .try_collect::<()>()
            .await
    }

    /// One run: skipped when on disk, else one GET and its blocks written.
    async fn run_of(&self, run: std::ops::Range<u64>) -> FsResult<()> {
        let (disk, object, size) = (Arc::clone(&self.disk), Arc::clone(&self.object), self.size);
        let blocks = run.clone();
        let present = tokio::task::spawn_blocking(move || disk.present(&object, size, blocks));
        if present.await.unwrap_or(false) {
            return Ok(());
        }
        let bs = self.block_size;
        let range = run.start * bs..(run.end * bs).min(size);
        let got = self
            .store
            .get_object_pieces(&self.object.key, &self.object.etag, range, bs)
            .await
            .map_err(FsError::from)?;
        let (disk, object) = (Arc::clone(&self.disk), Arc::clone(&self.object));
        let kept = tokio::task::spawn_blocking(move || {
            for (index, block) in run.clone().zip(&got) {
                // A short block (the object shrank) is never kept: a read reports it.
                if block.len() as u64 == block_len(size, bs, index) {
                    disk.write_block(&object, size, index, block);
                }
            }
            disk.present(&object, size, run)
        });
        match kept.await {
            Ok(true) => Ok(()),
            _ => Err(FsError::new(
                libc::ENOSPC,
                "the disk cache kept none of it (full or paused)",
            )),
        }
    }
}
