//! Directory listings: ListObjectsV2 pages merged into sorted, valid, unique entries.
//!
//! Non-obvious problems:
//! 1. A directory is whatever has keys below `dir/`: a `dir/` marker object or an implicit
//!    prefix. Both arrive as a common prefix in the parent's listing; the marker itself shows up
//!    as an object with an empty name in the directory's own listing and is not a file.
//! 2. Keys that cannot be file names are left out without failing the listing: an empty
//!    component (`a//b`), `.` or `..`, a component over 255 bytes, a NUL byte.
//! 3. A file and a directory of the same name (`x` and `x/y`): the directory wins.
//! 4. SeaweedFS ends a delimited listing early when a page ends exactly on a `dir/` marker (it
//!    says "not truncated"). A full page without a continuation token is therefore followed by
//!    one more request starting after its last entry; duplicates are dropped by the merge.
//! 6. Other tools' directories are read too: Hadoop's (and old S3 tools') `name_$folder$`
//!    object, and the legacy s3fs form, an empty object `name` (no slash) whose Content-Type is
//!    `application/x-directory` or whose mode says directory (known after its HEAD, see 5.).
//!    bucketfs itself writes `name/` markers.
//! 7. S3 Express directory buckets list keys in no particular order
//!    (`ObjectStore::sorted_listings`): there repeated entries are told by name, files are
//!    held until the last page (any page may hold the directory that wins), and only
//!    continuation tokens are followed (the workaround of 4. needs order).
//! 5. Listings carry no headers, and an empty object may be a FIFO, socket or device node,
//!    which only its mode header tells from an empty file: empty objects whose headers are not
//!    known yet are HEADed (16 at a time) before their page is handed out. Empty objects are
//!    rare in most buckets; that is one HEAD each per version.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt};

use crate::store::{ListRequest, ListStart, ObjectMeta, ObjectStore, StoreError};

/// Keys per ListObjectsV2 page: the S3 maximum, so `ls` of N entries costs ceil(N/1000) LISTs.
pub const PAGE_SIZE: i32 = 1000;

/// Longest file name Linux accepts (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// One child of a directory, as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Child {
    /// A directory (marker or implicit prefix).
    Dir,
    /// A file with its listing metadata.
    File(ObjectMeta),
    /// A directory held by an object in another tool's format (see 6.).
    DirObject(ObjectMeta),
}

/// Suffix of Hadoop's directory objects (`name_$folder$`).
pub const FOLDER_SUFFIX: &str = "_$folder$";

/// True when `meta` is a directory in another tool's format: `name_$folder$`, or an empty
/// `name` object typed `application/x-directory` or with a directory mode (see 6.).
pub fn is_dir_object(meta: &ObjectMeta) -> bool {
    if meta.key.ends_with('/') || meta.size != 0 {
        return false;
    }
    if meta.key.ends_with(FOLDER_SUFFIX) {
        return true;
    }
    let typed = meta
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with(super::namespace::DIRECTORY_TYPE));
    let mode = meta.metadata.as_ref().and_then(|m| m.get("mode"));
    let dir_mode = mode
        .and_then(|m| m.trim().parse::<u32>().ok())
        .is_some_and(|m| m & super::posix::S_IFMT == super::posix::S_IFDIR);
    typed || dir_mode
}

/// Can `name` be a file name in the mount?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= NAME_MAX
        && !name.contains('/')
        && !name.contains('\0')
}

/// What one directory listing found.
#[derive(Debug, Default)]
pub struct Listing {
    /// The valid children, sorted by name.
    pub children: BTreeMap<String, Child>,
    /// Whether any key at all starts with the prefix (a marker, or keys left out as invalid):
    /// an empty `children` then is an empty directory, not a vanished one.
    pub exists: bool,
}

/// Lists the children of the directory whose keys start with `prefix` (empty or ending in `/`).
pub async fn list_children(store: &dyn ObjectStore, prefix: &str) -> Result<Listing, StoreError> {
    let mut children = BTreeMap::new();
    let exists = stream_children(
        store,
        prefix,
        |_| true,
        |batch, _| {
            children.extend(batch);
            true
        },
        no_pace,
    )
    .await?;
    Ok(Listing { children, exists })
}

/// Waits until the consumer of a listing wants the next page; false to stop listing.
pub type Pace = futures::future::BoxFuture<'static, bool>;

/// A listing read as fast as pages come.
pub fn no_pace() -> Pace {
    Box::pin(std::future::ready(true))
}

/// Lists the children of `prefix` page by page: after each page, `emit` gets the children no
/// later page can change, sorted, and whether any key exists so far; it returns false to stop.
/// Then `pace` is awaited before the next page (an open directory's window, dir.rs).
/// Returns whether any key at all starts with the prefix. Empty objects for which
/// `unknown_headers` is true are HEADed first (see 5.).
///
/// A file `x` is held back until the listing has passed the key `x/`: a later page could still
/// hold the directory of that name, which wins. Keys arrive sorted, so that is at most the last
/// few files of each page; sorted keys also tell a repeated entry (the follow-up request of
/// problem 4 repeats the last common prefix) from a new one. Unsorted listings: see 7.
pub async fn stream_children(
    store: &dyn ObjectStore,
    prefix: &str,
    unknown_headers: impl Fn(&ObjectMeta) -> bool,
    mut emit: impl FnMut(Vec<(String, Child)>, bool) -> bool,
    pace: impl Fn() -> Pace,
) -> Result<bool, StoreError> {
    let sorted = store.sorted_listings();
    let mut exists = false;
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut last_file: Option<String> = None;
    let mut files_seen: std::collections::HashSet<String> = Default::default();
    let mut held: Vec<(String, ObjectMeta)> = Vec::new();
    let mut start = ListStart::Beginning;
    loop {
        let request = ListRequest {
            prefix: prefix.to_string(),
            delimiter: Some("/".to_string()),
            start,
            max_keys: PAGE_SIZE,
        };
        let page = store.list_objects_v2(&request).await?;
        let returned = page.objects.len() + page.common_prefixes.len();
        exists |= returned > 0;
        let last = page
            .objects
            .last()
            .map(|o| o.key.clone())
            .max(page.common_prefixes.last().cloned());
        let mut batch = Vec::new();
        for object in page.objects {
            let repeated = if sorted {
                last_file.as_ref().is_some_and(|k| object.key <= *k)
            } else {
                !files_seen.insert(object.key.clone())
            };
            if repeated {
                continue;
            }
            last_file = Some(object.key.clone());
            match object.key.strip_prefix(prefix) {
                Some(name) if name.ends_with(FOLDER_SUFFIX) && object.size == 0 => {
                    let dir = &name[..name.len() - FOLDER_SUFFIX.len()];
                    if valid_name(dir) && dirs.insert(dir.to_string()) {
                        batch.push((dir.to_string(), Child::DirObject(object)));
                    }
                }
                Some(name) if valid_name(name) => held.push((name.to_string(), object)),
                _ => {}
            }
        }
        for common in &page.common_prefixes {
            let name = common
                .strip_prefix(prefix)
                .and_then(|n| n.strip_suffix('/'))
                .unwrap_or("");
            if valid_name(name) && dirs.insert(name.to_string()) {
                batch.push((name.to_string(), Child::Dir));
            }
        }
        let next = match page.next_continuation_token {
            Some(token) => Some(ListStart::Token(token)),
            None if sorted && returned >= PAGE_SIZE as usize => last.clone().map(ListStart::After),
            None => None,
        };
        let mut still_held = Vec::new();
        for (name, meta) in held.drain(..) {
            let settled = next.is_none()
                || sorted
                    && last
                        .as_deref()
                        .is_some_and(|last| format!("{prefix}{name}/").as_str() <= last);
            if dirs.contains(&name) {
                continue;
            } else if settled {
                batch.push((name, Child::File(meta)));
            } else {
                still_held.push((name, meta));
            }
        }
        held = still_held;
        batch.sort_by(|a, b| a.0.cmp(&b.0));
        read_headers(store, &mut batch, &unknown_headers).await;
        let go_on = emit(batch, exists) && pace().await;
        match next {
            Some(next) if go_on => start = next,
            _ => return Ok(exists),
        }
    }
}

/// HEADs the empty files of `batch` whose headers are unknown (see 5.). A HEAD that fails
/// leaves the entry as listed: the listing itself does not fail for it.
pub(super) async fn read_headers(
    store: &dyn ObjectStore,
    batch: &mut [(String, Child)],
    unknown: &impl Fn(&ObjectMeta) -> bool,
) {
    let wanted: Vec<(usize, String)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, (_, child))| match child {
            Child::File(m) if m.size == 0 && m.metadata.is_none() && unknown(m) => {
                Some((i, m.key.clone()))
            }
            _ => None,
        })
        .collect();
    let heads: Vec<(usize, Result<Option<ObjectMeta>, StoreError>)> = stream::iter(wanted)
        .map(|(i, key)| async move { (i, store.head_object(&key).await) })
        .buffer_unordered(HEAD_CONCURRENCY)
        .collect()
        .await;
    for (i, head) in heads {
        if let Ok(Some(head)) = head {
            if head.size == 0 {
                batch[i].1 = if is_dir_object(&head) {
                    Child::DirObject(head)
                } else {
                    Child::File(head)
                };
            }
        }
    }
}

/// HEADs in flight while a listing reads the headers of empty objects.
const HEAD_CONCURRENCY: usize = 16;

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use bytes::Bytes;

    use super::*;
    use crate::store::memory::MemoryStore;

    async fn names(store: &MemoryStore, prefix: &str) -> Vec<(String, bool)> {
        list_children(store, prefix)
            .await
            .unwrap()
            .children
            .into_iter()
            .map(|(n, c)| (n, c == Child::Dir))
            .collect()
    }

    /// The same keys in a bucket that lists in order and in one that does not (S3 Express).
    fn both(keys: &[String]) -> (MemoryStore, MemoryStore) {
        let (sorted, unsorted) = (MemoryStore::new(), MemoryStore::unsorted());
        for key in keys {
            sorted.put(key, "x");
            unsorted.put(key, "x");
        }
        (sorted, unsorted)
    }

    #[tokio::test]
    async fn unsorted_pages_give_the_same_children_and_the_directory_still_wins() {
        // Three pages: 2,400 files, directories, and names that are both (the directory wins,
        // wherever in the listing its file comes).
        let mut keys: Vec<String> = (0..2400).map(|i| format!("d/f{i:04}")).collect();
        for i in 0..40 {
            keys.push(format!("d/both{i}"));
            keys.push(format!("d/both{i}/inner"));
            keys.push(format!("d/dir{i}/x"));
        }
        keys.push("d/dir0/".into());
        let (sorted, unsorted) = both(&keys);
        assert!(!unsorted.sorted_listings());
        let want = list_children(&sorted, "d/").await.unwrap().children;
        assert_eq!(want.len(), 2400 + 80);
        assert!(want.get("both7") == Some(&Child::Dir));
        // The scramble really scrambles: the first page is not in order.
        let page = unsorted
            .list_objects_v2(&ListRequest {
                prefix: "d/".into(),
                delimiter: Some("/".into()),
                start: ListStart::Beginning,
                max_keys: PAGE_SIZE,
            })
            .await
            .unwrap();
        assert!(page.objects.windows(2).any(|w| w[0].key > w[1].key));
        assert!(page.next_continuation_token.is_some());
        let got = list_children(&unsorted, "d/").await.unwrap().children;
        assert_eq!(got, want);
        // Streamed: no file is handed out whose directory comes later, and each name once.
        let mut streamed: Vec<(String, Child)> = Vec::new();
        stream_children(
            &unsorted,
            "d/",
            |_| true,
            |batch, _| {
                streamed.extend(batch);
                true
            },
            no_pace,
        )
        .await
        .unwrap();
        let mut names: Vec<&String> = streamed.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), streamed.len(), "a name handed out twice");
        assert!(streamed
            .iter()
            .all(|(n, c)| !n.starts_with("both") || *c == Child::Dir));
        assert_eq!(streamed.len(), want.len());
    }

    #[tokio::test]
    async fn implicit_dirs_markers_and_files_merge_sorted() {
        let s = MemoryStore::new();
        s.put("b.txt", "b");
        s.put("a/x", "x");
        s.put("marker/", "");
        s.put("a-file", "1");
        s.put("z/deep/er", "1");
        assert_eq!(
            names(&s, "").await,
            vec![
                ("a".into(), true),
                ("a-file".into(), false),
                ("b.txt".into(), false),
                ("marker".into(), true),
                ("z".into(), true)
            ]
        );
        assert_eq!(
            names(&s, "marker/").await,
            vec![],
            "the marker is not a file"
        );
        assert_eq!(names(&s, "z/").await, vec![("deep".into(), true)]);
        assert!(
            list_children(&s, "marker/").await.unwrap().exists,
            "an empty marker dir exists"
        );
        assert!(!list_children(&s, "gone/").await.unwrap().exists);
    }

    #[tokio::test]
    async fn hostile_keys_are_skipped_and_directory_shadows_file() {
        let s = MemoryStore::new();
        s.put("d/ok", "1");
        s.put("d//double", "1");
        s.put("d/./dot", "1");
        s.put("d/../up", "1");
        s.put("d/.", "1");
        s.put(&format!("d/{}", "n".repeat(256)), "1");
        s.put(&format!("d/{}", "m".repeat(255)), "1");
        s.put("d/shadow", "file");
        s.put("d/shadow/inner", "1");
        s.put("d/data-dir/", "data in a marker");
        let got = names(&s, "d/").await;
        assert_eq!(
            got,
            vec![
                ("data-dir".into(), true),
                ("m".repeat(255), false),
                ("ok".into(), false),
                ("shadow".into(), true),
            ]
        );
        assert_eq!(names(&s, "d/data-dir/").await, vec![]);
    }

    #[tokio::test]
    async fn other_tools_directory_objects_are_directories() {
        use crate::store::PutOptions;
        let s = MemoryStore::new();
        s.put("h/hadoop_$folder$", "");
        s.put("h/both_$folder$", "");
        s.put("h/both/inner", "1");
        s.put("h/both", "a file the directory hides");
        s.put("h/plain_$folder$", "data: not a directory object");
        let legacy = PutOptions {
            content_type: Some("application/x-directory".into()),
            ..PutOptions::default()
        };
        s.put_object("h/s3fs", Bytes::new(), &legacy).await.unwrap();
        s.put("h/empty", "");
        let children = list_children(&s, "h/").await.unwrap().children;
        let kinds: Vec<(&str, &str)> = children
            .iter()
            .map(|(n, c)| {
                let kind = match c {
                    Child::Dir => "dir",
                    Child::DirObject(_) => "dir object",
                    Child::File(_) => "file",
                };
                (n.as_str(), kind)
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("both", "dir object"),
                ("empty", "file"),
                ("hadoop", "dir object"),
                ("plain_$folder$", "file"),
                ("s3fs", "dir object"),
            ]
        );
        // The empty objects cost one HEAD each (the _$folder$ ones need none).
        assert_eq!(s.counts.head.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn pages_cost_ceil_n_over_1000_lists() {
        let s = MemoryStore::new();
        for i in 0..2500 {
            s.put(&format!("big/f{i:05}"), "x");
        }
        let children = list_children(&s, "big/").await.unwrap().children;
        assert_eq!(children.len(), 2500);
        assert_eq!(s.counts.list.load(Ordering::Relaxed), 3);
        assert_eq!(s.counts.head.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_full_page_without_token_is_followed_up() {
        // The memory store never drops the token, so drive the quirk path directly: exactly
        // 1000 entries make a full last page, and the follow-up request finds nothing more.
        let s = MemoryStore::new();
        for i in 0..999 {
            s.put(&format!("q/f{i:04}"), "x");
        }
        s.put("q/zz/", "");
        s.put("q/zz/inner", "x");
        let children = list_children(&s, "q/").await.unwrap().children;
        assert_eq!(children.len(), 1000);
        assert_eq!(children.get("zz"), Some(&Child::Dir));
        assert_eq!(s.counts.list.load(Ordering::Relaxed), 2);
    }
}
