//! Background fill: an object read at random is fetched whole into the disk tier, so that its
//! later reads are served from local disk instead of a ranged GET each (what s3fs does for
//! every file, and why its cold random reads were 87x bucketfs's: docs/benchmarks.md).
//!
//! Non-obvious problems:
//! 1. When: after `FILL_AFTER` random reads in a row by one reader, on an object of more than
//!    one block (a smaller one is fetched whole by its first read) and at most half the disk
//!    tier's bound (a larger one would evict itself and everything else: it keeps its ranged
//!    reads). Once per object version: a second random reader joins the fill under way, and a
//!    fill that ended (done or stopped) is not started again while it is remembered
//!    (`ENDED` objects), so a failing one cannot turn every random read into a new fill.
//! 2. How fast and how much memory: runs of `readahead_get_size` (8 MiB) GETs, as many at once
//!    as one sequential reader's read-ahead window holds, so a fill costs what a sequential
//!    read of the object costs, in requests and bytes. The GETs of all fills share those
//!    permits: however many objects are read at random, fills hold at most one read-ahead
//!    window of memory (32 MiB with the defaults), and at most `MAX_FILLS` run at once. A run
//!    already on disk is not fetched again.
//! 3. The readers do not wait for it: a read of a block not yet landed still sends its own
//!    small GET; a block that landed is read from disk (`read_on_disk`, checksummed).
//! 4. It stops, quietly, when a GET fails (a replaced object fails its `If-Match`: the fill
//!    was of the version the reader opened) or when the tier does not keep what it wrote (a
//!    full disk pauses inserts): nothing is retried in a loop.
//! 5. Each GET lands in a buffer of the fill's own, reused by its next GET: fresh 1 MiB pieces
//!    per block come from `mmap` (daemon/mod.rs) and fault in page by page, 262,144 faults
//!    and 1,024 `munmap`s for 1 GiB, about a tenth of a fill's CPU. The fill holds at most one
//!    buffer per GET at once (its bound above) and frees them when it ends.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use lru::LruCache;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::disk::DiskCache;
use super::{write_blocks, ObjectId};
use crate::error::{FsError, FsResult};
use crate::store::ObjectStore;

/// Random reads in a row by one reader that start a fill of its object.
pub const FILL_AFTER: u32 = 4;

/// Fills that may run at once.
const MAX_FILLS: usize = 4;

/// Objects whose fill ended, remembered so that it is not started again (see 1.).
const ENDED: usize = 1024;

/// The fills of one mount: which run, which ended, and the GET permits they share.
#[derive(Debug)]
pub struct Fills {
    objects: Mutex<Objects>,
    gets: Semaphore,
    parallel: usize,
}

/// Which objects' fills run, and which ended.
#[derive(Debug)]
struct Objects {
    running: HashSet<Arc<ObjectId>>,
    ended: LruCache<Arc<ObjectId>, ()>,
}

impl Fills {
    /// Fills whose GETs together are at most `parallel` at once.
    pub fn new(parallel: usize) -> Self {
        let ended = NonZeroUsize::new(ENDED).unwrap_or(NonZeroUsize::MIN);
        Self {
            objects: Mutex::new(Objects {
                running: HashSet::new(),
                ended: LruCache::new(ended),
            }),
            gets: Semaphore::new(parallel.max(1)),
            parallel: parallel.max(1),
        }
    }

    /// Claims `object` for a fill: false when one runs or ended, or `MAX_FILLS` run.
    pub fn claim(&self, object: &Arc<ObjectId>) -> bool {
        let mut o = self.objects.lock();
        if o.running.len() >= MAX_FILLS || o.running.contains(object) || o.ended.contains(object) {
            return false;
        }
        o.running.insert(Arc::clone(object))
    }

    /// Runs `fill` (claimed) to its end, then remembers that it ended.
    pub async fn run(self: Arc<Self>, fill: Fill) {
        let object = Arc::clone(&fill.object);
        tracing::debug!(key = %object.key, size = fill.size, "disk cache: fetching a randomly read object whole");
        if let Err(e) = fill.run(&self).await {
            tracing::debug!(key = %object.key, "disk cache: fill stopped: {}", e.message);
        }
        self.end(object);
    }

    /// `object`'s fill ended: another may run, and none of it will.
    fn end(&self, object: Arc<ObjectId>) {
        let mut o = self.objects.lock();
        o.running.remove(&object);
        o.ended.put(object, ());
    }
}

/// What a fill works with.
pub struct Fill {
    pub store: Arc<dyn ObjectStore>,
    pub disk: Arc<DiskCache>,
    pub object: Arc<ObjectId>,
    pub size: u64,
    pub block_size: u64,
    /// Blocks per GET.
    pub get_blocks: u64,
}

impl Fill {
    /// True when an object of `size` bytes is worth filling into `disk` (see 1.).
    pub fn fits(disk: &DiskCache, size: u64, block_size: u64) -> bool {
        size > block_size && size <= disk.limit() / 2
    }

    /// Fetches every run of the object that is not on disk yet and writes it there.
    async fn run(&self, fills: &Fills) -> FsResult<()> {
        let blocks = self.size.div_ceil(self.block_size);
        let step = self.get_blocks.max(1);
        let runs = (0..blocks)
            .step_by(step as usize)
            .map(|start| start..(start + step).min(blocks));
        // The buffers of GETs that ended, for the next ones (see 5.).
        let buffers = Mutex::new(Vec::new());
        futures::stream::iter(runs)
            .map(|run| self.run_of(fills, &buffers, run))
            .buffer_unordered(fills.parallel)
            .try_collect::<()>()
            .await
    }

    /// One run: skipped when on disk, else one GET, holding one of the shared permits until
    /// its blocks are written, into a buffer of the fill's own (see 5.).
    async fn run_of(
        &self,
        fills: &Fills,
        buffers: &Mutex<Vec<Vec<u8>>>,
        run: std::ops::Range<u64>,
    ) -> FsResult<()> {
        let (disk, object, size) = (Arc::clone(&self.disk), Arc::clone(&self.object), self.size);
        let blocks = run.clone();
        let present = tokio::task::spawn_blocking(move || disk.present(&object, size, blocks));
        if present.await.unwrap_or(false) {
            return Ok(());
        }
        let _permit = fills
            .gets
            .acquire()
            .await
            .map_err(|_| FsError::new(libc::ECANCELED, "fills closed"))?;
        let bs = self.block_size;
        let range = run.start * bs..(run.end * bs).min(size);
        let mut buffer = buffers.lock().pop().unwrap_or_default();
        buffer.resize((range.end - range.start) as usize, 0);
        let got = self
            .store
            .get_object_into(&self.object.key, &self.object.etag, range, &mut buffer)
            .await
            .map_err(FsError::from)?;
        buffer.truncate(got);
        let (disk, object) = (Arc::clone(&self.disk), Arc::clone(&self.object));
        let kept = tokio::task::spawn_blocking(move || {
            write_blocks(
                &disk,
                &object,
                (size, bs),
                run.start,
                buffer.chunks(bs as usize),
            );
            (disk.present(&object, size, run), buffer)
        });
        match kept.await {
            Ok((true, buffer)) => {
                buffers.lock().push(buffer);
                Ok(())
            }
            _ => Err(FsError::new(
                libc::ENOSPC,
                "the disk cache kept none of it (full or paused)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_filled_once_and_at_most_max_fills_run_at_once() {
        let fills = Fills::new(4);
        let objects: Vec<Arc<ObjectId>> = (0..=MAX_FILLS)
            .map(|i| {
                Arc::new(ObjectId {
                    key: format!("k{i}"),
                    etag: "\"e\"".into(),
                })
            })
            .collect();
        for o in &objects[..MAX_FILLS] {
            assert!(fills.claim(o));
        }
        assert!(!fills.claim(&objects[0]), "one fill per object at a time");
        assert!(
            !fills.claim(&objects[MAX_FILLS]),
            "at most MAX_FILLS at once"
        );
        fills.end(Arc::clone(&objects[0]));
        assert!(
            !fills.claim(&objects[0]),
            "an ended fill is not started again"
        );
        assert!(fills.claim(&objects[MAX_FILLS]), "its place is free");
        let newer = Arc::new(ObjectId {
            key: "k0".into(),
            etag: "\"f\"".into(),
        });
        fills.end(Arc::clone(&objects[1]));
        assert!(fills.claim(&newer), "another version is another object");
    }
}
