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
//! 3. An opendir of a directory the walk has not completed yet waits for the next page of
//!    the lane listing it (7.), not longer: a directory whose subtree spans many pages (or an
//!    `ls` of one subdirectory that started a walk by mistake) is listed on its own as
//!    before. A lane counts as past a directory only once what its page completed is
//!    cached, so an opendir never gives up on a directory being cached.
//! 4. Paced: the walk lists at most `budget` keys past the last directory opened from it,
//!    and as far as it must while an opendir waits for it (3.). The budget starts at one
//!    page and doubles with each directory opened from the walk, up to `dir::WINDOW`; a
//!    wrong guess costs a page or two. The lanes after the first also stop while the walk
//!    holds `budget` entries nobody opened: they list what the walker reads later. A walk
//!    nobody takes from for a metadata TTL stops (what it cached expires as usual).
//! 5. Not on stores that list out of order (S3 Express): 2. needs sorted keys. And memory
//!    stays bounded: a lane inside a directory of more than `dir::WINDOW` entries gives its
//!    range up (that directory is windowed, never cached whole), and at most `MAX_WALKS` run
//!    at once.
//! 6. Each completed directory is fenced like any listing (meta.rs, 2. and 7.): a range's
//!    token is taken before its first page, so a change made meanwhile keeps the directory
//!    out of the cache.
//! 7. One flat listing is a chain of requests, each waiting for the last: its speed is one
//!    request at a time. So a walk lists in up to `LANES` lanes at once, each over its own
//!    range of keys, cut at the root's directories (known from the root's listing): the
//!    first lane starts at the beginning, and after its first page (which tells the keys
//!    per directory) the others take the next ranges of about `RANGE_KEYS` keys, in order,
//!    each lane the next free range when done with its own. A range of one directory is
//!    listed with that directory's prefix; one of several starts after the key `name/` of
//!    its first and stops at the first key of the next range (a page at most past it). The
//!    walker reads the ranges in order, as the lanes complete them. 200,000 keys on
//!    SeaweedFS (2 cores): `find` 6.4 s with one lane, 4.5 s with four; a raw flat walk
//!    3.9 s (docs/benchmarks.md).

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

/// Flat listings one walk runs at once, each over its own range of keys (7.).
const LANES: usize = 4;

/// Keys a lane's range is cut to hold, by the keys per directory seen so far (7.): a range
/// of several directories costs at most one page more than its keys (the page that crosses
/// its end), a range of one directory none.
const RANGE_KEYS: usize = 4 * PAGE_SIZE as usize;

/// A range of keys below a walk's root: from `from` ("" the beginning) up to `to` (None: to
/// the end).
#[derive(Debug, Default)]
struct Range {
    from: String,
    to: Option<String>,
    /// The range is one directory's subtree (`from` is `name/`), listed with that prefix.
    exact: bool,
}

impl Range {
    fn holds(&self, key: &str) -> bool {
        self.from.as_str() <= key && self.to.as_deref().is_none_or(|to| key < to)
    }
}

/// One flat listing of a walk (7.).
#[derive(Debug, Default)]
struct Lane {
    /// The range it lists now.
    range: Range,
    /// The last key of the range handed to the tree.
    last: String,
    /// Pages read, in every range it listed.
    pages: u64,
    /// The range is listed (or given up): its directories are cached or never will be.
    done: bool,
    /// Opendirs waiting for this lane: it goes on whatever its budget while there are any.
    waiting: usize,
}

/// Where a walk stands.
#[derive(Debug, Default)]
struct Progress {
    lanes: Vec<Lane>,
    /// Where the subtrees of the root's directories start (`name/`), sorted: ranges are cut
    /// there (7.).
    starts: Vec<String>,
    /// `starts[next..]` is in no lane's range yet.
    next: usize,
    /// Keys and directories of the ranges listed so far: keys per directory, to cut ranges.
    range_keys: usize,
    range_dirs: usize,
    /// Keys per directory guessed from the first page, until a range is listed.
    guess: usize,
    /// Ended (listed to the end, failed, or stopped).
    ended: bool,
    /// Directories cached by the walk and not opened since, and their entries.
    filled: HashMap<Ino, usize>,
    /// The entries of `filled`: what the walk holds that nobody read yet.
    unread: usize,
    /// Keys listed since a directory was last opened from the walk.
    ahead: usize,
    /// Keys the walk may list ahead, and hold unread (4.).
    budget: usize,
    /// Opendirs waiting for a range no lane lists: every lane goes on while there are any.
    waiting: usize,
}

impl Progress {
    /// The lane listing the range `key` lies in.
    fn lane_of(&self, key: &str) -> Option<usize> {
        self.lanes
            .iter()
            .position(|l| !l.done && l.range.holds(key))
    }

    /// Pages read by lane `lane`, or by every lane.
    fn pages(&self, lane: Option<usize>) -> u64 {
        match lane.and_then(|i| self.lanes.get(i)) {
            Some(l) => l.pages,
            None => self.lanes.iter().map(|l| l.pages).sum(),
        }
    }

    /// True once the walk is past directory `rel`: it completed it, or never will.
    fn passed(&self, rel: &str) -> bool {
        if self.ended {
            return true;
        }
        // Keys under `rel/` sort after `rel/` itself (`rel-x` comes before them).
        let dir = format!("{rel}/");
        match self.lane_of(&dir) {
            Some(i) => {
                let last = &self.lanes[i].last;
                *last > dir && !last.starts_with(&dir)
            }
            // In a range listed already, or in none yet.
            None => self.starts.get(self.next).is_none_or(|next| dir < *next),
        }
    }

    /// The next range, cut to about `RANGE_KEYS` keys by the keys per directory seen so far;
    /// None once every directory is in a range.
    fn claim(&mut self) -> Option<Range> {
        let from = self.starts.get(self.next)?.clone();
        let per_dir = match self.range_dirs {
            0 => self.guess,
            dirs => self.range_keys / dirs,
        };
        let count = (RANGE_KEYS / per_dir.max(1)).max(1);
        let end = (self.next + count).min(self.starts.len());
        let range = Range {
            from,
            to: self.starts.get(end).cloned(),
            exact: end == self.next + 1,
        };
        self.next = end;
        Some(range)
    }

    /// The first lane read its first page, `listed` keys up to `last`, and more follow: its
    /// range ends with the root's directory it is in, and up to `LANES - 1` lanes take the
    /// next ranges. Returns the new lanes.
    fn spread(&mut self, last: &str, listed: usize) -> Vec<usize> {
        let within = match last.find('/') {
            Some(slash) => &last[..=slash],
            None => last,
        };
        let entered = self.starts.partition_point(|s| s.as_str() <= within);
        let Some(to) = self.starts.get(entered).cloned() else {
            return Vec::new();
        };
        self.guess = listed / entered.max(1);
        if let Some(first) = self.lanes.first_mut() {
            first.range.to = Some(to);
        }
        self.next = entered;
        let mut new = Vec::new();
        while self.lanes.len() < LANES {
            let Some(range) = self.claim() else {
                break;
            };
            self.lanes.push(Lane {
                range,
                ..Lane::default()
            });
            new.push(self.lanes.len() - 1);
        }
        new
    }

    /// Lane `lane` listed its range, `keys` keys of it.
    fn range_listed(&mut self, lane: usize, keys: usize) {
        let Some(l) = self.lanes.get_mut(lane) else {
            return;
        };
        l.done = true;
        l.last = String::from("\u{10ffff}");
        let start = |key: &str| self.starts.partition_point(|s| s.as_str() < key);
        let to = l.range.to.as_deref().map_or(self.starts.len(), start);
        self.range_dirs += to.saturating_sub(start(&l.range.from));
        self.range_keys += keys;
    }

    /// True while lane `lane` may list its next page (4., 7.): an opendir waits for it, or
    /// the walk is less than its budget ahead of the walker; the lane whose range comes first
    /// (the one the walker reads next) is not held back by what the others hold unread.
    fn room(&self, lane: usize) -> bool {
        let Some(l) = self.lanes.get(lane) else {
            return false;
        };
        let first = self
            .lanes
            .iter()
            .filter(|l| !l.done)
            .map(|l| l.range.from.as_str())
            .min()
            == Some(l.range.from.as_str());
        l.waiting > 0
            || self.waiting > 0
            || (self.ahead < self.budget && (first || self.unread < self.budget))
    }
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
    /// A walk of `root`, whose directories' subtrees start at `starts` (`name/`).
    fn new(root: String, mut starts: Vec<String>) -> Self {
        starts.sort_unstable();
        Self {
            root,
            progress: Mutex::new(Progress {
                // The first lane lists everything until it spreads.
                lanes: vec![Lane::default()],
                next: starts.len(),
                starts,
                budget: PAGE_SIZE as usize,
                ..Progress::default()
            }),
            moved: Notify::new(),
            room: Notify::new(),
            revalidating: None,
        }
    }

    /// A flat listing of `root` that revalidates the directories of `dirs` below it (remount.rs,
    /// 8.): one lane, unpaced, and not offered to opendirs.
    pub(super) fn revalidation(root: String, dirs: Revalidating) -> Self {
        Self {
            revalidating: Some(Mutex::new(dirs)),
            ..Self::new(root, Vec::new())
        }
    }

    /// `path` below the walk's root, if it is strictly below it.
    fn below<'p>(&self, path: &'p str) -> Option<&'p str> {
        if self.root.is_empty() {
            return (!path.is_empty()).then_some(path);
        }
        path.strip_prefix(self.root.as_str())?.strip_prefix('/')
    }

    fn end(&self) {
        self.progress.lock().ended = true;
        self.moved.notify_waiters();
    }
}

/// An opendir waiting for a walk, counted until dropped (also if the wait is abandoned): for
/// the lane it waits for, or for any.
struct Waiting<'w>(&'w Walk, Option<usize>);

impl<'w> Waiting<'w> {
    fn new(walk: &'w Walk, lane: Option<usize>) -> Self {
        {
            let mut p = walk.progress.lock();
            match lane.and_then(|i| p.lanes.get_mut(i)) {
                Some(l) => l.waiting += 1,
                None => p.waiting += 1,
            }
        }
        walk.room.notify_waiters();
        Self(walk, lane)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut p = self.0.progress.lock();
        match self.1.and_then(|i| p.lanes.get_mut(i)) {
            Some(l) => l.waiting = l.waiting.saturating_sub(1),
            None => p.waiting = p.waiting.saturating_sub(1),
        }
    }
}

/// Ends its walk when dropped: by the last of its lanes to stop.
struct Ended(Arc<Walk>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// How a lane's listing of a range stopped.
enum Stop {
    /// The range is listed, or given up for a directory too big: the lane takes the next.
    Listed,
    /// Nobody read what the walk listed for a TTL: the lane stops.
    Idle,
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
        let starts: Vec<String> = {
            let mut t = self.tables.lock();
            let Some(parent_ino) = t.meta.ino(&parent) else {
                return;
            };
            t.meta
                .fresh_listing(parent_ino)
                .map_or(Vec::new(), |entries| {
                    entries
                        .iter()
                        .filter(|e| e.attr.kind == Kind::Dir)
                        .map(|e| format!("{}/", e.name))
                        .collect()
                })
        };
        if starts.len() < 2 {
            return;
        }
        let walk = Arc::new(Walk::new(parent, starts));
        self.walks.lock().push(Arc::clone(&walk));
        Arc::clone(self).spawn_lane(Arc::new(Ended(walk)), 0);
    }

    /// Runs lane `lane` of a walk in a task of its own: its range, then the next ones (7.).
    fn spawn_lane(self: Arc<Self>, walk: Arc<Ended>, lane: usize) {
        tokio::spawn(async move {
            let spread = |new: Vec<usize>| {
                for lane in new {
                    Arc::clone(&self).spawn_lane(Arc::clone(&walk), lane);
                }
            };
            loop {
                match self.list_range(&walk.0, lane, &spread).await {
                    Ok(Stop::Listed) => {}
                    Ok(Stop::Idle) => {
                        tracing::debug!(root = walk.0.root, "walk stopped: nobody read it");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(root = walk.0.root, "walk stopped: {e}");
                        break;
                    }
                }
                let mut p = walk.0.progress.lock();
                let Some(range) = p.claim() else {
                    break;
                };
                if let Some(l) = p.lanes.get_mut(lane) {
                    l.range = range;
                    l.last.clear();
                    l.done = false;
                }
            }
            if let Some(l) = walk.0.progress.lock().lanes.get_mut(lane) {
                l.done = true;
            }
            walk.0.moved.notify_waiters();
            // The walk ends with its last lane (`Ended`), also if this task panicked.
        });
    }

    /// The listing of `ino` a running walk is about to complete: waits for at most the next
    /// page of the lane listing it (3.). None when no walk covers it or the walk did not get
    /// there.
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
        let (lane, start) = {
            let p = walk.progress.lock();
            let lane = p.lane_of(&format!("{rel}/"));
            (lane, p.pages(lane))
        };
        let waiting = Waiting::new(&walk, lane);
        let found = loop {
            let moved = walk.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if let Some(entries) = self.tables.lock().meta.fresh_listing(ino) {
                break Some(entries);
            }
            {
                let p = walk.progress.lock();
                if p.passed(&rel) || p.pages(lane) > start {
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
            if let Some(entries) = p.filled.remove(&ino) {
                p.unread = p.unread.saturating_sub(entries);
                p.ahead = 0;
                p.budget = (p.budget * 2).min(WINDOW);
                drop(p);
                walk.room.notify_waiters();
            }
        }
    }

    /// Lists the walk's root flat in one lane, page by page, caching each directory as it
    /// completes: the revalidation of remount.rs, 8.
    pub(super) async fn run_walk(&self, walk: &Walk) -> Result<(), crate::store::StoreError> {
        self.list_range(walk, 0, &|_| {}).await.map(|_| ())
    }

    /// Lists lane `lane`'s range flat, page by page, caching each directory as it completes;
    /// after the first lane's first page, hands the new lanes of `Progress::spread` to
    /// `spread` (7.).
    async fn list_range(
        &self,
        walk: &Walk,
        lane: usize,
        spread: &(dyn Fn(Vec<usize>) + Sync),
    ) -> Result<Stop, crate::store::StoreError> {
        let root_prefix = self.names.dir_prefix(&walk.root);
        let Some((from, mut to, exact)) = walk
            .progress
            .lock()
            .lanes
            .get(lane)
            .map(|l| (l.range.from.clone(), l.range.to.clone(), l.range.exact))
        else {
            return Ok(Stop::Idle);
        };
        let token = self.tables.lock().meta.listing_started();
        let prefix = match exact {
            true => format!("{root_prefix}{from}"),
            false => root_prefix.clone(),
        };
        let request = |start| ListRequest {
            prefix: prefix.clone(),
            delimiter: None,
            start,
            max_keys: PAGE_SIZE,
        };
        // A range from `name/` starts after the key `name/` (the marker: the root's entry,
        // which the walk does not cache). Not after `name`: SeaweedFS skips the whole
        // directory `name/` then, where S3 starts with its first key.
        let first = match exact || from.is_empty() {
            true => ListStart::Beginning,
            false => ListStart::After(format!("{root_prefix}{from}")),
        };
        let mut tree = Tree::default();
        let mut last_key: Option<String> = None;
        let mut keys = 0;
        // A lane's range waits for room like its next pages: a wrong guess of a walk (an `ls`
        // of one subdirectory) costs the first lane's page or two, not one per lane.
        if !self.walk_room(walk, lane).await {
            return Ok(Stop::Idle);
        }
        let mut page = self.store.list_objects_v2(&request(first)).await?;
        loop {
            let listed = page.objects.len();
            let full = listed >= PAGE_SIZE as usize;
            let mut done = Vec::new();
            let mut last_rel = None;
            let mut past_end = false;
            for object in std::mem::take(&mut page.objects) {
                // The follow-up request of list.rs, 4. repeats the page's last key.
                if last_key.as_ref().is_some_and(|k| object.key <= *k) {
                    continue;
                }
                last_key = Some(object.key.clone());
                let Some(rel) = object
                    .key
                    .strip_prefix(root_prefix.as_str())
                    .map(str::to_string)
                else {
                    continue;
                };
                if to.as_ref().is_some_and(|to| rel >= *to) {
                    past_end = true;
                    break;
                }
                keys += 1;
                done.extend(tree.add(&rel, object));
                last_rel = Some(rel);
            }
            walk.progress.lock().ahead += listed;
            let too_big = tree.too_big();
            if too_big {
                tracing::debug!(
                    root = walk.root,
                    "walk gave up a range: a directory too big"
                );
            }
            let next = match page.next_continuation_token.take() {
                Some(token) => Some(ListStart::Token(token)),
                None if full => last_key.clone().map(ListStart::After),
                None => None,
            };
            let end = too_big || past_end || next.is_none();
            // The directories still open are complete, unless the range was given up.
            if end && !too_big {
                // The root's own listing is fresh already (it started the walk), unless the
                // walk revalidates it; a lane's range holds only part of it anyway.
                let root = walk.revalidating.is_some();
                done.extend(
                    tree.finish()
                        .into_iter()
                        .filter(|(rel, _)| root || !rel.is_empty()),
                );
            }
            self.cache_walked(walk, token, done).await;
            {
                // Past a directory only once what it completed is cached (3.).
                let mut p = walk.progress.lock();
                if let Some(l) = p.lanes.get_mut(lane) {
                    l.pages += 1;
                    if let Some(rel) = &last_rel {
                        l.last.clone_from(rel);
                    }
                }
                if end {
                    p.range_listed(lane, keys);
                }
            }
            walk.moved.notify_waiters();
            // Those woken run before the next page is asked for (a store that answers at once
            // would otherwise never let them). Asking for the next page while this one is
            // cached did not measure faster on find-1m here (docs/benchmarks.md).
            tokio::task::yield_now().await;
            let Some(next) = next.filter(|_| !end) else {
                return Ok(Stop::Listed);
            };
            if lane == 0 && walk.revalidating.is_none() && to.is_none() {
                let new = last_rel
                    .as_deref()
                    .map(|last| walk.progress.lock().spread(last, keys))
                    .unwrap_or_default();
                if !new.is_empty() {
                    to = walk
                        .progress
                        .lock()
                        .lanes
                        .first()
                        .and_then(|l| l.range.to.clone());
                    spread(new);
                }
            }
            if !self.walk_room(walk, lane).await {
                return Ok(Stop::Idle);
            }
            page = self.store.list_objects_v2(&request(next)).await?;
        }
    }

    /// Waits while lane `lane` has no room (`Progress::room`); false for a walk nobody took
    /// from for a TTL.
    async fn walk_room(&self, walk: &Walk, lane: usize) -> bool {
        if walk.revalidating.is_some() {
            return true;
        }
        let idle = self.config.metadata_ttl.max(Duration::from_secs(1));
        loop {
            let room = walk.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if walk.progress.lock().room(lane) {
                return true;
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
                filled.push((ino, len));
            }
        }
        let mut p = walk.progress.lock();
        for (ino, len) in filled {
            if p.filled.insert(ino, len).is_none() {
                p.unread += len;
            }
        }
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

    fn range(p: &Progress, lane: usize) -> (&str, Option<&str>, bool) {
        let r = &p.lanes[lane].range;
        (r.from.as_str(), r.to.as_deref(), r.exact)
    }

    #[test]
    fn lanes_take_the_next_ranges_in_order_cut_by_the_keys_per_directory() {
        let dirs: Vec<String> = (0..20).rev().map(|i| format!("d{i:02}/")).collect();
        let walk = Walk::new(String::new(), dirs);
        let mut p = walk.progress.into_inner();
        // Alone, the first lane lists everything: nothing is past it, nothing is free.
        assert_eq!(range(&p, 0), ("", None, false));
        assert!(!p.passed("d05"));
        assert!(p.claim().is_none());
        // Its first page, 1,000 keys all in d00: ranges of 4 directories (about 4,000 keys).
        assert_eq!(p.spread("d00/x/f999", 1000), vec![1, 2, 3]);
        assert_eq!(range(&p, 0), ("", Some("d01/"), false));
        assert_eq!(range(&p, 1), ("d01/", Some("d05/"), false));
        assert_eq!(range(&p, 2), ("d05/", Some("d09/"), false));
        assert_eq!(range(&p, 3), ("d09/", Some("d13/"), false));
        // Past a directory: behind its lane's last key, or in a range listed already; not
        // in a range no lane took yet.
        p.lanes[2].last = String::from("d06/a/f1");
        assert!(p.passed("d05"));
        assert!(p.passed("d05/z"));
        assert!(!p.passed("d06"));
        assert!(!p.passed("d06/a"));
        assert!(!p.passed("d07"));
        assert!(!p.passed("d13"));
        // d01-d04 held 40,000 keys: from now on a range is one directory, listed by prefix.
        p.range_listed(1, 40_000);
        assert!(p.passed("d03"));
        assert_eq!(p.lane_of("d03/"), None);
        let next = p.claim().map(|r| (r.from, r.to, r.exact));
        assert_eq!(next, Some(("d13/".into(), Some("d14/".into()), true)));
        let mut last = None;
        while let Some(r) = p.claim() {
            last = Some((r.from, r.to));
        }
        assert_eq!(last, Some(("d19/".into(), None)));
    }

    #[test]
    fn only_the_first_lane_lists_past_what_the_walker_left_unread() {
        let dirs: Vec<String> = (10..26).map(|i| format!("d{i}/")).collect();
        let walk = Walk::new(String::new(), dirs);
        let mut p = walk.progress.into_inner();
        assert_eq!(p.spread("d10/f", 1000), vec![1, 2, 3]);
        assert!(p.room(0) && p.room(1));
        p.unread = p.budget;
        assert!(p.room(0), "the walker reads the first range next");
        assert!(!p.room(1) && !p.room(3));
        p.lanes[1].waiting = 1;
        assert!(p.room(1), "an opendir waits for it");
        // Once the first lane's range is listed, the next one's lane comes first.
        p.range_listed(0, 1000);
        assert!(p.room(1));
        p.lanes[1].waiting = 0;
        assert!(p.room(1) && !p.room(2));
        p.ahead = p.budget;
        assert!(!p.room(1));
        // A page from the last key of the first page on: nothing more to spread to.
        let walk = Walk::new(String::new(), vec!["a/".into(), "b/".into()]);
        let mut p = walk.progress.into_inner();
        assert!(p.spread("b/x", 1000).is_empty());
        assert_eq!(range(&p, 0), ("", None, false));
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
