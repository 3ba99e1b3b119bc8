use super::*;

/// Four checksum chunks per block.
const BLOCK: u64 = 4 * CHUNK;

fn cache(dir: &Path, size: u64) -> DiskCache {
    cache_of(dir, size, false)
}

fn cache_of(dir: &Path, size: u64, by_default: bool) -> DiskCache {
    let config = DiskCacheConfig {
        dir: dir.to_path_buf(),
        size,
        passthrough: true,
        by_default,
    };
    DiskCache::open(&config, "test\0bucket", BLOCK).unwrap()
}

fn object(key: &str, etag: &str) -> ObjectId {
    ObjectId {
        key: key.into(),
        etag: etag.into(),
    }
}

fn block(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Bytes the cache's files hold on disk.
fn used(dir: &Path) -> u64 {
    cache(dir, u64::MAX).scan().iter().map(|f| f.bytes).sum()
}

#[test]
fn blocks_survive_a_new_instance_and_stay_per_version() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * BLOCK + 100;
    let v1 = object("a/b", "\"1\"");
    {
        let c = cache(dir.path(), 1 << 20);
        c.write_block(&v1, size, 0, &block(1, BLOCK as usize));
        c.write_block(&v1, size, 2, &block(3, 100));
    }
    let c = cache(dir.path(), 1 << 20);
    assert_eq!(
        c.read_block(&v1, size, 0).unwrap(),
        block(1, BLOCK as usize)
    );
    assert_eq!(c.read_block(&v1, size, 2).unwrap(), block(3, 100));
    assert!(c.read_block(&v1, size, 1).is_none());
    assert!(c.present(&v1, size, 0..1));
    assert!(!c.present(&v1, size, 0..2));
    // Another ETag of the same key is another object.
    assert!(c.read_block(&object("a/b", "\"2\""), size, 0).is_none());
    assert!(c.whole(&v1, size).is_none());
    c.write_block(&v1, size, 1, &block(2, BLOCK as usize));
    let whole = c.whole(&v1, size).unwrap();
    let mut all = vec![0u8; size as usize];
    whole.read_exact_at(&mut all, 0).unwrap();
    assert_eq!(
        &all[BLOCK as usize..2 * BLOCK as usize],
        &block(2, BLOCK as usize)[..]
    );
}

#[test]
fn a_corrupted_or_truncated_block_is_a_miss_never_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 3 * BLOCK;
    let o = object("k", "\"e\"");
    let c = cache(dir.path(), 1 << 20);
    for i in 0..3 {
        c.write_block(&o, size, i, &block(i as u8, BLOCK as usize));
    }
    let (hash, sub) = c.locate(&o);
    let data = sub.join(format!("{hash}.data"));
    // A flipped bit in block 1.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, BLOCK + 7).unwrap();
    f.write_all_at(&[byte[0] ^ 0x10], BLOCK + 7).unwrap();
    assert!(c.read_block(&o, size, 1).is_none());
    assert!(!c.present(&o, size, 1..2), "the bad block is dropped");
    assert!(c.whole(&o, size).is_none());
    // Fetched again, it reads right.
    c.write_block(&o, size, 1, &block(1, BLOCK as usize));
    assert_eq!(c.read_block(&o, size, 1).unwrap(), block(1, BLOCK as usize));
    // The data file cut short (power loss): the blocks past the cut are misses.
    f.set_len(BLOCK + 10).unwrap();
    let c = cache(dir.path(), 1 << 20);
    assert_eq!(c.read_block(&o, size, 0).unwrap(), block(0, BLOCK as usize));
    assert!(c.read_block(&o, size, 1).is_none());
    assert!(c.read_block(&o, size, 2).is_none());
    // A sums file cut inside its header is started over, not trusted.
    let sums = sub.join(format!("{hash}.sums"));
    OpenOptions::new()
        .write(true)
        .open(&sums)
        .unwrap()
        .set_len(5)
        .unwrap();
    let c = cache(dir.path(), 1 << 20);
    assert!(c.read_block(&o, size, 0).is_none());
}

#[test]
fn the_size_bound_holds_least_recently_used_first_out() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 16 * BLOCK;
    let c = cache(dir.path(), limit);
    let objects: Vec<ObjectId> = (0..8).map(|i| object(&format!("f{i}"), "\"x\"")).collect();
    for (i, o) in objects.iter().enumerate() {
        for b in 0..4 {
            c.write_block(o, 4 * BLOCK, b, &block(b as u8, BLOCK as usize));
        }
        // Distinct last uses, oldest first.
        let (hash, sub) = c.locate(o);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
        File::open(sub.join(format!("{hash}.sums")))
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert!(
            used(dir.path()) <= limit + BLOCK,
            "over the bound after object {i}"
        );
    }
    // The newest objects are the ones kept.
    assert!(c.present(&objects[7], 4 * BLOCK, 0..4));
    assert!(!c.present(&objects[0], 4 * BLOCK, 0..1));
}

#[test]
fn an_object_larger_than_the_bound_evicts_its_own_first_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 8 * BLOCK;
    let c = cache(dir.path(), limit);
    let o = object("big", "\"x\"");
    let size = 32 * BLOCK;
    for b in 0..32 {
        c.write_block(&o, size, b, &block(b as u8, BLOCK as usize));
        assert!(
            used(dir.path()) <= limit + BLOCK,
            "over the bound at block {b}"
        );
    }
    assert!(c.present(&o, size, 31..32));
    assert!(!c.present(&o, size, 0..1));
    assert_eq!(
        c.read_block(&o, size, 31).unwrap(),
        block(31, BLOCK as usize)
    );
}

#[test]
fn a_failing_disk_pauses_inserts_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 20);
    let o = object("k", "\"e\"");
    c.write_block(&o, 2 * BLOCK, 0, &block(0, BLOCK as usize));
    // The directory becomes unusable (as a full disk would make it): a new object cannot be
    // created, which pauses inserts without an error to anyone.
    std::fs::remove_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path(), b"not a directory").unwrap();
    let p = object("p", "\"e\"");
    c.write_block(&p, BLOCK, 0, &block(1, BLOCK as usize));
    assert!(c.paused());
    assert!(c.read_block(&p, BLOCK, 0).is_none());
    std::fs::remove_file(dir.path()).unwrap();
}

#[test]
fn two_instances_sharing_a_directory_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (cache(dir.path(), 1 << 20), cache(dir.path(), 1 << 20));
    let o = object("shared", "\"s\"");
    let size = 4 * BLOCK;
    let o = &o;
    std::thread::scope(|s| {
        for c in [&a, &b] {
            s.spawn(move || {
                for i in 0..4 {
                    c.write_block(o, size, i, &block(i as u8, BLOCK as usize));
                }
            });
        }
    });
    for c in [&a, &b] {
        for i in 0..4 {
            assert_eq!(
                c.read_block(o, size, i).unwrap(),
                block(i as u8, BLOCK as usize)
            );
        }
    }
}

#[test]
fn a_range_reads_and_checks_only_the_chunks_it_touches() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 20);
    let o = object("r", "\"e\"");
    let size = 2 * BLOCK + 5000;
    let all: Vec<u8> = (0..3)
        .flat_map(|i| block(i as u8, BLOCK.min(size - i * BLOCK) as usize))
        .collect();
    for i in 0..3 {
        let start = (i * BLOCK) as usize;
        let end = (start + BLOCK as usize).min(size as usize);
        c.write_block(&o, size, i, &all[start..end]);
    }
    // Unaligned, within a chunk, across chunks, across blocks, the short tail, past the end.
    let ranges = [
        (1, 10),
        (CHUNK - 3, CHUNK + 3),
        (BLOCK - 100, BLOCK + CHUNK + 1),
        (2 * BLOCK + 4000, size),
        (0, size),
        (size - 1, size + 100),
    ];
    for (from, to) in ranges {
        let got = c.read_range(&o, size, from..to).unwrap();
        assert_eq!(
            &got[..],
            &all[from as usize..to.min(size) as usize],
            "{from}..{to}"
        );
    }
    // A flipped bit in chunk 2 of block 1: chunk 0 of that block still reads (it is intact),
    // a read touching chunk 2 misses and drops the block.
    let (hash, sub) = c.locate(&o);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(sub.join(format!("{hash}.data")))
        .unwrap();
    let at = BLOCK + 2 * CHUNK + 9;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    let (lo, hi) = (BLOCK, BLOCK + 100);
    assert_eq!(
        &c.read_range(&o, size, lo..hi).unwrap()[..],
        &all[lo as usize..hi as usize]
    );
    assert!(c.read_range(&o, size, at..at + 1).is_none());
    assert!(!c.present(&o, size, 1..2), "the bad block is dropped");
    assert!(c.read_range(&o, size, lo..hi).is_none());
    // A range over a missing block is a miss, whatever is around it.
    assert!(c.read_range(&o, size, 0..size).is_none());
}

#[test]
fn an_earlier_layout_is_deleted_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("v1/ab");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("x.data"), b"old").unwrap();
    let _c = cache(dir.path(), 1 << 20);
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !dir.path().join("v1").exists()
    });
    assert!(gone, "v1 is still there");
    assert!(dir.path().join("v2").is_dir());
}

#[test]
fn a_directory_found_over_a_lowered_bound_is_trimmed_without_an_insert() {
    let dir = tempfile::tempdir().unwrap();
    {
        let big = cache(dir.path(), 1 << 30);
        for n in 0..16 {
            let o = object(&format!("k{n}"), "\"1\"");
            big.write_block(&o, BLOCK, 0, &block(n as u8, BLOCK as usize));
        }
    }
    let before = used(dir.path());
    assert!(before >= 16 * BLOCK, "{before}");
    // Remounted with a quarter of that as the bound: nothing is read or inserted.
    let small = Arc::new(cache(dir.path(), 4 * BLOCK + 4 * 4096));
    small.trim_in_background();
    let limit = 4 * BLOCK + 4 * 4096;
    let deadline = Instant::now() + Duration::from_secs(10);
    while used(dir.path()) > limit && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = used(dir.path());
    assert!(after <= limit && after > 0, "{before} -> {after}");
    // The most recently used object stays.
    assert!(small
        .read_block(&object("k15", "\"1\""), BLOCK, 0)
        .is_some());
}

#[tokio::test]
async fn the_write_backlog_is_bounded_and_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let disk = cache(dir.path(), 1 << 30);
    let half = disk
        .reserve_backlog(BACKLOG / 2)
        .await
        .expect("within the bound");
    let rest = disk
        .reserve_backlog(BACKLOG / 2)
        .await
        .expect("up to the bound");
    let more = disk.reserve_backlog(1);
    tokio::pin!(more);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(50), &mut more).await;
    assert!(
        waited.is_err(),
        "past the bound, a fetch waits for the disk"
    );
    drop(half);
    assert!(more.await.is_some(), "and goes on once writes are done");
    drop(rest);
    assert!(
        disk.reserve_backlog(10 * BACKLOG).await.is_some(),
        "more than the backlog takes all of it"
    );

    // The default directory never holds a reader: past the bound, nothing is written.
    let default = cache_of(dir.path(), 1 << 30, true);
    let all = default
        .reserve_backlog(BACKLOG)
        .await
        .expect("within the bound");
    assert!(default.reserve_backlog(1).await.is_none(), "not written");
    drop(all);
    assert!(default.reserve_backlog(1).await.is_some());
}
