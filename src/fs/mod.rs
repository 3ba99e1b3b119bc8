//! The FUSE-agnostic filesystem: names, attributes, directory and file handles over the store.
//!
//! Non-obvious problems:
//! 1. `ls -l` must not HEAD each entry: a directory listing fills the attribute cache of every
//!    child and is kept for `metadata_ttl`, so the lookups and getattrs that follow are answered
//!    from it (and readdirplus carries the attributes in the same reply).
//! 2. A lookup of an unknown name costs one HEAD (`dir/name`) and one LIST (`dir/name/`, one key),
//!    issued concurrently; a directory wins over a file of the same name. Misses go to a negative
//!    cache for `negative_ttl`.
//! 3. A file handle pins the ETag seen at open; every read is a GET with `If-Match`, so a replaced
//!    object gives ESTALE instead of mixed bytes.
//! 4. Listings carry no user metadata, so a file's mode, owner, mtime and symlink-ness come from
//!    a HEAD (a lookup outside a fresh listing) or from what this mount wrote; both are kept per
//!    ETag and reused by later listings of the same version. Never-HEADed objects show the
//!    mount's defaults: `ls -l` stays one LIST per 1,000 entries.
//! 5. Mutations update the cached listing of the parent in place, so `tar x` of a thousand files
//!    answers its lookups from memory instead of a HEAD + LIST per name.

mod dir;
pub mod inode;
pub mod list;
mod namespace;
pub mod posix;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use crate::cache::{BlockCache, ObjectId, ReadState};
use crate::config::FsConfig;
use crate::error::{FsError, FsResult};
use crate::store::{ListRequest, ListStart, ObjectMeta, ObjectStore};
use crate::upload::staging::StagingDir;
use crate::upload::{UploadTuning, WriteBudget};
pub use dir::DirHandle;
pub use inode::Ino;
use inode::InodeTable;
use list::{valid_name, Child};
pub use namespace::{RenameMode, SetAttr};
use posix::Posix;
pub use write::OpenMode;
use write::Writer;

/// What kind of node an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (an object).
    File,
    /// A directory (a prefix).
    Dir,
    /// A symbolic link (an object whose mode header says so; the body is the target).
    Symlink,
}

/// Everything the write path needs besides the store.
#[derive(Debug, Clone)]
pub struct Writes {
    /// Part size and parts in flight.
    pub tuning: UploadTuning,
    /// Memory shared by all write buffers.
    pub budget: WriteBudget,
    /// Where staging files go.
    pub staging: Arc<StagingDir>,
    /// Background work (aborts of abandoned uploads) that shutdown waits for.
    pub tasks: tokio_util::task::TaskTracker,
}

/// Attributes of one node, FUSE-free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// One entry of a directory handle.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// File name.
    pub name: String,
    /// Its attributes.
    pub attr: Attr,
}

/// What the filesystem knows about a node's object, with an expiry.
#[derive(Debug, Clone)]
struct NodeState {
    kind: Kind,
    meta: Option<ObjectMeta>,
    expires: Instant,
}

#[derive(Debug)]
struct OpenFile {
    /// The version seen at open (`None` for a file created by this handle).
    object: Option<Arc<ObjectId>>,
    size: u64,
    state: Mutex<ReadState>,
    /// Set for handles opened for writing.
    writer: Option<Arc<Writer>>,
    /// The process that opened it (0: unknown, every close commits).
    opener: u32,
}

#[derive(Debug, Default)]
struct Tables {
    inodes: InodeTable,
    nodes: HashMap<Ino, NodeState>,
    listings: HashMap<Ino, (Arc<Vec<DirEntry>>, Instant)>,
    negative: HashMap<(Ino, String), Instant>,
    /// Files open for writing, by inode: every handle on one file shares its writer.
    writers: HashMap<Ino, Arc<Writer>>,
}

/// The filesystem.
#[derive(Debug)]
pub struct Fs {
    store: Arc<dyn ObjectStore>,
    cache: Arc<BlockCache>,
    config: FsConfig,
    writes: Writes,
    mounted_at: SystemTime,
    root_posix: Mutex<Posix>,
    tables: Mutex<Tables>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    /// Set at shutdown: no new changes are accepted.
    stopping: std::sync::atomic::AtomicBool,
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// The parent path and the name of `path`.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The POSIX headers of an object, when known.
fn posix_of(meta: Option<&ObjectMeta>) -> Posix {
    meta.and_then(|m| m.metadata.as_ref())
        .map(Posix::from_metadata)
        .unwrap_or_default()
}

/// ETags compare without their quotes: some servers quote them in listings and not in
/// CopyObject results.
fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// File or symlink, from the object's mode header.
fn object_kind(meta: &ObjectMeta) -> Kind {
    if posix_of(Some(meta)).is_symlink() {
        Kind::Symlink
    } else {
        Kind::File
    }
}

impl Fs {
    /// A filesystem over `store`, reading through `cache` and writing through `writes`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        cache: Arc<BlockCache>,
        config: FsConfig,
        writes: Writes,
    ) -> Self {
        Self {
            store,
            cache,
            config,
            writes,
            mounted_at: SystemTime::now(),
            root_posix: Mutex::default(),
            tables: Mutex::default(),
            dirs: Mutex::default(),
            files: Mutex::default(),
            next_fh: AtomicU64::new(1),
            stopping: Default::default(),
        }
    }

    /// Background tasks (aborts) that must finish before the process exits.
    pub fn tasks(&self) -> &tokio_util::task::TaskTracker {
        &self.writes.tasks
    }

    /// The configuration in force.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    fn key_of(&self, path: &str) -> String {
        format!("{}{}", self.config.prefix, path)
    }

    fn dir_prefix(&self, path: &str) -> String {
        if path.is_empty() {
            self.config.prefix.clone()
        } else {
            format!("{}{}/", self.config.prefix, path)
        }
    }

    fn path_of(&self, ino: Ino) -> FsResult<Arc<str>> {
        self.tables
            .lock()
            .unwrap()
            .inodes
            .path(ino)
            .ok_or_else(|| FsError::new(libc::ESTALE, format!("unknown inode {}", ino.0)))
    }

    /// Attributes from what is known: the headers when present, else the mount's defaults.
    /// `meta` is the object of a file or symlink, the `dir/` marker (if seen) of a directory.
    fn attr(&self, ino: Ino, kind: Kind, meta: Option<&ObjectMeta>) -> Attr {
        let posix = if ino == Ino::ROOT {
            *self.root_posix.lock().unwrap()
        } else {
            posix_of(meta)
        };
        let (size, modified) = match (kind, meta) {
            (Kind::File | Kind::Symlink, Some(m)) => (m.size, m.last_modified),
            _ => (0, self.mounted_at),
        };
        self.attr_from(ino, kind, size, &posix, modified)
    }

    /// Attributes of a node of `kind` and `size`: `posix` where set, else the mount's
    /// defaults and `modified`.
    fn attr_from(
        &self,
        ino: Ino,
        kind: Kind,
        size: u64,
        posix: &Posix,
        modified: SystemTime,
    ) -> Attr {
        let perm = match kind {
            Kind::Dir => self.config.dir_mode,
            Kind::File => self.config.file_mode,
            Kind::Symlink => 0o777,
        };
        Attr {
            ino,
            kind,
            size,
            mtime: posix.mtime.unwrap_or(modified),
            perm: posix.mode.map_or(perm, |m| (m & 0o7777) as u16),
            uid: posix.uid.unwrap_or(self.config.uid),
            gid: posix.gid.unwrap_or(self.config.gid),
        }
    }

    /// Records what is known of `path` and returns its attributes.
    fn remember(&self, path: &str, kind: Kind, meta: Option<ObjectMeta>) -> Attr {
        self.remember_locked(&mut self.tables.lock().unwrap(), path, kind, meta)
    }

    fn remember_locked(
        &self,
        t: &mut Tables,
        path: &str,
        kind: Kind,
        meta: Option<ObjectMeta>,
    ) -> Attr {
        let ino = t.inodes.ino_for(path);
        let attr = self.attr(ino, kind, meta.as_ref());
        let expires = Instant::now() + self.config.metadata_ttl;
        t.nodes.insert(
            ino,
            NodeState {
                kind,
                meta,
                expires,
            },
        );
        attr
    }

    /// Attributes of the root directory.
    pub fn root_attr(&self) -> Attr {
        self.attr(Ino::ROOT, Kind::Dir, None)
    }

    /// Looks up `name` in directory `parent`.
    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        if !valid_name(name) {
            return Err(FsError::not_found());
        }
        let parent_path = self.path_of(parent)?;
        let path = join(&parent_path, name);
        let now = Instant::now();
        {
            let t = self.tables.lock().unwrap();
            if let Some(writer) = t.inodes.get(&path).and_then(|ino| t.writers.get(&ino)) {
                return Ok(self.writer_attr(writer));
            }
            if let Some((entries, expires)) = t.listings.get(&parent) {
                if *expires > now {
                    return match entries.binary_search_by(|e| e.name.as_str().cmp(name)) {
                        Ok(i) => Ok(entries[i].attr.clone()),
                        Err(_) => Err(FsError::not_found()),
                    };
                }
            }
            if t.negative
                .get(&(parent, name.to_string()))
                .is_some_and(|e| *e > now)
            {
                return Err(FsError::not_found());
            }
        }
        match self.probe(&path).await? {
            Some((kind, meta)) => Ok(self.remember(&path, kind, meta)),
            None => {
                let expires = Instant::now() + self.config.negative_ttl;
                let mut t = self.tables.lock().unwrap();
                t.negative.insert((parent, name.to_string()), expires);
                Err(FsError::not_found())
            }
        }
    }

    /// HEAD `key` and LIST `key/` concurrently: a directory, a file, or nothing.
    async fn probe(&self, path: &str) -> FsResult<Option<(Kind, Option<ObjectMeta>)>> {
        let key = self.key_of(path);
        let request = ListRequest {
            prefix: format!("{key}/"),
            delimiter: Some("/".to_string()),
            start: ListStart::Beginning,
            max_keys: 1,
        };
        let (head, listing) = tokio::join!(
            self.store.head_object(&key),
            self.store.list_objects_v2(&request)
        );
        let listing = listing?;
        if !listing.objects.is_empty() || !listing.common_prefixes.is_empty() {
            // A `dir/` marker sorts first; its headers hold the directory's mode and owner.
            let marker = format!("{key}/");
            let meta = match listing.objects.first() {
                Some(o) if o.key == marker => self.store.head_object(&marker).await?,
                _ => None,
            };
            return Ok(Some((Kind::Dir, meta)));
        }
        Ok(head?.map(|meta| (object_kind(&meta), Some(meta))))
    }

    /// Kind and object metadata of `ino`, from the cache while fresh, else from the store.
    async fn node(&self, ino: Ino) -> FsResult<(Kind, Option<ObjectMeta>)> {
        if ino == Ino::ROOT {
            return Ok((Kind::Dir, None));
        }
        let path = {
            let t = self.tables.lock().unwrap();
            if let Some(node) = t.nodes.get(&ino) {
                if node.expires > Instant::now() {
                    return Ok((node.kind, node.meta.clone()));
                }
            }
            t.inodes.path(ino)
        };
        let path = path.ok_or_else(|| FsError::new(libc::ESTALE, "unknown inode"))?;
        let (kind, meta) = self.probe(&path).await?.ok_or_else(FsError::not_found)?;
        self.remember(&path, kind, meta.clone());
        Ok((kind, meta))
    }

    /// Attributes of `ino`, from the cache while fresh, else from the store.
    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        if let Some(writer) = self.writer_of(ino) {
            return Ok(self.writer_attr(&writer));
        }
        let (kind, meta) = self.node(ino).await?;
        Ok(self.attr(ino, kind, meta.as_ref()))
    }

    /// The cached listing of `ino`, while fresh.
    fn fresh_listing(&self, ino: Ino) -> Option<Arc<Vec<DirEntry>>> {
        let t = self.tables.lock().unwrap();
        t.listings
            .get(&ino)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(entries, _)| Arc::clone(entries))
    }

    /// Records listed children (inode numbers, attributes) and returns them as entries.
    fn register_children(
        &self,
        path: &str,
        children: impl IntoIterator<Item = (String, Child)>,
    ) -> Vec<DirEntry> {
        let expires = Instant::now() + self.config.metadata_ttl;
        let mut t = self.tables.lock().unwrap();
        let mut entries = Vec::new();
        for (name, child) in children {
            let child_ino = t.inodes.ino_for(&join(path, &name));
            let known = t.nodes.get(&child_ino).and_then(|n| n.meta.as_ref());
            let (kind, meta) = match child {
                // A directory keeps the marker headers it was seen with.
                Child::Dir => (Kind::Dir, known.filter(|m| m.key.ends_with('/')).cloned()),
                Child::File(mut meta) => {
                    // Headers read earlier for this very version still hold.
                    if let Some(old) =
                        known.filter(|m| same_etag(&m.etag, &meta.etag) && m.key == meta.key)
                    {
                        meta.metadata.clone_from(&old.metadata);
                    }
                    (object_kind(&meta), Some(meta))
                }
            };
            let attr = match t.writers.get(&child_ino) {
                Some(writer) => self.writer_attr(writer),
                None => self.attr(child_ino, kind, meta.as_ref()),
            };
            t.nodes.insert(
                child_ino,
                NodeState {
                    kind,
                    meta,
                    expires,
                },
            );
            entries.push(DirEntry { name, attr });
        }
        entries
    }

    /// Caches the complete, sorted listing `entries` of `ino` with the files being written in
    /// it added; returns those added files.
    fn cache_listing(&self, ino: Ino, path: &str, mut entries: Vec<DirEntry>) -> Vec<DirEntry> {
        let expires = Instant::now() + self.config.metadata_ttl;
        let mut t = self.tables.lock().unwrap();
        // Files created here and not yet committed are not in the bucket yet, but they exist.
        let pending: Vec<(String, Attr)> = t
            .writers
            .values()
            .filter_map(|w| {
                let p = w.path();
                let (parent, name) = split(&p);
                (parent == path).then(|| (name.to_string(), self.writer_attr(w)))
            })
            .collect();
        let mut added = Vec::new();
        for (name, attr) in pending {
            if let Err(i) = entries.binary_search_by(|e| e.name.as_str().cmp(&name)) {
                let entry = DirEntry { name, attr };
                added.push(entry.clone());
                entries.insert(i, entry);
            }
        }
        let entries = Arc::new(entries);
        // Expired listings and misses are dropped here, at a cost proportional to the listing
        // just fetched, so neither cache outgrows what is still fresh.
        let now = Instant::now();
        t.listings.retain(|_, (_, e)| *e > now);
        t.listings.insert(ino, (entries, expires));
        t.negative
            .retain(|(parent, _), e| *parent != ino && *e > now);
        added
    }

    /// Opens file `ino`; a handle opened for writing shares the file's writer.
    pub async fn open(&self, ino: Ino, mode: OpenMode) -> FsResult<u64> {
        if mode.write {
            self.check_changes_allowed()?;
        }
        let writer = self.writer_of(ino);
        let (object, size) = match (&writer, self.node(ino).await) {
            (_, Ok((Kind::File, Some(meta)))) => (
                Some(Arc::new(ObjectId {
                    key: meta.key,
                    etag: meta.etag,
                })),
                meta.size,
            ),
            (Some(_), _) => (None, 0),
            (None, Ok((Kind::Symlink, _))) => {
                return Err(FsError::new(libc::ELOOP, "is a symlink"))
            }
            (None, Ok(_)) => return Err(FsError::new(libc::EISDIR, "is a directory")),
            (None, Err(e)) => return Err(e),
        };
        let writer = if mode.write {
            Some(self.attach_writer(ino, mode).await?)
        } else {
            None
        };
        let file = OpenFile {
            object,
            size,
            state: Mutex::default(),
            writer,
            opener: mode.opener,
        };
        Ok(self.add_handle(file))
    }

    fn add_handle(&self, file: OpenFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().unwrap().insert(fh, Arc::new(file));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, "unknown file handle"))
    }

    /// Reads from an open file: a file being changed in place is read from its staging copy.
    pub async fn read(&self, ino: Ino, fh: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        let file = self.handle(fh)?;
        let own = file.writer.clone();
        if let Some(writer) = own.or_else(|| self.writer_of(ino)) {
            let mine = file.writer.is_some();
            if let Some(bytes) = self
                .read_writer(&writer, &file.state, mine, offset, len)
                .await?
            {
                return Ok(bytes);
            }
        }
        let Some(object) = &file.object else {
            return Ok(Bytes::new());
        };
        let result = self
            .cache
            .read(object, file.size, &file.state, offset, len)
            .await;
        if let Err(e) = &result {
            if e.errno == libc::ESTALE {
                self.forget_stale(ino);
            }
        }
        result
    }

    /// The object behind `ino` changed: drop its attributes and its parent's listing (which
    /// holds the old ETag), so the next lookup and open see the new version.
    fn forget_stale(&self, ino: Ino) {
        let mut t = self.tables.lock().unwrap();
        t.nodes.remove(&ino);
        if let Some(path) = t.inodes.path(ino) {
            let parent_ino = t.inodes.ino_for(split(&path).0);
            t.listings.remove(&parent_ino);
        }
    }

    /// Records a change of `name` in directory `parent`: its entry in a cached listing is
    /// replaced (`Some`) or removed (`None`), and a remembered miss is dropped.
    fn upsert_entry(&self, t: &mut Tables, parent: Ino, name: &str, attr: Option<Attr>) {
        t.negative.remove(&(parent, name.to_string()));
        let Some((entries, _)) = t.listings.get_mut(&parent) else {
            return;
        };
        let entries = Arc::make_mut(entries);
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
    }

    /// Records that `path` now is `kind` with object `meta`, in its parent's listing too.
    fn record(&self, path: &str, kind: Kind, meta: Option<ObjectMeta>) -> Attr {
        let mut t = self.tables.lock().unwrap();
        let attr = self.remember_locked(&mut t, path, kind, meta);
        let (parent_path, name) = split(path);
        let parent = t.inodes.ino_for(parent_path);
        self.upsert_entry(&mut t, parent, name, Some(attr.clone()));
        attr
    }

    /// Records that `path` is gone.
    fn record_gone(&self, path: &str) {
        let mut t = self.tables.lock().unwrap();
        if let Some(ino) = t.inodes.get(path) {
            t.nodes.remove(&ino);
            t.listings.remove(&ino);
        }
        self.name_gone(&mut t, path);
    }

    /// Drops `path` from its parent's cached listing and remembers the miss.
    fn name_gone(&self, t: &mut Tables, path: &str) {
        let (parent_path, name) = split(path);
        let parent = t.inodes.ino_for(parent_path);
        self.upsert_entry(t, parent, name, None);
        let expires = Instant::now() + self.config.negative_ttl;
        t.negative.insert((parent, name.to_string()), expires);
    }
}

#[cfg(test)]
mod tests;
