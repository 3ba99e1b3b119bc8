//! The metadata snapshot (`--metadata-cache DIR`): complete directory listings, with what HEADs
//! learned of each listed object version, kept on disk across remounts, so that a remounted
//! `find`, `ls -R` or build answers from disk at once instead of listing every directory again.
//! Everything here is blocking file I/O: callers run it on tokio's blocking pool.
//!
//! Layout: `DIR/meta1/HASH.snap`, one file per directory listing, HASH being SHA-256 of the
//! mount's namespace (endpoint, bucket, SSE-C key digest, prefix) and the directory's path. A
//! file is `MAGIC`, the CRC-32 of the body, then the body: JSON naming the namespace, the path,
//! when the listing was read, and the entries (name, kind, object version and headers).
//!
//! Non-obvious problems:
//! 1. Loaded lazily: nothing is read at mount; the first lookup or opendir of a directory
//!    without a listing in memory reads that directory's file (one open and a few KiB).
//! 2. Never served wrong: a file whose magic, checksum, namespace or path does not match (a
//!    torn write, a flipped bit, a file copied from another mount's directory) is deleted and
//!    logged (one warning per mount, the rest at debug), and the directory is listed from S3.
//! 3. Written behind: the tables mark a directory dirty when its listing is cached or changed
//!    (and when a HEAD learned the headers of one of its entries); the writer takes the dirty
//!    listings every `FLUSH_EVERY` and at unmount. A crash loses at most that much; what it
//!    loses is a listing older than the bucket, which the revalidation after the next mount
//!    corrects (fs/snapshot_use.rs). A listing dropped because it changed elsewhere (an S3
//!    event, an ESTALE) or was removed deletes its file.
//! 4. Bounded: the files of all mounts sharing DIR together stay under the size given
//!    (`--metadata-cache-size`); past it the files written longest ago are deleted, down to
//!    nine tenths. The first write scans the directory for the sum; later writes add to it.
//! 5. DIR and DIR/meta1 are the daemon's own (`owned_dir`: made 0700, or owned by its user and
//!    not writable by group or others, not a symlink); files are written under fresh names
//!    (`O_EXCL | O_NOFOLLOW`) and renamed over, opened with `O_NOFOLLOW`. Nothing a bucket
//!    holds names a file here: names are digests.
//! 6. With a queue that outlives the mount (`--notify-queue`), a `Watch` record says since
//!    when that queue has held every event of the bucket this mount did not apply: written at
//!    mount without `kept_ms`, and with it at a clean unmount. The next mount trusts saved
//!    listings read since then without listing them again (fs/remount.rs, 6.), if it uses the
//!    same queue and the queue's retention covers the time it was down; a crash (no `kept_ms`)
//!    proves nothing.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::Kind;
use crate::config::MetadataCacheConfig;
use crate::owned_dir::{OwnedDir, OwnedDirError};
use crate::store::{ObjectMeta, StandardHeaders, UserMetadata};

/// The directory of this format; a change of format gets a new one.
const LAYOUT: &str = "meta1";

/// Marks the files of this format.
const MAGIC: &[u8; 8] = b"BFSMD001";

/// How often dirty listings are written: a crash loses at most this much (3.).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One entry of a saved listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedEntry {
    /// The name in its directory.
    #[serde(rename = "n")]
    pub name: String,
    /// Its kind, as `Kind::type_bits` says.
    #[serde(rename = "k")]
    pub kind: u32,
    /// The object behind it (none for a directory of keys only).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub object: Option<SavedObject>,
}

/// An object version as the listing and HEADs saw it, its key relative to the directory's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedObject {
    /// The key below the directory's prefix (`name`, `name/`, `name_$folder$`).
    #[serde(rename = "r")]
    pub rel_key: String,
    /// Size in bytes.
    #[serde(rename = "s")]
    pub size: u64,
    /// ETag, quotes included.
    #[serde(rename = "e")]
    pub etag: String,
    /// Last-Modified, in nanoseconds since the epoch.
    #[serde(rename = "t")]
    pub mtime_ns: i128,
    /// The user metadata a HEAD read (absent: not known).
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<UserMetadata>,
    /// Content-Type, when a HEAD read it.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The other headers a HEAD read.
    #[serde(rename = "h", default, skip_serializing_if = "is_default")]
    pub headers: StandardHeaders,
}

fn is_default(h: &StandardHeaders) -> bool {
    *h == StandardHeaders::default()
}

impl SavedObject {
    /// `meta` below `dir_prefix`; `None` when its key is not below it.
    pub fn of(meta: &ObjectMeta, dir_prefix: &str) -> Option<Self> {
        let mtime_ns = match meta.last_modified.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => after.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        };
        Some(Self {
            rel_key: meta.key.strip_prefix(dir_prefix)?.to_string(),
            size: meta.size,
            etag: meta.etag.clone(),
            mtime_ns,
            metadata: meta.metadata.clone(),
            content_type: meta.content_type.clone(),
            headers: meta.headers.clone(),
        })
    }

    /// The object, its key below `dir_prefix` again.
    pub fn to_meta(&self, dir_prefix: &str) -> ObjectMeta {
        let magnitude =
            Duration::from_nanos(u64::try_from(self.mtime_ns.unsigned_abs()).unwrap_or(u64::MAX));
        let last_modified = if self.mtime_ns >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(magnitude)
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(magnitude)
        }
        .unwrap_or(SystemTime::UNIX_EPOCH);
        ObjectMeta {
            key: format!("{dir_prefix}{}", self.rel_key),
            size: self.size,
            etag: self.etag.clone(),
            last_modified,
            metadata: self.metadata.clone(),
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
        }
    }
}

impl SavedEntry {
    /// The kind saved, when it names one.
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_type_bits(self.kind)
    }
}

/// A saved listing: the directory, when it was read, and its entries, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedListing {
    /// The namespace it belongs to (2.).
    ns: String,
    /// The directory's path in the mount.
    pub path: String,
    /// When the listing was read from S3, in milliseconds since the epoch.
    pub listed_at_ms: u64,
    /// The entries.
    pub entries: Vec<SavedEntry>,
}

impl SavedListing {
    /// A listing of `path` read at `listed_at`.
    pub fn new(path: &str, listed_at: SystemTime, entries: Vec<SavedEntry>) -> Self {
        Self {
            ns: String::new(),
            path: path.to_string(),
            listed_at_ms: epoch_ms(listed_at),
            entries,
        }
    }

    /// When it was read from S3.
    pub fn listed_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.listed_at_ms)
    }
}

/// `MAGIC`, the CRC-32 of `value`'s JSON, then the JSON.
fn seal(value: &impl serde::Serialize) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// The JSON `seal` wrapped, once its magic and checksum hold.
fn unseal(bytes: &[u8]) -> Result<&[u8], Rejected> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(Rejected::Magic)?;
    if rest.len() < 4 {
        return Err(Rejected::Checksum);
    }
    let (sum, body) = rest.split_at(4);
    if u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]) != crc32fast::hash(body) {
        return Err(Rejected::Checksum);
    }
    Ok(body)
}

/// Which notification queue watched the bucket for the saved listings (6.).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watch {
    /// The namespace it belongs to.
    ns: String,
    /// The queue's URL.
    pub queue: String,
    /// Since when the queue holds every event of the bucket not yet applied here, in
    /// milliseconds since the epoch.
    pub since_ms: u64,
    /// When a clean unmount left the queue to keep the events, in milliseconds since the
    /// epoch; `None` while mounted (a crash leaves it so).
    pub kept_ms: Option<u64>,
}

impl Watch {
    /// `queue` watching since `since_ms`, mounted now.
    pub fn new(queue: &str, since_ms: u64) -> Self {
        Self {
            ns: String::new(),
            queue: queue.to_string(),
            since_ms,
            kept_ms: None,
        }
    }
}

/// Milliseconds since the epoch of `t`.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a file was not served (2.).
#[derive(Debug, thiserror::Error)]
enum Rejected {
    #[error("not a snapshot of this format")]
    Magic,
    #[error("checksum mismatch")]
    Checksum,
    #[error("unreadable: {0}")]
    Body(serde_json::Error),
    #[error("another mount's or another directory's")]
    Foreign,
}

/// The saved listings of one mount, in a directory mounts of one user may share.
#[derive(Debug)]
pub struct Snapshots {
    dir: OwnedDir,
    /// The mount's namespace, written in every file and checked on load.
    ns: String,
    /// Bytes all files may use together.
    limit: u64,
    /// Bytes used, once a scan found them (4.).
    used: Mutex<Option<u64>>,
    /// One warning per mount for files rejected (2.).
    warned: AtomicBool,
    /// Files rejected, for tests and the log.
    rejected: AtomicU64,
    /// Fresh names for files being written.
    next_temp: AtomicU64,
}

impl Snapshots {
    /// Opens (making it if need be) the snapshot directory of `config` for the mount whose
    /// namespace is `ns`.
    pub fn open(config: &MetadataCacheConfig, ns: &str) -> Result<Self, OwnedDirError> {
        let dir = OwnedDir::open_or_create(&config.dir)?.subdir(LAYOUT)?;
        Ok(Self {
            dir,
            ns: ns.to_string(),
            limit: config.size,
            used: Mutex::new(None),
            warned: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            next_temp: AtomicU64::new(0),
        })
    }

    /// Where the files are.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Files rejected since the mount (2.).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The file name of directory `path`'s listing.
    fn file_name(&self, path: &str) -> String {
        format!("{:x}.snap", Sha256::digest(format!("{}\0{path}", self.ns)))
    }

    /// The saved listing of directory `path`, if there is a good one (1., 2.).
    pub fn load(&self, path: &str) -> Option<SavedListing> {
        let name = self.file_name(path);
        let bytes = match self.dir.read_file(&name) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(path, "metadata snapshot not read: {e}");
                return None;
            }
        };
        match self.decode(&bytes, path) {
            Ok(listing) => Some(listing),
            Err(why) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                let _ = self.dir.remove_file(&name);
                if self.warned.swap(true, Ordering::Relaxed) {
                    tracing::debug!(path, "metadata snapshot dropped: {why}");
                } else {
                    tracing::warn!(
                        "dropped a metadata snapshot in {} that is damaged or not this mount's \
                         ({why}, directory {path:?}): listing it again from S3 (later ones \
                         are logged at debug level)",
                        self.dir.path().display()
                    );
                }
                None
            }
        }
    }

    fn decode(&self, bytes: &[u8], path: &str) -> Result<SavedListing, Rejected> {
        let listing: SavedListing =
            serde_json::from_slice(unseal(bytes)?).map_err(Rejected::Body)?;
        if listing.ns != self.ns || listing.path != path {
            return Err(Rejected::Foreign);
        }
        Ok(listing)
    }

    /// Saves `listing` in place of the one saved for its directory (3., 4., 5.).
    pub fn save(&self, mut listing: SavedListing) -> io::Result<()> {
        listing.ns.clone_from(&self.ns);
        let name = self.file_name(&listing.path);
        self.replace(&name, &seal(&listing)?)
    }

    /// The record of the queue that watched this mount's bucket (6.), if a good one is here.
    pub fn load_watch(&self) -> Option<Watch> {
        let bytes = self.dir.read_file(&self.watch_name()).ok()??;
        let watch: Watch = serde_json::from_slice(unseal(&bytes).ok()?).ok()?;
        (watch.ns == self.ns).then_some(watch)
    }

    /// Records which queue watches this mount's bucket, since when, and whether it was kept
    /// at a clean unmount (6.).
    pub fn save_watch(&self, mut watch: Watch) -> io::Result<()> {
        watch.ns.clone_from(&self.ns);
        self.replace(&self.watch_name(), &seal(&watch)?)
    }

    /// Deletes the queue's record.
    pub fn remove_watch(&self) {
        let _ = self.dir.remove_file(&self.watch_name());
    }

    fn watch_name(&self) -> String {
        format!("{:x}.watch", Sha256::digest(format!("{}\0watch", self.ns)))
    }

    /// Writes `bytes` as file `name`, in place of the one there (4., 5.).
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let temp = format!(
            ".{name}.{}.{}",
            std::process::id(),
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        );
        let old = self.dir.file_size(name).unwrap_or(0);
        self.dir.write_new_file(&temp, bytes)?;
        if let Err(e) = self.dir.rename_file(&temp, name) {
            let _ = self.dir.remove_file(&temp);
            return Err(e);
        }
        self.account(bytes.len() as u64, old);
        Ok(())
    }

    /// Deletes the listing saved for directory `path`, if any.
    pub fn remove(&self, path: &str) {
        let name = self.file_name(path);
        let size = self.dir.file_size(&name).unwrap_or(0);
        if self.dir.remove_file(&name).is_ok() && size > 0 {
            self.account(0, size);
        }
    }

    /// A file of `added` bytes replaced one of `removed`: past the bound, the files written
    /// longest ago go (4.).
    fn account(&self, added: u64, removed: u64) {
        let mut used = self.used.lock();
        let total = match *used {
            Some(total) => (total + added).saturating_sub(removed),
            None => self.scan().values().map(|(size, _)| size).sum(),
        };
        *used = Some(total);
        if total <= self.limit {
            return;
        }
        let files = self.scan();
        let mut total: u64 = files.values().map(|(size, _)| size).sum();
        let mut by_age: Vec<(SystemTime, String, u64)> = files
            .into_iter()
            .map(|(name, (size, mtime))| (mtime, name, size))
            .collect();
        by_age.sort_unstable();
        let target = self.limit / 10 * 9;
        for (_, name, size) in by_age {
            if total <= target {
                break;
            }
            if self.dir.remove_file(&name).is_ok() {
                total = total.saturating_sub(size);
            }
        }
        *used = Some(total);
    }

    /// The files here: name to (bytes on disk, last written).
    fn scan(&self) -> BTreeMap<String, (u64, SystemTime)> {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return BTreeMap::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        name,
                        (
                            meta.len(),
                            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        ),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, size: u64) -> MetadataCacheConfig {
        MetadataCacheConfig {
            dir: dir.to_path_buf(),
            size,
        }
    }

    fn listing(path: &str, n: usize) -> SavedListing {
        let meta = ObjectMeta {
            key: format!("pre/{path}/f"),
            size: 0,
            etag: "\"e\"".into(),
            last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            metadata: Some(
                [("mode".to_string(), "4516".to_string())]
                    .into_iter()
                    .collect(),
            ),
            content_type: None,
            headers: StandardHeaders::default(),
        };
        let entries = (0..n)
            .map(|i| SavedEntry {
                name: format!("f{i:04}"),
                kind: Kind::Fifo.type_bits(),
                object: SavedObject::of(&meta, &format!("pre/{path}/")),
            })
            .collect();
        SavedListing::new(path, SystemTime::now(), entries)
    }

    #[test]
    fn a_saved_listing_loads_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&config(tmp.path(), 1 << 30), "ns").unwrap();
        assert_eq!(snaps.load("a/b"), None);
        let saved = listing("a/b", 3);
        snaps.save(saved.clone()).unwrap();
        let loaded = snaps.load("a/b").unwrap();
        assert_eq!(loaded.entries, saved.entries);
        assert_eq!(loaded.path, "a/b");
        assert_eq!(loaded.entries[0].kind(), Some(Kind::Fifo));
        let object = loaded.entries[0].object.as_ref().unwrap();
        let meta = object.to_meta("pre/a/b/");
        assert_eq!(meta.key, "pre/a/b/f");
        assert_eq!(
            meta.last_modified,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert_eq!(meta.metadata.unwrap()["mode"], "4516");
        // Another directory, another namespace: nothing.
        assert_eq!(snaps.load("a"), None);
        let other = Snapshots::open(&config(tmp.path(), 1 << 30), "other").unwrap();
        assert_eq!(other.load("a/b"), None);
        snaps.remove("a/b");
        assert_eq!(snaps.load("a/b"), None);
        assert_eq!(snaps.rejected(), 0);
    }

    #[test]
    fn a_damaged_or_foreign_file_is_dropped_never_served() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&config(tmp.path(), 1 << 30), "ns").unwrap();
        let file = |path: &str| snaps.path().join(snaps.file_name(path));
        // Every single flipped byte is caught.
        snaps.save(listing("d", 2)).unwrap();
        let good = std::fs::read(file("d")).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            std::fs::write(file("d"), &bad).unwrap();
            assert_eq!(snaps.load("d"), None, "byte {i} flipped");
            assert!(!file("d").exists(), "dropped");
        }
        // Truncated.
        std::fs::write(file("d"), &good[..good.len() / 2]).unwrap();
        assert_eq!(snaps.load("d"), None);
        // Another mount's file, or another directory's, copied in place.
        let other = Snapshots::open(&config(tmp.path(), 1 << 30), "other").unwrap();
        other.save(listing("d", 2)).unwrap();
        std::fs::copy(other.path().join(other.file_name("d")), file("d")).unwrap();
        assert_eq!(snaps.load("d"), None);
        snaps.save(listing("e", 2)).unwrap();
        std::fs::copy(file("e"), file("d")).unwrap();
        assert_eq!(snaps.load("d"), None);
        assert_eq!(snaps.rejected(), good.len() as u64 + 3);
        assert!(snaps.load("e").is_some());
    }

    #[test]
    fn the_queue_record_is_the_mounts_own() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&config(tmp.path(), 1 << 30), "ns").unwrap();
        assert_eq!(snaps.load_watch(), None);
        let mut watch = Watch::new("http://q", 42);
        snaps.save_watch(watch.clone()).unwrap();
        let loaded = snaps.load_watch().unwrap();
        assert_eq!(
            (loaded.queue.as_str(), loaded.since_ms, loaded.kept_ms),
            ("http://q", 42, None)
        );
        watch.kept_ms = Some(50);
        snaps.save_watch(watch).unwrap();
        assert_eq!(snaps.load_watch().unwrap().kept_ms, Some(50));
        let other = Snapshots::open(&config(tmp.path(), 1 << 30), "other").unwrap();
        assert_eq!(other.load_watch(), None, "another mount's record");
        snaps.remove_watch();
        assert_eq!(snaps.load_watch(), None);
    }

    #[test]
    fn the_files_stay_under_the_bound_oldest_written_leaving_first() {
        let tmp = tempfile::tempdir().unwrap();
        let one = {
            let probe = Snapshots::open(&config(&tmp.path().join("probe"), 1 << 30), "ns").unwrap();
            probe.save(listing("d000", 20)).unwrap();
            std::fs::metadata(probe.path().join(probe.file_name("d000")))
                .unwrap()
                .len()
        };
        let snaps = Snapshots::open(&config(tmp.path(), one * 10), "ns").unwrap();
        for i in 0..30 {
            snaps.save(listing(&format!("d{i:03}"), 20)).unwrap();
            // Distinct write times, so "oldest" is well defined.
            let f = snaps.path().join(snaps.file_name(&format!("d{i:03}")));
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i);
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let total: u64 = snaps.scan().values().map(|(size, _)| size).sum();
        assert!(total <= one * 10, "{total} bytes over {}", one * 10);
        assert!(snaps.load("d029").is_some(), "the newest stays");
        assert!(snaps.load("d000").is_none(), "the oldest went");
    }
}
