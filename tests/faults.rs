//! Request costs and faults, seen through a counting, fault-injecting proxy between the mount and
//! SeaweedFS.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use common::{eventually, proxy, pseudo_random, sha256, within, Bucket, Mount};

#[test]
fn ls_l_of_2500_entries_costs_three_lists_and_no_head_per_entry() {
    let b = Bucket::new("costs");
    let keys: Vec<String> = (0..2500).map(|i| format!("d/f{i:05}")).collect();
    b.put_many(&keys, b"0123456789");
    let p = proxy();
    let m = Mount::new(&b.name, "costs", &["--endpoint-url", &p.endpoint]);
    let (head0, list0) = (
        p.counts().head.load(Ordering::SeqCst),
        p.counts().list.load(Ordering::SeqCst),
    );

    let out = std::process::Command::new("ls")
        .arg("-l")
        .arg(m.path.join("d"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2501);
    let head = p.counts().head.load(Ordering::SeqCst) - head0;
    let list = p.counts().list.load(Ordering::SeqCst) - list0;
    // Looking up `d` itself: one HEAD + one LIST. Listing it: ceil(2500/1000) = 3 LISTs.
    assert_eq!(head, 1, "HEADs during ls -l");
    assert_eq!(list, 1 + 3, "LISTs during ls -l");
    // stat of every entry after the listing: answered from the listing, no request.
    for k in keys.iter().take(200) {
        assert_eq!(fs::metadata(m.path.join(k)).unwrap().len(), 10);
    }
    assert_eq!(p.counts().head.load(Ordering::SeqCst) - head0, 1);
    assert_eq!(p.counts().get.load(Ordering::SeqCst), 0);
}

#[test]
fn a_stalled_read_does_not_block_ls_elsewhere() {
    let b = Bucket::new("stall");
    let data = pseudo_random(32 << 20, 3);
    b.put("big.bin", data.clone());
    b.put("dir/small.txt", "small");
    let p = proxy();
    let m = Mount::new(
        &b.name,
        "stall",
        &["--endpoint-url", &p.endpoint, "--metadata-ttl", "60s"],
    );
    let root = m.path.clone();
    assert_eq!(fs::read_dir(&root).unwrap().count(), 2);
    assert_eq!(
        fs::read_to_string(root.join("dir/small.txt")).unwrap(),
        "small"
    );
    let file = fs::File::open(root.join("big.bin")).unwrap();

    p.stall();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0; 1 << 20];
        let r = file.read_at(&mut buf, 20 << 20).map(|n| buf[..n].to_vec());
        tx.send(()).unwrap();
        r
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.try_recv().is_err(),
        "the read should be stalled by the proxy"
    );
    let r2 = root.clone();
    let names = within(
        Duration::from_secs(10),
        "ls during a stalled GET",
        move || {
            let n = fs::read_dir(&r2).unwrap().count();
            let s = fs::read_to_string(r2.join("dir/small.txt")).unwrap();
            (n, s)
        },
    );
    assert_eq!(names, (2, "small".to_string()));
    p.resume();
    let got = within(
        Duration::from_secs(60),
        "the stalled read after resume",
        move || reader.join().unwrap(),
    )
    .expect("read after resume");
    assert_eq!(got, &data[20 << 20..21 << 20]);
}

#[test]
fn a_dead_endpoint_gives_eio_within_bounded_time() {
    let b = Bucket::new("dead");
    b.put("file.bin", pseudo_random(8 << 20, 4));
    b.put("unlisted/x", "x");
    let p = proxy();
    let m = Mount::new(
        &b.name,
        "dead",
        &["--endpoint-url", &p.endpoint, "--metadata-ttl", "60s"],
    );
    let file = fs::File::open(m.path.join("file.bin")).unwrap();
    p.kill();
    let path = m.path.clone();
    let listed = within(
        Duration::from_secs(120),
        "readdir against a dead endpoint",
        move || fs::read_dir(path.join("unlisted")).map(|d| d.count()),
    );
    assert_eq!(listed.unwrap_err().raw_os_error(), Some(libc::EIO));
    let read = within(
        Duration::from_secs(120),
        "read against a dead endpoint",
        move || {
            let mut buf = vec![0; 4096];
            file.read_at(&mut buf, 6 << 20)
        },
    );
    assert_eq!(read.unwrap_err().raw_os_error(), Some(libc::EIO));
    assert!(m.unmount(), "the daemon must still unmount and exit");
}

#[test]
fn throttling_and_5xx_are_retried() {
    let b = Bucket::new("retry");
    let data = pseudo_random(4 << 20, 5);
    b.put("f.bin", data.clone());
    b.put("dir/x", "x");
    let p = proxy();
    let m = Mount::new(&b.name, "retry", &["--endpoint-url", &p.endpoint]);
    p.fail_next(2);
    assert_eq!(fs::read_dir(m.path.join("dir")).unwrap().count(), 1);
    p.fail_next(2);
    assert_eq!(fs::read(m.path.join("f.bin")).unwrap(), data);
}

#[test]
fn an_error_that_outlasts_the_retries_says_what_s3_said() {
    let b = Bucket::new("retry-out");
    b.put("f.bin", pseudo_random(64 << 10, 6));
    let p = proxy();
    let m = Mount::new(&b.name, "retry-out", &["--endpoint-url", &p.endpoint]);
    let path = m.path.join("f.bin");
    assert_eq!(fs::metadata(&path).unwrap().len(), 64 << 10);
    // Every attempt of the GET is throttled: the read fails, and the log says how.
    p.fail_next(1000);
    let read = within(Duration::from_secs(120), "a throttled read", move || {
        fs::read(path)
    });
    p.fail_next(0);
    assert_eq!(read.unwrap_err().raw_os_error(), Some(libc::EIO));
    let log = fs::read_to_string(&m.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("SlowDown"))
        .unwrap_or_else(|| panic!("no SlowDown in the log:\n{log}"));
    for part in [
        "f.bin",
        "SlowDown: Please reduce your request rate.",
        "HTTP 503",
        "request id INJECTED",
        "4 attempts",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
}

#[test]
fn a_server_gone_mid_write_fails_close_and_leaves_no_object_and_no_upload() {
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    let b = Bucket::new("midwrite");
    let p = proxy();
    let m = Mount::new(&b.name, "midwrite", &["--endpoint-url", &p.endpoint]);
    let path = m.path.join("big.bin");
    let chunk = pseudo_random(1 << 20, 6);
    let mut file = fs::File::create(&path).unwrap();
    for _ in 0..40 {
        file.write_all(&chunk).unwrap();
    }
    // Parts are on their way: the multipart upload exists on the server.
    assert!(
        eventually(Duration::from_secs(30), || b.multipart_uploads() == 1),
        "40 MiB written with 8 MiB parts should have begun a multipart upload"
    );

    p.kill();
    let (write_result, close_result) = within(
        Duration::from_secs(300),
        "writing and closing against a dead server",
        move || {
            let mut written = 40;
            let mut result = Ok(());
            while written < 200 {
                result = file.write_all(&chunk);
                if result.is_err() {
                    break;
                }
                written += 1;
            }
            let fd = file.into_raw_fd();
            // SAFETY: `fd` was just taken out of the `File`, which no longer closes it.
            let closed = unsafe { libc::close(fd) };
            let close_err = (closed != 0).then(std::io::Error::last_os_error);
            (result, close_err)
        },
    );
    let close_err = close_result.expect("close() after the server went away must fail");
    assert_eq!(close_err.raw_os_error(), Some(libc::EIO), "{close_err}");
    if let Err(e) = write_result {
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    assert!(
        b.head("big.bin").is_none(),
        "no object under the name; size {:?}; log:\n{}",
        b.size("big.bin"),
        fs::read_to_string(&m.log).unwrap_or_default()
    );

    // The server comes back: the released handle's upload is aborted, and still no object.
    p.revive();
    assert!(
        eventually(Duration::from_secs(90), || b.multipart_uploads() == 0),
        "the multipart upload should be aborted once the server is back"
    );
    assert!(b.head("big.bin").is_none(), "no object under the name");
    assert!(
        fs::metadata(&path).is_err(),
        "the failed file must not be listed in the mount"
    );
}

#[test]
fn a_full_staging_area_is_enospc_and_keeps_what_was_written() {
    use std::os::unix::fs::FileExt;

    let b = Bucket::new("enospc");
    let original = pseudo_random(100 << 10, 7);
    b.put("f.bin", original.clone());
    let m = Mount::new(&b.name, "enospc", &["--staging-dir-limit", "1MiB"]);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path.join("f.bin"))
        .unwrap();
    let chunk = pseudo_random(256 << 10, 8);
    let mut accepted = 0u64;
    let err = loop {
        match file.write_at(&chunk, accepted) {
            Ok(n) => accepted += n as u64,
            Err(e) => break e,
        }
        assert!(accepted <= 2 << 20, "2 MiB staged past a 1 MiB limit");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(accepted > 0 && accepted <= 1 << 20, "accepted {accepted}");
    // The bytes written before the disk filled are kept, and nothing half-written: the object is
    // exactly what the successful writes made of it.
    file.sync_all().unwrap();
    drop(file);
    let mut want = original;
    want.resize(want.len().max(accepted as usize), 0);
    for off in (0..accepted).step_by(chunk.len()) {
        let off = off as usize;
        let n = chunk.len().min(accepted as usize - off);
        want[off..off + n].copy_from_slice(&chunk[..n]);
    }
    assert_eq!(sha256(&b.get("f.bin")), sha256(&want));
}
