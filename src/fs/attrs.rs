//! Attributes shown for a node: the object's POSIX headers where present, else the mount's
//! defaults; a directory's attributes as this mount last wrote them on top.
//!
//! Non-obvious problems:
//! 1. A directory's mode, owner and times as this mount last wrote them win over the store's:
//!    some servers drop the headers of `dir/` markers, an implicit directory has no object to
//!    hold them, and a directory's mtime moves with every entry added or removed, which is
//!    kept in memory only (rewriting the marker for each `touch` would double its cost).
//! 2. What was written is kept for the `MAX_WRITTEN_DIRS` directories changed last; an older
//!    one shows the store's headers again.

use parking_lot::Mutex;
use std::time::SystemTime;

use super::posix::Posix;
use super::{posix_of, Attr, Ino, Kind};
use crate::config::FsConfig;
use crate::store::ObjectMeta;

/// Directories whose attributes this mount changed, kept (least recently changed first out).
const MAX_WRITTEN_DIRS: usize = 64 << 10;

/// The attributes of nodes, and what this mount wrote to directories.
#[derive(Debug)]
pub(super) struct Attrs {
    uid: u32,
    gid: u32,
    file_mode: u16,
    dir_mode: u16,
    /// The time shown for nodes without one (directories, files never seen whole).
    mounted_at: SystemTime,
    /// What this mount wrote to directories (see 1.): wins over what the store says.
    written: Mutex<lru::LruCache<Ino, Posix>>,
}

impl Attrs {
    /// Attributes with `config`'s defaults.
    pub(super) fn new(config: &FsConfig) -> Self {
        Self {
            uid: config.uid,
            gid: config.gid,
            file_mode: config.file_mode,
            dir_mode: config.dir_mode,
            mounted_at: SystemTime::now(),
            written: Mutex::new(lru::LruCache::unbounded()),
        }
    }

    /// Attributes from what is known: the headers when present, else the mount's defaults.
    /// `meta` is the object of a file or symlink, the `dir/` marker (if seen) of a directory.
    pub(super) fn of(&self, ino: Ino, kind: Kind, meta: Option<&ObjectMeta>) -> Attr {
        let posix = if ino == Ino::ROOT {
            Posix::default()
        } else {
            posix_of(meta)
        };
        let (size, modified) = match (kind, meta) {
            (Kind::Dir, _) | (_, None) => (0, self.mounted_at),
            (_, Some(m)) => (m.size, m.last_modified),
        };
        self.from(ino, kind, size, &posix, modified)
    }

    /// Attributes of a node of `kind` and `size`: `posix` where set, else the mount's
    /// defaults and `modified`.
    pub(super) fn from(
        &self,
        ino: Ino,
        kind: Kind,
        size: u64,
        posix: &Posix,
        modified: SystemTime,
    ) -> Attr {
        let perm = match kind {
            Kind::Dir => self.dir_mode,
            Kind::Symlink => 0o777,
            _ => self.file_mode,
        };
        let mtime = posix.mtime.unwrap_or(modified);
        let rdev = match kind {
            Kind::CharDevice | Kind::BlockDevice => posix.rdev.and_then(|r| u32::try_from(r).ok()),
            _ => None,
        };
        let mut attr = Attr {
            ino,
            kind,
            size,
            mtime,
            atime: posix.atime.unwrap_or(mtime),
            ctime: posix.ctime.unwrap_or(mtime),
            rdev: rdev.unwrap_or(0),
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            perm: posix.mode.map_or(perm, |m| (m & 0o7777) as u16),
            uid: posix.uid.unwrap_or(self.uid),
            gid: posix.gid.unwrap_or(self.gid),
        };
        if kind == Kind::Dir {
            self.overlay(&mut attr);
        }
        attr
    }

    /// This mount changed the attributes of directory `ino`: they win over the store's until
    /// it is removed (servers may drop a marker's headers, an implicit directory has none).
    pub(super) fn wrote_dir(&self, ino: Ino, change: impl FnOnce(&mut Posix)) {
        let mut written = self.written.lock();
        let mut posix = written.pop(&ino).unwrap_or_default();
        change(&mut posix);
        written.push(ino, posix);
        if written.len() > MAX_WRITTEN_DIRS {
            written.pop_lru();
        }
    }

    /// An entry of directory `ino` was added, removed or renamed: its mtime and ctime move.
    pub(super) fn dir_changed(&self, ino: Ino) {
        let now = SystemTime::now();
        self.wrote_dir(ino, |p| {
            p.mtime = Some(now);
            p.ctime = Some(now);
        });
    }

    /// A directory's attributes with what this mount wrote to it (see 1.) put over them.
    pub(super) fn overlay(&self, attr: &mut Attr) {
        if let Some(written) = self.written.lock().peek(&attr.ino) {
            let times = [
                (written.mtime, &mut attr.mtime),
                (written.atime, &mut attr.atime),
                (written.ctime, &mut attr.ctime),
            ];
            for (time, field) in times {
                if let Some(time) = time {
                    *field = time;
                }
            }
            if let Some(mode) = written.mode {
                attr.perm = (mode & 0o7777) as u16;
            }
            attr.uid = written.uid.unwrap_or(attr.uid);
            attr.gid = written.gid.unwrap_or(attr.gid);
        }
    }

    /// The attributes a listing entry shows now (a directory's own changes applied).
    pub(super) fn listed(&self, attr: &Attr) -> Attr {
        let mut attr = attr.clone();
        if attr.kind == Kind::Dir {
            self.overlay(&mut attr);
        }
        attr
    }

    /// Directory `ino` is gone: what this mount wrote to it goes too.
    pub(super) fn dir_gone(&self, ino: Ino) {
        self.written.lock().pop(&ino);
    }
}
