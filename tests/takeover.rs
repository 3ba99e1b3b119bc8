//! `bucketfs takeover`: a live mount handed to a new process while programs use it, and a
//! takeover refused for a state format this binary cannot read.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;

/// What one program saw: when it ran, its longest single call (or run) and the median one,
/// and the digest of its bytes.
struct Run {
    span: (Instant, Instant),
    longest: Duration,
    median: Duration,
    digest: String,
}

/// The longest and the median of `times`.
fn spread(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let longest = times.last().copied().unwrap_or_default();
    (
        longest,
        times.get(times.len() / 2).copied().unwrap_or_default(),
    )
}

/// 1 MiB chunk `i` of the written file: a fixed pattern with the chunk number in front.
fn chunk(base: &[u8], i: u64) -> Vec<u8> {
    let mut c = base.to_vec();
    c[..8].copy_from_slice(&i.to_le_bytes());
    c
}

/// Writes `chunks` MiB to `path` with write(2) calls of 1 MiB, then closes (the commit).
fn write_file(path: std::path::PathBuf, chunks: u64) -> JoinHandle<Run> {
    std::thread::spawn(move || {
        let base = pseudo_random(MIB, 17);
        let start = Instant::now();
        let mut times = Vec::new();
        let mut hash = Sha256::new();
        let mut f = fs::File::create(&path).expect("create through the mount");
        for i in 0..chunks {
            let c = chunk(&base, i);
            let t = Instant::now();
            f.write_all(&c)
                .unwrap_or_else(|e| panic!("write of chunk {i} failed: {e}"));
            times.push(t.elapsed());
            hash.update(&c);
        }
        if let Err(e) = f.sync_all() {
            panic!("fsync (the commit) failed: {e}");
        }
        drop(f);
        let (longest, median) = spread(times);
        Run {
            span: (start, Instant::now()),
            longest,
            median,
            digest: format!("{:x}", hash.finalize()),
        }
    })
}

/// Reads `path` to its end in 1 MiB calls, `pace` apart, so that it outlives the takeovers.
fn read_file(path: std::path::PathBuf, pace: Duration) -> JoinHandle<Run> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut times = Vec::new();
        let mut hash = Sha256::new();
        let mut f = fs::File::open(&path).expect("open through the mount");
        let mut buf = vec![0; MIB];
        loop {
            let t = Instant::now();
            let n = f
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("read failed: {e}"));
            times.push(t.elapsed());
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            std::thread::sleep(pace);
        }
        let (longest, median) = spread(times);
        Run {
            span: (start, Instant::now()),
            longest,
            median,
            digest: format!("{:x}", hash.finalize()),
        }
    })
}

/// Runs `script` (bash) until `stop`, checking each run's output with `check`; returns the
/// longest run.
fn keep_running(script: String, stop: Arc<AtomicBool>, check: fn(&str) -> bool) -> JoinHandle<Run> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut times = Vec::new();
        let mut runs = 0;
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let out = Command::new("bash")
                .args(["-euo", "pipefail", "-c", &script])
                .stdin(Stdio::null())
                .output()
                .expect("run bash");
            times.push(t.elapsed());
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && check(&stdout),
                "run {runs} of `{script}` failed: {}\n{stdout}",
                String::from_utf8_lossy(&out.stderr)
            );
            runs += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(runs > 0, "`{script}` never ran");
        let (longest, median) = spread(times);
        Run {
            span: (start, Instant::now()),
            longest,
            median,
            digest: String::new(),
        }
    })
}

/// Seconds since midnight of a log line's timestamp (`2026-12-03T06:30:28.443703Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let clock = line.split_once('T')?.1.split('Z').next()?;
    let mut parts = clock.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// How long requests waited at each takeover, from the daemons' own log lines: from the old
/// daemon closing its gate to the new one serving.
fn pauses(log: &std::path::Path) -> Vec<Duration> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut closed = None;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.contains("takeover asked: stopping requests") {
            closed = log_time(line);
        } else if line.contains("took the mount over in") {
            if let (Some(from), Some(to)) = (closed.take(), log_time(line)) {
                out.push(Duration::from_secs_f64((to - from).max(0.0)));
            }
        }
    }
    out
}

#[test]
fn programs_using_the_mount_run_through_two_takeovers_in_a_row() {
    let b = Bucket::new("takeover-live");
    // A 1 GiB object made on the server: 128 copies of one 8 MiB part.
    let part = pseudo_random(8 * MIB, 5);
    b.put("part.bin", part.clone());
    b.multipart_copy("big.bin", "part.bin", 128);
    let mut expected = Sha256::new();
    for _ in 0..128 {
        expected.update(&part);
    }
    let expected = format!("{:x}", expected.finalize());
    let keys: Vec<String> = (0..200).map(|i| format!("tree/d{}/f{i}", i % 20)).collect();
    b.put_many(&keys, b"x");
    let m = Mount::new(&b.name, "takeover-live", &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_file(m.path.join("out.bin"), 2048);
    let reader = read_file(m.path.join("big.bin"), Duration::from_millis(12));
    let tree = m.path.join("tree");
    let finder = keep_running(
        format!("find '{}' -type f | wc -l", tree.display()),
        Arc::clone(&stop),
        |out| out.trim() == "200",
    );
    let lister = keep_running(
        format!("ls -l '{}/d0'", tree.display()),
        Arc::clone(&stop),
        |out| out.lines().filter(|l| l.starts_with('-')).count() == 10,
    );

    std::thread::sleep(Duration::from_secs(3));
    let first = (Instant::now(), take_over(&m));
    std::thread::sleep(Duration::from_secs(3));
    let second = (Instant::now(), take_over(&m));

    let written = writer.join().expect("the writer failed");
    let read = reader.join().expect("the reader failed");
    stop.store(true, Ordering::SeqCst);
    let found = finder.join().expect("the find loop failed");
    let listed = lister.join().expect("the ls loop failed");

    for (name, run) in [("write", &written), ("read", &read)] {
        for (at, _) in [&first, &second] {
            assert!(
                run.span.0 < *at && *at < run.span.1,
                "the {name} did not run across both takeovers: the test proves nothing"
            );
        }
    }
    assert_eq!(read.digest, expected, "the reader got other bytes");
    assert_eq!(b.size("out.bin"), Some(2048 * MIB as u64));
    assert_eq!(
        sha256(&b.get("out.bin")),
        written.digest,
        "the object in the bucket is not what was written"
    );
    assert_eq!(
        b.multipart_uploads(),
        0,
        "a multipart upload was left behind"
    );
    let paused = pauses(&m.log);
    assert_eq!(paused.len(), 2, "two takeovers in the log");
    eprintln!(
        "TAKEOVER-PAUSE requests held {:?} and {:?}; takeover commands {:?} and {:?}; longest (median) call or run: write {:?} ({:?}), read {:?} ({:?}), find {:?} ({:?}), ls -l {:?} ({:?})",
        paused[0],
        paused[1],
        first.1,
        second.1,
        written.longest,
        written.median,
        read.longest,
        read.median,
        found.longest,
        found.median,
        listed.longest,
        listed.median
    );
}

/// A daemon from the future: offers a state format this binary does not know, and records
/// what the new process answers.
fn future_daemon(socket: std::path::PathBuf) -> JoinHandle<String> {
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).expect("bind the fake daemon's socket");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut line = [0u8; 9];
        stream.read_exact(&mut line).expect("request line");
        assert_eq!(&line, b"takeover\n");
        let offer = serde_json::json!({
            "format": 999,
            "version": "9.0.0",
            "args": ["bucketfs", "bucket", "/nowhere"],
            "env": [],
        })
        .to_string();
        stream
            .write_all(&(offer.len() as u32).to_be_bytes())
            .unwrap();
        stream.write_all(offer.as_bytes()).unwrap();
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).expect("an answer");
        let mut answer = vec![0; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut answer).unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    })
}

#[test]
fn a_state_format_this_binary_cannot_read_is_refused_before_anything_stops() {
    let mountpoint = mount_point("takeover-future");
    let shown = fs::canonicalize(&mountpoint).unwrap();
    // The daemon's socket: root's directory, named by the mount point (status/mod.rs, 1.).
    let dir = std::path::Path::new("/run/bucketfs");
    fs::create_dir_all(dir).unwrap();
    let name = &sha256(shown.to_str().unwrap().as_bytes())[..24];
    let socket = dir.join(format!("{name}.sock"));
    let daemon = future_daemon(socket.clone());
    let out = Command::new(bucketfs_bin())
        .arg("takeover")
        .arg(&mountpoint)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = fs::remove_file(&socket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("format 999") && stderr.contains("keeps serving"),
        "{stderr}"
    );
    let answer = daemon.join().expect("the fake daemon");
    assert!(
        answer.starts_with("refuse"),
        "the running daemon was not told to go on: {answer}"
    );
}

#[test]
fn takeover_of_a_mount_nobody_serves_says_so() {
    let mountpoint = mount_point("takeover-none");
    let out = Command::new(bucketfs_bin())
        .arg("takeover")
        .arg(&mountpoint)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no bucketfs daemon"), "{stderr}");
}

#[test]
fn a_daemon_started_from_a_shell_holding_a_file_of_the_mount_does_not_keep_it() {
    let b = Bucket::new("takeover-inherit");
    b.put("held.txt", "held");
    let m = Mount::new(&b.name, "takeover-inherit", &[]);
    let old = m.daemon_pid().expect("daemon");
    // The shell holds the file as descriptor 7 (not close-on-exec) when it runs the command.
    let out = Command::new("sh")
        .arg("-c")
        .arg("exec 7<\"$2/held.txt\" && exec \"$1\" takeover \"$2\"")
        .arg("sh")
        .arg(bucketfs_bin())
        .arg(&m.path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_gone(old, Duration::from_secs(10)));
    let new = m.daemon_pid().expect("a new daemon");
    let held: Vec<_> = fs::read_dir(format!("/proc/{new}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(&m.path))
        .collect();
    assert!(held.is_empty(), "the new daemon holds {held:?}");
    assert_eq!(fs::read_to_string(m.path.join("held.txt")).unwrap(), "held");
}

/// Stands in for systemd's notification socket: collects what a daemon stores (`FDSTORE=1`).
struct FdStore {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
    stored: Vec<(String, std::os::fd::OwnedFd)>,
}

impl FdStore {
    fn new(name: &str) -> Self {
        let path = run_dir().join(format!("{name}.notify.sock"));
        let _ = fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Self {
            socket,
            path,
            stored: Vec::new(),
        }
    }

    /// Receives notifications until `names` are all stored.
    fn wait_for(&mut self, names: &[&str]) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd, FromRawFd, RawFd};
        while !names
            .iter()
            .all(|n| self.stored.iter().any(|(name, _)| name == n))
        {
            let mut buf = [0u8; 4096];
            let mut space = nix::cmsg_space!([RawFd; 8]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                // Close-on-exec: a process this test forks must never hold the connection.
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .expect("a notification from the daemon");
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    fds.extend(received);
                }
            }
            let len = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            if let Some(name) = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .filter(|_| text.contains("FDSTORE=1"))
            {
                for fd in fds {
                    // SAFETY: received just now; owned by nobody else.
                    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                    self.stored.push((name.to_string(), fd));
                }
            }
        }
    }

    fn fd(&self, name: &str) -> i32 {
        use std::os::fd::AsRawFd;
        self.stored
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, fd)| fd.as_raw_fd())
            .expect("stored")
    }
}

/// What systemd does at a restart, made ready before the crash: a process holding the stored
/// descriptors as 3 and 4 that, once told, starts the daemon with `LISTEN_*` set. (Forked now:
/// a process forked after the crash from one holding files of the mount would wait in exec,
/// flushing them, for the very daemon it is to start.)
fn restarter(
    m: &Mount,
    store: &FdStore,
    log: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let (fuse, state) = (store.fd("fuse"), store.fd("state"));
    let mut args = vec![
        "--log-file",
        log.to_str().unwrap(),
        "--log-level",
        "bucketfs=debug,info",
    ];
    args.extend(extra);
    let mut cmd = bucketfs_command(&m.source, &m.path, &args);
    cmd.envs(env.iter().copied());
    let mut restart = Command::new("sh");
    restart
        .arg("-c")
        .arg("read -r go && LISTEN_PID=$$ exec \"$@\"")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "fuse:state")
        .env("NOTIFY_SOCKET", &store.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only dup2 between fork and exec.
    unsafe {
        restart.pre_exec(move || {
            if libc::dup2(fuse, 3) < 0 || libc::dup2(state, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    restart.spawn().expect("spawn the restarter")
}

/// A mount whose daemon stores its descriptors in a stand-in for systemd's fd store, mounted
/// with `extra`; and the log file a restarted daemon writes.
fn crash_mount(bucket: &str, name: &str, extra: &[&str]) -> (Mount, FdStore, std::path::PathBuf) {
    let mut store = FdStore::new(name);
    let notify = store.path.to_str().unwrap().to_string();
    let path = mount_point(&format!("takeover-{name}"));
    let m = Mount::with_env(bucket, path, extra, &[("NOTIFY_SOCKET", notify.as_str())]);
    store.wait_for(&["fuse", "state"]);
    let log = m.log.with_extension("restart.log");
    (m, store, log)
}

/// Kills the mount's daemon with SIGKILL and waits until it is gone; returns its pid.
fn kill_daemon(m: &Mount) -> u32 {
    let old = m.daemon_pid().expect("daemon");
    // SAFETY: a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(old as i32, libc::SIGKILL) }, 0);
    assert!(wait_gone(old, Duration::from_secs(10)));
    old
}

#[test]
fn a_killed_daemon_is_resumed_from_what_it_kept_in_the_fd_store() {
    let b = Bucket::new("takeover-crash");
    let data = pseudo_random(4 * MIB, 9);
    b.put("read.bin", data.clone());
    let (m, store, log) = crash_mount(&b.name, "crash", &[]);
    let restart = restarter(&m, &store, &log, &[], &[]);

    // Before the crash: a file committed, a reader half way, a writer with a multipart
    // upload under way (20 MiB: parts of 8 MiB left).
    fs::write(m.path.join("committed.txt"), b"kept").unwrap();
    let mut reader = fs::File::open(m.path.join("read.bin")).unwrap();
    let mut first = vec![0; 2 * MIB];
    reader.read_exact(&mut first).unwrap();
    let mut writer = fs::File::create(m.path.join("cut.bin")).unwrap();
    let chunk = pseudo_random(MIB, 4);
    for _ in 0..20 {
        writer.write_all(&chunk).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(20), || b.multipart_uploads() == 1),
        "the writer's multipart upload did not start"
    );
    // And a program that opened its file once and writes it slowly, as `dd` from a pipe does
    // (one open, one close at the end; a shell's `exec 4>f; cmd >&4` would close a copy of
    // the descriptor in the opener after every command, and each such close commits).
    let slow = Command::new("sh")
        .arg("-c")
        .arg(
            "for i in $(seq 1 400); do head -c 1048576 /dev/zero || exit; sleep 0.02; done |
               dd of=\"$1\" bs=1M iflag=fullblock status=none || exit 5",
        )
        .arg("sh")
        .arg(m.path.join("loop.bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || b.multipart_uploads() == 2),
        "the slow writer's multipart upload did not start"
    );
    // Let the state be written (every 100 ms when it changed).
    std::thread::sleep(Duration::from_millis(500));
    let old = kill_daemon(&m);

    restart_now(restart, &log);
    assert!(m.daemon_pid().is_some_and(|p| p != old));
    drop(store);

    // The reader reads on, the same bytes; the writer's next call fails with EIO; what was
    // committed is there; nothing half-written is; the upload is aborted.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    assert!(first == data, "the reader got other bytes after the crash");
    let err = writer
        .write_all(&chunk)
        .and_then(|()| writer.sync_all())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(writer);
    assert_eq!(fs::read(m.path.join("committed.txt")).unwrap(), b"kept");
    assert!(
        !m.path.join("cut.bin").exists(),
        "a half-written file is shown"
    );
    assert_eq!(
        b.size("cut.bin"),
        None,
        "a half-written object was published"
    );
    let slow = slow.wait_with_output().unwrap();
    assert_eq!(
        slow.status.code(),
        Some(5),
        "the slow writer went on after the crash"
    );
    assert!(
        String::from_utf8_lossy(&slow.stderr).contains("Input/output error"),
        "{}",
        String::from_utf8_lossy(&slow.stderr)
    );
    assert_eq!(
        b.size("loop.bin"),
        None,
        "the slow writer's half-written object was published"
    );
    assert!(
        eventually(Duration::from_secs(20), || b.multipart_uploads() == 0),
        "the crashed daemon's multipart upload was not aborted"
    );
    fs::write(m.path.join("after.txt"), b"works").unwrap();
    assert_eq!(b.get("after.txt"), b"works");
}

/// Sends "go" to a restarter and waits for the daemon it starts to have resumed the mount.
fn restart_now(mut restart: std::process::Child, log: &std::path::Path) -> String {
    let go = restart
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(b"go\n"));
    assert!(matches!(go, Some(Ok(()))), "the restarter is gone");
    let out = restart.wait_with_output().unwrap();
    let text = fs::read_to_string(log).unwrap_or_default();
    assert!(
        out.status.success(),
        "the restarted daemon failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("resumed the mount after the previous daemon died"),
        "{text}"
    );
    text
}

#[test]
fn on_a_kernel_that_cannot_resend_the_requests_a_killed_daemon_had_read_fail_with_eio() {
    let b = Bucket::new("takeover-noresend");
    let data = pseudo_random(4 * MIB, 5);
    b.put("slow.bin", data.clone());
    let p = proxy();
    let through = ["--endpoint-url", p.endpoint.as_str()];
    let (m, store, log) = crash_mount(&b.name, "noresend", &through);
    // BUCKETFS_NO_RESEND: the restarted daemon acts as on a kernel before 6.9.
    let restart = restarter(&m, &store, &log, &through, &[("BUCKETFS_NO_RESEND", "1")]);

    // A lookup the daemon is serving when it dies: the server does not answer. (A read is
    // a poor probe: the kernel asks again after a failed read-ahead.)
    let probe = m.path.join("not-yet-known.txt");
    p.stall();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fs::metadata(&probe).map(drop).map_err(|e| e.raw_os_error()));
    });
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        rx.try_recv().is_err(),
        "the lookup did not wait for the server"
    );
    kill_daemon(&m);
    p.resume();
    let text = restart_now(restart, &log);
    drop(store);

    // The lookup the dead daemon had taken fails instead of waiting for ever; the mount
    // serves.
    let result = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the lookup the dead daemon had taken was never answered");
    assert_eq!(result, Err(Some(libc::EIO)), "{text}");
    assert!(text.contains("fail with EIO"), "{text}");
    assert!(fs::read(m.path.join("slow.bin")).unwrap() == data);
}

/// `cp -r` of many small files cut by a crash: every file cp closed without an error is in
/// the bucket whole, the one(s) it was writing fail (EIO) and are neither in the bucket nor
/// shown by the mount with other bytes.
#[test]
fn a_copy_of_small_files_cut_by_a_crash_leaves_each_file_whole_or_absent() {
    let b = Bucket::new("takeover-cp");
    let src = run_dir().join("takeover-cp-src");
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(&src).unwrap();
    for i in 1..=500 {
        fs::write(src.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let (m, store, log) = crash_mount(&b.name, "cp", &[]);
    let restart = restarter(&m, &store, &log, &[], &[]);

    let cp = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(m.path.join("copy"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || b.keys_under("copy/").len()
            >= 150),
        "the copy did not get going"
    );
    kill_daemon(&m);
    restart_now(restart, &log);
    drop(store);
    let cp = cp.wait_with_output().unwrap();
    let errors = String::from_utf8_lossy(&cp.stderr).into_owned();
    assert!(!errors.contains("Transport endpoint"), "{errors}");
    assert!(!errors.contains("Bad file descriptor"), "{errors}");

    // What cp reported failing, by name.
    let failed: Vec<String> = (1..=500)
        .map(|i| format!("f{i}"))
        .filter(|f| errors.contains(&format!("/{f}'")))
        .collect();
    let keys = b.keys_under("copy/");
    for i in 1..=500 {
        let name = format!("f{i}");
        let want = format!("file {i}\n");
        let key = format!("copy/{name}");
        if keys.contains(&key) {
            assert_eq!(
                b.get(&key),
                want.as_bytes(),
                "{key} in the bucket ({errors})"
            );
        } else {
            assert!(
                failed.contains(&name) || !cp.status.success(),
                "{key} missing though cp reported no error for it: {errors}"
            );
        }
        match fs::read(m.path.join("copy").join(&name)) {
            Ok(bytes) => assert_eq!(
                bytes,
                want.as_bytes(),
                "{name} read through the mount (failed: {failed:?}; {errors})"
            ),
            Err(e) => assert!(
                !keys.contains(&key),
                "{name} is in the bucket but the mount says {e}"
            ),
        }
    }
    let shown: Vec<String> = fs::read_dir(m.path.join("copy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &shown {
        assert!(
            keys.contains(&format!("copy/{name}")),
            "{name} is listed by the mount but not in the bucket (failed: {failed:?}; {errors})"
        );
    }
    eprintln!("cp: {errors}; {} keys", keys.len());
}
