//! FUSE requests: decode a request, call `fs` on the tokio runtime, reply. (`daemon` uses
//! fuser too, only to build and run the session.)
//!
//! Non-obvious problems:
//! 1. fuser calls us on its own threads; every operation that may touch S3 is spawned onto the
//!    runtime and replied to from the task, so a slow GET never blocks an `ls` elsewhere.
//!    The one exception is a random read of bytes in the disk cache: it is answered on the
//!    FUSE thread (a read of a local file, usually from the page cache), as a trip through the
//!    runtime and the blocking pool would take longer than the read itself.
//! 2. Errors are logged here, once: expected ones (ENOENT, EROFS) at debug, the rest at warn.
//! 3. `.` and `..` take readdir offsets 1 and 2; entry i of the listing takes offset i + 3.
//! 4. readdirplus is switched on at init, so `ls -l` gets attributes with the names and the
//!    kernel sends no LOOKUP per entry.
//! 5. close() sees only what flush returns (never release), so flush is where uploads commit
//!    and report; release is replied to once the handle's leftovers are settled.
//! 6. Every close of a descriptor sends a flush, also a forked child's close of its inherited
//!    copy (exec closes O_CLOEXEC descriptors). Requests carry the calling thread's id; `fs`
//!    commits only the opener's close, looking the thread's process up in /proc only when
//!    the thread is not the opener's main thread.
//! 7. The kernel counts every entry it is given (lookup, create, mkdir, symlink, and each entry
//!    of a readdirplus reply that fit) until FORGET; `fs` counts the same, so it can free what
//!    the kernel forgot. An entry that did not fit in a reply is uncounted again.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

pub mod handover;
mod notes;
mod passthrough;
use handover::{Gate, KernelInit, Pass};
use notes::NoteQueue;
use passthrough::IoModes;
pub use passthrough::IoState;

use crate::error::{FsError, FsResult};
use crate::fs::{
    Attr, Fs, Ino, KernelCache, KernelNote, Kind, OpenMode, RenameMode, SetAttr, SetMode,
};
use crate::metrics;

/// Largest read the kernel sends and its read-ahead: 1 MiB, one cache block.
const MAX_READ: u32 = 1 << 20;

/// Blocks reported by statfs: S3 has no capacity, so `df` shows a large, fixed size
/// (1 PiB of 4 KiB blocks) rather than zero, which some programs take for "disk full".
const STATFS_BLOCKS: u64 = 1 << 38;

/// Bridges fuser's callbacks to the async filesystem.
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: Handle,
    io: Arc<IoModes>,
    /// Stops requests at a handover (handover.rs).
    gate: Arc<Gate>,
    /// What the kernel offered at INIT, for a successor (handover.rs, 2.).
    init: Arc<parking_lot::Mutex<Option<KernelInit>>>,
}

/// The parts of a running adapter a handover uses (daemon/takeover.rs).
#[derive(Debug, Clone)]
pub struct AdapterPort {
    gate: Arc<Gate>,
    init: Arc<parking_lot::Mutex<Option<KernelInit>>>,
    io: Arc<IoModes>,
}

impl AdapterPort {
    /// The gate requests pass (handover.rs, 3.).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// What the kernel offered at INIT; `None` before the session started.
    pub fn kernel_init(&self) -> Option<KernelInit> {
        *self.init.lock()
    }

    /// The passthrough state of the open files, for a successor.
    pub fn io_state(&self) -> IoState {
        self.io.export()
    }

    /// Takes over a predecessor's passthrough state; `dev` is the connection.
    pub fn adopt_io(&self, state: IoState, dev: std::os::fd::OwnedFd) {
        self.io.adopt(state, dev);
    }
}

/// The process of thread `tid`: FUSE requests carry the calling thread's id, and a program
/// may open a file on one thread and close it on another.
fn process_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

fn name_str(name: &OsStr) -> FsResult<&str> {
    name.to_str()
        .ok_or_else(|| FsError::new(libc::ENOENT, "name is not UTF-8"))
}

fn xattr_name(name: &OsStr) -> FsResult<&str> {
    name.to_str()
        .ok_or_else(|| FsError::new(libc::EINVAL, "attribute name is not UTF-8"))
}

/// A getxattr/listxattr answer: the size when asked with size 0, ERANGE when it does not fit.
fn reply_xattr(op: &'static str, reply: ReplyXattr, size: u32, result: FsResult<Vec<u8>>) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() <= size as usize => reply.data(&value),
        Ok(_) => reply.error(refuse(op, libc::ERANGE)),
        Err(e) => reply.error(errno(op, e)),
    }
}

fn log_error(op: &str, err: &FsError) {
    if err.is_expected() {
        tracing::debug!(op, errno = err.errno, "{}", err.message);
    } else {
        tracing::warn!(op, errno = err.errno, "{}", err.message);
    }
}

fn errno(op: &'static str, err: FsError) -> Errno {
    log_error(op, &err);
    refuse(op, err.errno)
}

/// The errno `code` for an answer to `op`, counted.
fn refuse(op: &'static str, code: i32) -> Errno {
    metrics::fuse_error(op, code);
    Errno::from_i32(code)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn reply_entry(op: &'static str, reply: ReplyEntry, ttl: &Duration, result: FsResult<Attr>) {
    match result {
        Ok(attr) => reply.entry(ttl, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(op, e)),
    }
}

fn reply_empty(op: &'static str, reply: ReplyEmpty, result: FsResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, e)),
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    let blocks = attr.size.div_ceil(512);
    let kind = file_type(attr.kind);
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        blocks,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.mtime,
        kind,
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        flags: 0,
        blksize: MAX_READ,
    }
}

/// The kernel's caches through fuser's notifier, fed from a thread of its own: a notification
/// waits for the directory's lock, which a request in flight may hold (see fs/remote.rs). The
/// queue between is bounded (notes.rs).
#[derive(Debug)]
pub struct KernelNotifier {
    queue: Arc<NoteQueue>,
}

impl KernelNotifier {
    /// Starts the thread that tells the kernel through `notifier`.
    pub fn start(notifier: fuser::Notifier) -> std::io::Result<Self> {
        let queue = Arc::new(NoteQueue::default());
        let queued = Arc::clone(&queue);
        std::thread::Builder::new()
            .name("bucketfs-inval".into())
            .spawn(move || {
                while let Some(batch) = queued.next_batch() {
                    for note in batch {
                        tell_kernel(&notifier, note);
                    }
                }
            })?;
        Ok(Self { queue })
    }
}

impl Drop for KernelNotifier {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl KernelCache for KernelNotifier {
    fn invalidate(&self, notes: Vec<KernelNote>) {
        self.queue.push(notes);
    }
}

/// One note to the kernel; a name it does not hold is not an error (fuser drops ENOENT).
fn tell_kernel(notifier: &fuser::Notifier, note: KernelNote) {
    let result = match &note {
        // Offset 0 and length 0: the attributes and every cached page.
        KernelNote::Inode(ino) => notifier.inval_inode(INodeNo(ino.0), 0, 0),
        KernelNote::Entry {
            parent,
            name,
            deleted,
        } => {
            let name = OsStr::new(name.as_str());
            let parent = INodeNo(parent.0);
            // A deletion tells inotify watchers; the kernel refuses it for a name that holds
            // another node by now, and then the entry is only dropped.
            deleted
                .and_then(|child| notifier.delete(parent, INodeNo(child.0), name).ok())
                .map_or_else(|| notifier.inval_entry(parent, name), Ok)
        }
    };
    if let Err(e) = result {
        tracing::debug!(?note, "kernel invalidation failed: {e}");
    }
}

impl FuseAdapter {
    /// An adapter running `fs` operations on `rt`.
    pub fn new(fs: Arc<Fs>, rt: Handle) -> Self {
        Self {
            fs,
            rt,
            io: Arc::default(),
            gate: Arc::default(),
            init: Arc::default(),
        }
    }

    /// What a handover needs of this adapter once the session owns it.
    pub fn port(&self) -> AdapterPort {
        AdapterPort {
            gate: Arc::clone(&self.gate),
            init: Arc::clone(&self.init),
            io: Arc::clone(&self.io),
        }
    }

    /// Counts request `op` and lets it through the gate (parked during a handover).
    fn begin(&self, op: &'static str, req: &Request) -> Pass<'_> {
        metrics::fuse_op(op);
        self.gate.enter(req.unique().0)
    }

    fn ttl(&self) -> Duration {
        self.fs.ttl()
    }

    /// Asks the kernel for passthrough (see passthrough.rs); true when it can be used.
    fn passthrough(&self, config: &mut KernelConfig) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            tracing::info!("FUSE passthrough needs a daemon run as root; cached files are read through the daemon");
            return false;
        }
        if config
            .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
            .is_err()
        {
            tracing::info!("the kernel has no FUSE passthrough (Linux 6.9+); cached files are read through the daemon");
            return false;
        }
        // The cache directory may be on a stacked filesystem itself (overlayfs): depth 1 lets
        // this mount be a lower layer of an overlay, the common case.
        let _ = config.set_max_stack_depth(1);
        true
    }

    fn spawn<F>(&self, request: &Pass<'_>, task: impl FnOnce(Arc<Fs>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let pass = self.gate.track(request);
        let task = task(Arc::clone(&self.fs));
        self.rt.spawn(async move {
            task.await;
            drop(pass);
        });
    }
}

/// Feeds the entries of directory handle `fh` after readdir `offset` to `add`, which returns
/// true once the reply buffer is full; waits only when readdir has caught up with a listing
/// still running. Nothing is copied: a 100,000-entry directory is read in thousands of calls,
/// each starting where the last one stopped.
async fn fill_dir(
    fs: &Arc<Fs>,
    ino: INodeNo,
    fh: FileHandle,
    offset: u64,
    mut add: impl FnMut(u64, &str, &Attr) -> bool,
) -> FsResult<()> {
    let mut handle = fs.dir_handle(fh.0)?;
    let dir_attr = Attr {
        ino: Ino(ino.0),
        ..fs.root_attr()
    };
    for (i, name) in [".", ".."].into_iter().enumerate().skip(offset as usize) {
        if add(i as u64 + 1, name, &dir_attr) {
            return Ok(());
        }
    }
    let skip = offset.saturating_sub(2) as usize;
    if !handle.wait_for(skip).await? {
        // Rewound past what a windowed listing let go: list again (fs/dir.rs, 5.).
        handle = fs.relist(Ino(ino.0), fh.0).await?;
        handle.wait_for(skip).await?;
    }
    handle.visit(skip, |i, entry| {
        add(i as u64 + 3, &entry.name, &fs.listed_attr(&entry.attr))
    });
    Ok(())
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // ATOMIC_O_TRUNC: O_TRUNC comes with the open instead of as a separate truncate, so the
        // old object stays whole until the new content is committed.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC;
        if let Err(unsupported) = config.add_capabilities(wanted) {
            tracing::info!("kernel lacks FUSE capabilities {unsupported:?}");
        }
        if self.fs.may_pass_through() {
            self.fs.enable_passthrough(self.passthrough(config));
        }
        *self.init.lock() = Some(KernelInit::of(config));
        let _ = config.set_max_readahead(MAX_READ);
        let _ = config.set_max_write(MAX_READ);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _pass = self.begin("lookup", req);
        let ttl = self.ttl();
        let name = name.to_owned();
        self.spawn(&_pass, |fs| async move {
            let result = async { fs.lookup(Ino(parent.0), name_str(&name)?).await }.await;
            match result {
                Ok(attr) => reply.entry(&ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("lookup", e)),
            }
        });
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _pass = self.begin("getattr", req);
        let ttl = self.ttl();
        self.spawn(&_pass, |fs| async move {
            match fs.getattr(Ino(ino.0)).await {
                Ok(attr) => reply.attr(&ttl, &file_attr(&attr)),
                Err(e) => reply.error(errno("getattr", e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _pass = self.begin("setattr", req);
        let ttl = self.ttl();
        let time = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(time),
            atime: atime.map(time),
        };
        self.spawn(&_pass, |fs| async move {
            match fs.setattr(Ino(ino.0), change).await {
                Ok(attr) => reply.attr(&ttl, &file_attr(&attr)),
                Err(e) => reply.error(errno("setattr", e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _pass = self.begin("readlink", req);
        self.spawn(&_pass, |fs| async move {
            match fs.readlink(Ino(ino.0)).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno("readlink", e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _pass = self.begin("mknod", req);
        let (ttl, name, owner) = (self.ttl(), name.to_owned(), (req.uid(), req.gid()));
        self.spawn(&_pass, |fs| async move {
            let result = async {
                fs.mknod(Ino(parent.0), name_str(&name)?, mode & !umask, rdev, owner)
                    .await
            }
            .await;
            reply_entry("mknod", reply, &ttl, result);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _pass = self.begin("mkdir", req);
        let (ttl, name, owner) = (self.ttl(), name.to_owned(), (req.uid(), req.gid()));
        self.spawn(&_pass, |fs| async move {
            let result = async {
                fs.mkdir(Ino(parent.0), name_str(&name)?, mode & !umask, owner)
                    .await
            }
            .await;
            reply_entry("mkdir", reply, &ttl, result);
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _pass = self.begin("unlink", req);
        let name = name.to_owned();
        self.spawn(&_pass, |fs| async move {
            let result = async { fs.unlink(Ino(parent.0), name_str(&name)?).await }.await;
            reply_empty("unlink", reply, result);
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _pass = self.begin("rmdir", req);
        let name = name.to_owned();
        self.spawn(&_pass, |fs| async move {
            let result = async { fs.rmdir(Ino(parent.0), name_str(&name)?).await }.await;
            reply_empty("rmdir", reply, result);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _pass = self.begin("symlink", req);
        let (ttl, name, owner) = (self.ttl(), link_name.to_owned(), (req.uid(), req.gid()));
        let target = target.as_os_str().to_owned();
        self.spawn(&_pass, |fs| async move {
            let result = async {
                let (name, target) = (name_str(&name)?, name_str(&target)?);
                fs.symlink(Ino(parent.0), name, target, owner).await
            }
            .await;
            reply_entry("symlink", reply, &ttl, result);
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _pass = self.begin("rename", req);
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let mode = RenameMode {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        self.spawn(&_pass, |fs| async move {
            let result = async {
                let (name, newname) = (name_str(&name)?, name_str(&newname)?);
                fs.rename(Ino(parent.0), name, Ino(newparent.0), newname, mode)
                    .await
            }
            .await;
            reply_empty("rename", reply, result);
        });
    }

    fn link(&self, req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        let _pass = self.begin("link", req);
        let e = self.fs.link();
        reply.error(errno("link", e));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _pass = self.begin("create", req);
        let (ttl, name, owner) = (self.ttl(), name.to_owned(), (req.uid(), req.gid()));
        let excl = flags & libc::O_EXCL != 0;
        let io = Arc::clone(&self.io);
        let open = OpenMode {
            write: true,
            truncate: false,
            opener: process_of(req.pid()),
            direct: flags & libc::O_DIRECT != 0,
        };
        self.spawn(&_pass, |fs| async move {
            let result = async {
                let name = name_str(&name)?;
                fs.create(Ino(parent.0), name, mode & !umask, owner, excl, open)
                    .await
            }
            .await;
            match result {
                Ok((attr, fh)) => {
                    io.created(attr.ino.0, fh);
                    reply.created(
                        &ttl,
                        &file_attr(&attr),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    )
                }
                Err(e) => reply.error(errno("create", e)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _pass = self.begin("open", req);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let mode = OpenMode {
            write,
            truncate: flags.0 & libc::O_TRUNC != 0,
            opener: if write { process_of(req.pid()) } else { 0 },
            direct: flags.0 & libc::O_DIRECT != 0,
        };
        if write && self.io.passing_through(ino.0) {
            reply.error(refuse("open", libc::ETXTBSY));
            return;
        }
        let io = Arc::clone(&self.io);
        self.spawn(&_pass, |fs| async move {
            match fs.open_file(Ino(ino.0), mode).await {
                Ok(opened) => {
                    if let Some(refused) = io.reply_open(&fs, ino.0, opened, mode, reply) {
                        if let Some(file) = fs.take_handle(refused) {
                            fs.writers().released(file).await;
                        }
                    }
                }
                Err(e) => reply.error(errno("open", e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _pass = self.begin("read", req);
        let mut reply = Some(reply);
        let served = self
            .fs
            .read_now(Ino(ino.0), fh.0, (offset, size), |bytes| {
                if let Some(reply) = reply.take() {
                    reply.data(bytes);
                }
            })
            .is_some();
        let Some(reply) = reply.filter(|_| !served) else {
            return;
        };
        self.spawn(&_pass, |fs| async move {
            match fs.read(Ino(ino.0), fh.0, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno("read", e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _pass = self.begin("write", req);
        let data = data.to_vec();
        self.spawn(&_pass, |fs| async move {
            match fs.writers().write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _pass = self.begin("flush", req);
        let tid = req.pid();
        self.spawn(&_pass, |fs| async move {
            reply_empty(
                "flush",
                reply,
                fs.writers().close(fh.0, tid, process_of).await,
            )
        });
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _pass = self.begin("release", req);
        // Out of the open files before any later request runs (see fs::write, 10.).
        let file = self.fs.take_handle(fh.0);
        self.io.released(fh.0);
        self.spawn(&_pass, |fs| async move {
            if let Some(file) = file {
                fs.writers().released(file).await;
            }
            reply.ok();
        });
    }

    fn fsync(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        let _pass = self.begin("fsync", req);
        self.spawn(&_pass, |fs| async move {
            reply_empty("fsync", reply, fs.writers().fsync(fh.0).await)
        });
    }

    fn fsyncdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        let _pass = self.begin("fsyncdir", req);
        // Directory changes are in the bucket when their operation returns.
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _pass = self.begin("opendir", req);
        self.spawn(&_pass, |fs| async move {
            match fs.opendir(Ino(ino.0)).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno("opendir", e)),
            }
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _pass = self.begin("readdir", req);
        self.spawn(&_pass, |fs| async move {
            let filled = fill_dir(&fs, ino, fh, offset, |next, name, attr| {
                reply.add(INodeNo(attr.ino.0), next, file_type(attr.kind), name)
            })
            .await;
            match filled {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("readdir", e)),
            }
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _pass = self.begin("readdirplus", req);
        let ttl = self.ttl();
        self.spawn(&_pass, |fs| async move {
            // The kernel counts every entry of a readdirplus reply as a lookup: so do we, for
            // the entries that fit, before the reply goes out.
            let mut sent = Vec::new();
            let filled = fill_dir(&fs, ino, fh, offset, |next, name, attr| {
                let attr = file_attr(attr);
                let full = reply.add(attr.ino, next, name, &ttl, &attr, Generation(0));
                if !full && next > 2 {
                    sent.push((Ino(attr.ino.0), next as usize - 3));
                }
                full
            })
            .await;
            if filled.is_ok() {
                fs.entries_to_kernel(Ino(ino.0), fh.0, &sent);
            }
            match filled {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("readdirplus", e)),
            }
        });
    }

    // BATCH_FORGET: fuser's default hands each node to `forget` (its node type is private).
    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        let _pass = self.begin("forget", req);
        self.fs.forget(Ino(ino.0), nlookup);
    }

    // Extended attributes live in the object's headers (fs/xattr.rs). With --no-xattr, ENOSYS
    // tells the kernel once for the whole mount: it stops asking, and programs get EOPNOTSUPP.
    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _pass = self.begin("getxattr", req);
        if !self.fs.config().xattr {
            return reply.error(refuse("getxattr", libc::ENOSYS));
        }
        // Most questions (ls -l's, each write's security.capability) are answered from memory
        // right here, without a task.
        if let Ok(text) = xattr_name(name) {
            if let Some(result) = self.fs.getxattr_now(Ino(ino.0), text) {
                return reply_xattr("getxattr", reply, size, result);
            }
        }
        let name = name.to_owned();
        self.spawn(&_pass, |fs| async move {
            let result = async { fs.getxattr(Ino(ino.0), xattr_name(&name)?).await }.await;
            reply_xattr("getxattr", reply, size, result);
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _pass = self.begin("listxattr", req);
        if !self.fs.config().xattr {
            return reply.error(refuse("listxattr", libc::ENOSYS));
        }
        self.spawn(&_pass, |fs| async move {
            let result = fs.listxattr(Ino(ino.0)).await.map(|names| {
                names
                    .into_iter()
                    .flat_map(|n| n.into_bytes().into_iter().chain([0]))
                    .collect()
            });
            reply_xattr("listxattr", reply, size, result);
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _pass = self.begin("setxattr", req);
        if !self.fs.config().xattr {
            return reply.error(refuse("setxattr", libc::ENOSYS));
        }
        let (name, value) = (name.to_owned(), value.to_vec());
        let mode = if flags & libc::XATTR_CREATE != 0 {
            SetMode::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            SetMode::Replace
        } else {
            SetMode::Any
        };
        self.spawn(&_pass, |fs| async move {
            let result = async {
                fs.change_xattr(Ino(ino.0), xattr_name(&name)?, Some(&value), mode)
                    .await
            }
            .await;
            reply_empty("setxattr", reply, result);
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _pass = self.begin("removexattr", req);
        if !self.fs.config().xattr {
            return reply.error(refuse("removexattr", libc::ENOSYS));
        }
        let name = name.to_owned();
        self.spawn(&_pass, |fs| async move {
            let result = async {
                fs.change_xattr(Ino(ino.0), xattr_name(&name)?, None, SetMode::Any)
                    .await
            }
            .await;
            reply_empty("removexattr", reply, result);
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _pass = self.begin("fallocate", req);
        self.spawn(&_pass, |fs| async move {
            let result = fs.writers().fallocate(fh.0, offset, length, mode).await;
            reply_empty("fallocate", reply, result);
        });
    }

    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _pass = self.begin("ioctl", req);
        reply.error(refuse("ioctl", libc::ENOTTY));
    }

    fn releasedir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _pass = self.begin("releasedir", req);
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _pass = self.begin("statfs", req);
        reply.statfs(
            STATFS_BLOCKS,
            STATFS_BLOCKS,
            STATFS_BLOCKS,
            1 << 32,
            1 << 32,
            4096,
            255,
            4096,
        );
    }
}
