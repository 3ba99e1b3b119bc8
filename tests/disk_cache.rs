//! The disk cache (`--disk-cache`), FOPEN_KEEP_CACHE and FUSE passthrough, through real mounts
//! of the real binary against SeaweedFS, with a counting proxy in front of it.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;

/// A fresh cache directory for one test.
fn cache_dir(name: &str) -> PathBuf {
    let dir = run_dir().join("disk-cache").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir`, with its metadata.
fn files_under(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                found.push((entry.path(), meta));
            }
        }
    }
    found
}

/// Bytes the files under `dir` hold on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    files_under(dir).iter().map(|(_, m)| m.blocks() * 512).sum()
}

/// The `.data` files under `dir`.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| path.extension().is_some_and(|e| e == "data"))
        .collect()
}

fn gets(p: &proxy::Proxy) -> u64 {
    p.counts().get.load(Ordering::SeqCst)
}

/// Reads `path` whole, in 1 MiB reads as `cp` would.
fn read_all(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    fs::File::open(path).unwrap().read_to_end(&mut out).unwrap();
    out
}

/// Waits until the daemon's background writes of the cache are on disk: the cache's usage
/// stops growing.
fn settled(dir: &Path) {
    let mut last = u64::MAX;
    eventually(Duration::from_secs(30), || {
        let now = disk_usage(dir);
        let still = now == last;
        last = now;
        still
    });
}

#[test]
fn a_remount_reads_from_the_disk_cache_and_a_changed_object_reads_new_bytes() {
    let b = Bucket::new("dc-remount");
    let data = pseudo_random(256 * MIB, 11);
    b.put("big.bin", data.clone());
    let dir = cache_dir("remount");
    let dir_arg = dir.to_str().unwrap();
    // Both mounts reach the server through one proxy: the endpoint is part of a block's
    // identity in the cache.
    let p = proxy();
    for passthrough in [true, false] {
        let _ = fs::remove_dir_all(&dir);
        let mut args = vec!["--disk-cache", dir_arg, "--metadata-ttl", "1s"];
        args.extend(["--endpoint-url", &p.endpoint]);
        if !passthrough {
            args.push("--no-passthrough");
        }
        {
            let m = Mount::new(&b.name, "dc-remount", &args);
            assert_eq!(sha256(&read_all(&m.path.join("big.bin"))), sha256(&data));
        }
        settled(&dir);
        assert!(
            disk_usage(&dir) >= 256 * MIB as u64,
            "the blocks are on disk"
        );

        let m = Mount::new(&b.name, "dc-remount", &args);
        let before = gets(&p);
        assert_eq!(sha256(&read_all(&m.path.join("big.bin"))), sha256(&data));
        assert_eq!(
            gets(&p) - before,
            0,
            "a read after a remount costs no GET (passthrough {passthrough})"
        );

        // Another client replaces the object: the next open reads the new bytes.
        let new = pseudo_random(3 * MIB + 5, 12);
        b.put("big.bin", new.clone());
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(read_all(&m.path.join("big.bin")), new);
        b.put("big.bin", data.clone());
    }
}

#[test]
fn a_corrupted_cache_file_is_detected_and_refetched() {
    let b = Bucket::new("dc-corrupt");
    let data = pseudo_random(16 * MIB, 21);
    b.put("f.bin", data.clone());
    let dir = cache_dir("corrupt");
    let p = proxy();
    let args = [
        "--disk-cache",
        dir.to_str().unwrap(),
        "--endpoint-url",
        &p.endpoint,
    ];
    {
        let m = Mount::new(&b.name, "dc-corrupt", &args);
        assert_eq!(read_all(&m.path.join("f.bin")), data);
    }
    settled(&dir);
    let files = data_files(&dir);
    assert_eq!(files.len(), 1, "one object cached: {files:?}");
    // Flip a bit in block 5.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files[0])
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, 5 * MIB as u64 + 123).unwrap();
    f.write_all_at(&[byte[0] ^ 0x04], 5 * MIB as u64 + 123)
        .unwrap();
    drop(f);

    for passthrough in [true, false] {
        let mut with_proxy = args.to_vec();
        if !passthrough {
            with_proxy.push("--no-passthrough");
        }
        let m = Mount::new(&b.name, "dc-corrupt", &with_proxy);
        let before = gets(&p);
        assert_eq!(read_all(&m.path.join("f.bin")), data, "never wrong bytes");
        if passthrough {
            let log = fs::read_to_string(&m.log).unwrap();
            assert!(log.contains("failed its checksum"), "{log}");
        }
        let expected = if passthrough { 1 } else { 0 };
        assert_eq!(
            gets(&p) - before,
            expected,
            "the bad block is fetched again once, and then it is cached (passthrough {passthrough})"
        );
        drop(m);
        settled(&dir);
    }
}

#[test]
fn the_disk_cache_stays_within_its_size() {
    let b = Bucket::new("dc-bound");
    let data = pseudo_random(256 * MIB, 31);
    b.put("big.bin", data.clone());
    for i in 0..4 {
        b.put(&format!("small{i}.bin"), pseudo_random(8 * MIB, 40 + i));
    }
    let dir = cache_dir("bound");
    let args = [
        "--disk-cache",
        dir.to_str().unwrap(),
        "--disk-cache-size",
        "64MiB",
    ];
    let m = Mount::new(&b.name, "dc-bound", &args);
    for i in 0..4 {
        read_all(&m.path.join(format!("small{i}.bin")));
    }
    assert_eq!(sha256(&read_all(&m.path.join("big.bin"))), sha256(&data));
    drop(m);
    settled(&dir);
    let used = disk_usage(&dir);
    // A block, plus the sums files (a page each) of the objects cached.
    let slack = MIB as u64 + 5 * 4096;
    assert!(
        used <= 64 * MIB as u64 + slack,
        "the cache holds {used} bytes, over 64 MiB plus a block"
    );
    assert!(used >= 32 * MIB as u64, "the cache was used: {used} bytes");
}

/// 4 KiB reads of `data` through `f` at `n` offsets drawn from `seed`, each checked.
fn random_reads(f: &fs::File, data: &[u8], n: usize, seed: u64) {
    let mut x = seed;
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = ((x >> 11) % (data.len() as u64 - 4096)) as usize;
        f.read_exact_at(&mut buf, at as u64).unwrap();
        assert!(buf[..] == data[at..at + 4096], "bytes at {at}");
    }
}

/// A reader that stays random gets its object fetched whole into the disk tier in the
/// background, after which its reads cost no GET; an object over half the tier keeps its
/// ranged reads.
#[test]
fn random_reads_fill_the_disk_tier_with_the_whole_object() {
    let b = Bucket::new("dc-fill");
    let small = pseudo_random(24 * MIB + 123, 61);
    let big = pseudo_random(48 * MIB, 62);
    b.put("small.bin", small.clone());
    b.put("big.bin", big.clone());
    let dir = cache_dir("fill");
    let p = proxy();
    let args = [
        "--disk-cache",
        dir.to_str().unwrap(),
        "--disk-cache-size",
        "64MiB",
        "--endpoint-url",
        &p.endpoint,
    ];
    let m = Mount::new(&b.name, "dc-fill", &args);

    let f = fs::File::open(m.path.join("small.bin")).unwrap();
    random_reads(&f, &small, 8, 1);
    assert!(
        eventually(Duration::from_secs(30), || disk_usage(&dir)
            >= small.len() as u64),
        "small.bin was not fetched whole into the disk cache: {} bytes there",
        disk_usage(&dir)
    );
    let fill_gets = gets(&p);
    // 8 reads, then 3 runs of 8 MiB and the last 123 bytes' run.
    assert!(fill_gets <= 8 + 4, "{fill_gets} GETs to fill 24 MiB");
    random_reads(&f, &small, 300, 2);
    assert_eq!(
        gets(&p),
        fill_gets,
        "random reads of an object on disk cost no GET"
    );

    let f = fs::File::open(m.path.join("big.bin")).unwrap();
    random_reads(&f, &big, 8, 3);
    std::thread::sleep(Duration::from_secs(2));
    let before = gets(&p);
    random_reads(&f, &big, 20, 4);
    assert!(
        gets(&p) - before >= 10,
        "48 MiB is over half of a 64 MiB tier: it keeps its ranged reads"
    );
    assert!(
        disk_usage(&dir) < (small.len() + 8 * MIB) as u64,
        "big.bin was not fetched whole: {} bytes on disk",
        disk_usage(&dir)
    );
}

#[test]
fn two_mounts_share_one_cache_directory() {
    let b = Bucket::new("dc-shared");
    let objects: Vec<Vec<u8>> = (0..6)
        .map(|i| pseudo_random(6 * MIB + i * 999, 50 + i as u64))
        .collect();
    for (i, o) in objects.iter().enumerate() {
        b.put(&format!("o{i}.bin"), o.clone());
    }
    let dir = cache_dir("shared");
    // Small enough that the two mounts evict each other's objects while they read.
    let args = [
        "--disk-cache",
        dir.to_str().unwrap(),
        "--disk-cache-size",
        "20MiB",
    ];
    let m1 = Mount::new(&b.name, "dc-shared-1", &args);
    let m2 = Mount::new(&b.name, "dc-shared-2", &args);
    std::thread::scope(|s| {
        for m in [&m1, &m2] {
            let objects = &objects;
            s.spawn(move || {
                for round in 0..3 {
                    for (i, o) in objects.iter().enumerate() {
                        let got = read_all(&m.path.join(format!("o{i}.bin")));
                        assert!(got == *o, "o{i}.bin read wrong in round {round}");
                    }
                }
            });
        }
    });
}

#[test]
fn a_second_cat_keeps_the_kernel_page_cache_until_the_object_changes() {
    let b = Bucket::new("dc-keep");
    b.put("f.txt", vec![b'a'; 64 * 1024]);
    let m = Mount::new(&b.name, "dc-keep", &["--metadata-ttl", "1s"]);
    let file = m.path.join("f.txt");
    let resident = |path: &Path| -> u64 {
        let out = sh(&format!(
            "fincore --bytes --noheadings --output RES '{}'",
            path.display()
        ));
        out.trim().parse().unwrap()
    };
    assert_eq!(read_all(&file).len(), 64 * 1024);
    // fincore opens the file itself: the pages survive that open only when they are kept.
    assert_eq!(
        resident(&file),
        64 * 1024,
        "the pages of an unchanged file are kept"
    );
    b.put("f.txt", vec![b'b'; 32 * 1024]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        read_all(&file),
        vec![b'b'; 32 * 1024],
        "a changed object reads new bytes"
    );
    // The same through a write of this mount.
    fs::write(&file, b"written here").unwrap();
    assert_eq!(read_all(&file), b"written here");
}

/// FUSE passthrough exists from Linux 6.9 on.
/// Bytes the mount's daemon has written so far (its wchar in /proc/PID/io): what it served
/// through /dev/fuse, among others.
fn daemon_wrote(m: &Mount) -> u64 {
    let pid = m.daemon_pid().expect("daemon pid");
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

fn kernel_has_passthrough() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 9)
}

#[test]
fn a_whole_cached_file_is_read_by_the_kernel_without_the_daemon() {
    let b = Bucket::new("dc-passthrough");
    let data = pseudo_random(4 * MIB + 17, 61);
    b.put("f.bin", data.clone());
    let dir = cache_dir("passthrough");
    let m = Mount::new(
        &b.name,
        "dc-passthrough",
        &["--disk-cache", dir.to_str().unwrap()],
    );
    let path = m.path.join("f.bin");
    assert_eq!(read_all(&path), data);
    settled(&dir);
    // Opened now, the file is whole on disk: the kernel reads it from the cache file, so the
    // daemon writes none of its bytes to /dev/fuse (counted by its wchar in /proc/PID/io).
    // The first open hands the file over (and checks it whole); the second reuses that.
    if !kernel_has_passthrough() {
        // Older kernels: the mount says so once and reads through the daemon, still right.
        let log = fs::read_to_string(&m.log).unwrap();
        assert!(log.contains("the kernel has no FUSE passthrough"), "{log}");
        assert_eq!(read_all(&path), data);
        fs::write(&path, b"new content").unwrap();
        assert_eq!(b.get("f.bin"), b"new content");
        eprintln!("NOTE: this kernel has no FUSE passthrough (Linux 6.9+): fallback checked");
        return;
    }
    let written = || daemon_wrote(&m);
    let reader = fs::File::open(&path).unwrap();
    let before = written();
    assert_eq!(read_all(&path), data);
    let by_daemon = written() - before;
    assert!(
        by_daemon < data.len() as u64 / 4,
        "the daemon wrote {by_daemon} bytes while a {} byte file was read: no passthrough",
        data.len()
    );
    let log = fs::read_to_string(&m.log).unwrap();
    assert!(log.contains("opened by passthrough"), "{log}");

    // The kernel takes no writer beside passthrough readers: ETXTBSY (not EIO) while one is
    // open, and the write goes through once it is closed.
    let err = fs::write(&path, b"new content").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
    assert_eq!(read_all(&path), data, "a refused write changed nothing");
    drop(reader);
    fs::write(&path, b"new content").unwrap();
    assert_eq!(read_all(&path), b"new content");
    assert_eq!(b.get("f.bin"), b"new content");
}

#[test]
fn o_direct_reads_of_a_cached_file_are_served_by_the_daemon_from_disk() {
    use std::os::unix::fs::OpenOptionsExt;
    let b = Bucket::new("dc-direct");
    let data = pseudo_random(8 * MIB + 333, 71);
    b.put("f.bin", data.clone());
    let dir = cache_dir("direct");
    let p = proxy();
    let m = Mount::new(
        &b.name,
        "dc-direct",
        &[
            "--disk-cache",
            dir.to_str().unwrap(),
            "--endpoint-url",
            &p.endpoint,
        ],
    );
    let path = m.path.join("f.bin");
    assert_eq!(read_all(&path), data);
    settled(&dir);
    let gets_before = gets(&p);
    // O_DIRECT asks to skip the page cache: passthrough would make each read direct I/O on
    // the cache disk, so the daemon answers them itself, from the cache file.
    let direct = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let wrote_before = daemon_wrote(&m);
    let mut rng = 12345u64;
    let mut buf = vec![0u8; 4096];
    for _ in 0..200 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = (rng >> 33) % (data.len() as u64 / 4096) * 4096;
        direct.read_exact_at(&mut buf, at).unwrap();
        assert_eq!(&buf[..], &data[at as usize..at as usize + 4096], "at {at}");
    }
    // The short tail, unaligned.
    let mut tail = vec![0u8; 333];
    direct.read_exact_at(&mut tail, 8 * MIB as u64).unwrap();
    assert_eq!(&tail[..], &data[8 * MIB..]);
    assert_eq!(gets(&p), gets_before, "cached reads cost no GET");
    let by_daemon = daemon_wrote(&m) - wrote_before;
    assert!(
        by_daemon >= 200 * 4096,
        "the daemon wrote only {by_daemon} bytes for 200 O_DIRECT reads of 4 KiB"
    );
    // Beside an O_DIRECT reader, other readers and a writer work as on any file.
    assert_eq!(read_all(&path), data);
    fs::write(&path, b"new content").unwrap();
    drop(direct);
    assert_eq!(read_all(&path), b"new content");
    assert_eq!(b.get("f.bin"), b"new content");
}

#[test]
fn the_deprecated_cache_dir_flag_still_works_and_says_so() {
    let b = Bucket::new("dc-deprecated");
    b.put("f", "x");
    let staging = run_dir().join("staging-old-flag");
    let m = Mount::new(
        &b.name,
        "dc-deprecated",
        &["--cache-dir", staging.to_str().unwrap()],
    );
    assert_eq!(fs::read_to_string(m.path.join("f")).unwrap(), "x");
    let log = fs::read_to_string(&m.log).unwrap();
    assert!(log.contains("deprecated"), "{log}");
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(path: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&path).unwrap();
        sh(&format!(
            "mount -t tmpfs -o size={size},mode=0700 tmpfs '{}'",
            path.display()
        ));
        Self(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_cache_disk_never_fails_a_read() {
    let b = Bucket::new("dc-full");
    let data = pseudo_random(48 * MIB, 71);
    b.put("f.bin", data.clone());
    let disk = SmallDisk::new(run_dir().join("disk-cache").join("full"), "8m");
    // The cache may grow to 10 GiB, the disk holds 8 MiB: writes fail with ENOSPC.
    let m = Mount::new(
        &b.name,
        "dc-full",
        &[
            "--disk-cache",
            disk.0.to_str().unwrap(),
            "--disk-cache-size",
            "10GiB",
        ],
    );
    for round in 0..2 {
        assert!(read_all(&m.path.join("f.bin")) == data, "round {round}");
    }
    let log = fs::read_to_string(&m.log).unwrap();
    assert!(log.contains("disk cache: cannot write"), "{log}");
    assert_eq!(
        log.matches("disk cache: cannot write").count(),
        1,
        "warned once: {log}"
    );
    drop(m);
}

#[test]
fn a_takeover_keeps_passthrough_files_readable() {
    let b = Bucket::new("dc-takeover");
    let data = pseudo_random(4 * MIB + 5, 83);
    b.put("f.bin", data.clone());
    let dir = cache_dir("takeover");
    let m = Mount::new(
        &b.name,
        "dc-takeover",
        &["--disk-cache", dir.to_str().unwrap()],
    );
    let path = m.path.join("f.bin");
    assert_eq!(read_all(&path), data);
    settled(&dir);
    if !kernel_has_passthrough() {
        eprintln!(
            "NOTE: this kernel has no FUSE passthrough (Linux 6.9+): takeover checked without it"
        );
    }
    let mut held = fs::File::open(&path).unwrap();
    take_over(&m);
    // The handle opened before reads on (by passthrough: the backing id lives in the kernel's
    // connection, which the new daemon holds), and a new open joins it.
    let mut again = Vec::new();
    held.read_to_end(&mut again).unwrap();
    assert_eq!(again, data, "the handle opened before the takeover");
    assert_eq!(read_all(&path), data, "an open after the takeover");
    drop(held);
    // With every handle closed the inode leaves passthrough: a write opens (no ETXTBSY, no
    // EIO from the kernel) and lands.
    fs::write(&path, b"new content").unwrap();
    assert_eq!(b.get("f.bin"), b"new content");
    if kernel_has_passthrough() {
        let log = fs::read_to_string(&m.log).unwrap();
        assert!(
            log.contains("opened by passthrough (backing file shared)"),
            "{log}"
        );
    }
}

/// `find -type f` and `find -type p` under `m`'s `t`, sorted.
fn find_tree(m: &Mount) -> Vec<String> {
    let out = sh(&format!(
        "cd '{}' && find . -type f && find . -type p | sed 's/$/ (fifo)/'",
        m.path.join("t").display()
    ));
    let mut found: Vec<String> = out.lines().map(str::to_string).collect();
    found.sort_unstable();
    found
}

/// What `bucketfs status --json` says of `m`'s metadata snapshot.
fn snapshot_status(m: &Mount) -> serde_json::Value {
    status_json(&m.path)["snapshot"].clone()
}

/// Waits until the proxy has seen no request for a second; returns the requests counted.
fn quiet(p: &proxy::Proxy) -> u64 {
    let mut last = u64::MAX;
    eventually(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_secs(1));
        let now = p.counts().total();
        let still = now == last;
        last = now;
        still
    });
    p.counts().total()
}

/// `--metadata-cache`: after a remount, a `find` answers from the saved listings, with what
/// HEADs learned (an empty object's type) kept, and costs at most a tenth of the requests of
/// the first, revalidation included; a change made while unmounted shows once the background
/// revalidation has listed its directory again (the TTL is an hour, so only the revalidation
/// can show it); a damaged snapshot is dropped with one log line and never served.
#[test]
fn a_remount_answers_from_the_metadata_snapshot_and_revalidates_it() {
    let b = Bucket::new("meta-snap");
    let mut keys = Vec::new();
    for d in 0..40 {
        for f in 0..25 {
            keys.push(format!("t/d{d:02}/f{f:02}"));
        }
    }
    // Empty objects: the listing HEADs each once, to tell a FIFO or a device from a file.
    b.put_many(&keys, b"");
    b.put_typed(
        "t/d00/pipe",
        b"",
        "application/octet-stream",
        &[("mode", "4516")],
    );
    let snap = cache_dir("meta-snap");
    let p = proxy();
    let args = [
        "--endpoint-url",
        &p.endpoint,
        "--metadata-cache",
        snap.to_str().unwrap(),
        "--metadata-ttl",
        "1h",
    ];

    let m = Mount::new(&b.name, "meta-snap", &args);
    let start = quiet(&p);
    let first = find_tree(&m);
    let first_cost = quiet(&p) - start;
    assert_eq!(first.len(), 1001, "{first:?}");
    assert!(first.contains(&"./d00/pipe (fifo)".to_string()));
    drop(m);
    let saved = files_under(&snap.join("meta1")).len();
    assert!(saved >= 41, "{saved} listings saved");

    let m = Mount::new(&b.name, "meta-snap", &args);
    let start = quiet(&p);
    let second = find_tree(&m);
    let second_cost = quiet(&p) - start;
    eprintln!("find: {first_cost} requests cold, {second_cost} after a remount");
    assert_eq!(second, first);
    // The path walk's lookup of `t` itself (root was never listed) is a HEAD and a LIST;
    // nothing below it is asked again.
    let asked: Vec<String> = p.heads()[start as usize..]
        .iter()
        .filter_map(|h| h.lines().next())
        .filter(|line| line.starts_with("HEAD") && line.contains("/t/"))
        .map(str::to_string)
        .collect();
    assert!(asked.is_empty(), "HEADs after a remount: {asked:?}");
    assert!(
        second_cost * 10 <= first_cost,
        "{second_cost} requests after a remount, {first_cost} cold"
    );
    // The walked tree is revalidated with one flat listing (a LIST per 1,000 keys), not a LIST
    // per directory (41 and more).
    assert!(second_cost <= 12, "{second_cost} requests after a remount");
    let status = snapshot_status(&m);
    assert!(status["served"].as_u64().unwrap() >= 41, "{status}");
    assert_eq!(status["served"], status["revalidated"], "{status}");
    assert_eq!(status["changed"], 0, "{status}");
    assert_eq!(status["rejected"], 0, "{status}");
    drop(m);

    // Changed while unmounted.
    b.delete("t/d01/f00");
    b.put("t/d01/new", b"n");
    b.put("t/d02/f00", b"changed");
    for f in 0..25 {
        b.delete(&format!("t/d03/f{f:02}"));
    }
    let m = Mount::new(&b.name, "meta-snap", &args);
    let ls = |dir: &str| sh(&format!("ls '{}'", m.path.join(dir).display()));
    let _ = ls("t/d01");
    let shown = eventually(Duration::from_secs(20), || {
        let names = ls("t/d01");
        names.lines().any(|n| n == "new") && !names.lines().any(|n| n == "f00")
    });
    assert!(shown, "t/d01 now: {}", ls("t/d01"));
    assert!(eventually(Duration::from_secs(20), || {
        fs::metadata(m.path.join("t/d02/f00")).is_ok_and(|md| md.len() == 7)
    }));
    // A directory emptied elsewhere: answered once from its saved listing, then as a mount
    // without a snapshot shows it (gone, or empty where the server keeps the folder).
    let fresh = Mount::new(&b.name, "meta-snap-fresh", &args[..2]);
    let now = |m: &Mount| {
        sh(&format!(
            "ls '{}' 2>/dev/null || echo gone",
            m.path.join("t/d03").display()
        ))
    };
    let want = now(&fresh);
    assert!(!want.contains("f00"), "{want}");
    let _ = now(&m);
    assert!(
        eventually(Duration::from_secs(20), || now(&m) == want),
        "t/d03 shows {:?}, a fresh mount {want:?}",
        now(&m)
    );
    drop(m);

    // Every saved file damaged: dropped, never served, one warning.
    for (path, _) in files_under(&snap.join("meta1")) {
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        fs::write(&path, bytes).unwrap();
    }
    let m = Mount::new(&b.name, "meta-snap", &args);
    let mut want: Vec<String> = first
        .into_iter()
        .filter(|f| f != "./d01/f00" && !f.starts_with("./d03/"))
        .chain(["./d01/new".to_string()])
        .collect();
    want.sort_unstable();
    assert_eq!(find_tree(&m), want);
    let log = fs::read_to_string(&m.log).unwrap();
    assert_eq!(
        log.matches("dropped a metadata snapshot").count(),
        1,
        "one warning:\n{log}"
    );
    let status = snapshot_status(&m);
    // Read lazily: those the walk looked for before it listed the rest from S3.
    assert!(status["rejected"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["served"], 0, "{status}");
}
