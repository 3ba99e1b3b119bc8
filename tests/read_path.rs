//! The read path, end to end: the real binary mounted with FUSE over a real SeaweedFS on 127.0.0.1.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{pseudo_random, sha256, Bucket, Mount};

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn browse_nested_implicit_and_marker_directories() {
    let b = Bucket::new("browse");
    b.put("top.txt", "top level\n");
    b.put("empty.bin", "");
    b.put("docs/readme.md", "# readme\n");
    b.put("docs/deep/er/file.txt", "deep\n");
    b.put("marker-only/", "");
    b.put("with space.txt", "space\n");
    b.put("unicodé ✓.txt", "unicode\n");
    b.put("plus+sign.txt", "plus\n");
    b.put("per%cent.txt", "percent\n");
    let m = Mount::new(&b.name, "browse", &[]);
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == m.path.to_str())
        .expect("mount listed");
    assert!(
        line.starts_with(&format!("{} ", b.name)),
        "source is the bucket: {line}"
    );
    assert_eq!(line.split(' ').nth(2), Some("fuse.bucketfs"), "{line}");

    assert_eq!(
        names(&m.path),
        set(&[
            "docs",
            "empty.bin",
            "marker-only",
            "per%cent.txt",
            "plus+sign.txt",
            "top.txt",
            "unicodé ✓.txt",
            "with space.txt"
        ])
    );
    assert_eq!(
        fs::read_to_string(m.path.join("top.txt")).unwrap(),
        "top level\n"
    );
    assert_eq!(fs::read(m.path.join("empty.bin")).unwrap(), b"");
    assert_eq!(fs::metadata(m.path.join("empty.bin")).unwrap().len(), 0);
    assert_eq!(
        fs::read_to_string(m.path.join("with space.txt")).unwrap(),
        "space\n"
    );
    assert_eq!(
        fs::read_to_string(m.path.join("unicodé ✓.txt")).unwrap(),
        "unicode\n"
    );
    assert_eq!(
        fs::read_to_string(m.path.join("plus+sign.txt")).unwrap(),
        "plus\n"
    );
    assert_eq!(
        fs::read_to_string(m.path.join("per%cent.txt")).unwrap(),
        "percent\n"
    );
    assert!(fs::metadata(m.path.join("marker-only")).unwrap().is_dir());
    assert!(names(&m.path.join("marker-only")).is_empty());
    assert!(
        fs::metadata(m.path.join("docs/deep")).unwrap().is_dir(),
        "implicit directory"
    );
    assert_eq!(
        fs::read_to_string(m.path.join("docs/deep/er/file.txt")).unwrap(),
        "deep\n"
    );
    let meta = fs::metadata(m.path.join("docs/readme.md")).unwrap();
    assert_eq!(meta.len(), 9);
    assert_eq!(meta.mode() & 0o7777, 0o644);
    assert_eq!(
        fs::metadata(m.path.join("docs")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::metadata(m.path.join("nope")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Real tools: find sees every file, ls -l lists, cp and rsync copy out byte for byte.
    let find = Command::new("find")
        .arg(&m.path)
        .arg("-type")
        .arg("f")
        .output()
        .unwrap();
    assert!(find.status.success());
    assert_eq!(String::from_utf8_lossy(&find.stdout).lines().count(), 8);
    let ls = Command::new("ls")
        .arg("-l")
        .arg(m.path.join("docs"))
        .output()
        .unwrap();
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(String::from_utf8_lossy(&ls.stdout).contains("readme.md"));
    let out = common::run_dir().join(format!("copy-{}", b.name));
    let cp = Command::new("cp")
        .arg("-r")
        .arg(&m.path)
        .arg(&out)
        .status()
        .unwrap();
    assert!(cp.success());
    assert_eq!(
        fs::read_to_string(out.join("docs/deep/er/file.txt")).unwrap(),
        "deep\n"
    );
    let rsync_out = common::run_dir().join(format!("rsync-{}", b.name));
    let rsync = Command::new("rsync")
        .arg("-r")
        .arg(format!("{}/", m.path.display()))
        .arg(&rsync_out)
        .status()
        .expect("rsync is installed by tests/setup.sh");
    assert!(rsync.success(), "rsync -r out of the mount failed");
    assert_eq!(
        fs::read_to_string(rsync_out.join("unicodé ✓.txt")).unwrap(),
        "unicode\n"
    );
    assert_eq!(fs::read(rsync_out.join("empty.bin")).unwrap(), b"");
    let _ = fs::remove_dir_all(out);
    let _ = fs::remove_dir_all(rsync_out);
}

#[test]
fn directory_of_2500_entries_pages_through_listings() {
    let b = Bucket::new("big-dir");
    let mut keys: Vec<String> = (0..2500).map(|i| format!("big/f{i:05}.txt")).collect();
    // Markers at and around page boundaries: SeaweedFS ends a page early on them.
    for i in [998, 999, 1000, 1999] {
        keys.push(format!("big/f{i:05}.d/"));
    }
    b.put_many(&keys, b"x");
    let m = Mount::new(&b.name, "big-dir", &[]);
    let got = names(&m.path.join("big"));
    assert_eq!(got.len(), 2504);
    assert!(got.contains("f00000.txt") && got.contains("f02499.txt") && got.contains("f01999.d"));
    let ls = Command::new("ls")
        .arg("-l")
        .arg(m.path.join("big"))
        .output()
        .unwrap();
    assert!(ls.status.success());
    // "total N" plus one line per entry.
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 2505);
}

#[test]
fn large_object_reads_back_identical_sequentially_and_at_random_offsets() {
    let b = Bucket::new("large");
    let data = pseudo_random(300 << 20, 7);
    b.put("large.bin", data.clone());
    let m = Mount::new(&b.name, "large", &[]);
    let path = m.path.join("large.bin");
    assert_eq!(fs::metadata(&path).unwrap().len(), data.len() as u64);

    let mut file = fs::File::open(&path).unwrap();
    let mut read = Vec::with_capacity(data.len());
    file.read_to_end(&mut read).unwrap();
    assert_eq!(read.len(), data.len());
    assert_eq!(sha256(&read), sha256(&data), "sequential read differs");
    drop(read);

    let file = fs::File::open(&path).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = (rng % (3 << 20)) as usize + 1;
        let offset = (rng >> 20) as usize % (data.len() - 1);
        let mut buf = vec![0; len];
        let n = file.read_at(&mut buf, offset as u64).unwrap();
        let expect = &data[offset..(offset + len).min(data.len())];
        assert!(n > 0);
        assert_eq!(&buf[..n], &expect[..n], "bytes differ at offset {offset}");
    }
    // Past the end: nothing.
    let mut buf = [0u8; 16];
    assert_eq!(file.read_at(&mut buf, data.len() as u64 + 10).unwrap(), 0);

    let copy = common::run_dir().join(format!("{}.copy", b.name));
    assert!(Command::new("cp")
        .arg(&path)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    assert_eq!(sha256(&fs::read(&copy).unwrap()), sha256(&data));
    fs::remove_file(copy).unwrap();
}

#[test]
fn prefix_mount_shows_only_what_is_under_the_prefix() {
    let b = Bucket::new("prefix");
    b.put("outside.txt", "no");
    b.put("data/inside.txt", "yes");
    b.put("data/sub/deeper.txt", "deeper");
    b.put("database.txt", "not under data/");
    for source in [format!("{}:data/", b.name), format!("s3://{}/data", b.name)] {
        let m = Mount::new(&source, "prefix", &[]);
        assert_eq!(
            names(&m.path),
            set(&["inside.txt", "sub"]),
            "source {source}"
        );
        assert_eq!(
            fs::read_to_string(m.path.join("inside.txt")).unwrap(),
            "yes"
        );
        assert_eq!(
            fs::read_to_string(m.path.join("sub/deeper.txt")).unwrap(),
            "deeper"
        );
        assert!(fs::metadata(m.path.join("outside.txt")).is_err());
    }
}

#[test]
fn hostile_keys_are_left_out_without_breaking_the_listing() {
    let b = Bucket::new("hostile");
    b.put("d/good.txt", "good");
    b.put("d//double-slash", "x");
    // SeaweedFS refuses `.` and `..` components (400 InvalidRequest) and components over 255
    // bytes (KeyTooLongError); a server that stores them must see them left out as well. The unit
    // tests of `fs::list` cover those keys against the memory store.
    let too_long = format!("d/{}", "n".repeat(256));
    for key in ["d/./dot", "d/../dotdot", "d/.", too_long.as_str()] {
        if let Err(e) = b.try_put(key, "x") {
            eprintln!(
                "server refused {key}: {}",
                e.lines().next().unwrap_or_default()
            );
        }
    }
    b.put(&format!("d/{}", "m".repeat(255)), "just fits");
    b.put("d/shadowed", "a file under a directory's name");
    b.put("d/shadowed/child.txt", "child");
    b.put("d/data-marker/", "a directory marker that holds data");
    let m = Mount::new(&b.name, "hostile", &[]);
    let dir = m.path.join("d");
    let mut expected = set(&["good.txt", &"m".repeat(255), "shadowed", "data-marker"]);
    // SeaweedFS stores `d//double-slash` as `d/double-slash` (its filer collapses slashes): then
    // it is an ordinary name. A server that keeps the empty component must see it left out.
    if b.keys().iter().any(|k| k == "d/double-slash") {
        expected.insert("double-slash".to_string());
    }
    assert_eq!(names(&dir), expected);
    assert!(fs::metadata(dir.join("data-marker")).unwrap().is_dir());
    assert!(
        names(&dir.join("data-marker")).is_empty(),
        "the marker's data is not a file"
    );
    assert!(
        fs::metadata(dir.join("shadowed")).unwrap().is_dir(),
        "the directory wins"
    );
    assert_eq!(
        fs::read_to_string(dir.join("shadowed/child.txt")).unwrap(),
        "child"
    );
    assert_eq!(
        fs::read_to_string(dir.join("m".repeat(255))).unwrap(),
        "just fits"
    );
    assert_eq!(fs::read_to_string(dir.join("good.txt")).unwrap(), "good");
}

#[test]
fn object_replaced_mid_read_fails_with_estale() {
    let b = Bucket::new("estale");
    b.put("changing.bin", pseudo_random(64 << 20, 1));
    let m = Mount::new(&b.name, "estale", &[]);
    let file = fs::File::open(m.path.join("changing.bin")).unwrap();
    let mut first = vec![0; 4096];
    file.read_at(&mut first, 0).unwrap();
    assert_eq!(first, pseudo_random(4096, 1));
    b.put("changing.bin", pseudo_random(64 << 20, 2));
    let mut buf = vec![0; 4096];
    let err = file.read_at(&mut buf, 50 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    drop(file);
    // A new open after the metadata TTL sees the new version.
    std::thread::sleep(Duration::from_secs(6));
    let mut reopened = fs::File::open(m.path.join("changing.bin")).unwrap();
    let mut head = vec![0; 4096];
    reopened.read_exact(&mut head).unwrap();
    assert_eq!(head, pseudo_random(4096, 2));
}

#[test]
fn inode_numbers_are_the_same_after_a_remount() {
    let b = Bucket::new("inodes");
    b.put("a/b/c.txt", "c");
    b.put("top.txt", "t");
    let inos = |m: &Mount| -> Vec<u64> {
        ["top.txt", "a", "a/b", "a/b/c.txt"]
            .iter()
            .map(|p| fs::metadata(m.path.join(p)).unwrap().ino())
            .collect()
    };
    let first = {
        let m = Mount::new(&b.name, "inodes", &[]);
        let i = inos(&m);
        assert_eq!(fs::metadata(&m.path).unwrap().ino(), 1);
        i
    };
    let m = Mount::new(&b.name, "inodes", &[]);
    assert_eq!(inos(&m), first);
    let unique: BTreeSet<u64> = first.iter().copied().collect();
    assert_eq!(unique.len(), 4);
}

#[test]
fn unmount_and_sigterm_end_the_daemon() {
    let b = Bucket::new("lifecycle");
    b.put("f", "x");
    let m = Mount::new(&b.name, "lifecycle", &[]);
    let pid = m.daemon_pid().expect("daemon running");
    assert!(
        m.unmount(),
        "daemon {pid} still running after fusermount3 -u"
    );
    assert!(!common::is_mounted(&m.path));

    let m = Mount::new(&b.name, "lifecycle", &[]);
    let pid = m.daemon_pid().expect("daemon running");
    // SAFETY: sending a signal to the daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(
        common::wait_gone(pid, Duration::from_secs(10)),
        "SIGTERM did not end the daemon"
    );
    assert!(
        !common::is_mounted(&m.path),
        "SIGTERM left the mount behind"
    );

    // Foreground mode: the process itself serves, and exits 0 after an unmount.
    let path = common::mount_point("foreground");
    let mut child = common::bucketfs_command(&b.name, &path, &["--foreground"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !common::is_mounted(&path) {
        assert!(Instant::now() < deadline, "foreground mount never appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "foreground bucketfs exited early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fs::read_to_string(path.join("f")).unwrap(), "x");
    assert!(Command::new("fusermount3")
        .arg("-u")
        .arg(&path)
        .status()
        .unwrap()
        .success());
    let status =
        wait_child(&mut child, Duration::from_secs(10)).expect("foreground daemon did not exit");
    assert!(status.success());
}

fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

/// Runs bucketfs expecting failure; returns its stderr. Fails the test if it hangs.
fn expect_failure(mut cmd: Command) -> String {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status =
        wait_child(&mut child, Duration::from_secs(60)).expect("bucketfs hung instead of failing");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "bucketfs succeeded unexpectedly");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one clear line, got: {stderr}"
    );
    stderr
}

#[test]
fn start_up_errors_are_one_clear_line_and_a_non_zero_exit() {
    let b = Bucket::new("errors");
    let path = common::mount_point("errors");

    let err = expect_failure(common::bucketfs_command("no-such-bucket-here", &path, &[]));
    assert!(err.contains("does not exist"), "{err}");

    let mut wrong = common::bucketfs_command(&b.name, &path, &[]);
    wrong.env("AWS_SECRET_ACCESS_KEY", "wrong-secret");
    let err = expect_failure(wrong);
    assert!(
        err.contains("denied") && err.contains("credentials"),
        "{err}"
    );
    assert!(!err.contains("wrong-secret"), "secret leaked: {err}");

    let mut anonymous = common::bucketfs_command(&b.name, &path, &[]);
    anonymous
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", &path)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let err = expect_failure(anonymous);
    assert!(err.contains("no AWS credentials found"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut unreachable = common::bucketfs_command(&b.name, &path, &[]);
    unreachable.arg(format!("--endpoint-url=http://127.0.0.1:{port}"));
    let err = expect_failure(unreachable);
    assert!(err.contains("cannot reach"), "{err}");

    let missing = path.join("does-not-exist");
    let err = expect_failure(common::bucketfs_command(&b.name, &missing, &[]));
    assert!(
        err.contains("does not exist") && err.contains("mkdir"),
        "{err}"
    );

    let m = Mount::at(&b.name, path.clone(), &[]);
    let err = expect_failure(common::bucketfs_command(&b.name, &m.path, &[]));
    assert!(err.contains("already mounted"), "{err}");

    // A daemon killed outright leaves a dead mount ("Transport endpoint is not connected").
    let killed = Mount::new(&b.name, "errors-dead", &[]);
    let pid = killed.daemon_pid().expect("daemon pid");
    // SAFETY: kill(2) on the pid of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    assert!(common::wait_gone(pid, std::time::Duration::from_secs(10)));
    let err = expect_failure(common::bucketfs_command(&b.name, &killed.path, &[]));
    assert!(
        err.contains("not connected") && err.contains("fusermount3 -u"),
        "{err}"
    );

    let err = expect_failure(common::bucketfs_command(
        &b.name,
        &path,
        &["-o", "bogus_option"],
    ));
    assert!(err.contains("unknown mount option 'bogus_option'"), "{err}");
    assert!(!common::is_mounted(&path.join("does-not-exist")));
}

#[test]
fn mount_helper_options_are_accepted() {
    let b = Bucket::new("helper");
    b.put("f.txt", "helper");
    let m = Mount::new(
        &b.name,
        "helper",
        &[
            "-o",
            "ro,dev,suid,nodev,nosuid,rw,_netdev,noauto,nofail,x-systemd.automount,x-systemd.idle-timeout=60",
            "-o",
            "region=us-east-1,metadata_ttl=2s,cache-size=64MiB,file_mode=0640,dir_mode=750,uid=1234,gid=4321",
        ],
    );
    let meta = fs::metadata(m.path.join("f.txt")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (1234, 4321));
    assert_eq!(fs::metadata(&m.path).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(fs::read_to_string(m.path.join("f.txt")).unwrap(), "helper");
    let e = fs::write(m.path.join("g"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
}

/// A 6 GiB object (built server-side): its exact size in `stat` and in the listing, reads past
/// 4 GiB; then a rename, which must copy it in parts (one CopyObject stops at 5 GiB).
#[test]
fn multi_gib_object_has_its_exact_size_reads_past_4_gib_and_renames() {
    let b = Bucket::new("multi-gib");
    let part = pseudo_random(256 << 20, 9);
    b.put("part.bin", part.clone());
    // 24 server-side copies of a 256 MiB part: a 6 GiB object without sending 6 GiB.
    let parts = 24u64;
    b.multipart_copy("huge.bin", "part.bin", parts as i32);
    let m = Mount::new(&b.name, "multi-gib", &[]);
    let size = parts * part.len() as u64;
    let check = |name: &str| {
        let path = m.path.join(name);
        assert_eq!(fs::metadata(&path).unwrap().len(), size, "{name}");
        let listed = fs::read_dir(&m.path)
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == name)
            .unwrap();
        assert_eq!(listed.metadata().unwrap().len(), size, "{name}");
        let file = fs::File::open(&path).unwrap();
        for offset in [
            (4u64 << 30) + 12345,
            size - 4096,
            (1u64 << 32) - 10,
            (5 << 30) + 7,
        ] {
            let mut buf = vec![0; 4096];
            let n = file.read_at(&mut buf, offset).unwrap();
            let within = (offset % part.len() as u64) as usize;
            let take = n.min(part.len() - within);
            assert_eq!(
                &buf[..take],
                &part[within..within + take],
                "{name} at offset {offset}"
            );
        }
    };
    check("huge.bin");
    fs::rename(m.path.join("huge.bin"), m.path.join("moved.bin")).unwrap();
    assert!(b.head("huge.bin").is_none(), "the old name is left");
    assert_eq!(b.size("moved.bin"), Some(size));
    let (etag, _) = b.head("moved.bin").unwrap();
    assert!(
        etag.contains('-'),
        "copied whole, not in parts: ETag {etag}"
    );
    check("moved.bin");
}
