//! Property tests of everything that parses text another party wrote: s3fs's POSIX headers and
//! xattr header (any writer of the bucket), S3 event messages and SNS envelopes (whoever can
//! send to the queue), `-o` mount options and sizes and durations (fstab lines). No input may
//! panic; where the format allows, what is written reads back the same.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bucketfs::cli::{mount_options_to_flags, parse_duration, parse_mode, parse_size};
use bucketfs::fs::posix::Posix;
use bucketfs::fs::xattr;
use bucketfs::notify::event;
use bucketfs::store::UserMetadata;
use proptest::prelude::*;

/// Header values as a hostile writer would set them: anything, and numbers at the edges.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "-?[0-9]{0,30}(\\.[0-9]{0,20})?",
        Just(String::new()),
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775809.999999999999".to_string()),
        Just(" 0755 ".to_string()),
    ]
}

/// A time of any second and nanosecond, before or after the epoch (utimensat allows both).
fn time() -> impl Strategy<Value = SystemTime> {
    (any::<bool>(), 0u64..(1 << 40), 0u32..1_000_000_000).prop_map(|(before, s, n)| {
        let d = Duration::new(s, n);
        if before {
            UNIX_EPOCH - d
        } else {
            UNIX_EPOCH + d
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn s3fs_headers_of_any_value_never_panic(
        values in proptest::collection::vec(header_value(), 8),
    ) {
        let names = ["mode", "uid", "gid", "mtime", "atime", "ctime", "rdev", "xattr"];
        let metadata: UserMetadata = names
            .iter()
            .zip(values)
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        let posix = Posix::from_metadata(&metadata);
        let _ = posix.type_bits();
        let _ = posix.is_symlink();
        let _ = xattr::parse(&metadata);
    }

    #[test]
    fn s3fs_headers_read_back_what_was_written(
        mode in proptest::option::of(any::<u32>()),
        uid in proptest::option::of(any::<u32>()),
        gid in proptest::option::of(any::<u32>()),
        mtime in proptest::option::of(time()),
        atime in proptest::option::of(time()),
        ctime in proptest::option::of(time()),
        rdev in proptest::option::of(any::<u64>()),
    ) {
        let written = Posix { mode, uid, gid, mtime, atime, ctime, rdev };
        let read = Posix::from_metadata(&written.to_metadata());
        prop_assert_eq!(read, written);
    }

    #[test]
    fn xattrs_read_back_what_was_written(
        attrs in proptest::collection::btree_map(
            "(user|trusted|security)\\.[a-zA-Z0-9._-]{1,40}",
            proptest::collection::vec(any::<u8>(), 0..200),
            0..8,
        ),
    ) {
        let mut metadata = UserMetadata::new();
        xattr::store(&mut metadata, &attrs);
        prop_assert_eq!(xattr::parse(&metadata), attrs);
    }

    #[test]
    fn event_messages_of_any_text_never_panic(body in any::<String>()) {
        let _ = event::parse(&body);
        let _ = event::decode_key(&body);
    }

    #[test]
    fn event_messages_of_any_json_shape_never_panic(
        name in any::<String>(),
        key in any::<String>(),
        etag in any::<String>(),
        sequencer in "[0-9A-Fa-f]{0,40}|.{0,10}",
        time in any::<String>(),
        records_not_a_list in any::<bool>(),
        wrap in 0u8..3,
    ) {
        let record = serde_json::json!({
            "eventName": name,
            "eventTime": time,
            "s3": {"bucket": {"name": "b"}, "object": {"key": key, "eTag": etag, "sequencer": sequencer}},
        });
        let body = if records_not_a_list {
            serde_json::json!({ "Records": record })
        } else {
            serde_json::json!({ "Records": [record] })
        };
        let body = match wrap {
            0 => body.to_string(),
            // An SNS envelope, and an envelope in an envelope (only one level is opened).
            1 => serde_json::json!({"Type": "Notification", "Message": body.to_string()}).to_string(),
            _ => {
                let inner = serde_json::json!({"Type": "Notification", "Message": body.to_string()});
                serde_json::json!({"Type": "Notification", "Message": inner.to_string()}).to_string()
            }
        };
        let _ = event::parse(&body);
        let _ = event::newer(&sequencer, &name);
    }

    #[test]
    fn an_event_key_reads_back_whatever_its_bytes(
        key in "[^\\x00]{1,200}",
        in_sns in any::<bool>(),
    ) {
        // S3 sends keys form-encoded: %XX for bytes, + for space.
        let encoded: String = url_form_encode(&key);
        let record = serde_json::json!({"Records": [{
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": {"key": encoded, "eTag": "e"}},
        }]});
        let body = if in_sns {
            serde_json::json!({"Type": "Notification", "Message": record.to_string()}).to_string()
        } else {
            record.to_string()
        };
        let records = event::parse(&body).unwrap();
        prop_assert_eq!(records.len(), 1);
        prop_assert_eq!(&records[0].key, &key);
    }

    #[test]
    fn mount_options_of_any_text_never_panic(list in any::<String>()) {
        let _ = mount_options_to_flags(&list);
    }

    #[test]
    fn sizes_durations_and_modes_of_any_text_never_panic(s in any::<String>()) {
        let _ = parse_size(&s);
        let _ = parse_duration(&s);
        let _ = parse_mode(&s);
    }

    #[test]
    fn sizes_and_durations_read_back(n in any::<u64>(), unit in 0usize..5) {
        let (suffix, shift) = [("", 0), ("KiB", 10), ("MiB", 20), ("GiB", 30), ("TiB", 40)][unit];
        match parse_size(&format!("{n}{suffix}")) {
            Ok(bytes) => prop_assert_eq!(bytes, n << shift),
            Err(e) => {
                prop_assert!(n.checked_mul(1 << shift).is_none(), "{}", e);
                prop_assert!(e.contains("too large"), "{}", e);
            }
        }
        let secs = n % (10 * 365 * 24 * 3600);
        prop_assert_eq!(parse_duration(&format!("{secs}s")), Ok(Duration::from_secs(secs)));
        prop_assert_eq!(parse_duration(&format!("{secs}")), Ok(Duration::from_secs(secs)));
    }
}

/// `s` as S3 writes keys into event messages (application/x-www-form-urlencoded).
fn url_form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
