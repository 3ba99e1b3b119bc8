//! The write path through a real mount: what a user writes is what another S3 client reads,
//! bytes and s3fs headers, against SeaweedFS on 127.0.0.1.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, pseudo_random, run, sh, sha256, Bucket, Mount};

#[test]
fn create_overwrite_append_and_truncate_are_plain_objects() {
    let b = Bucket::new("rw-basic");
    b.put("old.txt", "0123456789");
    let m = Mount::new(&b.name, "rw-basic", &[]);
    let p = |n: &str| m.path.join(n);

    sh(&format!(
        "echo hello > {0}; echo world >> {0}",
        p("echo.txt").display()
    ));
    assert_eq!(b.get("echo.txt"), b"hello\nworld\n");
    assert_eq!(
        b.header("echo.txt", "mode").unwrap(),
        (0o100644).to_string()
    );

    // Random write into an existing object (dd conv=notrunc), then O_APPEND and truncate.
    sh(&format!(
        "printf AB | dd of={} bs=1 seek=3 conv=notrunc status=none",
        p("old.txt").display()
    ));
    assert_eq!(b.get("old.txt"), b"012AB56789");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(p("old.txt"))
        .unwrap();
    f.write_all(b"++").unwrap();
    drop(f);
    assert_eq!(b.get("old.txt"), b"012AB56789++");
    sh(&format!("truncate -s 4 {}", p("old.txt").display()));
    assert_eq!(b.get("old.txt"), b"012A");

    // O_RDWR: read back what this handle wrote before any commit, and from another handle.
    let mut rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("old.txt"))
        .unwrap();
    rw.seek(SeekFrom::Start(1)).unwrap();
    rw.write_all(b"xyz").unwrap();
    assert_eq!(fs::read(p("old.txt")).unwrap(), b"0xyz");
    rw.sync_all().unwrap();
    assert_eq!(b.get("old.txt"), b"0xyz", "fsync commits");
    drop(rw);

    // O_TRUNC overwrite, an empty new file, and ftruncate that grows.
    fs::write(p("old.txt"), "replaced").unwrap();
    assert_eq!(b.get("old.txt"), b"replaced");
    // A new file left empty is published at its last close (release, which the kernel sends
    // after close() has returned), not at the flush.
    fs::File::create(p("empty")).unwrap();
    assert!(eventually(Duration::from_secs(10), || b
        .head("empty")
        .is_some()));
    assert_eq!(b.get("empty"), b"");
    let f = fs::OpenOptions::new().write(true).open(p("empty")).unwrap();
    f.set_len(5).unwrap();
    drop(f);
    assert_eq!(b.get("empty"), vec![0; 5]);
    assert_eq!(fs::read_to_string(p("old.txt")).unwrap(), "replaced");
}

#[test]
fn a_large_sequential_write_is_a_multipart_upload_with_the_same_bytes() {
    let b = Bucket::new("rw-large");
    let m = Mount::new(&b.name, "rw-large", &[]);
    let data = pseudo_random(45 << 20, 3);
    let mut f = fs::File::create(m.path.join("big.bin")).unwrap();
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let (etag, _) = b.head("big.bin").unwrap();
    assert!(etag.contains('-'), "multipart ETag expected, got {etag}");
    assert_eq!(sha256(&b.get("big.bin")), sha256(&data));
    assert_eq!(
        fs::metadata(m.path.join("big.bin")).unwrap().len(),
        data.len() as u64
    );
    // `cp` of it inside the mount (read + write through FUSE), byte for byte.
    run(Command::new("cp")
        .arg(m.path.join("big.bin"))
        .arg(m.path.join("copy.bin")));
    assert_eq!(sha256(&b.get("copy.bin")), sha256(&data));
    assert_eq!(b.multipart_uploads(), 0);
}

#[test]
fn o_excl_on_an_existing_name_is_eexist() {
    let b = Bucket::new("rw-excl");
    b.put("there", "x");
    let m = Mount::new(&b.name, "rw-excl", &[]);
    let e = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path.join("there"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    // A new name with O_EXCL works and is stored.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(m.path.join("fresh"))
        .unwrap();
    f.write_all(b"mine").unwrap();
    drop(f);
    assert_eq!(b.get("fresh"), b"mine");
    assert_eq!(b.header("fresh", "mode").unwrap(), (0o100600).to_string());
    assert_eq!(b.get("there"), b"x");
}

#[test]
fn directories_renames_and_removal() {
    let b = Bucket::new("rw-names");
    let m = Mount::new(&b.name, "rw-names", &[]);
    let p = |n: &str| m.path.join(n);
    fs::create_dir_all(p("a/b/c")).unwrap();
    assert!(b.head("a/b/c/").is_some(), "mkdir writes a marker");
    fs::write(p("a/b/f.txt"), "f").unwrap();
    let e = fs::remove_dir(p("a/b")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));

    // An editor's save: write a temp file, rename it over the original.
    fs::write(p("a/doc.txt"), "v1").unwrap();
    fs::write(p("a/.doc.txt.swp"), "v2").unwrap();
    fs::rename(p("a/.doc.txt.swp"), p("a/doc.txt")).unwrap();
    assert_eq!(b.get("a/doc.txt"), b"v2");
    assert!(b.head("a/.doc.txt.swp").is_none());
    assert_eq!(fs::read_to_string(p("a/doc.txt")).unwrap(), "v2");

    // mv of a whole directory: every key moves; the old names are gone.
    run(Command::new("mv").arg(p("a")).arg(p("z")));
    let keys = b.keys();
    assert!(keys.iter().all(|k| !k.starts_with("a/")), "{keys:?}");
    for k in ["z/b/c/", "z/b/f.txt", "z/doc.txt"] {
        assert!(keys.contains(&k.to_string()), "{k} missing in {keys:?}");
    }
    assert_eq!(fs::read_to_string(p("z/b/f.txt")).unwrap(), "f");
    // renameat2 flags: RENAME_NOREPLACE honoured, RENAME_EXCHANGE refused.
    let noreplace = sh(&format!(
        "mv --no-clobber --verbose {} {} || true; echo done",
        p("z/doc.txt").display(),
        p("z/b/f.txt").display()
    ));
    assert!(noreplace.contains("done"));
    assert_eq!(b.get("z/b/f.txt"), b"f");
    let exchange = sh(&format!(
        "python3 -c 'import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); r=l.renameat2(-100,sys.argv[1].encode(),-100,sys.argv[2].encode(),2); print(r, ctypes.get_errno())' {} {}",
        p("z/doc.txt").display(),
        p("z/b/f.txt").display()
    ));
    assert_eq!(exchange.trim(), format!("-1 {}", libc::EINVAL));

    // An empty directory survives a remount; rm -r removes everything.
    fs::create_dir(p("empty")).unwrap();
    drop(m);
    let m = Mount::new(&b.name, "rw-names", &[]);
    assert!(m.path.join("empty").is_dir());
    run(Command::new("rm")
        .arg("-r")
        .arg(m.path.join("z"))
        .arg(m.path.join("empty")));
    assert_eq!(b.keys(), Vec::<String>::new());
    let left: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Hard links: EPERM, as link(2) says for filesystems that cannot hold them.
    fs::write(m.path.join("t"), "t").unwrap();
    let e = fs::hard_link(m.path.join("t"), m.path.join("t2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
}

#[test]
fn chmod_chown_touch_and_symlinks_use_s3fs_headers_and_survive_a_remount() {
    let b = Bucket::new("rw-attrs");
    b.put("plain", "no headers");
    let m = Mount::new(&b.name, "rw-attrs", &[]);
    let p = |n: &str| m.path.join(n);
    fs::write(p("f"), "content").unwrap();
    fs::set_permissions(p("f"), fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::chown(p("f"), Some(1234), Some(5678)).unwrap();
    sh(&format!("touch -m -d @1500000000 {}", p("f").display()));
    std::os::unix::fs::symlink("f", p("link")).unwrap();
    sh(&format!(
        "touch -m -d @1600000000.25 {}",
        p("plain").display()
    ));

    assert_eq!(b.get("f"), b"content", "metadata changes keep the bytes");
    assert_eq!(b.header("f", "mode").unwrap(), (0o100751).to_string());
    assert_eq!(b.header("f", "uid").unwrap(), "1234");
    assert_eq!(b.header("f", "gid").unwrap(), "5678");
    assert_eq!(b.header("f", "mtime").unwrap(), "1500000000");
    assert_eq!(b.get("link"), b"f", "a symlink's body is its target");
    assert_eq!(b.header("link", "mode").unwrap(), (0o120777).to_string());
    assert_eq!(b.header("plain", "mtime").unwrap(), "1600000000.250000000");
    drop(m);

    // A new mount reads the headers back (a stat of one name is a HEAD).
    let m = Mount::new(&b.name, "rw-attrs", &[]);
    let meta = fs::metadata(m.path.join("f")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o751);
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!(meta.mtime(), 1_500_000_000);
    assert_eq!(fs::read_link(m.path.join("link")).unwrap(), Path::new("f"));
    assert_eq!(fs::read_to_string(m.path.join("link")).unwrap(), "content");
    let plain = fs::metadata(m.path.join("plain")).unwrap();
    assert_eq!(
        (plain.mtime(), plain.mtime_nsec()),
        (1_600_000_000, 250_000_000)
    );
}

#[test]
fn read_only_mounts_refuse_every_mutation_with_erofs() {
    let b = Bucket::new("rw-erofs");
    b.put("file.txt", "keep me");
    let m = Mount::new(&b.name, "rw-erofs", &["--read-only"]);
    let erofs = |r: std::io::Result<()>| {
        let e = r.expect_err("mutation succeeded");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    };
    erofs(fs::write(m.path.join("new.txt"), "x"));
    erofs(fs::write(m.path.join("file.txt"), "x"));
    erofs(fs::create_dir(m.path.join("newdir")));
    erofs(fs::remove_file(m.path.join("file.txt")));
    erofs(fs::rename(
        m.path.join("file.txt"),
        m.path.join("moved.txt"),
    ));
    erofs(fs::set_permissions(
        m.path.join("file.txt"),
        fs::Permissions::from_mode(0o600),
    ));
    erofs(std::os::unix::fs::symlink("x", m.path.join("l")));
    assert_eq!(b.get("file.txt"), b"keep me");
}

/// A source tree with files, nested directories, symlinks and modes.
fn make_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}/e{}", i % 10, i % 3));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join(format!("f{i}.txt"));
        fs::write(&f, pseudo_random(100 + i * 7, i as u64)).unwrap();
        if i % 5 == 0 {
            fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        }
        if i % 50 == 0 {
            std::os::unix::fs::symlink(format!("f{i}.txt"), dir.join(format!("l{i}"))).unwrap();
        }
    }
}

#[test]
fn tar_rsync_and_git_work_in_the_mount() {
    let b = Bucket::new("rw-tools");
    let m = Mount::new(&b.name, "rw-tools", &[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src, 1000);

    // tar x of 1,000 files, directories and symlinks, then diff -r against the source.
    let tarball = work.path().join("t.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .arg("."));
    fs::create_dir(m.path.join("untar")).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(m.path.join("untar")));
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&src)
        .arg(m.path.join("untar")));
    assert_eq!(
        b.get("untar/d0/e0/f0.txt"),
        fs::read(src.join("d0/e0/f0.txt")).unwrap()
    );

    // rsync -a there and back: bytes, modes and mtimes kept.
    run(Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", src.display()))
        .arg(m.path.join("rs")));
    let back = work.path().join("back");
    run(Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", m.path.join("rs").display()))
        .arg(&back));
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&src)
        .arg(&back));
    // (path, type, mode, mtime seconds) of files and links; directories' mtimes change as
    // rsync fills them.
    let listing = |root: &Path| -> Vec<(String, String, String, String)> {
        sh(&format!(
            "cd {} && find . ! -type d -printf '%p %y %m %T@\\n' | sort",
            root.display()
        ))
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split(' ').collect();
            let secs = c[3].split('.').next().unwrap().to_string();
            (c[0].into(), c[1].into(), c[2].into(), secs)
        })
        .collect()
    };
    let (a, z) = (listing(&src), listing(&back));
    assert_eq!(a.len(), z.len());
    let kind_or_mode: Vec<_> = a
        .iter()
        .zip(&z)
        .filter(|(x, y)| (&x.0, &x.1, &x.2) != (&y.0, &y.1, &y.2))
        .collect();
    assert!(
        kind_or_mode.is_empty(),
        "{:?}",
        &kind_or_mode[..kind_or_mode.len().min(5)]
    );
    let mtimes: Vec<_> = a.iter().zip(&z).filter(|(x, y)| x.3 != y.3).collect();
    assert!(mtimes.is_empty(), "{:?}", &mtimes[..mtimes.len().min(5)]);
    assert_eq!(
        b.header("rs/d0/e0/f0.txt", "mode").unwrap(),
        (0o100600).to_string()
    );

    // git clone of a local repository into the mount, fsck and a checkout.
    let repo = work.path().join("repo");
    sh(&format!(
        "git init -q {0} && cd {0} && git config user.email t@e && git config user.name t \
         && cp -r {1}/d0 . && git add -A && git commit -qm one \
         && echo two > two.txt && git add two.txt && git commit -qm two",
        repo.display(),
        src.display()
    ));
    let clone = m.path.join("clone");
    run(Command::new("git")
        .arg("clone")
        .arg("-q")
        .arg(&repo)
        .arg(&clone));
    run(Command::new("git")
        .arg("-C")
        .arg(&clone)
        .arg("fsck")
        .arg("--strict"));
    run(Command::new("git")
        .arg("-C")
        .arg(&clone)
        .arg("checkout")
        .arg("-q")
        .arg("HEAD~1"));
    assert!(!clone.join("two.txt").exists());
    run(Command::new("git")
        .arg("-C")
        .arg(&clone)
        .arg("checkout")
        .arg("-q")
        .arg("-"));
    assert_eq!(fs::read_to_string(clone.join("two.txt")).unwrap(), "two\n");
    let status = run(Command::new("git")
        .arg("-C")
        .arg(&clone)
        .arg("status")
        .arg("--porcelain"));
    assert_eq!(status, "");
}

/// Peak resident memory of a process in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM value");
    kib << 10
}

#[test]
fn four_concurrent_1gib_writes_stay_within_the_memory_budget() {
    const GIB: usize = 1 << 30;
    let b = Bucket::new("rw-memory");
    // A budget the writers hit: 4 files x 4 parts in flight x 8 MiB would take 128 MiB and more.
    let m = Mount::new(&b.name, "rw-memory", &["--cache-size", "128MiB"]);
    let pid = m.daemon_pid().expect("daemon pid");
    let writers: Vec<_> = (0..4u64)
        .map(|i| {
            let path = m.path.join(format!("w{i}.bin"));
            std::thread::spawn(move || {
                let chunk = pseudo_random(1 << 20, 100 + i);
                let mut f = fs::File::create(&path).unwrap();
                for _ in 0..GIB / chunk.len() {
                    f.write_all(&chunk).unwrap();
                }
                f.sync_all().unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // docs/SEMANTICS.md: writes buffer at most half of `--cache-size`, and the daemon's fixed
    // overhead (FUSE request buffers, runtime, SDK) stays within 64 MiB.
    let (write_budget, overhead) = (64u64 << 20, 64u64 << 20);
    let peak = peak_rss(pid);
    eprintln!("peak RSS of the daemon: {} MiB", peak >> 20);
    assert!(
        peak <= write_budget + overhead,
        "peak RSS {} MiB is over the write budget ({} MiB) + {} MiB",
        peak >> 20,
        write_budget >> 20,
        overhead >> 20
    );
    for i in 0..4 {
        assert_eq!(b.size(&format!("w{i}.bin")), Some(GIB as u64));
    }
}

/// SeaweedFS drops user metadata on `dir/` markers, so directory modes and owners are checked
/// against moto's server, which keeps them as S3 does.
#[test]
fn directory_modes_and_owners_survive_a_remount_on_a_server_that_keeps_marker_metadata() {
    use std::os::unix::fs::DirBuilderExt;

    let moto = common::moto::Moto::start();
    let bucket = "modes";
    moto.create_bucket(bucket);
    let mount = || Mount::new(bucket, "moto-modes", &["--endpoint-url", &moto.endpoint]);
    let m = mount();
    fs::DirBuilder::new()
        .mode(0o700)
        .create(m.path.join("private"))
        .unwrap();
    std::os::unix::fs::chown(m.path.join("private"), Some(1234), Some(5678)).unwrap();
    fs::create_dir(m.path.join("private/sub")).unwrap();
    fs::set_permissions(
        m.path.join("private/sub"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    fs::write(m.path.join("private/sub/f.txt"), "x").unwrap();
    fs::set_permissions(
        m.path.join("private/sub/f.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let marker = moto.metadata(bucket, "private/").expect("marker private/");
    assert_eq!(
        marker.get("mode"),
        Some(&(0o40700).to_string()),
        "{marker:?}"
    );
    assert_eq!(marker.get("uid").map(String::as_str), Some("1234"));
    assert_eq!(marker.get("gid").map(String::as_str), Some("5678"));
    let sub = moto.metadata(bucket, "private/sub/").expect("marker sub/");
    assert_eq!(sub.get("mode"), Some(&(0o40750).to_string()), "{sub:?}");
    let file = moto.metadata(bucket, "private/sub/f.txt").expect("f.txt");
    assert_eq!(file.get("mode"), Some(&(0o100600).to_string()), "{file:?}");

    drop(m);
    let m = mount();
    let d = fs::metadata(m.path.join("private")).unwrap();
    assert_eq!(d.mode(), 0o40700);
    assert_eq!((d.uid(), d.gid()), (1234, 5678));
    assert_eq!(
        fs::metadata(m.path.join("private/sub")).unwrap().mode(),
        0o40750
    );
    assert_eq!(
        fs::metadata(m.path.join("private/sub/f.txt"))
            .unwrap()
            .mode(),
        0o100600
    );
}

/// A child started while a file is open for writing closes its inherited copy (exec closes
/// O_CLOEXEC descriptors), and the kernel sends a flush for it. That close must not commit a
/// half-written file: the object appears, whole, at the opener's close.
#[test]
fn a_child_closing_an_inherited_descriptor_does_not_commit_a_partial_file() {
    let b = Bucket::new("rw-fork");
    let m = Mount::new(&b.name, "rw-fork", &[]);
    let data = pseudo_random(24 << 20, 21);
    let mut f = fs::File::create(m.path.join("f.bin")).unwrap();
    f.write_all(&data[..12 << 20]).unwrap();
    run(&mut Command::new("true"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(b.head("f.bin").is_none(), "committed at a child's close");
    f.write_all(&data[12 << 20..]).unwrap();
    drop(f);
    assert_eq!(sha256(&b.get("f.bin")), sha256(&data));
}

/// SIGTERM (systemctl stop) with a file still open for writing: its bytes are committed before
/// the mount goes; the busy mount is detached, and the daemon exits once the file is closed.
#[test]
fn sigterm_commits_open_files_then_unmounts() {
    let b = Bucket::new("rw-sigterm");
    let m = Mount::new(&b.name, "rw-sigterm", &[]);
    let pid = m.daemon_pid().expect("daemon pid");
    let data = pseudo_random(3 << 20, 31);
    let mut f = fs::File::create(m.path.join("open.bin")).unwrap();
    f.write_all(&data).unwrap();
    // SAFETY: kill(2) on the pid of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let committed = common::eventually(std::time::Duration::from_secs(30), || {
        b.head("open.bin").is_some()
    });
    assert!(committed, "the open file was not committed at SIGTERM");
    assert_eq!(sha256(&b.get("open.bin")), sha256(&data));
    let detached = common::eventually(std::time::Duration::from_secs(10), || {
        !common::is_mounted(&m.path)
    });
    assert!(detached, "still mounted after SIGTERM");
    drop(f);
    assert!(
        common::wait_gone(pid, std::time::Duration::from_secs(10)),
        "the daemon did not exit once its last file was closed"
    );
}
