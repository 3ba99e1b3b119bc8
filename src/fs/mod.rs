//! The FUSE-agnostic filesystem: names, attributes, directory and file handles over the store.
//!
//! Non-obvious problems:
//! 1. `ls -l` must not HEAD each entry: a directory listing fills the attribute cache of every
//!    child and is kept for `metadata_ttl`, so the lookups and getattrs that follow are answered
//!    from it (and readdirplus carries the attributes in the same reply).
//! 2. A lookup of an unknown name costs one HEAD and one LIST, issued concurrently (probe.rs).
//!    Misses go to a negative cache for `negative_ttl`.
//! 3. A file handle pins the ETag seen at open; every read is a GET with `If-Match`, so a replaced
//!    object gives ESTALE instead of mixed bytes.
//! 4. Listings carry no user metadata, so a file's mode, owner, mtime and symlink-ness come from
//!    a HEAD (a lookup outside a fresh listing) or from what this mount wrote; both are kept per
//!    ETag and reused by later listings of the same version. Never-HEADed objects show the
//!    mount's defaults: `ls -l` stays one LIST per 1,000 entries.
//! 5. Mutations update the cached listing of the parent in place, so `tar x` of a thousand files
//!    answers its lookups from memory instead of a HEAD + LIST per name.
//! 6. What is known about names lives in `meta::Meta`, changed only through its events; `Fs`
//!    holds it with the registry of files open for writing under one lock (`Tables`), which
//!    `writers::Writers` shares. Entries handed to the kernel (lookup, create, mkdir, symlink,
//!    readdirplus) are counted there, and FORGET frees them (see meta.rs).
//! 7. A directory's attributes as this mount last wrote them win over the store's (attrs.rs).
//! 8. A handle whose object was replaced by another client before it read a byte follows the
//!    new version (the kernel opened it on attributes up to a TTL old); once it has returned
//!    bytes of the old one, a read of a block not yet cached gives ESTALE instead of a mix.
//! 9. A name known as a file is checked again after the TTL with one HEAD, not a HEAD and a
//!    LIST (probe.rs). (A directory created elsewhere under the name of a file that still
//!    exists shows once the file is seen gone, or in the next listing.)
//! 10. `Fs` composes owners and orders their steps; it holds no state of their own: names and
//!     keys (names.rs), attributes (attrs.rs), questions to the store (probe.rs), copies
//!     (copy.rs), open handles (handles.rs), writers (writers/), deletes owed at a last close
//!     (deferred.rs) and the kernel's caches (remote.rs).

mod activity;
mod attrs;
mod copy;
pub mod deferred;
mod dir;
mod handles;
pub mod inode;
pub mod list;
pub mod meta;
mod names;
mod namespace;
mod open;
mod packed;
pub mod posix;
mod probe;
pub mod remote;
mod remount;
pub mod snapshot;
mod state;
mod walk;
mod writers;
pub mod xattr;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::cache::{BlockCache, ObjectId, ReadState};
use crate::config::FsConfig;
use crate::error::{FsError, FsResult};
use crate::store::{ObjectMeta, ObjectStore};
use crate::upload::staging::StagingDir;
use crate::upload::{UploadTuning, WriteBudget};
pub use activity::{Activity, Failure, PendingFile, SnapshotActivity, UploadActivity};
use attrs::Attrs;
use copy::Copier;
pub use dir::DirHandle;
pub use handles::OpenFile;
use handles::{Handles, Version};
pub use inode::Ino;
use list::{valid_name, Child};
use meta::{Cached, ListToken, Meta};
pub use meta::{Elsewhere, KernelNote};
use names::Names;
pub use namespace::{RenameMode, SetAttr};
pub use open::Opened;
use posix::Posix;
use probe::Prober;
pub use remote::KernelCache;
pub use state::FsState;
use writers::Writer;
pub use writers::{OpenMode, Writers};
pub use xattr::SetMode;

/// What kind of node an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// A regular file (an object).
    File,
    /// A directory (a prefix).
    Dir,
    /// A symbolic link (an object whose mode header says so; the body is the target).
    Symlink,
    /// A named pipe (an empty object whose mode header says so).
    Fifo,
    /// A Unix socket (an empty object whose mode header says so).
    Socket,
    /// A character device (an empty object with mode and `rdev` headers).
    CharDevice,
    /// A block device (an empty object with mode and `rdev` headers).
    BlockDevice,
}

impl Kind {
    /// The kind the type bits of a mode name, when they name one.
    pub fn from_type_bits(bits: u32) -> Option<Kind> {
        Some(match bits & posix::S_IFMT {
            posix::S_IFREG => Kind::File,
            posix::S_IFDIR => Kind::Dir,
            posix::S_IFLNK => Kind::Symlink,
            posix::S_IFIFO => Kind::Fifo,
            posix::S_IFSOCK => Kind::Socket,
            posix::S_IFCHR => Kind::CharDevice,
            posix::S_IFBLK => Kind::BlockDevice,
            _ => return None,
        })
    }

    /// The type bits of `st_mode` for this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => posix::S_IFREG,
            Kind::Dir => posix::S_IFDIR,
            Kind::Symlink => posix::S_IFLNK,
            Kind::Fifo => posix::S_IFIFO,
            Kind::Socket => posix::S_IFSOCK,
            Kind::CharDevice => posix::S_IFCHR,
            Kind::BlockDevice => posix::S_IFBLK,
        }
    }

    /// A FIFO, socket or device: an empty object that only names the node.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice
        )
    }
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
    /// Endpoint, bucket and prefix, naming the record of deletes owed at a last close in the
    /// staging directory (`None`: not recorded across restarts).
    pub owed_record: Option<String>,
}

/// Attributes of one node, FUSE-free.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Access time.
    pub atime: SystemTime,
    /// Status change time.
    pub ctime: SystemTime,
    /// Device number (devices only).
    pub rdev: u32,
    /// Permission bits.
    pub perm: u16,
    /// Links: 1 for a file (0 once unlinked while open), 2 for a directory (plus its
    /// subdirectories while its listing is known).
    pub nlink: u32,
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

/// What is known about names, and the files open for writing, under one lock.
#[derive(Debug)]
struct Tables {
    meta: Meta,
    /// Files open for writing, by inode: every handle on one file shares its writer.
    writers: writers::Registry,
}

impl Tables {
    /// Records that `path` now is `kind` with object `meta`, in its parent's listing too.
    fn record(&mut self, attrs: &Attrs, path: &str, kind: Kind, meta: Option<ObjectMeta>) -> Attr {
        let ino = self.meta.ino_for(path);
        let attr = attrs.of(ino, kind, meta.as_ref());
        self.meta.created(path, kind, meta, attr.clone());
        attr
    }

    /// Records what the store said of `path` in an answer asked for at `token` (not kept if
    /// the name changed since: meta.rs, 7.); returns its attributes, counted as an entry
    /// handed to the kernel when `to_kernel`.
    fn remember(
        &mut self,
        attrs: &Attrs,
        path: &str,
        kind: Kind,
        meta: Option<ObjectMeta>,
        to_kernel: bool,
        token: ListToken,
    ) -> Attr {
        let ino = self.meta.ino_for(path);
        let attr = attrs.of(ino, kind, meta.as_ref());
        self.meta.seen_since(ino, kind, meta, token);
        if to_kernel {
            self.meta.looked_up_ino(ino);
        }
        attr
    }

    /// Records listed children (inode numbers, attributes) of a listing started at `token`
    /// and returns them as entries.
    fn register_children(
        &mut self,
        attrs: &Attrs,
        deferred: &deferred::Deferred,
        path: &str,
        children: impl IntoIterator<Item = (String, Child)>,
        token: ListToken,
    ) -> Vec<DirEntry> {
        // Fenced once per page: every child's directory is this one (meta.rs, 7.).
        let fenced = self
            .meta
            .ino(path)
            .is_some_and(|dir| self.meta.changed_after(dir, token));
        let mut entries = Vec::new();
        for (name, child) in children {
            if let Child::File(meta) = &child {
                if deferred.hides(&meta.key, &meta.etag) {
                    continue;
                }
            }
            let child_path = join(path, &name);
            let child_ino = self.meta.ino_for(&child_path);
            let (kind, meta) = match child {
                // A directory keeps the marker headers it was seen with.
                Child::Dir => (Kind::Dir, self.meta.known_marker(child_ino)),
                Child::DirObject(meta) => (Kind::Dir, Some(meta)),
                Child::File(mut meta) => {
                    // Headers read earlier for this very version still hold.
                    let known = self
                        .meta
                        .headers_of_version(child_ino, &meta.key, &meta.etag);
                    if known.is_some() {
                        meta.metadata = known;
                    }
                    (object_kind(&meta), Some(meta))
                }
            };
            let attr = match self.writers.get(child_ino) {
                Some(writer) => writer.attr(attrs),
                None => attrs.of(child_ino, kind, meta.as_ref()),
            };
            if !fenced {
                self.meta.seen_ino(child_ino, kind, meta);
            }
            entries.push(DirEntry { name, attr });
        }
        entries
    }

    /// Caches the complete, sorted listing `entries` of `ino` (started at `token`) with the
    /// files being written in it added; returns those added files.
    fn cache_listing(
        &mut self,
        attrs: &Attrs,
        ino: Ino,
        path: &str,
        token: ListToken,
        mut entries: Vec<DirEntry>,
        saved_at: Option<std::time::SystemTime>,
    ) -> Vec<DirEntry> {
        // Files created here and not yet committed are not in the bucket yet, but they exist.
        let pending: Vec<(String, Attr)> = self
            .writers
            .pending_in(path)
            .into_iter()
            .map(|(name, w)| (name, w.attr(attrs)))
            .collect();
        let mut added = Vec::new();
        for (name, attr) in pending {
            if let Err(i) = entries.binary_search_by(|e| e.name.as_str().cmp(&name)) {
                let entry = DirEntry { name, attr };
                added.push(entry.clone());
                entries.insert(i, entry);
            }
        }
        match saved_at {
            Some(listed_at) => self
                .meta
                .listed_from_snapshot(ino, token, entries, listed_at),
            None => self.meta.listed(ino, token, entries),
        };
        added
    }
}

/// The filesystem.
#[derive(Debug)]
pub struct Fs {
    store: Arc<dyn ObjectStore>,
    cache: Arc<BlockCache>,
    config: FsConfig,
    writes: Writes,
    /// Paths to keys.
    names: Names,
    /// Attributes shown, and what this mount wrote to directories (see 7.).
    attrs: Arc<Attrs>,
    /// Server-side copies.
    copier: Copier,
    /// What a name is in the bucket (lookups outside the cache).
    prober: Prober,
    tables: Arc<Mutex<Tables>>,
    /// The files open for writing.
    writers: Writers,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    /// Directories listed again for lookups, one listing each at a time (dir.rs, 6.).
    refreshing: Mutex<HashMap<Ino, Arc<tokio::sync::Mutex<()>>>>,
    /// Subtrees being listed flat for a recursive walk (walk.rs).
    walks: Mutex<Vec<Arc<walk::Walk>>>,
    /// Open files.
    handles: Arc<Handles>,
    /// Set at shutdown: no new changes are accepted.
    stopping: std::sync::atomic::AtomicBool,
    /// The kernel's caches, told of changes made elsewhere, and the TTL they are given.
    kernel: remote::Kernel,
    /// The version each file was last opened at, for the kernel's page cache (see open.rs).
    opened: Mutex<lru::LruCache<Ino, String>>,
    /// The kernel reads whole cached files directly (FUSE passthrough).
    passthrough: std::sync::atomic::AtomicBool,
    /// Deletes of unlinked files that wait for their last close.
    deferred: Arc<deferred::Deferred>,
    /// The metadata snapshot, when kept (remount.rs).
    saved: std::sync::OnceLock<remount::Saved>,
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
pub(crate) fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// Deletes `key` if it still holds version `etag` (one HEAD first), never a version written
/// under the name since; a key already gone is fine.
async fn delete_version(
    store: &dyn ObjectStore,
    key: &str,
    etag: &str,
) -> Result<(), crate::store::StoreError> {
    match store.head_object(key).await? {
        Some(meta) if same_etag(&meta.etag, etag) => store.delete_object(key).await,
        _ => Ok(()),
    }
}

/// What an object is, from its mode header: a file unless the type bits name a symlink or
/// a special file (a directory's mode on a plain object is not believed).
fn object_kind(meta: &ObjectMeta) -> Kind {
    if list::is_dir_object(meta) {
        return Kind::Dir;
    }
    match posix_of(Some(meta))
        .type_bits()
        .and_then(Kind::from_type_bits)
    {
        Some(Kind::Dir) | None => Kind::File,
        Some(kind) => kind,
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
        let meta = Meta::new(config.metadata_ttl, config.negative_ttl)
            .with_key_prefix(&config.prefix)
            .with_memory(config.metadata_memory);
        let record = writes
            .owed_record
            .clone()
            .map(|source| deferred::DeleteRecord {
                staging: Arc::clone(&writes.staging),
                source,
            });
        let kernel = remote::Kernel::new(config.metadata_ttl);
        let names = Names::new(&config.prefix, &config.content_type_default);
        let copier = Copier::new(
            Arc::clone(&store),
            names.clone(),
            config.copy_limit,
            writes.tasks.clone(),
        );
        let tables = Arc::new(Mutex::new(Tables {
            meta,
            writers: Default::default(),
        }));
        let attrs = Arc::new(Attrs::new(&config));
        let deferred = Arc::new(deferred::Deferred::new(record));
        let handles = Arc::new(Handles::default());
        let writers = Writers::new(writers::WriterDeps {
            store: Arc::clone(&store),
            cache: Arc::clone(&cache),
            writes: writes.clone(),
            names: names.clone(),
            attrs: Arc::clone(&attrs),
            copier: copier.clone(),
            tables: Arc::clone(&tables),
            deferred: Arc::clone(&deferred),
            handles: Arc::clone(&handles),
        });
        let prober = Prober::new(Arc::clone(&store), names.clone(), Arc::clone(&deferred));
        Self {
            store,
            cache,
            prober,
            names,
            attrs,
            copier,
            config,
            writes,
            tables,
            writers,
            dirs: Mutex::default(),
            refreshing: Mutex::default(),
            walks: Mutex::default(),
            handles,
            stopping: Default::default(),
            kernel,
            opened: Mutex::new(lru::LruCache::new(open::VERSIONS_KEPT)),
            passthrough: Default::default(),
            deferred,
            saved: std::sync::OnceLock::new(),
        }
    }

    /// Deletes what an earlier run of this mount owed at a last close (see deferred.rs).
    pub async fn settle_earlier_deletes(&self) {
        self.deferred.settle_earlier(self.store.as_ref()).await;
    }

    /// The files open for writing: writes, flushes and fsyncs go straight to them.
    pub fn writers(&self) -> &Writers {
        &self.writers
    }

    /// Background tasks (aborts) that must finish before the process exits.
    pub fn tasks(&self) -> &tokio_util::task::TaskTracker {
        &self.writes.tasks
    }

    /// The configuration in force.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    fn path_of(&self, ino: Ino) -> FsResult<Arc<str>> {
        self.tables
            .lock()
            .meta
            .path(ino)
            .ok_or_else(|| FsError::new(libc::ESTALE, format!("unknown inode {}", ino.0)))
    }

    /// The attributes a listing entry shows now (a directory's own changes applied).
    pub fn listed_attr(&self, attr: &Attr) -> Attr {
        self.attrs.listed(attr)
    }

    /// Attributes of the root directory.
    pub fn root_attr(&self) -> Attr {
        self.attrs.of(Ino::ROOT, Kind::Dir, None)
    }

    /// Looks up `name` in directory `parent` for the kernel: the entry is counted until the
    /// kernel forgets it.
    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        self.find(parent, name, true).await
    }

    /// Keeps metadata within its bound (meta.rs, 9.): checks four times a second while `fs`
    /// lives, so lookups pay nothing for it. Once `TRIM_AFTER` bytes of metadata are freed
    /// (the kernel forgot a tree), the allocator gives its free pages back to the system, so
    /// what is forgotten leaves the RSS too.
    pub async fn hold_memory_bound(fs: std::sync::Weak<Fs>) {
        const TRIM_AFTER: usize = 8 << 20;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut high = 0;
        loop {
            tick.tick().await;
            let Some(fs) = fs.upgrade() else {
                return;
            };
            let (notes, bytes) = {
                let mut t = fs.tables.lock();
                let notes = t.meta.shed();
                (notes, t.meta.estimated_bytes())
            };
            fs.kernel.tell(notes);
            high = bytes.max(high);
            if high - bytes >= TRIM_AFTER {
                high = bytes;
                // SAFETY: malloc_trim only returns free memory to the kernel.
                #[cfg(target_env = "gnu")]
                let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            }
        }
    }

    /// Looks up `name` in `parent`; `to_kernel` counts the entry handed out.
    async fn find(&self, parent: Ino, name: &str, to_kernel: bool) -> FsResult<Attr> {
        names::check_length(name)?;
        if !valid_name(name) {
            return Err(FsError::not_found());
        }
        let parent_path = self.path_of(parent)?;
        let path = join(&parent_path, name);
        self.names.check_key_length(&path, 0)?;
        let (mut refreshed, mut loaded) = (false, false);
        loop {
            let stale = {
                let mut t = self.tables.lock();
                let writer = t.meta.ino(&path).and_then(|ino| t.writers.get(ino));
                let cached = match writer {
                    Some(writer) => Cached::Entry(self.writers.attr(writer)),
                    None => t.meta.cached_child(parent, name),
                };
                match cached {
                    Cached::Entry(mut attr) => {
                        if attr.kind == Kind::Dir {
                            self.attrs.overlay(&mut attr);
                            attr.nlink += t.meta.subdirs(attr.ino).unwrap_or(0);
                        }
                        if to_kernel {
                            attr.ino = t.meta.looked_up(&path);
                            t.meta.gave_entries(parent);
                        }
                        return Ok(attr);
                    }
                    Cached::Missing => return Err(FsError::not_found()),
                    Cached::Unknown => {}
                }
                // An expired complete listing: list the directory again rather than ask
                // about this one name (dir.rs, 6.).
                !refreshed && t.meta.stale_listing(parent, dir::REFRESHED)
            };
            // After a remount, the directory's saved listing answers (remount.rs).
            if !loaded {
                loaded = true;
                if self.load_saved(parent).await {
                    continue;
                }
            }
            if stale && self.refresh_listing(parent).await {
                refreshed = true;
                continue;
            }
            break;
        }
        let (token, known) = {
            let t = self.tables.lock();
            (t.meta.fill_started(), t.meta.known(&path))
        };
        match self.prober.probe(&path, known).await? {
            Some((kind, meta)) => {
                let mut t = self.tables.lock();
                let attr = t.remember(&self.attrs, &path, kind, meta, to_kernel, token);
                if to_kernel {
                    t.meta.gave_entries(parent);
                }
                Ok(attr)
            }
            None => {
                self.tables.lock().meta.missed_since(parent, name, token);
                Err(FsError::not_found())
            }
        }
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.tables.lock().meta.forget(ino, n);
    }

    /// The entries of a readdirplus reply went to the kernel, each under the number its
    /// listing gave it (`sent`: numbers and positions in directory handle `fh` of `dir`):
    /// counted under one hold of the lock. A number freed since is counted by its path again.
    pub fn entries_to_kernel(&self, dir: Ino, fh: u64, sent: &[(Ino, usize)]) {
        let mut t = self.tables.lock();
        for (ino, position) in sent {
            if t.meta.looked_up_ino(*ino) {
                continue;
            }
            let (Some(dir_path), Ok(handle)) = (t.meta.path(dir), self.dir_handle(fh)) else {
                continue;
            };
            handle.visit(*position, |_, entry| {
                t.meta.looked_up(&join(&dir_path, &entry.name));
                true
            });
        }
        if !sent.is_empty() {
            t.meta.gave_entries(dir);
        }
    }

    /// Kind and object metadata of `ino`, from the cache while fresh, else from the store.
    async fn node(&self, ino: Ino) -> FsResult<(Kind, Option<ObjectMeta>)> {
        if ino == Ino::ROOT {
            return Ok((Kind::Dir, None));
        }
        let path = {
            let t = self.tables.lock();
            if let Some(node) = t.meta.fresh_node(ino) {
                return Ok(node);
            }
            t.meta.path(ino)
        };
        let path = path.ok_or_else(|| FsError::new(libc::ESTALE, "unknown inode"))?;
        let (token, known) = {
            let t = self.tables.lock();
            (t.meta.fill_started(), t.meta.known(&path))
        };
        let probed = self.prober.probe(&path, known).await?;
        let (kind, meta) = probed.ok_or_else(FsError::not_found)?;
        self.tables
            .lock()
            .remember(&self.attrs, &path, kind, meta.clone(), false, token);
        Ok((kind, meta))
    }

    /// Attributes of `ino`, from the cache while fresh, else from the store.
    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        if let Some(writer) = self.writers.of(ino) {
            return Ok(self.writers.attr(&writer));
        }
        if let Some(attr) = self.deferred.attr(ino) {
            return Ok(attr);
        }
        let (kind, meta) = self.node(ino).await?;
        let mut attr = self.attrs.of(ino, kind, meta.as_ref());
        if kind == Kind::Dir {
            let subdirs = self.tables.lock().meta.subdirs(ino);
            attr.nlink += subdirs.unwrap_or(0);
        }
        Ok(attr)
    }

    /// A read served at once from the disk cache, without the runtime (see
    /// `BlockCache::read_on_disk`); None sends it down the ordinary path (`read`).
    pub fn read_now<R>(
        &self,
        ino: Ino,
        fh: u64,
        (offset, len): (u64, u32),
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let file = self.handles.get(fh).ok()?;
        if file.writer.is_some() || self.writers.of(ino).is_some() {
            return None;
        }
        let version = file.version.lock().clone();
        let object = version.object?;
        let value =
            self.cache
                .read_on_disk(&object, version.size, &file.state, (offset, len), f)?;
        file.served.store(true, Ordering::SeqCst);
        Some(value)
    }

    /// Reads from an open file: a file being changed in place is read from its staging copy.
    pub async fn read(&self, ino: Ino, fh: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        let file = self.handles.get(fh)?;
        let own = file.writer.clone();
        if let Some(writer) = own.or_else(|| self.writers.of(ino)) {
            let mine = file.writer.is_some();
            if let Some(bytes) = self
                .writers
                .read(&writer, &file.state, mine, offset, len)
                .await?
            {
                return Ok(bytes);
            }
        }
        let mut followed = false;
        loop {
            let version = file.version.lock().clone();
            let Some(object) = version.object.clone() else {
                return Ok(Bytes::new());
            };
            match self
                .cache
                .read(&object, version.size, &file.state, offset, len)
                .await
            {
                Ok(bytes) => {
                    file.served.store(true, Ordering::SeqCst);
                    return Ok(bytes);
                }
                // Set aside for this handle meanwhile (namespace.rs, 4.): read it there.
                Err(e) if e.errno == libc::ESTALE && !file.version.lock().same_as(&version) => {}
                Err(e) if e.errno == libc::ESTALE => {
                    // The object changed: its attributes and its parent's listing (which
                    // holds the old ETag) go, so the next lookup and open see the new version.
                    {
                        let mut t = self.tables.lock();
                        if let Some(path) = t.meta.path(ino) {
                            t.meta.stale(&path);
                        }
                    }
                    if followed || file.served.load(Ordering::SeqCst) || !self.follow(&file).await {
                        return Err(e);
                    }
                    followed = true;
                }
                Err(e) if e.errno == libc::EACCES && file.refused.swap(true, Ordering::SeqCst) => {
                    return Err(e.quiet())
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Points a handle that has read nothing yet at the object's current version; false when
    /// there is none (gone, or no longer a file).
    async fn follow(&self, file: &OpenFile) -> bool {
        match self.node(file.ino).await {
            Ok((Kind::File, Some(meta))) => {
                tracing::debug!(key = %meta.key, "replaced before the first read: following it");
                *file.version.lock() = Version {
                    object: Some(Arc::new(ObjectId {
                        key: meta.key,
                        etag: meta.etag,
                    })),
                    size: meta.size,
                };
                *file.state.lock() = ReadState::default();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
