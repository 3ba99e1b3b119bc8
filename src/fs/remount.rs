//! Listings answered from the metadata snapshot after a remount (snapshot.rs keeps the files),
//! and their revalidation: stale-while-revalidate, once per directory and mount.
//!
//! Non-obvious problems:
//! 1. The first lookup or opendir of a directory without a listing in memory reads its saved
//!    listing (`load_saved`), once per directory and mount: the listing is served at once, as
//!    fresh for the metadata TTL, and the directory is queued to be listed again from S3. A
//!    directory whose listing expired later in the mount is listed from S3 as usual: the
//!    snapshot only spares the first listing of each directory.
//! 2. Revalidation is the listing a lookup's refresh sends (dir.rs, 6.): one LIST series per
//!    directory, at most `REVALIDATIONS` at once, in the background. The headers a HEAD read
//!    for a version are loaded with the listing, so the listing does not HEAD an empty object
//!    again unless its version changed. What the new listing shows differently (a name gone,
//!    new, or another version) is told to the kernel as an S3 event would be (remote.rs), since
//!    the kernel was given the saved entries for its TTL.
//! 3. A saved listing is loaded fenced like a listing page (meta.rs, 7.): a change made while
//!    the file was read keeps it out.
//! 4. The writer takes the directories marked dirty (meta.rs, 8.) every `FLUSH_EVERY`, and once
//!    more when the session ends; one lock orders the writes, so an older listing never lands
//!    after a newer one.
//! 5. A revalidation that yields no listing (the directory is gone, has grown past what is
//!    cached, the LIST failed, or this mount changed it meanwhile) drops the saved answer and
//!    every entry it gave the kernel: the next lookup asks S3.
//! 6. With a queue that outlives the mount (snapshot.rs, 6.), a saved listing read from S3
//!    since the queue began to watch is trusted without a revalidation: every change made
//!    since is an event the queue holds (applied as the consumer reads the backlog, telling
//!    the kernel) or one an earlier mount applied (its listing then saved again or deleted).
//!    A saved listing an event marked gone is never loaded.
//! 7. Revalidation lists the whole tree again, which costs the server what a cold walk costs:
//!    run alongside a walk answered from the snapshot, it took the CPU the walk needed
//!    (find-1m after a remount: 38-42 s against 47-51 s cold, on 2 cores shared with the
//!    server). So it waits until no directory was answered from the snapshot for `QUIET`, or
//!    `MAX_DELAY` after the directory was: the walk runs from disk, and the answers it got are
//!    checked right after it (or while it runs, if it runs longer).
//! 8. A walked subtree is revalidated with one flat listing (walk.rs's, unpaced), not one
//!    delimited listing per directory: the directories queued by the time revalidation starts
//!    are grouped by their highest ancestor among them, and a group that is a whole subtree
//!    (every subdirectory its saved listings name is in it) with fewer pages of keys than
//!    directories is listed flat from its top. find-1m after a remount: about 1,000 LISTs
//!    where one per directory is 10,100. What the flat listing does not reach (a directory
//!    too big to cache, one gone, a failure) is listed on its own.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};

use super::inode::path_hash;
use super::list::PAGE_SIZE;
use super::list::{valid_name, Child};
use super::meta::{KernelNote, SnapshotWork};
use super::snapshot::{epoch_ms, Snapshots, Watch, FLUSH_EVERY};
use super::walk::Revalidating;
use super::{join, split, DirEntry, Fs, Ino, Kind, SnapshotActivity};

/// Directories listed again at once after they were answered from the snapshot (2.): enough
/// to keep up with a `find` on a fast link, few enough to leave the link to the reads.
const REVALIDATIONS: usize = 8;

/// Directories remembered as looked up in the snapshot (1.): about 50 bytes each, so at most
/// ~50 MiB. One forgotten may be answered from its saved listing again (written by this mount's
/// own listing of it, and revalidated again).
const TRIED: NonZeroUsize = match NonZeroUsize::new(1 << 20) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// Revalidation waits until no directory was answered from the snapshot for this long (7.):
/// `find` over a million keys from the snapshot does pause for 250 ms at times (the flat
/// revalidation then ran within the walk: 24.5 s against 20.3 s with 1 s).
const QUIET: Duration = Duration::from_secs(1);

/// ...but a directory answered from the snapshot is listed again this long after, at the
/// latest (7.).
const MAX_DELAY: Duration = Duration::from_secs(30);

/// A directory answered from the snapshot, the entries it was answered with, and when.
pub(super) type Revalidation = (Ino, Arc<Vec<DirEntry>>, Instant);

/// The snapshot as this mount uses it.
#[derive(Debug)]
pub(super) struct Saved {
    snaps: Arc<Snapshots>,
    /// Directories whose saved listing was looked for, by a hash of their path (1.).
    tried: Mutex<LruCache<u64, ()>>,
    /// Directories to list again (2.).
    revalidate: mpsc::UnboundedSender<Revalidation>,
    /// Orders the writes (4.).
    writing: Mutex<()>,
    /// Saved listings read from S3 since this are proven by the queue (6.).
    proven_since: Mutex<Option<SystemTime>>,
    /// The queue's record, written again at a clean unmount (6.).
    watch: Mutex<Option<Watch>>,
    /// When a directory was last answered from the snapshot (7.).
    last_load: Mutex<Instant>,
    /// What it did, for `bucketfs status`.
    counts: Mutex<SnapshotActivity>,
}

/// What a queue's retention must still cover after the mount was down, for the backlog to
/// be read before messages expire (6.).
const RETENTION_MARGIN: Duration = Duration::from_secs(3600);

impl Fs {
    /// Serves and keeps listings through `snaps` from now on; the writer and the revalidation
    /// run as tasks on the current runtime.
    pub fn keep_snapshot(self: &Arc<Self>, snaps: Snapshots) {
        let (tx, rx) = mpsc::unbounded_channel();
        let saved = Saved {
            snaps: Arc::new(snaps),
            tried: Mutex::new(LruCache::new(TRIED)),
            revalidate: tx,
            writing: Mutex::default(),
            proven_since: Mutex::default(),
            watch: Mutex::default(),
            last_load: Mutex::new(Instant::now()),
            counts: Mutex::default(),
        };
        if self.saved.set(saved).is_err() {
            return;
        }
        self.tables.lock().meta.keep_snapshot();
        tokio::spawn(revalidate_loop(Arc::downgrade(self), rx));
        tokio::spawn(write_loop(Arc::downgrade(self)));
    }

    /// Answers directory `dir` from its saved listing, if this mount did not look for it yet
    /// and there is a good one (1., 3.); true when a listing of it is cached now.
    pub(super) async fn load_saved(&self, dir: Ino) -> bool {
        let Some(saved) = self.saved.get() else {
            return false;
        };
        let Ok(path) = self.path_of(dir) else {
            return false;
        };
        if saved.tried.lock().put(path_hash(&path), ()).is_some() {
            return false;
        }
        let token = {
            let t = self.tables.lock();
            if t.meta.marked_gone(&path) {
                return false;
            }
            t.meta.listing_started()
        };
        let snaps = Arc::clone(&saved.snaps);
        let wanted = path.to_string();
        let Ok(Some(listing)) = tokio::task::spawn_blocking(move || snaps.load(&wanted)).await
        else {
            return false;
        };
        let prefix = self.names.dir_prefix(&path);
        let children: Vec<(String, Child)> = listing
            .entries
            .iter()
            .filter(|e| valid_name(&e.name))
            .filter_map(|e| {
                let meta = e.object.as_ref().map(|o| o.to_meta(&prefix));
                let child = match (e.kind()?, meta) {
                    (Kind::Dir, None) => Child::Dir,
                    (Kind::Dir, Some(meta)) => Child::DirObject(meta),
                    (_, Some(meta)) => Child::File(meta),
                    (_, None) => return None,
                };
                Some((e.name.clone(), child))
            })
            .collect();
        let listed_at = listing.listed_at();
        let entries = {
            let mut t = self.tables.lock();
            let mut entries =
                t.register_children(&self.attrs, &self.deferred, &path, children, token);
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            t.cache_listing(&self.attrs, dir, &path, token, entries, Some(listed_at));
            t.meta.fresh_listing(dir)
        };
        let Some(entries) = entries else {
            return false;
        };
        let proven = saved
            .proven_since
            .lock()
            .is_some_and(|since| listed_at >= since);
        tracing::debug!(path = %path, entries = entries.len(), proven, "listing answered from the snapshot");
        let now = Instant::now();
        *saved.last_load.lock() = now;
        {
            let mut counts = saved.counts.lock();
            counts.served += 1;
            counts.proven += u64::from(proven);
        }
        if !proven {
            let _ = saved.revalidate.send((dir, entries, now));
        }
        true
    }

    /// The notification queue `url`, whose messages live for `retention`, watches the bucket
    /// from now on (6.): saved listings it proves are trusted without a revalidation.
    pub fn watch_queue(&self, url: &str, retention: Duration) {
        let Some(saved) = self.saved.get() else {
            return;
        };
        let now = SystemTime::now();
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let since = match saved.snaps.load_watch() {
            Some(w) if w.queue == url => w.kept_ms.and_then(|kept| {
                let down = now.duration_since(at(kept)).unwrap_or_default();
                (down + RETENTION_MARGIN < retention).then_some(w.since_ms)
            }),
            _ => None,
        }
        .unwrap_or_else(|| epoch_ms(now));
        let watch = Watch::new(url, since);
        if let Err(e) = saved.snaps.save_watch(watch.clone()) {
            // Unrecorded, a later mount could trust what this one changed: prove nothing.
            tracing::warn!("metadata snapshot: cannot record the notification queue ({e}); saved listings are revalidated");
            saved.snaps.remove_watch();
            return;
        }
        tracing::info!(
            proven_since = epoch_ms(at(since)),
            "saved listings read since the queue began to watch are trusted"
        );
        *saved.proven_since.lock() = Some(at(since));
        *saved.watch.lock() = Some(watch);
    }

    /// At a clean unmount, once the last listings are written: the queue keeps the events
    /// from now on (6.).
    pub fn queue_kept(&self) {
        let Some(saved) = self.saved.get() else {
            return;
        };
        if let Some(mut watch) = saved.watch.lock().take() {
            // A successor that took the mount over wrote its own record: it is its to keep.
            let on_disk = saved.snaps.load_watch();
            let ours = on_disk.is_some_and(|w| {
                (&w.queue, w.since_ms, w.kept_ms) == (&watch.queue, watch.since_ms, None)
            });
            if !ours {
                return;
            }
            watch.kept_ms = Some(epoch_ms(SystemTime::now()));
            if let Err(e) = saved.snaps.save_watch(watch) {
                tracing::debug!("metadata snapshot: the queue's record not written: {e}");
            }
        }
    }

    /// Lists `dir` again after it was answered with `old` from the snapshot, and tells the
    /// kernel what differs (2.).
    async fn revalidate(&self, dir: Ino, old: Arc<Vec<DirEntry>>) {
        let start = SystemTime::now();
        // Cached only if the listing that replaced the saved one is this one (the saved one,
        // changed by this mount meanwhile, may still be there: the listing was fenced).
        let new = match self.list_whole(dir).await {
            true => self.tables.lock().meta.listing_since(dir, start),
            false => None,
        };
        self.revalidated(dir, &old, new);
    }

    /// Revalidates the directories of `dirs` below `root` with one flat listing (8.); those it
    /// did not reach (a directory too big, a failure, one gone) are listed on their own.
    async fn revalidate_flat(&self, root: String, dirs: Revalidating) {
        let walk = super::walk::Walk::revalidation(root, dirs);
        if let Err(e) = self.run_walk(&walk).await {
            tracing::debug!("flat revalidation stopped: {e}");
        }
        let rest = walk
            .revalidating
            .map(|r| r.into_inner())
            .unwrap_or_default();
        for (_, (dir, old)) in rest {
            self.revalidate(dir, old).await;
        }
    }

    /// `dir`, answered with `old` from the snapshot, was listed again as `new` (`None`: no
    /// listing could be had): the kernel is told what differs (2., 5.).
    pub(super) fn revalidated(&self, dir: Ino, old: &[DirEntry], new: Option<Arc<Vec<DirEntry>>>) {
        let notes = match new {
            Some(new) => differences(dir, old, &new),
            None => {
                // Gone, too big to cache, failed, or changed meanwhile: the saved answer is
                // not trusted a moment longer (5.).
                self.tables.lock().meta.unlisted(dir);
                let mut notes: Vec<KernelNote> = old
                    .iter()
                    .map(|e| KernelNote::Entry {
                        parent: dir,
                        name: e.name.clone(),
                        deleted: None,
                    })
                    .collect();
                notes.push(KernelNote::Inode(dir));
                notes
            }
        };
        if !notes.is_empty() {
            tracing::debug!(
                changes = notes.len(),
                "a listing answered from the snapshot changed"
            );
        }
        if let Some(saved) = self.saved.get() {
            let mut counts = saved.counts.lock();
            counts.revalidated += 1;
            counts.changed += u64::from(!notes.is_empty());
        }
        self.kernel.tell(notes);
    }

    /// What the snapshot did since the mount; `None` without one.
    pub(super) fn snapshot_activity(&self) -> Option<SnapshotActivity> {
        let saved = self.saved.get()?;
        let mut counts = *saved.counts.lock();
        counts.rejected = saved.snaps.rejected();
        Some(counts)
    }

    /// Writes what changed since the last call (4.); blocking file I/O.
    pub fn flush_snapshot(&self) {
        let Some(saved) = self.saved.get() else {
            return;
        };
        let _turn = saved.writing.lock();
        let work = self
            .tables
            .lock()
            .meta
            .take_dirty(|path| self.names.dir_prefix(path));
        for item in work {
            match item {
                SnapshotWork::Save(listing) => {
                    if let Err(e) = saved.snaps.save(listing) {
                        tracing::debug!("metadata snapshot not written: {e}");
                    }
                }
                SnapshotWork::Remove(path) => saved.snaps.remove(&path),
            }
        }
    }
}

/// What the kernel must forget of `dir`'s entries, given `old` and now `new` (both sorted).
fn differences(dir: Ino, old: &[DirEntry], new: &[DirEntry]) -> Vec<KernelNote> {
    let entry = |name: &str, deleted: Option<Ino>| KernelNote::Entry {
        parent: dir,
        name: name.to_string(),
        deleted,
    };
    let mut notes = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => a.name.cmp(&b.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let gone = &old[i];
                notes.push(entry(&gone.name, Some(gone.attr.ino)));
                notes.push(KernelNote::Inode(gone.attr.ino));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                // The kernel may hold "no such name" for it.
                notes.push(entry(&new[j].name, None));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (a, b) = (&old[i].attr, &new[j].attr);
                if a.kind != b.kind {
                    notes.push(entry(&new[j].name, None));
                }
                let same = a.kind == b.kind
                    && a.size == b.size
                    && a.mtime == b.mtime
                    && (a.perm, a.uid, a.gid, a.rdev) == (b.perm, b.uid, b.gid, b.rdev);
                if !same {
                    notes.push(KernelNote::Inode(a.ino));
                }
                i += 1;
                j += 1;
            }
        }
    }
    if !notes.is_empty() {
        notes.push(KernelNote::Inode(dir));
    }
    notes
}

/// Lists again, `REVALIDATIONS` at a time, the directories answered from the snapshot (2.).
async fn revalidate_loop(fs: Weak<Fs>, mut queue: mpsc::UnboundedReceiver<Revalidation>) {
    let limit = Arc::new(Semaphore::new(REVALIDATIONS));
    while let Some(first) = queue.recv().await {
        let loaded = first.2;
        // A walk answered from the snapshot goes first (7.).
        loop {
            let Some(fs) = fs.upgrade() else {
                return;
            };
            let Some(saved) = fs.saved.get() else {
                return;
            };
            let quiet = saved.last_load.lock().elapsed() >= QUIET;
            if quiet || loaded.elapsed() >= MAX_DELAY {
                break;
            }
            drop(fs);
            tokio::time::sleep(QUIET).await;
        }
        // What was queued meanwhile goes with it, a walked subtree as one flat listing (8.).
        let mut batch = vec![first];
        while let Ok(item) = queue.try_recv() {
            batch.push(item);
        }
        let Some(strong) = fs.upgrade() else {
            return;
        };
        let jobs = strong.plan(batch);
        drop(strong);
        for job in jobs {
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                return;
            };
            let Some(fs) = fs.upgrade() else {
                return;
            };
            tokio::spawn(async move {
                let _permit = permit;
                match job {
                    Job::One(dir, old) => fs.revalidate(dir, old).await,
                    Job::Flat(root, dirs) => fs.revalidate_flat(root, dirs).await,
                }
            });
        }
    }
}

/// One revalidation to run.
#[derive(Debug)]
pub(super) enum Job {
    /// A directory listed again on its own.
    One(Ino, Arc<Vec<DirEntry>>),
    /// A walked subtree listed flat from its top directory.
    Flat(String, Revalidating),
}

impl Fs {
    /// Plans the revalidation of `batch` (8.): a whole subtree answered from the snapshot
    /// (every subdirectory its saved listings name was answered so too) whose keys fit in
    /// fewer pages than it has directories is one flat listing from its top; every other
    /// directory is listed on its own.
    pub(super) fn plan(&self, batch: Vec<Revalidation>) -> Vec<Job> {
        let mut by_path: Revalidating = HashMap::new();
        for (dir, old, _) in batch {
            if let Ok(path) = self.path_of(dir) {
                by_path.insert(path.to_string(), (dir, old));
            }
        }
        // Deepest first, so a directory's subdirectories are judged before it.
        let mut paths: Vec<String> = by_path.keys().cloned().collect();
        paths.sort_by_key(|p| {
            std::cmp::Reverse(p.matches('/').count() + usize::from(!p.is_empty()))
        });
        let mut whole: HashMap<String, bool> = HashMap::new();
        for path in &paths {
            let (_, old) = &by_path[path];
            let all = old
                .iter()
                .filter(|e| e.attr.kind == Kind::Dir)
                .all(|e| whole.get(&join(path, &e.name)).copied().unwrap_or(false));
            whole.insert(path.clone(), all);
        }
        let flat = self.store.sorted_listings();
        let mut jobs = Vec::new();
        for path in paths.iter().rev() {
            let Some((dir, old)) = by_path.get(path).cloned() else {
                continue; // taken by a flat listing above it
            };
            let parent_whole = !path.is_empty() && whole.get(split(path).0) == Some(&true);
            if !whole[path] || parent_whole || !flat {
                if !parent_whole || !flat {
                    by_path.remove(path);
                    jobs.push(Job::One(dir, old));
                }
                continue;
            }
            let inside: Vec<String> = by_path
                .keys()
                .filter(|p| *p == path || p.starts_with(&format!("{path}/")) || path.is_empty())
                .cloned()
                .collect();
            let keys: usize = inside.iter().map(|p| by_path[p].1.len()).sum();
            if keys / PAGE_SIZE as usize + 1 < inside.len() {
                let dirs: Revalidating = inside
                    .iter()
                    .filter_map(|p| by_path.remove(p).map(|item| (p.clone(), item)))
                    .collect();
                jobs.push(Job::Flat(path.clone(), dirs));
            } else {
                for p in inside {
                    if let Some((dir, old)) = by_path.remove(&p) {
                        jobs.push(Job::One(dir, old));
                    }
                }
            }
        }
        jobs
    }
}

/// Writes the dirty listings every `FLUSH_EVERY` (4.).
async fn write_loop(fs: Weak<Fs>) {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(strong) = fs.upgrade() else {
            return;
        };
        if tokio::task::spawn_blocking(move || strong.flush_snapshot())
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Attr;

    fn entry(name: &str, ino: u64, size: u64) -> DirEntry {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        DirEntry {
            name: name.to_string(),
            attr: Attr {
                ino: Ino(ino),
                kind: Kind::File,
                size,
                mtime: t,
                atime: t,
                ctime: t,
                rdev: 0,
                perm: 0o644,
                nlink: 1,
                uid: 0,
                gid: 0,
            },
        }
    }

    #[test]
    fn what_changed_since_the_snapshot_is_told_and_nothing_else() {
        let dir = Ino(9);
        let old = vec![entry("a", 2, 1), entry("b", 3, 1), entry("c", 4, 1)];
        assert!(differences(dir, &old, &old).is_empty());
        let new = vec![entry("a", 2, 1), entry("c", 4, 7), entry("d", 5, 1)];
        let notes = differences(dir, &old, &new);
        let note = |name: &str, deleted: Option<u64>| KernelNote::Entry {
            parent: dir,
            name: name.to_string(),
            deleted: deleted.map(Ino),
        };
        assert_eq!(
            notes,
            vec![
                note("b", Some(3)),
                KernelNote::Inode(Ino(3)),
                KernelNote::Inode(Ino(4)),
                note("d", None),
                KernelNote::Inode(dir),
            ]
        );
    }
}
