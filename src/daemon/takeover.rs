//! `bucketfs takeover MOUNTPOINT`: a new process takes a live mount over from the daemon
//! serving it, without unmounting. Programs using the mount see a pause, never an error.
//!
//! The conversation, on the old daemon's status socket (both sides run as the same user or
//! root: the socket is private and checks its peer, status/mod.rs 5.):
//! 1. new: the line `takeover`; old: an `Offer` (state format, version, its command line and
//!    the environment it was started with, so the new process mounts with the same options
//!    and credentials chain).
//! 2. new: `go`, or `refuse: why` (an unknown state format, options it cannot read); a refusal
//!    leaves the old daemon serving as if nothing happened.
//! 3. old: closes the FUSE gate (fuse/handover.rs, 3.), exports its state (fs/state.rs) into
//!    a memfd and sends it with the descriptors: the `/dev/fuse` connection, the state, the
//!    staging files.
//! 4. new: imports the state and resumes the session (fuse/handover.rs, 2.), then says `done`;
//!    the old daemon exits at once, without unmounting, committing or aborting anything. Any
//!    failure before `done` (or the new process dying) opens the old daemon's gate again.
//! 5. new: waits for the old process to be gone (its end of the socket closes), asks the
//!    kernel to re-send what the old one read and never answered, and serves.
//!
//! Non-obvious problems:
//! 1. Messages are frames (a 4-byte length, then the bytes) read whole with `recvmsg`: a
//!    buffered read could swallow the bytes that carry the descriptors, and the kernel drops
//!    descriptors whose bytes are read without their control message.
//! 2. The state format carries a version (`STATE_FORMAT`); a new binary that cannot read the
//!    running daemon's refuses in step 2, before anything stopped.
//! 3. The old daemon's environment is handed over only for the names that configure the AWS
//!    chain, the proxies, logging and the user's directories: the new process is usually
//!    started from another shell or by the package manager, without them.

use std::io::{IoSlice, IoSliceMut, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::fs::{Fs, FsState};
use crate::fuse::handover::{KernelInit, Unanswered};
use crate::fuse::{AdapterPort, IoState};
use crate::status::{self, TakeoverPort};

use super::fdstore::StateFile;

/// The version of the state a daemon hands over; a successor reads only its own (see 2.).
pub const STATE_FORMAT: u32 = 1;

/// How long the old daemon waits for its requests under way before giving up the handover.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long either side waits for the other's next message.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the new daemon waits for the old one to be gone.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// The most descriptors one message carries (the kernel's SCM_MAX_FD).
const MAX_FDS: usize = 253;

/// Largest frame: the state is in a memfd, frames are small.
const MAX_FRAME: usize = 1 << 20;

/// What the old daemon offers before anything stops.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    /// Its state format.
    pub format: u32,
    /// Its bucketfs version.
    pub version: String,
    /// Its command line, program name first.
    pub args: Vec<String>,
    /// The environment names that matter to a mount (see 3.), with their values.
    pub env: Vec<(String, String)>,
}

/// The state in the memfd.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Snapshot {
    format: u32,
    init: KernelInit,
    fs: FsState,
    io: IoState,
    /// The index among the descriptors after the state of the crash-state file kept in
    /// systemd's fd store (daemon/fdstore.rs, 4.).
    crash_state: Option<usize>,
    /// The requests parked at the gate (fuse/handover.rs, 6.).
    #[serde(default)]
    unanswered: Unanswered,
}

/// What the new daemon receives.
#[derive(Debug)]
pub struct Taken {
    /// The kernel's INIT, for the synthetic handshake.
    pub init: KernelInit,
    /// The filesystem's state.
    pub fs: FsState,
    /// The passthrough state of the open files.
    pub io: IoState,
    /// The live `/dev/fuse` connection.
    pub dev: OwnedFd,
    /// The descriptors `fs` refers to by index (staging files).
    pub fds: Vec<OwnedFd>,
    /// The crash-state file the old daemon kept in systemd's fd store.
    pub crash_state: Option<OwnedFd>,
    /// The requests the old daemon parked: failed with EIO where the kernel cannot resend.
    pub unanswered: Unanswered,
}

/// True for an environment name handed to a successor (see 3.).
fn handed(name: &str) -> bool {
    name.starts_with("AWS_")
        || matches!(
            name.to_ascii_uppercase().as_str(),
            "HOME"
                | "USER"
                | "XDG_RUNTIME_DIR"
                | "XDG_CACHE_HOME"
                | "RUST_LOG"
                | "SSL_CERT_FILE"
                | "SSL_CERT_DIR"
                | "HTTP_PROXY"
                | "HTTPS_PROXY"
                | "NO_PROXY"
        )
}

fn send_frame(stream: &UnixStream, body: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let len = (body.len() as u32).to_be_bytes();
    let iov = [IoSlice::new(&len), IoSlice::new(body)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    let total = 4 + body.len();
    if sent < total {
        // The descriptors went with the first bytes; the rest is plain data.
        let mut rest = stream;
        let skip = sent.saturating_sub(4);
        if sent < 4 {
            rest.write_all(&len[sent..])?;
        }
        rest.write_all(&body[skip..])?;
    }
    Ok(())
}

fn recv_frame(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut head = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut fds = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut head)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel just installed these descriptors for us; nothing else
                // owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        msg.bytes
    };
    if got == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the other side closed the connection",
        ));
    }
    let mut reader = stream;
    reader.read_exact(&mut head[got..])?;
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("a frame of {len} bytes")));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok((body, fds))
}

fn recv_text(stream: &UnixStream) -> std::io::Result<String> {
    let (body, _) = recv_frame(stream)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A memfd holding `bytes`.
fn memfd_with(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: the name is a valid C string; memfd_create returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"bucketfs-state".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    Ok(file.into())
}

/// The running daemon's side: answers `takeover` on the status socket.
#[derive(Debug)]
pub struct Predecessor {
    fs: Arc<Fs>,
    port: AdapterPort,
    /// A descriptor of the session's connection.
    dev: OwnedFd,
    rt: tokio::runtime::Handle,
    /// The command line this mount was made with (a successor's own is `takeover ...`).
    args: Vec<String>,
    /// The state kept for a restart after a crash, passed on (daemon/fdstore.rs, 4.).
    crash_state: Option<Arc<StateFile>>,
}

impl Predecessor {
    /// The handover side of a running mount.
    pub fn new(
        fs: Arc<Fs>,
        port: AdapterPort,
        dev: OwnedFd,
        rt: tokio::runtime::Handle,
        args: Vec<String>,
        crash_state: Option<Arc<StateFile>>,
    ) -> Self {
        Self {
            fs,
            port,
            dev,
            rt,
            args,
            crash_state,
        }
    }

    fn hand_over(&self, stream: &UnixStream, socket: &Path) -> Result<()> {
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let offer = Offer {
            format: STATE_FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            args: self.args.clone(),
            env: std::env::vars().filter(|(name, _)| handed(name)).collect(),
        };
        send_frame(stream, &serde_json::to_vec(&offer)?, &[])?;
        let answer = recv_text(stream)?;
        if answer != "go" {
            bail!("the new process declined: {answer}");
        }
        tracing::info!("takeover asked: stopping requests at a boundary");
        let init = self
            .port
            .kernel_init()
            .ok_or_else(|| anyhow!("the session has not started"))?;
        if !self.port.gate().close(DRAIN_TIMEOUT) {
            bail!("requests still under way after {DRAIN_TIMEOUT:?}");
        }
        let mut fds = Vec::new();
        let fs = self
            .rt
            .block_on(async {
                tokio::time::timeout(ANSWER_TIMEOUT, self.fs.export(&mut fds)).await
            })
            .map_err(|_| anyhow!("uploads' parts in flight took over {ANSWER_TIMEOUT:?}"))?
            .map_err(|e| anyhow!("{e}"))?;
        let crash_state = match &self.crash_state {
            Some(file) => {
                fds.push(file.duplicate()?);
                Some(fds.len() - 1)
            }
            None => None,
        };
        if fds.len() + 2 > MAX_FDS {
            bail!("{} staging files: more than one message carries", fds.len());
        }
        let (handles, writers) = (fs.handles(), fs.writers());
        let snapshot = Snapshot {
            format: STATE_FORMAT,
            init,
            fs,
            io: self.port.io_state(),
            crash_state,
            unanswered: self.port.gate().unanswered(),
        };
        let state = memfd_with(&serde_json::to_vec(&snapshot)?)?;
        let mut all = vec![self.dev.as_raw_fd(), state.as_raw_fd()];
        all.extend(fds.iter().map(AsRawFd::as_raw_fd));
        send_frame(stream, b"state", &all)?;
        let answer = recv_text(stream)?;
        if answer != "done" {
            bail!("the new process did not resume: {answer}");
        }
        tracing::info!(
            handles,
            writers,
            "handed the mount over to the new process; exiting without unmounting"
        );
        // The successor binds its status socket once this process is gone: the path must be
        // free by then (a socket file left behind would look live while this one exits).
        let _ = std::fs::remove_file(socket);
        // Nothing is dropped: no upload aborted, nothing unmounted (see the module's 4.).
        std::process::exit(0);
    }
}

impl TakeoverPort for Predecessor {
    fn serve(&self, stream: UnixStream, socket: &Path) {
        if let Err(e) = self.hand_over(&stream, socket) {
            tracing::warn!("takeover not done ({e:#}); this daemon goes on serving");
            let _ = send_frame(&stream, format!("error: {e:#}").as_bytes(), &[]);
        }
        self.port.gate().open();
    }
}

/// The new daemon's side of the conversation.
#[derive(Debug)]
pub struct Successor {
    stream: UnixStream,
    offer: Offer,
}

impl Successor {
    /// Asks the daemon serving `mountpoint` to hand it over; returns its offer.
    pub fn connect(mountpoint: &Path) -> Result<Self> {
        let dir = status::own_socket_dir();
        let shown = status::mount_path(mountpoint);
        let path = status::socket_path(&dir, &shown);
        let mut stream = UnixStream::connect(&path).with_context(|| {
            format!(
                "no bucketfs daemon of this user answers for {} ({})",
                shown.display(),
                path.display()
            )
        })?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.write_all(b"takeover\n")?;
        let (body, _) = recv_frame(&stream)
            .with_context(|| format!("the daemon of {} made no offer", shown.display()))?;
        let offer: Offer = serde_json::from_slice(&body).map_err(|_| {
            anyhow!(
                "the daemon of {} does not know takeovers (an older bucketfs?): it keeps serving",
                shown.display()
            )
        })?;
        Ok(Self { stream, offer })
    }

    /// What the running daemon offered.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Declines: the running daemon goes on serving.
    pub fn refuse(&self, why: &str) {
        let _ = send_frame(&self.stream, format!("refuse: {why}").as_bytes(), &[]);
    }

    /// Asks for the state; the old daemon stops serving until `done` or a refusal.
    pub fn take(&self) -> Result<Taken> {
        send_frame(&self.stream, b"go", &[])?;
        let (body, fds) = recv_frame(&self.stream).context("receiving the state")?;
        if body != b"state" {
            bail!("{}", String::from_utf8_lossy(&body));
        }
        let mut fds = fds.into_iter();
        let (Some(dev), Some(state)) = (fds.next(), fds.next()) else {
            bail!("the state came without its descriptors");
        };
        let mut file = std::fs::File::from(state);
        file.rewind()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow!(
                "cannot read the running daemon's state (format {}): {e}",
                self.offer.format
            )
        })?;
        if snapshot.format != STATE_FORMAT {
            bail!(
                "the running daemon's state is format {}, this bucketfs reads {STATE_FORMAT}",
                snapshot.format
            );
        }
        let mut fds: Vec<OwnedFd> = fds.collect();
        let crash_state = snapshot
            .crash_state
            .filter(|i| *i + 1 == fds.len())
            .and_then(|_| fds.pop());
        Ok(Taken {
            init: snapshot.init,
            fs: snapshot.fs,
            io: snapshot.io,
            dev,
            fds,
            crash_state,
            unanswered: snapshot.unanswered,
        })
    }

    /// Says the session is resumed: the old daemon exits. Returns once it is gone (its end
    /// of the connection closed), or after `EXIT_WAIT`.
    pub fn done(self) -> Result<()> {
        send_frame(&self.stream, b"done", &[])?;
        self.stream.set_read_timeout(Some(EXIT_WAIT))?;
        let mut rest = Vec::new();
        match (&self.stream).read_to_end(&mut rest) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!("the old daemon is still there after {EXIT_WAIT:?} ({e})");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_bytes_and_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let memfd = memfd_with(b"hello").unwrap();
        send_frame(&a, b"state", &[memfd.as_raw_fd()]).unwrap();
        let (body, fds) = recv_frame(&b).unwrap();
        assert_eq!(body, b"state");
        assert_eq!(fds.len(), 1);
        let mut file = std::fs::File::from(fds.into_iter().next().unwrap());
        let mut text = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        drop(a);
        assert!(recv_frame(&b).is_err(), "a closed peer reads as an error");
    }

    #[test]
    fn only_the_names_a_mount_needs_are_handed_over() {
        assert!(handed("AWS_ACCESS_KEY_ID"));
        assert!(handed("https_proxy"));
        assert!(handed("HOME"));
        assert!(!handed("LD_PRELOAD"));
        assert!(!handed("PATH"));
        assert!(!handed("NOTIFY_SOCKET"));
    }
}
