//! Unit tests of `Meta`: its events, caps and fences.

use std::time::SystemTime;

use super::*;

fn attr(ino: Ino) -> Attr {
    Attr {
        ino,
        kind: Kind::File,
        size: 1,
        mtime: SystemTime::UNIX_EPOCH,
        atime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        rdev: 0,
        nlink: 1,
        perm: 0o644,
        uid: 0,
        gid: 0,
    }
}

fn entries(meta: &mut Meta, dir: &str, names: &[&str]) -> Vec<DirEntry> {
    names
        .iter()
        .map(|n| {
            let ino = meta.seen(&join(dir, n), Kind::File, None);
            DirEntry {
                name: n.to_string(),
                attr: attr(ino),
            }
        })
        .collect()
}

const TTL: Duration = Duration::from_secs(60);

#[test]
fn a_listing_that_raced_a_change_is_not_cached_as_complete() {
    let mut m = Meta::new(TTL, TTL);
    let d = m.ino_for("d");
    let token = m.listing_started();
    // A commit lands while the LIST pages are on their way.
    let ino = m.ino_for("d/new");
    m.created("d/new", Kind::File, None, attr(ino));
    let listed = entries(&mut m, "d", &["a"]);
    assert!(!m.listed(d, token, listed.clone()));
    assert_eq!(m.cached_child(d, "new"), Cached::Unknown, "ask the store");
    let token = m.listing_started();
    assert!(m.listed(d, token, listed));
    assert_eq!(m.cached_child(d, "zzz"), Cached::Missing);
}

#[test]
fn changes_update_the_cached_listing_in_place() {
    let mut m = Meta::new(TTL, TTL);
    let d = m.ino_for("d");
    let token = m.listing_started();
    let listed = entries(&mut m, "d", &["a", "c"]);
    assert!(m.listed(d, token, listed));
    let b = m.ino_for("d/b");
    m.created("d/b", Kind::File, None, attr(b));
    assert_eq!(m.cached_child(d, "b"), Cached::Entry(attr(b)));
    m.removed("d/a");
    assert_eq!(m.cached_child(d, "a"), Cached::Missing);
    let c = m.ino("d/c").unwrap();
    m.renamed("d/c", "d/e", attr(c));
    assert_eq!(m.cached_child(d, "c"), Cached::Missing);
    assert_eq!(m.cached_child(d, "e"), Cached::Entry(attr(c)));
    assert_eq!(m.stats().listed_entries, 2);
    m.stale("d/e");
    assert_eq!(m.cached_child(d, "e"), Cached::Unknown);
}

#[test]
fn forgotten_inodes_are_freed_with_their_attributes() {
    let mut m = Meta::new(TTL, TTL);
    let f = m.seen("x/f", Kind::File, None);
    assert_eq!(m.looked_up("x/f"), f);
    m.looked_up("x/f");
    m.forget(f, 1);
    assert!(m.fresh_node(f).is_some(), "still held once");
    m.forget(f, 1);
    assert!(m.fresh_node(f).is_none());
    assert_eq!(m.path(f), None);
    assert_eq!(m.stats().inodes, 1, "only the root is left");
}

#[test]
fn a_listing_keeps_its_children_until_it_goes() {
    let mut m = Meta::new(TTL, TTL);
    let d = m.looked_up("d");
    let token = m.listing_started();
    let listed = entries(&mut m, "d", &["a", "b"]);
    let a = listed[0].attr.ino;
    assert!(m.listed(d, token, listed));
    m.looked_up("d/a");
    m.forget(a, 1);
    assert_eq!(
        m.path(a).as_deref(),
        Some("d/a"),
        "named by a cached listing"
    );
    // The directory is forgotten: its listing goes, and the children with it.
    m.forget(d, 1);
    let stats = m.stats();
    assert_eq!((stats.inodes, stats.nodes, stats.listings), (1, 0, 0));
}

#[test]
fn a_forgotten_directory_drops_its_listing_though_its_parent_names_it() {
    let mut m = Meta::new(TTL, TTL);
    let root_token = m.listing_started();
    let dirs = entries(&mut m, "", &["d"]);
    assert!(m.listed(Ino::ROOT, root_token, dirs));
    let d = m.looked_up("d");
    let token = m.listing_started();
    let children = entries(&mut m, "d", &["a", "b"]);
    assert!(m.listed(d, token, children));
    m.forget(d, 1);
    assert_eq!(
        m.path(d).as_deref(),
        Some("d"),
        "named by the root's listing"
    );
    let stats = m.stats();
    assert_eq!(
        (stats.listings, stats.inodes),
        (1, 2),
        "root listing, root and d"
    );
}

#[test]
fn misses_and_listings_are_capped() {
    let mut m = Meta::new(TTL, TTL);
    for i in 0..MAX_MISSES + 100 {
        m.missed(Ino::ROOT, &format!("absent{i}"));
    }
    assert_eq!(m.stats().misses, MAX_MISSES);
    for d in 0..3 {
        let dir = m.looked_up(&format!("big{d}"));
        let names: Vec<String> = (0..MAX_LISTED_ENTRIES / 2)
            .map(|i| format!("f{i}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let token = m.listing_started();
        let listed = entries(&mut m, &format!("big{d}"), &names);
        assert!(m.listed(dir, token, listed));
    }
    let stats = m.stats();
    assert!(stats.listed_entries <= MAX_LISTED_ENTRIES);
    assert_eq!(stats.listings, 2);
    assert!(
        stats.inodes <= 4 + MAX_LISTED_ENTRIES,
        "children of evicted listings are freed: {stats:?}"
    );
}

fn object(key: &str, etag: &str) -> ObjectMeta {
    ObjectMeta {
        key: key.into(),
        size: 1,
        etag: etag.into(),
        last_modified: SystemTime::UNIX_EPOCH,
        metadata: None,
        content_type: None,
        headers: Default::default(),
    }
}

fn list(m: &mut Meta, dir: &str, children: &[(&str, Kind)]) -> Ino {
    let ino = m.looked_up(dir);
    let token = m.listing_started();
    let listed = children
        .iter()
        .map(|(name, kind)| {
            let child = m.seen(&join(dir, name), *kind, None);
            DirEntry {
                name: name.to_string(),
                attr: Attr {
                    kind: *kind,
                    ..attr(child)
                },
            }
        })
        .collect();
    assert!(m.listed(ino, token, listed));
    ino
}

fn created(etag: &str) -> Elsewhere {
    Elsewhere::Created {
        etag: Some(etag.into()),
    }
}

#[test]
fn a_change_elsewhere_forgets_the_name_unless_memory_agrees() {
    let mut m = Meta::new(TTL, TTL);
    let d = list(&mut m, "d", &[("a", Kind::File)]);
    let a = m.seen("d/a", Kind::File, Some(object("d/a", "\"e1\"")));
    assert!(
        m.changed_elsewhere("d/a", &created("e1")).is_empty(),
        "our own commit: the ETag is known"
    );
    assert!(
        m.changed_elsewhere("d/zz", &Elsewhere::Removed).is_empty(),
        "a removal already known"
    );
    let notes = m.changed_elsewhere("d/a", &created("e2"));
    assert!(notes.contains(&KernelNote::Inode(a)));
    assert!(notes.contains(&KernelNote::Entry {
        parent: d,
        name: "a".into(),
        deleted: None
    }));
    assert!(
        notes.contains(&KernelNote::Inode(d)),
        "the directory's times"
    );
    assert_eq!(m.cached_child(d, "a"), Cached::Unknown);
    assert!(m.fresh_node(a).is_none());
    m.missed(d, "new");
    m.changed_elsewhere("d/new", &created("e3"));
    assert_eq!(m.cached_child(d, "new"), Cached::Unknown, "the miss goes");
}

#[test]
fn implicit_directories_appear_and_vanish_with_their_keys() {
    let mut m = Meta::new(TTL, TTL);
    list(&mut m, "", &[("d", Kind::Dir), ("e", Kind::Dir)]);
    // A first key below a new prefix: the root's listing must show `n` now.
    let notes = m.changed_elsewhere("n/m/f", &created("x"));
    assert_eq!(m.cached_child(Ino::ROOT, "n"), Cached::Unknown);
    assert!(notes.contains(&KernelNote::Entry {
        parent: Ino::ROOT,
        name: "n".into(),
        deleted: None
    }));
    // A new key in a known directory leaves the root alone.
    list(&mut m, "", &[("d", Kind::Dir), ("e", Kind::Dir)]);
    m.changed_elsewhere("d/g", &created("x"));
    assert!(matches!(m.cached_child(Ino::ROOT, "d"), Cached::Entry(_)));
    // The last key of implicit `d` goes: so may `d`.
    let d = list(&mut m, "d", &[("f", Kind::File)]);
    let f = m.ino("d/f").unwrap();
    let notes = m.changed_elsewhere("d/f", &Elsewhere::Removed);
    assert!(notes.contains(&KernelNote::Entry {
        parent: d,
        name: "f".into(),
        deleted: Some(f)
    }));
    assert_eq!(m.cached_child(Ino::ROOT, "d"), Cached::Unknown);
    // A key of `e`, which has others: `e` stays, and the root's listing with it.
    list(&mut m, "", &[("d", Kind::Dir), ("e", Kind::Dir)]);
    list(&mut m, "e", &[("f", Kind::File), ("g", Kind::File)]);
    m.changed_elsewhere("e/f", &Elsewhere::Removed);
    assert!(matches!(m.cached_child(Ino::ROOT, "e"), Cached::Entry(_)));
}

#[test]
fn shorter_ttls_expire_what_was_cached_and_name_what_the_kernel_holds() {
    let mut m = Meta::new(TTL, TTL);
    let d = list(&mut m, "d", &[("a", Kind::File)]);
    let a = m.looked_up("d/a");
    assert!(
        m.set_ttls(TTL * 2, TTL).is_empty(),
        "longer: nothing to forget"
    );
    let notes = m.set_ttls(Duration::ZERO, Duration::ZERO);
    assert!(notes.contains(&KernelNote::Inode(a)));
    assert!(notes.contains(&KernelNote::Entry {
        parent: d,
        name: "a".into(),
        deleted: None
    }));
    assert!(m.fresh_listing(d).is_none(), "expired by the new rule");
    assert!(m.fresh_node(a).is_none());
}

/// The directories whose saved listing must be written or deleted, by path.
fn work(m: &mut Meta) -> Vec<(String, Option<Vec<String>>)> {
    let mut work: Vec<_> = m
        .take_dirty(|path| format!("{path}/"))
        .into_iter()
        .map(|w| match w {
            SnapshotWork::Save(l) => (
                l.path,
                Some(l.entries.into_iter().map(|e| e.name).collect()),
            ),
            SnapshotWork::Remove(path) => (path, None),
        })
        .collect();
    work.sort();
    work
}

#[test]
fn the_snapshot_writer_is_told_what_changed_and_what_went() {
    let mut m = Meta::new(TTL, TTL);
    m.keep_snapshot();
    let d = m.ino_for("d");
    let token = m.listing_started();
    let listed: Vec<DirEntry> = ["a", "b"]
        .iter()
        .map(|n| {
            let path = format!("d/{n}");
            let ino = m.seen(&path, Kind::File, Some(object(&path, "e")));
            DirEntry {
                name: n.to_string(),
                attr: attr(ino),
            }
        })
        .collect();
    assert!(m.listed(d, token, listed));
    let names = |n: &[&str]| Some(n.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(work(&mut m), vec![("d".to_string(), names(&["a", "b"]))]);
    assert_eq!(work(&mut m), vec![], "taken once");
    // This mount's own change: saved again, with it.
    let ino = m.ino_for("d/c");
    m.created("d/c", Kind::File, Some(object("d/c", "e")), attr(ino));
    assert_eq!(
        work(&mut m),
        vec![("d".to_string(), names(&["a", "b", "c"]))]
    );
    // A file not committed yet cannot be saved: the directory is not saved then.
    let ino = m.ino_for("d/pending");
    m.entry_changed("d/pending", attr(ino));
    assert_eq!(work(&mut m), vec![]);
    m.removed("d/pending");
    assert_eq!(
        work(&mut m),
        vec![("d".to_string(), names(&["a", "b", "c"]))]
    );
    // Changed and dropped before the writer came: the saved one goes.
    m.removed("d/c");
    m.forget(d, 0);
    m.unlisted(d);
    assert_eq!(work(&mut m), vec![("d".to_string(), None)]);
    // Changed elsewhere, below a directory whose listing is not in memory: gone too, up to
    // the root.
    m.changed_unlisted("x/y/z");
    assert!(m.marked_gone("x/y") && m.marked_gone("x") && m.marked_gone(""));
    assert_eq!(
        work(&mut m),
        vec![
            ("".to_string(), None),
            ("x".to_string(), None),
            ("x/y".to_string(), None)
        ]
    );
}

#[test]
fn a_listing_read_before_a_time_is_not_one_read_since() {
    let mut m = Meta::new(TTL, TTL);
    let d = m.ino_for("d");
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let token = m.listing_started();
    let saved = entries(&mut m, "d", &["a"]);
    assert!(m.listed_from_snapshot(d, token, saved, long_ago));
    let start = SystemTime::now();
    assert!(
        m.listing_since(d, start).is_none(),
        "the saved listing is older"
    );
    // A revalidation fenced by this mount's own change leaves the saved one in place.
    let token = m.listing_started();
    let ino = m.ino_for("d/new");
    m.created("d/new", Kind::File, None, attr(ino));
    let listed = entries(&mut m, "d", &["a", "b"]);
    assert!(!m.listed(d, token, listed));
    assert!(m.listing_since(d, start).is_none(), "still not revalidated");
    let token = m.listing_started();
    let listed = entries(&mut m, "d", &["a", "b", "new"]);
    assert!(m.listed(d, token, listed));
    assert_eq!(m.listing_since(d, start).map(|l| l.len()), Some(3));
}
