//! Inode numbers derived from paths, so an object keeps its number across remounts.
//!
//! Non-obvious problems:
//! 1. The number is a 64-bit FNV-1a hash of the path in the mount (stable across Rust releases,
//!    unlike `DefaultHasher`); 0 and 1 are reserved (1 is the root).
//! 2. Two paths may hash alike: the later one probes upward to the next free number. Which path
//!    gets the probed number depends on the order they were seen, so stability across remounts
//!    holds for all paths but colliding ones (odds about n²/2⁶⁵).
//! 3. Each number carries the kernel's lookup count. The kernel holds an inode until it sends
//!    FORGET for every lookup it was given; a number whose count reaches 0 can be dropped
//!    (`fs::meta` decides when), so memory follows what the kernel holds, not every path seen.
//! 4. A rename keeps the numbers: the kernel still holds the moved inodes, so the moved path (and
//!    everything below it) takes over the old numbers, and what the target path had loses its
//!    path (an orphan, kept until the kernel forgets it, so its number is not reused). After a
//!    remount the new paths get their own hashes.
//! 5. Paths are kept sorted, so a subtree (`d`, then `d/...`) is one contiguous range: renaming
//!    a directory costs the paths below it, not the whole table.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

/// An inode number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Ino(pub u64);

impl Ino {
    /// The mount's root directory.
    pub const ROOT: Ino = Ino(1);
}

/// FNV-1a, 64 bit: tiny, and its output is fixed by its definition.
pub fn path_hash(path: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    path.bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// One number as a successor takes it over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InodeEntry {
    /// The number.
    pub ino: Ino,
    /// Its path (none for an orphan).
    pub path: Option<String>,
    /// The kernel's lookup count.
    pub lookups: u64,
    /// An unlinked file still open.
    pub pinned: bool,
}

/// One number: its path (none for an orphan of a rename) and the kernel's lookup count.
#[derive(Debug)]
struct Entry {
    path: Option<Arc<str>>,
    lookups: u64,
    /// An unlinked file still open: the number is not freed, whatever the kernel forgets.
    pinned: bool,
}

/// Two-way map between paths (relative to the mount root, no leading or trailing `/`) and inode
/// numbers, with the kernel's lookup count of each.
#[derive(Debug)]
pub struct InodeTable {
    by_ino: HashMap<Ino, Entry>,
    by_path: BTreeMap<Arc<str>, Ino>,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    /// A table holding only the root (path "").
    pub fn new() -> Self {
        let root: Arc<str> = Arc::from("");
        let entry = Entry {
            path: Some(Arc::clone(&root)),
            lookups: 1,
            pinned: false,
        };
        Self {
            by_ino: HashMap::from([(Ino::ROOT, entry)]),
            by_path: BTreeMap::from([(root, Ino::ROOT)]),
        }
    }

    /// The inode number of `path`, assigning one if the path is new.
    pub fn ino_for(&mut self, path: &str) -> Ino {
        if let Some(ino) = self.by_path.get(path) {
            return *ino;
        }
        let mut candidate = path_hash(path);
        while candidate <= Ino::ROOT.0 || self.by_ino.contains_key(&Ino(candidate)) {
            candidate = candidate.wrapping_add(1);
        }
        let ino = Ino(candidate);
        let path: Arc<str> = Arc::from(path);
        let entry = Entry {
            path: Some(Arc::clone(&path)),
            lookups: 0,
            pinned: false,
        };
        self.by_ino.insert(ino, entry);
        self.by_path.insert(path, ino);
        ino
    }

    /// The path of `ino`, if known.
    pub fn path(&self, ino: Ino) -> Option<Arc<str>> {
        self.by_ino.get(&ino).and_then(|e| e.path.clone())
    }

    /// The kernel was given `ino` once more (an entry reply); false if the number is unknown.
    pub fn looked_up(&mut self, ino: Ino) -> bool {
        match self.by_ino.get_mut(&ino) {
            Some(entry) => {
                entry.lookups += 1;
                true
            }
            None => false,
        }
    }

    /// The kernel's lookup count of `ino`.
    pub fn lookups(&self, ino: Ino) -> u64 {
        self.by_ino.get(&ino).map_or(0, |e| e.lookups)
    }

    /// The kernel forgot `n` lookups of `ino`: true when it holds it no more.
    pub fn forget(&mut self, ino: Ino, n: u64) -> bool {
        match self.by_ino.get_mut(&ino) {
            Some(entry) if ino != Ino::ROOT => {
                entry.lookups = entry.lookups.saturating_sub(n);
                entry.lookups == 0
            }
            _ => false,
        }
    }

    /// Drops `ino` if the kernel does not hold it; returns whether it did.
    pub fn remove_unheld(&mut self, ino: Ino) -> bool {
        match self.by_ino.get(&ino) {
            Some(entry) if entry.lookups == 0 && !entry.pinned && ino != Ino::ROOT => {
                if let Some(path) = &entry.path {
                    self.by_path.remove(path);
                }
                self.by_ino.remove(&ino);
                true
            }
            _ => false,
        }
    }

    /// `root` and every known path below it, in order.
    fn subtree(&self, root: &str) -> Vec<(Arc<str>, Ino)> {
        let low = format!("{root}/");
        // '0' follows '/': every "root/..." path sorts below "root0".
        let high = format!("{root}0");
        let below = self.by_path.range::<str, _>((
            Bound::Included(low.as_str()),
            Bound::Excluded(high.as_str()),
        ));
        self.by_path
            .get_key_value(root)
            .into_iter()
            .chain(below)
            .map(|(p, i)| (Arc::clone(p), *i))
            .collect()
    }

    /// Number of known inodes, root included.
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// The inode number of `path`, if it has one.
    pub fn get(&self, path: &str) -> Option<Ino> {
        self.by_path.get(path).copied()
    }

    /// Gives `to` (and every path below it) the numbers `from` (and its descendants) had.
    /// Returns the numbers moved.
    pub fn rename(&mut self, from: &str, to: &str) -> Vec<Ino> {
        for (path, ino) in self.subtree(to) {
            self.by_path.remove(&path);
            match self.by_ino.get_mut(&ino) {
                // The kernel still holds it: keep the number taken until it forgets it.
                Some(entry) if entry.lookups > 0 => entry.path = None,
                _ => {
                    self.by_ino.remove(&ino);
                }
            }
        }
        let moved = self.subtree(from);
        let mut inos = Vec::with_capacity(moved.len());
        for (path, ino) in moved {
            self.by_path.remove(&path);
            let new: Arc<str> = Arc::from(format!("{to}{}", &path[from.len()..]));
            if let Some(entry) = self.by_ino.get_mut(&ino) {
                entry.path = Some(Arc::clone(&new));
            }
            self.by_path.insert(new, ino);
            inos.push(ino);
        }
        inos
    }

    /// `path` lost its name while open (an unlinked open file): its number stays taken,
    /// without a path, until `unpin` and the kernel's FORGET (files open for writing are
    /// found by it); a new file of that name gets a number of its own.
    pub fn orphan(&mut self, path: &str) {
        let Some(ino) = self.by_path.remove(path) else {
            return;
        };
        if let Some(entry) = self.by_ino.get_mut(&ino) {
            entry.path = None;
            entry.pinned = true;
        }
    }

    /// The last handle of an unlinked file closed: its number is freed once the kernel
    /// forgot it too.
    pub fn unpin(&mut self, ino: Ino) {
        if let Some(entry) = self.by_ino.get_mut(&ino) {
            entry.pinned = false;
        }
        self.remove_unheld(ino);
    }

    /// Every number the kernel holds, with its path (the root aside).
    pub fn held(&self) -> Vec<(Ino, Arc<str>)> {
        self.by_ino
            .iter()
            .filter(|(ino, e)| e.lookups > 0 && **ino != Ino::ROOT)
            .filter_map(|(ino, e)| e.path.clone().map(|p| (*ino, p)))
            .collect()
    }

    /// Every number with what the kernel holds of it, for a successor (fs/state.rs).
    pub fn entries(&self) -> Vec<InodeEntry> {
        self.by_ino
            .iter()
            .map(|(ino, e)| InodeEntry {
                ino: *ino,
                path: e.path.as_deref().map(str::to_string),
                lookups: e.lookups,
                pinned: e.pinned,
            })
            .collect()
    }

    /// Takes over a predecessor's numbers: the kernel holds them, so they must name the same
    /// paths here.
    pub fn restore(&mut self, entries: Vec<InodeEntry>) {
        for e in entries {
            if let Some(old) = self.by_ino.get(&e.ino).and_then(|old| old.path.clone()) {
                self.by_path.remove(&old);
            }
            let path: Option<Arc<str>> = e.path.map(Arc::from);
            if let Some(path) = &path {
                self.by_path.insert(Arc::clone(path), e.ino);
            }
            self.by_ino.insert(
                e.ino,
                Entry {
                    path,
                    lookups: e.lookups,
                    pinned: e.pinned,
                },
            );
        }
    }

    /// Never true: the root is always there.
    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_one_and_paths_are_stable_across_tables() {
        let mut a = InodeTable::new();
        let mut b = InodeTable::new();
        assert_eq!(a.ino_for(""), Ino::ROOT);
        let x = a.ino_for("dir/file.txt");
        let _ = b.ino_for("other");
        assert_eq!(
            b.ino_for("dir/file.txt"),
            x,
            "same path, same number in a new table"
        );
        assert_eq!(a.ino_for("dir/file.txt"), x);
        assert_eq!(&*a.path(x).unwrap(), "dir/file.txt");
        assert_eq!(x.0, path_hash("dir/file.txt"));
    }

    #[test]
    fn collisions_probe_to_a_free_number() {
        let mut t = InodeTable::new();
        let first = t.ino_for("a");
        // Force a collision: pretend another path already holds the hash of "b".
        let taken = Ino(path_hash("b"));
        let squatter = Entry {
            path: Some(Arc::from("squatter")),
            lookups: 0,
            pinned: false,
        };
        t.by_ino.insert(taken, squatter);
        let b = t.ino_for("b");
        assert_ne!(b, taken);
        assert_eq!(b.0, taken.0.wrapping_add(1));
        assert_ne!(b, first);
        assert_eq!(&*t.path(b).unwrap(), "b");
    }

    #[test]
    fn rename_moves_numbers_with_the_subtree() {
        let mut t = InodeTable::new();
        let d = t.ino_for("d");
        let f = t.ino_for("d/f");
        let other = t.ino_for("dx/f");
        let old_target = t.ino_for("e/g");
        let _ = t.ino_for("e");
        let moved = t.rename("d", "e");
        assert_eq!(moved.len(), 2);
        assert_eq!(t.get("e"), Some(d));
        assert_eq!(t.get("e/f"), Some(f));
        assert_eq!(&*t.path(f).unwrap(), "e/f");
        assert_eq!(t.get("d"), None);
        assert_eq!(t.path(old_target), None, "what the target had is dropped");
        assert_eq!(
            t.get("dx/f"),
            Some(other),
            "a sibling with a common prefix stays"
        );
    }

    #[test]
    fn reserved_numbers_are_never_given_out() {
        assert!(path_hash("") > 1);
        let mut t = InodeTable::new();
        for i in 0..10_000 {
            let ino = t.ino_for(&format!("f{i}"));
            assert!(ino.0 > 1);
        }
        assert_eq!(t.len(), 10_001);
    }

    #[test]
    fn forgotten_numbers_go_and_held_orphans_stay_taken() {
        let mut t = InodeTable::new();
        let a = t.ino_for("a");
        t.looked_up(a);
        t.looked_up(a);
        assert!(!t.forget(a, 1));
        assert!(t.forget(a, 1));
        assert!(t.remove_unheld(a));
        assert_eq!(t.get("a"), None);
        assert!(!t.forget(Ino::ROOT, 5), "the root is never forgotten");
        // A rename over a held target leaves its number taken, pathless.
        let target = t.ino_for("t");
        t.looked_up(target);
        let src = t.ino_for("s");
        t.rename("s", "t");
        assert_eq!(t.get("t"), Some(src));
        assert_eq!(t.path(target), None);
        assert_eq!(t.lookups(target), 1);
        assert!(t.forget(target, 1));
        assert!(t.remove_unheld(target));
    }
}
