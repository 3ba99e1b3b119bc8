use std::sync::atomic::Ordering;

use super::*;
use crate::store::memory::MemoryStore;

const PART: u64 = MIN_PART_SIZE;

fn upload(store: &Arc<MemoryStore>, budget: &WriteBudget) -> Upload {
    let tuning = UploadTuning {
        part_size: PART,
        concurrency: 2,
    };
    Upload::new(
        store.clone(),
        "k".into(),
        tuning,
        budget.clone(),
        TaskTracker::new(),
    )
}

fn meta() -> UserMetadata {
    UserMetadata::from([("mode".to_string(), "33188".to_string())])
}

#[tokio::test]
async fn a_small_file_is_one_put_object() {
    let store = Arc::new(MemoryStore::new());
    let budget = WriteBudget::new(64 << 20);
    let mut up = upload(&store, &budget);
    up.write(b"hello", &meta()).await.unwrap();
    let done = up.finish(&meta(), false).await.unwrap();
    assert_eq!(done.size, 5);
    assert_eq!(store.counts.put.load(Ordering::Relaxed), 1);
    assert_eq!(store.counts.part.load(Ordering::Relaxed), 0);
    let (body, metadata) = store.object("k").unwrap();
    assert_eq!(&body[..], b"hello");
    assert_eq!(metadata, meta());
    assert_eq!(
        budget.available(),
        64 << 20,
        "the buffer's budget comes back"
    );
}

#[tokio::test]
async fn a_large_file_streams_parts_within_the_budget() {
    let store = Arc::new(MemoryStore::new());
    let budget = WriteBudget::new(4 * PART);
    let mut up = upload(&store, &budget);
    let data: Vec<u8> = (0..3 * PART as usize + 12_345)
        .map(|i| (i % 251) as u8)
        .collect();
    for chunk in data.chunks(1 << 20) {
        up.write(chunk, &meta()).await.unwrap();
        assert!(up.started() || up.len() < PART);
    }
    let done = up.finish(&meta(), true).await.unwrap();
    assert_eq!(done.size, data.len() as u64);
    assert_eq!(store.counts.part.load(Ordering::Relaxed), 4);
    assert_eq!(store.counts.put.load(Ordering::Relaxed), 0);
    assert_eq!(&store.object("k").unwrap().0[..], &data[..]);
    assert_eq!(store.pending_uploads(), 0);
    assert_eq!(budget.available() as u64, 4 * PART);
}

#[tokio::test]
async fn if_none_match_refuses_an_existing_key() {
    let store = Arc::new(MemoryStore::new());
    store.put("k", "already here");
    let budget = WriteBudget::new(64 << 20);
    let mut up = upload(&store, &budget);
    up.write(b"new", &meta()).await.unwrap();
    let err = up.finish(&meta(), true).await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::PreconditionFailed);
    assert_eq!(&store.object("k").unwrap().0[..], b"already here");
}

#[tokio::test]
async fn a_failed_part_fails_the_upload_and_abort_leaves_nothing() {
    let store = Arc::new(MemoryStore::new());
    let budget = WriteBudget::new(64 << 20);
    let mut up = upload(&store, &budget);
    store.fail_parts.store(1, Ordering::SeqCst);
    let data = vec![7u8; 3 * PART as usize];
    let mut failed = None;
    for chunk in data.chunks(1 << 20) {
        if let Err(e) = up.write(chunk, &meta()).await {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        Some(e) => e,
        None => up.finish(&meta(), false).await.unwrap_err(),
    };
    assert_eq!(err.kind, StoreErrorKind::Unreachable);
    assert_eq!(store.pending_uploads(), 1);
    let pending = up.cancel().expect("an upload to abort");
    abort_with_retries(store.clone(), pending).await;
    assert_eq!(store.pending_uploads(), 0);
    assert!(store.object("k").is_none(), "no partial object");
}

#[test]
fn parts_grow_so_ten_thousand_reach_five_tib() {
    let no_cap = u64::MAX;
    assert_eq!(part_size(8 << 20, 1, no_cap), 8 << 20);
    assert_eq!(part_size(8 << 20, 1000, no_cap), 8 << 20);
    assert_eq!(part_size(8 << 20, 1001, no_cap), 16 << 20);
    assert_eq!(part_size(1 << 30, 10_000, no_cap), MAX_PART_SIZE);
    assert!(reach(8 << 20, no_cap) >= MAX_OBJECT_SIZE);
    assert!(reach(6 << 20, no_cap) >= MAX_OBJECT_SIZE);
    assert!(
        reach(5 << 20, no_cap) < MAX_OBJECT_SIZE,
        "5 MiB parts fall just short"
    );
}

#[test]
fn parts_never_outgrow_the_write_budget() {
    // A 64 MiB budget: parts stop doubling at 64 MiB, so a writer never waits for more
    // permits than exist.
    let cap = 64 << 20;
    assert_eq!(part_size(8 << 20, 3001, cap), 64 << 20);
    assert_eq!(part_size(8 << 20, 10_000, cap), 64 << 20);
    assert!((1..=MAX_PARTS).all(|n| part_size(8 << 20, n, cap) <= cap));
}

#[tokio::test]
async fn a_file_past_the_last_part_is_efbig_not_a_hang() {
    let store = Arc::new(MemoryStore::new());
    // Budget = one part: 10,000 parts of 5 MiB reach 50,000 MiB; pretend we are at the end.
    let budget = WriteBudget::new(PART);
    let mut up = upload(&store, &budget);
    up.next_part = MAX_PARTS + 1;
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), up.write(b"x", &meta()))
        .await
        .expect("no hang")
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::TooLarge);
    assert_eq!(crate::error::errno_for(err.kind), libc::EFBIG);
}

#[tokio::test]
async fn a_lost_part_is_never_completed_around() {
    let store = Arc::new(MemoryStore::new());
    let budget = WriteBudget::new(8 * PART);
    let mut up = upload(&store, &budget);
    up.write(&vec![7u8; 2 * PART as usize + 10], &meta())
        .await
        .unwrap();
    // Part 1's answer goes missing (as a task cancelled by the runtime would).
    while !up.in_flight.is_empty() {
        up.wait_one().await;
    }
    up.done.retain(|p| p.number != 1);
    let err = up.finish(&meta(), false).await.unwrap_err();
    assert!(err.message.contains("gap"), "{err}");
    assert!(store.object("k").is_none(), "no object with a part missing");
}

#[tokio::test]
async fn an_upload_dropped_mid_way_is_aborted_in_a_tracked_task() {
    let store = Arc::new(MemoryStore::new());
    let budget = WriteBudget::new(8 * PART);
    let tasks = TaskTracker::new();
    let tuning = UploadTuning {
        part_size: PART,
        concurrency: 2,
    };
    let mut up = Upload::new(store.clone(), "k".into(), tuning, budget, tasks.clone());
    up.write(&vec![1u8; PART as usize + 1], &meta())
        .await
        .unwrap();
    assert!(up.started());
    // A commit cancelled by a timeout drops its upload.
    drop(up);
    tasks.close();
    tasks.wait().await;
    assert_eq!(store.pending_uploads(), 0, "no multipart upload left");
    assert!(store.object("k").is_none());
}
