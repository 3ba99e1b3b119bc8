//! Files open for writing meeting rename, unlink and attribute changes, as shells, editors
//! and lock-file code do them, checked through S3 (SeaweedFS; moto where headers matter).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::{eventually, proxy, pseudo_random, sh, sha256, within, Bucket, Mount};

/// `open("new", O_CREAT|O_WRONLY); rename("new", "renamed")`: the rename succeeds, and the
/// object ends under the new name only, with what was written after (or empty).
#[test]
fn a_new_file_renamed_while_open_and_unwritten_ends_under_the_new_name() {
    let b = Bucket::new("wr-rename-new");
    let m = Mount::new(&b.name, "wr-rename-new", &[]);
    let p = |n: &str| m.path.join(n);

    let mut f = fs::File::create(p("new")).unwrap();
    fs::rename(p("new"), p("renamed")).unwrap();
    assert!(fs::metadata(p("new")).is_err());
    assert_eq!(fs::metadata(p("renamed")).unwrap().len(), 0);
    f.write_all(b"after the rename").unwrap();
    drop(f);
    assert_eq!(b.get("renamed"), b"after the rename");
    assert!(b.head("new").is_none(), "the old name was published");

    // Left empty: published empty under the new name at the last close.
    let f = fs::File::create(p("lock.tmp")).unwrap();
    fs::rename(p("lock.tmp"), p("lock")).unwrap();
    drop(f);
    assert!(eventually(Duration::from_secs(10), || b
        .head("lock")
        .is_some()));
    assert_eq!(b.get("lock"), b"");
    assert!(b.head("lock.tmp").is_none());

    // The shell's way: `exec 3>tmp; mv tmp f; echo >&3`.
    sh(&format!(
        "cd {}; exec 3>tmp; mv tmp f; echo shell >&3; exec 3>&-",
        m.path.display()
    ));
    assert_eq!(b.get("f"), b"shell\n");
    assert!(b.head("tmp").is_none());
    let mut keys = b.keys();
    keys.sort();
    assert_eq!(keys, ["f", "lock", "renamed"]);
}

/// A file renamed twice while open, with bytes written between: one object, under the last
/// name, with every byte.
#[test]
fn a_file_renamed_twice_while_written_ends_under_the_last_name() {
    let b = Bucket::new("wr-rename-twice");
    b.put("existing", "old bytes");
    let m = Mount::new(&b.name, "wr-rename-twice", &[]);
    let p = |n: &str| m.path.join(n);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(p("existing"))
        .unwrap();
    f.write_all(b" one").unwrap();
    fs::rename(p("existing"), p("second")).unwrap();
    f.write_all(b" two").unwrap();
    fs::rename(p("second"), p("third")).unwrap();
    f.write_all(b" three").unwrap();
    drop(f);
    assert_eq!(b.get("third"), b"old bytes one two three");
    assert_eq!(b.keys(), ["third"]);
    assert_eq!(fs::read(p("third")).unwrap(), b"old bytes one two three");
}

/// chmod and rename of a file whose 200 MiB commit crawls through a 4 Mbit/s link return at
/// once instead of waiting for the upload, and the object lands with its bytes, mode and name.
/// (The bytes are written first, last byte first so that they are staged; the commit is the
/// close. The kernel itself holds a file's lock during write(2) and fsync(2), not close(2).)
#[test]
fn chmod_and_rename_during_a_slow_commit_do_not_wait_for_it() {
    use std::os::unix::fs::FileExt;

    let b = Bucket::new("wr-slow-commit");
    let px = proxy();
    let m = Mount::new(&b.name, "wr-slow-commit", &["--endpoint-url", &px.endpoint]);
    let data = pseudo_random(200 << 20, 41);
    let dst = m.path.join("big.bin");
    let f = fs::File::create(&dst).unwrap();
    f.write_all_at(&data[data.len() - 1..], data.len() as u64 - 1)
        .unwrap();
    f.write_all_at(&data[..data.len() - 1], 0).unwrap();
    px.throttle(500_000);
    let before = px.counts().total();
    let close = std::thread::spawn(move || drop(f));
    // Let the commit get going under the throttle.
    assert!(eventually(Duration::from_secs(30), || px.counts().total() > before));
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o600)).unwrap();
    let chmod = started.elapsed();
    let started = Instant::now();
    let moved = m.path.join("moved.bin");
    fs::rename(&dst, &moved).unwrap();
    let rename = started.elapsed();
    assert_eq!(fs::metadata(&moved).unwrap().mode() & 0o7777, 0o600);
    assert!(
        !close.is_finished(),
        "the commit ended before the test could race it"
    );
    px.throttle(0);
    within(Duration::from_secs(600), "the slow commit", move || {
        close.join().unwrap()
    });
    assert!(
        chmod < Duration::from_secs(1) && rename < Duration::from_secs(1),
        "chmod took {chmod:?} and rename {rename:?} behind the commit"
    );
    assert!(eventually(Duration::from_secs(60), || b
        .head("big.bin")
        .is_none()
        && b.head("moved.bin").is_some()));
    assert_eq!(sha256(&b.get("moved.bin")), sha256(&data));
    assert_eq!(
        b.header("moved.bin", "mode").unwrap(),
        (0o100600).to_string()
    );
    assert_eq!(b.multipart_uploads(), 0);
}

/// `rm` of a file whose close is committing it through a crawling proxy returns at once; the
/// other handle still reads every byte, and the object goes at the last close.
#[test]
fn unlink_during_a_slow_commit_does_not_wait_for_it() {
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    let b = Bucket::new("wr-unlink-commit");
    let px = proxy();
    let m = Mount::new(
        &b.name,
        "wr-unlink-commit",
        &["--endpoint-url", &px.endpoint],
    );
    let data = pseudo_random(32 << 20, 43);
    let dst = m.path.join("big.bin");
    let f = fs::File::create(&dst).unwrap();
    f.write_all_at(&data[data.len() - 1..], data.len() as u64 - 1)
        .unwrap();
    f.write_all_at(&data[..data.len() - 1], 0).unwrap();
    let mut reader = fs::File::open(&dst).unwrap();
    px.throttle(500_000);
    let before = px.counts().total();
    let close = std::thread::spawn(move || drop(f));
    assert!(eventually(Duration::from_secs(30), || px.counts().total() > before));
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    fs::remove_file(&dst).unwrap();
    let unlink = started.elapsed();
    let raced = !close.is_finished();
    px.throttle(0);
    assert!(
        unlink < Duration::from_secs(1),
        "unlink took {unlink:?} behind the commit"
    );
    assert!(raced, "the commit ended before the test could race it");
    assert!(fs::metadata(&dst).is_err(), "the name is still there");
    within(Duration::from_secs(300), "the slow commit", move || {
        close.join().unwrap()
    });
    assert!(
        fs::metadata(&dst).is_err(),
        "the commit brought the name back"
    );
    let mut read = Vec::new();
    reader.read_to_end(&mut read).unwrap();
    assert!(
        read == data,
        "the open handle lost the bytes: {} of {}, first difference at {:?}",
        read.len(),
        data.len(),
        read.iter().zip(&data).position(|(a, b)| a != b)
    );
    assert_eq!(b.keys(), ["big.bin"], "deleted before the last close");
    drop(reader);
    assert!(
        eventually(Duration::from_secs(30), || b.keys().is_empty()),
        "left in the bucket after the last close: {:?}",
        b.keys()
    );
    assert_eq!(b.multipart_uploads(), 0);
}

/// `touch -a`, `touch -m` and `touch -d` each move exactly the times POSIX says (utimensat:
/// the named times, and ctime), checked after a remount with no metadata cache.
#[test]
fn touch_moves_exactly_the_times_asked() {
    let moto = common::moto::Moto::start();
    let bucket = "touch";
    moto.create_bucket(bucket);
    let mount = || {
        Mount::new(
            bucket,
            "wr-touch",
            &["--endpoint-url", &moto.endpoint, "--metadata-ttl", "0"],
        )
    };
    let m = mount();
    let f = m.path.join("f");
    fs::write(&f, "x").unwrap();
    let set = |args: &str| sh(&format!("touch {args} {}", f.display()));
    let times = || {
        let md = fs::metadata(&f).unwrap();
        (md.atime(), md.mtime())
    };
    set("-d '2001-02-03 04:05:06'");
    let base = times();
    set("-a -d '2011-01-01 00:00:00'");
    let after_a = times();
    assert_ne!(after_a.0, base.0, "touch -a moves atime");
    assert_eq!(after_a.1, base.1, "touch -a keeps mtime");
    set("-m -d '2012-01-01 00:00:00'");
    let after_m = times();
    assert_eq!(after_m.0, after_a.0, "touch -m keeps atime");
    assert_ne!(after_m.1, after_a.1, "touch -m moves mtime");
    let before = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    set("-a");
    let now_a = times();
    assert!(now_a.0 >= before, "touch -a (now) sets atime to now");
    assert_eq!(now_a.1, after_m.1, "touch -a (now) keeps mtime");
    drop(m);
    let m = mount();
    let f = m.path.join("f");
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.atime(), md.mtime()), now_a, "after a remount");
}

/// chmod, rename, and a utime of a file open for writing copy the object with new metadata:
/// its Cache-Control, Content-Disposition, Content-Encoding, Content-Language, Expires and
/// storage class (which a REPLACE copy drops, or resets to STANDARD) stay (moto).
#[test]
fn changing_attributes_keeps_the_objects_other_headers() {
    use aws_sdk_s3::types::StorageClass;

    let moto = common::moto::Moto::start();
    let bucket = "stdheaders";
    moto.create_bucket(bucket);
    let s3 = &moto.client;
    let expires = aws_sdk_s3::primitives::DateTime::from_secs(4_102_444_800); // 2100-01-01
    for key in ["a.js", "b.js"] {
        let put = s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(b"console.log(1)".to_vec().into())
            .content_type("text/javascript")
            .cache_control("max-age=600")
            .content_disposition("inline")
            .content_encoding("identity")
            .content_language("en")
            .expires(expires)
            .storage_class(StorageClass::StandardIa)
            .metadata("other-tool", "kept");
        moto.rt.block_on(put.send()).unwrap();
    }
    let m = Mount::new(bucket, "wr-stdheaders", &["--endpoint-url", &moto.endpoint]);
    sh(&format!("ls -l {} > /dev/null", m.path.display()));
    fs::set_permissions(m.path.join("a.js"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::rename(m.path.join("a.js"), m.path.join("c.js")).unwrap();
    // Open for writing, nothing written, a utime: committed as a copy at the close.
    let f = fs::OpenOptions::new()
        .append(true)
        .open(m.path.join("b.js"))
        .unwrap();
    sh(&format!(
        "touch -m -d '2011-01-01' {}",
        m.path.join("b.js").display()
    ));
    drop(f);
    for (key, mode) in [("c.js", 0o100640), ("b.js", 0o100644)] {
        let head = moto
            .rt
            .block_on(s3.head_object().bucket(bucket).key(key).send())
            .unwrap();
        let meta = head.metadata().cloned().unwrap_or_default();
        assert_eq!(meta.get("mode"), Some(&mode.to_string()), "{key}: {meta:?}");
        assert_eq!(
            meta.get("other-tool").map(String::as_str),
            Some("kept"),
            "{key}"
        );
        assert_eq!(head.content_type(), Some("text/javascript"), "{key}");
        assert_eq!(head.cache_control(), Some("max-age=600"), "{key}");
        assert_eq!(head.content_disposition(), Some("inline"), "{key}");
        assert_eq!(head.content_encoding(), Some("identity"), "{key}");
        assert_eq!(head.content_language(), Some("en"), "{key}");
        assert_eq!(
            head.storage_class(),
            Some(&StorageClass::StandardIa),
            "{key}"
        );
        assert!(
            head.expires_string().is_some_and(|e| e.contains("2100")),
            "{key}: expires {:?}",
            head.expires_string()
        );
    }
}

/// chmod of a directory marker that another tool wrote, found through a listing, copies the
/// marker (its other headers and its tags stay); rmdir of a legacy `name` directory object
/// removes it.
#[test]
fn directory_objects_of_other_tools_keep_their_headers_and_go_with_rmdir() {
    let moto = common::moto::Moto::start();
    let bucket = "dirobjs";
    moto.create_bucket(bucket);
    let s3 = &moto.client;
    let put = |key: &str, ctype: &str, meta: &[(&str, &str)]| {
        let mut call = s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(ctype)
            .tagging("made-by=tool")
            .body(Vec::new().into());
        for (k, v) in meta {
            call = call.metadata(*k, *v);
        }
        moto.rt.block_on(call.send()).unwrap();
    };
    put(
        "tool/",
        "application/x-directory",
        &[("owner-tool", "kept")],
    );
    put("tool/inside", "text/plain", &[]);
    put("legacy", "application/x-directory", &[]);
    let m = Mount::new(bucket, "wr-dirobjs", &["--endpoint-url", &moto.endpoint]);
    sh(&format!("ls -l {} > /dev/null", m.path.display()));
    fs::set_permissions(m.path.join("tool"), fs::Permissions::from_mode(0o751)).unwrap();
    let head = moto
        .rt
        .block_on(s3.head_object().bucket(bucket).key("tool/").send())
        .unwrap();
    let meta = head.metadata().cloned().unwrap_or_default();
    assert_eq!(meta.get("mode"), Some(&(0o40751).to_string()), "{meta:?}");
    assert_eq!(
        meta.get("owner-tool").map(String::as_str),
        Some("kept"),
        "{meta:?}"
    );
    // Copied, not written anew: the marker's tags are still there.
    let tags = moto
        .rt
        .block_on(s3.get_object_tagging().bucket(bucket).key("tool/").send())
        .unwrap();
    let tags: Vec<_> = tags
        .tag_set()
        .iter()
        .map(|t| format!("{}={}", t.key(), t.value()))
        .collect();
    assert_eq!(tags, ["made-by=tool"]);

    let legacy = m.path.join("legacy");
    assert!(fs::metadata(&legacy).unwrap().is_dir());
    fs::set_permissions(&legacy, fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_dir(&legacy).unwrap();
    for key in ["legacy", "legacy/"] {
        assert!(
            moto.metadata(bucket, key).is_none(),
            "{key} is still in the bucket"
        );
    }
    assert!(fs::metadata(&legacy).is_err());
}

/// An open that empties a file and streams new bytes into it while its rename is copying
/// the object (the server stalled mid-rename): the bytes land under the new name only, and
/// the old name does not come back.
#[test]
fn a_stream_begun_during_a_rename_lands_under_the_new_name() {
    use std::os::unix::fs::FileExt;

    let b = Bucket::new("wr-rename-stream");
    b.put("doc", pseudo_random(4 << 20, 43));
    let px = proxy();
    let m = Mount::new(
        &b.name,
        "wr-rename-stream",
        &["--endpoint-url", &px.endpoint],
    );
    let data = pseudo_random(1 << 20, 44);
    let (from, to) = (m.path.join("doc"), m.path.join("doc2"));
    // A handle open for writing: the rename moves a file that has a writer.
    let f = fs::OpenOptions::new().write(true).open(&from).unwrap();
    px.stall();
    let rename = std::thread::spawn(move || fs::rename(from, to));
    std::thread::sleep(Duration::from_secs(1));
    // An O_TRUNC open through /proc (no lookup in the directory the rename holds, and no
    // lock on the file, unlike truncate and write): a new stream, no request yet; its write
    // then waits for the rename.
    let writer = {
        use std::os::fd::AsRawFd;
        let data = data.clone();
        let path = format!("/proc/self/fd/{}", f.as_raw_fd());
        std::thread::spawn(move || {
            let t = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .unwrap();
            t.write_all_at(&data, 0).unwrap();
            drop(f);
            t
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    px.resume();
    within(Duration::from_secs(60), "the rename", move || {
        rename.join().unwrap()
    })
    .unwrap();
    drop(writer.join().unwrap());
    assert_eq!(b.keys(), ["doc2"]);
    assert_eq!(sha256(&b.get("doc2")), sha256(&data));
}

/// `rm` of a 1 GiB object held open by a reader returns at once with no GET of it; the reader
/// reads the old bytes to EOF; the object goes at the last close.
#[test]
fn unlinking_a_file_open_for_reading_downloads_nothing_and_deletes_at_the_last_close() {
    use std::io::Read;

    let b = Bucket::new("wr-unlink-read");
    let data = pseudo_random(1 << 30, 45);
    b.put("big.bin", data.clone());
    b.put("other", "stays");
    let px = proxy();
    let m = Mount::new(&b.name, "wr-unlink-read", &["--endpoint-url", &px.endpoint]);
    let path = m.path.join("big.bin");
    let (mut f, mut got) = open_and_settle(&path, &px);
    let gets_now = || gets_through(&px);
    let gets = gets_now();
    let started = Instant::now();
    fs::remove_file(&path).unwrap();
    let took = started.elapsed();
    let gets_by_rm = gets_now() - gets;
    assert!(took < Duration::from_millis(500), "rm took {took:?}");
    assert_eq!(gets_by_rm, 0, "rm read the object");
    assert_eq!(
        fs::metadata(&path).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    let listed: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, ["other"]);
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    f.read_to_end(&mut got).unwrap();
    assert_eq!(sha256(&got), sha256(&data), "the reader read the old bytes");
    assert!(b.head("big.bin").is_some(), "deleted before the last close");
    drop(f);
    assert!(eventually(Duration::from_secs(10), || b
        .head("big.bin")
        .is_none()));
    assert_eq!(b.get("other"), b"stays");
}

/// GETs sent through `px` so far.
fn gets_through(px: &common::proxy::Proxy) -> u64 {
    px.counts().get.load(std::sync::atomic::Ordering::SeqCst)
}

/// Opens `path` for reading and reads its first MiB; returns once the read-ahead it started
/// has settled (no GET through `px` for 0.7 s).
fn open_and_settle(path: &Path, px: &common::proxy::Proxy) -> (fs::File, Vec<u8>) {
    use std::io::Read;

    let mut f = fs::File::open(path).unwrap();
    let mut got = vec![0u8; 1 << 20];
    f.read_exact(&mut got).unwrap();
    let mut gets = gets_through(px);
    loop {
        std::thread::sleep(Duration::from_millis(700));
        if gets_through(px) == gets {
            return (f, got);
        }
        gets = gets_through(px);
    }
}

/// A rename over a file that only a reader holds sets the reader's version aside on the
/// server instead of downloading it: the reader reads the old bytes to EOF, the name holds
/// the new file, and the copy goes at the last close.
#[test]
fn renaming_over_a_file_open_for_reading_downloads_nothing() {
    use std::io::Read;

    let b = Bucket::new("wr-rename-over-read");
    let old = pseudo_random(256 << 20, 46);
    b.put("doc.bin", old.clone());
    b.put("doc.tmp", "the new version");
    let px = proxy();
    let m = Mount::new(
        &b.name,
        "wr-rename-over-read",
        &["--endpoint-url", &px.endpoint],
    );
    let path = m.path.join("doc.bin");
    let (mut f, mut got) = open_and_settle(&path, &px);
    let gets_now = || gets_through(&px);
    let gets = gets_now();
    fs::rename(m.path.join("doc.tmp"), &path).unwrap();
    assert_eq!(gets_now() - gets, 0, "the rename read the replaced file");
    assert_eq!(fs::read(&path).unwrap(), b"the new version");
    let listed: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, ["doc.bin"], "the copy set aside is not shown");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    f.read_to_end(&mut got).unwrap();
    assert_eq!(sha256(&got), sha256(&old), "the reader read the old bytes");
    assert_eq!(b.get("doc.bin"), b"the new version");
    let kept: Vec<_> = b.keys().into_iter().filter(|k| k != "doc.bin").collect();
    assert_eq!(kept.len(), 1, "one copy set aside: {kept:?}");
    assert!(kept[0].starts_with(".bucketfs-kept-"), "{kept:?}");
    drop(f);
    assert!(
        eventually(Duration::from_secs(10), || b.keys() == ["doc.bin"]),
        "left in the bucket: {:?}",
        b.keys()
    );
}

/// A daemon killed between the unlink and the last close deletes what it owed at its next
/// start; a version written under the name since is left alone.
#[test]
fn a_delete_owed_at_the_last_close_survives_a_kill() {
    let b = Bucket::new("wr-unlink-kill");
    b.put("gone", "old");
    b.put("rewritten", "old");
    let mount = || Mount::new(&b.name, "wr-unlink-kill", &[]);
    let m = mount();
    let f = fs::File::open(m.path.join("gone")).unwrap();
    let g = fs::File::open(m.path.join("rewritten")).unwrap();
    fs::remove_file(m.path.join("gone")).unwrap();
    fs::remove_file(m.path.join("rewritten")).unwrap();
    b.put("rewritten", "new");
    let pid = m.daemon_pid().unwrap();
    sh(&format!("kill -9 {pid}"));
    assert!(common::wait_gone(pid, Duration::from_secs(10)));
    drop((f, g));
    drop(m);
    assert!(b.head("gone").is_some());
    let _m = mount();
    assert!(eventually(Duration::from_secs(10), || b
        .head("gone")
        .is_none()));
    assert_eq!(b.get("rewritten"), b"new");
}

/// One worker process of the exerciser below: its own descriptor of the file, driven over
/// stdin (`w OFF LEN` + bytes, `r OFF LEN`, `t SIZE`, `s`, `f`, `c`), answering on stdout.
const FSX_WORKER: &str = r#"
import os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR)
inp, out = sys.stdin.buffer, sys.stdout.buffer
def exactly(n):
    b = bytearray()
    while len(b) < n:
        c = inp.read(n - len(b))
        if not c:
            sys.exit(1)
        b += c
    return bytes(b)
while True:
    words = inp.readline().split()
    if not words:
        break
    op, args = words[0], [int(w) for w in words[1:]]
    try:
        if op == b"w":
            data = exactly(args[1])
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], args[0] + done)
            out.write(b"ok\n")
        elif op == b"r":
            data = b""
            while len(data) < args[1]:
                chunk = os.pread(fd, args[1] - len(data), args[0] + len(data))
                if not chunk:
                    break
                data += chunk
            out.write(b"%d\n" % len(data) + data)
        elif op == b"t":
            os.ftruncate(fd, args[0])
            out.write(b"ok\n")
        elif op == b"s":
            out.write(b"%d\n" % os.fstat(fd).st_size)
        elif op == b"f":
            os.fsync(fd)
            out.write(b"ok\n")
        elif op == b"c":
            os.close(fd)
            fd = os.open(path, os.O_RDWR)
            out.write(b"ok\n")
    except OSError as e:
        out.write(b"err %s\n" % str(e).encode())
    out.flush()
"#;

struct FsxWorker {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl FsxWorker {
    fn start(path: &std::path::Path) -> Self {
        use std::process::{Command, Stdio};
        let mut child = Command::new("python3")
            .args(["-c", FSX_WORKER])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (tests/setup.sh installs it)");
        let input = child.stdin.take().unwrap();
        let output = std::io::BufReader::new(child.stdout.take().unwrap());
        FsxWorker {
            child,
            input,
            output,
        }
    }

    /// Sends one request and returns the answer's first line.
    fn ask(&mut self, request: &str, body: &[u8]) -> String {
        use std::io::BufRead;
        self.input.write_all(request.as_bytes()).unwrap();
        self.input.write_all(body).unwrap();
        self.input.flush().unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    fn read_body(&mut self, len: usize) -> Vec<u8> {
        use std::io::Read;
        let mut data = vec![0; len];
        self.output.read_exact(&mut data).unwrap();
        data
    }
}

impl Drop for FsxWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fsx-style: two processes, each with its own descriptor of one file, take turns at 2,000
/// random operations each (pwrite, pread, ftruncate, fstat, and one in a hundred an fsync or
/// a close and reopen, each a commit) on a
/// file of up to 32 MiB. Every read and size is checked against a model of the file, and so
/// is the object in the bucket at the end.
#[test]
fn two_processes_doing_random_operations_agree_with_a_model() {
    const MAX: u64 = 32 << 20;
    const MAX_IO: u64 = 256 << 10;
    let b = Bucket::new("wr-fsx");
    let m = Mount::new(&b.name, "wr-fsx", &[]);
    let path = m.path.join("fsx");
    fs::write(&path, b"").unwrap();
    let mut workers = [FsxWorker::start(&path), FsxWorker::start(&path)];
    let mut model: Vec<u8> = Vec::new();
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut state = seed;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below.max(1)
    };
    let mut log: Vec<String> = Vec::new();
    for step in 0..4000 {
        let who = next(2) as usize;
        let w = &mut workers[who];
        let pick = next(100);
        let size = model.len() as u64;
        let what = if pick < 40 {
            let len = 1 + next(MAX_IO);
            let off = next(MAX - len + 1);
            let data = pseudo_random(len as usize, step);
            let answer = w.ask(&format!("w {off} {len}\n"), &data);
            let end = (off + len) as usize;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
            (format!("pwrite {off} {len}"), answer, "ok".to_string())
        } else if pick < 75 {
            let len = 1 + next(MAX_IO);
            let off = next(size + MAX_IO);
            let answer = w.ask(&format!("r {off} {len}\n"), b"");
            let got = answer.parse::<usize>().map(|n| w.read_body(n));
            let start = (off as usize).min(model.len());
            let end = ((off + len) as usize).min(model.len());
            let expected = &model[start..end];
            let same = got.as_ref().map(|g| g == expected).unwrap_or(false);
            let first_diff = got.as_ref().ok().and_then(|g| {
                g.iter()
                    .zip(expected)
                    .position(|(a, b)| a != b)
                    .map(|i| off as usize + i)
            });
            (
                format!("pread {off} {len}"),
                format!("{answer} bytes, same: {same}, first difference at {first_diff:?}"),
                format!(
                    "{} bytes, same: true, first difference at None",
                    expected.len()
                ),
            )
        } else if pick < 87 {
            let new_size = if next(8) == 0 { 0 } else { next(MAX + 1) };
            let answer = w.ask(&format!("t {new_size}\n"), b"");
            model.resize(new_size as usize, 0);
            (format!("ftruncate {new_size}"), answer, "ok".to_string())
        } else if pick < 98 {
            let answer = w.ask("s\n", b"");
            ("fstat".to_string(), answer, size.to_string())
        } else if next(2) == 0 {
            ("fsync".to_string(), w.ask("f\n", b""), "ok".to_string())
        } else {
            (
                "close, open".to_string(),
                w.ask("c\n", b""),
                "ok".to_string(),
            )
        };
        let (op, answer, expected) = what;
        log.push(format!("{step}: worker {who} {op} -> {answer}"));
        if answer != expected {
            let start = log.len().saturating_sub(30);
            panic!(
                "seed {seed}: step {step}, worker {who}: {op} answered {answer:?}, the model says \
                 {expected:?}; the last operations:\n{}",
                log[start..].join("\n")
            );
        }
    }
    drop(workers);
    assert_eq!(fs::metadata(&path).unwrap().len(), model.len() as u64);
    let stored = b.get("fsx");
    assert_eq!(stored.len(), model.len(), "seed {seed}: the object's size");
    assert!(
        stored == model,
        "seed {seed}: the object's bytes differ from the model"
    );
}
