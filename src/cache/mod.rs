//! Block cache and read-ahead: fixed-size ranged GETs, cached in an LRU under one memory budget,
//! keyed by (key, ETag, block index) so a block of an old version is never served for a new one.
//!
//! Non-obvious problems:
//! 1. Several readers (and the read-ahead) may want the same block at once: the cache holds a slot
//!    per block that the first one fills while the others wait on it, so each block is fetched once.
//! 2. The budget counts every slot as a whole block, in flight or filled, so memory stays bounded
//!    even when read-ahead runs far ahead; a failed fetch frees its slot so a retry can happen.
//! 3. Read-ahead grows while a reader stays sequential (doubling per block entered) and resets on
//!    a seek, so streams get parallel GETs; a random read of blocks not cached fetches exactly
//!    its own range and caches nothing (random 4 KiB reads: 353 -> 923 IOPS, docs/benchmarks.md).
//! 4. Read-ahead fetches runs of missing blocks with one GET of up to `readahead_get_size`
//!    (8 MiB), and once the window is that large it waits until a whole GET is due: a server
//!    spends about twice the CPU per byte on 1 MiB GETs as on 8 MiB ones (docs/benchmarks.md).
//!    Runs are aligned to multiples of that size, as multipart parts usually are, so that a GET
//!    does not straddle two of the server's chunks.
//!    Each block of a run gets its own slot and its own buffer (`get_object_pieces`): slices
//!    of one run-sized buffer would keep all of it alive while any block of it stays cached.
//! 5. A block a sequential reader has read past is demoted to the cold end of the LRU: it will
//!    not be read again soon, while the blocks fetched ahead of it (inserted earlier, so
//!    otherwise older) will; without this, four streams evicted each other's read-ahead.
//! 6. Every GET carries `If-Match` with the ETag seen at open: a replaced object fails with
//!    ESTALE instead of mixing bytes of two versions.
//! 7. With a disk tier (`disk.rs`), a block's fetch looks on disk first and GETs only the blocks
//!    of its run that are missing there; what it GETs is written to disk in the background, so
//!    a reader never waits on the cache's writes. A random read of blocks on disk goes through
//!    the blocks (memory then disk) instead of its own small GET.
//! 8. A reader that stays random on an object that fits the disk tier gets the whole object
//!    fetched into it in the background (`fill.rs`), at the rate and memory of one sequential
//!    reader; its later reads come from disk as the blocks land.
//! 9. A random reader's next read lands within a block of where its last one ended now and
//!    then (1 in 512 reads of a 1 GiB object). Taken for the start of a sequential run, it went
//!    through the async path, which read its block and the next one whole from disk into
//!    memory, 2 MiB read and checksummed for 4 KiB: 7-9% of the daemon's samples in cold random
//!    reads. For a read on disk, only a second continuation in a row counts as sequential now;
//!    the first is served from disk like any random read, and a real sequential reader starts
//!    its read-ahead one read later.

pub mod disk;
mod fill;

use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;

use crate::config::CacheConfig;
use crate::error::{FsError, FsResult};
use crate::store::ObjectStore;
use disk::DiskCache;
use fill::{Fill, Fills, FILL_AFTER};

/// One version of one object: what every cached block belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    /// Full key in the bucket.
    pub key: String,
    /// ETag seen at open, quotes included.
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BlockKey {
    object: Arc<ObjectId>,
    index: u64,
}

/// A block's fetch, shared by everyone who wants the block while it is in flight or cached.
type Fetch = Shared<BoxFuture<'static, FsResult<Bytes>>>;

/// The fetch of a run of blocks: one buffer per block, so evicting one frees it.
type RunFetch = Shared<BoxFuture<'static, FsResult<Arc<Vec<Bytes>>>>>;

#[derive(Clone)]
struct Slot {
    fetch: Fetch,
    /// Filled by read-ahead: a failure is retried once by the reader that needs the block.
    ahead: bool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("ahead", &self.ahead).finish()
    }
}

/// The fewest blocks the cache holds whatever the budget, so that a read spanning two blocks plus
/// a little read-ahead never evicts what it is about to use.
const MIN_BLOCKS: usize = 4;

/// The block cache's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheActivity {
    /// Blocks cached or in flight.
    pub blocks: u64,
    /// Blocks the budget allows.
    pub capacity: u64,
    /// Bytes per block.
    pub block_size: u64,
    /// Block reads served from memory.
    pub hits: u64,
    /// Block reads that had to fetch.
    pub misses: u64,
    /// Blocks evicted to make room.
    pub evictions: u64,
}

/// The shared LRU of blocks.
#[derive(Debug)]
pub struct BlockCache {
    store: Arc<dyn ObjectStore>,
    block_size: u64,
    max_readahead_blocks: u64,
    get_blocks: u64,
    blocks: Mutex<LruCache<BlockKey, Slot>>,
    disk: Option<Arc<DiskCache>>,
    /// Objects being fetched whole into the disk tier (`fill.rs`).
    fills: Arc<Fills>,
    /// Block reads that found their block cached or in flight.
    hits: AtomicU64,
    /// Block reads that started a fetch.
    misses: AtomicU64,
    /// Blocks evicted to make room.
    evictions: AtomicU64,
}

/// Sequential-read tracking of one open file.
#[derive(Debug, Default)]
pub struct ReadState {
    next_offset: u64,
    window: u64,
    prefetched_until: u64,
    /// Random reads in a row.
    random: u32,
}

impl BlockCache {
    /// A cache over `store` with the budget and block size of `config`.
    pub fn new(store: Arc<dyn ObjectStore>, config: &CacheConfig) -> Self {
        let block_size = config.block_size.max(4096);
        let capacity = ((config.budget / block_size) as usize).max(MIN_BLOCKS);
        // One reader's window may use at most an eighth of the budget, so four streams can
        // read ahead at once without evicting each other's next blocks.
        let max_readahead_blocks = (config.max_readahead / block_size).min(capacity as u64 / 8);
        let get_blocks =
            (config.readahead_get_size / block_size).clamp(1, max_readahead_blocks.max(1));
        Self {
            store,
            block_size,
            max_readahead_blocks,
            get_blocks,
            blocks: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).expect("capacity >= 4"),
            )),
            disk: None,
            fills: Arc::new(Fills::new(
                (max_readahead_blocks / get_blocks.max(1)).max(1) as usize,
            )),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The same cache with a disk tier under it.
    pub fn with_disk(mut self, disk: Option<Arc<DiskCache>>) -> Self {
        self.disk = disk;
        self
    }

    /// True when there is a disk tier whose whole files the kernel may read directly.
    pub fn may_pass_through(&self) -> bool {
        self.disk.as_ref().is_some_and(|d| d.passthrough())
    }

    /// The data file of `object` when it is whole and intact in the disk cache, for the
    /// kernel to read directly (FUSE passthrough). With `fetch`, an object of at most one
    /// block that is not yet on disk is fetched first: one GET, as its first read would cost.
    pub async fn whole_file(
        &self,
        object: &Arc<ObjectId>,
        size: u64,
        fetch: bool,
    ) -> Option<std::fs::File> {
        let disk = self.disk.clone()?;
        if size == 0 {
            return None;
        }
        let (d, o) = (Arc::clone(&disk), Arc::clone(object));
        let found = tokio::task::spawn_blocking(move || d.whole(&o, size)).await;
        if let Ok(Some(file)) = found {
            return Some(file);
        }
        if !fetch || size > self.block_size {
            return None;
        }
        // A failed GET is left to the reads, which report it.
        let data = self
            .store
            .get_object_range(&object.key, &object.etag, 0..size)
            .await
            .ok()
            .filter(|data| data.len() as u64 == size)?;
        let o = Arc::clone(object);
        tokio::task::spawn_blocking(move || {
            disk.write_block(&o, size, 0, &data);
            disk.whole(&o, size)
        })
        .await
        .ok()
        .flatten()
    }

    /// True when every block of `blocks` is marked present in the disk cache.
    async fn on_disk(
        &self,
        object: &Arc<ObjectId>,
        size: u64,
        blocks: std::ops::Range<u64>,
    ) -> bool {
        let Some(disk) = self.disk.clone() else {
            return false;
        };
        let object = Arc::clone(object);
        tokio::task::spawn_blocking(move || disk.present(&object, size, blocks))
            .await
            .unwrap_or(false)
    }

    /// How many blocks the budget allows.
    pub fn capacity(&self) -> usize {
        self.blocks.lock().cap().get()
    }

    /// Use and hit counts, for `bucketfs status`.
    pub fn activity(&self) -> CacheActivity {
        CacheActivity {
            blocks: self.len() as u64,
            capacity: self.capacity() as u64,
            block_size: self.block_size,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// How many blocks are cached or in flight.
    pub fn len(&self) -> usize {
        self.blocks.lock().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `len` bytes at `offset` of `object` (of `size` bytes), starting read-ahead when the
    /// reader is sequential.
    pub async fn read(
        self: &Arc<Self>,
        object: &Arc<ObjectId>,
        size: u64,
        state: &Mutex<ReadState>,
        offset: u64,
        len: u32,
    ) -> FsResult<Bytes> {
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(len)).min(size);
        let first = offset / self.block_size;
        let last = (end - 1) / self.block_size;
        let sequential = self.plan_readahead(object, size, state, offset..end);
        if !sequential {
            self.maybe_fill(object, size, state);
        }
        if !sequential
            && !self.cached(object, first..=last)
            && !self.on_disk(object, size, first..last + 1).await
        {
            // A random read fetches just its range: a 4 KiB read costs a 4 KiB GET, not a block.
            let bytes = self
                .store
                .get_object_range(&object.key, &object.etag, offset..end)
                .await
                .map_err(FsError::from)?;
            if bytes.len() as u64 == end - offset {
                return Ok(bytes);
            }
            // Not a short read: the object is shorter than it was listed.
            return Err(shrunk(object, bytes.len() as u64, end - offset));
        }

        let fetches = (first..=last).map(|index| self.block(object, size, index));
        let blocks = futures::future::try_join_all(fetches).await?;
        if sequential {
            self.demote_consumed(object, first..=last, end);
        }
        if blocks.len() == 1 {
            let start = (offset - first * self.block_size) as usize;
            return Ok(blocks[0].slice(start..start + (end - offset) as usize));
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (i, block) in blocks.iter().enumerate() {
            let block_start = (first + i as u64) * self.block_size;
            let from = offset.saturating_sub(block_start) as usize;
            let to = ((end - block_start) as usize).min(block.len());
            out.extend_from_slice(&block[from..to]);
        }
        Ok(out.freeze())
    }

    /// `f` of the bytes of a random read when they are intact in the disk cache, read without
    /// waiting on anything but the local file: callers may block on it (a FUSE thread does),
    /// sparing a random read the trips through the runtime and the blocking pool. None when
    /// the read is sequential (the async path reads ahead for it) or the bytes are not there.
    /// A read that merely continues a random one is not sequential yet (see 9.): only a
    /// second one in a row is.
    pub fn read_on_disk<R>(
        &self,
        object: &ObjectId,
        size: u64,
        state: &Mutex<ReadState>,
        (offset, len): (u64, u32),
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let disk = self.disk.as_ref()?;
        let end = offset.checked_add(u64::from(len))?.min(size);
        let continues = {
            let s = state.lock();
            let continues = self.sequential(&s, offset);
            if offset >= end || continues && (s.window > 0 || s.random == 0) {
                return None;
            }
            continues
        };
        let value = disk.read_range_with(object, size, offset..end, f)?;
        // A continued read ends the run of random reads, so that the next continuation
        // starts the read-ahead.
        record_random(&mut state.lock(), end, !continues);
        Some(value)
    }

    /// True when a read at `offset` continues the reader's last one: within a block of where
    /// it ended, because the kernel's asynchronous reads may arrive slightly out of order.
    fn sequential(&self, s: &ReadState, offset: u64) -> bool {
        offset + self.block_size >= s.next_offset && offset <= s.next_offset + self.block_size
    }

    /// Moves the blocks a sequential reader has finished (those wholly before `end`) to the cold
    /// end of the LRU.
    fn demote_consumed(
        &self,
        object: &Arc<ObjectId>,
        blocks: std::ops::RangeInclusive<u64>,
        end: u64,
    ) {
        let mut cache = self.blocks.lock();
        for index in blocks {
            if (index + 1) * self.block_size <= end {
                cache.demote(&BlockKey {
                    object: Arc::clone(object),
                    index,
                });
            }
        }
    }

    /// True when every block of `blocks` is cached or in flight.
    fn cached(&self, object: &Arc<ObjectId>, blocks: std::ops::RangeInclusive<u64>) -> bool {
        let cache = self.blocks.lock();
        blocks.into_iter().all(|index| {
            cache.contains(&BlockKey {
                object: Arc::clone(object),
                index,
            })
        })
    }

    /// Updates the reader's sequential state for a read of `range` and starts fetches of the
    /// blocks its window covers beyond the read. Returns whether the read was sequential
    /// (`sequential`).
    fn plan_readahead(
        self: &Arc<Self>,
        object: &Arc<ObjectId>,
        size: u64,
        state: &Mutex<ReadState>,
        range: std::ops::Range<u64>,
    ) -> bool {
        let (offset, end) = (range.start, range.end);
        let last = (end - 1) / self.block_size;
        let blocks_in_object = size.div_ceil(self.block_size);
        let ahead = {
            let mut s = state.lock();
            if !self.sequential(&s, offset) {
                record_random(&mut s, end, true);
                return false;
            }
            s.random = 0;
            if end.div_ceil(self.block_size) > s.next_offset.div_ceil(self.block_size)
                || s.window == 0
            {
                s.window = (s.window * 2).clamp(1, self.max_readahead_blocks.max(1));
            }
            s.next_offset = s.next_offset.max(end);
            if self.max_readahead_blocks == 0 {
                return true;
            }
            let from = (last + 1).max(s.prefetched_until);
            let mut to = (last + 1 + s.window).min(blocks_in_object);
            if s.window >= self.get_blocks && to < blocks_in_object {
                // Once the window holds a full GET, only whole aligned GETs are sent.
                to = to / self.get_blocks * self.get_blocks;
            }
            if to <= from {
                return true;
            }
            s.prefetched_until = to;
            from..to
        };
        self.prefetch(object, size, ahead);
        true
    }

    /// Starts fetching `object` whole into the disk tier once its reader has made
    /// `FILL_AFTER` random reads in a row, when it fits and no fill of it runs or ended
    /// (`fill.rs`).
    fn maybe_fill(&self, object: &Arc<ObjectId>, size: u64, state: &Mutex<ReadState>) {
        let Some(disk) = &self.disk else {
            return;
        };
        if state.lock().random < FILL_AFTER
            || !Fill::fits(disk, size, self.block_size)
            || !self.fills.claim(object)
        {
            return;
        }
        let fill = Fill {
            store: Arc::clone(&self.store),
            disk: Arc::clone(disk),
            object: Arc::clone(object),
            size,
            block_size: self.block_size,
            get_blocks: self.get_blocks,
        };
        tokio::spawn(Arc::clone(&self.fills).run(fill));
    }

    /// Starts one GET per run of up to `get_blocks` consecutive blocks of `blocks` that are
    /// neither cached nor in flight, with a slot per block.
    fn prefetch(&self, object: &Arc<ObjectId>, size: u64, blocks: std::ops::Range<u64>) {
        let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
        {
            let cache = self.blocks.lock();
            for index in blocks {
                let key = BlockKey {
                    object: Arc::clone(object),
                    index,
                };
                if cache.contains(&key) {
                    continue;
                }
                match runs.last_mut() {
                    Some(run) if run.end == index && index % self.get_blocks != 0 => run.end += 1,
                    _ => runs.push(index..index + 1),
                }
            }
        }
        for run in runs {
            let (fetch, pieces) = self.fetch_run(object, size, run.clone());
            {
                let mut cache = self.blocks.lock();
                for (index, piece) in run.zip(pieces) {
                    let key = BlockKey {
                        object: Arc::clone(object),
                        index,
                    };
                    // A reader may have claimed the block since the check above.
                    if !cache.contains(&key) {
                        let slot = Slot {
                            fetch: piece,
                            ahead: true,
                        };
                        if cache.push(key, slot).is_some() {
                            self.evictions.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            // A failed read-ahead is forgotten: the reader retries and sees the error.
            tokio::spawn(fetch.map(drop));
        }
    }

    /// One ranged GET of the blocks `run` of `object`, not yet started, and a fetch per block
    /// taking its own buffer from it.
    fn fetch_run(
        &self,
        object: &Arc<ObjectId>,
        size: u64,
        run: std::ops::Range<u64>,
    ) -> (RunFetch, Vec<Fetch>) {
        let store = Arc::clone(&self.store);
        let disk = self.disk.clone();
        let object = Arc::clone(object);
        let block_size = self.block_size;
        let blocks = run.clone();
        let fetch = async move {
            let Some(disk) = disk else {
                let range = blocks.start * block_size..(blocks.end * block_size).min(size);
                return store
                    .get_object_pieces(&object.key, &object.etag, range, block_size)
                    .await
                    .map(Arc::new)
                    .map_err(FsError::from);
            };
            fetch_through_disk(store, disk, object, size, block_size, blocks)
                .await
                .map(Arc::new)
        };
        // A fetch that panics (a bug) is an error of its readers: a shared future that
        // panicked would panic again in every later reader of its blocks.
        let fetch: RunFetch = std::panic::AssertUnwindSafe(fetch)
            .catch_unwind()
            .map(|done| {
                done.unwrap_or_else(|_| {
                    tracing::error!("a block fetch panicked; its readers get EIO");
                    Err(FsError::new(libc::EIO, "block fetch panicked"))
                })
            })
            .boxed()
            .shared();
        let pieces = (0..(run.end - run.start) as usize)
            .map(|i| {
                fetch
                    .clone()
                    .map(move |result| {
                        result.and_then(|pieces| {
                            pieces
                                .get(i)
                                .cloned()
                                .ok_or_else(|| FsError::new(libc::EIO, "short GET"))
                        })
                    })
                    .boxed()
                    .shared()
            })
            .collect();
        (fetch, pieces)
    }

    /// `bytes` if it is all of block `index` of an object of `size` bytes; an object that
    /// shrank since it was listed, or a server that sent less, is EIO with a log line, never
    /// a slice past the end (the caller drops the block from the cache).
    fn checked_len(
        &self,
        object: &ObjectId,
        size: u64,
        index: u64,
        bytes: Bytes,
    ) -> FsResult<Bytes> {
        let expected = block_len(size, self.block_size, index);
        if bytes.len() as u64 == expected {
            return Ok(bytes);
        }
        Err(shrunk(object, bytes.len() as u64, expected))
    }

    /// One block, from the cache or from a ranged GET.
    async fn block(&self, object: &Arc<ObjectId>, size: u64, index: u64) -> FsResult<Bytes> {
        let key = BlockKey {
            object: Arc::clone(object),
            index,
        };
        let mut retried = false;
        loop {
            let slot = {
                let mut blocks = self.blocks.lock();
                match blocks.get(&key) {
                    Some(slot) => {
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        slot.clone()
                    }
                    None => {
                        self.misses.fetch_add(1, Ordering::Relaxed);
                        let (_, mut pieces) = self.fetch_run(object, size, index..index + 1);
                        let slot = Slot {
                            fetch: pieces.remove(0),
                            ahead: false,
                        };
                        if blocks.push(key.clone(), slot.clone()).is_some() {
                            self.evictions.fetch_add(1, Ordering::Relaxed);
                        }
                        slot
                    }
                }
            };
            let result = slot
                .fetch
                .clone()
                .await
                .and_then(|bytes| self.checked_len(object, size, index, bytes));
            if result.is_err() {
                let mut blocks = self.blocks.lock();
                if blocks
                    .peek(&key)
                    .is_some_and(|s| Shared::ptr_eq(&s.fetch, &slot.fetch))
                {
                    blocks.pop(&key);
                }
                if slot.ahead && !retried {
                    retried = true;
                    continue;
                }
            }
            return result;
        }
    }
}

/// The length of block `index` of an object of `size` bytes: `block_size`, less for the last.
fn block_len(size: u64, block_size: u64, index: u64) -> u64 {
    size.saturating_sub(index.saturating_mul(block_size))
        .min(block_size)
}

/// The error for `got` bytes of `object` where the listing promised `expected`: the object
/// shrank since it was listed (or the server sent less), logged once here.
fn shrunk(object: &ObjectId, got: u64, expected: u64) -> FsError {
    tracing::warn!(
        key = %object.key,
        "the server sent {got} bytes where {expected} were expected: the object is shorter \
         than when it was listed"
    );
    FsError::new(
        libc::EIO,
        format!(
            "{}: {got} of {expected} bytes (the object shrank)",
            object.key
        ),
    )
}

/// Records a random read ending at `end` in a reader's state: no read-ahead window, and one
/// more random read in a row when `counted` (else the run of them ends).
fn record_random(s: &mut ReadState, end: u64, counted: bool) {
    s.window = 0;
    s.prefetched_until = 0;
    s.next_offset = end;
    s.random = if counted {
        s.random.saturating_add(1)
    } else {
        0
    };
}

/// Writes `blocks`, block `first` of `object` (of `size` bytes, in blocks of `block_size`) on,
/// to `disk`; a short block (the object shrank) is never kept: a read reports it. Blocking.
fn write_blocks<B: AsRef<[u8]>>(
    disk: &DiskCache,
    object: &ObjectId,
    (size, block_size): (u64, u64),
    first: u64,
    blocks: impl IntoIterator<Item = B>,
) {
    for (index, block) in (first..).zip(blocks) {
        let block = block.as_ref();
        if block.len() as u64 == block_len(size, block_size, index) {
            disk.write_block(object, size, index, block);
        }
    }
}

/// The blocks `blocks` of `object`: those intact on disk from there, the span of the others
/// with one GET, which is then written to disk in the background.
async fn fetch_through_disk(
    store: Arc<dyn ObjectStore>,
    disk: Arc<DiskCache>,
    object: Arc<ObjectId>,
    size: u64,
    block_size: u64,
    blocks: std::ops::Range<u64>,
) -> FsResult<Vec<Bytes>> {
    let count = (blocks.end - blocks.start) as usize;
    let mut found = {
        let (disk, object, blocks) = (Arc::clone(&disk), Arc::clone(&object), blocks.clone());
        tokio::task::spawn_blocking(move || {
            blocks
                .map(|index| disk.read_block(&object, size, index))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|_| vec![None; count])
    };
    let missing: Vec<usize> = (0..count).filter(|&i| found[i].is_none()).collect();
    let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) else {
        return Ok(found.into_iter().flatten().collect());
    };
    let first = blocks.start + lo as u64;
    let range = first * block_size..((blocks.start + hi as u64 + 1) * block_size).min(size);
    let got = store
        .get_object_pieces(&object.key, &object.etag, range, block_size)
        .await
        .map_err(FsError::from)?;
    // Written behind the reader, within the backlog (disk.rs, 8.).
    let bytes = got.iter().map(|b| b.len() as u64).sum();
    if let Some(claim) = disk.reserve_backlog(bytes).await {
        let written = got.clone();
        tokio::task::spawn_blocking(move || {
            let _claim = claim;
            write_blocks(&disk, &object, (size, block_size), first, &written);
        });
    }
    for (i, block) in got.into_iter().enumerate() {
        if let Some(slot) = found.get_mut(lo + i) {
            *slot = Some(block);
        }
    }
    found
        .into_iter()
        .map(|b| b.ok_or_else(|| FsError::new(libc::EIO, "short GET")))
        .collect()
}

#[cfg(test)]
mod tests;
