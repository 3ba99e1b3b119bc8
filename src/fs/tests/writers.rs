//! Unit tests of files open for writing: streams, staging, commits, shared writers.

use super::*;

#[tokio::test]
async fn a_new_file_is_listed_at_once_and_stored_at_flush_with_s3fs_headers() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "p/");
    let (attr, fh) = fs
        .create(Ino::ROOT, "new.txt", 0o640, (1000, 100), true, by(0))
        .await
        .unwrap();
    fs.writers().write(fh, 0, b"hello ").await.unwrap();
    fs.writers().write(fh, 6, b"world").await.unwrap();
    let dir = fs.opendir(Ino::ROOT).await.unwrap();
    let names: Vec<String> = readdir_all(&fs, dir)
        .await
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, vec!["new.txt"], "listed before the commit");
    assert!(
        store.object("p/new.txt").is_none(),
        "nothing stored before the commit"
    );
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    let (body, metadata) = store.object("p/new.txt").unwrap();
    assert_eq!(&body[..], b"hello world");
    assert_eq!(metadata.get("mode").unwrap(), &(0o100640).to_string());
    assert_eq!(metadata.get("uid").unwrap(), "1000");
    assert!(metadata.contains_key("mtime"));
    let now = fs.getattr(attr.ino).await.unwrap();
    assert_eq!(
        (now.size, now.perm, now.uid, now.gid),
        (11, 0o640, 1000, 100)
    );
}

#[tokio::test]
async fn writes_into_existing_bytes_append_and_truncate_are_staged() {
    let store = Arc::new(MemoryStore::new());
    store.put("f", "0123456789");
    let fs = fs_over(&store, "");
    let f = fs.lookup(Ino::ROOT, "f").await.unwrap();
    let fh = open(&fs, f.ino, WRITE).await.unwrap();
    fs.writers().write(fh, 2, b"ab").await.unwrap();
    fs.writers().write(fh, 10, b"++").await.unwrap();
    assert_eq!(
        &fs.read(f.ino, fh, 0, 100).await.unwrap()[..],
        b"01ab456789++"
    );
    // Another handle reads the written bytes too.
    assert_eq!(read_all(&fs, f.ino).await, b"01ab456789++");
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(&store.object("f").unwrap().0[..], b"01ab456789++");
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(4),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(&store.object("f").unwrap().0[..], b"01ab");
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(&store.object("f").unwrap().0[..], b"");
}

#[tokio::test]
async fn exclusive_create_loses_to_a_concurrent_creator() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    let (_, fh) = fs
        .create(Ino::ROOT, "x", 0o644, (0, 0), true, by(0))
        .await
        .unwrap();
    fs.writers().write(fh, 0, b"mine").await.unwrap();
    store.put("x", "theirs");
    assert_eq!(
        fs.writers().flush(fh).await.unwrap_err().errno,
        libc::EEXIST
    );
    fs.release(fh).await;
    assert_eq!(&store.object("x").unwrap().0[..], b"theirs");
}

#[tokio::test]
async fn unlinking_a_file_being_written_stores_nothing() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    let (_, fh) = fs
        .create(Ino::ROOT, "tmp", 0o600, (0, 0), false, by(0))
        .await
        .unwrap();
    fs.writers().write(fh, 0, b"scratch").await.unwrap();
    fs.unlink(Ino::ROOT, "tmp").await.unwrap();
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    assert!(store.object("tmp").is_none());
    assert_eq!(
        fs.lookup(Ino::ROOT, "tmp").await.unwrap_err().errno,
        libc::ENOENT
    );
}

#[tokio::test]
async fn a_multipart_upload_is_not_copied_again_to_move_its_mtime() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    let (_, fh) = fs
        .create(Ino::ROOT, "big", 0o644, (0, 0), false, by(0))
        .await
        .unwrap();
    let chunk = vec![1u8; 1 << 20];
    for i in 0..7u64 {
        fs.writers().write(fh, i << 20, &chunk).await.unwrap();
    }
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    assert!(store.counts.part.load(Ordering::Relaxed) >= 2, "multipart");
    assert_eq!(store.counts.copy.load(Ordering::Relaxed), 0, "no self-copy");
    assert_eq!(store.object("big").unwrap().0.len(), 7 << 20);
}

#[tokio::test]
async fn stopping_commits_open_files_and_refuses_new_changes() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    let (_, fh) = fs
        .create(Ino::ROOT, "open.txt", 0o644, (0, 0), false, by(0))
        .await
        .unwrap();
    fs.writers().write(fh, 0, b"not closed yet").await.unwrap();
    assert!(store.object("open.txt").is_none());

    assert_eq!(fs.stop().await, 0);
    assert_eq!(&store.object("open.txt").unwrap().0[..], b"not closed yet");
    let refused = fs
        .create(Ino::ROOT, "new.txt", 0o644, (0, 0), false, by(0))
        .await;
    assert_eq!(refused.unwrap_err().errno, libc::EROFS);
    assert_eq!(
        fs.mkdir(Ino::ROOT, "d", 0o755, (0, 0))
            .await
            .unwrap_err()
            .errno,
        libc::EROFS
    );
    // The handle open before the stop still works; its close commits what it wrote since.
    fs.writers().write(fh, 14, b", now it is").await.unwrap();
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(
        &store.object("open.txt").unwrap().0[..],
        b"not closed yet, now it is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_opens_racing_share_one_writer_and_lose_no_write() {
    use crate::store::faulty::FaultyStore;
    let memory = Arc::new(MemoryStore::new());
    memory.put("f", vec![b'.'; 8192]);
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    // TTL 0: every open HEADs the object, which opens the window between "no writer yet"
    // and "writer registered".
    let fs = fs_with(faulty.clone(), Duration::ZERO, writes());
    let ino = fs.lookup(Ino::ROOT, "f").await.unwrap().ino;
    let heads = faulty.calls("HeadObject");
    faulty.hold("HeadObject", 2);
    let opens: Vec<_> = (0..2)
        .map(|_| {
            let fs = Arc::clone(&fs);
            tokio::spawn(async move { open(&fs, ino, WRITE).await.unwrap() })
        })
        .collect();
    until(|| faulty.calls("HeadObject") >= heads + 2).await;
    faulty.release();
    let mut fhs = Vec::new();
    for open in opens {
        fhs.push(open.await.unwrap());
    }
    fs.writers().write(fhs[0], 0, b"AAAA").await.unwrap();
    fs.writers().write(fhs[1], 4096, b"BBBB").await.unwrap();
    for fh in fhs {
        fs.writers().flush(fh).await.unwrap();
        fs.release(fh).await;
    }
    let (body, _) = memory.object("f").unwrap();
    assert_eq!(&body[..4], b"AAAA", "the first open's write is kept");
    assert_eq!(
        &body[4096..4100],
        b"BBBB",
        "the second open's write is kept"
    );
}

#[tokio::test]
async fn a_failed_staging_step_returns_the_errno_and_keeps_the_bytes() {
    let store = Arc::new(MemoryStore::new());
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let fs = fs_with(dyn_store, Duration::from_secs(60), writes_with(16));
    let (_, fh) = fs
        .create(Ino::ROOT, "f", 0o644, (0, 0), false, by(0))
        .await
        .unwrap();
    fs.writers().write(fh, 0, &[b'x'; 100]).await.unwrap();
    // A write behind the stream needs a staging copy, which does not fit: ENOSPC, and
    // nothing is lost or poisoned.
    let err = fs.writers().write(fh, 10, b"yy").await.unwrap_err();
    assert_eq!(err.errno, libc::ENOSPC);
    fs.writers().write(fh, 100, b"z").await.unwrap();
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    let (body, _) = store.object("f").unwrap();
    assert_eq!(body.len(), 101);
    assert_eq!(&body[..], &[&[b'x'; 100][..], b"z"].concat()[..]);
}

#[tokio::test]
async fn a_shell_redirect_costs_one_put_and_never_shows_an_empty_file() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    // bash: open, dup2 onto stdout, close the original (a flush), write, close (a flush).
    let (_, fh) = fs
        .create(Ino::ROOT, "out", 0o644, (0, 0), false, by(0))
        .await
        .unwrap();
    fs.writers().flush(fh).await.unwrap();
    assert!(store.object("out").is_none(), "no empty object first");
    fs.writers().write(fh, 0, b"content").await.unwrap();
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(&store.object("out").unwrap().0[..], b"content");
    assert_eq!(store.counts.put.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_new_file_left_empty_is_published_at_its_last_release() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    let (attr, fh) = fs
        .create(Ino::ROOT, "touched", 0o644, (0, 0), false, by(0))
        .await
        .unwrap();
    fs.writers().flush(fh).await.unwrap();
    assert!(store.object("touched").is_none());
    assert_eq!(
        fs.getattr(attr.ino).await.unwrap().size,
        0,
        "it exists here"
    );
    fs.release(fh).await;
    assert_eq!(store.object("touched").unwrap().0.len(), 0);
    assert_eq!(store.counts.put.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn only_the_openers_close_commits() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    let (_, fh) = fs
        .create(Ino::ROOT, "f", 0o644, (0, 0), false, by(100))
        .await
        .unwrap();
    fs.writers().write(fh, 0, b"half").await.unwrap();
    // A forked child (pid 200) closes its inherited copy: nothing is published.
    fs.writers().close(fh, 200, |tid| tid).await.unwrap();
    assert!(store.object("f").is_none());
    fs.writers().write(fh, 4, b" and the rest").await.unwrap();
    fs.writers().close(fh, 100, |tid| tid).await.unwrap();
    assert_eq!(&store.object("f").unwrap().0[..], b"half and the rest");
    fs.release(fh).await;
    assert_eq!(store.counts.put.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_on_another_handle_is_not_held_behind_a_commit() {
    use crate::store::faulty::FaultyStore;
    let memory = Arc::new(MemoryStore::new());
    memory.put("f", "old version");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let fs = fs_with(faulty.clone(), Duration::from_secs(60), writes());
    let ino = fs.lookup(Ino::ROOT, "f").await.unwrap().ino;
    let reader = open(&fs, ino, READ).await.unwrap();
    let writer = open(&fs, ino, WRITE).await.unwrap();
    fs.writers().write(writer, 0, b"new").await.unwrap();
    faulty.hold("PutObject", 1);
    let commit = {
        let fs = Arc::clone(&fs);
        tokio::spawn(async move { fs.writers().flush(writer).await })
    };
    until(|| faulty.calls("PutObject") == 1).await;
    let read = tokio::time::timeout(Duration::from_secs(5), fs.read(ino, reader, 0, 100))
        .await
        .expect("the read does not wait for the upload")
        .unwrap();
    assert_eq!(&read[..], b"old version", "the version it opened");
    faulty.release();
    commit.await.unwrap().unwrap();
    fs.release(writer).await;
    assert_eq!(&memory.object("f").unwrap().0[..], b"new version");
}

#[tokio::test]
async fn stop_commits_every_open_file_new_empty_ones_too() {
    let store = Arc::new(MemoryStore::new());
    let fs = fs_over(&store, "");
    let mut fhs = Vec::new();
    for name in ["a", "b", "c"] {
        let (_, fh) = fs
            .create(Ino::ROOT, name, 0o644, (0, 0), false, by(0))
            .await
            .unwrap();
        fhs.push(fh);
    }
    fs.writers().write(fhs[0], 0, b"a").await.unwrap();
    assert_eq!(fs.stop().await, 0);
    assert_eq!(&store.object("a").unwrap().0[..], b"a");
    assert_eq!(store.object("b").unwrap().0.len(), 0, "empty new files too");
    assert_eq!(store.object("c").unwrap().0.len(), 0);
}

#[tokio::test]
async fn an_unlink_that_fails_leaves_the_open_file_as_it_was() {
    use crate::store::faulty::FaultyStore;
    use crate::store::StoreErrorKind;
    let memory = Arc::new(MemoryStore::new());
    memory.put("f", "old");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let fs = fs_with(faulty.clone(), Duration::from_secs(60), writes());
    let ino = fs.lookup(Ino::ROOT, "f").await.unwrap().ino;
    let fh = open(&fs, ino, WRITE).await.unwrap();
    faulty.fail("DeleteObject", 1, StoreErrorKind::Unreachable);
    assert_eq!(
        fs.unlink(Ino::ROOT, "f").await.unwrap_err().errno,
        libc::EIO
    );
    // Still there, still written to the bucket at close.
    assert_eq!(fs.lookup(Ino::ROOT, "f").await.unwrap().ino, ino);
    fs.writers().write(fh, 0, b"new").await.unwrap();
    fs.writers().flush(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(&memory.object("f").unwrap().0[..], b"new");
    // And unlinked for real while only read: the name is gone at once, the object stays for
    // its reader until the last close (deferred.rs), then goes.
    let fh = open(&fs, ino, READ).await.unwrap();
    fs.unlink(Ino::ROOT, "f").await.unwrap();
    assert!(fs.lookup(Ino::ROOT, "f").await.is_err());
    assert_eq!(&fs.read(ino, fh, 0, 10).await.unwrap()[..], b"new");
    assert_eq!(fs.getattr(ino).await.unwrap().nlink, 0);
    assert!(memory.object("f").is_some());
    fs.release(fh).await;
    assert!(memory.object("f").is_none());
    assert!(fs.lookup(Ino::ROOT, "f").await.is_err());
}

/// An O_TRUNC open of a file whose rename is copying it: the new stream waits for the move
/// and lands under the new name; the old name does not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_begun_during_a_rename_lands_under_the_new_name() {
    use crate::store::faulty::FaultyStore;
    let memory = Arc::new(MemoryStore::new());
    memory.put("doc", vec![b'.'; 8192]);
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let fs = fs_with(faulty.clone(), Duration::from_secs(60), writes());
    let ino = fs.lookup(Ino::ROOT, "doc").await.unwrap().ino;
    let held = open(&fs, ino, WRITE).await.unwrap();
    faulty.hold("CopyObject", 1);
    let rename = {
        let fs = Arc::clone(&fs);
        tokio::spawn(async move {
            fs.rename(Ino::ROOT, "doc", Ino::ROOT, "doc2", RenameMode::default())
                .await
        })
    };
    until(|| faulty.calls("CopyObject") >= 1).await;
    let truncating = {
        let fs = Arc::clone(&fs);
        let mode = OpenMode {
            truncate: true,
            ..WRITE
        };
        tokio::spawn(async move { open(&fs, ino, mode).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    faulty.release();
    rename.await.unwrap().unwrap();
    let fh = truncating.await.unwrap().unwrap();
    fs.writers().write(fh, 0, b"new bytes").await.unwrap();
    for fh in [fh, held] {
        fs.writers().flush(fh).await.unwrap();
        fs.release(fh).await;
    }
    assert!(memory.object("doc").is_none(), "the old name came back");
    assert_eq!(&memory.object("doc2").unwrap().0[..], b"new bytes");
}
