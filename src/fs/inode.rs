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
//! 5. Memory per number is what a `find` over millions of keys pays for every path the kernel
//!    holds (docs/SEMANTICS.md, "Memory per path"): each path is stored once, in a slot of a
//!    table that grows in chunks (never to twice what it holds), and both ways in are tables of
//!    4-byte slot indices hashed by what the slot names. The hashes are keyed per table, so
//!    keys a bucket's other writers choose cannot make them degrade.
//! 6. Renaming a directory scans every slot for the paths below it (a sorted index would cost
//!    memory on every path for an operation that copies every object below it anyway).

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

/// An inode number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Ino(pub u64);

impl Ino {
    /// The mount's root directory.
    pub const ROOT: Ino = Ino(1);
    /// Marks a free slot (never given out).
    const NONE: Ino = Ino(0);
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

/// One number: its path (none for an orphan of a rename), the kernel's lookup count, and what
/// the table's owner keeps with it.
#[derive(Debug)]
struct Slot<T> {
    ino: Ino,
    path: Option<Arc<str>>,
    lookups: u64,
    /// An unlinked file still open: the number is not freed, whatever the kernel forgets.
    pinned: bool,
    data: Option<T>,
}

impl<T> Slot<T> {
    fn new(ino: Ino) -> Self {
        Self {
            ino,
            path: None,
            lookups: 0,
            pinned: false,
            data: None,
        }
    }
}

/// What malloc takes for an `Arc<str>` of `path`: its two counts and the bytes, in a chunk
/// of 16-byte steps with an 8-byte header, 32 bytes at least (glibc).
pub fn heap_bytes(path: &str) -> usize {
    ((16 + path.len() + 8 + 15) & !15).max(32)
}

/// Slots per chunk: the table grows by this many, never by doubling.
const CHUNK: usize = 1024;

/// Slot `i` of `chunks`.
fn slot_in<T>(chunks: &[Vec<Slot<T>>], i: u32) -> &Slot<T> {
    let i = i as usize;
    &chunks[i / CHUNK][i % CHUNK]
}

/// Two-way map between paths (relative to the mount root, no leading or trailing `/`) and inode
/// numbers, with the kernel's lookup count of each and a `T` its owner may keep per number
/// (fs::meta keeps the node's attributes there); a number dropped drops its `T`.
#[derive(Debug)]
pub struct InodeTable<T = ()> {
    chunks: Vec<Vec<Slot<T>>>,
    /// Free slot indices.
    free: Vec<u32>,
    /// Slots holding a `T`.
    with_data: usize,
    /// Heap bytes of the paths.
    path_bytes: usize,
    by_ino: HashTable<u32>,
    by_path: HashTable<u32>,
    keys: std::collections::hash_map::RandomState,
}

impl<T> Default for InodeTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> InodeTable<T> {
    /// A table holding only the root (path "").
    pub fn new() -> Self {
        let mut table = Self {
            chunks: Vec::new(),
            free: Vec::new(),
            with_data: 0,
            path_bytes: 0,
            by_ino: HashTable::new(),
            by_path: HashTable::new(),
            keys: std::collections::hash_map::RandomState::new(),
        };
        let root = table.insert(Ino::ROOT, Some(Arc::from("")));
        table.slot_mut(root).lookups = 1;
        table
    }

    /// The inode number of `path`, assigning one if the path is new.
    pub fn ino_for(&mut self, path: &str) -> Ino {
        if let Some(ino) = self.get(path) {
            return ino;
        }
        let mut candidate = path_hash(path);
        while candidate <= Ino::ROOT.0 || self.index(Ino(candidate)).is_some() {
            candidate = candidate.wrapping_add(1);
        }
        let ino = Ino(candidate);
        self.insert(ino, Some(Arc::from(path)));
        ino
    }

    /// The path of `ino`, if known.
    pub fn path(&self, ino: Ino) -> Option<Arc<str>> {
        self.slot_of(ino).and_then(|s| s.path.clone())
    }

    /// What the owner keeps with `ino`.
    pub fn data(&self, ino: Ino) -> Option<&T> {
        self.slot_of(ino).and_then(|s| s.data.as_ref())
    }

    /// Keeps `data` with `ino`, in place of what was; false if the number is unknown.
    pub fn set_data(&mut self, ino: Ino, data: T) -> bool {
        let Some(i) = self.index(ino) else {
            return false;
        };
        let slot = self.slot_mut(i);
        let was = slot.data.replace(data);
        if was.is_none() {
            self.with_data += 1;
        }
        true
    }

    /// Takes what the owner kept with `ino`.
    pub fn take_data(&mut self, ino: Ino) -> Option<T> {
        let i = self.index(ino)?;
        self.take_slot_data(i)
    }

    /// Numbers holding a `T`.
    pub fn data_count(&self) -> usize {
        self.with_data
    }

    /// Bytes the table takes for the numbers it holds: their slots, both indexes and the
    /// paths (a `T`'s own heap aside). Slots freed stay allocated for the next numbers, so
    /// the chunks follow the most numbers ever held at once, which this bounds too.
    pub fn bytes(&self) -> usize {
        let slots = self.by_ino.len() * std::mem::size_of::<Slot<T>>();
        // A 4-byte index and a control byte per bucket, 8 buckets for every 7 it may fill.
        let indexes = (self.by_ino.capacity() + self.by_path.capacity()) * 5 * 8 / 7;
        slots + indexes + self.free.capacity() * 4 + self.path_bytes
    }

    /// Calls `f` on every `T` kept.
    pub fn for_each_data(&mut self, mut f: impl FnMut(&mut T)) {
        for slot in self.chunks.iter_mut().flatten() {
            if let Some(data) = &mut slot.data {
                f(data);
            }
        }
    }

    /// The kernel was given `ino` once more (an entry reply); false if the number is unknown.
    pub fn looked_up(&mut self, ino: Ino) -> bool {
        match self.index(ino) {
            Some(i) => {
                self.slot_mut(i).lookups += 1;
                true
            }
            None => false,
        }
    }

    /// The kernel's lookup count of `ino`.
    pub fn lookups(&self, ino: Ino) -> u64 {
        self.slot_of(ino).map_or(0, |s| s.lookups)
    }

    /// The kernel forgot `n` lookups of `ino`: true when it holds it no more.
    pub fn forget(&mut self, ino: Ino, n: u64) -> bool {
        match self.index(ino) {
            Some(i) if ino != Ino::ROOT => {
                let slot = self.slot_mut(i);
                slot.lookups = slot.lookups.saturating_sub(n);
                slot.lookups == 0
            }
            _ => false,
        }
    }

    /// Drops `ino` if the kernel does not hold it; returns whether it did.
    pub fn remove_unheld(&mut self, ino: Ino) -> bool {
        match self.index(ino) {
            Some(i) if ino != Ino::ROOT => {
                let slot = self.slot(i);
                if slot.lookups > 0 || slot.pinned {
                    return false;
                }
                self.remove(i);
                true
            }
            _ => false,
        }
    }

    /// Number of known inodes, root included.
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// The inode number of `path`, if it has one.
    pub fn get(&self, path: &str) -> Option<Ino> {
        let hash = self.keys.hash_one(path);
        self.by_path
            .find(hash, |&i| self.slot(i).path.as_deref() == Some(path))
            .map(|&i| self.slot(i).ino)
    }

    /// Gives `to` (and, for a directory, every path below it) the numbers `from` (and its
    /// descendants) had. Returns the numbers moved.
    pub fn rename(&mut self, from: &str, to: &str, dir: bool) -> Vec<Ino> {
        for i in self.subtree(to, dir) {
            self.unname(i);
            self.take_slot_data(i);
            if self.slot(i).lookups > 0 {
                // The kernel still holds it: keep the number taken until it forgets it.
                continue;
            }
            self.remove(i);
        }
        let moved = self.subtree(from, dir);
        let mut inos = Vec::with_capacity(moved.len());
        for i in moved {
            let Some(old) = self.unname(i) else { continue };
            let new: Arc<str> = Arc::from(format!("{to}{}", &old[from.len()..]));
            self.name(i, new);
            inos.push(self.slot(i).ino);
        }
        inos
    }

    /// `path` lost its name while open (an unlinked open file): its number stays taken,
    /// without a path, until `unpin` and the kernel's FORGET (files open for writing are
    /// found by it); a new file of that name gets a number of its own.
    pub fn orphan(&mut self, path: &str) {
        let Some(ino) = self.get(path) else {
            return;
        };
        if let Some(i) = self.index(ino) {
            self.unname(i);
            self.slot_mut(i).pinned = true;
        }
    }

    /// The last handle of an unlinked file closed: its number is freed once the kernel
    /// forgot it too.
    pub fn unpin(&mut self, ino: Ino) {
        if let Some(i) = self.index(ino) {
            self.slot_mut(i).pinned = false;
        }
        self.remove_unheld(ino);
    }

    /// Every number the kernel holds, with its path (the root aside).
    pub fn held(&self) -> Vec<(Ino, Arc<str>)> {
        self.slots()
            .filter(|s| s.lookups > 0 && s.ino != Ino::ROOT)
            .filter_map(|s| s.path.clone().map(|p| (s.ino, p)))
            .collect()
    }

    /// Every number with what the kernel holds of it, for a successor (fs/state.rs).
    pub fn entries(&self) -> Vec<InodeEntry> {
        self.slots()
            .map(|s| InodeEntry {
                ino: s.ino,
                path: s.path.as_deref().map(str::to_string),
                lookups: s.lookups,
                pinned: s.pinned,
            })
            .collect()
    }

    /// Takes over a predecessor's numbers: the kernel holds them, so they must name the same
    /// paths here.
    pub fn restore(&mut self, entries: Vec<InodeEntry>) {
        for e in entries {
            let path: Option<Arc<str>> = e.path.map(Arc::from);
            // Whatever holds the number or the path here gives way.
            if let Some(i) = self.index(e.ino) {
                self.remove(i);
            }
            let holder = path.as_deref().and_then(|p| self.get(p));
            if let Some(i) = holder.and_then(|ino| self.index(ino)) {
                self.unname(i);
            }
            let i = self.insert(e.ino, path);
            let slot = self.slot_mut(i);
            slot.lookups = e.lookups;
            slot.pinned = e.pinned;
        }
    }

    /// Never true: the root is always there.
    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }

    // ---- internals ----

    fn slot(&self, i: u32) -> &Slot<T> {
        slot_in(&self.chunks, i)
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot<T> {
        let i = i as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    fn slots(&self) -> impl Iterator<Item = &Slot<T>> {
        self.chunks.iter().flatten().filter(|s| s.ino != Ino::NONE)
    }

    fn index(&self, ino: Ino) -> Option<u32> {
        let hash = self.keys.hash_one(ino.0);
        self.by_ino
            .find(hash, |&i| self.slot(i).ino == ino)
            .copied()
    }

    fn slot_of(&self, ino: Ino) -> Option<&Slot<T>> {
        self.index(ino).map(|i| self.slot(i))
    }

    /// A new slot for `ino` (which has none) named `path` (which names none).
    fn insert(&mut self, ino: Ino, path: Option<Arc<str>>) -> u32 {
        let fresh = Slot::new(ino);
        let i = match self.free.pop() {
            Some(i) => {
                *self.slot_mut(i) = fresh;
                i
            }
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let n = (self.chunks.len() - 1) * CHUNK;
                let last = self.chunks.len() - 1;
                self.chunks[last].push(fresh);
                // Slot indices stay below 2^32: 4 billion numbers would take far more memory
                // than any machine has before this wraps.
                u32::try_from(n + self.chunks[last].len() - 1).unwrap_or(u32::MAX)
            }
        };
        let Self {
            chunks,
            by_ino,
            keys,
            ..
        } = self;
        by_ino.insert_unique(keys.hash_one(ino.0), i, |&j| {
            keys.hash_one(slot_in(chunks, j).ino.0)
        });
        if let Some(path) = path {
            self.name(i, path);
        }
        i
    }

    /// Gives slot `i` (which has no path) the path `path`.
    fn name(&mut self, i: u32, path: Arc<str>) {
        let hash = self.keys.hash_one(&*path);
        self.path_bytes += heap_bytes(&path);
        self.slot_mut(i).path = Some(path);
        let Self {
            chunks,
            by_path,
            keys,
            ..
        } = self;
        by_path.insert_unique(hash, i, |&j| {
            keys.hash_one(slot_in(chunks, j).path.as_deref().unwrap_or_default())
        });
    }

    /// Takes slot `i`'s path away; returns it.
    fn unname(&mut self, i: u32) -> Option<Arc<str>> {
        let path = self.slot_mut(i).path.take()?;
        self.path_bytes -= heap_bytes(&path);
        let hash = self.keys.hash_one(&*path);
        if let Ok(entry) = self.by_path.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        Some(path)
    }

    fn take_slot_data(&mut self, i: u32) -> Option<T> {
        let taken = self.slot_mut(i).data.take();
        if taken.is_some() {
            self.with_data -= 1;
        }
        taken
    }

    /// Frees slot `i`.
    fn remove(&mut self, i: u32) {
        self.unname(i);
        self.take_slot_data(i);
        let ino = self.slot(i).ino;
        if let Ok(entry) = self
            .by_ino
            .find_entry(self.keys.hash_one(ino.0), |&j| j == i)
        {
            entry.remove();
        }
        *self.slot_mut(i) = Slot::new(Ino::NONE);
        self.free.push(i);
    }

    /// The slots of `root` and, for a directory, of every known path below it.
    fn subtree(&self, root: &str, dir: bool) -> Vec<u32> {
        let own = self.get(root).and_then(|ino| self.index(ino));
        if !dir {
            return own.into_iter().collect();
        }
        let below = format!("{root}/");
        let mut out: Vec<u32> = own.into_iter().collect();
        for (c, chunk) in self.chunks.iter().enumerate() {
            for (k, slot) in chunk.iter().enumerate() {
                if slot.path.as_deref().is_some_and(|p| p.starts_with(&below)) {
                    out.push(u32::try_from(c * CHUNK + k).unwrap_or(u32::MAX));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_one_and_paths_are_stable_across_tables() {
        let mut a = InodeTable::<()>::new();
        let mut b = InodeTable::<()>::new();
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
        let mut t = InodeTable::<()>::new();
        let first = t.ino_for("a");
        // Force a collision: pretend another path already holds the hash of "b".
        let taken = Ino(path_hash("b"));
        t.insert(taken, Some(Arc::from("squatter")));
        let b = t.ino_for("b");
        assert_ne!(b, taken);
        assert_eq!(b.0, taken.0.wrapping_add(1));
        assert_ne!(b, first);
        assert_eq!(&*t.path(b).unwrap(), "b");
    }

    #[test]
    fn rename_moves_numbers_with_the_subtree() {
        let mut t = InodeTable::<()>::new();
        let d = t.ino_for("d");
        let f = t.ino_for("d/f");
        let other = t.ino_for("dx/f");
        let old_target = t.ino_for("e/g");
        let _ = t.ino_for("e");
        let moved = t.rename("d", "e", true);
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
        let mut t = InodeTable::<()>::new();
        for i in 0..10_000 {
            let ino = t.ino_for(&format!("f{i}"));
            assert!(ino.0 > 1);
        }
        assert_eq!(t.len(), 10_001);
    }

    #[test]
    fn forgotten_numbers_go_and_held_orphans_stay_taken() {
        let mut t = InodeTable::<()>::new();
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
        t.rename("s", "t", false);
        assert_eq!(t.get("t"), Some(src));
        assert_eq!(t.path(target), None);
        assert_eq!(t.lookups(target), 1);
        assert!(t.forget(target, 1));
        assert!(t.remove_unheld(target));
    }
}
