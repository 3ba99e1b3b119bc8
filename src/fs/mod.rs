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
//! 4. Until the write path lands, every mutation is refused with EROFS.

pub mod inode;
pub mod list;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use crate::cache::{BlockCache, ObjectId, ReadState};
use crate::config::FsConfig;
use crate::error::{FsError, FsResult};
use crate::store::{ListRequest, ListStart, ObjectMeta, ObjectStore};
pub use inode::Ino;
use inode::InodeTable;
use list::{list_children, valid_name, Child};

/// What kind of node an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (an object).
    File,
    /// A directory (a prefix).
    Dir,
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
    object: Arc<ObjectId>,
    size: u64,
    state: Mutex<ReadState>,
}

#[derive(Debug, Default)]
struct Tables {
    inodes: InodeTable,
    nodes: HashMap<Ino, NodeState>,
    listings: HashMap<Ino, (Arc<Vec<DirEntry>>, Instant)>,
    negative: HashMap<(Ino, String), Instant>,
}

/// The filesystem.
#[derive(Debug)]
pub struct Fs {
    store: Arc<dyn ObjectStore>,
    cache: Arc<BlockCache>,
    config: FsConfig,
    mounted_at: SystemTime,
    tables: Mutex<Tables>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

impl Fs {
    /// A filesystem over `store`, reading through `cache`.
    pub fn new(store: Arc<dyn ObjectStore>, cache: Arc<BlockCache>, config: FsConfig) -> Self {
        Self {
            store,
            cache,
            config,
            mounted_at: SystemTime::now(),
            tables: Mutex::default(),
            dirs: Mutex::default(),
            files: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
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

    fn attr(&self, ino: Ino, kind: Kind, meta: Option<&ObjectMeta>) -> Attr {
        let (perm, size, mtime) = match kind {
            Kind::Dir => (self.config.dir_mode, 0, self.mounted_at),
            Kind::File => {
                let m = meta.expect("files have metadata");
                (self.config.file_mode, m.size, m.last_modified)
            }
        };
        Attr {
            ino,
            kind,
            size,
            mtime,
            perm,
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }

    /// Records what is known of `path` and returns its attributes.
    fn remember(&self, path: &str, kind: Kind, meta: Option<ObjectMeta>) -> Attr {
        let mut t = self.tables.lock().unwrap();
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
        let now = Instant::now();
        {
            let t = self.tables.lock().unwrap();
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
        let path = join(&parent_path, name);
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
            return Ok(Some((Kind::Dir, None)));
        }
        Ok(head?.map(|meta| (Kind::File, Some(meta))))
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
        let (kind, meta) = self.node(ino).await?;
        Ok(self.attr(ino, kind, meta.as_ref()))
    }

    /// Lists directory `ino` (from the listing cache while fresh).
    async fn entries(&self, ino: Ino) -> FsResult<Arc<Vec<DirEntry>>> {
        {
            let t = self.tables.lock().unwrap();
            if let Some((entries, expires)) = t.listings.get(&ino) {
                if *expires > Instant::now() {
                    return Ok(Arc::clone(entries));
                }
            }
        }
        let path = self.path_of(ino)?;
        let listing = list_children(self.store.as_ref(), &self.dir_prefix(&path)).await?;
        if !listing.exists && ino != Ino::ROOT {
            // No key under the prefix any more: the directory is gone.
            return Err(FsError::not_found());
        }
        Ok(self.remember_listing(ino, &path, listing.children))
    }

    fn remember_listing(
        &self,
        ino: Ino,
        path: &str,
        children: BTreeMap<String, Child>,
    ) -> Arc<Vec<DirEntry>> {
        let expires = Instant::now() + self.config.metadata_ttl;
        let mut t = self.tables.lock().unwrap();
        let mut entries = Vec::with_capacity(children.len());
        for (name, child) in children {
            let child_ino = t.inodes.ino_for(&join(path, &name));
            let (kind, meta) = match child {
                Child::Dir => (Kind::Dir, None),
                Child::File(meta) => (Kind::File, Some(meta)),
            };
            let attr = self.attr(child_ino, kind, meta.as_ref());
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
        let entries = Arc::new(entries);
        // Expired listings and misses are dropped here, at a cost proportional to the listing
        // just fetched, so neither cache outgrows what is still fresh.
        let now = Instant::now();
        t.listings.retain(|_, (_, e)| *e > now);
        t.listings.insert(ino, (Arc::clone(&entries), expires));
        t.negative
            .retain(|(parent, _), e| *parent != ino && *e > now);
        entries
    }

    /// Opens directory `ino`: lists it once; readdir then serves from the handle.
    pub async fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let entries = self.entries(ino).await?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().unwrap().insert(fh, entries);
        Ok(fh)
    }

    /// The entries of an open directory (`.` and `..` not included), as listed at opendir.
    pub fn readdir(&self, fh: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        self.dirs
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, "unknown directory handle"))
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// Opens file `ino` for reading; `write` asks for write access.
    pub async fn open(&self, ino: Ino, write: bool) -> FsResult<u64> {
        if write {
            return Err(FsError::read_only());
        }
        let meta = match self.node(ino).await? {
            (Kind::File, Some(meta)) => meta,
            _ => return Err(FsError::new(libc::EISDIR, "is a directory")),
        };
        let file = OpenFile {
            object: Arc::new(ObjectId {
                key: meta.key,
                etag: meta.etag,
            }),
            size: meta.size,
            state: Mutex::default(),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().unwrap().insert(fh, Arc::new(file));
        Ok(fh)
    }

    /// Reads from an open file.
    pub async fn read(&self, ino: Ino, fh: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        let file = self
            .files
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, "unknown file handle"))?;
        let result = self
            .cache
            .read(&file.object, file.size, &file.state, offset, len)
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
            let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
            let parent_ino = t.inodes.ino_for(parent);
            t.listings.remove(&parent_ino);
        }
    }

    /// Closes a file handle.
    pub fn release(&self, fh: u64) {
        self.files.lock().unwrap().remove(&fh);
    }
}

#[cfg(test)]
mod tests;
