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

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

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
    fn io(path: &Path, source: impl Into<io::Error>) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source: source.into(),
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
    nix::unistd::geteuid().as_raw()
}

/// A directory, opened without following a symlink in its last component.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

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
        let fd = open(path, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            // O_NOFOLLOW with O_DIRECTORY reports a symlink as either.
            Errno::ELOOP | Errno::ENOTDIR
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                OwnedDirError::Symlink(path.to_path_buf())
            }
            Errno::ENOTDIR => OwnedDirError::NotADirectory(path.to_path_buf()),
            other => OwnedDirError::io(path, other),
        })?;
        Self::checked(path.to_path_buf(), fd)
    }

    /// `fd` as the directory `path`, once it is this user's own and private to writes.
    fn checked(path: PathBuf, fd: OwnedFd) -> Result<Self, OwnedDirError> {
        let stat = fstat(&fd).map_err(|e| OwnedDirError::io(&path, e))?;
        let me = euid();
        if stat.st_uid != me {
            return Err(OwnedDirError::Owner {
                path,
                owner: stat.st_uid,
                me,
            });
        }
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(OwnedDirError::Writable { path, mode });
        }
        Ok(Self { path, fd })
    }

    fn stat(&self) -> nix::Result<FileStat> {
        fstat(&self.fd)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the directory was removed since it was opened (no name links to it).
    pub fn removed(&self) -> bool {
        self.stat().is_ok_and(|s| s.st_nlink == 0)
    }

    /// Takes group and other permissions away (for a socket directory that an earlier
    /// version made 0755).
    pub fn make_private(&self) -> io::Result<()> {
        Ok(fchmod(&self.fd, Mode::S_IRWXU)?)
    }

    /// Opens (creating, mode 0700) the subdirectory `name`, checked the same way. `name` is
    /// one component, never a path.
    pub fn subdir(&self, name: &str) -> Result<Self, OwnedDirError> {
        let path = self.path.join(name);
        if name.contains('/') || name == ".." || name == "." {
            return Err(OwnedDirError::io(&path, Errno::EINVAL));
        }
        match mkdirat(&self.fd, name, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(OwnedDirError::io(&path, e)),
        }
        let fd = openat(&self.fd, name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => OwnedDirError::NotADirectory(path.clone()),
            other => OwnedDirError::io(&path, other),
        })?;
        Self::checked(path, fd)
    }

    /// Replaces file `name` in this directory with `bytes` (mode 0600): written under a fresh
    /// name made with `O_EXCL | O_NOFOLLOW`, then renamed over `name`, so a reader never sees
    /// half of it and no planted link is followed.
    pub fn replace_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let temp = format!(".{name}.new");
        let _ = unlinkat(&self.fd, temp.as_str(), UnlinkatFlags::NoRemoveDir);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            &self.fd,
            temp.as_str(),
            flags,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )?;
        let mut file = File::from(fd);
        file.write_all(bytes)?;
        file.sync_data()?;
        nix::fcntl::renameat(&self.fd, temp.as_str(), &self.fd, name)?;
        Ok(())
    }

    /// Writes `bytes` to a new file `name` (mode 0600, `O_EXCL | O_NOFOLLOW`), without waiting
    /// for the disk: for files whose readers check them (fs/snapshot.rs).
    pub fn write_new_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::S_IRUSR | Mode::S_IWUSR)?;
        File::from(fd).write_all(bytes)
    }

    /// Renames `from` to `to`, both in this directory, replacing `to`.
    pub fn rename_file(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(nix::fcntl::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// The size of file `name` in this directory, not following a symlink.
    pub fn file_size(&self, name: &str) -> io::Result<u64> {
        let stat =
            nix::sys::stat::fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
        Ok(u64::try_from(stat.st_size).unwrap_or(0))
    }

    /// The bytes of file `name` in this directory (`None`: there is none), not following a
    /// symlink.
    pub fn read_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        File::from(fd).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// File `name` in this directory, opened for reading and writing and made (mode 0600) if
    /// missing, not following a symlink: a lock file.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::S_IRUSR | Mode::S_IWUSR)?;
        Ok(File::from(fd))
    }

    /// Removes file `name` from this directory, if it is there.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A new file with no name, open for reading and writing (mode 0600): `O_TMPFILE`, or a
    /// fresh name made with `O_EXCL | O_NOFOLLOW` and unlinked at once (3.).
    pub fn unnamed_file(&self) -> io::Result<File> {
        let rw = OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let private = Mode::S_IRUSR | Mode::S_IWUSR;
        match openat(&self.fd, ".", OFlag::O_TMPFILE | rw, private) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {}
            Err(e) => return Err(e.into()),
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let exclusive = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | rw;
        loop {
            let name = format!(
                ".tmp-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            match openat(&self.fd, name.as_str(), exclusive, private) {
                Ok(fd) => {
                    let _ = unlinkat(&self.fd, name.as_str(), UnlinkatFlags::NoRemoveDir);
                    return Ok(File::from(fd));
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

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
