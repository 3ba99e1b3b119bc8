//! Mounting and unmounting the FUSE filesystem.
//!
//! Non-obvious problems:
//! 1. Under `x-systemd.automount` the mount point carries systemd's autofs placeholder. Opening
//!    it (fuser does, to read its mode) asks systemd to mount it, and systemd is waiting for us:
//!    a deadlock until the unit times out. As root we call mount(2) ourselves, with the mode
//!    read by `fstatat(AT_NO_AUTOMOUNT)`, and hand fuser the /dev/fuse descriptor; mount(2)
//!    itself mounts over the placeholder. Other users go through fuser and fusermount3.
//! 2. A mount made here is ours to unmount: umount2, or lazily (MNT_DETACH) while files on it
//!    are still open, so the daemon exits once they are closed.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What the kernel mount says about the filesystem.
#[derive(Debug, Clone)]
pub struct MountSpec<'a> {
    /// Shown as the source in /proc/mounts (`bucket` or `bucket:prefix`).
    pub fs_name: &'a str,
    pub read_only: bool,
    pub allow_other: bool,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True when `path` is a directory, found without triggering an automount on it (statx, and so
/// `std::fs::metadata`, would trigger one).
pub fn is_dir_no_automount(path: &Path) -> io::Result<bool> {
    Ok(is_dir(&stat_no_automount(path)?))
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn stat_no_automount(path: &Path) -> io::Result<libc::stat> {
    let target = c_path(path)?;
    // SAFETY: fstatat fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe {
        libc::fstatat(
            libc::AT_FDCWD,
            target.as_ptr(),
            &mut st,
            libc::AT_NO_AUTOMOUNT,
        )
    })?;
    Ok(st)
}

/// Mounts a FUSE filesystem at `mountpoint` with mount(2) (root only) and returns the
/// /dev/fuse descriptor to serve it on. The mount point is never opened.
pub fn mount_fuse(mountpoint: &Path, spec: &MountSpec) -> io::Result<OwnedFd> {
    let target = c_path(mountpoint)?;
    let st = stat_no_automount(mountpoint)?;
    if !is_dir(&st) {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    // SAFETY: a constant NUL-terminated path; the descriptor is owned below.
    let raw = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={raw},rootmode={:o},user_id={uid},group_id={gid},default_permissions,subtype=bucketfs",
        st.st_mode
    );
    if spec.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if spec.read_only {
        flags |= libc::MS_RDONLY;
    }
    let source = CString::new(spec.fs_name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "source contains a NUL byte"))?;
    let data = CString::new(data).expect("no NUL in mount options");
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"fuse".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok(fd)
}

/// Unmounts `path`; when it is busy (files still open), detaches it instead: it leaves the
/// namespace now, and the kernel ends the session once the last file is closed.
pub fn unmount(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    // SAFETY: a valid NUL-terminated path; umount2 touches nothing else.
    match check(unsafe { libc::umount2(target.as_ptr(), 0) }) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            tracing::warn!(
                "{} is busy: detaching it; the daemon exits once its open files are closed",
                path.display()
            );
            // SAFETY: as above.
            check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            // Not root: the setuid helper unmounts what this user mounted.
            let status = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(path)
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!("fusermount3 -u -z: {status}")))
            }
        }
        other => other,
    }
}
