//! Open directories: readdir is served while the listing is still running.
//!
//! Non-obvious problems:
//! 1. `opendir` returns once the first page is in; a task fetches the rest and appends to the
//!    handle, so the kernel and `ls -l` work through the first thousand entries while the next
//!    pages are on their way. readdir waits only when it has caught up with the listing.
//! 2. readdir offsets are positions, so an entry keeps its position once handed out: the
//!    handle holds the pages in the order they came (each sorted), and the listing cache, which
//!    lookups binary-search, is sorted once the listing is complete.
//! 3. A file is handed out only once no later page can turn its name into a directory
//!    (`list::stream_children`); files written here and not committed yet come last.
//! 4. A listing that fails after the first page fails the readdir that catches up with it
//!    (EIO), not the entries already handed out.
//! 5. Memory is bounded whatever the directory's size: a listing that outgrows `WINDOW`
//!    entries is windowed: it waits for readdir before fetching the next page, lets go of
//!    the entries readdir has passed (keeping `BEHIND`), and is not cached (lookups in it are
//!    answered by HEAD/LIST). A readdir that goes back past what was let go (rewinddir)
//!    lists the directory again from the start. Files written here and not committed yet
//!    are not added to a windowed listing (lookups still find them).
//! 6. A lookup of a name an expired, complete listing does not hold (a new file about to be
//!    created: `tar x`, a shell loop of redirects) lists the directory again, once, instead
//!    of a HEAD and a LIST per name (`refresh_listing`): lookups in that directory meanwhile
//!    wait for the same listing, and every name after it is answered from memory until the
//!    TTL runs out again. Only for directories of at most `REFRESHED` entries; a bigger one
//!    costs more to list than the names it answers.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};

use super::list::{no_pace, stream_children, Child, Pace};
use super::meta::ListToken;
use super::{DirEntry, Fs, Ino};
use crate::error::{FsError, FsResult};

/// Entries a running listing may hold in one handle: past it, the directory is served page
/// by page (5.). About 100 bytes an entry, so ~6 MiB per handle of a huge directory.
pub const WINDOW: usize = 64 << 10;

/// The most entries an expired listing may hold to be listed again for a lookup (6.).
pub const REFRESHED: usize = 10_000;

/// Entries kept behind the furthest position readdir asked for: the kernel asks again from
/// the first entry that did not fit in a reply, never further back (unless rewound).
const BEHIND: usize = 4096;

/// The entries of an open directory (`.` and `..` not included).
#[derive(Debug)]
pub struct DirHandle {
    /// The directory.
    ino: Ino,
    listed: Mutex<Listed>,
    grew: Notify,
    /// Woken when readdir moved on and a windowed listing may go on.
    room: Notify,
    closed: AtomicBool,
}

#[derive(Debug)]
struct Listed {
    /// A complete listing taken from the cache.
    cached: Arc<Vec<DirEntry>>,
    /// Entries appended by a running listing, from position `cached.len() + dropped`.
    appended: VecDeque<DirEntry>,
    /// Entries of the running listing let go from the front (5.).
    dropped: usize,
    /// True once the listing outgrew `WINDOW`: served page by page, never cached whole.
    windowed: bool,
    /// The furthest position readdir asked for.
    read_to: usize,
    /// How the listing ended; `None` while it runs.
    end: Option<FsResult<()>>,
}

impl Listed {
    fn first_held(&self) -> usize {
        self.cached.len() + self.dropped
    }

    fn len(&self) -> usize {
        self.first_held() + self.appended.len()
    }

    /// Lets go of what readdir has passed, once the listing is windowed.
    fn trim(&mut self) {
        if !self.windowed {
            return;
        }
        let keep_from = self.read_to.saturating_sub(BEHIND);
        while self.first_held() < keep_from && self.appended.pop_front().is_some() {
            self.dropped += 1;
        }
    }
}

impl DirHandle {
    pub(super) fn new(ino: Ino, cached: Arc<Vec<DirEntry>>, end: Option<FsResult<()>>) -> Self {
        Self {
            ino,
            listed: Mutex::new(Listed {
                cached,
                appended: VecDeque::new(),
                dropped: 0,
                windowed: false,
                read_to: 0,
                end,
            }),
            grew: Notify::new(),
            room: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn append(&self, entries: Vec<DirEntry>) {
        let mut listed = self.listed.lock();
        listed.appended.extend(entries);
        if listed.len() > WINDOW {
            listed.windowed = true;
            listed.trim();
        }
        drop(listed);
        self.grew.notify_waiters();
    }

    /// Waits until a windowed listing has room for another page (readdir moved on); false
    /// when the handle was closed meanwhile (the listing then stops).
    async fn wait_for_room(&self) -> bool {
        loop {
            let room = self.room.notified();
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            {
                let listed = self.listed.lock();
                if !listed.windowed || listed.appended.len() < WINDOW {
                    return true;
                }
            }
            room.await;
        }
    }

    /// True once the listing outgrew the window (it is not cached then).
    fn windowed(&self) -> bool {
        self.listed.lock().windowed
    }

    /// The directory this handle lists.
    pub(super) fn ino(&self) -> Ino {
        self.ino
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.room.notify_waiters();
    }

    fn finish(&self, end: FsResult<()>) {
        self.listed.lock().end = Some(end);
        self.grew.notify_waiters();
    }

    /// Waits until there is an entry at `position` or the listing is over; the listing's
    /// error, if it failed before reaching `position`. False when `position` was let go
    /// (readdir went back in a windowed listing: the caller lists again).
    pub async fn wait_for(&self, position: usize) -> FsResult<bool> {
        loop {
            // Created before the check, so an append between the check and the await wakes it.
            let grew = self.grew.notified();
            {
                let listed = self.listed.lock();
                if position < listed.first_held() && position >= listed.cached.len() {
                    return Ok(false);
                }
                if listed.len() > position {
                    return Ok(true);
                }
                if let Some(end) = &listed.end {
                    return end.clone().map(|()| true);
                }
            }
            grew.await;
        }
    }

    /// Entries the handle holds now (tests of the window).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.listed.lock().appended.len()
    }

    /// Calls `add(position, entry)` for the entries there are from `position` on, until it
    /// returns true (the reply is full).
    pub fn visit(&self, position: usize, mut add: impl FnMut(usize, &DirEntry) -> bool) {
        let mut listed = self.listed.lock();
        if position > listed.read_to {
            listed.read_to = position;
            listed.trim();
            self.room.notify_waiters();
        }
        // Both sides indexed, not walked: a reply costs its own entries, wherever it starts.
        let first = listed.first_held();
        let from = position.saturating_sub(first).min(listed.appended.len());
        let cached = listed.cached.iter().enumerate().skip(position);
        let appended = listed
            .appended
            .range(from..)
            .enumerate()
            .map(|(i, e)| (first + from + i, e));
        for (i, entry) in cached.chain(appended) {
            if add(i, entry) {
                break;
            }
        }
    }
}

impl Fs {
    /// Opens directory `ino`: from the listing cache while fresh (or once a walk of its parent
    /// filled it, walk.rs), else returns once the first page of a new listing is in and lets
    /// the rest arrive while readdir runs.
    pub async fn opendir(self: &Arc<Self>, ino: Ino) -> FsResult<u64> {
        let mut fresh = self.tables.lock().meta.fresh_listing(ino);
        if fresh.is_none() && self.load_saved(ino).await {
            // Answered from the snapshot after a remount (remount.rs).
            fresh = self.tables.lock().meta.fresh_listing(ino);
        }
        if fresh.is_none() {
            // A step of a recursive walk is served from one flat listing (walk.rs).
            let path = self.path_of(ino)?;
            self.maybe_walk(ino, &path);
            fresh = self.walked_listing(ino, &path).await;
        }
        let handle = match fresh {
            Some(entries) => Arc::new(DirHandle::new(ino, entries, Some(Ok(())))),
            None => self.start_listing(ino).await?,
        };
        self.opened_dir(ino);
        let fh = self.handles.next();
        self.dirs.lock().insert(fh, handle);
        Ok(fh)
    }

    /// The handle of an open directory.
    pub fn dir_handle(&self, fh: u64) -> FsResult<Arc<DirHandle>> {
        self.dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| self.handles.unknown(fh, "directory"))
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        if let Some(handle) = self.dirs.lock().remove(&fh) {
            handle.close();
        }
    }

    /// Lists directory `ino` again for handle `fh`, whose windowed listing let go of the
    /// position readdir went back to (5.): positions count from the start again.
    pub async fn relist(self: &Arc<Self>, ino: Ino, fh: u64) -> FsResult<Arc<DirHandle>> {
        let handle = self.start_listing(ino).await?;
        if let Some(old) = self.dirs.lock().insert(fh, Arc::clone(&handle)) {
            old.close();
        }
        Ok(handle)
    }

    /// Lists `dir` again, whole, for a lookup of a name its expired listing did not hold;
    /// callers at the same time share one listing (6.). True when a fresh listing of `dir` is
    /// cached now.
    pub(super) async fn refresh_listing(&self, dir: Ino) -> bool {
        let one = Arc::clone(self.refreshing.lock().entry(dir).or_default());
        let fresh = {
            let _turn = one.lock().await;
            self.tables.lock().meta.fresh_listing(dir).is_some() || self.list_whole(dir).await
        };
        let mut refreshing = self.refreshing.lock();
        // Ours and the map's: nobody else waits for this directory.
        if Arc::strong_count(&one) == 2 {
            refreshing.remove(&dir);
        }
        fresh
    }

    /// Lists `dir` to the end into the listing cache, here rather than in a task (no handle
    /// reads it); gives up past `WINDOW` entries. True when the listing was cached.
    pub(super) async fn list_whole(&self, dir: Ino) -> bool {
        let Ok(path) = self.path_of(dir) else {
            return false;
        };
        let prefix = self.names.dir_prefix(&path);
        let token = self.tables.lock().meta.listing_started();
        let (mut all, mut gone) = (Vec::new(), false);
        let result = stream_children(
            self.store.as_ref(),
            &prefix,
            |m| self.headers_unknown(m),
            |batch, exists| {
                let Some(entries) = self.listed_page(dir, &path, batch, exists, token) else {
                    gone = true;
                    return false;
                };
                all.extend(entries);
                all.len() <= WINDOW
            },
            no_pace,
        )
        .await;
        if result.is_err() || gone || all.len() > WINDOW {
            return false;
        }
        self.cache_whole(dir, &path, token, all);
        self.tables.lock().meta.fresh_listing(dir).is_some()
    }

    /// A page of `dir`'s listing, registered: its entries, or `None` when no key is left
    /// under the prefix (the directory is gone).
    pub(super) fn listed_page(
        &self,
        dir: Ino,
        path: &str,
        batch: Vec<(String, Child)>,
        exists: bool,
        token: ListToken,
    ) -> Option<Vec<DirEntry>> {
        if !exists && dir != Ino::ROOT {
            return None;
        }
        Some(
            self.tables
                .lock()
                .register_children(&self.attrs, &self.deferred, path, batch, token),
        )
    }

    /// Caches `all`, the complete listing of `dir` that started at `token`, sorted; returns
    /// what the cache added to it (files written here and not committed yet).
    pub(super) fn cache_whole(
        &self,
        dir: Ino,
        path: &str,
        token: ListToken,
        mut all: Vec<DirEntry>,
    ) -> Vec<DirEntry> {
        all.sort_by(|a, b| a.name.cmp(&b.name));
        self.tables
            .lock()
            .cache_listing(&self.attrs, dir, path, token, all, None)
    }

    /// True unless the headers of this very version of an object are known already (a
    /// listing does not HEAD an empty object again for them).
    pub(super) fn headers_unknown(&self, m: &crate::store::ObjectMeta) -> bool {
        let path = m.key.strip_prefix(&self.config.prefix);
        !path.is_some_and(|path| self.tables.lock().meta.headers_known(path, &m.etag))
    }

    /// Starts listing `ino` into a new handle; returns it once the first page is in.
    async fn start_listing(self: &Arc<Self>, ino: Ino) -> FsResult<Arc<DirHandle>> {
        let path = self.path_of(ino)?;
        let prefix = self.names.dir_prefix(&path);
        let handle = Arc::new(DirHandle::new(ino, Arc::default(), None));
        let token = self.tables.lock().meta.listing_started();
        let (first_tx, first_rx) = oneshot::channel::<FsResult<()>>();
        let (fs, listing) = (Arc::clone(self), Arc::clone(&handle));
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut gone = false;
            // Headers already read for this very version are not asked again.
            let unknown = |m: &crate::store::ObjectMeta| fs.headers_unknown(m);
            let room = Arc::clone(&listing);
            let pace = move || -> Pace {
                let room = Arc::clone(&room);
                Box::pin(async move { room.wait_for_room().await })
            };
            let result = stream_children(
                fs.store.as_ref(),
                &prefix,
                unknown,
                |batch, exists| {
                    let Some(entries) = fs.listed_page(ino, &path, batch, exists, token) else {
                        gone = true;
                        return false;
                    };
                    listing.append(entries);
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(()));
                    }
                    true
                },
                pace,
            )
            .await;
            let end = match result {
                Ok(_) if gone => Err(FsError::not_found()),
                // Served page by page, or abandoned: not cached (5.).
                Ok(_) if listing.windowed() || listing.closed.load(Ordering::SeqCst) => Ok(()),
                Ok(_) => {
                    let mut all = Vec::new();
                    listing.visit(0, |_, entry| {
                        all.push(entry.clone());
                        false
                    });
                    listing.append(fs.cache_whole(ino, &path, token, all));
                    Ok(())
                }
                Err(e) => Err(FsError::from(e)),
            };
            if let Some(tx) = first.take() {
                let _ = tx.send(end.clone());
            }
            listing.finish(end);
        });
        first_rx
            .await
            .unwrap_or_else(|_| Err(FsError::new(libc::EIO, "directory listing task ended")))?;
        Ok(handle)
    }
}
