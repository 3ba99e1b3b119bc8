//! The disk tier of the block cache (`--disk-cache DIR`): blocks read from S3 are also kept in
//! files that outlive the mount, keyed by (endpoint, bucket, key, ETag, block size), so a
//! changed object never serves old bytes. Everything here is blocking file I/O: callers run it
//! on tokio's blocking pool, never on a FUSE thread or while holding the block cache's lock.
//!
//! Layout: `DIR/v2/HH/HASH.data` holds one object version at its own offsets (a sparse file of
//! the object's size) and `HASH.sums` a header naming that version, then one slot per block: a
//! "present" mark and the CRC-32 of each 4 KiB chunk of the block. HASH is SHA-256 of the
//! identity. (`v1`, one CRC per block, is deleted in the background at start.)
//!
//! Non-obvious problems:
//! 1. Nothing may ever serve wrong bytes: a block is written before its slot, and every block
//!    read is checked against its slot's checksum, so a flipped bit, a truncated file, a kill -9
//!    between the two writes or a power loss that kept one and not the other is a miss (the
//!    slot is cleared and the block fetched again), never bad data.
//! 2. Two mounts may share a directory: both write the same bytes at the same offsets and the
//!    same header, so concurrent writers agree; a file one mount deletes while the other holds
//!    it open only wastes the other's writes. The checksums cover the rest.
//! 3. The size bound counts blocks on disk (`st_blocks`), found by a scan of the directory. A
//!    mount does not scan before it is live: the first insert scans (on the blocking pool),
//!    later inserts add to an estimate and scan again when it would pass the bound or when an
//!    eighth of the bound was written since (to see what other mounts added). Eviction removes
//!    whole objects, least recently used first (a sums file's mtime is its last use), down to
//!    nine tenths of the bound; an object larger than the bound evicts its own lowest blocks
//!    (punched out of the data file), which a sequential reader has read already. Soon
//!    after the mount is live, a thread scans once and evicts down to the bound if the
//!    directory is over it (a lowered bound, another mount's inserts), without waiting for
//!    an insert.
//! 4. A full disk (or any write error) pauses inserts for a while; reads go on from S3.
//! 5. An object whose blocks are all present can be handed to the kernel (FUSE passthrough);
//!    it is checked whole first, once while this mount keeps the file open. A file handed out
//!    is never punched by this mount, only unlinked, so the kernel's reads of it stay right.
//! 6. A small read checks only the chunks it touches: a random 4 KiB read costs one 4 KiB
//!    read of the data file (from the page cache once warm) and one CRC of it, not a block's
//!    worth, so the daemon serves it about as fast as a FUSE round trip allows.
//! 7. DIR and DIR/v2 are the daemon's own (`owned_dir`: made 0700, or owned by its user and
//!    not writable by group or others, not a symlink), so no other user can plant a name
//!    below them; files are opened with `O_NOFOLLOW` all the same. Shared between mounts of
//!    one user only.
//! 8. Blocks fetched for a reader are written behind it, so the blocks waiting for the disk are
//!    memory: when readers outrun the disk (four streams on loopback), that backlog grew to
//!    700 MiB of resident memory. It is bounded (`BACKLOG`): a fetch whose blocks would pass
//!    it waits for the disk to catch up (`reserve_backlog`), as the kernel throttles a writer
//!    of dirty pages, so everything read is kept: readers slow to the disk's speed when the
//!    disk is the slower one (seq-read-1 on this machine: 303 -> 235 MiB/s). That is for a
//!    directory asked for with `--disk-cache`. The default one keeps what the disk can take
//!    and never slows a reader: past the bound, blocks are not written. A paused cache (a
//!    full disk) writes nothing and so never holds a reader.

use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::num::NonZeroUsize;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lru::LruCache;
use sha2::{Digest, Sha256};

use super::ObjectId;
use crate::config::DiskCacheConfig;
use crate::owned_dir::OwnedDir;

/// The directory of this layout; a change of format gets a new one.
const LAYOUT: &str = "v2";

/// Directories of earlier layouts, deleted in the background when a cache opens.
const OLD_LAYOUTS: &[&str] = &["v1"];

/// Marks the files of this layout.
const MAGIC: &[u8; 8] = b"BFSDC002";

/// A slot's "present" mark: any other value (zeros after a crash) means not cached.
const PRESENT: u32 = 0x0B10_C4ED;

/// Bytes one checksum covers: a page, the size of the smallest reads.
const CHUNK: u64 = 4096;

/// Slots and the header are padded to this.
const ALIGN: usize = 8;

/// Open object files kept per mount: enough for many readers, few enough for the fd limit.
const OPEN_FILES: usize = 128;

/// How long a failed write (a full disk) stops inserts before they are tried again.
const WRITE_PAUSE: Duration = Duration::from_secs(30);

/// Bytes of fetched blocks that may wait to be written to disk (see 8.).
pub const BACKLOG: u64 = 64 << 20;

/// The backlog is counted in these.
const BACKLOG_UNIT: u64 = 64 << 10;

/// A sums file's mtime is moved on a hit at most this often: recency needs no more precision.
const TOUCH_EVERY: Duration = Duration::from_secs(10);

/// The disk cache of one mount.
#[derive(Debug)]
pub struct DiskCache {
    root: PathBuf,
    limit: u64,
    block_size: u64,
    passthrough: bool,
    /// Endpoint and bucket: part of every identity.
    namespace: String,
    state: Mutex<State>,
    /// Held by one insert at a time, so that two do not scan and evict at once.
    insert: Mutex<()>,
    /// Set once a write failed with "no space" or similar, until `paused_until`.
    warned: AtomicBool,
    /// Room for blocks waiting to be written, in `BACKLOG_UNIT`s (see 8.).
    backlog: Arc<tokio::sync::Semaphore>,
    /// The default directory: keep what the disk can take, never slow a reader (see 8.).
    opportunistic: bool,
}

/// A claim on the write backlog (see 8.), given back when dropped.
pub type Backlog = tokio::sync::OwnedSemaphorePermit;

impl DiskCache {
    /// Claims room for `bytes` waiting to be written (see 8.): waiting while the backlog is
    /// full for a directory asked for, none at once (do not write) for the default one. More
    /// than the whole backlog claims all of it.
    pub async fn reserve_backlog(&self, bytes: u64) -> Option<Backlog> {
        let units = bytes
            .div_ceil(BACKLOG_UNIT)
            .clamp(1, BACKLOG / BACKLOG_UNIT);
        let units = u32::try_from(units).ok()?;
        let room = Arc::clone(&self.backlog);
        if self.opportunistic {
            return room.try_acquire_many_owned(units).ok();
        }
        room.acquire_many_owned(units).await.ok()
    }
}

#[derive(Debug)]
struct State {
    /// Bytes on disk as of the last scan plus what was inserted since; None before a scan.
    estimate: Option<u64>,
    since_scan: u64,
    paused_until: Option<Instant>,
    open: LruCache<String, Arc<Entry>>,
}

/// The open files of one object version.
#[derive(Debug)]
struct Entry {
    hash: String,
    data: File,
    sums: File,
    header: u64,
    blocks: u64,
    size: u64,
    block_size: u64,
    /// Bytes of one block's slot in the sums file.
    slot_len: u64,
    /// Seconds since the epoch of the last mtime update of the sums file.
    touched: AtomicU64,
    /// Handed to the kernel for passthrough: never punch its blocks.
    lent: AtomicBool,
}

/// Buffers of one read from disk.
#[derive(Debug, Default)]
struct Scratch {
    sums: Vec<u8>,
    data: Vec<u8>,
}

/// Why bytes were not served from disk.
enum Miss {
    /// A block they need is not cached.
    Absent,
    /// Block `.0` failed a checksum (or its data file is short).
    Corrupt(u64),
}

/// One cached object found by a scan.
struct Found {
    hash: String,
    dir: PathBuf,
    bytes: u64,
    used: SystemTime,
}

impl DiskCache {
    /// Opens (creating) the cache directory; fails with a message naming it when it cannot be
    /// written.
    pub fn open(config: &DiskCacheConfig, namespace: &str, block_size: u64) -> io::Result<Self> {
        // The directory and its layout directory are the daemon's own (7.); nothing below
        // them can be planted by another user.
        let owned = OwnedDir::open_or_create(&config.dir)?.subdir(LAYOUT)?;
        owned.unnamed_file()?;
        let root = owned.path().to_path_buf();
        let old: Vec<PathBuf> = OLD_LAYOUTS
            .iter()
            .map(|v| config.dir.join(v))
            .filter(|d| d.exists())
            .collect();
        if !old.is_empty() {
            // Whatever its size, deleting it must not delay the mount.
            let spawned = std::thread::Builder::new()
                .name("bucketfs-cache-cleanup".into())
                .spawn(move || {
                    for dir in old {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                });
            if let Err(e) = spawned {
                tracing::debug!("disk cache: old layouts left in place: {e}");
            }
        }
        Ok(Self {
            root,
            limit: config.size,
            block_size,
            passthrough: config.passthrough,
            namespace: namespace.to_owned(),
            state: Mutex::new(State {
                estimate: None,
                since_scan: 0,
                paused_until: None,
                open: LruCache::new(NonZeroUsize::new(OPEN_FILES).unwrap_or(NonZeroUsize::MIN)),
            }),
            insert: Mutex::new(()),
            warned: AtomicBool::new(false),
            backlog: Arc::new(tokio::sync::Semaphore::new(
                (BACKLOG / BACKLOG_UNIT) as usize,
            )),
            opportunistic: config.by_default,
        })
    }

    /// Bytes the cache may hold.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// True when whole cached files may be handed to the kernel (FUSE passthrough).
    pub fn passthrough(&self) -> bool {
        self.passthrough
    }

    /// Block `index` of `object` (of `size` bytes), if cached and intact.
    pub fn read_block(&self, object: &ObjectId, size: u64, index: u64) -> Option<Bytes> {
        let start = index.checked_mul(self.block_size)?;
        self.read_range(object, size, start..size.min(start + self.block_size))
    }

    /// The bytes `range` of `object` (of `size` bytes), if every block they touch is cached
    /// and the chunks they touch are intact.
    pub fn read_range(
        &self,
        object: &ObjectId,
        size: u64,
        range: std::ops::Range<u64>,
    ) -> Option<Bytes> {
        let entry = self.entry(object, size, false)?;
        let bytes = self.verified(&entry, object, range)?;
        entry.touch();
        Some(bytes)
    }

    /// `f` of the bytes `range` of `object`, if every block they touch is cached and the
    /// chunks they touch are intact; read into buffers of this thread, so a small random
    /// read allocates nothing (see 6.).
    pub fn read_range_with<R>(
        &self,
        object: &ObjectId,
        size: u64,
        range: std::ops::Range<u64>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Scratch> = Default::default();
        }
        let entry = self.entry(object, size, false)?;
        let result = SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return Err(Miss::Absent);
            };
            let at = entry.read_verified_into(range, &mut scratch)?;
            Ok(f(&scratch.data[at]))
        });
        let result = self.judged(&entry, object, result)?;
        entry.touch();
        Some(result)
    }

    /// The bytes `range` of `entry` when present and intact.
    fn verified(
        &self,
        entry: &Entry,
        object: &ObjectId,
        range: std::ops::Range<u64>,
    ) -> Option<Bytes> {
        let mut scratch = Scratch::default();
        let result = entry
            .read_verified_into(range, &mut scratch)
            .map(|at| Bytes::from(scratch.data).slice(at));
        self.judged(entry, object, result)
    }

    /// The value of a read from disk; a block that failed a checksum is dropped (its slot
    /// cleared) and logged.
    fn judged<T>(&self, entry: &Entry, object: &ObjectId, result: Result<T, Miss>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(Miss::Absent) => None,
            Err(Miss::Corrupt(index)) => {
                tracing::warn!(
                    key = %object.key,
                    block = index,
                    "disk cache: a block failed its checksum; fetching it again"
                );
                entry.clear(index);
                None
            }
        }
    }

    /// Which of `blocks` are marked present (not yet verified: `read_range` does that).
    pub fn present(&self, object: &ObjectId, size: u64, blocks: std::ops::Range<u64>) -> bool {
        match self.entry(object, size, false) {
            Some(entry) => blocks.into_iter().all(|i| entry.present(i)),
            None => false,
        }
    }

    /// Stores block `index` of `object`; quietly does nothing when the cache is paused, full
    /// beyond repair or failing.
    pub fn write_block(&self, object: &ObjectId, size: u64, index: u64, data: &[u8]) {
        if self.paused() {
            return;
        }
        let _one = self.insert.lock();
        let Some(entry) = self.entry(object, size, true) else {
            return;
        };
        if entry.present(index) {
            return;
        }
        if !self.make_room(data.len() as u64, &entry) {
            return;
        }
        let result = entry
            .data
            .write_all_at(data, index * self.block_size)
            .and_then(|()| entry.mark(index, data));
        match result {
            Ok(()) => {
                self.warned.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                entry.clear(index);
                self.pause(&e);
            }
        }
    }

    /// The data file of `object` when every block is cached and verified: what the kernel can
    /// read directly (passthrough). The entry is marked lent: its blocks are never punched.
    pub fn whole(&self, object: &ObjectId, size: u64) -> Option<File> {
        let entry = self.entry(object, size, false)?;
        // Checked once while this mount keeps the file open (see 5.).
        if !entry.lent.load(Ordering::Relaxed) {
            for index in 0..entry.blocks {
                let start = index * self.block_size;
                self.verified(&entry, object, start..size.min(start + self.block_size))?;
            }
            entry.lent.store(true, Ordering::Relaxed);
        }
        entry.touch();
        entry.data.try_clone().ok()
    }

    fn paused(&self) -> bool {
        let mut state = self.lock();
        match state.paused_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                state.paused_until = None;
                false
            }
            None => false,
        }
    }

    fn pause(&self, e: &io::Error) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dir = %self.root.display(),
                "disk cache: cannot write ({e}); reading from S3 without caching for {}s",
                WRITE_PAUSE.as_secs()
            );
        }
        self.lock().paused_until = Some(Instant::now() + WRITE_PAUSE);
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The identity hash of `object` and the directory its files go in.
    fn locate(&self, object: &ObjectId) -> (String, PathBuf) {
        let mut hasher = Sha256::new();
        for part in [
            self.namespace.as_bytes(),
            object.key.as_bytes(),
            object.etag.as_bytes(),
            &self.block_size.to_le_bytes(),
        ] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hash = String::with_capacity(32);
        for b in hasher.finalize().iter().take(16) {
            hash.push(char::from(HEX[usize::from(b >> 4)]));
            hash.push(char::from(HEX[usize::from(b & 15)]));
        }
        let dir = self.root.join(&hash[..2]);
        (hash, dir)
    }

    /// The open files of `object`, opened (and with `create`, created) when not yet open.
    fn entry(&self, object: &ObjectId, size: u64, create: bool) -> Option<Arc<Entry>> {
        let (hash, dir) = self.locate(object);
        if let Some(entry) = self.lock().open.get(&hash) {
            if entry.size == size {
                return Some(Arc::clone(entry));
            }
        }
        let header = self.header(object, size);
        let entry = match Entry::open(&dir, &hash, &header, size, self.block_size, create) {
            Ok(entry) => Arc::new(entry),
            Err(e) if e.kind() == ErrorKind::NotFound && !create => return None,
            Err(e) => {
                if create {
                    self.pause(&e);
                }
                return None;
            }
        };
        self.lock().open.put(hash, Arc::clone(&entry));
        Some(entry)
    }

    /// The sums file's header: the format, the block size and the identity.
    fn header(&self, object: &ObjectId, size: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(64 + object.key.len());
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&self.block_size.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        for part in [
            self.namespace.as_bytes(),
            object.key.as_bytes(),
            object.etag.as_bytes(),
        ] {
            h.extend_from_slice(&(part.len() as u64).to_le_bytes());
            h.extend_from_slice(part);
        }
        h.resize(h.len().next_multiple_of(ALIGN), 0);
        h
    }

    /// Makes room for `need` more bytes; false when they cannot fit at all.
    fn make_room(&self, need: u64, current: &Entry) -> bool {
        if need > self.limit {
            return false;
        }
        {
            let mut state = self.lock();
            if let Some(estimate) = state.estimate {
                if estimate + need <= self.limit && state.since_scan + need <= self.limit / 8 {
                    state.estimate = Some(estimate + need);
                    state.since_scan += need;
                    return true;
                }
            }
        }
        let found = self.scan();
        let mut total: u64 = found.iter().map(|f| f.bytes).sum();
        if total + need > self.limit {
            let target = (self.limit - self.limit / 10).max(need);
            total = self
                .evict(found, total + need, target, Some(&current.hash))
                .saturating_sub(need);
            let mut index = 0;
            while total + need > target && index < current.blocks {
                if !current.lent.load(Ordering::Relaxed) && current.present(index) {
                    current.clear(index);
                    if current.punch(index).is_ok() {
                        total = total.saturating_sub(self.block_size);
                    }
                }
                index += 1;
            }
        }
        let fits = total + need <= self.limit;
        let mut state = self.lock();
        state.estimate = Some(if fits { total + need } else { total });
        state.since_scan = 0;
        fits
    }

    /// Removes objects of `found`, least recently used first (never `keep`), until `total`
    /// (what they hold plus what is about to be added) is at most `target`; returns the new
    /// total.
    fn evict(&self, mut found: Vec<Found>, mut total: u64, target: u64, keep: Option<&str>) -> u64 {
        found.sort_by_key(|f| f.used);
        for f in &found {
            if total <= target {
                break;
            }
            if Some(f.hash.as_str()) == keep {
                continue;
            }
            if self.remove(f) {
                total = total.saturating_sub(f.bytes);
            }
        }
        total
    }

    /// Brings a directory found over the bound (a lowered `--disk-cache-size`, or another
    /// mount filling a shared directory) under it, on a thread of its own so the mount is not
    /// delayed (3.).
    pub fn trim_in_background(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("bucketfs-cache-trim".into())
            .spawn(move || {
                let _one = this.insert.lock();
                let found = this.scan();
                let total: u64 = found.iter().map(|f| f.bytes).sum();
                let now = if total > this.limit {
                    let target = this.limit - this.limit / 10;
                    let now = this.evict(found, total, target, None);
                    tracing::info!(
                        dir = %this.root.display(),
                        "disk cache: {total} bytes found over the bound of {}; {now} kept",
                        this.limit
                    );
                    now
                } else {
                    total
                };
                let mut state = this.lock();
                state.estimate = Some(now);
                state.since_scan = 0;
            });
        if let Err(e) = spawned {
            tracing::debug!("disk cache: not trimmed at start: {e}");
        }
    }

    /// Every cached object in the directory, with its size on disk and its last use.
    fn scan(&self) -> Vec<Found> {
        let mut found = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return found;
        };
        for dir in dirs.flatten() {
            let dir = dir.path();
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let Some(hash) = name.to_str().and_then(|n| n.strip_suffix(".sums")) else {
                    continue;
                };
                let Ok(meta) = file.metadata() else {
                    continue;
                };
                let data = std::fs::metadata(dir.join(format!("{hash}.data")))
                    .map(|m| m.blocks() * 512)
                    .unwrap_or(0);
                found.push(Found {
                    hash: hash.to_owned(),
                    dir: dir.clone(),
                    bytes: meta.blocks() * 512 + data,
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        found
    }

    /// Deletes one cached object (sums first, so a reader never trusts a half-deleted pair).
    fn remove(&self, found: &Found) -> bool {
        self.lock().open.pop(&found.hash);
        let sums = std::fs::remove_file(found.dir.join(format!("{}.sums", found.hash)));
        let data = std::fs::remove_file(found.dir.join(format!("{}.data", found.hash)));
        sums.is_ok() || data.is_ok()
    }
}

impl Entry {
    /// Opens the pair of files for one object version, writing the header when the sums file
    /// is new; a sums file of another version or format (a hash collision, a half-written
    /// header) is started over.
    fn open(
        dir: &Path,
        hash: &str,
        header: &[u8],
        size: u64,
        block_size: u64,
        create: bool,
    ) -> io::Result<Self> {
        if create {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let open = |name: String| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(dir.join(name))
        };
        let sums = open(format!("{hash}.sums"))?;
        let mut have = vec![0u8; header.len()];
        let intact = sums.read_exact_at(&mut have, 0).is_ok() && have == header;
        let blocks = size.div_ceil(block_size);
        let slot_len = slot_len(block_size);
        if !intact {
            if !create {
                return Err(io::Error::new(ErrorKind::NotFound, "no intact header"));
            }
            sums.set_len(0)?;
            sums.set_len(header.len() as u64 + blocks * slot_len)?;
            sums.write_all_at(header, 0)?;
        }
        let data = open(format!("{hash}.data"))?;
        if data.metadata()?.len() != size {
            data.set_len(size)?;
        }
        Ok(Self {
            hash: hash.to_owned(),
            data,
            sums,
            header: header.len() as u64,
            blocks,
            size,
            block_size,
            slot_len,
            touched: AtomicU64::new(0),
            lent: AtomicBool::new(false),
        })
    }

    /// Where block `index`'s slot starts in the sums file.
    fn slot_at(&self, index: u64) -> u64 {
        self.header + index * self.slot_len
    }

    /// True when block `index`'s slot says present (its bytes not yet checked).
    fn present(&self, index: u64) -> bool {
        let mut mark = [0u8; 4];
        index < self.blocks
            && self
                .sums
                .read_exact_at(&mut mark, self.slot_at(index))
                .is_ok()
            && u32::from_le_bytes(mark) == PRESENT
    }

    /// The checksums of chunks `chunks` of block `index` into `out` (4 bytes each, from
    /// byte 4), when its slot says present.
    fn sums_into(&self, index: u64, chunks: std::ops::Range<u64>, out: &mut Vec<u8>) -> bool {
        if index >= self.blocks {
            return false;
        }
        out.clear();
        out.resize(4 + 4 * chunks.end as usize, 0);
        self.sums.read_exact_at(out, self.slot_at(index)).is_ok()
            && u32::from_le_bytes([out[0], out[1], out[2], out[3]]) == PRESENT
    }

    /// Writes block `index`'s slot: the mark and the checksum of each chunk of `data`.
    fn mark(&self, index: u64, data: &[u8]) -> io::Result<()> {
        let mut slot = Vec::with_capacity(self.slot_len as usize);
        slot.extend_from_slice(&PRESENT.to_le_bytes());
        for chunk in data.chunks(CHUNK as usize) {
            slot.extend_from_slice(&crc32fast::hash(chunk).to_le_bytes());
        }
        self.sums.write_all_at(&slot, self.slot_at(index))
    }

    fn clear(&self, index: u64) {
        let _ = self.sums.write_all_at(&[0u8; 4], self.slot_at(index));
    }

    /// Reads the bytes `range` into `scratch.data` when every block they touch is present
    /// and every chunk they touch matches its checksum; returns where in `scratch.data` they
    /// are. Reads whole chunks (4 KiB aligned within each block).
    fn read_verified_into(
        &self,
        range: std::ops::Range<u64>,
        scratch: &mut Scratch,
    ) -> Result<std::ops::Range<usize>, Miss> {
        let block_size = self.block_size;
        let end = range.end.min(self.size);
        if range.start >= end {
            return Err(Miss::Absent);
        }
        let (first, last) = (range.start / block_size, (end - 1) / block_size);
        // The chunk-aligned span to read.
        let from = first * block_size + (range.start - first * block_size) / CHUNK * CHUNK;
        let last_start = last * block_size;
        let to = (last_start + (end - last_start).div_ceil(CHUNK) * CHUNK)
            .min(last_start + block_size)
            .min(self.size);
        let chunks = |index: u64| {
            let block_start = index * block_size;
            let block_end = (block_start + block_size).min(self.size);
            let lo = (from.max(block_start) - block_start) / CHUNK;
            (
                lo..(to.min(block_end) - block_start).div_ceil(CHUNK),
                block_start,
                block_end,
            )
        };
        // The slots first: a block not cached costs no read of data. (A read within one
        // block, the common case, reads its slot once.)
        let slot_read = if first == last {
            if !self.sums_into(first, chunks(first).0, &mut scratch.sums) {
                return Err(Miss::Absent);
            }
            true
        } else {
            if !(first..=last).all(|index| self.present(index)) {
                return Err(Miss::Absent);
            }
            false
        };
        scratch.data.clear();
        scratch.data.resize((to - from) as usize, 0);
        self.data
            .read_exact_at(&mut scratch.data, from)
            .map_err(|_| Miss::Corrupt(first))?;
        for index in first..=last {
            let (span, block_start, block_end) = chunks(index);
            if !slot_read && !self.sums_into(index, span.clone(), &mut scratch.sums) {
                return Err(Miss::Absent);
            }
            for chunk in span {
                let start = block_start + chunk * CHUNK;
                let len = CHUNK.min(block_end - start) as usize;
                let at = (start - from) as usize;
                let s = 4 + 4 * chunk as usize;
                let sums = &scratch.sums;
                let want = u32::from_le_bytes([sums[s], sums[s + 1], sums[s + 2], sums[s + 3]]);
                if crc32fast::hash(&scratch.data[at..at + len]) != want {
                    return Err(Miss::Corrupt(index));
                }
            }
        }
        Ok((range.start - from) as usize..(end - from) as usize)
    }

    /// Frees block `index`'s space (the slot is cleared first).
    fn punch(&self, index: u64) -> io::Result<()> {
        let start = index * self.block_size;
        let len = self.block_size.min(self.size.saturating_sub(start));
        // SAFETY: fallocate on a file descriptor we own, with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.data.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Records a use in the sums file's mtime (the eviction order), at most every few seconds.
    fn touch(&self) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.touched.load(Ordering::Relaxed);
        if secs.saturating_sub(last) >= TOUCH_EVERY.as_secs() {
            self.touched.store(secs, Ordering::Relaxed);
            let _ = self.sums.set_modified(now);
        }
    }
}

/// Bytes of one block's slot: the mark, a checksum per chunk, padding.
fn slot_len(block_size: u64) -> u64 {
    (4 + 4 * block_size.div_ceil(CHUNK)).next_multiple_of(ALIGN as u64)
}

#[cfg(test)]
mod tests;
