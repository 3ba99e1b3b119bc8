//! The core under the conditions users have and loopback hides: a slow uplink, a stalled
//! server, many processes on one file, shell redirects counted request by request.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use common::{eventually, proxy, pseudo_random, sha256, within, Bucket, Mount};

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
}

#[test]
fn a_24_mib_cp_through_a_4_mbit_uplink_succeeds() {
    let b = Bucket::new("slow-up");
    let p = proxy();
    let m = Mount::new(&b.name, "slow-up", &["--endpoint-url", &p.endpoint]);
    let data = pseudo_random(24 << 20, 21);
    let src = common::run_dir().join("slow-up.src");
    fs::write(&src, &data).unwrap();
    // 500 KB/s: three 8 MiB parts in flight share the link, about 50 s each.
    p.throttle(500_000);
    let dst = m.path.join("slow.bin");
    let status = within(
        Duration::from_secs(400),
        "cp through a slow link",
        move || Command::new("cp").arg(&src).arg(&dst).status().unwrap(),
    );
    p.throttle(0);
    assert!(
        status.success(),
        "cp failed; log:\n{}",
        fs::read_to_string(&m.log).unwrap_or_default()
    );
    assert_eq!(sha256(&b.get("slow.bin")), sha256(&data));
    assert_eq!(b.multipart_uploads(), 0);
}

#[test]
fn a_64_mib_read_through_a_1_mbyte_link_succeeds() {
    let b = Bucket::new("slow-down");
    let data = pseudo_random(64 << 20, 22);
    b.put("big.bin", data.clone());
    let p = proxy();
    let m = Mount::new(&b.name, "slow-down", &["--endpoint-url", &p.endpoint]);
    p.throttle(1_000_000);
    let path = m.path.join("big.bin");
    let got = within(
        Duration::from_secs(400),
        "a read through a slow link",
        move || fs::read(path),
    );
    p.throttle(0);
    let got = got.unwrap_or_else(|e| {
        panic!(
            "read failed: {e}; log:\n{}",
            fs::read_to_string(&m.log).unwrap_or_default()
        )
    });
    assert_eq!(sha256(&got), sha256(&data));
}

#[test]
fn a_stalled_server_fails_a_write_within_the_stall_bound_and_leaves_no_upload() {
    let b = Bucket::new("stalled-up");
    let p = proxy();
    let m = Mount::new(&b.name, "stalled-up", &["--endpoint-url", &p.endpoint]);
    let path = m.path.join("stalled.bin");
    let chunk = pseudo_random(1 << 20, 23);
    let mut file = fs::File::create(&path).unwrap();
    for _ in 0..12 {
        file.write_all(&chunk).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(30), || b.multipart_uploads() == 1),
        "a multipart upload should have begun"
    );
    p.stall();
    // Nothing moves: the transfer fails once no byte moved for 30 s (docs/SEMANTICS.md),
    // retries included, and close() reports it.
    let closed = within(
        Duration::from_secs(180),
        "close against a stalled server",
        move || {
            file.write_all(&chunk)?;
            file.sync_all()
        },
    );
    let err = closed.expect_err("fsync against a stalled server must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    p.resume();
    assert!(
        eventually(Duration::from_secs(90), || b.multipart_uploads() == 0),
        "the failed upload is aborted once the server answers"
    );
    assert!(b.head("stalled.bin").is_none(), "no partial object");
}

/// `procs` processes each run `script(i)` at once; waits for all, asserting success.
fn run_concurrently(procs: usize, script: impl Fn(usize) -> String) {
    let children: Vec<_> = (0..procs)
        .map(|i| Command::new("sh").arg("-c").arg(script(i)).spawn().unwrap())
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
}

fn appenders_lose_no_line(ttl: &str) {
    let b = Bucket::new("append");
    b.put("log.txt", "start\n");
    let m = Mount::new(&b.name, "append", &["--metadata-ttl", ttl]);
    let log = m.path.join("log.txt");
    // Eight processes, each with its own O_APPEND descriptor (fd 3), 50 lines each.
    run_concurrently(8, |p| {
        format!(
            "exec 3>>'{}'; i=0; while [ $i -lt 50 ]; do echo \"p{p} line $i\" >&3; i=$((i+1)); done",
            log.display()
        )
    });
    let text = String::from_utf8(b.get("log.txt")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"start"));
    lines.sort_unstable();
    let mut want: Vec<String> = (0..8)
        .flat_map(|p| (0..50).map(move |i| format!("p{p} line {i}")))
        .collect();
    want.push("start".into());
    want.sort_unstable();
    assert_eq!(lines, want, "every appended line, once (ttl {ttl})");
}

#[test]
fn eight_o_append_writers_lose_no_line() {
    appenders_lose_no_line("5s");
}

#[test]
fn eight_o_append_writers_lose_no_line_with_no_metadata_cache() {
    appenders_lose_no_line("0");
}

fn range_writers_lose_no_write(ttl: &str) {
    const PAGE: usize = 4096;
    let b = Bucket::new("ranges");
    b.put("shared.bin", vec![b'.'; 4 * PAGE]);
    let m = Mount::new(&b.name, "ranges", &["--metadata-ttl", ttl]);
    let target = m.path.join("shared.bin");
    let dir = common::run_dir().join(format!("ranges-{}", b.name));
    fs::create_dir_all(&dir).unwrap();
    for p in 0..4 {
        for round in 0..10 {
            let page = vec![b'a' + (p * 10 + round) as u8 % 26; PAGE];
            fs::write(dir.join(format!("p{p}r{round}")), page).unwrap();
        }
    }
    // Four processes, each writing its own 4 KiB page of one existing file, ten rounds each:
    // open, pwrite, close (dd conv=notrunc).
    run_concurrently(4, |p| {
        format!(
            "for r in 0 1 2 3 4 5 6 7 8 9; do dd if='{}/p{p}r'$r of='{}' bs=4096 seek={p} count=1 conv=notrunc status=none || exit 1; done",
            dir.display(),
            target.display()
        )
    });
    let body = b.get("shared.bin");
    assert_eq!(body.len(), 4 * PAGE);
    for p in 0..4 {
        let last = b'a' + (p * 10 + 9) as u8 % 26;
        assert!(
            body[p * PAGE..(p + 1) * PAGE].iter().all(|c| *c == last),
            "process {p}'s last write is in the object (ttl {ttl})"
        );
    }
}

#[test]
fn four_range_writers_lose_no_write() {
    range_writers_lose_no_write("5s");
}

#[test]
fn four_range_writers_lose_no_write_with_no_metadata_cache() {
    range_writers_lose_no_write("0");
}

#[test]
fn a_thousand_shell_redirects_cost_a_put_each_and_never_an_empty_object() {
    let b = Bucket::new("redirects");
    let p = proxy();
    // The directory's listing (made empty by the mkdir) must outlive the loop: with the 5 s
    // default, a machine that needs more than 5 s for the loop (a debug build here takes 15 s)
    // pays a HEAD + LIST per name once it expires, which is what a TTL costs, not a bug.
    let m = Mount::new(
        &b.name,
        "redirects",
        &["--endpoint-url", &p.endpoint, "--metadata-ttl", "10m"],
    );
    fs::create_dir(m.path.join("d")).unwrap();
    let before = (p.counts().put.load(Ordering::SeqCst), p.counts().total());
    let x = "x".repeat(4096);
    sh(&format!(
        "x='{x}'; cd '{}' && i=0; while [ $i -lt 1000 ]; do printf %s \"$x\" > f$i; i=$((i+1)); done",
        m.path.join("d").display()
    ));
    let puts = p.counts().put.load(Ordering::SeqCst) - before.0;
    let others = p.counts().total() - before.1 - puts;
    eprintln!("1000 shell redirects: {puts} PUTs, {others} other requests");
    assert!(puts <= 1000, "{puts} PUTs for 1000 redirects");
    assert!(others <= 10, "{others} requests besides the PUTs");
    // Every object has its content: none was first published empty and left so.
    assert_eq!(b.keys_under("d/f").len(), 1000);
    assert_eq!(b.size("d/f0"), Some(4096));
    assert_eq!(b.size("d/f999"), Some(4096));
}

#[test]
fn redirects_that_outlive_the_default_ttl_list_their_directory_again_instead_of_asking_per_name() {
    let b = Bucket::new("redirects-ttl");
    let p = proxy();
    // The default 5 s TTL, and a loop slowed to take several times as long: each time the
    // directory's listing has expired, the next new name lists it again (one LIST) instead
    // of a HEAD and a LIST for that name and every one after it.
    let m = Mount::new(&b.name, "redirects-ttl", &["--endpoint-url", &p.endpoint]);
    fs::create_dir(m.path.join("d")).unwrap();
    let c = p.counts();
    let before = (c.put.load(Ordering::SeqCst), c.total());
    let asked = (c.head.load(Ordering::SeqCst), c.list.load(Ordering::SeqCst));
    let started = std::time::Instant::now();
    sh(&format!(
        "cd '{}' && i=0; while [ $i -lt 1000 ]; do printf %s \"$i\" > f$i; i=$((i+1)); \
           [ $((i % 50)) -ne 0 ] || sleep 1; done",
        m.path.join("d").display()
    ));
    let took = started.elapsed();
    let puts = c.put.load(Ordering::SeqCst) - before.0;
    let others = c.total() - before.1 - puts;
    eprintln!(
        "1000 redirects over {took:?} at the default TTL: {puts} PUTs, {others} other requests \
         ({} HEAD, {} LIST)",
        c.head.load(Ordering::SeqCst) - asked.0,
        c.list.load(Ordering::SeqCst) - asked.1
    );
    assert!(
        took > Duration::from_secs(15),
        "the loop did not outlive the TTL"
    );
    assert!(puts <= 1000, "{puts} PUTs for 1000 redirects");
    assert!(others <= 20, "{others} requests besides the PUTs");
    assert_eq!(b.keys_under("d/f").len(), 1000);
    assert_eq!(b.get("d/f999"), b"999");
}

#[test]
fn a_reader_reads_the_committed_version_while_a_200_mib_commit_runs() {
    let b = Bucket::new("read-during-commit");
    let old = pseudo_random(1 << 20, 24);
    b.put("f.bin", old.clone());
    let p = proxy();
    let m = Mount::new(
        &b.name,
        "read-during-commit",
        &["--endpoint-url", &p.endpoint],
    );
    let path = m.path.join("f.bin");
    let reader = fs::File::open(&path).unwrap();
    // O_RDWR changes the file in place: a staging copy, uploaded whole by the commit.
    let writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let chunk = pseudo_random(1 << 20, 25);
    for i in 0..200u64 {
        writer.write_at(&chunk, i << 20).unwrap();
    }
    p.throttle(20_000_000);
    let (tx, rx) = mpsc::channel();
    let committer = std::thread::spawn(move || {
        let r = writer.sync_all();
        let _ = tx.send(());
        r
    });
    assert!(
        eventually(Duration::from_secs(30), || b.multipart_uploads() == 1),
        "the commit should be uploading"
    );
    let got = within(
        Duration::from_secs(60),
        "a read during a commit",
        move || {
            let mut buf = vec![0; 1 << 20];
            reader.read_at(&mut buf, 0).map(|n| buf[..n].to_vec())
        },
    )
    .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "the read finished while the commit was still running"
    );
    assert_eq!(sha256(&got), sha256(&old), "the committed version");
    within(Duration::from_secs(300), "the commit", move || {
        committer.join().unwrap()
    })
    .unwrap();
    p.throttle(0);
    assert_eq!(b.size("f.bin"), Some(200 << 20));
}

#[test]
fn a_server_stalled_during_sigterm_then_revived_leaves_no_multipart_upload() {
    let b = Bucket::new("stop-stalled");
    let p = proxy();
    let m = Mount::new(&b.name, "stop-stalled", &["--endpoint-url", &p.endpoint]);
    let pid = m.daemon_pid().expect("daemon pid");
    let data = pseudo_random(20 << 20, 26);
    let mut f = fs::File::create(m.path.join("open.bin")).unwrap();
    f.write_all(&data).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || b.multipart_uploads() == 1),
        "20 MiB with 8 MiB parts should have begun a multipart upload"
    );
    p.stall();
    // SAFETY: kill(2) on the pid of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_secs(5));
    p.resume();
    // The commit goes on or is aborted; either way the daemon exits once the file is closed
    // and leaves no multipart upload behind.
    within(
        Duration::from_secs(180),
        "close after the stop",
        move || drop(f),
    );
    assert!(
        common::wait_gone(pid, Duration::from_secs(180)),
        "the daemon did not exit; log:\n{}",
        fs::read_to_string(&m.log).unwrap_or_default()
    );
    assert_eq!(b.multipart_uploads(), 0, "no multipart upload left");
    if b.head("open.bin").is_some() {
        assert_eq!(
            sha256(&b.get("open.bin")),
            sha256(&data),
            "whole or nothing"
        );
    }
}

/// A walked tree: `keys` put into a new bucket, mounted through a counting proxy, and `find
/// -type f` of `t/` run once, checked to find every key.
struct Walked {
    proxy: common::proxy::Proxy,
    mount: Mount,
    /// Requests of the `find`: LISTs, all, and the first request head it sent.
    lists: u64,
    all: u64,
    heads_from: usize,
}

fn walk_tree(name: &str, keys: &[String]) -> Walked {
    let b = Bucket::new(name);
    b.put_many(keys, b"x");
    let proxy = proxy();
    let mount = Mount::new(&b.name, name, &["--endpoint-url", &proxy.endpoint]);
    let c = proxy.counts();
    let before = (
        c.list.load(Ordering::SeqCst),
        c.total(),
        proxy.heads().len(),
    );
    let found = common::sh(&format!(
        "cd '{}' && find . -type f",
        mount.path.join("t").display()
    ));
    let lists = c.list.load(Ordering::SeqCst) - before.0;
    let all = c.total() - before.1;
    let mut found: Vec<&str> = found.lines().collect();
    found.sort_unstable();
    let want: Vec<String> = keys.iter().map(|k| format!("./{}", &k[2..])).collect();
    assert_eq!(found, want);
    Walked {
        proxy,
        mount,
        lists,
        all,
        heads_from: before.2,
    }
}

/// `find` over a tree of many small directories: one flat listing of the tree (a LIST per
/// 1,000 keys) instead of a delimited listing per directory; and `du` and `ls -R` see the same.
#[test]
fn find_over_many_small_directories_lists_the_tree_flat() {
    let mut keys = Vec::new();
    for a in 0..10 {
        for d in 0..20 {
            for f in 0..15 {
                keys.push(format!("t/a{a}/d{d:02}/f{f:02}"));
            }
        }
    }
    let w = walk_tree("walk-flat", &keys);
    let (lists, all) = (w.lists, w.all);
    eprintln!("find over 3,000 keys in 211 directories: {lists} LISTs, {all} requests in all");
    // Delimited, one per directory: 211. Flat: 3 pages, plus the directories opened before
    // the walk reached them.
    assert!(lists <= 20, "{lists} LISTs");
    assert!(all <= 25, "{all} requests");
    // Directories too: every one, and nothing else.
    let dirs = common::sh(&format!(
        "cd '{}' && find . -type d | wc -l",
        w.mount.path.join("t").display()
    ));
    assert_eq!(dirs.trim(), "211");
}

/// `find` over a tree of big directories: the flat listing runs in lanes, each over its own
/// range of the tree's directories, and the walk costs what one flat listing does (walk.rs,
/// 7.). Ranges of several directories start after a `name/` key: SeaweedFS skips the whole
/// directory `name` when asked to start after the key `name`.
#[test]
fn find_over_big_directories_lists_their_ranges_in_lanes() {
    let mut keys = Vec::new();
    for a in 0..9 {
        for d in 0..10 {
            for f in 0..120 {
                keys.push(format!("t/a{a}/d{d}/f{f:03}"));
            }
        }
    }
    let w = walk_tree("walk-lanes", &keys);
    let lists = w.lists;
    let starts: Vec<String> = w.proxy.heads()[w.heads_from..]
        .iter()
        .filter_map(|h| {
            let line = h.lines().next()?;
            let at = line.find("start-after=")? + "start-after=".len();
            Some(line[at..].split(['&', ' ']).next()?.to_string())
        })
        .collect();
    eprintln!("find over 10,800 keys in 9 directories of 10: {lists} LISTs, lanes from {starts:?}");
    // The first lane's first page lies in a0: the next lanes take a1-a4 and a5-a8.
    assert!(starts.contains(&"t%2Fa1%2F".to_string()), "{starts:?}");
    assert!(starts.contains(&"t%2Fa5%2F".to_string()), "{starts:?}");
    // 11 pages at least and one more per range; each big directory the walker reaches before
    // its lane completed it is listed on its own (9); a range that skipped its first
    // directory would list its 10 subdirectories on their own.
    assert!(lists <= 30, "{lists} LISTs");
}

/// `find` over more paths than `--metadata-memory` holds: the walk is complete and right, and
/// the daemon stays near its bound by asking the kernel to forget the directories it walked
/// first (without the bound the kernel holds every path, and so does the daemon).
#[test]
fn a_walk_past_the_metadata_bound_stays_within_it() {
    let b = Bucket::new("meta-bound");
    let mut keys = Vec::new();
    for d in 0..50 {
        for f in 0..200 {
            keys.push(format!("t/d{d:02}/file-with-a-longer-name-{f:03}"));
        }
    }
    b.put_many(&keys, b"x");
    let budget: u64 = 1 << 20;
    let m = Mount::new(
        &b.name,
        "meta-bound",
        &["--metadata-memory", "1MiB", "--metadata-ttl", "1h"],
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("find {}/t -type f | sort", m.path.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let found = String::from_utf8(out.stdout).unwrap();
    let mut expected: Vec<String> = keys
        .iter()
        .map(|k| format!("{}/{k}", m.path.display()))
        .collect();
    expected.sort();
    assert_eq!(found.lines().collect::<Vec<_>>(), expected);
    let meta = |m: &Mount| common::status_json(&m.path)["metadata"].clone();
    let mut last = meta(&m);
    let within_bound = eventually(Duration::from_secs(10), || {
        last = meta(&m);
        last["bytes"].as_u64().unwrap() <= budget
    });
    assert!(within_bound, "over the bound after the walk: {last}");
    assert!(last["shed"].as_u64().unwrap() > 0, "{last}");
    // 1 MiB holds about 5,000 paths at about 200 bytes each: far fewer than the 10,050 walked.
    assert!(
        last["inodes"].as_u64().unwrap() < 6_000,
        "the kernel still holds most paths: {last}"
    );
    // What was shed is found again.
    let again = m.path.join("t/d00/file-with-a-longer-name-000");
    assert_eq!(fs::read(&again).unwrap(), b"x");

    // Without the bound, the same walk keeps every path.
    drop(m);
    let m = Mount::new(&b.name, "meta-bound", &["--metadata-ttl", "1h"]);
    sh(&format!("find {}/t -type f > /dev/null", m.path.display()));
    let held = meta(&m);
    assert!(
        held["inodes"].as_u64().unwrap() > 10_000 && held["shed"].as_u64().unwrap() == 0,
        "{held}"
    );
}
