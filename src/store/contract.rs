//! The contract every `ObjectStore` keeps: the S3 behaviour bucketfs relies on, written once
//! and run against the in-memory store (unit tests) and against a real S3 server
//! (`tests/store_contract.rs`), so the fake the unit tests use cannot drift from S3.
//!
//! Non-obvious problems:
//! 1. Each case works under its own key prefix, so the cases share one bucket and never see
//!    each other's keys.
//! 2. Cases return what went wrong instead of panicking: a run reports every broken case at
//!    once, with the store's own error text.
//! 3. Only behaviour that S3 and the reference server agree on is asserted (a repeated
//!    CompleteMultipartUpload, which SeaweedFS answers again, is left out).
//! 4. Compiled for tests only: the unit tests take it through `cfg(test)`, and
//!    `tests/store_contract.rs` includes this file by path (it names what it uses through
//!    `crate::store` and `crate::upload`, which that test maps to the library's), so none of
//!    it ships in the binary.

use bytes::Bytes;

use crate::store::{
    CompletedPart, CopySource, ListRequest, ListStart, ObjectStore, PutOptions, StandardHeaders,
    StoreError, StoreErrorKind, UserMetadata,
};
use crate::upload::MIN_PART_SIZE;

type CaseResult = Result<(), String>;

fn check(ok: bool, what: impl FnOnce() -> String) -> CaseResult {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn err(e: StoreError) -> String {
    format!("unexpected error: {e}")
}

fn expect_kind<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    kind: StoreErrorKind,
    what: &str,
) -> CaseResult {
    match result {
        Err(e) if e.kind == kind => Ok(()),
        Err(e) => Err(format!("{what}: expected {kind:?}, got {:?}: {e}", e.kind)),
        Ok(v) => Err(format!("{what}: expected {kind:?}, got Ok({v:?})")),
    }
}

fn meta(pairs: &[(&str, &str)]) -> UserMetadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn put(
    store: &dyn ObjectStore,
    key: &str,
    body: &[u8],
    m: UserMetadata,
) -> Result<String, String> {
    let options = PutOptions {
        metadata: m,
        content_type: Some("text/plain".into()),
        if_none_match: false,
    };
    store
        .put_object(key, Bytes::copy_from_slice(body), &options)
        .await
        .map_err(err)
}

/// Runs every case under `prefix` (which must be empty); returns the broken ones, by name.
pub async fn run_all(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let mut broken = Vec::new();
    macro_rules! case {
        ($name:ident) => {
            if let Err(e) = $name(store, &format!("{prefix}{}/", stringify!($name))).await {
                broken.push(format!("{}: {e}", stringify!($name)));
            }
        };
    }
    case!(head_get_and_metadata_round_trip);
    case!(missing_keys);
    case!(ranged_gets);
    case!(an_empty_object_has_no_range);
    case!(conditional_requests);
    case!(listing_pages_continue_and_roll_up);
    case!(odd_keys_list_back_exactly);
    case!(multipart_parts_in_order_complete);
    case!(multipart_parts_out_of_order_are_refused);
    case!(multipart_small_parts_are_refused_as_on_aws);
    case!(copies_keep_or_replace_metadata);
    broken
}

async fn head_get_and_metadata_round_trip(store: &dyn ObjectStore, p: &str) -> CaseResult {
    let key = format!("{p}f");
    let etag = put(
        store,
        &key,
        b"hello",
        meta(&[("mode", "33188"), ("uid", "7")]),
    )
    .await?;
    let head = store.head_object(&key).await.map_err(err)?;
    let head = head.ok_or("HEAD of a stored key says missing")?;
    check(head.size == 5, || format!("size {}", head.size))?;
    check(
        head.etag.trim_matches('"') == etag.trim_matches('"'),
        || format!("HEAD ETag {} differs from PUT's {etag}", head.etag),
    )?;
    let m = head.metadata.unwrap_or_default();
    check(
        m.get("mode").map(String::as_str) == Some("33188")
            && m.get("uid").map(String::as_str) == Some("7"),
        || format!("metadata {m:?}"),
    )?;
    let body = store
        .get_object_range(&key, &head.etag, 0..5)
        .await
        .map_err(err)?;
    check(&body[..] == b"hello", || format!("body {body:?}"))
}

async fn missing_keys(store: &dyn ObjectStore, p: &str) -> CaseResult {
    let key = format!("{p}absent");
    let head = store.head_object(&key).await.map_err(err)?;
    check(head.is_none(), || "HEAD of a missing key found it".into())?;
    expect_kind(
        store.get_object_range(&key, "\"x\"", 0..1).await,
        StoreErrorKind::NotFound,
        "GET of a missing key",
    )?;
    // Deleting what is not there succeeds, as on S3.
    store.delete_object(&key).await.map_err(err)
}

async fn ranged_gets(store: &dyn ObjectStore, p: &str) -> CaseResult {
    let key = format!("{p}r");
    let body: Vec<u8> = (0..100u8).collect();
    let etag = put(store, &key, &body, UserMetadata::new()).await?;
    let mid = store
        .get_object_range(&key, &etag, 10..20)
        .await
        .map_err(err)?;
    check(mid[..] == body[10..20], || format!("bytes 10-19: {mid:?}"))?;
    // A range past the end is cut at the end.
    let tail = store
        .get_object_range(&key, &etag, 90..200)
        .await
        .map_err(err)?;
    check(tail[..] == body[90..], || {
        format!("bytes 90-: {} bytes", tail.len())
    })?;
    expect_kind(
        store.get_object_range(&key, &etag, 100..101).await,
        StoreErrorKind::InvalidRange,
        "a range starting at the end",
    )?;
    let pieces = store
        .get_object_pieces(&key, &etag, 0..100, 30)
        .await
        .map_err(err)?;
    let lens: Vec<usize> = pieces.iter().map(Bytes::len).collect();
    check(lens == [30, 30, 30, 10] && pieces.concat() == body, || {
        format!("pieces of 30: {lens:?}")
    })?;
    // Into a caller's buffer: a range past the end fills what the object holds.
    let mut out = vec![0xEEu8; 40];
    let got = store
        .get_object_into(&key, &etag, 80..120, &mut out)
        .await
        .map_err(err)?;
    check(got == 20 && out[..20] == body[80..], || {
        format!("bytes 80- into a buffer of 40: {got} bytes")
    })?;
    expect_kind(
        store
            .get_object_into(&key, "\"other\"", 0..10, &mut out)
            .await,
        StoreErrorKind::PreconditionFailed,
        "a GET into a buffer of another version",
    )
}

async fn an_empty_object_has_no_range(store: &dyn ObjectStore, p: &str) -> CaseResult {
    let key = format!("{p}empty");
    let etag = put(store, &key, b"", UserMetadata::new()).await?;
    let head = store.head_object(&key).await.map_err(err)?;
    check(head.is_some_and(|h| h.size == 0), || {
        "HEAD of an empty object".into()
    })?;
    expect_kind(
        store.get_object_range(&key, &etag, 0..1).await,
        StoreErrorKind::InvalidRange,
        "bytes=0-0 of an empty object",
    )
}

async fn conditional_requests(store: &dyn ObjectStore, p: &str) -> CaseResult {
    let key = format!("{p}c");
    let old = put(store, &key, b"one", UserMetadata::new()).await?;
    let new = put(store, &key, b"two", UserMetadata::new()).await?;
    check(old != new, || "a new version kept its ETag".into())?;
    expect_kind(
        store.get_object_range(&key, &old, 0..3).await,
        StoreErrorKind::PreconditionFailed,
        "GET If-Match with the old ETag",
    )?;
    let excl = PutOptions {
        if_none_match: true,
        ..PutOptions::default()
    };
    expect_kind(
        store
            .put_object(&key, Bytes::from_static(b"x"), &excl)
            .await,
        StoreErrorKind::PreconditionFailed,
        "PUT If-None-Match on an existing key",
    )?;
    store
        .put_object(&format!("{p}fresh"), Bytes::from_static(b"x"), &excl)
        .await
        .map_err(err)?;
    let source = CopySource {
        key: &key,
        etag: &old,
        size: 0,
        headers: &StandardHeaders::NONE,
    };
    expect_kind(
        store.copy_object(source, &format!("{p}copy"), None).await,
        StoreErrorKind::PreconditionFailed,
        "CopyObject with x-amz-copy-source-if-match of the old ETag",
    )
}

async fn listing_pages_continue_and_roll_up(store: &dyn ObjectStore, p: &str) -> CaseResult {
    for k in ["a", "b", "c", "d/x", "d/y", "e"] {
        put(store, &format!("{p}{k}"), b"1", UserMetadata::new()).await?;
    }
    let mut names = Vec::new();
    let mut start = ListStart::Beginning;
    let mut pages = 0;
    loop {
        let request = ListRequest {
            prefix: p.to_string(),
            delimiter: Some("/".into()),
            start,
            max_keys: 2,
        };
        let page = store.list_objects_v2(&request).await.map_err(err)?;
        pages += 1;
        names.extend(page.objects.iter().map(|o| o.key[p.len()..].to_string()));
        names.extend(
            page.common_prefixes
                .iter()
                .map(|c| c[p.len()..].to_string()),
        );
        match page.next_continuation_token {
            Some(token) => start = ListStart::Token(token),
            None => break,
        }
        if pages > 10 {
            return Err("a listing of 5 entries did not end in 10 pages".into());
        }
    }
    names.sort();
    check(names == ["a", "b", "c", "d/", "e"], || {
        format!("listed {names:?}")
    })?;
    check(pages == 3, || format!("{pages} pages of 2 for 5 entries"))?;
    let after = ListRequest {
        prefix: p.to_string(),
        delimiter: None,
        start: ListStart::After(format!("{p}c")),
        max_keys: 1000,
    };
    let page = store.list_objects_v2(&after).await.map_err(err)?;
    let keys: Vec<&str> = page.objects.iter().map(|o| &o.key[p.len()..]).collect();
    check(keys == ["d/x", "d/y", "e"], || {
        format!("start-after c: {keys:?}")
    })
}

/// Keys with spaces, `+`, `%`, tabs and a control character list back as they were put (a
/// listing that carried them unencoded would not parse; one decoded twice would change them).
async fn odd_keys_list_back_exactly(store: &dyn ObjectStore, p: &str) -> CaseResult {
    let odd = [
        "sp ace",
        "plus+sign",
        "100%25 sure%",
        "tab\tname",
        "bell\u{7}",
        "dir with space/x+y",
    ];
    for k in odd {
        put(store, &format!("{p}{k}"), b"1", UserMetadata::new()).await?;
    }
    let request = ListRequest {
        prefix: p.to_string(),
        delimiter: Some("/".into()),
        start: ListStart::Beginning,
        max_keys: 1000,
    };
    let page = store.list_objects_v2(&request).await.map_err(err)?;
    let mut names: Vec<String> = page
        .objects
        .iter()
        .map(|o| o.key[p.len()..].to_string())
        .chain(
            page.common_prefixes
                .iter()
                .map(|c| c[p.len()..].to_string()),
        )
        .collect();
    names.sort();
    let mut want: Vec<String> = odd[..5].iter().map(|s| s.to_string()).collect();
    want.push("dir with space/".into());
    want.sort();
    check(names == want, || format!("listed {names:?}, put {want:?}"))
}

/// Uploads parts of `sizes` to a new multipart upload of `key`; returns the id and parts.
async fn upload_parts(
    store: &dyn ObjectStore,
    key: &str,
    sizes: &[usize],
) -> Result<(String, Vec<CompletedPart>), String> {
    let id = store
        .create_multipart_upload(key, &meta(&[("mode", "33188")]), Some("video/mp4"), true)
        .await
        .map_err(err)?;
    let mut parts = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let number = i as i32 + 1;
        let body = Bytes::from(vec![number as u8; *size]);
        let part = store
            .upload_part(key, &id, number, body)
            .await
            .map_err(err)?;
        parts.push(part);
    }
    Ok((id, parts))
}

async fn multipart_parts_in_order_complete(store: &dyn ObjectStore, p: &str) -> CaseResult {
    let key = format!("{p}m");
    let first = MIN_PART_SIZE as usize;
    let (id, parts) = upload_parts(store, &key, &[first, 10]).await?;
    let etag = store
        .complete_multipart_upload(&key, &id, &parts, false)
        .await
        .map_err(err)?;
    let head = store.head_object(&key).await.map_err(err)?;
    let head = head.ok_or("the completed object is missing")?;
    check(head.size == first as u64 + 10, || {
        format!("size {}", head.size)
    })?;
    check(
        head.metadata
            .unwrap_or_default()
            .get("mode")
            .map(String::as_str)
            == Some("33188"),
        || "metadata given at CreateMultipartUpload is lost".into(),
    )?;
    let tail = store
        .get_object_range(&key, &etag, first as u64 - 1..first as u64 + 10)
        .await
        .map_err(err)?;
    check(tail[0] == 1 && tail[1..].iter().all(|b| *b == 2), || {
        "the parts are not joined in order".into()
    })?;
    let (id, parts) = upload_parts(store, &format!("{p}excl"), &[10]).await?;
    let taken = PutOptions::default();
    store
        .put_object(&format!("{p}excl"), Bytes::from_static(b"x"), &taken)
        .await
        .map_err(err)?;
    expect_kind(
        store
            .complete_multipart_upload(&format!("{p}excl"), &id, &parts, true)
            .await,
        StoreErrorKind::PreconditionFailed,
        "CompleteMultipartUpload If-None-Match on an existing key",
    )?;
    store
        .abort_multipart_upload(&format!("{p}excl"), &id)
        .await
        .map_err(err)
}

/// Uploads parts of `sizes`, completes with them (reversed when `reverse`) and expects a
/// refusal, as S3 gives: `why` names its error code.
async fn completion_refused(
    store: &dyn ObjectStore,
    key: &str,
    sizes: &[usize],
    reverse: bool,
    why: &str,
) -> CaseResult {
    let (id, mut parts) = upload_parts(store, key, sizes).await?;
    if reverse {
        parts.reverse();
    }
    let result = store
        .complete_multipart_upload(key, &id, &parts, false)
        .await;
    let _ = store.abort_multipart_upload(key, &id).await;
    check(result.is_err(), || format!("accepted; S3 answers {why}"))
}

async fn multipart_parts_out_of_order_are_refused(store: &dyn ObjectStore, p: &str) -> CaseResult {
    let size = MIN_PART_SIZE as usize;
    let key = format!("{p}m");
    completion_refused(store, &key, &[size, size], true, "InvalidPartOrder").await
}

async fn multipart_small_parts_are_refused_as_on_aws(
    store: &dyn ObjectStore,
    p: &str,
) -> CaseResult {
    let key = format!("{p}m");
    completion_refused(store, &key, &[10, 10], false, "EntityTooSmall").await
}

async fn copies_keep_or_replace_metadata(store: &dyn ObjectStore, p: &str) -> CaseResult {
    let key = format!("{p}src");
    let etag = put(store, &key, b"body", meta(&[("mode", "33188")])).await?;
    let source = || CopySource {
        key: &key,
        etag: &etag,
        size: 4,
        headers: &StandardHeaders::NONE,
    };
    store
        .copy_object(source(), &format!("{p}kept"), None)
        .await
        .map_err(err)?;
    let replaced = meta(&[("mode", "33261")]);
    store
        .copy_object(
            source(),
            &format!("{p}replaced"),
            Some((&replaced, Some("text/html"))),
        )
        .await
        .map_err(err)?;
    let copies = [
        ("kept", "33188", "text/plain"),
        ("replaced", "33261", "text/html"),
    ];
    for (name, want, content_type) in copies {
        let head = store
            .head_object(&format!("{p}{name}"))
            .await
            .map_err(err)?;
        let head = head.ok_or_else(|| format!("the copy {name} is missing"))?;
        check(head.content_type.as_deref() == Some(content_type), || {
            format!("{name}: Content-Type {:?}", head.content_type)
        })?;
        let mode = head.metadata.unwrap_or_default().get("mode").cloned();
        check(mode.as_deref() == Some(want), || {
            format!("{name}: mode {mode:?}")
        })?;
        check(head.size == 4, || format!("{name}: size {}", head.size))?;
    }
    Ok(())
}
