//! A shared host: another local user prepares the directories a mount will write into (a
//! directory of theirs, a world-writable one, symlinks planted where files will be made), or
//! opens the status socket to everyone; the daemon must refuse, not follow. And secrets (an
//! SSE-C key, the secret access key, a session token) never reach the log at any level.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A root-owned file the attacker wants truncated.
fn victim(name: &str) -> PathBuf {
    let path = run_dir().join(format!("victim-{name}"));
    fs::write(&path, b"precious root data").unwrap();
    path
}

/// Plants symlinks to `target` under every name an older daemon would have made in `dir`.
fn plant_symlinks(dir: &Path, target: &Path) {
    for pid in 1..2000 {
        for name in [format!(".probe-{pid}-0"), format!("staging-{pid}-0")] {
            let _ = std::os::unix::fs::symlink(target, dir.join(name));
        }
    }
}

/// Mounts with `extra` and expects a refusal whose one line contains `expect`.
fn refused(name: &str, extra: &[&str], expect: &str) {
    let b = Bucket::new(name);
    let path = mount_point(name);
    let out = bucketfs_command(&b.name, &path, extra).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted: {err}");
    assert!(err.contains(expect), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!is_mounted(&path));
}

#[test]
fn a_staging_directory_that_is_not_the_daemons_own_is_refused_and_nothing_is_followed() {
    // World-writable, prepared with symlinks to a file of root's (the old probe's names).
    let open = run_dir().join("staging-open");
    fs::create_dir_all(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let target = victim("staging");
    plant_symlinks(&open, &target);
    let arg = open.to_str().unwrap();
    refused(
        "host-staging-open",
        &["--staging-dir", arg],
        &format!("{arg} is writable by group or others (mode 0777)"),
    );
    // A symlink to a directory of ours.
    let ours = run_dir().join("staging-ours");
    fs::create_dir_all(&ours).unwrap();
    let link = run_dir().join("staging-link");
    std::os::unix::fs::symlink(&ours, &link).unwrap();
    let arg = link.to_str().unwrap();
    refused(
        "host-staging-link",
        &["--staging-dir", arg],
        &format!("{arg} is a symbolic link"),
    );
    // Made by another user first (the attack on root's old default in /var/tmp).
    let theirs = run_dir().join("staging-theirs");
    fs::create_dir_all(&theirs).unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("tests run as root");
    let arg = theirs.to_str().unwrap();
    refused(
        "host-staging-theirs",
        &["--staging-dir", arg],
        &format!("{arg} is owned by uid 65534"),
    );
    assert_eq!(fs::read(&target).unwrap(), b"precious root data");
    assert_eq!(fs::metadata(&target).unwrap().uid(), 0);
}

#[test]
fn staging_files_are_made_without_a_name_that_a_symlink_could_redirect() {
    // The daemon's own directory, but with names planted in it beforehand: a mount that
    // writes in place must never open one of them.
    let dir = run_dir().join("staging-planted");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let target = victim("planted");
    plant_symlinks(&dir, &target);
    let b = Bucket::new("host-staging-planted");
    b.put("f.txt", b"0123456789".to_vec());
    let m = Mount::new(
        &b.name,
        "host-staging-planted",
        &["--staging-dir", dir.to_str().unwrap()],
    );
    // A write in the middle of an existing object goes through a staging file.
    sh(&format!(
        "printf XY | dd of={} bs=1 seek=4 conv=notrunc status=none",
        m.path.join("f.txt").display()
    ));
    drop(m);
    assert_eq!(b.get("f.txt"), b"0123XY6789");
    assert_eq!(fs::read(&target).unwrap(), b"precious root data");
}

#[test]
fn a_disk_cache_directory_open_to_others_is_refused() {
    let open = run_dir().join("disk-cache-open");
    fs::create_dir_all(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let arg = open.to_str().unwrap();
    refused(
        "host-disk-cache",
        &["--disk-cache", arg],
        &format!("{arg} is writable by group or others (mode 1777)"),
    );
}

#[test]
fn the_status_socket_answers_only_its_user_and_root() {
    let b = Bucket::new("host-status");
    let m = Mount::new(&b.name, "host-status", &[]);
    fs::write(m.path.join("secret-name.txt"), b"x").unwrap();
    let dir = Path::new("/run/bucketfs");
    assert_eq!(
        fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        0o700,
        "the socket directory is private"
    );
    // Even reachable (a hard link of the socket in a directory open to all, the socket made
    // 0666), the server refuses a client of another user (SO_PEERCRED). /run/bucketfs itself
    // is left alone: other tests' mounts make it private again at any moment.
    // Only this mount's socket: other tests' sockets are theirs.
    let socket = bucketfs::status::socket_path(dir, &bucketfs::status::mount_path(&m.path));
    assert!(socket.exists(), "{} is missing", socket.display());
    let open = Path::new("/run").join(format!("bucketfs-test-open-{}", std::process::id()));
    fs::create_dir_all(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
    let linked = open.join("status.sock");
    fs::hard_link(&socket, &linked).unwrap();
    fs::set_permissions(&linked, fs::Permissions::from_mode(0o666)).unwrap();
    let ask_as_nobody = |socket: &Path| {
        // The system Python: root's own (pyenv) is not reachable by `nobody`.
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(
                "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 s.settimeout(10)\n\
                 s.connect(sys.argv[1])\n\
                 s.sendall(b'status\\n')\n\
                 print(s.recv(1 << 20).decode(errors='replace'))",
            )
            .arg(socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let answer = String::from_utf8_lossy(&ask_as_nobody(&linked).stdout).into_owned();
    // The socket shares its inode with the link: private again before anything else.
    fs::set_permissions(&linked, fs::Permissions::from_mode(0o600)).unwrap();
    let _ = fs::remove_dir_all(&open);
    assert!(
        !answer.contains("secret-name") && !answer.contains("mountpoint"),
        "{answer}"
    );
    let log = fs::read_to_string(&m.log).unwrap();
    assert!(
        log.contains("status socket: refused a client of another user"),
        "{answer}\n{log}"
    );
    // Its own user still gets an answer.
    let ok = Command::new(bucketfs_bin())
        .args(["status", "--json"])
        .arg(&m.path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn secrets_stay_out_of_the_log_at_every_level() {
    use base64::Engine;
    // moto: it takes any session token (SeaweedFS refuses one it did not issue) and SSE-C.
    let moto = common::moto::Moto::start();
    let bucket = "host-secrets";
    moto.create_bucket(bucket);
    let dir = tempfile::tempdir().unwrap();
    let customer: [u8; 32] = pseudo_random(32, 77).try_into().unwrap();
    let key_path = dir.path().join("sse-c.key");
    fs::write(&key_path, customer).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let md5 = {
        use md5::Digest;
        b64.encode(md5::Md5::digest(customer))
    };
    let secrets = [
        ("the SSE-C key", b64.encode(customer)),
        ("the SSE-C key's MD5", md5),
        ("the secret access key", SECRET_KEY.to_string()),
        ("the session token", SESSION_TOKEN.to_string()),
    ];
    for level in ["error", "info", "debug", "trace"] {
        let path = mount_point(&format!("host-secrets-{level}"));
        let log = path.with_extension("log");
        let out = bucketfs_command(bucket, &path, &["--endpoint-url", &moto.endpoint])
            .arg("--sse-c-key-file")
            .arg(&key_path)
            .args(["--log-level", level, "--log-file"])
            .arg(&log)
            .envs(moto.service_env())
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let m = MountGuard(path.clone());
        let name = format!("f-{level}.txt");
        fs::write(path.join(&name), b"hello").unwrap();
        assert_eq!(fs::read(path.join(&name)).unwrap(), b"hello");
        fs::rename(path.join(&name), path.join(format!("g-{level}.txt"))).unwrap();
        drop(m);
        let text = fs::read_to_string(&log).unwrap_or_default() + &stderr;
        if level == "debug" || level == "trace" {
            // The SDK's own trace events are capped (they print requests); its debug ones stay.
            assert!(
                text.contains(" DEBUG ") && text.contains("aws_smithy_runtime::client"),
                "not at {level} level"
            );
        }
        if level == "error" || level == "info" {
            // The caps on the SDK's targets never raise them above the level asked for.
            assert!(!text.contains(" DEBUG "), "debug lines at {level}");
        }
        for (what, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} at {level}");
        }
    }
}

/// A session token moto accepts (it checks no signature), sent in every
/// request's `x-amz-security-token` header.
const SESSION_TOKEN: &str = "FQoGZXIvYXdzEXAMPLEsessiontokenTHATmustNEVERbeLOGGED";

/// Unmounts a mount made by hand when dropped.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let pid = daemon_pid_for(&self.0);
        let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
        if let Some(pid) = pid {
            wait_gone(pid, std::time::Duration::from_secs(10));
        }
    }
}
