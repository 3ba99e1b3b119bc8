use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::config::CacheConfig;
use crate::store::memory::MemoryStore;

fn fs_over(store: &Arc<MemoryStore>, prefix: &str) -> Fs {
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let cache = Arc::new(BlockCache::new(
        Arc::clone(&dyn_store),
        &CacheConfig::default(),
    ));
    let config = FsConfig {
        prefix: prefix.to_string(),
        metadata_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(60),
        ..FsConfig::default()
    };
    Fs::new(dyn_store, cache, config)
}

#[tokio::test]
async fn listing_answers_lookups_without_head_requests() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..1500 {
        store.put(&format!("dir/f{i}"), "abc");
    }
    let fs = fs_over(&store, "");
    let dir = fs.lookup(Ino::ROOT, "dir").await.unwrap();
    assert_eq!(dir.kind, Kind::Dir);
    let (heads, lists) = (
        store.counts.head.load(Ordering::Relaxed),
        store.counts.list.load(Ordering::Relaxed),
    );
    assert_eq!(
        (heads, lists),
        (1, 1),
        "one HEAD and one LIST for an unknown name"
    );

    let fh = fs.opendir(dir.ino).await.unwrap();
    let entries = fs.readdir(fh).unwrap();
    assert_eq!(entries.len(), 1500);
    assert_eq!(
        store.counts.list.load(Ordering::Relaxed),
        3,
        "two pages of 1000"
    );
    for e in entries.iter() {
        let attr = fs.lookup(dir.ino, &e.name).await.unwrap();
        assert_eq!(attr.size, 3);
        assert_eq!(fs.getattr(attr.ino).await.unwrap(), attr);
    }
    assert_eq!(
        store.counts.head.load(Ordering::Relaxed),
        1,
        "no HEAD per entry"
    );
    assert_eq!(fs.readdir(fh).unwrap().len(), 1500);
    fs.releasedir(fh);
}

#[tokio::test]
async fn misses_are_cached_and_invalid_names_cost_nothing() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    assert_eq!(
        fs.lookup(Ino::ROOT, "missing").await.unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(
        fs.lookup(Ino::ROOT, "missing").await.unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(
        store.counts.head.load(Ordering::Relaxed),
        1,
        "negative cache"
    );
    for bad in ["", ".", "..", &"x".repeat(256)] {
        assert!(fs.lookup(Ino::ROOT, bad).await.is_err());
    }
    assert_eq!(store.counts.head.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_prefix_mount_sees_only_its_prefix() {
    let store = Arc::new(MemoryStore::new());
    store.put("p/in.txt", "in");
    store.put("out.txt", "out");
    store.put("p2/x", "x");
    let fs = fs_over(&store, "p/");
    let fh = fs.opendir(Ino::ROOT).await.unwrap();
    let names: Vec<_> = fs
        .readdir(fh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, vec!["in.txt"]);
    let attr = fs.lookup(Ino::ROOT, "in.txt").await.unwrap();
    let fh = fs.open(attr.ino, false).await.unwrap();
    assert_eq!(&fs.read(attr.ino, fh, 0, 100).await.unwrap()[..], b"in");
    fs.release(fh);
}

#[tokio::test]
async fn files_open_read_only_and_directories_refuse_open() {
    let store = Arc::new(MemoryStore::new());
    store.put("d/f", "data");
    let fs = fs_over(&store, "");
    let d = fs.lookup(Ino::ROOT, "d").await.unwrap();
    let f = fs.lookup(d.ino, "f").await.unwrap();
    assert_eq!(fs.open(f.ino, true).await.unwrap_err().errno, libc::EROFS);
    assert_eq!(fs.open(d.ino, false).await.unwrap_err().errno, libc::EISDIR);
    assert_eq!(
        fs.read(f.ino, 999, 0, 1).await.unwrap_err().errno,
        libc::EBADF
    );
}

#[tokio::test]
async fn a_stale_read_drops_the_parent_listing_so_reopen_sees_the_new_version() {
    let store = Arc::new(MemoryStore::new());
    store.put("d/f", "old");
    store.put("other/g", "g");
    let fs = fs_over(&store, "");
    let d = fs.lookup(Ino::ROOT, "d").await.unwrap();
    let other = fs.lookup(Ino::ROOT, "other").await.unwrap();
    fs.opendir(d.ino).await.unwrap();
    fs.opendir(other.ino).await.unwrap();
    let f = fs.lookup(d.ino, "f").await.unwrap();
    let fh = fs.open(f.ino, false).await.unwrap();
    store.put("d/f", "new!");
    assert_eq!(
        fs.read(f.ino, fh, 0, 10).await.unwrap_err().errno,
        libc::ESTALE
    );
    let lists = store.counts.list.load(Ordering::Relaxed);
    fs.lookup(other.ino, "g").await.unwrap();
    assert_eq!(
        store.counts.list.load(Ordering::Relaxed),
        lists,
        "other listings stay"
    );
    let f2 = fs.lookup(d.ino, "f").await.unwrap();
    assert_eq!(f2.size, 4, "the lookup went back to the store");
    let fh2 = fs.open(f2.ino, false).await.unwrap();
    assert_eq!(&fs.read(f2.ino, fh2, 0, 10).await.unwrap()[..], b"new!");
}
