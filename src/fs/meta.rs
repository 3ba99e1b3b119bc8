//! The one owner of what the mount knows about names: inode numbers (with the kernel's lookup
//! counts), attributes of nodes, complete listings of directories, and remembered misses. It
//! does no I/O: `Fs` asks the store and reports what it learned or changed through the events
//! below, which are the only way these maps change. Invalidations pushed from outside (S3 event
//! notifications) call the same events.
//!
//! Invariants and non-obvious problems:
//! 1. Every change of a name is one event (`created`, `entry_changed`, `removed`, `renamed`,
//!    `stale`) that updates the node, its parent's cached listing and the parent's misses
//!    together, so a lookup answered from memory never disagrees with a getattr.
//! 2. Each directory change takes a sequence number. A listing records the number current when
//!    it started (`listing_started`) and is cached as complete (`listed`) only if its directory
//!    did not change since: a commit that raced the LIST may be missing from its pages.
//! 3. An inode lives while the kernel holds it (lookup count > 0, FORGET brings it down) or
//!    while a cached listing names it; when neither holds, it is freed with its attributes.
//!    A directory the kernel forgot loses its listing at once (lookups in it need the kernel
//!    to hold it), so a forgotten tree goes from the leaves up in one pass. Memory follows
//!    what the kernel holds plus the caches below.
//! 4. Listings are kept for the metadata TTL and at most `MAX_LISTED_ENTRIES` entries in all
//!    (least recently used out); misses for the negative TTL and at most `MAX_MISSES`. A
//!    workload of lookups alone stays bounded.
//! 5. Directory change numbers are kept for at most `MAX_CHANGED_DIRS` directories; a
//!    directory whose number was dropped counts as changed at the newest dropped number, which
//!    errs on the safe side (a listing not cached, never a stale one cached).
//! 6. A change made elsewhere (`changed_elsewhere`, from an S3 event) can make implicit
//!    directories appear (a first key below a new prefix) or vanish (the last key below one):
//!    the ancestors whose existence may have changed are invalidated too, from the parent up,
//!    stopping at the first that is known to stay as it was. The event returns what the
//!    kernel must forget, since the kernel was given these entries for a TTL of its own.
//! 7. Fills are fenced: a HEAD, a probe or a listing page takes the change number when it is
//!    sent (`fill_started`), and what it answers is not stored (`seen_since`, `missed_since`)
//!    if the name's directory changed meanwhile (an S3 event, a change of this mount): an
//!    answer read before an event must not undo the event for a whole (notified) TTL.
//! 8. With a metadata snapshot (snapshot.rs), every directory whose listing was cached or
//!    changed is marked dirty (`take_dirty` hands them to the writer), and one whose listing
//!    went because it is out of date (`stale`, `removed`, `renamed`) is marked gone, so its
//!    saved file goes too. A listing dropped only to save memory (LRU, FORGET) stays saved:
//!    it was right when read, and a remount revalidates what it loads; but one dropped
//!    while marked dirty (changed since it was saved) has its saved file deleted. A change elsewhere
//!    marks gone the saved listings of its directory and ancestors not in memory
//!    (`changed_unlisted`): nothing judged them, and a later mount must not trust them.
//! 9. Memory is bounded by `--metadata-memory` (`with_memory`), on an estimate kept from the
//!    maps' own sizes (`estimated_bytes`; tests/meta_memory.rs checks it against what malloc
//!    hands out). Past the bound, `shed` drops cached listings, least recently used first,
//!    down to 90%; what is still over is what the kernel holds, which only the kernel can
//!    let go: directories whose entries it was given are kept in use order (`gave_entries`),
//!    and the kernel is told to forget those used longest ago (their entries in their
//!    parents), enough of them for the excess. Its FORGETs free
//!    them here. The root's own entries cannot be shed this way (it has no parent entry).
//!    `shed` runs on a timer (Fs's `hold_memory_bound`, every 250 ms), not in lookups: the
//!    bound may be passed by what a walk adds in that time; the FORGETs of one round come back
//!    before the next, so the excess is not counted twice; a walk that stops over the bound
//!    is brought back within it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

use super::inode::{Ino, InodeTable};
use super::packed::{Expected, PackedObject};
use super::probe::Known;
use super::snapshot::{SavedEntry, SavedListing, SavedObject};
use super::{join, split, Attr, DirEntry, Kind};
use crate::store::{ObjectMeta, UserMetadata};

/// Listed entries kept in all: about 100 bytes each, so at most ~25 MiB of listings.
const MAX_LISTED_ENTRIES: usize = 256 << 10;
/// Misses kept: a lookup-only workload (a shell's PATH search, `stat` of absent names) costs
/// at most this many entries.
const MAX_MISSES: usize = 64 << 10;
/// Directories whose last change number is kept (see 5.).
const MAX_CHANGED_DIRS: usize = 64 << 10;
/// Estimated bytes of one listed entry besides its name: the entry and its name's chunk.
const LISTED_ENTRY_BYTES: usize = std::mem::size_of::<DirEntry>() + 32;
/// Estimated bytes of one entry of the smaller maps (misses, change numbers, directories in
/// use order), with their hash tables.
const SMALL_ENTRY_BYTES: usize = 96;

/// What is known about a node's object, with an expiry; kept in the node's inode slot.
#[derive(Debug, Clone)]
struct NodeState {
    kind: Kind,
    object: Option<PackedObject>,
    expires: Instant,
}

/// A complete, sorted listing of a directory.
#[derive(Debug)]
struct Listing {
    entries: Arc<Vec<DirEntry>>,
    expires: Instant,
    /// When it was read from S3 (for the snapshot).
    listed_at: SystemTime,
}

/// What the snapshot writer must do for a directory (see 8.).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dirty {
    /// Save its listing, if one is cached.
    Listing,
    /// Its saved listing is out of date: save the cached one, or delete the file.
    Gone,
}

/// What the snapshot writer does for one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotWork {
    /// Save this listing in place of the one saved.
    Save(SavedListing),
    /// Delete the listing saved for this path.
    Remove(String),
}

/// What memory says about a name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// Listed with these attributes.
    Entry(Attr),
    /// Known not to exist.
    Missing,
    /// Not known: ask the store.
    Unknown,
}

/// The change number a listing started at (see 2.).
#[derive(Debug, Clone, Copy)]
pub struct ListToken(u64);

/// What happened to a name elsewhere (another client, another host), as an S3 event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elsewhere {
    /// Written, copied or restored: the object has this ETag now (when the event says).
    Created {
        /// The new ETag, with or without quotes.
        etag: Option<String>,
    },
    /// Deleted.
    Removed,
}

/// Something the kernel was given that it must forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelNote {
    /// The entry `name` in directory `parent`; `deleted` names the node it held when the
    /// name is known to be gone (so the kernel can tell inotify watchers).
    Entry {
        /// The directory.
        parent: Ino,
        /// The name in it.
        name: String,
        /// The node the name held, when it is gone.
        deleted: Option<Ino>,
    },
    /// The attributes and cached pages of a node.
    Inode(Ino),
}

/// Sizes of the maps, for tests and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaStats {
    /// Inode numbers known.
    pub inodes: usize,
    /// Nodes with attributes.
    pub nodes: usize,
    /// Listings cached.
    pub listings: usize,
    /// Entries in them.
    pub listed_entries: usize,
    /// Misses remembered.
    pub misses: usize,
    /// Estimated bytes of it all (see 9.).
    pub bytes: usize,
    /// Directories the kernel was asked to forget to stay within the bound.
    pub shed: u64,
}

/// Inodes, attributes, listings and misses, changed only through events.
#[derive(Debug)]
pub struct Meta {
    ttl: Duration,
    negative_ttl: Duration,
    /// Inode numbers, each with what is known of its node.
    inodes: InodeTable<NodeState>,
    /// The mount's key prefix: a node's key is not kept when its path implies it.
    key_prefix: String,
    listings: LruCache<Ino, Listing>,
    listed_entries: usize,
    misses: LruCache<(Ino, String), Instant>,
    changed: LruCache<Ino, u64>,
    /// The newest change number dropped from `changed`.
    changed_floor: u64,
    seq: u64,
    /// Directories the snapshot writer must visit, by path; `None` without a snapshot (8.).
    dirty: Option<HashMap<Arc<str>, Dirty>>,
    /// The bound of `estimated_bytes` (see 9.).
    budget: usize,
    /// Directories whose entries the kernel was given, least recently first (see 9.).
    given: LruCache<Ino, ()>,
    /// Directories shed.
    shed: u64,
}

impl Meta {
    /// Empty, with attributes and listings kept for `ttl` and misses for `negative_ttl`.
    pub fn new(ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            ttl,
            negative_ttl,
            inodes: InodeTable::new(),
            key_prefix: String::new(),
            listings: LruCache::unbounded(),
            listed_entries: 0,
            misses: LruCache::unbounded(),
            changed: LruCache::unbounded(),
            changed_floor: 0,
            seq: 0,
            dirty: None,
            budget: usize::MAX,
            given: LruCache::unbounded(),
            shed: 0,
        }
    }

    /// Bounds memory to about `bytes` (see 9.).
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.budget = usize::try_from(bytes).unwrap_or(usize::MAX);
        self
    }

    /// Keys of this mount start with `prefix`.
    pub fn with_key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.to_string();
        self
    }

    /// Marks directories for the snapshot writer from now on (see 8.).
    pub fn keep_snapshot(&mut self) {
        self.dirty.get_or_insert_with(HashMap::new);
    }

    // ---- questions ----

    /// The path of `ino`.
    pub fn path(&self, ino: Ino) -> Option<Arc<str>> {
        self.inodes.path(ino)
    }

    /// Known inode numbers.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// The number of the last directory change.
    pub fn change_seq(&self) -> u64 {
        self.seq
    }

    /// The inode numbers the kernel holds, for a successor (fs/state.rs).
    pub fn inode_entries(&self) -> Vec<super::inode::InodeEntry> {
        self.inodes.entries()
    }

    /// Takes over a predecessor's inode numbers; what it knew of them is asked again.
    pub fn restore_inodes(&mut self, entries: Vec<super::inode::InodeEntry>) {
        self.inodes.restore(entries);
    }

    /// The inode number of `path`, if it has one.
    pub fn ino(&self, path: &str) -> Option<Ino> {
        self.inodes.get(path)
    }

    /// The inode number of `path`, given one if it has none.
    pub fn ino_for(&mut self, path: &str) -> Ino {
        self.inodes.ino_for(path)
    }

    /// Kind and object of `ino` while fresh.
    pub fn fresh_node(&self, ino: Ino) -> Option<(Kind, Option<ObjectMeta>)> {
        self.node(ino)
            .filter(|n| n.expires > Instant::now())
            .map(|n| (n.kind, self.known_meta(ino)))
    }

    /// The kind `ino` was last seen as, however long ago.
    pub fn known_kind(&self, ino: Ino) -> Option<Kind> {
        self.node(ino).map(|n| n.kind)
    }

    /// The object last seen for `ino`, however old.
    pub fn known_meta(&self, ino: Ino) -> Option<ObjectMeta> {
        let object = self.node(ino)?.object.as_ref()?;
        let path = self.inodes.path(ino)?;
        Some(object.unpack(self.expected(&path)))
    }

    /// The user metadata last read for `ino` (a HEAD), if that was of object `key` at version
    /// `etag`: what a listing of that version does not say.
    pub fn headers_of_version(&self, ino: Ino, key: &str, etag: &str) -> Option<UserMetadata> {
        let object = self.node(ino)?.object.as_ref()?;
        let path = self.inodes.path(ino)?;
        let same = object.etag_is(etag) && object.key_is(key, self.expected(&path));
        same.then(|| object.metadata()).flatten()
    }

    /// The directory marker object (`dir/`) last seen for `ino`, if it has one.
    pub fn known_marker(&self, ino: Ino) -> Option<ObjectMeta> {
        let object = self.node(ino)?.object.as_ref()?;
        object.is_marker().then(|| self.known_meta(ino)).flatten()
    }

    fn node(&self, ino: Ino) -> Option<&NodeState> {
        self.inodes.data(ino)
    }

    fn expected<'a>(&'a self, path: &'a str) -> Expected<'a> {
        Expected {
            prefix: &self.key_prefix,
            path,
        }
    }

    /// Forgets what is known of `ino`'s node; returns it.
    fn take_node(&mut self, ino: Ino) -> Option<NodeState> {
        self.inodes.take_data(ino)
    }

    /// What `path` was last seen as, however long ago (for the probe, probe.rs).
    pub(super) fn known(&self, path: &str) -> Known {
        let Some(ino) = self.ino(path) else {
            return Known::Nothing;
        };
        match self.known_kind(ino) {
            None => Known::Nothing,
            Some(Kind::Dir) => Known::Dir(self.known_meta(ino).map(Box::new)),
            Some(_) => Known::File,
        }
    }

    /// The key of the object that holds directory `ino` in another tool's format (s3fs's
    /// legacy `name`, Hadoop's `name_$folder$`), if that is what it was last seen as.
    pub fn dir_object(&self, ino: Ino) -> Option<String> {
        let node = self.node(ino)?;
        let legacy = node.kind == Kind::Dir && !node.object.as_ref()?.is_marker();
        legacy
            .then(|| self.known_meta(ino).map(|m| m.key))
            .flatten()
    }

    /// True when the headers of version `etag` of the object at `path` are known.
    pub fn headers_known(&self, path: &str, etag: &str) -> bool {
        let known = self
            .ino(path)
            .and_then(|ino| self.node(ino)?.object.as_ref());
        known.is_some_and(|k| k.headers_known() && k.etag_is(etag))
    }

    /// The cached listing of `dir`, while fresh.
    pub fn fresh_listing(&mut self, dir: Ino) -> Option<Arc<Vec<DirEntry>>> {
        self.listings
            .get(&dir)
            .filter(|l| l.expires > Instant::now())
            .map(|l| Arc::clone(&l.entries))
    }

    /// The cached listing of `dir`, if it was read from S3 at `since` or later.
    pub fn listing_since(&self, dir: Ino, since: SystemTime) -> Option<Arc<Vec<DirEntry>>> {
        self.listings
            .peek(&dir)
            .filter(|l| l.listed_at >= since)
            .map(|l| Arc::clone(&l.entries))
    }

    /// True when `dir` has a complete listing of at most `max` entries that expired.
    pub fn stale_listing(&self, dir: Ino, max: usize) -> bool {
        self.listings
            .peek(&dir)
            .is_some_and(|l| l.expires <= Instant::now() && l.entries.len() <= max)
    }

    /// What memory says about `name` in `parent`.
    pub fn cached_child(&mut self, parent: Ino, name: &str) -> Cached {
        let now = Instant::now();
        if let Some(listing) = self.listings.get(&parent).filter(|l| l.expires > now) {
            return match listing
                .entries
                .binary_search_by(|e| e.name.as_str().cmp(name))
            {
                Ok(i) => Cached::Entry(listing.entries[i].attr.clone()),
                Err(_) => Cached::Missing,
            };
        }
        match self.misses.get(&(parent, name.to_string())) {
            Some(expires) if *expires > now => Cached::Missing,
            _ => Cached::Unknown,
        }
    }

    /// Sizes of the maps.
    pub fn stats(&self) -> MetaStats {
        MetaStats {
            inodes: self.inodes.len(),
            nodes: self.inodes.data_count(),
            listings: self.listings.len(),
            listed_entries: self.listed_entries,
            misses: self.misses.len(),
            bytes: self.estimated_bytes(),
            shed: self.shed,
        }
    }

    // ---- what the store said ----

    /// `path` was seen as `kind` with object `meta` (a HEAD, a probe, a listing); returns its
    /// inode number.
    pub fn seen(&mut self, path: &str, kind: Kind, meta: Option<ObjectMeta>) -> Ino {
        let ino = self.inodes.ino_for(path);
        self.seen_ino(ino, kind, meta);
        ino
    }

    /// Like `seen`, for a number `ino_for` just gave.
    pub fn seen_ino(&mut self, ino: Ino, kind: Kind, meta: Option<ObjectMeta>) {
        let expires = Instant::now() + self.ttl;
        let Some(path) = self.inodes.path(ino) else {
            return;
        };
        let object = meta.map(|m| PackedObject::pack(m, self.expected(&path)));
        self.inodes.set_data(
            ino,
            NodeState {
                kind,
                object,
                expires,
            },
        );
    }

    /// A HEAD, probe or listing page is sent now: the change number its answer must not see
    /// passed for the directory of the names it answers for (see 7.).
    pub fn fill_started(&self) -> ListToken {
        ListToken(self.seq)
    }

    /// True when directory `dir` changed after `token`: answers about its names read since
    /// are not stored (see 7.).
    pub fn changed_after(&self, dir: Ino, token: ListToken) -> bool {
        let last = self
            .changed
            .peek(&dir)
            .copied()
            .unwrap_or(self.changed_floor);
        last > token.0
    }

    /// `seen_ino`, for an answer read since `token`: not stored if `ino`'s directory changed
    /// meanwhile (see 7.). Returns whether it was stored.
    pub fn seen_since(
        &mut self,
        ino: Ino,
        kind: Kind,
        meta: Option<ObjectMeta>,
        token: ListToken,
    ) -> bool {
        let parent = self
            .inodes
            .path(ino)
            .and_then(|path| self.inodes.get(split(&path).0));
        if parent.is_some_and(|dir| self.changed_after(dir, token)) {
            return false;
        }
        let headers = meta.as_ref().is_some_and(|m| m.metadata.is_some());
        self.seen_ino(ino, kind, meta);
        if let Some(dir) = parent.filter(|dir| headers && self.listings.contains(dir)) {
            self.mark(dir, Dirty::Listing);
        }
        true
    }

    /// `missed`, for an answer read since `token` (see 7.).
    pub fn missed_since(&mut self, parent: Ino, name: &str, token: ListToken) {
        if !self.changed_after(parent, token) {
            self.missed(parent, name);
        }
    }

    /// `name` does not exist in `parent`.
    pub fn missed(&mut self, parent: Ino, name: &str) {
        let expires = Instant::now() + self.negative_ttl;
        self.misses.put((parent, name.to_string()), expires);
        while self.misses.len() > MAX_MISSES {
            self.misses.pop_lru();
        }
    }

    /// A listing starts now: the change number it must not see passed for its directory.
    pub fn listing_started(&self) -> ListToken {
        ListToken(self.seq)
    }

    /// The complete, sorted listing of `dir` that started at `token`; cached unless the
    /// directory changed meanwhile (see 2.). Returns whether it was cached.
    pub fn listed(&mut self, dir: Ino, token: ListToken, entries: Vec<DirEntry>) -> bool {
        let cached = self.listed_from_snapshot(dir, token, entries, SystemTime::now());
        if cached {
            self.mark(dir, Dirty::Listing);
        }
        cached
    }

    /// `listed`, for a listing read from the snapshot, which was read from S3 at `listed_at`
    /// (it is not marked to be saved again).
    pub fn listed_from_snapshot(
        &mut self,
        dir: Ino,
        token: ListToken,
        entries: Vec<DirEntry>,
        listed_at: SystemTime,
    ) -> bool {
        if self.changed_after(dir, token) {
            return false;
        }
        let now = Instant::now();
        let expired: Vec<Ino> = self
            .listings
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(ino, _)| *ino)
            .collect();
        for ino in expired.into_iter().filter(|ino| *ino != dir) {
            self.drop_listing(ino);
        }
        // The old listing of `dir` goes; children it named that the new one does not are
        // freed (the new one's children were just `seen`).
        self.drop_listing_keeping(dir, &entries);
        self.listed_entries += entries.len();
        let expires = now + self.ttl;
        self.listings.put(
            dir,
            Listing {
                entries: Arc::new(entries),
                expires,
                listed_at,
            },
        );
        // The listing answers for every name in it now.
        self.misses.retain(|(parent, _), _| *parent != dir);
        while self.listed_entries > MAX_LISTED_ENTRIES {
            match self.listings.peek_lru() {
                Some((ino, _)) if *ino != dir => {
                    let ino = *ino;
                    self.drop_listing(ino);
                }
                _ => break,
            }
        }
        true
    }

    // ---- what this mount changed ----

    /// This mount made `path` into `kind` with object `meta`; `attr` is what its parent's
    /// listing shows (its `ino` is `ino_for(path)`).
    pub fn created(&mut self, path: &str, kind: Kind, meta: Option<ObjectMeta>, attr: Attr) {
        self.seen(path, kind, meta);
        self.entry_changed(path, attr);
    }

    /// The attributes `path` shows in its parent's listing changed (a file opened for writing,
    /// its size moving).
    pub fn entry_changed(&mut self, path: &str, attr: Attr) {
        let (parent_path, name) = split(path);
        let parent = self.inodes.ino_for(parent_path);
        self.set_entry(parent, name, Some(attr));
    }

    /// `path` is gone (unlink, rmdir, a failed file's end).
    pub fn removed(&mut self, path: &str) {
        if let Some(ino) = self.inodes.get(path) {
            let dir = self.take_node(ino).is_some_and(|n| n.kind == Kind::Dir);
            self.drop_listing(ino);
            if dir {
                self.mark(ino, Dirty::Gone);
            }
        }
        self.name_gone(path);
    }

    /// The cached listing of `dir` is not to be trusted (a saved one that could not be
    /// revalidated): it goes, and the next lookup in `dir` asks the store.
    pub fn unlisted(&mut self, dir: Ino) {
        self.drop_listing(dir);
    }

    /// Subdirectories of `dir` while its listing is cached (for its link count).
    pub fn subdirs(&self, dir: Ino) -> Option<u32> {
        let listing = self.listings.peek(&dir)?;
        let dirs = listing.entries.iter().filter(|e| e.attr.kind == Kind::Dir);
        Some(dirs.count().min(u32::MAX as usize - 2) as u32)
    }

    /// `path` was unlinked while open: its number lives on without a path until the kernel
    /// forgets it, and the name is free for a new file with a number of its own.
    pub fn unlinked_open(&mut self, path: &str) {
        if let Some(ino) = self.inodes.get(path) {
            self.take_node(ino);
        }
        self.name_gone(path);
        self.inodes.orphan(path);
    }

    /// The last handle of unlinked file `ino` closed: its number may go.
    pub fn orphan_closed(&mut self, ino: Ino) {
        self.take_node(ino);
        self.inodes.unpin(ino);
    }

    /// `from` was renamed to `to`, which shows `attr` now: the moved inodes keep their numbers.
    pub fn renamed(&mut self, from: &str, to: &str, attr: Attr) {
        let moves_dir = attr.kind == Kind::Dir;
        for ino in self.inodes.rename(from, to, moves_dir) {
            let dir = self.take_node(ino).is_some_and(|n| n.kind == Kind::Dir);
            self.drop_listing(ino);
            // Saved under its old path (and the new one may hold an older tree's).
            if let Some(path) = self
                .inodes
                .path(ino)
                .filter(|_| dir && self.dirty.is_some())
            {
                let old = path.strip_prefix(to).map(|rest| format!("{from}{rest}"));
                self.mark_path(path, Dirty::Gone);
                if let Some(old) = old {
                    self.mark_path(old.into(), Dirty::Gone);
                }
            }
        }
        self.name_gone(from);
        self.entry_changed(to, attr);
    }

    /// The name `path` left its parent: out of the cached listing, remembered as a miss.
    fn name_gone(&mut self, path: &str) {
        let (parent_path, name) = split(path);
        let parent = self.inodes.ino_for(parent_path);
        self.set_entry(parent, name, None);
        self.missed(parent, name);
    }

    /// The object behind `path` changed elsewhere (an ESTALE, an S3 event): its attributes and
    /// its parent's listing go, so the next lookup asks the store.
    pub fn stale(&mut self, path: &str) {
        if let Some(ino) = self.inodes.get(path) {
            self.take_node(ino);
        }
        let (parent_path, name) = split(path);
        if let Some(parent) = self.inodes.get(parent_path) {
            self.drop_listing(parent);
            self.mark(parent, Dirty::Gone);
            self.misses.pop(&(parent, name.to_string()));
            self.bump(parent);
        }
    }

    /// `path` changed elsewhere (see 6.): forgets what may be out of date, unless memory
    /// already agrees (this mount's own commit, a removal already known); returns what the
    /// kernel must forget.
    pub fn changed_elsewhere(&mut self, path: &str, change: &Elsewhere) -> Vec<KernelNote> {
        let (parent_path, name) = split(path);
        let parent = self.inodes.get(parent_path);
        let ino = self.inodes.get(path);
        let agrees = match change {
            Elsewhere::Created { etag: Some(etag) } => ino
                .and_then(|i| self.node(i)?.object.as_ref())
                .is_some_and(|m| m.etag_is(etag)),
            Elsewhere::Created { etag: None } => false,
            Elsewhere::Removed => {
                parent.is_some_and(|p| self.cached_child(p, name) == Cached::Missing)
            }
        };
        if agrees {
            return Vec::new();
        }
        let mut notes = Vec::new();
        // Whether each ancestor stays is judged on its listing before this change drops any.
        let mut stays = Vec::new();
        let mut child = name;
        let mut dir = parent_path;
        while !dir.is_empty() {
            stays.push(self.dir_stays(dir, child, change));
            let (up, dir_name) = split(dir);
            child = dir_name;
            dir = up;
        }
        if let Some(ino) = ino {
            notes.push(KernelNote::Inode(ino));
        }
        // A directory's marker going leaves the directory while keys remain below it.
        let gone = matches!(change, Elsewhere::Removed);
        let deleted = ino.filter(|i| gone && self.known_kind(*i) != Some(Kind::Dir));
        self.stale_noting(path, deleted, &mut notes);
        let mut dir = parent_path;
        for stays in stays {
            if stays {
                break;
            }
            self.stale_noting(dir, None, &mut notes);
            dir = split(dir).0;
        }
        notes
    }

    /// Whether directory `dir` surely exists as before a change of its entry `child`.
    fn dir_stays(&mut self, dir: &str, child: &str, change: &Elsewhere) -> bool {
        let Some(ino) = self.inodes.get(dir) else {
            // Nothing here names it, nor did the kernel get it: it need not be forgotten, and
            // its parent is judged as if it were the changed child.
            return false;
        };
        let node = self.node(ino);
        match change {
            // A new key below it: it exists now, and did already if it was known as one.
            Elsewhere::Created { .. } => node.is_some_and(|n| n.kind == Kind::Dir),
            // It stays if it has an object of its own, or other entries.
            Elsewhere::Removed => {
                let marker = node.is_some_and(|n| n.kind == Kind::Dir && n.object.is_some());
                marker
                    || self
                        .fresh_listing(ino)
                        .is_some_and(|l| l.iter().any(|e| e.name != child))
            }
        }
    }

    /// `stale(path)`, noting the entry and the parent's attributes for the kernel.
    fn stale_noting(&mut self, path: &str, deleted: Option<Ino>, notes: &mut Vec<KernelNote>) {
        let (parent_path, name) = split(path);
        if let Some(parent) = self.inodes.get(parent_path) {
            notes.push(KernelNote::Entry {
                parent,
                name: name.to_string(),
                deleted,
            });
            notes.push(KernelNote::Inode(parent));
        }
        self.stale(path);
    }

    /// Attributes and listings are trusted for `ttl` from now on, misses for `negative_ttl`;
    /// what was cached for longer expires by the new rule. Returns what the kernel holds, to
    /// forget when the TTL it was given is longer than the new one.
    pub fn set_ttls(&mut self, ttl: Duration, negative_ttl: Duration) -> Vec<KernelNote> {
        let shorter = ttl < self.ttl;
        self.ttl = ttl;
        self.negative_ttl = negative_ttl;
        let now = Instant::now();
        self.inodes
            .for_each_data(|node| node.expires = node.expires.min(now + ttl));
        for (_, listing) in self.listings.iter_mut() {
            listing.expires = listing.expires.min(now + ttl);
        }
        for (_, expires) in self.misses.iter_mut() {
            *expires = (*expires).min(now + negative_ttl);
        }
        if !shorter {
            return Vec::new();
        }
        let mut notes = Vec::new();
        for (ino, path) in self.inodes.held() {
            notes.extend(self.entry_note(&path));
            notes.push(KernelNote::Inode(ino));
        }
        notes
    }

    /// A directory this mount just made: empty, and known so until the TTL.
    pub fn made_dir(&mut self, ino: Ino) {
        let token = ListToken(self.seq);
        self.listed(ino, token, Vec::new());
    }

    // ---- the kernel's references ----

    /// The kernel was given an entry for `path`; returns its number (given anew if it had
    /// been freed).
    pub fn looked_up(&mut self, path: &str) -> Ino {
        let ino = self.inodes.ino_for(path);
        self.inodes.looked_up(ino);
        ino
    }

    /// The kernel was given an entry it had from a listing as `ino`: counted, unless the
    /// number was freed meanwhile (false: count it by path with `looked_up`).
    pub fn looked_up_ino(&mut self, ino: Ino) -> bool {
        self.inodes.looked_up(ino)
    }

    /// The kernel forgot `n` lookups of `ino`: at 0 its own listing goes (no lookup can come
    /// for a directory the kernel does not hold), and it is freed with what is known of it,
    /// unless its parent's cached listing still names it.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if !self.inodes.forget(ino, n) {
            return;
        }
        self.drop_listing(ino);
        // Nothing the kernel holds in it came through it any more.
        self.given.pop(&ino);
        let listed = self.inodes.path(ino).is_some_and(|path| {
            let (parent, name) = split(&path);
            self.inodes.get(parent).is_some_and(|p| {
                self.listings.peek(&p).is_some_and(|l| {
                    l.entries
                        .binary_search_by(|e| e.name.as_str().cmp(name))
                        .is_ok()
                })
            })
        });
        if !listed {
            self.free(ino);
        }
    }

    // ---- the bound (see 9.) ----

    /// The kernel was given entries of directory `dir` (a lookup, a readdirplus reply).
    pub fn gave_entries(&mut self, dir: Ino) {
        if self.budget != usize::MAX {
            self.given.put(dir, ());
        }
    }

    /// What the maps take, estimated from their sizes.
    pub fn estimated_bytes(&self) -> usize {
        let small = self.misses.len() + self.changed.len() + self.given.len() + self.listings.len();
        self.inodes.bytes() + self.listed_entries * LISTED_ENTRY_BYTES + small * SMALL_ENTRY_BYTES
    }

    /// Brings memory back within the bound: drops listings, least recently used first, and
    /// returns the directories the kernel must forget for the rest.
    pub fn shed(&mut self) -> Vec<KernelNote> {
        if self.budget == usize::MAX {
            return Vec::new();
        }
        let mut bytes = self.estimated_bytes();
        if bytes <= self.budget {
            return Vec::new();
        }
        let target = self.budget / 10 * 9;
        while bytes > target {
            let Some(lru) = self.listings.peek_lru().map(|(ino, _)| *ino) else {
                break;
            };
            self.drop_listing(lru);
            bytes = self.estimated_bytes();
        }
        if bytes <= target {
            return Vec::new();
        }
        // The kernel's entries are spread over the directories it got them in: forget the
        // share of them the excess is, at least one.
        let share = (bytes - target) as f64 / bytes as f64;
        let count = ((self.given.len() as f64 * share).ceil() as usize).max(1);
        let mut notes = Vec::new();
        while notes.len() < count {
            let Some((dir, ())) = self.given.pop_lru() else {
                break;
            };
            if dir == Ino::ROOT {
                continue;
            }
            let Some(path) = self.inodes.path(dir) else {
                continue;
            };
            notes.extend(self.entry_note(&path));
        }
        self.shed += notes.len() as u64;
        if !notes.is_empty() {
            tracing::debug!(bytes, budget = self.budget, dirs = notes.len(), "shedding");
        }
        notes
    }

    // ---- internals ----

    /// The note that makes the kernel forget the entry of `path` in its parent.
    fn entry_note(&self, path: &str) -> Option<KernelNote> {
        let (parent_path, name) = split(path);
        let parent = self.inodes.get(parent_path)?;
        Some(KernelNote::Entry {
            parent,
            name: name.to_string(),
            deleted: None,
        })
    }

    /// Frees `ino` if the kernel does not hold it, with its attributes and its listing.
    fn free(&mut self, ino: Ino) {
        if self.inodes.lookups(ino) == 0 {
            // Its listing first, while its path still names its children.
            self.drop_listing(ino);
            self.take_node(ino);
            self.given.pop(&ino);
            self.inodes.remove_unheld(ino);
        }
    }

    /// Drops the cached listing of `dir`; children it alone kept alive are freed.
    fn drop_listing(&mut self, dir: Ino) {
        self.drop_listing_keeping(dir, &[]);
    }

    /// Drops the cached listing of `dir`; children it alone kept alive are freed, but those
    /// named in `keep` (sorted: the listing replacing it).
    fn drop_listing_keeping(&mut self, dir: Ino, keep: &[DirEntry]) {
        let Some(listing) = self.listings.pop(&dir) else {
            return;
        };
        self.listed_entries -= listing.entries.len();
        let Some(path) = self.inodes.path(dir) else {
            return;
        };
        // Changed since it was last saved, and now it cannot be: the saved one goes (8.).
        let unsaved = self
            .dirty
            .as_ref()
            .is_some_and(|marks| marks.get(&path) == Some(&Dirty::Listing));
        if unsaved {
            self.mark_path(Arc::clone(&path), Dirty::Gone);
        }
        for entry in listing.entries.iter() {
            let kept = keep
                .binary_search_by(|e| e.name.as_str().cmp(&entry.name))
                .is_ok();
            match self.inodes.get(&join(&path, &entry.name)) {
                Some(child) if !kept && child != dir => self.free(child),
                _ => {}
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) `name` in `parent`'s cached listing, drops a miss
    /// for it, and marks the directory changed.
    fn set_entry(&mut self, parent: Ino, name: &str, attr: Option<Attr>) {
        self.misses.pop(&(parent, name.to_string()));
        self.bump(parent);
        if self.listings.contains(&parent) {
            self.mark(parent, Dirty::Listing);
        }
        let Some(listing) = self.listings.peek_mut(&parent) else {
            return;
        };
        let entries = Arc::make_mut(&mut listing.entries);
        let before = entries.len();
        match (
            entries.binary_search_by(|e| e.name.as_str().cmp(name)),
            attr,
        ) {
            (Ok(i), Some(attr)) => entries[i].attr = attr,
            (Ok(i), None) => {
                entries.remove(i);
            }
            (Err(i), Some(attr)) => entries.insert(
                i,
                DirEntry {
                    name: name.to_string(),
                    attr,
                },
            ),
            (Err(_), None) => {}
        }
        self.listed_entries = self.listed_entries + entries.len() - before;
    }

    /// Marks directory `dir` for the snapshot writer (see 8.).
    fn mark(&mut self, dir: Ino, dirty: Dirty) {
        if self.dirty.is_some() {
            if let Some(path) = self.inodes.path(dir) {
                self.mark_path(path, dirty);
            }
        }
    }

    fn mark_path(&mut self, path: Arc<str>, dirty: Dirty) {
        if let Some(marks) = &mut self.dirty {
            let mark = marks.entry(path).or_insert(dirty);
            if dirty == Dirty::Gone {
                *mark = Dirty::Gone;
            }
        }
    }

    /// True when the saved listing of `path` is marked out of date (see 8.): it must not be
    /// loaded.
    pub fn marked_gone(&self, path: &str) -> bool {
        self.dirty
            .as_ref()
            .is_some_and(|marks| marks.get(path) == Some(&Dirty::Gone))
    }

    /// `path` changed elsewhere: the saved listings of its directory and their ancestors that
    /// are not in memory (and so not judged by `changed_elsewhere`) are out of date (see 8.).
    pub fn changed_unlisted(&mut self, path: &str) {
        if self.dirty.is_none() {
            return;
        }
        let mut dir = split(path).0;
        loop {
            let listed = self
                .inodes
                .get(dir)
                .is_some_and(|ino| self.listings.contains(&ino));
            if !listed {
                self.mark_path(Arc::from(dir), Dirty::Gone);
            }
            if dir.is_empty() {
                break;
            }
            dir = split(dir).0;
        }
    }

    /// What the snapshot writer must do now (see 8.): the listings of the directories marked
    /// since the last call, each entry with what is known of its object (its headers, when a
    /// HEAD read them), keys relative to `dir_prefix(path)`. A listing that cannot be saved
    /// whole (a file not committed yet, a key outside its directory) is not saved.
    pub fn take_dirty(&mut self, dir_prefix: impl Fn(&str) -> String) -> Vec<SnapshotWork> {
        let Some(marks) = self.dirty.as_mut().map(std::mem::take) else {
            return Vec::new();
        };
        let mut work = Vec::new();
        for (path, dirty) in marks {
            let listing = self
                .inodes
                .get(&path)
                .and_then(|ino| self.listings.peek(&ino));
            let saved = listing.and_then(|l| self.saved_listing(&path, l, &dir_prefix(&path)));
            match (saved, dirty) {
                (Some(saved), _) => work.push(SnapshotWork::Save(saved)),
                (None, Dirty::Gone) => work.push(SnapshotWork::Remove(path.to_string())),
                (None, Dirty::Listing) => {}
            }
        }
        work
    }

    fn saved_listing(&self, path: &str, listing: &Listing, prefix: &str) -> Option<SavedListing> {
        let mut entries = Vec::with_capacity(listing.entries.len());
        for entry in listing.entries.iter() {
            let ino = self.inodes.get(&join(path, &entry.name))?;
            let node = self.node(ino)?;
            let object = match self.known_meta(ino) {
                Some(meta) => Some(SavedObject::of(&meta, prefix)?),
                None if node.kind == Kind::Dir => None,
                None => return None,
            };
            entries.push(SavedEntry {
                name: entry.name.clone(),
                kind: node.kind.type_bits(),
                object,
            });
        }
        Some(SavedListing::new(path, listing.listed_at, entries))
    }

    /// Directory `dir` changed: listings of it that started before now are incomplete.
    fn bump(&mut self, dir: Ino) {
        self.seq += 1;
        self.changed.put(dir, self.seq);
        while self.changed.len() > MAX_CHANGED_DIRS {
            if let Some((_, seq)) = self.changed.pop_lru() {
                self.changed_floor = self.changed_floor.max(seq);
            }
        }
    }
}

#[cfg(test)]
mod tests;
