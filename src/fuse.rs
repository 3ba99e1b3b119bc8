//! The only file that speaks FUSE: decode a request, call `fs` on the tokio runtime, reply.
//!
//! Non-obvious problems:
//! 1. fuser calls us on its own threads; every operation that may touch S3 is spawned onto the
//!    runtime and replied to from the task, so a slow GET never blocks an `ls` elsewhere.
//! 2. Errors are logged here, once: expected ones (ENOENT, EROFS) at debug, the rest at warn.
//! 3. `.` and `..` take readdir offsets 1 and 2; entry i of the listing takes offset i + 3.
//! 4. readdirplus is switched on at init, so `ls -l` gets attributes with the names and the
//!    kernel sends no LOOKUP per entry.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::error::{FsError, FsResult};
use crate::fs::{Attr, Fs, Ino, Kind};

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
}

fn name_str(name: &OsStr) -> FsResult<&str> {
    name.to_str()
        .ok_or_else(|| FsError::new(libc::ENOENT, "name is not UTF-8"))
}

fn log_error(op: &str, err: &FsError) {
    if err.is_expected() {
        tracing::debug!(op, errno = err.errno, "{}", err.message);
    } else {
        tracing::warn!(op, errno = err.errno, "{}", err.message);
    }
}

fn errno(op: &str, err: FsError) -> Errno {
    log_error(op, &err);
    Errno::from_i32(err.errno)
}

fn file_attr(attr: &Attr) -> FileAttr {
    let (kind, nlink, blocks) = match attr.kind {
        Kind::Dir => (FileType::Directory, 2, 0),
        Kind::File => (FileType::RegularFile, 1, attr.size.div_ceil(512)),
    };
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        blocks,
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind,
        perm: attr.perm,
        nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        flags: 0,
        blksize: MAX_READ,
    }
}

impl FuseAdapter {
    /// An adapter running `fs` operations on `rt`.
    pub fn new(fs: Arc<Fs>, rt: Handle) -> Self {
        Self { fs, rt }
    }

    fn ttl(&self) -> Duration {
        self.fs.config().metadata_ttl
    }

    fn spawn<F>(&self, task: impl FnOnce(Arc<Fs>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(task(Arc::clone(&self.fs)));
    }

    /// Feeds the entries of directory handle `fh` after readdir `offset` to `add`, which returns
    /// true once the reply buffer is full. Nothing is copied: a 100,000-entry directory is read
    /// in thousands of calls, each starting where the last one stopped.
    fn fill_dir(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(u64, &str, &Attr) -> bool,
    ) -> FsResult<()> {
        let entries = self.fs.readdir(fh.0)?;
        let dir_attr = Attr {
            ino: Ino(ino.0),
            ..self.fs.root_attr()
        };
        for (i, name) in [".", ".."].into_iter().enumerate().skip(offset as usize) {
            if add(i as u64 + 1, name, &dir_attr) {
                return Ok(());
            }
        }
        let skip = offset.saturating_sub(2) as usize;
        for (i, entry) in entries.iter().enumerate().skip(skip) {
            if add(i as u64 + 3, &entry.name, &entry.attr) {
                break;
            }
        }
        Ok(())
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_PARALLEL_DIROPS;
        if let Err(unsupported) = config.add_capabilities(wanted) {
            tracing::info!("kernel lacks FUSE capabilities {unsupported:?}");
        }
        let _ = config.set_max_readahead(MAX_READ);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ttl = self.ttl();
        let name = name.to_owned();
        self.spawn(|fs| async move {
            let result = match name_str(&name) {
                Ok(n) => fs.lookup(Ino(parent.0), n).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(attr) => reply.entry(&ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("lookup", e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.ttl();
        self.spawn(|fs| async move {
            match fs.getattr(Ino(ino.0)).await {
                Ok(attr) => reply.attr(&ttl, &file_attr(&attr)),
                Err(e) => reply.error(errno("getattr", e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(errno("setattr", FsError::read_only()));
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno("mknod", FsError::read_only()));
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(errno("mkdir", FsError::read_only()));
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(errno("unlink", FsError::read_only()));
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(errno("rmdir", FsError::read_only()));
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(errno("symlink", FsError::read_only()));
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(errno("rename", FsError::read_only()));
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(errno("link", FsError::read_only()));
    }

    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        reply.error(errno("create", FsError::read_only()));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        self.spawn(|fs| async move {
            match fs.open(Ino(ino.0), write).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno("open", e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(|fs| async move {
            match fs.read(Ino(ino.0), fh.0, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno("read", e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(errno("write", FsError::read_only()));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(|fs| async move {
            match fs.opendir(Ino(ino.0)).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno("opendir", e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let filled = self.fill_dir(ino, fh, offset, |next, name, attr| {
            let kind = match attr.kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            reply.add(INodeNo(attr.ino.0), next, kind, name)
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdir", e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl();
        let filled = self.fill_dir(ino, fh, offset, |next, name, attr| {
            let attr = file_attr(attr);
            reply.add(attr.ino, next, name, &ttl, &attr, Generation(0))
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdirplus", e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
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
