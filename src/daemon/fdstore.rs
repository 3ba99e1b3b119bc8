//! Surviving a crash under systemd: the `/dev/fuse` connection and a state file live in the
//! service's file descriptor store, so the daemon systemd starts after a crash (`Restart=`)
//! resumes the mount instead of leaving it dead.
//!
//! Non-obvious problems:
//! 1. systemd keeps what a service stored (`FDSTORE=1` with the descriptors, `FDNAME=`) while
//!    the service is not dead (an automatic restart included), and passes it back at the next
//!    start (`LISTEN_FDS`, `LISTEN_FDNAMES`, from descriptor 3 on). The kernel keeps the mount
//!    alive meanwhile: programs using it wait instead of getting ENOTCONN, and the requests
//!    the dead daemon had read are queued again (`FUSE_NOTIFY_RESEND`).
//! 2. The state is a memfd rewritten whenever the filesystem's state changed (checked every
//!    `EVERY`), in two slots used in turn, each with its length, a CRC and a clock reading: a
//!    crash in the middle of a write leaves the other slot whole, and the newest whole slot
//!    is the one read. Writing a big state takes a while: the next one waits nine times as
//!    long as the last took, so it costs at most a tenth of one core (one that takes 50 ms
//!    is written at most every half second). A change in the last moments before a crash may
//!    be missing: an inode number the successor does not know makes the kernel look its name
//!    up again (numbers are hashes of paths, so it gets the same one), a handle opened since
//!    fails with EIO (fs/handles.rs, 3.).
//! 3. Files open for writing are recorded as lost (their bytes die with the process): their
//!    next write or close fails with EIO and nothing is published under their names; the
//!    multipart uploads under way are recorded, and the successor aborts them.
//! 4. A planned takeover passes the state file on (daemon/takeover.rs), so the store never
//!    holds two.
//! 5. The descriptors systemd passes are made close-on-exec and the variables naming them are
//!    removed, before any thread exists.
//! 6. For kernels that cannot resend, the numbers of the requests read and not answered are
//!    recorded too, every `EVERY` when they changed, in a small record of their own after the
//!    two slots (they change with every request, the filesystem's state does not): the
//!    successor fails them with EIO (fuse/handover.rs, 6.).
//! 7. A daemon closes the descriptors it inherited (but systemd's) before anything else: one
//!    started from a shell holding a file of its own mount (`exec 7<f; bucketfs takeover`)
//!    would otherwise hold that file, and keep the mount busy, for its whole life.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::fs::{Fs, FsState};
use crate::fuse::handover::{KernelInit, Unanswered};
use crate::fuse::{AdapterPort, IoState};
use crate::upload::PendingAbort;

use super::takeover::STATE_FORMAT;

/// How often the state is checked for changes (see 2.).
const EVERY: Duration = Duration::from_millis(100);

/// Where each slot starts in the memfd (sparse: only what is written takes memory).
const SLOT: u64 = 1 << 30;

/// Marks a slot header.
const MAGIC: u32 = 0x6266_7331;

/// Slot header: magic, format, clock (ns), length, CRC-32 of the body.
const HEADER: usize = 4 + 4 + 8 + 8 + 4;

/// The name of each descriptor in the store.
const FUSE_NAME: &str = "fuse";
const STATE_NAME: &str = "state";

/// What a daemon started after a crash needs.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CrashState {
    /// The kernel's INIT, for the synthetic handshake.
    pub init: KernelInit,
    /// The filesystem's state, writers lost.
    pub fs: FsState,
    /// Passthrough handles and backing ids.
    pub io: IoState,
    /// Multipart uploads to abort.
    pub uploads: Vec<PendingAbort>,
}

/// What systemd passed back at start.
#[derive(Debug)]
pub struct Stored {
    /// The `/dev/fuse` connection of the mount.
    pub fuse: OwnedFd,
    /// The state files (normally one).
    pub states: Vec<OwnedFd>,
}

/// The descriptors systemd passed to this process from its store, if any (see 1. and 5.).
/// Call before any thread exists.
pub fn take_stored() -> Option<Stored> {
    let ours = std::env::var("LISTEN_PID").ok()?.parse::<u32>().ok()? == std::process::id();
    let count: RawFd = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // No thread exists yet (see 5.).
        std::env::remove_var(name);
    }
    if !ours {
        return None;
    }
    let mut fuse = None;
    let mut states = Vec::new();
    for (i, name) in (0..count).zip(names.split(':').chain(std::iter::repeat(""))) {
        let fd = 3 + i;
        // SAFETY: systemd passed descriptors 3..3+LISTEN_FDS to this process; each is taken
        // once, here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        match name {
            FUSE_NAME if fuse.is_none() => fuse = Some(owned),
            STATE_NAME => states.push(owned),
            _ => drop(owned),
        }
    }
    Some(Stored {
        fuse: fuse?,
        states,
    })
}

/// Closes every descriptor this process inherited above stderr, except those systemd passed
/// (see 7.). Call it first, before anything is opened.
pub fn close_inherited() {
    let passed = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .filter(|pid| *pid == std::process::id())
        .and_then(|_| std::env::var("LISTEN_FDS").ok()?.parse::<u32>().ok())
        .unwrap_or(0);
    // SAFETY: close_range only closes descriptors; none from `3 + passed` on belongs to
    // anything in this process yet (no thread, no file opened).
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32.saturating_add(passed),
            u32::MAX,
            0u32,
        );
    }
}

/// True when systemd waits for notifications: a store may exist.
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Sends `state` with `fds` to systemd's notification socket.
fn notify_with_fds(state: &str, fds: &[RawFd]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let socket = std::env::var_os("NOTIFY_SOCKET")
        .ok_or_else(|| std::io::Error::other("NOTIFY_SOCKET is not set"))?;
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.connect_addr(&addr)?;
    let iov = [IoSlice::new(state.as_bytes())];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Where the record of unanswered requests starts (see 6.), and its magic number.
const UNANSWERED_AT: u64 = 2 * SLOT;
const UNANSWERED_MAGIC: u32 = 0x6266_7375;
/// Its header: magic, length, CRC of the body.
const UNANSWERED_HEADER: usize = 4 + 8 + 4;

/// The memfd the crash state is written to (see 2.).
#[derive(Debug)]
pub struct StateFile {
    file: std::fs::File,
    /// The slot written last.
    slot: parking_lot::Mutex<u64>,
}

impl StateFile {
    /// A new, empty state file.
    pub fn create() -> std::io::Result<Self> {
        // SAFETY: a valid C string; memfd_create returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"bucketfs-crash-state".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nobody else.
        Ok(Self::adopt(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// A state file passed by a predecessor.
    pub fn adopt(fd: OwnedFd) -> Self {
        Self {
            file: std::fs::File::from(fd),
            slot: parking_lot::Mutex::new(1),
        }
    }

    /// A second descriptor of the file.
    pub fn duplicate(&self) -> std::io::Result<OwnedFd> {
        Ok(self.file.try_clone()?.into())
    }

    /// Writes `body` to the slot not written last: body first, then its header.
    pub fn write(&self, body: &[u8]) -> std::io::Result<()> {
        if body.len() as u64 > SLOT - HEADER as u64 {
            return Err(std::io::Error::other("the state outgrew its slot"));
        }
        let mut slot = self.slot.lock();
        let next = 1 - *slot;
        let at = next * SLOT;
        let clock = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(&MAGIC.to_le_bytes());
        header.extend_from_slice(&STATE_FORMAT.to_le_bytes());
        header.extend_from_slice(&clock.to_le_bytes());
        header.extend_from_slice(&(body.len() as u64).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        self.write_record(at, &header, body)?;
        *slot = next;
        Ok(())
    }

    /// Writes `body` after a header of `header.len()` bytes at `at`, the header last and
    /// cleared first: a record torn by a crash never passes for a whole one.
    fn write_record(&self, at: u64, header: &[u8], body: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(&vec![0; header.len()], at)?;
        self.file.write_all_at(body, at + header.len() as u64)?;
        self.file.write_all_at(header, at)
    }

    /// Records the requests read and not answered (see 6.).
    pub fn write_unanswered(&self, left: &Unanswered) -> std::io::Result<()> {
        let body = serde_json::to_vec(left).map_err(std::io::Error::other)?;
        let mut header = Vec::with_capacity(UNANSWERED_HEADER);
        header.extend_from_slice(&UNANSWERED_MAGIC.to_le_bytes());
        header.extend_from_slice(&(body.len() as u64).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        self.write_record(UNANSWERED_AT, &header, &body)
    }

    /// The requests the daemon that wrote this file left unanswered; `None` when there is no
    /// whole record (see 6.).
    pub fn unanswered(&self) -> Option<Unanswered> {
        let mut header = [0u8; UNANSWERED_HEADER];
        self.file.read_exact_at(&mut header, UNANSWERED_AT).ok()?;
        let magic = u32::from_le_bytes(header[0..4].try_into().ok()?);
        let len = u64::from_le_bytes(header[4..12].try_into().ok()?);
        let crc = u32::from_le_bytes(header[12..16].try_into().ok()?);
        if magic != UNANSWERED_MAGIC || len > SLOT {
            return None;
        }
        let mut body = vec![0; usize::try_from(len).ok()?];
        self.file
            .read_exact_at(&mut body, UNANSWERED_AT + UNANSWERED_HEADER as u64)
            .ok()?;
        if crc32fast::hash(&body) != crc {
            return None;
        }
        serde_json::from_slice(&body).ok()
    }

    /// The newest whole slot: its clock and body. An error names why none is usable.
    fn newest(&self) -> Result<(u64, Vec<u8>), String> {
        let mut best: Option<(u64, Vec<u8>)> = None;
        let mut why = String::from("no state written");
        for slot in 0..2u64 {
            let at = slot * SLOT;
            let mut header = [0u8; HEADER];
            if self.file.read_exact_at(&mut header, at).is_err() {
                continue;
            }
            let word = |range: std::ops::Range<usize>| -> u64 {
                header[range]
                    .iter()
                    .rev()
                    .fold(0u64, |v, b| (v << 8) | u64::from(*b))
            };
            if word(0..4) != u64::from(MAGIC) {
                continue;
            }
            if word(4..8) != u64::from(STATE_FORMAT) {
                why = format!(
                    "state format {} (this bucketfs reads {STATE_FORMAT})",
                    word(4..8)
                );
                continue;
            }
            let (clock, len, crc) = (word(8..16), word(16..24), word(24..28));
            if len > SLOT {
                continue;
            }
            let mut body = vec![0; len as usize];
            if self
                .file
                .read_exact_at(&mut body, at + HEADER as u64)
                .is_err()
                || u64::from(crc32fast::hash(&body)) != crc
            {
                why = "a damaged state".into();
                continue;
            }
            if best.as_ref().is_none_or(|(c, _)| clock > *c) {
                best = Some((clock, body));
                *self.slot.lock() = slot;
            }
        }
        best.ok_or(why)
    }
}

/// Reads the newest state among `files`; the file it came from goes on being written.
pub fn read_newest(files: Vec<OwnedFd>) -> (Option<StateFile>, Result<CrashState, String>) {
    let mut best: Option<(u64, Vec<u8>, StateFile)> = None;
    let mut why = String::from("no state file in the store");
    for fd in files {
        let file = StateFile::adopt(fd);
        match file.newest() {
            Ok((clock, body)) if best.as_ref().is_none_or(|(c, _, _)| clock > *c) => {
                best = Some((clock, body, file));
            }
            Ok(_) => {}
            Err(e) => why = e,
        }
    }
    match best {
        Some((_, body, file)) => {
            let state =
                serde_json::from_slice(&body).map_err(|e| format!("an unreadable state: {e}"));
            (Some(file), state)
        }
        None => (None, Err(why)),
    }
}

/// Stores the connection and the state file in the service's fd store (see 1.).
pub fn store(dev: &OwnedFd, state: &StateFile) -> std::io::Result<()> {
    notify_with_fds(
        &format!("FDSTORE=1\nFDNAME={FUSE_NAME}"),
        &[dev.as_raw_fd()],
    )?;
    notify_with_fds(
        &format!("FDSTORE=1\nFDNAME={STATE_NAME}"),
        &[state.file.as_raw_fd()],
    )
}

/// Writes the crash state whenever it changed, on a thread of its own, for the life of the
/// process (see 2.).
pub fn keep_current(fs: Arc<Fs>, port: AdapterPort, file: Arc<StateFile>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("bucketfs-state".into())
        .spawn(move || {
            let mut last = None;
            let mut last_left = None;
            let mut not_before = std::time::Instant::now();
            let mut warned = false;
            loop {
                std::thread::sleep(EVERY);
                let Some(init) = port.kernel_init() else {
                    continue;
                };
                let left = port.gate().unanswered();
                if last_left.as_ref() != Some(&left) {
                    match file.write_unanswered(&left) {
                        Ok(()) => last_left = Some(left),
                        Err(e) if !warned => {
                            tracing::warn!("cannot record the requests under way for a restart after a crash: {e}");
                            warned = true;
                        }
                        Err(_) => {}
                    }
                }
                let now = fs.fingerprint();
                if last == Some(now) || std::time::Instant::now() < not_before {
                    continue;
                }
                let started = std::time::Instant::now();
                let state = CrashState {
                    init,
                    fs: fs.snapshot_now(),
                    io: port.io_state(),
                    uploads: fs.multipart_uploads(),
                };
                let written = serde_json::to_vec(&state)
                    .map_err(std::io::Error::other)
                    .and_then(|body| file.write(&body));
                // A big state (a million inodes) is written less often: at most a tenth of
                // this thread's time goes to it (see 2.).
                not_before = std::time::Instant::now() + started.elapsed() * 9;
                match written {
                    Ok(()) => last = Some(now),
                    Err(e) if !warned => {
                        tracing::warn!("cannot record the state for a restart after a crash: {e}");
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_whole_slot_is_read_and_a_torn_one_is_not() {
        let file = StateFile::create().unwrap();
        file.write(b"{\"first\":1}").unwrap();
        file.write(b"{\"second\":2}").unwrap();
        assert_eq!(file.newest().unwrap().1, b"{\"second\":2}");
        // The slot written last is torn (a crash in the middle of its body): the other one is read.
        let at = *file.slot.lock() * SLOT + HEADER as u64;
        file.file.write_all_at(b"XX", at).unwrap();
        assert_eq!(file.newest().unwrap().1, b"{\"first\":1}");
        // Both torn: nothing usable, and it says so.
        let other = (1 - at / SLOT) * SLOT + HEADER as u64;
        file.file.write_all_at(b"XX", other).unwrap();
        assert!(file.newest().is_err());
    }

    #[test]
    fn the_unanswered_requests_are_read_back_and_a_torn_record_is_not() {
        let file = StateFile::create().unwrap();
        assert_eq!(file.unanswered(), None);
        let left = Unanswered {
            ids: vec![8, 12],
            highest: 14,
        };
        file.write_unanswered(&left).unwrap();
        file.write(b"{}").unwrap();
        assert_eq!(file.unanswered(), Some(left));
        file.file
            .write_all_at(b"X", UNANSWERED_AT + UNANSWERED_HEADER as u64)
            .unwrap();
        assert_eq!(file.unanswered(), None);
    }
}
