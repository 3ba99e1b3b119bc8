//! POSIX attributes stored in object headers, in the format s3fs uses, so a bucket written by
//! bucketfs reads the same through s3fs and the other way round.
//!
//! Non-obvious problems:
//! 1. s3fs stores the whole `st_mode` (type bits included) in decimal in `x-amz-meta-mode`; a
//!    symlink is an object whose body is the target and whose mode has `S_IFLNK`.
//! 2. `x-amz-meta-mtime` is written by s3fs as whole seconds and by rclone as seconds with a
//!    fraction; both are read, and we write seconds with a nine-digit fraction only when the time
//!    has one (s3fs reads the whole seconds of that).
//! 3. A header that does not parse is ignored (the mount's default shows), never an error: any
//!    client can write any metadata.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::UserMetadata;

/// File type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Named pipe (FIFO).
pub const S_IFIFO: u32 = 0o010_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;
/// Block device.
pub const S_IFBLK: u32 = 0o060_000;
/// Unix domain socket.
pub const S_IFSOCK: u32 = 0o140_000;

/// Owner, group, mode, times and device number as stored in headers; `None` where a header
/// is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Posix {
    /// Full `st_mode`, type bits included.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Modification time.
    pub mtime: Option<SystemTime>,
    /// Access time.
    pub atime: Option<SystemTime>,
    /// Status change time.
    pub ctime: Option<SystemTime>,
    /// Device number of a character or block device (`x-amz-meta-rdev`).
    pub rdev: Option<u64>,
}

fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (before, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        format!("{digits:0<9}").parse().ok()?
    };
    let d = Duration::new(secs, nanos);
    if before {
        UNIX_EPOCH.checked_sub(d)
    } else {
        UNIX_EPOCH.checked_add(d)
    }
}

/// Seconds since the epoch, with a nine-digit fraction when there is one; a time before the
/// epoch (utimensat allows them) is written with a minus sign: `-1.5` is 1.5 s before.
fn format_time(t: SystemTime) -> String {
    let (sign, d) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => ("", d),
        Err(e) => ("-", e.duration()),
    };
    if d.subsec_nanos() == 0 {
        format!("{sign}{}", d.as_secs())
    } else {
        format!("{sign}{}.{:09}", d.as_secs(), d.subsec_nanos())
    }
}

impl Posix {
    /// Reads the headers present in `metadata`.
    pub fn from_metadata(metadata: &UserMetadata) -> Self {
        let number = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        Self {
            mode: number("mode"),
            uid: number("uid"),
            gid: number("gid"),
            mtime: metadata.get("mtime").and_then(|v| parse_time(v)),
            atime: metadata.get("atime").and_then(|v| parse_time(v)),
            ctime: metadata.get("ctime").and_then(|v| parse_time(v)),
            rdev: metadata.get("rdev").and_then(|v| v.trim().parse().ok()),
        }
    }

    /// `metadata` with these attributes written over it (other headers kept).
    pub fn apply_to(&self, metadata: &UserMetadata) -> UserMetadata {
        let mut out = metadata.clone();
        if let Some(mode) = self.mode {
            out.insert("mode".into(), mode.to_string());
        }
        if let Some(uid) = self.uid {
            out.insert("uid".into(), uid.to_string());
        }
        if let Some(gid) = self.gid {
            out.insert("gid".into(), gid.to_string());
        }
        let times = [
            ("mtime", self.mtime),
            ("atime", self.atime),
            ("ctime", self.ctime),
        ];
        for (name, time) in times {
            if let Some(time) = time {
                out.insert(name.into(), format_time(time));
            }
        }
        if let Some(rdev) = self.rdev {
            out.insert("rdev".into(), rdev.to_string());
        }
        out
    }

    /// The headers of these attributes alone.
    pub fn to_metadata(&self) -> UserMetadata {
        self.apply_to(&UserMetadata::new())
    }

    /// True when the mode says symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.type_bits() == Some(S_IFLNK)
    }

    /// The headers of a node created now with `mode` (type bits included) by `owner`;
    /// `rdev` is kept for devices only.
    pub fn new_node(mode: u32, owner: (u32, u32), rdev: u32) -> Self {
        let now = SystemTime::now();
        Self {
            mode: Some(mode),
            uid: Some(owner.0),
            gid: Some(owner.1),
            mtime: Some(now),
            atime: Some(now),
            ctime: Some(now),
            rdev: (rdev != 0).then_some(u64::from(rdev)),
        }
    }

    /// Takes every field `other` has.
    pub fn merge(&mut self, other: &Posix) {
        self.mode = other.mode.or(self.mode);
        self.uid = other.uid.or(self.uid);
        self.gid = other.gid.or(self.gid);
        self.mtime = other.mtime.or(self.mtime);
        self.atime = other.atime.or(self.atime);
        self.ctime = other.ctime.or(self.ctime);
        self.rdev = other.rdev.or(self.rdev);
    }

    /// The file type bits of the mode, when there is a mode with some.
    pub fn type_bits(&self) -> Option<u32> {
        self.mode.map(|m| m & S_IFMT).filter(|t| *t != 0)
    }
}

/// The mode a new file gets when `mode` carries no type bits.
pub(super) fn file_mode_bits(mode: u32) -> u32 {
    if mode & S_IFMT == 0 {
        S_IFREG | mode
    } else {
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3fs_and_rclone_headers_round_trip() {
        let mut m = UserMetadata::new();
        m.insert("mode".into(), "33188".into()); // S_IFREG | 0644, as s3fs writes it
        m.insert("uid".into(), "1000".into());
        m.insert("gid".into(), "100".into());
        m.insert("mtime".into(), "1700000000.5".into()); // rclone's fractional seconds
        m.insert("other".into(), "kept".into());
        let p = Posix::from_metadata(&m);
        assert_eq!(p.mode, Some(S_IFREG | 0o644));
        assert_eq!(p.uid, Some(1000));
        assert_eq!(
            p.mtime,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        let back = p.apply_to(&m);
        assert_eq!(back.get("mtime").unwrap(), "1700000000.500000000");
        assert_eq!(back.get("other").unwrap(), "kept");
        assert_eq!(Posix::from_metadata(&back), p);
    }

    #[test]
    fn times_before_the_epoch_round_trip() {
        let before = UNIX_EPOCH - Duration::new(86_400, 250_000_000);
        let p = Posix {
            mtime: Some(before),
            atime: Some(UNIX_EPOCH - Duration::from_secs(1)),
            ..Posix::default()
        };
        let m = p.to_metadata();
        assert_eq!(m.get("mtime").unwrap(), "-86400.250000000");
        assert_eq!(m.get("atime").unwrap(), "-1");
        assert_eq!(Posix::from_metadata(&m), p);
    }

    #[test]
    fn whole_seconds_and_garbage() {
        let mut m = UserMetadata::new();
        m.insert("mtime".into(), "1600000000".into());
        m.insert("mode".into(), "rwx".into());
        let p = Posix::from_metadata(&m);
        assert_eq!(
            p.mtime,
            Some(UNIX_EPOCH + Duration::from_secs(1_600_000_000))
        );
        assert_eq!(p.mode, None, "unparsable headers are ignored");
        assert_eq!(p.to_metadata().get("mtime").unwrap(), "1600000000");
        let link = Posix {
            mode: Some(S_IFLNK | 0o777),
            ..Posix::default()
        };
        assert!(link.is_symlink());
    }
}
