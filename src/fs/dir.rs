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

use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};

use super::list::stream_children;
use super::{DirEntry, Fs, Ino};
use crate::error::{FsError, FsResult};

/// The entries of an open directory (`.` and `..` not included).
#[derive(Debug)]
pub struct DirHandle {
    listed: Mutex<Listed>,
    grew: Notify,
}

#[derive(Debug)]
struct Listed {
    /// A complete listing taken from the cache.
    cached: Arc<Vec<DirEntry>>,
    /// Entries appended by a running listing.
    appended: Vec<DirEntry>,
    /// How the listing ended; `None` while it runs.
    end: Option<FsResult<()>>,
}

impl DirHandle {
    fn new(cached: Arc<Vec<DirEntry>>, end: Option<FsResult<()>>) -> Self {
        Self {
            listed: Mutex::new(Listed {
                cached,
                appended: Vec::new(),
                end,
            }),
            grew: Notify::new(),
        }
    }

    fn append(&self, entries: Vec<DirEntry>) {
        self.listed.lock().appended.extend(entries);
        self.grew.notify_waiters();
    }

    fn finish(&self, end: FsResult<()>) {
        self.listed.lock().end = Some(end);
        self.grew.notify_waiters();
    }

    /// Waits until there is an entry at `position` or the listing is over; the listing's
    /// error, if it failed before reaching `position`.
    pub async fn wait_for(&self, position: usize) -> FsResult<()> {
        loop {
            // Created before the check, so an append between the check and the await wakes it.
            let grew = self.grew.notified();
            {
                let listed = self.listed.lock();
                if listed.cached.len() + listed.appended.len() > position {
                    return Ok(());
                }
                if let Some(end) = &listed.end {
                    return end.clone();
                }
            }
            grew.await;
        }
    }

    /// Calls `add(position, entry)` for the entries there are from `position` on, until it
    /// returns true (the reply is full).
    pub fn visit(&self, position: usize, mut add: impl FnMut(usize, &DirEntry) -> bool) {
        let listed = self.listed.lock();
        let entries = listed.cached.iter().chain(listed.appended.iter());
        for (i, entry) in entries.enumerate().skip(position) {
            if add(i, entry) {
                break;
            }
        }
    }
}

impl Fs {
    /// True unless the headers of this version of the object are known already.
    fn headers_unknown(&self, object: &crate::store::ObjectMeta) -> bool {
        let Some(path) = object.key.strip_prefix(&self.config.prefix) else {
            return true;
        };
        let t = self.tables.lock();
        let known = t.meta.ino(path).and_then(|ino| t.meta.known_meta(ino));
        !known.is_some_and(|k| k.metadata.is_some() && super::same_etag(&k.etag, &object.etag))
    }

    /// Opens directory `ino`: from the listing cache while fresh, else returns once the first
    /// page of a new listing is in and lets the rest arrive while readdir runs.
    pub async fn opendir(self: &Arc<Self>, ino: Ino) -> FsResult<u64> {
        let handle = match self.fresh_listing(ino) {
            Some(entries) => Arc::new(DirHandle::new(entries, Some(Ok(())))),
            None => self.start_listing(ino).await?,
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, handle);
        Ok(fh)
    }

    /// The handle of an open directory.
    pub fn dir_handle(&self, fh: u64) -> FsResult<Arc<DirHandle>> {
        self.dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, "unknown directory handle"))
    }

    /// Every entry of an open directory, once its listing is complete.
    #[cfg(test)]
    pub async fn readdir_all(&self, fh: u64) -> FsResult<Vec<DirEntry>> {
        let handle = self.dir_handle(fh)?;
        handle.wait_for(usize::MAX).await?;
        let mut all = Vec::new();
        handle.visit(0, |_, entry| {
            all.push(entry.clone());
            false
        });
        Ok(all)
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// Starts listing `ino` into a new handle; returns it once the first page is in.
    async fn start_listing(self: &Arc<Self>, ino: Ino) -> FsResult<Arc<DirHandle>> {
        let path = self.path_of(ino)?;
        let prefix = self.dir_prefix(&path);
        let handle = Arc::new(DirHandle::new(Arc::default(), None));
        let token = self.tables.lock().meta.listing_started();
        let (first_tx, first_rx) = oneshot::channel::<FsResult<()>>();
        let (fs, listing) = (Arc::clone(self), Arc::clone(&handle));
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut gone = false;
            let unknown = |m: &crate::store::ObjectMeta| fs.headers_unknown(m);
            let result = stream_children(fs.store.as_ref(), &prefix, unknown, |batch, exists| {
                if !exists && ino != Ino::ROOT {
                    // No key under the prefix any more: the directory is gone.
                    gone = true;
                    return false;
                }
                listing.append(fs.register_children(&path, batch));
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                true
            })
            .await;
            let end = match result {
                Ok(_) if gone => Err(FsError::not_found()),
                Ok(_) => {
                    let mut all = Vec::new();
                    listing.visit(0, |_, entry| {
                        all.push(entry.clone());
                        false
                    });
                    all.sort_by(|a, b| a.name.cmp(&b.name));
                    listing.append(fs.cache_listing(ino, &path, token, all));
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
