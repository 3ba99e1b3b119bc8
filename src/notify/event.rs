//! S3 event notifications as they arrive in an SQS message body, into `Record`s.
//!
//! Non-obvious problems:
//! 1. One body has one of four shapes: S3's own `{"Records": [...]}` (S3 → SQS, or SNS → SQS with
//!    raw delivery), the same wrapped in an SNS envelope (`{"Type": "Notification", "Message":
//!    "<json>"}`), an EventBridge event (`{"source": "aws.s3", "detail-type": ...}`), or S3's
//!    `s3:TestEvent`, sent once when a notification is configured (no records).
//! 2. Keys in S3's records are URL-encoded with `+` for a space (`a+b%2Bc` is `a b+c`); keys in
//!    EventBridge events are not encoded.
//! 3. Records are at least once and unordered. Each carries a `sequencer` (hex, of varying
//!    length) that orders events for one key: compared after left-padding to equal length.
//!    Servers that send none (moto) get every record applied, which is safe: an invalidation
//!    applied twice costs a request, never a wrong answer.

use percent_encoding::percent_decode_str;
use std::time::SystemTime;

use serde_json::Value;

/// What happened to a key: written, copied or restored from an archive (with its ETag, when
/// the event says), or deleted (also by a delete marker or a lifecycle rule).
pub use crate::fs::Elsewhere as Change;

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The bucket it happened in.
    pub bucket: String,
    /// The key, decoded.
    pub key: String,
    /// What happened.
    pub change: Change,
    /// S3's order of events for this key, when sent.
    pub sequencer: Option<String>,
    /// When it happened, by S3's clock, when the event says.
    pub time: Option<SystemTime>,
}

/// A body that is not an S3 event in any shape we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an S3 event notification: {0}")]
pub struct ParseError(String);

fn bad(what: impl Into<String>) -> ParseError {
    ParseError(what.into())
}

/// The records of one message body (none for a test event or an event kind that changes no
/// object, such as a tagging or ACL change).
pub fn parse(body: &str) -> Result<Vec<Record>, ParseError> {
    let value: Value = serde_json::from_str(body).map_err(|e| bad(format!("not JSON ({e})")))?;
    parse_value(&value, 0)
}

fn parse_value(value: &Value, depth: u8) -> Result<Vec<Record>, ParseError> {
    if let Some(records) = value.get("Records") {
        let records = records
            .as_array()
            .ok_or_else(|| bad("Records is not a list"))?;
        return records
            .iter()
            .filter_map(|r| s3_record(r).transpose())
            .collect();
    }
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if value.get("Type").and_then(Value::as_str) == Some("Notification") && depth == 0 {
        let message = value
            .get("Message")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("SNS notification without a Message"))?;
        let inner: Value = serde_json::from_str(message)
            .map_err(|e| bad(format!("SNS Message is not JSON ({e})")))?;
        return parse_value(&inner, depth + 1);
    }
    if value.get("source").and_then(Value::as_str) == Some("aws.s3") {
        return eventbridge(value).map(|r| r.into_iter().collect());
    }
    Err(bad("no Records, SNS Message or EventBridge detail"))
}

/// The change an event name stands for, if it changes an object.
fn change_of(name: &str, etag: Option<String>) -> Option<Change> {
    let name = name.strip_prefix("s3:").unwrap_or(name);
    if name.starts_with("ObjectCreated:") || name == "ObjectRestore:Completed" {
        Some(Change::Created { etag })
    } else if name.starts_with("ObjectRemoved:") || name.starts_with("LifecycleExpiration:") {
        Some(Change::Removed)
    } else {
        None
    }
}

fn text(value: &Value, path: &[&str]) -> Option<String> {
    path.iter()
        .try_fold(value, |v, k| v.get(k))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// One record of S3's own format; `None` for kinds that change no object.
fn s3_record(record: &Value) -> Result<Option<Record>, ParseError> {
    let name = text(record, &["eventName"]).ok_or_else(|| bad("record without eventName"))?;
    let etag = text(record, &["s3", "object", "eTag"]);
    let Some(change) = change_of(&name, etag) else {
        return Ok(None);
    };
    let bucket =
        text(record, &["s3", "bucket", "name"]).ok_or_else(|| bad("record without a bucket"))?;
    let raw = text(record, &["s3", "object", "key"]).ok_or_else(|| bad("record without a key"))?;
    Ok(Some(Record {
        bucket,
        key: decode_key(&raw)?,
        change,
        sequencer: text(record, &["s3", "object", "sequencer"]),
        time: text(record, &["eventTime"]).and_then(|t| timestamp(&t)),
    }))
}

/// An EventBridge event from S3; `None` for kinds that change no object.
fn eventbridge(event: &Value) -> Result<Option<Record>, ParseError> {
    let kind = text(event, &["detail-type"]).ok_or_else(|| bad("event without detail-type"))?;
    let etag = text(event, &["detail", "object", "etag"]);
    let change = match kind.as_str() {
        "Object Created" | "Object Restore Completed" => Change::Created { etag },
        "Object Deleted" => Change::Removed,
        _ => return Ok(None),
    };
    let bucket =
        text(event, &["detail", "bucket", "name"]).ok_or_else(|| bad("event without a bucket"))?;
    let key =
        text(event, &["detail", "object", "key"]).ok_or_else(|| bad("event without a key"))?;
    Ok(Some(Record {
        bucket,
        key,
        change,
        sequencer: text(event, &["detail", "object", "sequencer"]),
        time: text(event, &["time"]).and_then(|t| timestamp(&t)),
    }))
}

/// An ISO 8601 time as events give it (`2026-12-02T11:00:00.123Z`; moto leaves out the `Z`,
/// meaning UTC); `None` if it is not one.
fn timestamp(text: &str) -> Option<SystemTime> {
    use aws_smithy_types::date_time::{DateTime, Format};
    let time_of_day = text.split_once('T')?.1;
    let utc;
    let text = if time_of_day.ends_with('Z') || time_of_day.contains(['+', '-']) {
        text
    } else {
        utc = format!("{text}Z");
        &utc
    };
    SystemTime::try_from(DateTime::from_str(text, Format::DateTime).ok()?).ok()
}

/// A key as S3 events spell it: form-encoded (`+` is a space, `%2B` a plus).
pub fn decode_key(raw: &str) -> Result<String, ParseError> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| bad(format!("key {raw:?} is not UTF-8 once decoded")))
}

/// True when sequencer `a` comes after `b` (hex strings of any length, compared as numbers).
pub fn newer(a: &str, b: &str) -> bool {
    let width = a.len().max(b.len());
    let pad = |s: &str| format!("{:0>width$}", s.to_ascii_uppercase());
    pad(a) > pad(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_body(name: &str, key: &str) -> String {
        serde_json::json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
            "eventTime": "2026-12-02T11:00:00.250Z",
            "s3": {"bucket": {"name": "b"}, "object": {"key": key, "eTag": "abc", "sequencer": "0A1B"}}
        }]})
        .to_string()
    }

    #[test]
    fn s3_records_give_decoded_keys_and_changes() {
        let records = parse(&s3_body("ObjectCreated:Put", "dir/a+b%2Bc%C3%A9.txt")).unwrap();
        assert_eq!(
            records,
            vec![Record {
                bucket: "b".into(),
                key: "dir/a b+cé.txt".into(),
                change: Change::Created {
                    etag: Some("abc".into())
                },
                sequencer: Some("0A1B".into()),
                time: Some(
                    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_209_200_250)
                ),
            }]
        );
        for removed in [
            "ObjectRemoved:Delete",
            "ObjectRemoved:DeleteMarkerCreated",
            "LifecycleExpiration:Delete",
        ] {
            assert_eq!(
                parse(&s3_body(removed, "k")).unwrap()[0].change,
                Change::Removed
            );
        }
        let restored = parse(&s3_body("ObjectRestore:Completed", "k")).unwrap();
        assert!(matches!(restored[0].change, Change::Created { .. }));
        assert!(parse(&s3_body("ObjectTagging:Put", "k"))
            .unwrap()
            .is_empty());
        assert!(parse(&s3_body("ObjectRestore:Post", "k"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn sns_envelopes_eventbridge_and_test_events_are_understood() {
        let wrapped = serde_json::json!({
            "Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": s3_body("ObjectCreated:Copy", "x%2Fy")
        })
        .to_string();
        assert_eq!(parse(&wrapped).unwrap()[0].key, "x/y");
        let bridge = serde_json::json!({
            "version": "0", "source": "aws.s3", "detail-type": "Object Deleted",
            "detail": {"bucket": {"name": "b"}, "object": {"key": "a+b c", "sequencer": "01"}}
        })
        .to_string();
        let records = parse(&bridge).unwrap();
        assert_eq!(records[0].key, "a+b c", "EventBridge keys are not encoded");
        assert_eq!(records[0].change, Change::Removed);
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        assert!(parse(test).unwrap().is_empty());
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"Records": 3}"#,
            r#"{"Records": [{"eventName": "ObjectCreated:Put"}]}"#,
            r#"{"Type": "Notification", "Message": "{oops"}"#,
            r#"{"Type": "Notification", "Message": "{\"Type\":\"Notification\",\"Message\":\"{}\"}"}"#,
            r#"{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "%FF"}}}]}"#,
        ] {
            assert!(parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn event_times_parse_with_and_without_a_zone() {
        let at = |ms: u64| Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms));
        assert_eq!(timestamp("2026-12-02T11:00:00.250Z"), at(1_796_209_200_250));
        assert_eq!(
            timestamp("2026-12-02T11:00:00.250000"),
            at(1_796_209_200_250)
        );
        assert_eq!(timestamp("2026-12-02T11:00:00Z"), at(1_796_209_200_000));
        assert_eq!(timestamp("yesterday"), None);
        assert_eq!(timestamp("2026-13-02T11:00:00Z"), None);
    }

    #[test]
    fn sequencers_compare_as_numbers_of_any_length() {
        assert!(newer("0A", "9"));
        assert!(newer("00000000000000100", "FF"));
        assert!(!newer("0A1B", "0a1b"));
        assert!(!newer("01", "1"));
        assert!(newer("10", "0F"));
    }
}
