//! FUSE passthrough: the kernel reads a file whole in the disk cache straight from that file,
//! without a request to the daemon (Linux 6.9+, a daemon with CAP_SYS_ADMIN).
//!
//! Non-obvious problems:
//! 1. The kernel puts an inode in one I/O mode at a time: while any handle of it reads through
//!    the page cache, a passthrough open fails with EIO, and the other way round; and all
//!    passthrough handles of an inode must name the same backing file. So the modes of the
//!    open handles are counted per inode here, and an open takes the mode the inode is in.
//!    The counts drop at RELEASE, after the kernel left the mode, so they never say less
//!    than the kernel's.
//! 2. An open for writing never passes through (its writes would go to the cache file), and
//!    the kernel (6.18 here) refuses every other mode beside passthrough handles, direct I/O
//!    included, and a second backing file. So while an inode passes through, an open for
//!    writing, or for reading a newer version, fails with ETXTBSY (the errno the kernel
//!    itself uses for this conflict) rather than the EIO the kernel would give.
//! 3. A backing id must outlive every handle that uses it: one is kept per inode while it has
//!    passthrough handles, and closed (dropped) with the last.
//! 4. When the kernel refuses a backing file (no CAP_SYS_ADMIN, a cache directory on a
//!    filesystem it cannot stack on), passthrough is turned off for the mount, logged once.
//! 5. A file opened O_DIRECT does not start passthrough: the kernel would pass O_DIRECT on to
//!    the backing file, so every small read would wait on the cache disk, where the daemon
//!    serves it from the page cache (warm random 4 KiB reads: docs/benchmarks.md, issue 15).
//!    It joins passthrough handles already open, as the kernel requires.
//! 6. A handover (handover.rs) passes the open handles' modes and the backing ids by number:
//!    the ids live in the connection, so passthrough files stay readable. The successor
//!    closes an inherited id with the ioctl when its last handle goes, or wraps it for fuser
//!    when another open joins it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use fuser::{BackingId, Errno, FileHandle, FopenFlags, ReplyOpen};

use crate::fs::{Fs, OpenMode, Opened};

/// How one handle reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Through the daemon and the page cache.
    Cached,
    /// From the backing file, in the kernel.
    Passthrough,
}

#[derive(Debug, Default)]
struct InodeIo {
    cached: usize,
    passthrough: usize,
    /// The backing file of the passthrough handles and the ETag it holds.
    backing: Option<(Backing, Option<String>)>,
}

/// A backing id: one this process opened (`id`), or one a predecessor opened, known by
/// number only until an open joins it (see 6.).
#[derive(Debug)]
struct Backing {
    raw: u32,
    id: Option<BackingId>,
    /// The connection, to close an inherited id that was never wrapped.
    inherited: Option<Arc<OwnedFd>>,
}

impl Backing {
    /// The id to answer an open with: an inherited one is wrapped for fuser first.
    fn id(&mut self, reply: &ReplyOpen) -> &BackingId {
        let raw = self.raw;
        self.inherited = None;
        // SAFETY: `raw` is open on this session's connection (opened by us, or by the
        // predecessor that passed it); from now on only this BackingId closes it.
        self.id
            .get_or_insert_with(|| unsafe { reply.wrap_backing(raw) })
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        let Some(dev) = self.inherited.take().filter(|_| self.id.is_none()) else {
            return;
        };
        // FUSE_DEV_IOC_BACKING_CLOSE: _IOW(229, 2, uint32_t).
        const BACKING_CLOSE: libc::c_ulong = 0x4004_e502;
        // SAFETY: the ioctl reads one u32 from the pointer, which lives across the call.
        if unsafe { libc::ioctl(dev.as_raw_fd(), BACKING_CLOSE, &self.raw) } < 0 {
            tracing::debug!(
                "closing inherited backing id {}: {}",
                self.raw,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The passthrough state of a mount's open files, handed to a successor (fuse/handover.rs).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct IoState {
    /// Handle, inode, and whether it reads by passthrough.
    handles: Vec<(u64, u64, bool)>,
    /// Inode, backing id and the ETag of its backing file.
    backings: Vec<(u64, u32, Option<String>)>,
}

/// The I/O modes of the open files of one mount.
#[derive(Debug, Default)]
pub(super) struct IoModes {
    inodes: Mutex<HashMap<u64, InodeIo>>,
    handles: Mutex<HashMap<u64, (u64, Mode)>>,
}

impl IoModes {
    /// True when `ino` has handles reading by passthrough: an open for writing is refused.
    pub(super) fn passing_through(&self, ino: u64) -> bool {
        self.inodes
            .lock()
            .get(&ino)
            .is_some_and(|io| io.passthrough > 0)
    }

    /// Replies to an open of `ino` with the mode the inode allows; returns the handle when
    /// the open was refused (see 2.), for the caller to release.
    pub(super) fn reply_open(
        &self,
        fs: &Fs,
        ino: u64,
        opened: Opened,
        mode: OpenMode,
        reply: ReplyOpen,
    ) -> Option<u64> {
        let (fh, write) = (opened.fh, mode.write);
        let mut inodes = self.inodes.lock();
        let io = inodes.entry(ino).or_default();
        if io.passthrough > 0 {
            // The kernel takes no other mode beside passthrough handles, nor another backing
            // file: only a read of the same version can join them.
            match &mut io.backing {
                Some((backing, etag)) if !write && *etag == opened.etag => {
                    io.passthrough += 1;
                    tracing::debug!(ino, fh, "opened by passthrough (backing file shared)");
                    self.track(fh, ino, Mode::Passthrough);
                    let id = backing.id(&reply);
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id);
                    return None;
                }
                _ => {
                    tracing::debug!(ino, fh, write, "open refused: the file passes through");
                    reply.error(Errno::from_i32(libc::ETXTBSY));
                    return Some(fh);
                }
            }
        }
        // Passthrough would make an O_DIRECT reader's reads direct I/O on the cache disk;
        // the daemon serves them from the cache file's page cache instead (see 5.).
        if let Some(file) = opened
            .whole
            .filter(|_| io.cached == 0 && !write && !mode.direct)
        {
            match reply.open_backing(&file) {
                Ok(id) => {
                    io.passthrough += 1;
                    tracing::debug!(ino, fh, "opened by passthrough");
                    // Its number is kept for a successor (see 6.).
                    let raw = id.into_raw();
                    // SAFETY: `raw` was just opened on this connection; only this BackingId
                    // closes it.
                    let id = unsafe { reply.wrap_backing(raw) };
                    let backing = Backing {
                        raw,
                        id: Some(id),
                        inherited: None,
                    };
                    let id = io.backing.insert((backing, opened.etag)).0.id(&reply);
                    self.track(fh, ino, Mode::Passthrough);
                    // The kernel refuses a passthrough open with FOPEN_KEEP_CACHE (EINVAL).
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id);
                    return None;
                }
                Err(e) => {
                    tracing::warn!(
                        "FUSE passthrough refused ({e}); cached files are read through the daemon"
                    );
                    fs.enable_passthrough(false);
                }
            }
        }
        io.cached += 1;
        tracing::debug!(ino, fh, "opened");
        self.track(fh, ino, Mode::Cached);
        let flags = if opened.keep_cache {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(fh), flags);
        None
    }

    /// Counts a handle CREATE opened: it reads through the page cache.
    pub(super) fn created(&self, ino: u64, fh: u64) {
        let mut inodes = self.inodes.lock();
        inodes.entry(ino).or_default().cached += 1;
        self.track(fh, ino, Mode::Cached);
    }

    /// Forgets handle `fh`; the last passthrough handle of an inode closes its backing id.
    pub(super) fn released(&self, fh: u64) {
        let Some((ino, mode)) = self.handles.lock().remove(&fh) else {
            return;
        };
        let mut inodes = self.inodes.lock();
        let Some(io) = inodes.get_mut(&ino) else {
            return;
        };
        match mode {
            Mode::Cached => io.cached = io.cached.saturating_sub(1),
            Mode::Passthrough => {
                io.passthrough = io.passthrough.saturating_sub(1);
                if io.passthrough == 0 {
                    io.backing = None;
                }
            }
        }
        if io.cached == 0 && io.passthrough == 0 {
            inodes.remove(&ino);
        }
    }

    /// The state of the open files, for a successor.
    pub(super) fn export(&self) -> IoState {
        let handles = self
            .handles
            .lock()
            .iter()
            .map(|(&fh, &(ino, mode))| (fh, ino, mode == Mode::Passthrough))
            .collect();
        let backings = self
            .inodes
            .lock()
            .iter()
            .filter_map(|(&ino, io)| {
                let (backing, etag) = io.backing.as_ref()?;
                Some((ino, backing.raw, etag.clone()))
            })
            .collect();
        IoState { handles, backings }
    }

    /// Takes over a predecessor's open files; `dev` closes the backing ids it opened.
    pub(super) fn adopt(&self, state: IoState, dev: OwnedFd) {
        let dev = Arc::new(dev);
        let mut inodes = self.inodes.lock();
        for (fh, ino, passthrough) in state.handles {
            let io = inodes.entry(ino).or_default();
            let mode = if passthrough {
                io.passthrough += 1;
                Mode::Passthrough
            } else {
                io.cached += 1;
                Mode::Cached
            };
            self.track(fh, ino, mode);
        }
        for (ino, raw, etag) in state.backings {
            let backing = Backing {
                raw,
                id: None,
                inherited: Some(Arc::clone(&dev)),
            };
            inodes.entry(ino).or_default().backing = Some((backing, etag));
        }
    }

    fn track(&self, fh: u64, ino: u64, mode: Mode) {
        self.handles.lock().insert(fh, (ino, mode));
    }
}
