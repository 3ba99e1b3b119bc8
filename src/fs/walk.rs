//! Recursive walks at listing speed: a subtree read with one flat listing instead of one
//! delimited listing per directory.
//!
//! Non-obvious problems:
//! 1. A walk is guessed, not announced: `find`, `du`, `ls -R` and `rsync` read a directory
//!    whole and then open its subdirectories. So an opendir of a directory whose parent's
//!    listing is fresh and names at least two directories starts a flat listing (no
//!    delimiter, 1,000 keys a page) of the parent's prefix (`maybe_walk`).
//! 2. Keys come sorted, and the keys under one directory are contiguous: the walk keeps the
//!    chain of directories the last key lies in (`Tree`), and a key outside one completes it.
//!    Its entries are what a delimited listing gives (list.rs's rules: markers, other tools'
//!    directory objects, the directory winning over a file of its name, invalid names left
//!    out, empty objects HEADed for their type), and are cached as its complete listing.
//! 3. An opendir of a directory the walk has not completed yet waits for the walk's next
//!    page, not longer: a directory whose subtree spans many pages (or an `ls` of one
//!    subdirectory that started a walk by mistake) is listed on its own as before.
//! 4. Paced: the walk lists at most `budget` keys past the last directory opened from it,
//!    and as far as it must while an opendir waits for it (3.). The budget starts at one
//!    page and doubles with each directory opened from the walk, up to `dir::WINDOW`; a
//!    wrong guess costs a page or two. A walk nobody takes from for a metadata TTL stops
//!    (what it cached expires as usual).
//! 5. Not on stores that list out of order (S3 Express): 2. needs sorted keys. And memory
//!    stays bounded: a walk inside a directory of more than `dir::WINDOW` entries stops (that
//!    directory is windowed, never cached whole), and at most `MAX_WALKS` run at once.
//! 6. Each completed directory is fenced like any listing (meta.rs, 2. and 7.): the walk's
//!    token is taken before its first page, so a change made meanwhile keeps the directory
//!    out of the cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::dir::WINDOW;
use super::list::{read_headers, valid_name, Child, FOLDER_SUFFIX, PAGE_SIZE};
use super::{join, split, DirEntry, Fs, Ino, Kind};
use crate::store::{ListRequest, ListStart, ObjectMeta};

/// Walks running at once, at most: each holds a task and its open directories.
const MAX_WALKS: usize = 4;

/// One directory the walk is inside: its path below the walk's root and its children so far.
#[derive(Debug)]
struct Open {
    path: String,
    children: BTreeMap<String, Child>,
}

/// A directory the walk completed: its path below the walk's root, and its children.
pub(super) type Completed = (String, BTreeMap<String, Child>);

/// The directories a flat listing is inside (2.): the root and the chain down to the
/// directory of the last key.
#[derive(Debug)]
pub(super) struct Tree {
    stack: Vec<Open>,
}

impl Default for Tree {
    fn default() -> Self {
        Self {
            stack: vec![Open {
                path: String::new(),
                children: BTreeMap::new(),
            }],
        }
    }
}

/// True when `path` (below a walk's root) is `dir` or lies below it.
fn inside(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Puts `child` under `name`: a directory wins over a file of the same name, and an other
/// tool's directory object over a bare prefix (the order a delimited page hands them out).
fn put(children: &mut BTreeMap<String, Child>, name: &str, child: Child) {
    match (children.get(name), &child) {
        (None, _) | (Some(Child::File(_)), Child::Dir | Child::DirObject(_)) => {}
        (Some(Child::Dir), Child::DirObject(_)) => {}
        _ => return,
    }
    children.insert(name.to_string(), child);
}

impl Tree {
    /// Adds `meta`, whose key is `rel` below the walk's root; returns the directories it
    /// completed, deepest first.
    pub(super) fn add(&mut self, rel: &str, meta: ObjectMeta) -> Vec<Completed> {
        let mut done = Vec::new();
        while self.stack.len() > 1 && !self.stack.last().is_some_and(|o| inside(rel, &o.path)) {
            done.extend(self.stack.pop().map(|o| (o.path, o.children)));
        }
        let components: Vec<&str> = rel.split('/').collect();
        for (i, name) in components.iter().enumerate().skip(self.stack.len() - 1) {
            let Some(parent) = self.stack.last_mut() else {
                break;
            };
            if i + 1 == components.len() {
                match name.strip_suffix(FOLDER_SUFFIX) {
                    Some(dir) if meta.size == 0 && valid_name(dir) => {
                        put(&mut parent.children, dir, Child::DirObject(meta));
                    }
                    Some(_) if meta.size == 0 => {}
                    // A marker (`dir/`) has an empty name: the directory, not a file.
                    _ if valid_name(name) => put(&mut parent.children, name, Child::File(meta)),
                    _ => {}
                }
                break;
            }
            if !valid_name(name) {
                break; // keys below an invalid component are left out (list.rs, 2.)
            }
            put(&mut parent.children, name, Child::Dir);
            let path = join(&parent.path, name);
            self.stack.push(Open {
                path,
                children: BTreeMap::new(),
            });
        }
        done
    }

    /// True when a directory the walk is inside holds more than `dir::WINDOW` entries: a
    /// directory that big is served page by page on its own (dir.rs, 5.), so the walk stops.
    pub(super) fn too_big(&self) -> bool {
        self.stack.iter().any(|o| o.children.len() > WINDOW)
    }

    /// The listing ended: every directory still open is complete, the root last.
    pub(super) fn finish(&mut self) -> Vec<Completed> {
        let mut done = Vec::new();
        while let Some(o) = self.stack.pop() {
            done.push((o.path, o.children));
        }
        *self = Self::default();
        done
    }
}

/// Where a walk stands.
#[derive(Debug, Default)]
struct Progress {
    /// The last key handed to the tree, below the walk's root.
    last: String,
    /// Pages read.
    pages: u64,
    /// Ended (listed to the end, failed, or stopped).
    ended: bool,
    /// Directories cached by the walk and not opened since.
    filled: std::collections::HashSet<Ino>,
    /// Keys listed since a directory was last opened from the walk.
    ahead: usize,
    /// Keys the walk may list ahead (4.).
    budget: usize,
    /// Opendirs waiting for the walk: it goes on whatever its budget while there are any.
    waiting: usize,
}

/// One running walk.
#[derive(Debug)]
pub struct Walk {
    /// Path of the directory walked ("" for the mount's root).
    root: String,
    progress: Mutex<Progress>,
    /// A page was read, or the walk ended.
    moved: Notify,
    /// A directory was opened from the walk, or someone waits: the walk may go on.
    room: Notify,
    /// A revalidation of directories answered from the snapshot (remount.rs, 8.): those not
    /// revalidated yet, by path. None for a walk of opendirs.
    pub(super) revalidating: Option<Mutex<Revalidating>>,
}

/// Directories a flat listing revalidates, by path: their inode and the saved entries they
/// were answered with.
pub(super) type Revalidating = HashMap<String, (Ino, Arc<Vec<DirEntry>>)>;

impl Walk {
    fn new(root: String) -> Self {
        Self {
            root,
            progress: Mutex::new(Progress {
                budget: PAGE_SIZE as usize,
                ..Progress::default()
            }),
            moved: Notify::new(),
            room: Notify::new(),
            revalidating: None,
        }
    }

    /// A flat listing of `root` that revalidates the directories of `dirs` below it (remount.rs,
    /// 8.): unpaced, and not offered to opendirs.
    pub(super) fn revalidation(root: String, dirs: Revalidating) -> Self {
        Self {
            revalidating: Some(Mutex::new(dirs)),
            ..Self::new(root)
        }
    }

    /// `path` below the walk's root, if it is strictly below it.
    fn below<'p>(&self, path: &'p str) -> Option<&'p str> {
        if self.root.is_empty() {
            return (!path.is_empty()).then_some(path);
        }
        path.strip_prefix(self.root.as_str())?.strip_prefix('/')
    }

    /// True once the walk is past directory `rel` (or ended): it completed it, or never will.
    fn passed(p: &Progress, rel: &str) -> bool {
        // Keys under `rel/` sort after `rel/` itself (`rel-x` comes before them).
        let dir = format!("{rel}/");
        p.ended || (p.last > dir && !p.last.starts_with(&dir))
    }

    fn end(&self) {
        self.progress.lock().ended = true;
        self.moved.notify_waiters();
    }
}

/// An opendir waiting for a walk, counted until dropped (also if the wait is abandoned).
struct Waiting<'w>(&'w Walk);

impl<'w> Waiting<'w> {
    fn new(walk: &'w Walk) -> Self {
        walk.progress.lock().waiting += 1;
        walk.room.notify_waiters();
        Self(walk)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.progress.lock().waiting -= 1;
    }
}

/// Ends its walk when dropped.
struct Ended(Arc<Walk>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl Fs {
    /// Starts a walk of `ino`'s parent when opening `ino` looks like a step of a recursive
    /// walk (1.).
    pub(super) fn maybe_walk(self: &Arc<Self>, ino: Ino, path: &str) {
        if ino == Ino::ROOT || !self.store.sorted_listings() {
            return;
        }
        let parent = split(path).0.to_string();
        {
            let mut walks = self.walks.lock();
            walks.retain(|w| !w.progress.lock().ended);
            if walks.len() >= MAX_WALKS || walks.iter().any(|w| w.below(path).is_some()) {
                return;
            }
        }
        let dirs = {
            let mut t = self.tables.lock();
            let Some(parent_ino) = t.meta.ino(&parent) else {
                return;
            };
            t.meta.fresh_listing(parent_ino).map_or(0, |entries| {
                entries.iter().filter(|e| e.attr.kind == Kind::Dir).count()
            })
        };
        if dirs < 2 {
            return;
        }
        let walk = Arc::new(Walk::new(parent));
        self.walks.lock().push(Arc::clone(&walk));
        let fs = Arc::clone(self);
        tokio::spawn(async move {
            // Ended however the task ends (a panic included): nobody waits for it then.
            let walk = Ended(walk);
            if let Err(e) = fs.run_walk(&walk.0).await {
                tracing::debug!(root = walk.0.root, "walk stopped: {e}");
            }
        });
    }

    /// The listing of `ino` a running walk is about to complete: waits for at most the
    /// walk's next page (3.). None when no walk covers it or the walk did not get there.
    pub(super) async fn walked_listing(
        &self,
        ino: Ino,
        path: &str,
    ) -> Option<Arc<Vec<super::DirEntry>>> {
        let walk = self
            .walks
            .lock()
            .iter()
            .find(|w| w.below(path).is_some())
            .cloned()?;
        let rel = walk.below(path)?.to_string();
        let waiting = Waiting::new(&walk);
        let start = waiting.0.progress.lock().pages;
        let found = loop {
            let moved = walk.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if let Some(entries) = self.tables.lock().meta.fresh_listing(ino) {
                break Some(entries);
            }
            {
                let p = walk.progress.lock();
                if Walk::passed(&p, &rel) || p.pages > start {
                    break None;
                }
            }
            moved.await;
        };
        drop(waiting);
        found
    }

    /// Directory `ino` was opened: a walk that cached it may run further ahead (4.).
    pub(super) fn opened_dir(&self, ino: Ino) {
        for walk in self.walks.lock().iter() {
            let mut p = walk.progress.lock();
            if p.filled.remove(&ino) {
                p.ahead = 0;
                p.budget = (p.budget * 2).min(WINDOW);
                drop(p);
                walk.room.notify_waiters();
            }
        }
    }

    /// Lists the walk's root flat, page by page, caching each directory as it completes.
    pub(super) async fn run_walk(&self, walk: &Walk) -> Result<(), crate::store::StoreError> {
        let prefix = self.names.dir_prefix(&walk.root);
        let token = self.tables.lock().meta.listing_started();
        let request = |start| ListRequest {
            prefix: prefix.clone(),
            delimiter: None,
            start,
            max_keys: PAGE_SIZE,
        };
        let mut tree = Tree::default();
        let mut last_key: Option<String> = None;
        let mut page = self
            .store
            .list_objects_v2(&request(ListStart::Beginning))
            .await?;
        loop {
            let listed = page.objects.len();
            let full = listed >= PAGE_SIZE as usize;
            let mut done = Vec::new();
            let mut last_rel = None;
            for object in std::mem::take(&mut page.objects) {
                // The follow-up request of list.rs, 4. repeats the page's last key.
                if last_key.as_ref().is_some_and(|k| object.key <= *k) {
                    continue;
                }
                last_key = Some(object.key.clone());
                let Some(rel) = object.key.strip_prefix(prefix.as_str()).map(str::to_string) else {
                    continue;
                };
                done.extend(tree.add(&rel, object));
                last_rel = Some(rel);
            }
            {
                let mut p = walk.progress.lock();
                p.ahead += listed;
                if let Some(rel) = last_rel {
                    p.last = rel;
                }
            }
            if tree.too_big() {
                tracing::debug!(
                    root = walk.root,
                    "walk stopped: a directory too big to cache"
                );
                self.cache_walked(walk, token, done).await;
                return Ok(());
            }
            let next = match page.next_continuation_token.take() {
                Some(token) => Some(ListStart::Token(token)),
                None if full => last_key.clone().map(ListStart::After),
                None => None,
            };
            if next.is_none() {
                // The root's own listing is fresh already (it started the walk), unless the
                // walk revalidates it.
                let root = walk.revalidating.is_some();
                done.extend(
                    tree.finish()
                        .into_iter()
                        .filter(|(rel, _)| root || !rel.is_empty()),
                );
                walk.progress.lock().last = String::from("\u{10ffff}");
            }
            self.cache_walked(walk, token, done).await;
            walk.progress.lock().pages += 1;
            walk.moved.notify_waiters();
            // Those woken run before the next page is asked for (a store that answers at once
            // would otherwise never let them). Asking for the next page while this one is
            // cached did not measure faster on find-1m here (docs/benchmarks.md).
            tokio::task::yield_now().await;
            let Some(next) = next else {
                return Ok(());
            };
            if !self.walk_room(walk).await {
                tracing::debug!(root = walk.root, "walk stopped: nobody read what it listed");
                return Ok(());
            }
            page = self.store.list_objects_v2(&request(next)).await?;
        }
    }

    /// Waits while the walk is `budget` keys ahead and no opendir waits for it (4.); false
    /// for a walk nobody took from for a TTL.
    async fn walk_room(&self, walk: &Walk) -> bool {
        if walk.revalidating.is_some() {
            return true;
        }
        let idle = self.config.metadata_ttl.max(Duration::from_secs(1));
        loop {
            let room = walk.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let p = walk.progress.lock();
                if p.waiting > 0 || p.ahead < p.budget {
                    return true;
                }
            }
            if tokio::time::timeout(idle, room).await.is_err() {
                return false;
            }
        }
    }

    /// Caches the directories a page of the walk completed (2., 6.).
    async fn cache_walked(
        &self,
        walk: &Walk,
        token: super::meta::ListToken,
        mut done: Vec<Completed>,
    ) {
        if let Some(revalidating) = &walk.revalidating {
            // Only the directories answered from the snapshot: nobody asked for the others.
            let wanted = revalidating.lock();
            done.retain(|(rel, _)| wanted.contains_key(&join(&walk.root, rel)));
        }
        // Their empty objects' headers are read in one go (list.rs, 5.).
        let mut batch: Vec<(String, Child)> = Vec::new();
        let mut dirs = Vec::with_capacity(done.len());
        for (rel, children) in done {
            dirs.push((rel, children.len()));
            batch.extend(children);
        }
        read_headers(self.store.as_ref(), &mut batch, &|m| {
            self.headers_unknown(m)
        })
        .await;
        let mut rest = batch.into_iter();
        let mut filled = Vec::new();
        for (rel, len) in dirs {
            let children: Vec<(String, Child)> = rest.by_ref().take(len).collect();
            let path = join(&walk.root, &rel);
            if let Some(revalidating) = &walk.revalidating {
                let Some((ino, old)) = revalidating.lock().remove(&path) else {
                    continue; // not answered from the snapshot: nothing to check
                };
                let start = std::time::SystemTime::now();
                let new = self
                    .listed_page(ino, &path, children, true, token)
                    .and_then(|entries| {
                        self.cache_whole(ino, &path, token, entries);
                        self.tables.lock().meta.listing_since(ino, start)
                    });
                self.revalidated(ino, &old, new);
                continue;
            }
            let ino = {
                let mut t = self.tables.lock();
                let ino = t.meta.ino_for(&path);
                if t.meta.fresh_listing(ino).is_some() {
                    continue; // listed on its own meanwhile
                }
                ino
            };
            let Some(entries) = self.listed_page(ino, &path, children, true, token) else {
                continue;
            };
            self.cache_whole(ino, &path, token, entries);
            if self.tables.lock().meta.fresh_listing(ino).is_some() {
                filled.push(ino);
            }
        }
        walk.progress.lock().filled.extend(filled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::list::list_children;
    use crate::store::memory::MemoryStore;
    use crate::store::ObjectStore;

    /// Every directory a flat walk of `keys` completes has the children a delimited listing
    /// of it gives.
    async fn same_as_delimited(keys: &[&str]) {
        let store = MemoryStore::new();
        for key in keys {
            let body = if key.ends_with("_$folder$") || key.starts_with("e/") {
                ""
            } else {
                "x"
            };
            store.put(key, body);
        }
        let page = store
            .list_objects_v2(&ListRequest {
                prefix: String::new(),
                delimiter: None,
                start: ListStart::Beginning,
                max_keys: 10_000,
            })
            .await
            .unwrap();
        let mut tree = Tree::default();
        let mut done = Vec::new();
        for o in page.objects {
            let key = o.key.clone();
            done.extend(tree.add(&key, o));
        }
        done.extend(tree.finish());
        assert!(!done.is_empty());
        for (rel, children) in done {
            let prefix = if rel.is_empty() {
                String::new()
            } else {
                format!("{rel}/")
            };
            let want = list_children(&store, &prefix).await.unwrap().children;
            let kinds = |c: &BTreeMap<String, Child>| -> Vec<(String, &'static str)> {
                c.iter()
                    .map(|(n, c)| {
                        let k = match c {
                            Child::Dir => "dir",
                            Child::DirObject(_) => "dir object",
                            Child::File(_) => "file",
                        };
                        (n.clone(), k)
                    })
                    .collect()
            };
            assert_eq!(kinds(&children), kinds(&want), "directory {rel:?}");
        }
    }

    #[tokio::test]
    async fn a_flat_walk_gives_every_directory_its_delimited_listing() {
        same_as_delimited(&[
            "a/b/x",
            "a/b-c",
            "a/b/y",
            "a/bb/z",
            "a/",
            "b",
            "b/inner",
            "c//double",
            "c/./dot",
            "c/ok",
            "d/h_$folder$",
            "d/both_$folder$",
            "d/both/in",
            "d/plain_$folder$x",
            "deep/1/2/3/4/f",
            "deep/1/2/g",
            "marker-only/",
            "z",
        ])
        .await;
    }
}
