use parking_lot::Mutex;
use std::sync::atomic::Ordering;

use super::*;
use crate::config::CacheConfig;
use crate::store::memory::MemoryStore;
use crate::store::ObjectStore;

const BLOCK: u64 = 64 << 10;

fn setup(budget_blocks: u64, data: &[u8]) -> (Arc<MemoryStore>, Arc<BlockCache>, Arc<ObjectId>) {
    let store = Arc::new(MemoryStore::new());
    store.put("obj", data.to_vec());
    let config = CacheConfig {
        budget: budget_blocks * BLOCK,
        block_size: BLOCK,
        max_readahead: 8 * BLOCK,
        readahead_get_size: 4 * BLOCK,
        disk: None,
        metadata: None,
    };
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let cache = Arc::new(BlockCache::new(dyn_store, &config));
    let etag = futures::executor::block_on(store.head_object("obj"))
        .unwrap()
        .unwrap()
        .etag;
    let object = Arc::new(ObjectId {
        key: "obj".into(),
        etag,
    });
    (store, cache, object)
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn reads_span_blocks_and_stop_at_the_end() {
    let d = data(3 * BLOCK as usize + 100);
    let (_, cache, obj) = setup(16, &d);
    let state = Mutex::default();
    let size = d.len() as u64;
    let got = cache
        .read(&obj, size, &state, BLOCK - 10, 20)
        .await
        .unwrap();
    assert_eq!(&got[..], &d[BLOCK as usize - 10..BLOCK as usize + 10]);
    let tail = cache
        .read(&obj, size, &state, size - 50, 4096)
        .await
        .unwrap();
    assert_eq!(&tail[..], &d[d.len() - 50..]);
    assert!(cache
        .read(&obj, size, &state, size, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_block_is_fetched_once_and_eviction_keeps_the_budget() {
    let d = data(32 * BLOCK as usize);
    let (store, cache, obj) = setup(4, &d);
    let size = d.len() as u64;
    for _ in 0..3 {
        // Random reads fetch just their range, cache nothing and start no read-ahead.
        let state = Mutex::default();
        let got = cache
            .read(&obj, size, &state, 5 * BLOCK + 7, 100)
            .await
            .unwrap();
        assert_eq!(
            &got[..],
            &d[(5 * BLOCK + 7) as usize..(5 * BLOCK + 107) as usize]
        );
    }
    assert_eq!(store.counts.get_bytes.load(Ordering::Relaxed), 300);
    assert!(cache.is_empty());
    // A sequential reader's block is fetched once, whoever reads it next.
    let state = Mutex::default();
    cache.read(&obj, size, &state, 0, 100).await.unwrap();
    cache
        .read(&obj, size, &Mutex::default(), 50, 10)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // (A 4-block cache leaves no room for read-ahead.)
    assert_eq!(
        store.counts.get.load(Ordering::Relaxed),
        3 + 1,
        "block 0 fetched twice"
    );
    for i in (0..32).rev().step_by(2) {
        // Readers that continue where they left off: sequential, cached, with read-ahead.
        let state = Mutex::new(ReadState {
            next_offset: i * BLOCK + 1,
            ..ReadState::default()
        });
        let got = cache
            .read(&obj, size, &state, i * BLOCK + 1, 10)
            .await
            .unwrap();
        assert_eq!(
            &got[..],
            &d[(i * BLOCK + 1) as usize..(i * BLOCK + 11) as usize]
        );
        assert!(cache.len() <= cache.capacity(), "cache over budget");
    }
    assert_eq!(cache.capacity(), 4);
}

#[tokio::test]
async fn sequential_readers_get_growing_read_ahead() {
    let d = data(64 * BLOCK as usize);
    let (store, cache, obj) = setup(64, &d);
    let size = d.len() as u64;
    let state = Mutex::default();
    let mut offset = 0;
    let mut out = Vec::new();
    while offset < size {
        let got = cache
            .read(&obj, size, &state, offset, 32 << 10)
            .await
            .unwrap();
        offset += got.len() as u64;
        out.extend_from_slice(&got);
    }
    assert_eq!(out, d);
    // Let spawned read-ahead tasks finish, then check every block was fetched exactly once,
    // mostly by GETs of several blocks.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(store.counts.get_bytes.load(Ordering::Relaxed), size);
    let gets = store.counts.get.load(Ordering::Relaxed);
    assert!(
        gets <= 64 / 4 + 4,
        "{gets} GETs: read-ahead did not coalesce"
    );
    let s = state.lock();
    assert_eq!(s.window, 8, "window grew to the maximum");
}

#[tokio::test]
async fn interleaved_streams_do_not_evict_each_others_read_ahead() {
    // Four streams whose windows (8 blocks each) fill the whole 32-block cache: blocks a stream
    // has read past must go first, or the others' read-ahead is evicted and fetched again.
    let d = data(64 * BLOCK as usize);
    let (store, cache, _) = setup(32, &d);
    let size = d.len() as u64;
    let mut objects = Vec::new();
    for i in 0..4 {
        let key = format!("obj{i}");
        store.put(&key, d.clone());
        let etag = store.head_object(&key).await.unwrap().unwrap().etag;
        objects.push(Arc::new(ObjectId { key, etag }));
    }
    let states: Vec<Mutex<ReadState>> = (0..4).map(|_| Mutex::default()).collect();
    let mut offset = 0;
    while offset < size {
        for (object, state) in objects.iter().zip(&states) {
            let got = cache
                .read(object, size, state, offset, 128 << 10)
                .await
                .unwrap();
            assert_eq!(&got[..], &d[offset as usize..offset as usize + got.len()]);
        }
        offset += 128 << 10;
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let fetched = store.counts.get_bytes.load(Ordering::Relaxed);
    assert!(
        fetched <= 4 * size + 4 * 4 * BLOCK,
        "fetched {fetched} bytes for {} read",
        4 * size
    );
}

#[tokio::test]
async fn a_replaced_object_fails_with_estale() {
    let d = data(4 * BLOCK as usize);
    let (store, cache, obj) = setup(16, &d);
    let state = Mutex::default();
    cache
        .read(&obj, d.len() as u64, &state, 0, 10)
        .await
        .unwrap();
    store.put("obj", vec![1u8; d.len()]);
    let err = cache
        .read(&obj, d.len() as u64, &Mutex::default(), 3 * BLOCK, 10)
        .await
        .unwrap_err();
    assert_eq!(err.errno, libc::ESTALE);
    // The block read before the change is still served from the old version's cache entry,
    // never mixed with the new object's bytes.
    let again = cache
        .read(&obj, d.len() as u64, &Mutex::default(), 0, 10)
        .await
        .unwrap();
    assert_eq!(&again[..], &d[..10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reads_of_blocks_on_disk_are_served_at_once_without_gets() {
    let d = data(8 * BLOCK as usize + 300);
    let size = d.len() as u64;
    let (store, cache, obj) = setup(16, &d);
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::DiskCacheConfig {
        dir: dir.path().to_path_buf(),
        size: 1 << 30,
        passthrough: false,
        by_default: false,
    };
    let disk = Arc::new(DiskCache::open(&config, "test", BLOCK).unwrap());
    let cache = Arc::new(
        Arc::try_unwrap(cache)
            .unwrap()
            .with_disk(Some(Arc::clone(&disk))),
    );
    // A sequential read of everything puts every block on disk (behind the reader).
    let state = Mutex::default();
    let mut offset = 0;
    while offset < size {
        offset += cache
            .read(&obj, size, &state, offset, 128 << 10)
            .await
            .unwrap()
            .len() as u64;
    }
    let all_on_disk = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        disk.present(&obj, size, 0..size.div_ceil(BLOCK))
    });
    assert!(all_on_disk);
    let gets = store.counts.get.load(Ordering::Relaxed);
    // A sequential continuation is left to the async path (which reads ahead).
    assert!(cache
        .read_on_disk(&obj, size, &state, (size - 10, 10), <[u8]>::to_vec)
        .is_none());
    // Random reads, across blocks and at the tail, come from disk.
    let state = Mutex::default();
    for (from, len) in [
        (5 * BLOCK + 7, 4096),
        (BLOCK - 5, 10),
        (0, 3),
        (size - 100, 4096),
    ] {
        let got = cache
            .read_on_disk(&obj, size, &state, (from, len), <[u8]>::to_vec)
            .unwrap();
        let to = (from + u64::from(len)).min(size);
        assert_eq!(&got[..], &d[from as usize..to as usize], "{from}+{len}");
    }
    assert_eq!(store.counts.get.load(Ordering::Relaxed), gets);
    // A read that happens to continue a random one is still random: served from disk. A
    // second continuation in a row is a sequential reader, left to the async path.
    let state = Mutex::default();
    for (i, from) in [3 * BLOCK + 5, 3 * BLOCK + 4101, 3 * BLOCK + 8197]
        .into_iter()
        .enumerate()
    {
        let got = cache.read_on_disk(&obj, size, &state, (from, 4096), <[u8]>::to_vec);
        if i < 2 {
            assert_eq!(
                got.as_deref(),
                Some(&d[from as usize..from as usize + 4096])
            );
        } else {
            assert!(got.is_none(), "the second continuation reads ahead");
        }
    }
    // Nothing to read: the ordinary path answers.
    assert!(cache
        .read_on_disk(&obj, size, &state, (size + 1, 10), <[u8]>::to_vec)
        .is_none());
}

#[tokio::test]
async fn an_object_shorter_than_listed_is_eio_never_a_panic() {
    // Listed at 3 blocks and a bit; the server holds less (truncated in between, or a server
    // that sends fewer bytes than asked).
    let d = data(BLOCK as usize + 10);
    let (_, cache, obj) = setup(16, &d);
    let listed = 3 * BLOCK + 100;
    for (offset, len) in [(0, 4096u32), (BLOCK, 4096), (BLOCK - 10, 2 * BLOCK as u32)] {
        let state = Mutex::default();
        // Sequential from 0 (read through blocks), then a read inside the short block.
        cache.read(&obj, listed, &state, 0, 1).await.ok();
        let got = cache.read(&obj, listed, &state, offset, len).await;
        if offset + u64::from(len) <= d.len() as u64 {
            assert_eq!(&got.unwrap()[..], &d[offset as usize..][..len as usize]);
        } else {
            assert_eq!(got.unwrap_err().errno, libc::EIO, "at {offset}+{len}");
        }
    }
}
