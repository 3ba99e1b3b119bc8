//! Handing a live FUSE connection to another process: the gate that stops requests at a
//! request boundary, a session resumed on a descriptor of a connection already initialised,
//! and the kernel's re-sending of requests a previous process read but never answered.
//!
//! Non-obvious problems:
//! 1. The kernel keeps a mount while any descriptor of its connection is open; the handover
//!    passes one (`SCM_RIGHTS`, daemon/takeover.rs) and the old process exits without
//!    unmounting.
//! 2. fuser 0.18 can only start a session with the `FUSE_INIT` handshake, which the kernel
//!    sends once per connection. `resume` lets the handshake read a synthetic INIT, carrying
//!    the kernel's original version, flags and read-ahead (`KernelInit`, recorded by the
//!    first process and passed on), from one end of a socket pair; its reply goes to the
//!    socket, not the kernel. Then the live descriptor is `dup3`ed over the socket's number,
//!    so every thread of the session reads the real connection. Nothing of fuser is forked;
//!    the day fuser can resume a session (its issue #753) this shrinks to a call.
//! 3. Requests are stopped at a boundary by the gate: once closed, a FUSE thread that reads a
//!    request parks before acting on it, so each thread holds at most one unanswered request,
//!    and the gate waits for the requests already under way (their spawned tasks too) to be
//!    answered. Parked requests stay unanswered in the connection's processing queue; the new
//!    process asks the kernel to queue them again (`FUSE_NOTIFY_RESEND`, Linux 6.9) once the
//!    old process is gone. A refused handover opens the gate and the parked requests go on.
//! 4. The resent requests survive only on the descriptor the kernel queued them on: sessions
//!    run without `clone_fd` (one shared descriptor), since closing a cloned descriptor
//!    fails the requests read through it with ECONNABORTED.
//! 5. A FORGET has no answer and is not resent: one parked at the handover is lost, so the new
//!    process holds that inode's number a little longer (memory, never a wrong answer).
//! 6. Kernels before 6.9 cannot resend; there the new process fails the requests the old one
//!    left unanswered with EIO instead of leaving their callers waiting (`fail`). The kernel
//!    matches an answer by the request's number (`unique`) among the requests read and not
//!    answered, and ignores one it does not know (ENOENT), so answering a number is safe
//!    whether or not it is still open. The gate records the numbers under way (parked ones
//!    too) and the highest seen (`Unanswered`); after a crash the record is up to 100 ms old
//!    (daemon/fdstore.rs), so the numbers just above the highest are answered too, before
//!    the new session reads any request. Numbers count up by 2 per request on a connection.

use parking_lot::{Condvar, Mutex};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use fuser::{KernelConfig, Session};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::FuseAdapter;

/// `FUSE_INIT`'s opcode.
const FUSE_INIT: u32 = 26;
/// The INIT flag that says `flags2` carries the high 32 bits.
const FUSE_INIT_EXT: u64 = 1 << 30;
/// `FUSE_NOTIFY_RESEND`'s code (Linux 6.9).
const FUSE_NOTIFY_RESEND: i32 = 7;

/// What the kernel offered in its one INIT: recorded by the first process of a mount, passed
/// to every successor (see 2.).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelInit {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// The largest read-ahead the kernel allows.
    pub max_readahead: u32,
    /// The kernel's capability flags, all 64 bits.
    pub flags: u64,
}

impl KernelInit {
    /// What a daemon resumes with when its predecessor's record is lost (a crash before the
    /// first state was written): a protocol every kernel since 5.x speaks, no optional flag.
    pub const FALLBACK: Self = Self {
        major: 7,
        minor: 31,
        max_readahead: 128 << 10,
        flags: 0,
    };

    /// What `config` says the kernel offered.
    pub(super) fn of(config: &mut KernelConfig) -> Self {
        let version = config.kernel_abi();
        // The setter reports the kernel's bound when asked for more; nothing is changed.
        let max_readahead = config
            .set_max_readahead(u32::MAX)
            .map_or_else(|bound| bound, |_| u32::MAX);
        Self {
            major: version.0,
            minor: version.1,
            max_readahead,
            flags: config.capabilities().bits(),
        }
    }

    /// The INIT request the kernel sent, as bytes: a `fuse_in_header` and a `fuse_init_in`.
    fn request(&self) -> Vec<u8> {
        let flags = self.flags | FUSE_INIT_EXT;
        let mut bytes = Vec::with_capacity(104);
        bytes.extend_from_slice(&104u32.to_ne_bytes()); // len
        bytes.extend_from_slice(&FUSE_INIT.to_ne_bytes()); // opcode
        bytes.extend_from_slice(&1u64.to_ne_bytes()); // unique
        bytes.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
        bytes.extend_from_slice(&[0; 16]); // uid, gid, pid, padding
        bytes.extend_from_slice(&self.major.to_ne_bytes());
        bytes.extend_from_slice(&self.minor.to_ne_bytes());
        bytes.extend_from_slice(&self.max_readahead.to_ne_bytes());
        bytes.extend_from_slice(&(flags as u32).to_ne_bytes());
        bytes.extend_from_slice(&((flags >> 32) as u32).to_ne_bytes());
        bytes.extend_from_slice(&[0; 44]); // unused
        bytes
    }
}

/// A session on `live`, a descriptor of a connection another process initialised (see 2.).
pub fn resume(
    adapter: FuseAdapter,
    live: OwnedFd,
    init: &KernelInit,
    config: fuser::Config,
) -> io::Result<Session<FuseAdapter>> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::unistd::write(&theirs, &init.request())?;
    let slot = ours.as_raw_fd();
    let acl = config.acl;
    let session = Session::from_fd(adapter, ours, acl, config)?;
    // The handshake's answer went to `theirs`; it is dropped unread with the socket.
    // SAFETY: `slot` is the descriptor the session owns; dup3 replaces it atomically with the
    // live connection, which the session then reads and answers (see 2.).
    if unsafe { libc::dup3(live.as_raw_fd(), slot, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(theirs);
    Ok(session)
}

/// Asks the kernel to queue again every request read and not answered on this connection
/// (see 3.); `Unsupported` on kernels before 6.9.
pub fn resend(dev: BorrowedFd<'_>) -> io::Result<()> {
    // A notification: unique 0 and the code in `error`.
    match nix::sys::uio::writev(dev, &[IoSlice::new(&out_header(FUSE_NOTIFY_RESEND, 0))]) {
        Ok(_) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel cannot re-send requests (FUSE_NOTIFY_RESEND needs Linux 6.9)",
        )),
        Err(e) => Err(e.into()),
    }
}

/// A duplicate of the session's connection, kept for the next handover.
pub fn connection(session: &Session<FuseAdapter>) -> io::Result<OwnedFd> {
    session.as_fd().try_clone_to_owned()
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    in_flight: usize,
    /// The numbers of the requests read and not answered, with how many holders each has
    /// (the callback and the task it spawned); see 6.
    unanswered: std::collections::HashMap<u64, u32>,
    highest: u64,
}

/// The requests a daemon read and had not answered (see 6.).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unanswered {
    pub ids: Vec<u64>,
    /// The highest request number seen.
    pub highest: u64,
}

/// How many request numbers above the highest recorded `fail` answers after a crash (see
/// 6.): more requests than a daemon reads between two records (100 ms).
const CRASH_SWEEP: u64 = 1 << 17;

/// Lets requests through, or parks them at a handover (see 3.).
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

/// One request (or its spawned task) under way; the gate counts it until dropped.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a Gate,
    unique: u64,
}

/// A spawned task's share of a request under way.
#[derive(Debug)]
pub struct OwnedPass {
    gate: std::sync::Arc<Gate>,
    unique: u64,
}

impl Gate {
    /// Waits while the gate is closed, then counts request `unique` under way (recorded as
    /// unanswered while it waits too: see 6.).
    pub fn enter(&self, unique: u64) -> Pass<'_> {
        let mut state = self.state.lock();
        state.record(unique);
        while state.closed {
            self.changed.wait(&mut state);
        }
        state.in_flight += 1;
        Pass { gate: self, unique }
    }

    /// Counts the task request `pass` spawned (its request is under way: no wait).
    pub fn track(self: &std::sync::Arc<Self>, pass: &Pass<'_>) -> OwnedPass {
        let mut state = self.state.lock();
        state.in_flight += 1;
        state.record(pass.unique);
        OwnedPass {
            gate: std::sync::Arc::clone(self),
            unique: pass.unique,
        }
    }

    fn leave(&self, unique: u64) {
        let mut state = self.state.lock();
        state.in_flight -= 1;
        state.forget(unique);
        if state.in_flight == 0 {
            self.changed.notify_all();
        }
    }

    /// The requests read and not answered now (see 6.).
    pub fn unanswered(&self) -> Unanswered {
        let state = self.state.lock();
        let mut ids: Vec<u64> = state.unanswered.keys().copied().collect();
        ids.sort_unstable();
        Unanswered {
            ids,
            highest: state.highest,
        }
    }

    /// Closes the gate and waits up to `timeout` for the requests under way to be answered;
    /// false (and the gate open again) when they were not.
    pub fn close(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        state.closed = true;
        while state.in_flight > 0 {
            if self.changed.wait_until(&mut state, deadline).timed_out() && state.in_flight > 0 {
                state.closed = false;
                self.changed.notify_all();
                return false;
            }
        }
        true
    }

    /// Opens the gate: parked requests go on.
    pub fn open(&self) {
        self.state.lock().closed = false;
        self.changed.notify_all();
    }
}

impl GateState {
    fn record(&mut self, unique: u64) {
        *self.unanswered.entry(unique).or_default() += 1;
        self.highest = self.highest.max(unique);
    }

    fn forget(&mut self, unique: u64) {
        if let std::collections::hash_map::Entry::Occupied(mut held) = self.unanswered.entry(unique)
        {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.leave(self.unique);
    }
}

impl Drop for OwnedPass {
    fn drop(&mut self) {
        self.gate.leave(self.unique);
    }
}

/// Answers with EIO the requests `left` names, and after a crash (`crashed`) the numbers
/// just above its highest, on a connection no session reads yet (see 6.). Returns how many
/// answers the kernel took.
pub fn fail(dev: BorrowedFd<'_>, left: &Unanswered, crashed: bool) -> usize {
    let above = if crashed { CRASH_SWEEP / 2 } else { 0 };
    left.ids
        .iter()
        .copied()
        .chain((1..=above).map(|i| left.highest.saturating_add(2 * i)))
        .filter(|&unique| unique != 0)
        .filter(|&unique| {
            let answer = out_header(-libc::EIO, unique);
            nix::sys::uio::writev(dev, &[IoSlice::new(&answer)]).is_ok()
        })
        .count()
}

/// A `fuse_out_header` with nothing after it: an error answer to request `unique`, or a
/// notification (`unique` 0, its code in `error`).
fn out_header(error: i32, unique: u64) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&16u32.to_ne_bytes());
    header[4..8].copy_from_slice(&error.to_ne_bytes());
    header[8..].copy_from_slice(&unique.to_ne_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn closing_waits_for_requests_under_way_and_parks_new_ones() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter(2);
        let task = gate.track(&pass);
        drop(pass);
        // Answered only when the task it spawned is done.
        assert_eq!(gate.unanswered().ids, vec![2]);
        let closer = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.close(Duration::from_secs(5)))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closer.is_finished(), "closed while a task was under way");
        drop(task);
        assert!(closer.join().unwrap_or(false));
        let parked = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || drop(gate.enter(4)))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !parked.is_finished(),
            "a request went through a closed gate"
        );
        // A parked request was read and is not answered.
        let left = gate.unanswered();
        assert_eq!((left.ids, left.highest), (vec![4], 4));
        gate.open();
        assert!(parked.join().is_ok());
        assert!(gate.unanswered().ids.is_empty());
    }

    #[test]
    fn a_close_that_times_out_opens_the_gate_again() {
        let gate = Gate::default();
        let _pass = gate.enter(2);
        assert!(!gate.close(Duration::from_millis(20)));
        let _another = gate.enter(4);
    }

    #[test]
    fn the_synthetic_init_carries_all_flags() {
        let init = KernelInit {
            major: 7,
            minor: 41,
            max_readahead: 131072,
            flags: (1 << 37) | 1,
        };
        let bytes = init.request();
        assert_eq!(bytes.len(), 104);
        assert_eq!(&bytes[4..8], &FUSE_INIT.to_ne_bytes());
        assert_eq!(&bytes[40..44], &7u32.to_ne_bytes());
        assert_eq!(&bytes[52..56], &((1u32 << 30) | 1).to_ne_bytes());
        assert_eq!(&bytes[56..60], &(1u32 << 5).to_ne_bytes());
    }
}
