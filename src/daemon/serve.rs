//! The steps of a mount's life, in order: connect to the bucket (`connect`), build the
//! filesystem (`build_fs`), open the notification queue, start the FUSE session, consume the
//! queue, serve status and metrics, report readiness, run the session until unmounted or
//! signalled (`stop_on_signal`), and wait for upload aborts (`wait_for_aborts`). `mod.rs`
//! holds what comes before (options, fork, logging, pre-flight checks).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

use anyhow::{anyhow, bail, Context, Result};
use fuser::{MountOption, SessionACL};

use crate::cache::disk::DiskCache;
use crate::cache::BlockCache;
use crate::config::{Config, NotifySource, StoreConfig};
use crate::fs::snapshot::Snapshots;
use crate::fs::{Fs, FsState, Writes};
use crate::fuse::handover;
use crate::fuse::handover::{KernelInit, Unanswered};
use crate::fuse::{AdapterPort, FuseAdapter, KernelNotifier};
use crate::metrics;
use crate::mount::{self, MountSpec};
use crate::notify::sqs::{queue_name, SqsQueue, Subscription};
use crate::notify::{Consumer, EventQueue, Sink, Ttls};
use crate::status::{self, MountInfo, StatusSocket, TakeoverPort};
use crate::store::requests::RequestStats;
use crate::store::s3::{load_shared, with_region, S3Store};
use crate::store::{ObjectStore, StoreError, StoreErrorKind};
use crate::upload::staging::StagingDir;
use crate::upload::{UploadTuning, WriteBudget};
use std::os::fd::OwnedFd;

use super::fdstore::{self, CrashState, StateFile, Stored};
use super::notify_systemd;
use super::takeover::{Predecessor, Successor};
use super::Source;

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

/// What the disk cache keys this mount's blocks by: the endpoint and bucket and, for an SSE-C
/// mount, a digest of its key (not the key, not its MD5), so that a mount without that key
/// never reads what a mount with it cached.
fn disk_namespace(config: &Config) -> String {
    let mut namespace = bucket_id(config);
    if let Some(key) = &config.store.headers.customer_key {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("bucketfs sse-c\0{}", key.md5_b64));
        namespace.push_str("\0sse-c:");
        namespace.extend(digest.iter().map(|b| format!("{b:02x}")));
    }
    namespace
}

/// Checks the bucket, mounts, reports readiness, and runs until unmounted.
/// `ready` is the start-up pipe of a background daemon: it gets "OK" and is closed once the mount
/// is live, and stays open for the caller to report an error otherwise.
/// `source` says whether to mount, take a live mount over, or resume one after a crash.
pub(super) fn serve(
    config: Config,
    ready: &mut Option<std::fs::File>,
    source: Source,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .thread_name("bucketfs-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    for notice in &config.daemon.notices {
        tracing::warn!("{notice}");
    }
    let (shared, store, requests) = connect(&rt, &config)?;
    // A successor settles no earlier deletes: they belong to handles still open (fs/state.rs).
    let fs = build_fs(&rt, &config, store, matches!(source, Source::Mount))?;
    let adapter = FuseAdapter::new(Arc::clone(&fs), rt.handle().clone());
    let port = adapter.port();
    // The options a successor mounts with: ours, as we were given them.
    let mount_args = match &source {
        Source::Takeover(successor) => successor.offer().args.clone(),
        _ => std::env::args().collect(),
    };
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
    if let Some((queue, retention)) = notifications.as_ref().and_then(|n| n.kept.as_ref()) {
        fs.watch_queue(queue, *retention);
    }
    let fuse_settings = fuse_config(&config);
    let started = match source {
        Source::Takeover(successor) => {
            resume_session(&rt, &fs, &port, adapter, fuse_settings, successor)
                .map(|(session, kept)| (session, None, kept.map(StateFile::adopt)))
        }
        Source::Restart(stored) => recover_session(&rt, &fs, &port, adapter, fuse_settings, stored)
            .map(|(session, kept)| (session, None, kept)),
        Source::Mount => start_session(&config, adapter, fuse_settings)
            .map(|(session, unmounter)| (session, unmounter, None)),
    };
    let (session, fuser_unmounter, kept_state) = match started {
        Ok(started) => started,
        Err(e) => {
            if let Some(n) = notifications {
                rt.block_on(n.close());
            }
            return Err(e);
        }
    };
    let stop_notifications = tokio_util::sync::CancellationToken::new();
    // Notifications and the snapshot's revalidation tell the kernel what changed; the bound
    // of metadata memory asks it to forget directories (fs/meta.rs, 9.).
    let kernel = attach_kernel(&fs, &session);
    rt.spawn(Fs::hold_memory_bound(Arc::downgrade(&fs)));
    let notify_stats = notifications
        .as_ref()
        .map(|n| consume_notifications(&rt, &config, n, &fs, kernel, stop_notifications.clone()));
    let info = MountInfo {
        mountpoint: status::mount_path(&config.daemon.mountpoint),
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
    let dev = handover::connection(&session);
    let crash_state = dev
        .as_ref()
        .ok()
        .and_then(|dev| keep_for_restart(&fs, &port, dev, kept_state));
    let predecessor = match dev {
        Ok(dev) => Some(Arc::new(Predecessor::new(
            Arc::clone(&fs),
            port,
            dev,
            rt.handle().clone(),
            mount_args,
            crash_state,
        )) as Arc<dyn TakeoverPort>),
        Err(e) => {
            tracing::warn!("no takeover possible for this mount: {e}");
            None
        }
    };
    let _status = start_status(&rt, info, &fs, predecessor);
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
    report_ready(&config, ready);
    let tasks = fs.tasks().clone();
    let saved = Arc::clone(&fs);
    let path = config.daemon.mountpoint.clone();
    rt.spawn(stop_on_signal(signals, fs, fuser_unmounter, path));
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
    wait_for_aborts(&rt, &tasks);
    // What the last second changed (fs/remount.rs, 4.).
    saved.flush_snapshot();
    saved.queue_kept();
    tracing::info!("unmounted; exiting");
    rt.shutdown_timeout(Duration::from_secs(5));
    result.context("FUSE session ended with an error")
}

/// The store: the shared AWS configuration, the bucket checked (and its region found), the
/// metrics endpoint started; returns them with the request counts the store keeps.
fn connect(
    rt: &tokio::runtime::Runtime,
    config: &Config,
) -> Result<(
    aws_config::SdkConfig,
    Arc<dyn ObjectStore>,
    Arc<RequestStats>,
)> {
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
    let located = startup_check(rt, &config.store, s3.locate())?;
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
            startup_check(rt, &config.store, s3.head_bucket())?;
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
    Ok((shared, Arc::new(s3), requests))
}

/// The filesystem over `store`: staging directory, disk and block caches; the deletes an
/// earlier run owed are settled in the background (the mount is not held for them).
fn build_fs(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    store: Arc<dyn ObjectStore>,
    settle_owed: bool,
) -> Result<Arc<Fs>> {
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
        owed_record: Some(format!("{}\0{}", bucket_id(config), config.fs.prefix)),
    };
    let disk = match &config.cache.disk {
        Some(disk) => match DiskCache::open(disk, &disk_namespace(config), config.cache.block_size)
        {
            Ok(opened) => {
                tracing::info!(
                    dir = %disk.dir.display(),
                    size = disk.size,
                    "disk cache on"
                );
                let opened = Arc::new(opened);
                opened.trim_in_background();
                Some(opened)
            }
            Err(e) if disk.by_default => {
                tracing::warn!(
                    "disk cache off: {e} (give a directory of your own with --disk-cache, or \
                     --no-disk-cache to silence this)"
                );
                None
            }
            Err(e) => {
                return Err(anyhow!(
                "cannot use the disk cache: {e} (give a directory of your own with --disk-cache)"
            ))
            }
        },
        None => None,
    };
    let cache = Arc::new(BlockCache::new(Arc::clone(&store), &config.cache).with_disk(disk));
    let fs = Arc::new(Fs::new(store, cache, config.fs.clone(), writes));
    if let Some(meta) = &config.cache.metadata {
        let namespace = format!("{}\0{}", disk_namespace(config), config.fs.prefix);
        let snaps = Snapshots::open(meta, &namespace).map_err(|e| {
            anyhow!("cannot use the metadata cache: {e} (give a directory of your own with --metadata-cache)")
        })?;
        tracing::info!(dir = %meta.dir.display(), size = meta.size, "metadata snapshot on");
        let _context = rt.enter();
        fs.keep_snapshot(snaps);
    }
    if settle_owed {
        let owed = Arc::clone(&fs);
        fs.tasks().spawn_on(
            async move { owed.settle_earlier_deletes().await },
            rt.handle(),
        );
    }
    Ok(fs)
}

/// fuser's session settings: who may enter, how many threads read requests.
fn fuse_config(config: &Config) -> fuser::Config {
    let mut fuse_config = fuser::Config::default();
    fuse_config.acl = if config.daemon.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(config.daemon.fuse_threads);
    // One descriptor shared by every thread: requests read and unanswered at a handover stay
    // queued on it for the successor (fuse/handover.rs, 4.).
    fuse_config.clone_fd = false;
    fuse_config
}

/// Starts the thread that tells the kernel's caches what changed (through `session`); false
/// when it cannot start (logged).
fn attach_kernel(fs: &Arc<Fs>, session: &fuser::Session<FuseAdapter>) -> bool {
    match KernelNotifier::start(session.notifier()) {
        Ok(kernel) => {
            fs.attach_kernel(Arc::new(kernel));
            true
        }
        Err(e) => {
            tracing::warn!("cannot start the kernel invalidation thread: {e}");
            false
        }
    }
}

/// Starts the consumer of the notification queue, the kernel's caches invalidated when
/// `kernel` (the invalidation thread runs); returns its counters.
fn consume_notifications(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    n: &Notifications,
    fs: &Arc<Fs>,
    kernel: bool,
    stop: tokio_util::sync::CancellationToken,
) -> Arc<crate::notify::NotifyStats> {
    let pushed = if kernel {
        (config.fs.metadata_ttl, config.fs.negative_ttl)
    } else {
        // Events still reach the mount's caches, but not the kernel's: entries it was
        // given must expire by the TTL used without notifications.
        let (ttl, negative) = config.notify.fallback_ttls;
        tracing::warn!("metadata trusted for {ttl:?}, as without notifications, since the kernel cannot be told of changes");
        fs.set_ttls(ttl, negative);
        (ttl, negative)
    };
    let consumer = Consumer::new(
        Arc::clone(&n.queue),
        Arc::clone(fs) as Arc<dyn Sink>,
        config.store.bucket.clone(),
        Ttls {
            pushed,
            fallback: config.notify.fallback_ttls,
        },
    );
    let stats = consumer.stats();
    rt.spawn(consumer.run(stop));
    tracing::info!(
        queue = n.queue.name(),
        "notifications on: metadata trusted for {:?}",
        pushed.0
    );
    stats
}

/// The mount is live: tells the waiting parent (background mode) and systemd.
fn report_ready(config: &Config, ready: &mut Option<std::fs::File>) {
    let mountpoint = &config.daemon.mountpoint;
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
}

/// At a signal: commits the open files (bounded), then unmounts, which ends the session.
async fn stop_on_signal(
    signals: Vec<tokio::signal::unix::Signal>,
    fs: Arc<Fs>,
    fuser_unmounter: Option<fuser::SessionUnmounter>,
    path: PathBuf,
) {
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
}

/// Aborts of failed or cancelled uploads still running: given a bounded time, so a stop leaves
/// no multipart upload behind unless the server stays away.
fn wait_for_aborts(rt: &tokio::runtime::Runtime, tasks: &TaskTracker) {
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
    takeover: Option<Arc<dyn TakeoverPort>>,
) -> Option<StatusSocket> {
    let dir = status::own_socket_dir();
    let _context = rt.enter();
    match StatusSocket::start(&dir, info, Arc::clone(fs), takeover) {
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
    /// A queue that outlives the mount (`--notify-queue`) and how long it keeps messages:
    /// what proves saved listings after a remount (fs/remount.rs, 6.).
    kept: Option<(String, Duration)>,
}

impl Notifications {
    /// Opens the configured queue, or makes and subscribes one of our own; `None` when
    /// notifications are off.
    async fn open(shared: &aws_config::SdkConfig, config: &Config) -> Result<Option<Self>, String> {
        match &config.notify.source {
            NotifySource::Off => Ok(None),
            NotifySource::Queue(url) => {
                let queue = SqsQueue::open(shared, url).await?;
                let kept = match queue.retention().await {
                    Ok(retention) => Some((url.clone(), retention)),
                    Err(e) => {
                        tracing::debug!("{e}");
                        None
                    }
                };
                Ok(Some(Self {
                    queue: Arc::new(queue),
                    subscription: None,
                    kept,
                }))
            }
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
                    kept: None,
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

/// Takes the session over from the daemon serving the mount (daemon/takeover.rs): its state
/// imported, the live connection resumed; once the old daemon is gone, the requests it read
/// and never answered are queued again.
fn resume_session(
    rt: &tokio::runtime::Runtime,
    fs: &Arc<Fs>,
    port: &AdapterPort,
    adapter: FuseAdapter,
    fuse_config: fuser::Config,
    successor: Successor,
) -> Result<(fuser::Session<FuseAdapter>, Option<OwnedFd>)> {
    let started = std::time::Instant::now();
    let mut taken = successor.take()?;
    let crash_state = taken.crash_state.take();
    let resumed = (|| {
        let (handles, writers) = (taken.fs.handles(), taken.fs.writers());
        rt.block_on(fs.import(taken.fs, taken.fds))
            .map_err(|e| anyhow!("importing the state: {e}"))?;
        port.adopt_io(taken.io, taken.dev.try_clone()?);
        let session = handover::resume(adapter, taken.dev, &taken.init, fuse_config)
            .context("resuming the FUSE session")?;
        anyhow::Ok((session, handles, writers))
    })();
    let (session, handles, writers) = match resumed {
        Ok(resumed) => resumed,
        Err(e) => {
            successor.refuse(&format!("{e:#}"));
            return Err(e.context("not taking over; the running daemon keeps serving"));
        }
    };
    // Under systemd (ExecReload=bucketfs takeover), this process becomes the service's main
    // one before the old one exits (NotifyAccess=all in the unit).
    notify_systemd(&format!("MAINPID={}", std::process::id()));
    successor.done()?;
    resend_unanswered(&session, &taken.unanswered, false);
    tracing::info!(
        handles,
        writers,
        "took the mount over in {:?}",
        started.elapsed()
    );
    Ok((session, crash_state))
}

/// Queues again the requests the daemon before this one read and never answered; where the
/// kernel cannot (before Linux 6.9), fails them with EIO (`left`: the ones it recorded, and
/// after a crash the numbers just above: fuse/handover.rs, 6.).
fn resend_unanswered(session: &fuser::Session<FuseAdapter>, left: &Unanswered, crashed: bool) {
    let dev = std::os::fd::AsFd::as_fd(session);
    // BUCKETFS_NO_RESEND acts as a kernel without FUSE_NOTIFY_RESEND (docs/RESTART.md).
    let resent = if std::env::var_os("BUCKETFS_NO_RESEND").is_some() {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "resending turned off (BUCKETFS_NO_RESEND)",
        ))
    } else {
        handover::resend(dev)
    };
    if let Err(e) = resent {
        let failed = handover::fail(dev, left, crashed);
        tracing::warn!(
            failed,
            "{e}: the requests the previous daemon had read and not answered fail with EIO"
        );
    }
}

/// Resumes the mount a crashed daemon served, from the connection and the state it left in
/// systemd's fd store (daemon/fdstore.rs): files it had open for writing report EIO, its
/// multipart uploads are aborted, and the requests it had read are queued again.
fn recover_session(
    rt: &tokio::runtime::Runtime,
    fs: &Arc<Fs>,
    port: &AdapterPort,
    adapter: FuseAdapter,
    fuse_config: fuser::Config,
    stored: Stored,
) -> Result<(fuser::Session<FuseAdapter>, Option<StateFile>)> {
    let (file, state) = fdstore::read_newest(stored.states);
    let left = file
        .as_ref()
        .and_then(StateFile::unanswered)
        .unwrap_or_default();
    let state = state.unwrap_or_else(|why| {
        tracing::warn!(
            "the crashed daemon left no usable state ({why}): its open files give errors, its inodes are looked up again"
        );
        CrashState {
            init: KernelInit::FALLBACK,
            fs: FsState::empty(),
            io: Default::default(),
            uploads: Vec::new(),
        }
    });
    let (handles, writers, uploads) = (state.fs.handles(), state.fs.writers(), state.uploads.len());
    rt.block_on(fs.import(state.fs, Vec::new()))
        .map_err(|e| anyhow!("importing the crashed daemon's state: {e}"))?;
    fs.skip_unrecorded_handles();
    {
        let _context = rt.enter();
        fs.abort_uploads(state.uploads);
    }
    port.adopt_io(state.io, stored.fuse.try_clone()?);
    let session = handover::resume(adapter, stored.fuse, &state.init, fuse_config)
        .context("resuming the FUSE session after a crash")?;
    resend_unanswered(&session, &left, true);
    tracing::warn!(
        handles,
        lost_writers = writers,
        aborted_uploads = uploads,
        "resumed the mount after the previous daemon died"
    );
    Ok((session, file))
}

/// Under systemd, keeps the connection and a crash state in the service's fd store
/// (daemon/fdstore.rs); `kept` is a state file already stored (by a predecessor).
fn keep_for_restart(
    fs: &Arc<Fs>,
    port: &AdapterPort,
    dev: &OwnedFd,
    kept: Option<StateFile>,
) -> Option<Arc<StateFile>> {
    if !fdstore::under_systemd() {
        return None;
    }
    let file = match kept {
        Some(file) => file,
        None => {
            let stored = StateFile::create().and_then(|file| {
                fdstore::store(dev, &file)?;
                Ok(file)
            });
            match stored {
                Ok(file) => file,
                Err(e) => {
                    tracing::warn!("no restart after a crash for this mount: storing its descriptors failed: {e}");
                    return None;
                }
            }
        }
    };
    let file = Arc::new(file);
    match fdstore::keep_current(Arc::clone(fs), port.clone(), Arc::clone(&file)) {
        Ok(()) => Some(file),
        Err(e) => {
            tracing::warn!("no restart after a crash for this mount: {e}");
            None
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
