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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

use anyhow::{anyhow, bail, Context, Result};
use fuser::{MountOption, SessionACL};

use crate::cache::disk::DiskCache;
use crate::cache::BlockCache;
use crate::config::{Config, NotifySource, StoreConfig};
use crate::fs::{Fs, Writes};
use crate::fuse::{FuseAdapter, KernelNotifier};
use crate::metrics::{self, RequestStats};
use crate::mount::{self, MountSpec};
use crate::notify::sqs::{queue_name, SqsQueue, Subscription};
use crate::notify::{Consumer, EventQueue, Sink, Ttls};
use crate::status::{self, MountInfo, StatusSocket};
use crate::store::s3::{load_shared, with_region, S3Store};
use crate::store::{ObjectStore, StoreError, StoreErrorKind};
use crate::upload::staging::StagingDir;
use crate::upload::{UploadTuning, WriteBudget};

/// How long the start-up bucket check may take, retries included, before the mount gives up.
const STARTUP_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a signal waits for open files to be committed before unmounting anyway.
const SHUTDOWN_COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the aborts of failed uploads may still run after the unmount: within systemd's
/// default 90 s stop timeout together with the commits above.
const ABORT_WAIT: Duration = Duration::from_secs(20);

/// Threads of the tokio runtime: S3 work is I/O-bound, a few more threads than cores keep
/// replies flowing while some tasks assemble blocks.
const RUNTIME_THREADS: usize = 4;

/// How often the state gauges of `--metrics-addr` are refreshed.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Allocations from this size up come straight from mmap and go back to the kernel when freed.
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Mounts according to `config` and serves until unmounted.
pub fn run(config: Config) -> Result<()> {
    return_big_buffers_to_kernel();
    set_home_if_missing();
    preflight(&config.daemon.mountpoint)?;
    if !config.daemon.foreground {
        // A background daemon may log nowhere: the notices go to the terminal that started it.
        for notice in &config.daemon.notices {
            eprintln!("bucketfs: warning: {notice}");
        }
    }
    if config.daemon.foreground {
        init_logging(&config, true)?;
        return serve(config, &mut None);
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
            if let Err(e) = serve(config, &mut ready) {
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
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
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
fn mounted_fstype(mountpoint: &Path) -> Option<String> {
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

/// Turns a failed start-up bucket check into a message that says what to fix.
fn startup_message(store: &StoreConfig, err: &StoreError) -> String {
    let bucket = &store.bucket;
    let endpoint = store.endpoint_url.as_deref().unwrap_or("AWS S3");
    match err.kind {
        StoreErrorKind::NoSuchBucket | StoreErrorKind::NotFound => {
            format!("bucket '{bucket}' does not exist at {endpoint}: check the bucket name (and --region, --endpoint-url)")
        }
        StoreErrorKind::AccessDenied => format!(
            "access to bucket '{bucket}' denied ({}): check the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / --profile) and their permissions",
            err.message
        ),
        StoreErrorKind::NoCredentials => format!(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use --profile, SSO or an instance role ({})",
            err.message
        ),
        StoreErrorKind::Unreachable | StoreErrorKind::Timeout => format!(
            "cannot reach the S3 endpoint {endpoint}: check --endpoint-url, --region and the network ({})",
            err.message
        ),
        _ => format!("cannot use bucket '{bucket}' at {endpoint}: {}", err.message),
    }
}

/// The bucket a mount reads, as the records it keeps on disk name it: endpoint and bucket.
fn bucket_id(config: &Config) -> String {
    format!(
        "{}\0{}",
        config.store.endpoint_url.as_deref().unwrap_or("aws"),
        config.store.bucket
    )
}

/// Checks the bucket, mounts, reports readiness, and runs until unmounted.
/// `ready` is the start-up pipe of a background daemon: it gets "OK" and is closed once the mount
/// is live, and stays open for the caller to report an error otherwise.
fn serve(config: Config, ready: &mut Option<std::fs::File>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .thread_name("bucketfs-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    for notice in &config.daemon.notices {
        tracing::warn!("{notice}");
    }
    let (mut shared, region_given) = rt.block_on(load_shared(&config.store));
    if let Some(addr) = config.daemon.metrics_addr {
        let _context = rt.enter();
        metrics::serve(addr).map_err(|e| anyhow!("{e}"))?;
        tracing::info!("Prometheus metrics at http://{addr}/metrics");
    }
    let requests = Arc::new(RequestStats::default());
    let mut s3 = S3Store::counted(&shared, &config.store, Arc::clone(&requests));
    // The bucket's region, from the startup check itself; a store for another region is
    // rebuilt and checked again (see store::s3, 8.).
    let located = startup_check(&rt, &config.store, s3.locate())?;
    let in_use = shared.region().map(ToString::to_string).unwrap_or_default();
    let source = match located {
        Some(region) if region != in_use => {
            if region_given {
                tracing::warn!(
                    "the bucket {} is in {region}, not in {in_use} as configured: using {region}",
                    config.store.bucket
                );
            }
            shared = with_region(shared, &region);
            s3 = S3Store::counted(&shared, &config.store, Arc::clone(&requests));
            startup_check(&rt, &config.store, s3.head_bucket())?;
            "the bucket's"
        }
        _ if region_given => "configured",
        Some(_) => "the bucket's",
        None => "the default: none configured, and the server names none",
    };
    tracing::info!(
        "region {} ({source})",
        shared.region().map(ToString::to_string).unwrap_or_default()
    );
    match config.store.checksum {
        Some(checksum) => {
            tracing::info!("uploads carry a {checksum:?} checksum the server verifies")
        }
        None => tracing::info!(
            "uploads carry no checksum (--checksum off, or auto on an endpoint other than AWS's)"
        ),
    }
    let store: Arc<dyn ObjectStore> = Arc::new(s3);

    let up = &config.upload;
    let staging = StagingDir::new(&up.staging_dir, up.staging_limit).map_err(|e| {
        anyhow!("cannot use the staging directory: {e} (give a directory of your own with --staging-dir)")
    })?;
    let writes = Writes {
        tuning: UploadTuning {
            part_size: up.part_size,
            concurrency: up.concurrency,
        },
        budget: WriteBudget::new(up.budget),
        staging,
        tasks: TaskTracker::new(),
        owed_record: Some(format!("{}\0{}", bucket_id(&config), config.fs.prefix)),
    };
    let disk = match &config.cache.disk {
        Some(disk) => {
            let opened =
                DiskCache::open(disk, &bucket_id(&config), config.cache.block_size).map_err(|e| {
                    anyhow!("cannot use the disk cache: {e} (give a directory of your own with --disk-cache)")
                })?;
            tracing::info!(
                dir = %disk.dir.display(),
                size = disk.size,
                "disk cache on"
            );
            let opened = Arc::new(opened);
            opened.trim_in_background();
            Some(opened)
        }
        None => None,
    };
    let cache = Arc::new(BlockCache::new(Arc::clone(&store), &config.cache).with_disk(disk));
    let fs = Arc::new(Fs::new(store, cache, config.fs.clone(), writes));
    // Deletes an earlier run owed at a last close, in the background (the mount is not held).
    let owed = Arc::clone(&fs);
    fs.tasks().spawn_on(
        async move { owed.settle_earlier_deletes().await },
        rt.handle(),
    );
    let adapter = FuseAdapter::new(Arc::clone(&fs), rt.handle().clone());

    let mut fuse_config = fuser::Config::default();
    fuse_config.acl = if config.daemon.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(config.daemon.fuse_threads);
    fuse_config.clone_fd = true;

    // Signal handlers go in before the mount: a SIGTERM right after readiness must unmount, not
    // kill the process and leave a dead mount behind.
    let signals = rt.block_on(async { install_signal_handlers() })?;
    // A queue that is missing or forbidden fails the command before anything is mounted.
    let notifications = match rt.block_on(async {
        tokio::time::timeout(STARTUP_CHECK_TIMEOUT, Notifications::open(&shared, &config)).await
    }) {
        Ok(result) => result.map_err(|e| anyhow!("{e}"))?,
        Err(_) => bail!("the notification queue did not answer within {STARTUP_CHECK_TIMEOUT:?}"),
    };
    let mountpoint = &config.daemon.mountpoint;
    let resolved = status::mount_path(mountpoint);
    let (session, fuser_unmounter) = match start_session(&config, adapter, fuse_config) {
        Ok(started) => started,
        Err(e) => {
            if let Some(n) = notifications {
                rt.block_on(n.close());
            }
            return Err(e);
        }
    };
    let stop_notifications = tokio_util::sync::CancellationToken::new();
    let mut notify_stats = None;
    if let Some(n) = &notifications {
        let pushed = match KernelNotifier::start(session.notifier()) {
            Ok(kernel) => {
                fs.attach_kernel(Arc::new(kernel));
                (config.fs.metadata_ttl, config.fs.negative_ttl)
            }
            Err(e) => {
                // Events still reach the mount's caches, but not the kernel's: entries it was
                // given must expire by the TTL used without notifications.
                let (ttl, negative) = config.notify.fallback_ttls;
                tracing::warn!("cannot start the kernel invalidation thread: {e}; metadata trusted for {ttl:?}, as without notifications");
                fs.set_ttls(ttl, negative);
                (ttl, negative)
            }
        };
        let consumer = Consumer::new(
            Arc::clone(&n.queue),
            Arc::clone(&fs) as Arc<dyn Sink>,
            config.store.bucket.clone(),
            Ttls {
                pushed,
                fallback: config.notify.fallback_ttls,
            },
        );
        notify_stats = Some(consumer.stats());
        rt.spawn(consumer.run(stop_notifications.clone()));
        tracing::info!(
            queue = n.queue.name(),
            "notifications on: metadata trusted for {:?}",
            pushed.0
        );
    }
    let info = MountInfo {
        mountpoint: resolved,
        source: config.daemon.fs_name.clone(),
        endpoint: config
            .store
            .endpoint_url
            .clone()
            .unwrap_or_else(|| "AWS".to_string()),
        region: shared
            .region()
            .map_or_else(|| "(none)".to_string(), ToString::to_string),
        started: std::time::SystemTime::now(),
        requests,
        notifications: notify_stats,
    };
    let _status = start_status(&rt, info, &fs);
    if config.daemon.metrics_addr.is_some() {
        let fs = Arc::clone(&fs);
        rt.spawn(async move {
            let mut every = tokio::time::interval(METRICS_INTERVAL);
            loop {
                every.tick().await;
                metrics::publish(&fs.activity());
            }
        });
    }
    tracing::info!(
        bucket = %config.store.bucket,
        prefix = %config.fs.prefix,
        mountpoint = %mountpoint.display(),
        "mounted"
    );
    if let Some(mut pipe) = ready.take() {
        // Only now leave the caller's session and process group, so the daemon outlives the
        // terminal. Not before the mount: systemd's automount lets only its own process group
        // (which mount.fuse3 and we inherit) walk onto its placeholder while a mount is pending;
        // anyone else waits for that mount, which would be waiting for us.
        // SAFETY: setsid has no memory effects; it fails only for a group leader, which a
        // forked child is not.
        unsafe { libc::setsid() };
        let _ = pipe.write_all(b"OK");
    }
    notify_systemd(&format!(
        "READY=1\nSTATUS=Mounted {} at {}",
        config.daemon.fs_name,
        mountpoint.display()
    ));

    let path = mountpoint.to_path_buf();
    let tasks = fs.tasks().clone();
    rt.spawn(async move {
        wait_for_signal(signals).await;
        notify_systemd("STOPPING=1");
        tracing::info!(
            "signal received: committing open files, then unmounting {}",
            path.display()
        );
        match tokio::time::timeout(SHUTDOWN_COMMIT_TIMEOUT, fs.stop()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!("{n} open files could not be committed (see above)"),
            Err(_) => tracing::warn!(
                "open files not all committed within {SHUTDOWN_COMMIT_TIMEOUT:?}; unmounting anyway"
            ),
        }
        let _ = tokio::task::spawn_blocking(move || {
            // fuser's unmount does not fall back to a lazy one when files are still open.
            let done = match fuser_unmounter {
                Some(mut unmounter) => unmounter.unmount().or_else(|_| mount::unmount(&path)),
                None => mount::unmount(&path),
            };
            if let Err(e) = done {
                tracing::warn!("unmount of {} failed: {e}", path.display());
            }
        })
        .await;
    });
    // Within the runtime's context: writers dropped with the session abort their uploads on
    // the runtime (see upload::Upload's Drop).
    let result = {
        let _context = rt.enter();
        session.run()
    };
    stop_notifications.cancel();
    if let Some(n) = notifications {
        rt.block_on(n.close());
    }
    // Aborts of failed or cancelled uploads still running: give them a bounded time, so a
    // stop leaves no multipart upload behind unless the server stays away.
    tasks.close();
    if rt
        .block_on(async { tokio::time::timeout(ABORT_WAIT, tasks.wait()).await })
        .is_err()
    {
        tracing::warn!(
            "{} upload aborts still failing after {ABORT_WAIT:?}: the bucket's AbortIncompleteMultipartUpload lifecycle rule will remove them",
            tasks.len()
        );
    }
    tracing::info!("unmounted; exiting");
    rt.shutdown_timeout(Duration::from_secs(5));
    result.context("FUSE session ended with an error")
}

/// Runs a startup check of the bucket within `STARTUP_CHECK_TIMEOUT`; a failure becomes the
/// one line that names the fix.
fn startup_check<T>(
    rt: &tokio::runtime::Runtime,
    store: &StoreConfig,
    check: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T> {
    rt.block_on(async { tokio::time::timeout(STARTUP_CHECK_TIMEOUT, check).await })
        .unwrap_or_else(|_| {
            Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("no answer in {STARTUP_CHECK_TIMEOUT:?}"),
            ))
        })
        .map_err(|e| anyhow!("{}", startup_message(store, &e)))
}

/// Serves the mount's status socket (`bucketfs status`); a mount without one still works,
/// so a failure is only logged.
fn start_status(
    rt: &tokio::runtime::Runtime,
    info: MountInfo,
    fs: &Arc<Fs>,
) -> Option<StatusSocket> {
    let uid = crate::owned_dir::euid();
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    let dir = status::socket_dir(uid, runtime_dir.as_deref());
    let _context = rt.enter();
    match StatusSocket::start(&dir, info, Arc::clone(fs)) {
        Ok(socket) => {
            tracing::debug!(socket = %socket.path().display(), "status socket up");
            Some(socket)
        }
        Err(e) => {
            tracing::warn!(
                "no status socket in {} ({e}); `bucketfs status` cannot see this mount",
                dir.display()
            );
            None
        }
    }
}

/// How long unmounting waits to unsubscribe and delete a queue of its own.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The queue events come from, and the subscription made for it (`--notify-topic`).
struct Notifications {
    queue: Arc<dyn EventQueue>,
    subscription: Option<Subscription>,
}

impl Notifications {
    /// Opens the configured queue, or makes and subscribes one of our own; `None` when
    /// notifications are off.
    async fn open(shared: &aws_config::SdkConfig, config: &Config) -> Result<Option<Self>, String> {
        match &config.notify.source {
            NotifySource::Off => Ok(None),
            NotifySource::Queue(url) => Ok(Some(Self {
                queue: Arc::new(SqsQueue::open(shared, url).await?),
                subscription: None,
            })),
            NotifySource::Topic(topic) => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "host".into());
                let mount = format!(
                    "{}:{}@{}",
                    config.store.bucket,
                    config.fs.prefix,
                    config.daemon.mountpoint.display()
                );
                let subscription =
                    Subscription::create(shared, topic, &queue_name(&host, &mount)).await?;
                tracing::info!(
                    topic,
                    queue = subscription.queue().name(),
                    "subscribed a queue of our own"
                );
                Ok(Some(Self {
                    queue: Arc::new(subscription.queue().clone()),
                    subscription: Some(subscription),
                }))
            }
        }
    }

    /// Unsubscribes and deletes a queue of our own.
    async fn close(self) {
        let Some(subscription) = self.subscription else {
            return;
        };
        match tokio::time::timeout(UNSUBSCRIBE_TIMEOUT, subscription.remove()).await {
            Ok(Ok(())) => {
                tracing::info!("unsubscribed and deleted {}", subscription.queue().name())
            }
            Ok(Err(e)) => tracing::warn!("{e}: delete the queue by hand"),
            Err(_) => tracing::warn!(
                "unsubscribing {} took over {UNSUBSCRIBE_TIMEOUT:?}: delete it by hand",
                subscription.queue().name()
            ),
        }
    }
}

/// Mounts and opens the FUSE session: directly as root, else through fusermount3.
fn start_session(
    config: &Config,
    adapter: FuseAdapter,
    mut fuse_config: fuser::Config,
) -> Result<(fuser::Session<FuseAdapter>, Option<fuser::SessionUnmounter>)> {
    let mountpoint = &config.daemon.mountpoint;
    let cannot_mount = || format!("cannot mount at {}", mountpoint.display());
    // SAFETY: geteuid cannot fail.
    let started = if unsafe { libc::geteuid() } == 0 {
        let spec = MountSpec {
            fs_name: &config.daemon.fs_name,
            read_only: config.fs.read_only,
            allow_other: config.daemon.allow_other,
        };
        let fd = mount::mount_fuse(mountpoint, &spec).with_context(cannot_mount)?;
        let acl = fuse_config.acl;
        match fuser::Session::from_fd(adapter, fd, acl, fuse_config) {
            Ok(session) => (session, None),
            Err(e) => {
                let _ = mount::unmount(mountpoint);
                return Err(e).with_context(cannot_mount);
            }
        }
    } else {
        // Through fusermount3, with the same options `mount::mount_fuse` gives the kernel.
        let mut options = vec![
            MountOption::FSName(config.daemon.fs_name.clone()),
            // fuser's own Subtype option is only used by fusermount; as a kernel option the
            // mount shows as `fuse.bucketfs` in /proc/mounts, as mount(8) and systemd expect.
            MountOption::CUSTOM("subtype=bucketfs".to_string()),
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        if config.fs.read_only {
            options.push(MountOption::RO);
        }
        fuse_config.mount_options = options;
        let mut session =
            fuser::Session::new(adapter, mountpoint, &fuse_config).with_context(cannot_mount)?;
        let unmounter = session.unmount_callable();
        (session, Some(unmounter))
    };
    Ok(started)
}

fn install_signal_handlers() -> Result<Vec<tokio::signal::unix::Signal>> {
    use tokio::signal::unix::{signal, SignalKind};
    [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
    ]
    .into_iter()
    .map(|kind| signal(kind).context("installing signal handlers"))
    .collect()
}

async fn wait_for_signal(mut signals: Vec<tokio::signal::unix::Signal>) {
    let waits = signals.iter_mut().map(|s| Box::pin(s.recv()));
    futures::future::select_all(waits).await;
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
