//! Block cache and read-ahead: fixed-size ranged GETs, cached in an LRU under one memory budget,
//! keyed by (key, ETag, block index) so a block of an old version is never served for a new one.
//!
//! Non-obvious problems:
//! 1. Several readers (and the read-ahead) may want the same block at once: the cache holds a slot
//!    per block that the first one fills while the others wait on it, so each block is fetched once.
//! 2. The budget counts every slot as a whole block, in flight or filled, so memory stays bounded
//!    even when read-ahead runs far ahead; a failed fetch frees its slot so a retry can happen.
//! 3. Read-ahead grows while a reader stays sequential (doubling per block entered) and resets on
//!    a seek, so random readers fetch only what they read and streams get parallel GETs.
//! 4. Every GET carries `If-Match` with the ETag seen at open: a replaced object fails with
//!    ESTALE instead of mixing bytes of two versions.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::OnceCell;

use crate::config::CacheConfig;
use crate::error::{FsError, FsResult};
use crate::store::ObjectStore;

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

type Slot = Arc<OnceCell<Bytes>>;

/// The fewest blocks the cache holds whatever the budget, so that a read spanning two blocks plus
/// a little read-ahead never evicts what it is about to use.
const MIN_BLOCKS: usize = 4;

/// The shared LRU of blocks.
#[derive(Debug)]
pub struct BlockCache {
    store: Arc<dyn ObjectStore>,
    block_size: u64,
    max_readahead_blocks: u64,
    blocks: Mutex<LruCache<BlockKey, Slot>>,
}

/// Sequential-read tracking of one open file.
#[derive(Debug, Default)]
pub struct ReadState {
    next_offset: u64,
    window: u64,
    prefetched_until: u64,
}

impl BlockCache {
    /// A cache over `store` with the budget and block size of `config`.
    pub fn new(store: Arc<dyn ObjectStore>, config: &CacheConfig) -> Self {
        let block_size = config.block_size.max(4096);
        let capacity = ((config.budget / block_size) as usize).max(MIN_BLOCKS);
        // One reader's window may use at most a quarter of the budget, so a few streams can
        // read ahead at once without evicting each other's next blocks.
        let max_readahead_blocks = (config.max_readahead / block_size).min(capacity as u64 / 4);
        Self {
            store,
            block_size,
            max_readahead_blocks,
            blocks: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).expect("capacity >= 4"),
            )),
        }
    }

    /// How many blocks the budget allows.
    pub fn capacity(&self) -> usize {
        self.blocks.lock().unwrap().cap().get()
    }

    /// How many blocks are cached or in flight.
    pub fn len(&self) -> usize {
        self.blocks.lock().unwrap().len()
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
        self.plan_readahead(object, size, state, offset..end);

        let fetches = (first..=last).map(|index| self.block(object, size, index));
        let blocks = futures::future::try_join_all(fetches).await?;
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

    /// Updates the reader's sequential state for a read of `range` and spawns fetches of the
    /// blocks its window covers beyond the read.
    fn plan_readahead(
        self: &Arc<Self>,
        object: &Arc<ObjectId>,
        size: u64,
        state: &Mutex<ReadState>,
        range: std::ops::Range<u64>,
    ) {
        let (offset, end) = (range.start, range.end);
        let last = (end - 1) / self.block_size;
        let blocks_in_object = size.div_ceil(self.block_size);
        let ahead = {
            let mut s = state.lock().unwrap();
            let sequential = offset == s.next_offset;
            if !sequential {
                s.window = 0;
                s.prefetched_until = 0;
            } else if end.div_ceil(self.block_size) > s.next_offset.div_ceil(self.block_size)
                || s.window == 0
            {
                s.window = (s.window * 2).clamp(1, self.max_readahead_blocks.max(1));
            }
            s.next_offset = end;
            if !sequential || self.max_readahead_blocks == 0 {
                return;
            }
            let from = (last + 1).max(s.prefetched_until);
            let to = (last + 1 + s.window).min(blocks_in_object);
            s.prefetched_until = s.prefetched_until.max(to);
            from..to
        };
        for index in ahead {
            let cache = Arc::clone(self);
            let object = Arc::clone(object);
            tokio::spawn(async move {
                // A failed read-ahead is forgotten: the reader refetches and sees the error.
                let _ = cache.block(&object, size, index).await;
            });
        }
    }

    /// One block, from the cache or from a ranged GET.
    async fn block(&self, object: &Arc<ObjectId>, size: u64, index: u64) -> FsResult<Bytes> {
        let key = BlockKey {
            object: Arc::clone(object),
            index,
        };
        let slot = {
            let mut blocks = self.blocks.lock().unwrap();
            match blocks.get(&key) {
                Some(slot) => Arc::clone(slot),
                None => {
                    let slot = Slot::default();
                    blocks.put(key.clone(), Arc::clone(&slot));
                    slot
                }
            }
        };
        let start = index * self.block_size;
        let end = (start + self.block_size).min(size);
        let result = slot
            .get_or_try_init(|| async {
                self.store
                    .get_object_range(&object.key, &object.etag, start..end)
                    .await
                    .map_err(FsError::from)
            })
            .await
            .cloned();
        if result.is_err() {
            let mut blocks = self.blocks.lock().unwrap();
            if blocks.peek(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                blocks.pop(&key);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests;
