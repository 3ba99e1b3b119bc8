//! Unit tests of the filesystem over the in-memory store: lookups, listings, names, reads.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

/// A small copy limit, so tests exercise the multipart copy (S3's smallest part).
const MIN_COPY_PART: u64 = crate::upload::MIN_PART_SIZE;
use crate::config::CacheConfig;
use crate::store::memory::MemoryStore;
use crate::upload::staging::StagingDir;
use crate::upload::{UploadTuning, WriteBudget};

fn fs_over(store: &Arc<MemoryStore>, prefix: &str) -> Arc<Fs> {
    fs_copying(store, prefix, None)
}

/// `fs_over` with objects above `copy_limit` copied in parts.
fn fs_copying(store: &Arc<MemoryStore>, prefix: &str, copy_limit: Option<u64>) -> Arc<Fs> {
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let cache = Arc::new(BlockCache::new(
        Arc::clone(&dyn_store),
        &CacheConfig::default(),
    ));
    let config = FsConfig {
        prefix: prefix.to_string(),
        metadata_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(60),
        copy_limit,
        ..FsConfig::default()
    };
    Arc::new(Fs::new(dyn_store, cache, config, writes()))
}

/// Every entry of an open directory, read as the kernel would: a thousand at a time from
/// where the last read stopped (a windowed listing waits for its reader).
async fn readdir_all(fs: &Fs, fh: u64) -> FsResult<Vec<DirEntry>> {
    let handle = fs.dir_handle(fh)?;
    let mut all: Vec<DirEntry> = Vec::new();
    loop {
        if !handle.wait_for(all.len()).await? {
            return Err(FsError::new(libc::EIO, "rewound past a windowed listing"));
        }
        let before = all.len();
        handle.visit(before, |_, entry| {
            all.push(entry.clone());
            all.len() - before >= 1000
        });
        if all.len() == before {
            return Ok(all);
        }
    }
}

/// Entries a directory handle holds now (tests of the window).
fn dir_handle_held(fs: &Fs, fh: u64) -> usize {
    fs.dir_handle(fh).map(|h| h.held()).unwrap_or(0)
}

/// Opens `ino` through `fs`: its handle.
async fn open(fs: &Fs, ino: Ino, mode: OpenMode) -> FsResult<u64> {
    fs.open_file(ino, mode).await.map(|opened| opened.fh)
}

const READ: OpenMode = OpenMode {
    write: false,
    truncate: false,
    opener: 0,
    direct: false,
};
const WRITE: OpenMode = OpenMode {
    write: true,
    truncate: false,
    opener: 0,
    direct: false,
};

/// A new file opened O_WRONLY by process `opener`.
const fn by(opener: u32) -> OpenMode {
    OpenMode { opener, ..WRITE }
}

fn writes() -> Writes {
    writes_with(1 << 30)
}

fn writes_with(staging_limit: u64) -> Writes {
    let dir = std::env::temp_dir().join(format!("bucketfs-unit-{}", std::process::id()));
    Writes {
        tuning: UploadTuning {
            part_size: crate::upload::MIN_PART_SIZE,
            concurrency: 2,
        },
        budget: WriteBudget::new(64 << 20),
        staging: StagingDir::new(&dir, staging_limit).unwrap(),
        tasks: tokio_util::task::TaskTracker::new(),
        owed_record: None,
    }
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
    let entries = readdir_all(&fs, fh).await.unwrap();
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
    assert_eq!(readdir_all(&fs, fh).await.unwrap().len(), 1500);
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
    // One miss: HEAD name, LIST name/, HEAD name_$folder$; the second is the negative cache.
    assert_eq!(
        store.counts.head.load(Ordering::Relaxed),
        2,
        "negative cache"
    );
    for bad in ["", ".", "..", &"x".repeat(256)] {
        assert!(fs.lookup(Ino::ROOT, bad).await.is_err());
    }
    assert_eq!(store.counts.head.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_prefix_mount_sees_only_its_prefix() {
    let store = Arc::new(MemoryStore::new());
    store.put("p/in.txt", "in");
    store.put("out.txt", "out");
    store.put("p2/x", "x");
    let fs = fs_over(&store, "p/");
    let fh = fs.opendir(Ino::ROOT).await.unwrap();
    let names: Vec<_> = readdir_all(&fs, fh)
        .await
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, vec!["in.txt"]);
    let attr = fs.lookup(Ino::ROOT, "in.txt").await.unwrap();
    let fh = open(&fs, attr.ino, READ).await.unwrap();
    assert_eq!(&fs.read(attr.ino, fh, 0, 100).await.unwrap()[..], b"in");
    fs.release(fh).await;
}

#[tokio::test]
async fn files_open_read_only_and_directories_refuse_open() {
    let store = Arc::new(MemoryStore::new());
    store.put("d/f", "data");
    let mut fs = fs_over(&store, "");
    Arc::get_mut(&mut fs).unwrap().config.read_only = true;
    let d = fs.lookup(Ino::ROOT, "d").await.unwrap();
    let f = fs.lookup(d.ino, "f").await.unwrap();
    assert_eq!(
        open(&fs, f.ino, WRITE).await.unwrap_err().errno,
        libc::EROFS
    );
    assert_eq!(
        open(&fs, d.ino, READ).await.unwrap_err().errno,
        libc::EISDIR
    );
    assert_eq!(
        fs.mkdir(d.ino, "x", 0o755, (0, 0)).await.unwrap_err().errno,
        libc::EROFS
    );
    assert_eq!(
        fs.read(f.ino, 999, 0, 1).await.unwrap_err().errno,
        libc::EBADF
    );
}

#[tokio::test]
async fn a_replaced_file_is_followed_before_its_first_read_and_drops_only_its_listing() {
    let store = Arc::new(MemoryStore::new());
    store.put("d/f", "old");
    store.put("other/g", "g");
    let fs = fs_over(&store, "");
    let d = fs.lookup(Ino::ROOT, "d").await.unwrap();
    let other = fs.lookup(Ino::ROOT, "other").await.unwrap();
    fs.opendir(d.ino).await.unwrap();
    fs.opendir(other.ino).await.unwrap();
    let f = fs.lookup(d.ino, "f").await.unwrap();
    let fh = open(&fs, f.ino, READ).await.unwrap();
    store.put("d/f", "new!");
    // Nothing of the old version was read through the handle: it follows the new one.
    assert_eq!(&fs.read(f.ino, fh, 0, 10).await.unwrap()[..], b"new!");
    let lists = store.counts.list.load(Ordering::Relaxed);
    fs.lookup(other.ino, "g").await.unwrap();
    assert_eq!(
        store.counts.list.load(Ordering::Relaxed),
        lists,
        "other listings stay"
    );
    let f2 = fs.lookup(d.ino, "f").await.unwrap();
    assert_eq!(f2.size, 4, "the lookup went back to the store");
    let fh2 = open(&fs, f2.ino, READ).await.unwrap();
    assert_eq!(&fs.read(f2.ino, fh2, 0, 10).await.unwrap()[..], b"new!");
}

async fn read_all(fs: &Fs, ino: Ino) -> Vec<u8> {
    let fh = open(fs, ino, READ).await.unwrap();
    let bytes = fs.read(ino, fh, 0, 1 << 24).await.unwrap();
    fs.release(fh).await;
    bytes.to_vec()
}

#[tokio::test]
async fn rename_moves_files_and_trees_and_keeps_headers() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_copying(&store, "", Some(MIN_COPY_PART));
    let d = fs.mkdir(Ino::ROOT, "d", 0o700, (0, 0)).await.unwrap();
    let (_, fh) = fs
        .create(d.ino, "f", 0o600, (5, 6), false, by(0))
        .await
        .unwrap();
    let big = vec![3u8; 3 * MIN_COPY_PART as usize + 10];
    fs.writers().write(fh, 0, &big).await.unwrap();
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    fs.symlink(d.ino, "l", "f", (0, 0)).await.unwrap();
    store.put("d/sub/deep", "x");

    fs.rename(d.ino, "f", d.ino, "g", RenameMode::default())
        .await
        .unwrap();
    let (body, metadata) = store.object("d/g").unwrap();
    assert_eq!(body.len(), big.len(), "multipart copy above the copy limit");
    assert_eq!(metadata.get("uid").unwrap(), "5");
    assert!(store.object("d/f").is_none());

    let noreplace = RenameMode {
        noreplace: true,
        exchange: false,
    };
    assert_eq!(
        fs.rename(d.ino, "g", d.ino, "l", noreplace)
            .await
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    fs.rename(Ino::ROOT, "d", Ino::ROOT, "e", RenameMode::default())
        .await
        .unwrap();
    let mut keys: Vec<String> = ["e/", "e/g", "e/l", "e/sub/deep"]
        .map(String::from)
        .to_vec();
    keys.sort();
    let listed = crate::fs::list::list_children(store.as_ref(), "e/")
        .await
        .unwrap();
    assert_eq!(listed.children.len(), 3);
    for key in &keys {
        assert!(store.object(key).is_some(), "{key} moved");
    }
    assert!(store.object("d/").is_none() && store.object("d/sub/deep").is_none());
    let e = fs.lookup(Ino::ROOT, "e").await.unwrap();
    assert_eq!(e.ino, d.ino, "the moved directory keeps its inode");
    let l = fs.lookup(e.ino, "l").await.unwrap();
    assert_eq!(l.kind, Kind::Symlink);
    assert_eq!(&fs.readlink(l.ino).await.unwrap()[..], b"f");
}

#[tokio::test]
async fn rmdir_refuses_a_full_directory_and_chmod_persists() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    store.put("d/x", "1");
    let d = fs.lookup(Ino::ROOT, "d").await.unwrap();
    assert_eq!(
        fs.rmdir(Ino::ROOT, "d").await.unwrap_err().errno,
        libc::ENOTEMPTY
    );
    let x = fs.lookup(d.ino, "x").await.unwrap();
    let attr = fs
        .setattr(
            x.ino,
            SetAttr {
                mode: Some(0o600),
                uid: Some(7),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((attr.perm, attr.uid), (0o600, 7));
    let (body, metadata) = store.object("d/x").unwrap();
    assert_eq!(&body[..], b"1");
    assert_eq!(metadata.get("mode").unwrap(), &(0o100600).to_string());
    fs.unlink(d.ino, "x").await.unwrap();
    fs.rmdir(Ino::ROOT, "d").await.unwrap();
    fs.mkdir(Ino::ROOT, "m", 0o700, (0, 0)).await.unwrap();
    let (_, marker) = store.object("m/").expect("mkdir writes a marker");
    assert_eq!(marker.get("mode").unwrap(), &(0o40700).to_string());
    fs.rmdir(Ino::ROOT, "m").await.unwrap();
    assert!(store.object("m/").is_none());
    assert_eq!(fs.link().errno, libc::EPERM);
}

#[tokio::test]
async fn a_listing_streams_and_a_directory_in_a_later_page_still_wins() {
    // Page 1 ends on the file `x`; page 2 holds `x-y` and then the directory `x/`: `x` must be
    // handed out once, as the directory, although the first page already named it a file.
    let store = Arc::new(MemoryStore::new());
    for i in 0..999 {
        store.put(&format!("d/a{i:04}"), "1");
    }
    store.put("d/x", "file");
    store.put("d/x-y", "1");
    store.put("d/x/inner", "1");
    let fs = fs_over(&store, "");
    let dir = fs.lookup(Ino::ROOT, "d").await.unwrap();
    let fh = fs.opendir(dir.ino).await.unwrap();
    let entries = readdir_all(&fs, fh).await.unwrap();
    assert_eq!(entries.len(), 1001);
    let xs: Vec<_> = entries.iter().filter(|e| e.name == "x").collect();
    assert_eq!(xs.len(), 1, "x listed once");
    assert_eq!(xs[0].attr.kind, Kind::Dir);
    assert!(entries.iter().any(|e| e.name == "x-y"));
    // The complete listing is cached sorted: lookups are answered from it.
    let lists = store.counts.list.load(Ordering::Relaxed);
    assert_eq!(fs.lookup(dir.ino, "x").await.unwrap().kind, Kind::Dir);
    assert_eq!(fs.lookup(dir.ino, "a0500").await.unwrap().kind, Kind::File);
    assert_eq!(store.counts.list.load(Ordering::Relaxed), lists);
    fs.releasedir(fh);
}

/// A filesystem over any store (a `FaultyStore` wrapper, say) with `ttl` for metadata.
fn fs_with(store: Arc<dyn ObjectStore>, ttl: Duration, writes: Writes) -> Arc<Fs> {
    let cache = Arc::new(BlockCache::new(Arc::clone(&store), &CacheConfig::default()));
    let config = FsConfig {
        metadata_ttl: ttl,
        negative_ttl: ttl,
        ..FsConfig::default()
    };
    Arc::new(Fs::new(store, cache, config, writes))
}

/// Waits (yielding) until `cond` holds; fails the test after ten seconds.
async fn until(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition within 10 s");
}

#[tokio::test]
async fn readlink_reads_at_most_path_max_bytes() {
    use crate::store::PutOptions;
    let store = Arc::new(MemoryStore::new());
    let options = PutOptions {
        metadata: crate::store::UserMetadata::from([("mode".to_string(), "41471".to_string())]),
        ..PutOptions::default()
    };
    store
        .put_object("huge-link", Bytes::from(vec![b'a'; 1 << 20]), &options)
        .await
        .unwrap();
    let fs = fs_over(&store, "");
    let link = fs.lookup(Ino::ROOT, "huge-link").await.unwrap();
    assert_eq!(link.kind, Kind::Symlink);
    let target = fs.readlink(link.ino).await.unwrap();
    assert_eq!(target.len(), libc::PATH_MAX as usize);
    assert!(store.counts.get_bytes.load(Ordering::Relaxed) <= 1 << 20);
}

#[tokio::test]
async fn a_known_file_is_checked_again_with_one_head() {
    let store = Arc::new(MemoryStore::new());
    store.put("f", "x");
    let fs = fs_with(store.clone(), Duration::ZERO, writes());
    let f = fs.lookup(Ino::ROOT, "f").await.unwrap();
    let (heads, lists) = (
        store.counts.head.load(Ordering::Relaxed),
        store.counts.list.load(Ordering::Relaxed),
    );
    // The TTL (0 here) ran out: one HEAD, no LIST.
    assert_eq!(fs.lookup(Ino::ROOT, "f").await.unwrap().ino, f.ino);
    assert_eq!(fs.getattr(f.ino).await.unwrap().size, 1);
    assert_eq!(store.counts.head.load(Ordering::Relaxed), heads + 2);
    assert_eq!(store.counts.list.load(Ordering::Relaxed), lists);
    // Gone as a file, a directory now: the LIST finds it.
    store.delete_object("f").await.unwrap();
    store.put("f/inner", "y");
    let heads = store.counts.head.load(Ordering::Relaxed);
    assert_eq!(fs.lookup(Ino::ROOT, "f").await.unwrap().kind, Kind::Dir);
    assert_eq!(
        store.counts.head.load(Ordering::Relaxed),
        heads + 1,
        "the HEAD that found it gone is not sent again with the LIST"
    );
}

#[tokio::test]
async fn a_directory_larger_than_the_window_is_served_page_by_page() {
    use crate::fs::dir::WINDOW;
    let store = Arc::new(MemoryStore::new());
    let n = 2 * WINDOW + 500;
    for i in 0..n {
        store.put(&format!("big/f{i:07}"), "");
    }
    let fs = fs_over(&store, "");
    let dir = fs.lookup(Ino::ROOT, "big").await.unwrap();
    let fh = fs.opendir(dir.ino).await.unwrap();
    // The listing runs ahead of readdir by at most the window (and a page).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = dir_handle_held(&fs, fh);
    assert!(held <= WINDOW + 1000, "{held} held before any readdir");
    let entries = readdir_all(&fs, fh).await.unwrap();
    assert_eq!(entries.len(), n);
    assert!(entries.windows(2).all(|w| w[0].name < w[1].name));
    assert!(dir_handle_held(&fs, fh) <= WINDOW + 1000);
    // Not cached whole: the next open lists again, and meta holds no listing of it.
    assert!(fs.tables.lock().meta.stats().listed_entries <= WINDOW);
    let lists = store.counts.list.load(Ordering::Relaxed);
    // Rewound (rewinddir): the entries let go are listed again, from the start.
    let again = fs.relist(dir.ino, fh).await.unwrap();
    assert!(again.wait_for(0).await.unwrap());
    let mut first = None;
    again.visit(0, |_, e| {
        first = Some(e.name.clone());
        true
    });
    assert_eq!(first.as_deref(), Some("f0000000"));
    assert!(store.counts.list.load(Ordering::Relaxed) > lists);
    fs.releasedir(fh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_panics_leaves_the_others_serving() {
    use crate::store::faulty::FaultyStore;
    let memory = Arc::new(MemoryStore::new());
    memory.put("a.txt", "hello");
    memory.put("b.txt", "world");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let fs = fs_with(faulty.clone(), Duration::ZERO, writes());
    // A read whose GET panics (injected): that read fails with EIO; the shared fetch of its
    // block does not keep the panic for the next reader (it did: "inner future panicked").
    faulty.panic_on("GetObject", 1);
    let reader = Arc::clone(&fs);
    let died = tokio::spawn(async move {
        let a = reader.lookup(Ino::ROOT, "a.txt").await.unwrap();
        let fh = open(&reader, a.ino, READ).await.unwrap();
        reader.read(a.ino, fh, 0, 100).await
    })
    .await;
    assert_eq!(died.unwrap().unwrap_err().errno, libc::EIO);
    // A bug that panics while holding the tables lock.
    let holder = Arc::clone(&fs);
    let died = std::thread::spawn(move || {
        let _tables = holder.tables.lock();
        panic!("injected panic under the tables lock");
    })
    .join();
    assert!(died.is_err());
    // Every later operation is served as before: lookups, reads, writes.
    for (name, want) in [("a.txt", "hello"), ("b.txt", "world")] {
        let attr = fs.lookup(Ino::ROOT, name).await.unwrap();
        let fh = open(&fs, attr.ino, READ).await.unwrap();
        assert_eq!(
            &fs.read(attr.ino, fh, 0, 100).await.unwrap()[..],
            want.as_bytes()
        );
        fs.release(fh).await;
    }
    let (_, fh) = fs
        .create(Ino::ROOT, "c.txt", 0o644, (0, 0), false, WRITE)
        .await
        .unwrap();
    fs.writers().write(fh, 0, b"new").await.unwrap();
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(&memory.object("c.txt").unwrap().0[..], b"new");
}

/// A lookup whose answer was read before an S3 event about the name lands after it: the old
/// answer is returned to that lookup but not cached, so the next question asks again instead
/// of serving the old version for the (notified, long) TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_read_before_an_event_is_not_cached_after_it() {
    use crate::store::faulty::FaultyStore;
    let memory = Arc::new(MemoryStore::new());
    memory.put("dir/f", "old");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let fs = fs_with(faulty.clone(), Duration::from_secs(3600), writes());
    let dir = fs.lookup(Ino::ROOT, "dir").await.unwrap().ino;
    // The probe's HEAD answers "old" at once; its LIST is held until after the event.
    let lists = faulty.calls("ListObjectsV2");
    faulty.hold("ListObjectsV2", 1);
    let lookup = {
        let fs = Arc::clone(&fs);
        tokio::spawn(async move { fs.lookup(dir, "f").await })
    };
    until(|| faulty.calls("ListObjectsV2") > lists).await;
    memory.put("dir/f", "new bytes");
    fs.changed_elsewhere("dir/f", &Elsewhere::Created { etag: None });
    faulty.release();
    let answered = lookup.await.unwrap().unwrap();
    assert_eq!(
        answered.size, 3,
        "the lookup in flight answers what it read"
    );
    let now = fs.getattr(answered.ino).await.unwrap();
    assert_eq!(now.size, 9, "the old answer was cached over the event");
}

mod writers;

#[tokio::test]
async fn after_a_crash_handles_opened_since_the_last_saved_state_fail_with_eio_and_are_never_reused(
) {
    let store = Arc::new(MemoryStore::new());
    store.put("f", "hello");
    let dead = fs_over(&store, "");
    let f = dead.lookup(Ino::ROOT, "f").await.unwrap();
    let saved = open(&dead, f.ino, READ).await.unwrap();
    let state = dead.snapshot_now();
    // Opened after the last save: the kernel holds this number, the state does not.
    let unrecorded = open(&dead, f.ino, READ).await.unwrap();
    let dir = dead.opendir(Ino::ROOT).await.unwrap();

    let fs = fs_over(&store, "");
    fs.import(state, Vec::new()).await.unwrap();
    fs.skip_unrecorded_handles();
    assert_eq!(&fs.read(f.ino, saved, 0, 5).await.unwrap()[..], b"hello");
    assert_eq!(
        fs.read(f.ino, unrecorded, 0, 5).await.unwrap_err().errno,
        libc::EIO
    );
    assert_eq!(fs.dir_handle(dir).unwrap_err().errno, libc::EIO);
    let fresh = open(&fs, f.ino, READ).await.unwrap();
    assert!(fresh > dir, "a number the dead daemon gave out was reused");
    assert_eq!(&fs.read(f.ino, fresh, 0, 5).await.unwrap()[..], b"hello");
    // A number nobody ever gave out is still EBADF.
    assert_eq!(
        fs.read(f.ino, fresh + 1, 0, 1).await.unwrap_err().errno,
        libc::EBADF
    );

    // A takeover after that passes the lost numbers on.
    let mut fds = Vec::new();
    let next = fs_over(&store, "");
    next.import(fs.export(&mut fds).await.unwrap(), Vec::new())
        .await
        .unwrap();
    assert_eq!(
        next.read(f.ino, unrecorded, 0, 5).await.unwrap_err().errno,
        libc::EIO
    );
    assert_eq!(&next.read(f.ino, fresh, 0, 5).await.unwrap()[..], b"hello");
}

/// The crash state is a little behind: a file open for writing when it was saved may have
/// been committed and closed before the crash. Its writer, lost, must not stand for the file
/// afterwards (reads of the committed bytes failing with EIO until the remount); only its own
/// handle, if the kernel still holds it, fails.
#[tokio::test]
async fn a_file_committed_and_closed_after_the_last_saved_state_reads_whole_after_a_crash() {
    let store = Arc::new(MemoryStore::new());
    let dead = fs_over(&store, "");
    let (attr, fh) = dead
        .create(Ino::ROOT, "f", 0o644, (0, 0), true, by(0))
        .await
        .unwrap();
    // And a new file, written, not closed: its writer's bytes die with the daemon.
    let (_, cut) = dead
        .create(Ino::ROOT, "g", 0o644, (0, 0), true, by(0))
        .await
        .unwrap();
    dead.writers().write(cut, 0, b"half").await.unwrap();
    let state = dead.snapshot_now();
    dead.writers().write(fh, 0, b"file 1\n").await.unwrap();
    dead.writers().flush(fh).await.unwrap();
    dead.release(fh).await;
    assert_eq!(&store.object("f").unwrap().0[..], b"file 1\n");

    let fs = fs_over(&store, "");
    fs.import(state, Vec::new()).await.unwrap();
    fs.skip_unrecorded_handles();
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 7);
    assert_eq!(read_all(&fs, attr.ino).await, b"file 1\n");
    // The writer's handle, had it still been open, fails.
    assert_eq!(
        fs.writers().write(fh, 7, b"x").await.unwrap_err().errno,
        libc::EIO
    );
    assert_eq!(fs.writers().flush(fh).await.unwrap_err().errno, libc::EIO);
    fs.release(fh).await;
    assert_eq!(read_all(&fs, attr.ino).await, b"file 1\n");
    assert_eq!(
        fs.writers().write(cut, 4, b"x").await.unwrap_err().errno,
        libc::EIO
    );
    assert_eq!(
        fs.lookup(Ino::ROOT, "g").await.unwrap_err().errno,
        libc::ENOENT
    );
    let dir = fs.opendir(Ino::ROOT).await.unwrap();
    let names: Vec<String> = readdir_all(&fs, dir)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["f"], "the cut file is listed");
    fs.releasedir(dir);
    assert_eq!(fs.writers().flush(cut).await.unwrap_err().errno, libc::EIO);
    fs.release(cut).await;
    assert!(store.object("g").is_none());
    // A new writer of the file is not the lost one, also through a later takeover.
    let fh = open(&fs, attr.ino, WRITE).await.unwrap();
    fs.writers().write(fh, 7, b"more\n").await.unwrap();
    let mut fds = Vec::new();
    let next = fs_over(&store, "");
    next.import(fs.export(&mut fds).await.unwrap(), fds)
        .await
        .unwrap();
    next.writers().flush(fh).await.unwrap();
    next.release(fh).await;
    assert_eq!(&store.object("f").unwrap().0[..], b"file 1\nmore\n");
}

#[tokio::test]
async fn lookups_of_new_names_in_an_expired_listing_list_the_directory_once() {
    let store = Arc::new(MemoryStore::new());
    store.put("d/a", "a");
    let fs = fs_with(store.clone(), Duration::from_millis(100), writes());
    let d = fs.lookup(Ino::ROOT, "d").await.unwrap();
    let fh = fs.opendir(d.ino).await.unwrap();
    assert_eq!(readdir_all(&fs, fh).await.unwrap().len(), 1);
    fs.releasedir(fh);
    // Another writer adds a file; the listing expires.
    store.put("d/b", "b");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (heads, lists) = (
        store.counts.head.load(Ordering::Relaxed),
        store.counts.list.load(Ordering::Relaxed),
    );
    let names: Vec<String> = (0..20).map(|i| format!("new{i}")).collect();
    let misses = futures::future::join_all(names.iter().map(|n| fs.lookup(d.ino, n))).await;
    assert!(misses
        .iter()
        .all(|r| r.as_ref().unwrap_err().errno == libc::ENOENT));
    assert_eq!(fs.lookup(d.ino, "b").await.unwrap().size, 1);
    assert_eq!(
        (
            store.counts.head.load(Ordering::Relaxed) - heads,
            store.counts.list.load(Ordering::Relaxed) - lists
        ),
        (0, 1),
        "20 new names and a changed one: one listing of the directory, no HEAD"
    );
}

/// What `find` does: a directory read whole, then each subdirectory looked up and opened, in
/// order, depth first. Returns the files seen.
async fn find(fs: &Arc<Fs>, root: Ino) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![(root, String::new())];
    while let Some((ino, path)) = stack.pop() {
        let fh = fs.opendir(ino).await.unwrap();
        let entries = readdir_all(fs, fh).await.unwrap();
        fs.releasedir(fh);
        let mut dirs = Vec::new();
        for e in entries {
            let child = join(&path, &e.name);
            if e.attr.kind == Kind::Dir {
                let found = fs.lookup(ino, &e.name).await.unwrap();
                dirs.push((found.ino, child));
            } else {
                files.push(child);
            }
        }
        stack.extend(dirs.into_iter().rev());
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_walk_lists_the_tree_flat_not_one_directory_at_a_time() {
    // 20,000 files in 400 directories (20 x 20), as in the issue.
    let store = Arc::new(MemoryStore::new());
    let mut want = Vec::new();
    for a in 0..20 {
        for b in 0..20 {
            for f in 0..50 {
                let key = format!("top/d{a:02}/e{b:02}/f{f:02}");
                store.put(&key, "x");
                want.push(key);
            }
        }
    }
    store.put("top/d00/", "");
    let fs = fs_with(store.clone(), Duration::from_secs(60), writes());
    let top = fs.lookup(Ino::ROOT, "top").await.unwrap().ino;
    let lists = store.counts.list.load(Ordering::Relaxed);
    let mut files = find(&fs, top).await;
    files.sort();
    let want: Vec<String> = want
        .iter()
        .map(|k| k.strip_prefix("top/").unwrap().to_string())
        .collect();
    assert_eq!(files, want);
    let lists = store.counts.list.load(Ordering::Relaxed) - lists;
    // A delimited listing per directory would be 421; the flat walk is 20 pages, plus the
    // directories it had not reached when opened.
    eprintln!("find: {lists} LISTs");
    assert!(lists <= 40, "{lists} LISTs for 421 directories");
    assert_eq!(
        store.counts.head.load(Ordering::Relaxed),
        1,
        "only the lookup of top"
    );
}

#[tokio::test]
async fn an_ls_of_one_subdirectory_costs_at_most_a_page_more() {
    let store = Arc::new(MemoryStore::new());
    for a in 0..10 {
        for f in 0..3000 {
            store.put(&format!("d{a}/f{f:04}"), "x");
        }
    }
    let fs = fs_with(store.clone(), Duration::from_secs(60), writes());
    let root = fs.opendir(Ino::ROOT).await.unwrap();
    assert_eq!(readdir_all(&fs, root).await.unwrap().len(), 10);
    fs.releasedir(root);
    let lists = store.counts.list.load(Ordering::Relaxed);
    let d3 = fs.lookup(Ino::ROOT, "d3").await.unwrap().ino;
    let fh = fs.opendir(d3).await.unwrap();
    assert_eq!(readdir_all(&fs, fh).await.unwrap().len(), 3000);
    fs.releasedir(fh);
    // Its own 3 pages, and the walk's first guess.
    let lists = store.counts.list.load(Ordering::Relaxed) - lists;
    assert!(lists <= 5, "{lists} LISTs");
}

/// A saved listing of `names` as the snapshot would answer it.
fn saved(fs: &Fs, names: &[(&str, Kind)]) -> Arc<Vec<DirEntry>> {
    let entries = names
        .iter()
        .map(|(name, kind)| {
            let mut attr = fs.root_attr();
            attr.kind = *kind;
            DirEntry {
                name: name.to_string(),
                attr,
            }
        })
        .collect();
    Arc::new(entries)
}

#[tokio::test]
async fn a_walked_subtree_is_revalidated_flat_and_the_rest_one_by_one() {
    use remount::Job;
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    let files: Vec<(String, Kind)> = (0..1500).map(|i| (format!("f{i}"), Kind::File)).collect();
    let mut a: Vec<(&str, Kind)> = files.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    a.extend([("1", Kind::Dir), ("2", Kind::Dir)]);
    let listings: Vec<(&str, Vec<(&str, Kind)>)> = vec![
        // The root names `x`, which was not answered from the snapshot: not a whole subtree.
        (
            "",
            vec![("a", Kind::Dir), ("b", Kind::Dir), ("x", Kind::Dir)],
        ),
        ("a", a),
        ("a/1", vec![("f", Kind::File)]),
        ("a/2", vec![("g", Kind::File)]),
        ("b", vec![("h", Kind::File)]),
    ];
    let batch = listings
        .iter()
        .map(|(path, names)| {
            let ino = fs.tables.lock().meta.ino_for(path);
            (ino, saved(&fs, names), std::time::Instant::now())
        })
        .collect();
    let ino = |path: &str| fs.tables.lock().meta.ino(path).unwrap();
    let mut one = Vec::new();
    let mut flat = Vec::new();
    for job in fs.plan(batch) {
        match job {
            Job::One(dir, _) => one.push(dir),
            Job::Flat(root, dirs) => {
                let mut paths: Vec<String> = dirs.into_keys().collect();
                paths.sort();
                flat.push((root, paths));
            }
        }
    }
    one.sort();
    let mut want = vec![ino(""), ino("b")];
    want.sort();
    // `a` and its two subdirectories: 1,503 keys in 2 pages, fewer than its 3 directories.
    assert_eq!(
        flat,
        vec![(
            "a".to_string(),
            vec!["a".into(), "a/1".into(), "a/2".into()]
        )]
    );
    // `b` alone: one page is not fewer than its one directory.
    assert_eq!(one, want);
}
