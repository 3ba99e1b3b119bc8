//! Build store and filesystem, mount, report readiness, serve until unmounted or signalled.
//!
//! Non-obvious problems:
//! 1. Without `--foreground` the command must return only once the mount is live (exit 0) or has
//!    failed (non-zero, one line on stderr). We fork before any thread exists; the child mounts and
//!    writes "OK" or the error through a pipe that the parent waits on.
//! 2. Checks that need no network (mount point, /dev/fuse, fusermount3, an existing or dead
//!    mount) run before the fork, so their messages reach the terminal directly.
//! 3. The bucket is checked with HeadBucket before mounting, so a wrong bucket, refused
//!    credentials or an unreachable endpoint fail the command instead of every later `ls`.
//! 4. An external `umount` ends fuser's session loop; SIGTERM, SIGINT and SIGHUP unmount from a
//!    signal task, which ends it the same way; both exit 0. Before unmounting, the signal task
//!    commits every file still open for writing (bounded by `SHUTDOWN_COMMIT_TIMEOUT`); a mount
//!    still busy is then detached lazily, and the daemon exits once its last file is closed.
//! 5. Under systemd: with `NOTIFY_SOCKET` set (a `Type=notify` service) the daemon sends
//!    READY=1 once mounted and STOPPING=1 at a signal. When stderr is the journal
//!    (`JOURNAL_STREAM`), the background daemon keeps it for its logs instead of /dev/null.
//! 6. systemd starts mount helpers without HOME; the AWS config and credential files are found
//!    under the user's home directory from the password database then.
//! 7. Under `x-systemd.automount`, only systemd's process group may walk onto the autofs
//!    placeholder while the mount is pending; the background daemon calls setsid() only once
//!    mounted, and nothing before the mount opens or statx()es the mount point (see `mount`).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::config::Config;
use crate::mount;

pub mod fdstore;
mod serve;
pub mod takeover;

use serve::serve;
use takeover::{Successor, STATE_FORMAT};

/// Allocations from this size up come straight from mmap and go back to the kernel when freed.
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Where a daemon's mount comes from.
#[derive(Debug)]
enum Source {
    /// Mounted now.
    Mount,
    /// Taken over from the daemon serving it (`bucketfs takeover`).
    Takeover(Successor),
    /// Left in systemd's fd store by a daemon that died (daemon/fdstore.rs).
    Restart(fdstore::Stored),
}

/// Closes the descriptors a daemon inherited, but those systemd passed (fdstore.rs, 7.);
/// first thing in `main`, before anything is opened.
pub fn close_inherited() {
    fdstore::close_inherited();
}

/// Mounts according to `config` and serves until unmounted; under systemd, resumes the mount
/// a crashed daemon of the same service left in the fd store instead.
pub fn run(config: Config) -> Result<()> {
    match fdstore::take_stored() {
        Some(stored) => run_with(config, Source::Restart(stored)),
        None => run_with(config, Source::Mount),
    }
}

/// Takes the mount at `mountpoint` over from the daemon serving it (daemon/takeover.rs) and
/// serves it with this binary, in the background unless `foreground`.
pub fn take_over(mountpoint: &Path, foreground: bool) -> Result<()> {
    let successor = Successor::connect(mountpoint)?;
    let offer = successor.offer().clone();
    if offer.format != STATE_FORMAT {
        successor.refuse("unknown state format");
        bail!(
            "the running daemon (bucketfs {}) keeps its state in format {}, this bucketfs reads format {STATE_FORMAT}: not taking over; it keeps serving (unmount and mount again to upgrade)",
            offer.version,
            offer.format
        );
    }
    for (name, value) in &offer.env {
        // No thread exists yet: nothing reads the environment meanwhile.
        std::env::set_var(name, value);
    }
    let config = crate::cli::parse_args(&offer.args)
        .map_err(|e| e.to_string())
        .and_then(|args| args.into_config())
        .map_err(|e| {
            successor.refuse("options not understood");
            anyhow!(
                "cannot read the running daemon's options ({}): not taking over; it keeps serving",
                e.trim()
            )
        });
    let mut config = config?;
    config.daemon.foreground = foreground;
    run_with(config, Source::Takeover(successor))
}

fn run_with(config: Config, source: Source) -> Result<()> {
    return_big_buffers_to_kernel();
    set_home_if_missing();
    if matches!(source, Source::Mount) {
        preflight(&config.daemon.mountpoint)?;
    }
    if !config.daemon.foreground {
        // A background daemon may log nowhere: the notices go to the terminal that started it.
        for notice in &config.daemon.notices {
            eprintln!("bucketfs: warning: {notice}");
        }
    }
    if config.daemon.foreground {
        init_logging(&config, true)?;
        return serve(config, &mut None, source);
    }
    let journal = stderr_is_journal();
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (no runtime, no logger), so the child may continue.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(read_end);
            quiet_stdio(journal)?;
            init_logging(&config, journal)?;
            std::panic::set_hook(Box::new(|info| tracing::error!("bug: {info}")));
            let mut ready = Some(std::fs::File::from(write_end));
            if let Err(e) = serve(config, &mut ready, source) {
                if let Some(mut pipe) = ready {
                    let _ = write!(pipe, "{e:#}");
                }
                tracing::error!("{e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        _child => {
            drop(write_end);
            drop(source);
            let mut answer = String::new();
            std::fs::File::from(read_end)
                .read_to_string(&mut answer)
                .context("waiting for the daemon")?;
            match answer.as_str() {
                "OK" => Ok(()),
                "" => Err(anyhow!(
                    "the daemon exited during start-up (see --log-file)"
                )),
                msg => Err(anyhow!("{msg}")),
            }
        }
    }
}

/// Points stdio at /dev/null (stderr too, unless it is the journal), so the daemon holds no
/// pipe of whoever started it. (It leaves the caller's session once mounted: see `serve`.)
fn quiet_stdio(keep_stderr: bool) -> Result<()> {
    // SAFETY: plain syscalls on descriptors we own; /dev/null is opened just before.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null < 0 {
            bail!("open /dev/null: {}", std::io::Error::last_os_error());
        }
        let last = if keep_stderr { 2 } else { 3 };
        for fd in 0..last {
            libc::dup2(null, fd);
        }
        if null > 2 {
            libc::close(null);
        }
    }
    Ok(())
}

/// Write parts and cache blocks (1 MiB and up) are freed on other threads than allocated them.
/// glibc raises its mmap threshold to 32 MiB after the first such free, and later buffers then
/// come from per-thread arenas that keep freed memory resident: four concurrent 1 GiB writes
/// peaked at 366 MiB with the default 256 MiB write budget, 183 MiB with a fixed threshold.
fn return_big_buffers_to_kernel() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning; it is called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// True when stderr is systemd's journal stream (`JOURNAL_STREAM` names its device and inode).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    // SAFETY: fstat writes into the zeroed struct we pass; fd 2 may be closed (then it fails).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

/// systemd runs mount units and services without HOME; the AWS SDK looks for `~/.aws` there.
fn set_home_if_missing() {
    if std::env::var_os("HOME").is_some() {
        return;
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; it is read at once, and no
    // other thread exists yet (so neither it nor set_var races with anything).
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_dir.is_null() {
            let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
            use std::os::unix::ffi::OsStrExt;
            std::env::set_var("HOME", std::ffi::OsStr::from_bytes(dir.to_bytes()));
        }
    }
}

/// Tells systemd about our state when it waits for it (`Type=notify` sets NOTIFY_SOCKET).
fn notify_systemd(state: &str) {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = notify_at(&socket, state) {
            let shown = socket.to_string_lossy();
            tracing::warn!("cannot notify systemd ({state}) at {shown}: {e}");
        }
    }
}

/// Sends `state` to the notification socket `socket`: a path, or `@name` in the abstract
/// namespace.
fn notify_at(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Targets of the SDK and its HTTP stack, whose trace events print requests with their
/// headers (a session token, an SSE-C key and its MD5): capped at debug whatever the level.
const SECRET_BEARING_TARGETS: &[&str] = &["aws_", "hyper", "h2", "rustls", "tower"];

/// A filter after the user's that only removes: the trace events of
/// `SECRET_BEARING_TARGETS` (target prefixes), whatever level was asked for.
fn secrets_capped() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(
            SECRET_BEARING_TARGETS
                .iter()
                .map(|t| (*t, LevelFilter::DEBUG)),
        )
}

/// Logs to stderr at info (`bucketfs csi`, which runs in the foreground under its
/// supervisor), secret-bearing targets capped as for the daemon.
pub fn init_plain_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::new("info");
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_filter(filter)
        .with_filter(secrets_capped());
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

fn init_logging(config: &Config, foreground: bool) -> Result<()> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // fuser warns "Failed to umount filesystem" after every external unmount (the mount is
    // already gone); keep its session module quiet unless the user asks for fuser's logs.
    let mut level = config.daemon.log_level.clone();
    if !level.contains("fuser") {
        level.push_str(",fuser::session=error");
    }
    let filter =
        tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| anyhow!("--log-level: {e}"))?;
    let (writer, ansi) = match &config.daemon.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None if foreground => (BoxMakeWriter::new(std::io::stderr), true),
        None => return Ok(()),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer)
        .with_filter(filter)
        .with_filter(secrets_capped());
    tracing_subscriber::registry().with(layer).init();
    Ok(())
}

/// The error a look at a mount point whose daemon died gives: ENOTCONN, or ECONNABORTED for
/// a look the kernel had queued while the daemon was dying.
fn dead_mount(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
}

/// Checks that need no network, with messages that name the fix.
pub fn preflight(mountpoint: &Path) -> Result<()> {
    let shown = mountpoint.display();
    // Not std::fs::metadata: its statx would trigger systemd's automount on the mount point,
    // which waits for this very mount.
    match mount::is_dir_no_automount(mountpoint) {
        Ok(true) => {}
        Ok(false) => bail!("mount point {shown} is not a directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mount point {shown} does not exist: create it first (mkdir -p {shown})")
        }
        // Under systemd the service's own earlier run left it (its fd store released after a
        // crash that was not restarted): cleared, as `ExecStopPost=fusermount3 -uz` used to.
        Err(e)
            if dead_mount(&e)
                && fdstore::under_systemd()
                && mounted_fstype(mountpoint).as_deref() == Some("fuse.bucketfs") =>
        {
            eprintln!("bucketfs: {shown} was a dead bucketfs mount: detaching it and mounting again");
            mount::unmount(mountpoint).with_context(|| format!("detaching the dead mount {shown}"))?;
        }
        Err(e) if dead_mount(&e) => bail!(
            "mount point {shown} is a dead FUSE mount (Transport endpoint is not connected) left by \
             a daemon that stopped: clean it with `fusermount3 -u {shown}`, then mount again"
        ),
        Err(e) => bail!("mount point {shown}: {e}"),
    }
    if let Some(fstype) = mounted_fstype(mountpoint) {
        if fstype.starts_with("fuse") {
            bail!(
                "{shown} is already mounted ({fstype}): unmount it first (fusermount3 -u {shown})"
            );
        }
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: load the FUSE module (modprobe fuse) or pass the device into the container");
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && find_in_path("fusermount3").is_none() && find_in_path("fusermount").is_none() {
        bail!("fusermount3 is missing: install the fuse3 package (apt-get install fuse3)");
    }
    Ok(())
}

fn find_in_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The filesystem type mounted exactly at `mountpoint`, from /proc/self/mountinfo.
pub fn mounted_fstype(mountpoint: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = mountpoint.to_str()?;
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = unescape_mountinfo(left.split(' ').nth(4)?);
        (point == wanted).then(|| right.split(' ').next().unwrap_or("").to_string())
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn readiness_reaches_path_and_abstract_notify_sockets() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let by_path = UnixDatagram::bind(&path).unwrap();
        notify_at(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("bucketfs-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_socket = UnixDatagram::bind_addr(&addr).unwrap();
        notify_at(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = abstract_socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        let missing = dir.path().join("nobody-listens");
        assert!(notify_at(missing.as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn missing_mount_point_names_the_fix() {
        let err = preflight(Path::new("/nonexistent/bucketfs-test")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
