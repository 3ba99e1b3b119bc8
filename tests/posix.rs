//! A mount behaves like a local filesystem: special files, times, names, and what this mount
//! wrote winning over a server that forgot it. Real mounts against SeaweedFS on 127.0.0.1.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{sh, Bucket, Mount};

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode()
}

/// Binds a Unix socket at `path` (the way a server creates one) and closes it.
fn bind_socket(path: &Path) {
    std::os::unix::net::UnixListener::bind(path).expect("bind a unix socket in the mount");
}

fn makedev(major: u64, minor: u64) -> u64 {
    libc::makedev(major as u32, minor as u32)
}

/// What `ls -l` and `stat` show of the special files, as (name, type letter, rdev).
fn listed_types(dir: &Path) -> Vec<(String, char, u64)> {
    let mut out: Vec<(String, char, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let letter = if t.is_fifo() {
                'p'
            } else if t.is_socket() {
                's'
            } else if t.is_char_device() {
                'c'
            } else if t.is_block_device() {
                'b'
            } else if t.is_dir() {
                'd'
            } else if t.is_symlink() {
                'l'
            } else {
                '-'
            };
            let rdev = fs::symlink_metadata(e.path()).unwrap().rdev();
            (e.file_name().into_string().unwrap(), letter, rdev)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn special_files_are_created_listed_changed_renamed_removed_and_survive_a_remount() {
    let b = Bucket::new("px-special");
    let mount = || Mount::new(&b.name, "px-special", &[]);
    let m = mount();
    let p = |n: &str| m.path.join(n);
    fs::create_dir(p("dev")).unwrap();
    sh(&format!(
        "cd {}; mkfifo -m 0640 fifo; mknod chr c 1 3; mknod blk b 8 1",
        p("dev").display()
    ));
    bind_socket(&p("dev/sock"));
    fs::write(p("dev/plain"), "").unwrap();

    let want = vec![
        ("blk".to_string(), 'b', makedev(8, 1)),
        ("chr".to_string(), 'c', makedev(1, 3)),
        ("fifo".to_string(), 'p', 0),
        ("plain".to_string(), '-', 0),
        ("sock".to_string(), 's', 0),
    ];
    assert_eq!(listed_types(&p("dev")), want);
    assert_eq!(mode_of(&p("dev/fifo")), libc::S_IFIFO | 0o640);

    // What another S3 client (and s3fs) reads: empty objects whose mode carries the type.
    assert_eq!(b.size("dev/fifo"), Some(0));
    assert_eq!(
        b.header("dev/fifo", "mode"),
        Some((libc::S_IFIFO | 0o640).to_string())
    );
    assert_eq!(b.header("dev/chr", "rdev"), Some(makedev(1, 3).to_string()));
    assert_eq!(
        b.header("dev/sock", "mode")
            .map(|m| m.parse::<u32>().unwrap() & libc::S_IFMT),
        Some(libc::S_IFSOCK)
    );

    // chmod, chown and rename keep the type.
    fs::set_permissions(p("dev/fifo"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(p("dev/chr"), Some(1234), Some(4321)).unwrap();
    fs::rename(p("dev/blk"), p("dev/blk2")).unwrap();
    assert_eq!(mode_of(&p("dev/fifo")), libc::S_IFIFO | 0o600);
    let chr = fs::symlink_metadata(p("dev/chr")).unwrap();
    assert_eq!(
        (chr.uid(), chr.gid(), chr.rdev()),
        (1234, 4321, makedev(1, 3))
    );
    assert!(fs::symlink_metadata(p("dev/blk2"))
        .unwrap()
        .file_type()
        .is_block_device());
    assert_eq!(
        b.header("dev/blk2", "rdev"),
        Some(makedev(8, 1).to_string())
    );
    assert!(b.head("dev/blk").is_none(), "the old name is gone");

    // A FIFO in the mount works as a FIFO: the kernel carries the bytes.
    let fifo = p("dev/fifo");
    let writer = std::thread::spawn(move || fs::write(fifo, "through the pipe").unwrap());
    assert_eq!(
        fs::read_to_string(p("dev/fifo")).unwrap(),
        "through the pipe"
    );
    writer.join().unwrap();

    // After a remount, a listing (ls -l) and a stat show the same types.
    drop(m);
    let m = mount();
    let p = |n: &str| m.path.join(n);
    let want = vec![
        ("blk2".to_string(), 'b', makedev(8, 1)),
        ("chr".to_string(), 'c', makedev(1, 3)),
        ("fifo".to_string(), 'p', 0),
        ("plain".to_string(), '-', 0),
        ("sock".to_string(), 's', 0),
    ];
    assert_eq!(listed_types(&p("dev")), want);
    let ls = sh(&format!("ls -l {}", p("dev").display()));
    assert!(ls.contains("prw-------"), "{ls}");
    assert!(ls.contains("crw-r--r--"), "{ls}");
    assert!(ls.contains("srwx"), "{ls}");

    for name in ["blk2", "chr", "fifo", "plain", "sock"] {
        fs::remove_file(p(&format!("dev/{name}"))).unwrap();
    }
    assert_eq!(listed_types(&p("dev")), vec![]);
    assert_eq!(b.keys_under("dev/"), vec!["dev/".to_string()]);
}

#[test]
fn names_too_long_for_linux_or_s3_give_enametoolong() {
    let b = Bucket::new("px-names");
    let m = Mount::new(&b.name, "px-names", &[]);
    let long = m.path.join("n".repeat(256));
    for result in [
        fs::write(&long, "x").map(|_| ()),
        fs::create_dir(&long),
        fs::metadata(&long).map(|_| ()),
        std::os::unix::fs::symlink("t", &long),
    ] {
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
    }
    // 255 bytes is a name; nested names make a key over S3's 1,024 bytes (968 bytes here,
    // plus a name of 100).
    let mut deep = m.path.clone();
    for len in [255, 255, 255, 200] {
        deep = deep.join("m".repeat(len));
        fs::create_dir(&deep).unwrap();
    }
    let too_deep = deep.join("x".repeat(100));
    for result in [
        fs::write(&too_deep, "x").map(|_| ()),
        fs::create_dir(&too_deep),
    ] {
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
    }
    fs::write(deep.join("short"), "fits").unwrap();
    assert_eq!(fs::read_to_string(deep.join("short")).unwrap(), "fits");
}

fn times(p: &Path) -> (SystemTime, SystemTime, SystemTime) {
    let m = fs::symlink_metadata(p).unwrap();
    let at = |s: i64, ns: i64| {
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64);
        if s >= 0 {
            t + Duration::from_secs(s as u64)
        } else {
            t - Duration::from_secs(s.unsigned_abs())
        }
    };
    (
        at(m.atime(), m.atime_nsec()),
        at(m.mtime(), m.mtime_nsec()),
        at(m.ctime(), m.ctime_nsec()),
    )
}

/// Times move the way they do on a local disk (all within one mount).
#[test]
fn atime_mtime_and_ctime_follow_posix() {
    let b = Bucket::new("px-times");
    let m = Mount::new(&b.name, "px-times", &[]);
    let p = |n: &str| m.path.join(n);
    fs::create_dir(p("d")).unwrap();
    fs::write(p("d/f"), "one").unwrap();
    let pause = || std::thread::sleep(Duration::from_millis(1100));

    // utimensat sets atime and mtime independently, and both are stored.
    sh(&format!(
        "touch -a -d '2001-02-03 04:05:06' {0}; touch -m -d '2011-12-13 14:15:16' {0}",
        p("d/f").display()
    ));
    let (atime, mtime, _) = times(&p("d/f"));
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        sh(&format!("date -d @{} -u +%Y", secs(atime))).trim(),
        "2001"
    );
    assert_eq!(
        sh(&format!("date -d @{} -u +%Y", secs(mtime))).trim(),
        "2011"
    );
    assert_eq!(
        b.header("d/f", "atime")
            .map(|v| v.split('.').next().unwrap().to_string()),
        Some(secs(atime).to_string())
    );

    // Times before the epoch are kept too (utimensat allows them).
    sh(&format!(
        "touch -m -d '1960-06-07 08:09:10 UTC' {}",
        p("d/f").display()
    ));
    let old = times(&p("d/f")).1;
    assert!(old < SystemTime::UNIX_EPOCH, "{old:?}");
    assert!(b.header("d/f", "mtime").is_some_and(|v| v.starts_with('-')));
    sh(&format!(
        "touch -m -d '2011-12-13 14:15:16' {}",
        p("d/f").display()
    ));

    // chmod, chown and rename move ctime only.
    let changes: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| fs::set_permissions(p("d/f"), fs::Permissions::from_mode(0o600)).unwrap()),
        Box::new(|| std::os::unix::fs::chown(p("d/f"), Some(7), Some(7)).unwrap()),
        Box::new(|| {
            fs::rename(p("d/f"), p("d/g")).unwrap();
            fs::rename(p("d/g"), p("d/f")).unwrap();
        }),
    ];
    for change in changes {
        let before = times(&p("d/f"));
        pause();
        change();
        let after = times(&p("d/f"));
        assert_eq!(
            (after.0, after.1),
            (before.0, before.1),
            "atime, mtime kept"
        );
        assert!(after.2 > before.2, "ctime moves: {before:?} -> {after:?}");
    }

    // A write moves mtime and ctime, not atime.
    let before = times(&p("d/f"));
    pause();
    fs::write(p("d/f"), "two").unwrap();
    let after = times(&p("d/f"));
    assert_eq!(after.0, before.0, "a write leaves atime");
    assert!(after.1 > before.1 && after.2 > before.2);

    // Adding, renaming and removing entries move the directory's mtime and ctime.
    let changes: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| fs::write(p("d/new"), "n").unwrap()),
        Box::new(|| fs::rename(p("d/new"), p("d/renamed")).unwrap()),
        Box::new(|| fs::remove_file(p("d/renamed")).unwrap()),
        Box::new(|| fs::create_dir(p("d/sub")).unwrap()),
        Box::new(|| fs::remove_dir(p("d/sub")).unwrap()),
        Box::new(|| std::os::unix::fs::symlink("f", p("d/link")).unwrap()),
    ];
    for change in changes {
        let before = times(&p("d"));
        pause();
        change();
        let after = times(&p("d"));
        assert!(
            after.1 > before.1 && after.2 > before.2,
            "dir mtime and ctime move: {before:?} -> {after:?}"
        );
    }
}

/// SeaweedFS drops the headers of `dir/` markers: what this mount wrote still wins, also
/// after the metadata TTL sent it back to the server.
#[test]
fn a_directory_keeps_the_mode_and_owner_this_mount_gave_it() {
    let b = Bucket::new("px-dirmode");
    let m = Mount::new(&b.name, "px-dirmode", &["--metadata-ttl", "1s"]);
    let d = m.path.join("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(&d, Some(1234), Some(99)).unwrap();
    let check = || {
        let meta = fs::metadata(&d).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o711);
        assert_eq!((meta.uid(), meta.gid()), (1234, 99));
    };
    check();
    std::thread::sleep(Duration::from_secs(2));
    check();
    // A lookup from the parent's listing shows the same.
    let listed = sh(&format!("ls -ln {}", m.path.display()));
    assert!(
        listed.contains("drwx--x--x") && listed.contains("1234"),
        "{listed}"
    );
    // And a directory made implicitly (keys below it, no marker) takes a chmod too.
    b.put("implicit/file", "x");
    std::thread::sleep(Duration::from_secs(2));
    let i = m.path.join("implicit");
    fs::set_permissions(&i, fs::Permissions::from_mode(0o700)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fs::metadata(&i).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(
        fs::read_dir(&m.path).unwrap().count(),
        2,
        "nothing else appeared"
    );
}

/// A file unlinked while open stays readable and writable through its descriptors until the
/// last close (`tail -f` of a rotated log, temp-file idioms), and nothing of it is uploaded;
/// a reader's object is deleted at its last close, never a new file made under the name.
#[test]
fn an_unlinked_open_file_lives_until_its_last_close() {
    use std::io::{Read, Seek, SeekFrom, Write};

    let b = Bucket::new("px-unlinked");
    let body = common::pseudo_random(3 << 20, 7);
    b.put("log", body.clone());
    let m = Mount::new(&b.name, "px-unlinked", &[]);
    let p = |n: &str| m.path.join(n);

    // A reader that has read only the start.
    let mut reader = fs::File::open(p("log")).unwrap();
    let mut head = [0u8; 10];
    reader.read_exact(&mut head).unwrap();
    fs::remove_file(p("log")).unwrap();
    // Only read: the object stays, hidden, until the last close (no download at unlink).
    assert!(
        b.head("log").is_some(),
        "the reader's object went at unlink"
    );
    assert!(fs::metadata(p("log")).is_err(), "the name is gone");
    let meta = reader.metadata().unwrap();
    assert_eq!((meta.len(), meta.nlink()), (body.len() as u64, 0));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!([&head[..], &rest[..]].concat(), body);

    // The name is free for a new file meanwhile, independent of the open one.
    fs::write(p("log"), "new file").unwrap();
    reader.seek(SeekFrom::Start(0)).unwrap();
    let mut again = vec![0u8; 100];
    reader.read_exact(&mut again).unwrap();
    assert_eq!(again, body[..100]);
    drop(reader);
    // The delete owed at the last close leaves the version written under the name since.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.get("log"), b"new file");

    // A temp file: created, unlinked, written and read back through its descriptor.
    let mut tmp = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p("tmp"))
        .unwrap();
    tmp.write_all(b"before unlink;").unwrap();
    fs::remove_file(p("tmp")).unwrap();
    tmp.write_all(b" after unlink").unwrap();
    tmp.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    tmp.read_to_string(&mut back).unwrap();
    assert_eq!(back, "before unlink; after unlink");
    assert_eq!(tmp.metadata().unwrap().nlink(), 0);
    tmp.sync_all().unwrap();
    drop(tmp);
    let names: Vec<String> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["log".to_string()]);
    assert_eq!(b.keys(), vec!["log".to_string()], "nothing of tmp uploaded");

    // Replaced by a rename while open: the reader keeps the old bytes, and a writer of the old
    // file does not overwrite the new one when it closes.
    fs::write(p("cfg"), &body).unwrap();
    let mut old_reader = fs::File::open(p("cfg")).unwrap();
    let mut start = [0u8; 10];
    old_reader.read_exact(&mut start).unwrap();
    let mut old_writer = fs::OpenOptions::new().write(true).open(p("cfg")).unwrap();
    fs::write(p("cfg.new"), "the new config").unwrap();
    fs::rename(p("cfg.new"), p("cfg")).unwrap();
    old_writer
        .write_all(b"late write to the replaced file")
        .unwrap();
    drop(old_writer);
    let mut rest = Vec::new();
    old_reader.read_to_end(&mut rest).unwrap();
    // Both descriptors are the old file: the reader sees the late write past what it read.
    let late = b"late write to the replaced file";
    let mut old_file = body.clone();
    old_file[..late.len()].copy_from_slice(late);
    assert_eq!(start[..], body[..10]);
    assert!(rest[..] == old_file[10..], "the old file's bytes, whole");
    drop(old_reader);
    assert_eq!(b.get("cfg"), b"the new config");
    assert_eq!(fs::read_to_string(p("cfg")).unwrap(), "the new config");
}

/// Reads and writes in any order on any descriptor, past several parts: as on a local disk.
#[test]
fn any_write_pattern_works_past_several_parts() {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::FileExt;

    let b = Bucket::new("px-patterns");
    let m = Mount::new(&b.name, "px-patterns", &[]);
    let p = |n: &str| m.path.join(n);
    let size = 40 << 20; // five 8 MiB parts
    let data = common::pseudo_random(size, 3);

    // O_RDWR|O_CREAT|O_TRUNC: write it all, go back, write and read anywhere.
    let mut expect = data.clone();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p("rw"))
        .unwrap();
    f.write_all(&data).unwrap();
    for (at, patch) in [
        (5usize << 20, b"patch one"),
        (123, b"patch two"),
        (size - 4, b"tail+ext!"),
    ] {
        f.write_all_at(patch, at as u64).unwrap();
        if expect.len() < at + patch.len() {
            expect.resize(at + patch.len(), 0);
        }
        expect[at..at + patch.len()].copy_from_slice(patch);
        let mut back = vec![0u8; patch.len()];
        f.read_exact_at(&mut back, at as u64).unwrap();
        assert_eq!(&back, patch);
    }
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert!(all == expect, "read back through the descriptor");
    drop(f);
    assert!(b.get("rw") == expect, "the object holds every write");

    // O_WRONLY streaming: parts leave while it writes, then it goes back to fix a header.
    let mut w = fs::File::create(p("wo")).unwrap();
    w.write_all(&data).unwrap();
    w.write_all_at(b"HEADER", 0).unwrap();
    w.write_all(b"trailer").unwrap();
    drop(w);
    let mut expect = data.clone();
    expect[..6].copy_from_slice(b"HEADER");
    expect.extend_from_slice(b"trailer");
    assert!(
        b.get("wo") == expect,
        "the header fix and the trailer both landed"
    );

    // A writer through a shared mapping (it must be O_RDWR).
    sh(&format!(
        r#"python3 - <<'PY'
import mmap, os
fd = os.open("{0}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 3 << 20)
mm = mmap.mmap(fd, 3 << 20)
mm[0:5] = b"start"
mm[(3 << 20) - 3:] = b"end"
mm[1 << 20:(1 << 20) + 6] = b"middle"
mm.flush()
mm.close()
os.close(fd)
PY"#,
        p("mapped").display()
    ));
    let mapped = b.get("mapped");
    assert_eq!(mapped.len(), 3 << 20);
    assert_eq!(&mapped[..5], b"start");
    assert_eq!(&mapped[(1 << 20)..(1 << 20) + 6], b"middle");
    assert_eq!(&mapped[(3 << 20) - 3..], b"end");
}

/// A file replaced by another client within the TTL: a handle that has read nothing yet
/// follows the new version; one that read the old version gets ESTALE, never a mix.
#[test]
fn a_file_replaced_elsewhere_is_read_right() {
    use std::os::unix::fs::FileExt;

    let b = Bucket::new("px-replaced");
    let old = common::pseudo_random(32 << 20, 1);
    let new = common::pseudo_random(32 << 20, 2);
    b.put("f", old.clone());
    let m = Mount::new(&b.name, "px-replaced", &["--metadata-ttl", "60s"]);
    let f = m.path.join("f");
    assert_eq!(fs::metadata(&f).unwrap().len(), old.len() as u64);

    // Opened on the cached (old) attributes, replaced before the first read.
    let early = fs::File::open(&f).unwrap();
    let reading = fs::File::open(&f).unwrap();
    let mut first = [0u8; 4096];
    reading.read_exact_at(&mut first, 0).unwrap();
    assert_eq!(first[..], old[..4096]);
    b.put("f", new.clone());
    let mut got = vec![0u8; 4096];
    early.read_exact_at(&mut got, 20 << 20).unwrap();
    assert_eq!(
        got[..],
        new[20 << 20..(20 << 20) + 4096],
        "followed the new version"
    );
    let err = reading.read_exact_at(&mut got, 24 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "no mix of versions");
    drop((early, reading));
    assert!(
        fs::read(&f).unwrap() == new,
        "a new open reads the new version"
    );
}

#[test]
fn a_directory_links_itself_and_its_subdirectories() {
    let b = Bucket::new("px-nlink");
    let m = Mount::new(&b.name, "px-nlink", &[]);
    let d = m.path.join("d");
    fs::create_dir(&d).unwrap();
    fs::create_dir(d.join("a")).unwrap();
    fs::create_dir(d.join("b")).unwrap();
    fs::write(d.join("f"), "x").unwrap();
    assert_eq!(fs::read_dir(&d).unwrap().count(), 3);
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 4);
    assert_eq!(fs::metadata(d.join("f")).unwrap().nlink(), 1);
}

/// Extended attributes round trip and are stored in s3fs's `x-amz-meta-xattr` format.
#[test]
fn extended_attributes_round_trip_through_s3fs_headers() {
    let b = Bucket::new("px-xattr");
    b.put("listed", "from a listing");
    let m = Mount::new(&b.name, "px-xattr", &[]);
    let p = |n: &str| m.path.join(n);
    fs::write(p("f"), "content").unwrap();
    fs::create_dir(p("d")).unwrap();
    let out = sh(&format!(
        r#"python3 - <<'PY'
import os, errno
f, d, listed = "{0}", "{1}", "{2}"
os.setxattr(f, "user.comment", b"hello, world")
os.setxattr(f, "user.bin", bytes(range(256)))
assert os.getxattr(f, "user.comment") == b"hello, world"
assert os.getxattr(f, "user.bin") == bytes(range(256))
assert sorted(os.listxattr(f)) == ["user.bin", "user.comment"], os.listxattr(f)
for flags, name, want in [(os.XATTR_CREATE, "user.comment", errno.EEXIST),
                          (os.XATTR_REPLACE, "user.none", errno.ENODATA)]:
    try:
        os.setxattr(f, name, b"x", flags)
        raise SystemExit("no error for " + name)
    except OSError as e:
        assert e.errno == want, (name, e)
try:
    os.getxattr(f, "user.none")
    raise SystemExit("user.none found")
except OSError as e:
    assert e.errno == errno.ENODATA, e
os.removexattr(f, "user.bin")
assert os.listxattr(f) == ["user.comment"]
try:
    os.setxattr(f, "user.huge", b"x" * 4096)
    raise SystemExit("4 KiB of xattr accepted")
except OSError as e:
    assert e.errno in (errno.E2BIG, errno.ENOSPC), e
os.setxattr(d, "user.dir", b"on a directory")
assert os.getxattr(d, "user.dir") == b"on a directory"
os.setxattr(listed, "user.later", b"1")
assert os.getxattr(listed, "user.later") == b"1"
# A file open for writing takes it with its commit.
with open(f + ".open", "w") as w:
    w.write("open")
    os.setxattr(f + ".open", "user.pending", b"yes")
    assert os.getxattr(f + ".open", "user.pending") == b"yes"
print("ok")
PY"#,
        p("f").display(),
        p("d").display(),
        p("listed").display()
    ));
    assert_eq!(out.trim(), "ok");
    let stored = b.header("f", "xattr").expect("x-amz-meta-xattr on f");
    assert!(
        stored.starts_with("%7B%22user.comment%22%3A%22"),
        "{stored}"
    );
    assert!(b
        .header("f.open", "xattr")
        .is_some_and(|x| x.contains("user.pending")));
    assert_eq!(b.get("listed"), b"from a listing", "the body is kept");
    // Headers set by s3fs (user.a = "b") read the same here.
    let m2 = Mount::new(&b.name, "px-xattr-2", &[]);
    let read = sh(&format!(
        "python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], \"user.comment\").decode())' {}",
        m2.path.join("f").display()
    ));
    assert_eq!(read.trim(), "hello, world", "kept across a remount");
}

/// Extending a file needs no staging space for the hole; past 5 TiB is EFBIG.
#[test]
fn truncate_makes_holes_without_staging_space_and_stops_at_five_tib() {
    let b = Bucket::new("px-sizes");
    let m = Mount::new(&b.name, "px-sizes", &["--staging-dir-limit", "16MiB"]);
    let f = m.path.join("sparse");
    fs::write(&f, "").unwrap();
    let file = fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(256 << 20)
        .expect("a hole needs no staging space");
    drop(file);
    assert_eq!(fs::metadata(&f).unwrap().len(), 256 << 20);
    assert_eq!(b.size("sparse"), Some(256 << 20));
    let file = fs::OpenOptions::new().write(true).open(&f).unwrap();
    let err = file.set_len(6 << 40).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG));
    drop(file);
    // fallocate(2) extends (a hole); the modes S3 cannot do are EOPNOTSUPP.
    let g = m.path.join("allocated");
    sh(&format!("fallocate -l 3MiB {}", g.display()));
    assert_eq!(fs::metadata(&g).unwrap().len(), 3 << 20);
    assert_eq!(b.size("allocated"), Some(3 << 20));
    let punch = Command::new("fallocate")
        .args(["-p", "-o", "0", "-l", "4096"])
        .arg(&g)
        .output()
        .unwrap();
    assert!(!punch.status.success());
    assert!(
        String::from_utf8_lossy(&punch.stderr).contains("supported"),
        "{}",
        String::from_utf8_lossy(&punch.stderr)
    );
}

/// `--no-xattr` answers no extended-attribute request (the fast `ls -l` of huge directories).
#[test]
fn no_xattr_refuses_extended_attributes() {
    let b = Bucket::new("px-noxattr");
    let m = Mount::new(&b.name, "px-noxattr", &["--no-xattr"]);
    fs::write(m.path.join("f"), "x").unwrap();
    let out = sh(&format!(
        "python3 -c 'import os,sys\ntry:\n os.setxattr(sys.argv[1], \"user.a\", b\"1\")\nexcept OSError as e: print(e.errno)' {}",
        m.path.join("f").display()
    ));
    assert_eq!(out.trim(), libc::EOPNOTSUPP.to_string());
}

/// `tar x` of an archive with every kind of entry, then rsync compares: nothing differs but
/// the hard link tar could not make; an `rsync -aAX` round trip keeps modes, times, ACLs, xattrs.
#[test]
fn tar_and_rsync_keep_special_files_modes_times_and_xattrs() {
    let b = Bucket::new("px-tar");
    let m = Mount::new(&b.name, "px-tar", &[]);
    let src = tempfile::tempdir().unwrap();
    let s = src.path().join("tree");
    sh(&format!(
        r#"mkdir -p {s}/dir/sub && cd {s}
echo hello > dir/file && chmod 640 dir/file && touch -d '2020-01-02 03:04:05' dir/file
mkfifo dir/fifo && mknod dir/null c 1 3 && mknod dir/disk b 7 0
ln -s file dir/link && ln dir/file dir/hard
chmod 700 dir/sub && touch -d '2019-05-06 07:08:09' dir/sub
python3 -c 'import os; os.setxattr("dir/file", "user.tag", b"kept")'
tar --xattrs -cf {s}.tar -C {s} ."#,
        s = s.display()
    ));
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-xpf"])
        .arg(format!("{}.tar", s.display()))
        .arg("-C")
        .arg(&m.path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only the hard link fails (EPERM); tar then reports it and exits 2.
    for line in stderr
        .lines()
        .filter(|l| !l.contains("Exiting with failure"))
    {
        assert!(
            line.contains("dir/hard") && line.contains("Operation not permitted"),
            "{stderr}"
        );
    }
    let diff = sh(&format!(
        "rsync -rlptgoDXnci --exclude=dir/hard {}/ {}/",
        s.display(),
        m.path.display()
    ));
    assert_eq!(diff.trim(), "", "rsync sees no difference: {diff}");
    assert!(!m.path.join("dir/hard").exists());

    // rsync -aAX into the mount and back out: the same tree.
    let back = src.path().join("back");
    sh(&format!(
        "rsync -aAX --exclude=dir/hard {0}/ {1}/copy/ && rsync -aAX {1}/copy/ {2}/",
        s.display(),
        m.path.display(),
        back.display()
    ));
    let diff = sh(&format!(
        "rsync -rlptgoDAXnci --exclude=dir/hard {}/ {}/",
        s.display(),
        back.display()
    ));
    assert_eq!(diff.trim(), "", "round trip: {diff}");
}

/// New objects get the Content-Type their name says (web-served buckets need it), kept by
/// chmod and following a rename; `--content-type-default` covers unknown extensions.
#[test]
fn new_objects_get_a_content_type_from_their_name() {
    let b = Bucket::new("px-ctype");
    let m = Mount::new(&b.name, "px-ctype", &[]);
    let p = |n: &str| m.path.join(n);
    fs::write(p("index.html"), "<html></html>").unwrap();
    fs::write(p("style.css"), "body {}").unwrap();
    fs::write(p("data.weirdext"), "?").unwrap();
    fs::write(p("movie.mp4"), common::pseudo_random(20 << 20, 9)).unwrap(); // multipart
    fs::write(p("draft.tmp"), "<p>").unwrap();
    fs::create_dir(p("d")).unwrap();
    fs::set_permissions(p("index.html"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(p("draft.tmp"), p("page.html")).unwrap();
    for (key, want) in [
        ("index.html", "text/html"),
        ("style.css", "text/css"),
        ("data.weirdext", "application/octet-stream"),
        ("movie.mp4", "video/mp4"),
        ("page.html", "text/html"),
        ("d/", "application/x-directory"),
    ] {
        assert_eq!(b.content_type(key).as_deref(), Some(want), "{key}");
    }
    drop(m);
    let m = Mount::new(
        &b.name,
        "px-ctype",
        &["--content-type-default", "text/plain"],
    );
    fs::write(m.path.join("notes"), "plain").unwrap();
    assert_eq!(b.content_type("notes").as_deref(), Some("text/plain"));
}

/// Directories other tools wrote: Hadoop's `name_$folder$` and s3fs's legacy `name` object
/// (application/x-directory) list, stat and work as directories; rmdir removes their objects.
#[test]
fn other_tools_directory_formats_are_directories() {
    let b = Bucket::new("px-legacy");
    b.put("hadoop_$folder$", "");
    b.put("hadoop/inside.txt", "in hadoop's dir");
    b.put("emptyhadoop_$folder$", "");
    let dir_mode = (libc::S_IFDIR | 0o750).to_string();
    b.put_typed(
        "olds3fs",
        b"",
        "application/x-directory",
        &[("mode", &dir_mode)],
    );
    b.put_typed("olds3fs2", b"", "application/x-directory", &[]);
    let m = Mount::new(&b.name, "px-legacy", &[]);
    let p = |n: &str| m.path.join(n);
    let listed = listed_types(&m.path);
    let names: Vec<(&str, char)> = listed.iter().map(|(n, t, _)| (n.as_str(), *t)).collect();
    assert_eq!(
        names,
        vec![
            ("emptyhadoop", 'd'),
            ("hadoop", 'd'),
            ("olds3fs", 'd'),
            ("olds3fs2", 'd')
        ]
    );
    assert_eq!(mode_of(&p("olds3fs")), libc::S_IFDIR | 0o750);
    assert_eq!(
        fs::read_to_string(p("hadoop/inside.txt")).unwrap(),
        "in hadoop's dir"
    );
    // Work in them: files go under `name/`.
    fs::write(p("olds3fs/new.txt"), "new").unwrap();
    assert_eq!(b.get("olds3fs/new.txt"), b"new");
    // A fresh mount finds them by name too (no listing first).
    drop(m);
    let m = Mount::new(&b.name, "px-legacy", &[]);
    let p = |n: &str| m.path.join(n);
    assert!(fs::metadata(p("emptyhadoop")).unwrap().is_dir());
    assert!(fs::metadata(p("olds3fs2")).unwrap().is_dir());
    fs::remove_dir(p("emptyhadoop")).unwrap();
    fs::remove_dir(p("olds3fs2")).unwrap();
    assert!(b.head("emptyhadoop_$folder$").is_none());
    assert!(b.head("olds3fs2").is_none());
    assert!(fs::metadata(p("olds3fs2")).is_err());
}

/// On a server that keeps marker headers (moto, like AWS), a directory's explicit times and
/// extended attributes survive a remount, as its mode does (SeaweedFS drops them).
#[test]
fn directory_times_and_xattrs_survive_a_remount_on_moto() {
    let moto = common::moto::Moto::start();
    let bucket = "dirmeta";
    moto.create_bucket(bucket);
    let mount = || Mount::new(bucket, "px-moto-dir", &["--endpoint-url", &moto.endpoint]);
    let m = mount();
    let d = m.path.join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), "x").unwrap();
    sh(&format!(
        "mkfifo {0}/fifo; python3 -c 'import os,sys; os.setxattr(sys.argv[1], \"user.dir\", b\"kept\")' {0}; touch -m -d '2003-04-05 06:07:08' {0}",
        d.display()
    ));
    let before = times(&d);
    drop(m);
    let m = mount();
    let d = m.path.join("d");
    let after = times(&d);
    assert_eq!(after.1, before.1, "the directory's mtime");
    let read = sh(&format!(
        "python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], \"user.dir\").decode())' {}",
        d.display()
    ));
    assert_eq!(read.trim(), "kept");
    assert!(fs::symlink_metadata(d.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let marker = moto.metadata(bucket, "d/").expect("marker d/");
    assert!(
        marker.contains_key("xattr") && marker.contains_key("mtime"),
        "{marker:?}"
    );
}
