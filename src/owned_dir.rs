//! Directories the daemon writes into (staging, the disk cache, the status socket's): made
//! by the daemon's effective user, or checked before use, and then used through a descriptor.
//!
//! Non-obvious problems:
//! 1. A path in a world-writable directory (`/var/tmp`, `/tmp`) may have been made first by
//!    another user, as a directory of theirs or a symlink to somewhere of root's. So the last
//!    component is opened with `O_NOFOLLOW | O_DIRECTORY` and the *descriptor* is checked
//!    (`fstat`): owned by the effective user and not writable by group or others, else the
//!    mount refuses with one line naming the directory and what is wrong. Checking the path
//!    and then opening it would leave a window to swap it.
//! 2. Missing directories are made mode 0700 (ancestors too), whatever the umask.
//! 3. Files are made relative to the checked descriptor, never by path: `O_TMPFILE` (no name
//!    at all) where the filesystem has it, else a fresh name with `O_CREAT | O_EXCL |
//!    O_NOFOLLOW` that is unlinked at once. Neither can follow a symlink or truncate a file
//!    that was there before.
//! 4. Only the directory itself is checked, not its ancestors: a user who can rename an
//!    ancestor could already replace the directory; the checked descriptor is what is used.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum OwnedDirError {
    /// The path is a symlink.
    #[error("{0} is a symbolic link; refusing to follow it")]
    Symlink(PathBuf),
    /// The path is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// Another user owns it.
    #[error("{path} is owned by uid {owner}, not by this daemon's uid {me}; refusing to use it")]
    Owner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        me: u32,
    },
    /// Group or others may write it.
    #[error("{path} is writable by group or others (mode {mode:04o}); refusing to use it (chmod go-w, or choose another directory)")]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It cannot be made or opened.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

impl OwnedDirError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The errno closest to the refusal (EACCES for a directory of someone else's).
    pub fn raw_os_error(&self) -> i32 {
        match self {
            Self::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Self::NotADirectory(_) => libc::ENOTDIR,
            Self::Symlink(_) => libc::ELOOP,
            Self::Owner { .. } | Self::Writable { .. } => libc::EACCES,
        }
    }
}

impl From<OwnedDirError> for io::Error {
    fn from(e: OwnedDirError) -> Self {
        let kind = io::Error::from_raw_os_error(e.raw_os_error()).kind();
        io::Error::new(kind, e.to_string())
    }
}

/// A directory of the daemon's own, held open.
#[derive(Debug)]
pub struct OwnedDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// The daemon's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn c_name(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl OwnedDir {
    /// Makes `path` (mode 0700, ancestors too) or opens it, and checks it is this user's own.
    pub fn open_or_create(path: &Path) -> Result<Self, OwnedDirError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| OwnedDirError::io(path, e))?;
            }
            Err(e) => return Err(OwnedDirError::io(path, e)),
        }
        Self::open(path)
    }

    /// Opens an existing `path` without following a symlink and checks it is this user's own.
    pub fn open(path: &Path) -> Result<Self, OwnedDirError> {
        let name = c_name(path.as_os_str()).map_err(|e| OwnedDirError::io(path, e))?;
        // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
        let fd = unsafe {
            libc::open(
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) => OwnedDirError::Symlink(path.to_path_buf()),
                Some(libc::ENOTDIR) => match std::fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_symlink() => {
                        OwnedDirError::Symlink(path.to_path_buf())
                    }
                    _ => OwnedDirError::NotADirectory(path.to_path_buf()),
                },
                _ => OwnedDirError::io(path, e),
            });
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let dir = Self {
            path: path.to_path_buf(),
            fd,
        };
        dir.check()?;
        Ok(dir)
    }

    fn check(&self) -> Result<(), OwnedDirError> {
        let meta = self.file().metadata().map_err(|e| self.error(e))?;
        let me = euid();
        if meta.uid() != me {
            return Err(OwnedDirError::Owner {
                path: self.path.clone(),
                owner: meta.uid(),
                me,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(OwnedDirError::Writable {
                path: self.path.clone(),
                mode,
            });
        }
        Ok(())
    }

    fn error(&self, e: io::Error) -> OwnedDirError {
        OwnedDirError::io(&self.path, e)
    }

    /// The directory's descriptor as a `File` (for `fstat`, `fchmod`), borrowed.
    fn file(&self) -> std::mem::ManuallyDrop<File> {
        // SAFETY: the fd stays open while `self` lives; ManuallyDrop never closes it.
        std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(self.fd.as_raw_fd()) })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the directory was removed since it was opened (no name links to it).
    pub fn removed(&self) -> bool {
        self.file().metadata().is_ok_and(|m| m.nlink() == 0)
    }

    /// Takes group and other permissions away (for a socket directory that an earlier
    /// version made 0755).
    pub fn make_private(&self) -> io::Result<()> {
        self.file()
            .set_permissions(std::fs::Permissions::from_mode(0o700))
    }

    /// Opens (creating, mode 0700) the subdirectory `name`, checked the same way. `name` is
    /// one component, never a path.
    pub fn subdir(&self, name: &str) -> Result<Self, OwnedDirError> {
        let path = self.path.join(name);
        let c = c_name(name.as_ref()).map_err(|e| OwnedDirError::io(&path, e))?;
        if name.contains('/') || name == ".." || name == "." {
            return Err(OwnedDirError::io(
                &path,
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        // SAFETY: valid fd and NUL-terminated name; the result is checked.
        let made = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) };
        if made < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(OwnedDirError::io(&path, e));
            }
        }
        // SAFETY: as above.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => OwnedDirError::NotADirectory(path),
                _ => OwnedDirError::io(&path, e),
            });
        }
        // SAFETY: just opened, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let dir = Self { path, fd };
        dir.check()?;
        Ok(dir)
    }

    /// A new file with no name, open for reading and writing (mode 0600): `O_TMPFILE`, or a
    /// fresh name made with `O_EXCL | O_NOFOLLOW` and unlinked at once (3.).
    pub fn unnamed_file(&self) -> io::Result<File> {
        let dot = c_name(".".as_ref())?;
        // SAFETY: valid fd and NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                dot.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: just opened, owned by nothing else.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL) => {}
            _ => return Err(e),
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let name = format!(
                ".tmp-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let c = c_name(name.as_ref())?;
            // SAFETY: as above.
            let fd = unsafe {
                libc::openat(
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_RDWR
                        | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EEXIST) {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: just opened, owned by nothing else.
            let file = unsafe { File::from_raw_fd(fd) };
            // SAFETY: valid fd and name.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
            return Ok(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_made_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b");
        let dir = OwnedDir::open_or_create(&path).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(
            std::fs::metadata(tmp.path().join("a")).unwrap().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_symlink_a_file_or_a_writable_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = OwnedDir::open_or_create(&link).unwrap_err();
        assert!(matches!(err, OwnedDirError::Symlink(_)), "{err}");
        assert!(err.to_string().contains("link"), "{err}");

        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = OwnedDir::open_or_create(&file).unwrap_err();
        assert!(matches!(err, OwnedDirError::NotADirectory(_)), "{err}");

        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = OwnedDir::open_or_create(&real).unwrap_err();
        assert!(
            err.to_string()
                .contains("writable by group or others (mode 0777)"),
            "{err}"
        );
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        OwnedDir::open_or_create(&real).expect("0755 of our own is fine");
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if euid() != 0 {
            // Only root can give a directory away; / is root's, so the check is still run.
            let err = OwnedDir::open(Path::new("/")).unwrap_err();
            assert!(matches!(err, OwnedDirError::Owner { .. }), "{err}");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = OwnedDir::open_or_create(&theirs).unwrap_err();
        assert!(
            err.to_string()
                .contains("owned by uid 65534, not by this daemon's uid 0"),
            "{err}"
        );
    }

    #[test]
    fn unnamed_files_never_follow_a_planted_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = OwnedDir::open_or_create(&tmp.path().join("d")).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        for n in 0..64 {
            let name = format!(".tmp-{}-{n}", std::process::id());
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        let mut file = dir.unnamed_file().unwrap();
        std::io::Write::write_all(&mut file, b"scratch").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let sub = dir.subdir("v2").unwrap();
        assert!(sub.path().ends_with("d/v2"));
        std::os::unix::fs::symlink(tmp.path(), dir.path().join("evil")).unwrap();
        assert!(dir.subdir("evil").is_err(), "a symlinked subdirectory");
    }
}
