//! Filesystem errors carry their errno; one table maps store errors to errno.
//!
//! Non-obvious problems:
//! 1. A dead endpoint and a timed-out request both become EIO: programs handle EIO, while
//!    ETIMEDOUT from a file read surprises them.
//! 2. A failed `If-Match` becomes ESTALE: the object changed under an open file, and mixing bytes
//!    of two versions would be silent corruption.

use crate::store::{StoreError, StoreErrorKind};

/// An error the filesystem returns to the kernel.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct FsError {
    /// The errno the caller sees.
    pub errno: i32,
    /// What went wrong, for the log.
    pub message: String,
    /// Already logged once in this context: log it at debug only.
    pub quiet: bool,
}

impl FsError {
    /// An error with `errno` and `message`.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
            quiet: false,
        }
    }

    /// The same error, logged at debug only (it was told once already).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// ENOENT without a log-worthy message.
    pub fn not_found() -> Self {
        Self::new(libc::ENOENT, "no such file or directory")
    }

    /// EROFS for any mutation.
    pub fn read_only() -> Self {
        Self::new(libc::EROFS, "read-only file system")
    }

    /// True when this is an expected answer (not worth a warning in the log).
    pub fn is_expected(&self) -> bool {
        self.quiet
            || matches!(
                self.errno,
                libc::ENOENT
                    | libc::EROFS
                    | libc::ENOTDIR
                    | libc::EISDIR
                    | libc::ENODATA
                    | libc::ENOTEMPTY
                    | libc::ENAMETOOLONG
                    | libc::EOPNOTSUPP
            )
    }
}

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

/// The errno for each class of store failure.
pub fn errno_for(kind: StoreErrorKind) -> i32 {
    match kind {
        StoreErrorKind::NotFound => libc::ENOENT,
        StoreErrorKind::AccessDenied | StoreErrorKind::NoCredentials | StoreErrorKind::Archived => {
            libc::EACCES
        }
        StoreErrorKind::PreconditionFailed => libc::ESTALE,
        StoreErrorKind::TooLarge => libc::EFBIG,
        StoreErrorKind::NoSuchBucket
        | StoreErrorKind::InvalidRange
        | StoreErrorKind::Unreachable
        | StoreErrorKind::Timeout
        | StoreErrorKind::Other => libc::EIO,
    }
}

impl From<StoreError> for FsError {
    fn from(err: StoreError) -> Self {
        Self::new(errno_for(err.kind), err.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_errno() {
        let e: FsError = StoreError::new(StoreErrorKind::PreconditionFailed, "changed").into();
        assert_eq!(e.errno, libc::ESTALE);
        assert_eq!(errno_for(StoreErrorKind::Timeout), libc::EIO);
        assert_eq!(errno_for(StoreErrorKind::Unreachable), libc::EIO);
        assert_eq!(errno_for(StoreErrorKind::AccessDenied), libc::EACCES);
        assert_eq!(errno_for(StoreErrorKind::NotFound), libc::ENOENT);
    }
}
