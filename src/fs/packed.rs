//! An object's metadata as a node keeps it in memory: what a listing or a HEAD said, in about
//! 56 bytes instead of `ObjectMeta`'s 264 plus two heap strings.
//!
//! Non-obvious problems:
//! 1. Every field must come back exactly as it was given (an ETag's quotes and case, a key
//!    that is not the one the path implies, a time before 1970): packing is lossless or it
//!    keeps the original. An ETag is packed only when rendering the packed form gives the very
//!    same string; anything else is kept as it came.
//! 2. The key is not stored when it is the one the node's path implies (`Expected`: the
//!    mount's prefix, the path, and a `/` for a directory marker), which it is for all but
//!    other tools' directory objects and keys outside the usual form.
//! 3. What only a HEAD says (user metadata, Content-Type, the other standard headers) is boxed
//!    when there is any, so an object seen only in a listing pays nothing for it.

use std::time::{Duration, SystemTime};

use crate::store::{ObjectMeta, StandardHeaders, UserMetadata};

/// The key a node's path implies: `prefix` + `path`, and `/` after it for a marker.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The mount's key prefix.
    pub prefix: &'a str,
    /// The node's path in the mount.
    pub path: &'a str,
}

impl Expected<'_> {
    /// How `key` relates to the expected key.
    fn form_of(&self, key: &str) -> KeyForm {
        let rest = key
            .strip_prefix(self.prefix)
            .and_then(|k| k.strip_prefix(self.path));
        match rest {
            Some("") => KeyForm::Plain,
            Some("/") => KeyForm::Slash,
            _ => KeyForm::Other,
        }
    }

    fn key(&self, form: KeyForm) -> String {
        let slash = if form == KeyForm::Slash { "/" } else { "" };
        format!("{}{}{slash}", self.prefix, self.path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyForm {
    Plain,
    Slash,
    /// Kept in `Extra::key`.
    Other,
}

/// An ETag: an MD5 digest in quotes (`"<32 hex>"`, `-N` after it for a multipart upload), or
/// the string as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Etag {
    Md5 { digest: [u8; 16], parts: u32 },
    Other(Box<str>),
}

impl Etag {
    fn pack(etag: String) -> Self {
        match Self::parse(&etag) {
            Some(packed) => packed,
            None => Etag::Other(etag.into_boxed_str()),
        }
    }

    /// The packed form of `etag` when rendering it gives `etag` back: lower-case hex, a part
    /// count without sign or leading zero.
    fn parse(etag: &str) -> Option<Self> {
        let inner = etag.strip_prefix('"')?.strip_suffix('"')?;
        let (hex, parts) = match inner.split_once('-') {
            Some((_, n)) if n.starts_with(['0', '+']) => return None,
            Some((hex, n)) => (hex, n.parse::<u32>().ok()?),
            None => (inner, 0),
        };
        let lower = |c: u8| matches!(c, b'0'..=b'9' | b'a'..=b'f');
        if hex.len() != 32 || !hex.bytes().all(lower) {
            return None;
        }
        let mut digest = [0u8; 16];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Etag::Md5 { digest, parts })
    }

    fn render(&self) -> String {
        match self {
            Etag::Md5 { digest, parts } => {
                let mut out = String::with_capacity(46);
                out.push('"');
                for byte in digest {
                    out.push_str(&format!("{byte:02x}"));
                }
                if *parts > 0 {
                    out.push_str(&format!("-{parts}"));
                }
                out.push('"');
                out
            }
            Etag::Other(s) => s.to_string(),
        }
    }
}

/// What a HEAD adds, or a key not of the expected form.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extra {
    key: Option<String>,
    metadata: UserMetadata,
    content_type: Option<String>,
    headers: StandardHeaders,
}

/// `ObjectMeta`, packed (see the module's notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedObject {
    size: u64,
    secs: i64,
    etag: Etag,
    extra: Option<Box<Extra>>,
    nanos: u32,
    form: KeyForm,
    /// The user metadata is known (a HEAD said it), empty unless `extra` holds it.
    headers_known: bool,
}

impl PackedObject {
    /// Packs `meta`, the object of the node whose key would be `expected`.
    pub fn pack(meta: ObjectMeta, expected: Expected<'_>) -> Self {
        let form = expected.form_of(&meta.key);
        let (secs, nanos) = split_time(meta.last_modified);
        let headers_known = meta.metadata.is_some();
        let metadata = meta.metadata.unwrap_or_default();
        let key = (form == KeyForm::Other).then_some(meta.key);
        let plain = key.is_none()
            && metadata.is_empty()
            && meta.content_type.is_none()
            && meta.headers == StandardHeaders::NONE;
        let extra = (!plain).then(|| {
            Box::new(Extra {
                key,
                metadata,
                content_type: meta.content_type,
                headers: meta.headers,
            })
        });
        Self {
            size: meta.size,
            secs,
            etag: Etag::pack(meta.etag),
            extra,
            nanos,
            form,
            headers_known,
        }
    }

    /// The object as it was packed; `expected` must be what it was packed with.
    pub fn unpack(&self, expected: Expected<'_>) -> ObjectMeta {
        let extra = self.extra.as_deref();
        let key = match extra.and_then(|e| e.key.clone()) {
            Some(key) => key,
            None => expected.key(self.form),
        };
        ObjectMeta {
            key,
            size: self.size,
            etag: self.etag.render(),
            last_modified: join_time(self.secs, self.nanos),
            metadata: self.metadata(),
            content_type: extra.and_then(|e| e.content_type.clone()),
            headers: extra.map(|e| e.headers.clone()).unwrap_or_default(),
        }
    }

    /// True when its key is `key`.
    pub fn key_is(&self, key: &str, expected: Expected<'_>) -> bool {
        match self.extra.as_deref().and_then(|e| e.key.as_deref()) {
            Some(own) => own == key,
            None => self.form != KeyForm::Other && expected.form_of(key) == self.form,
        }
    }

    /// True when its key ends with `/` (a directory marker).
    pub fn is_marker(&self) -> bool {
        match self.extra.as_deref().and_then(|e| e.key.as_deref()) {
            Some(own) => own.ends_with('/'),
            None => self.form == KeyForm::Slash,
        }
    }

    /// True when its ETag is `etag`, quotes aside (asked for every listed entry: no
    /// allocation).
    pub fn etag_is(&self, etag: &str) -> bool {
        match &self.etag {
            Etag::Other(own) => super::same_etag(own, etag),
            Etag::Md5 { digest, parts } => {
                let inner = etag.trim_matches('"');
                let (hex, count) = match inner.split_once('-') {
                    Some((hex, count)) => (hex, Some(count)),
                    None => (inner, None),
                };
                let same_parts = match count {
                    None => *parts == 0,
                    // As rendered: decimal, no sign, no leading zero.
                    Some(count) => {
                        *parts > 0
                            && !count.starts_with(['0', '+'])
                            && count.parse::<u32>() == Ok(*parts)
                    }
                };
                same_parts && hex.len() == 32 && {
                    let lower = |c: u8| matches!(c, b'0'..=b'9' | b'a'..=b'f');
                    hex.bytes().all(lower)
                        && digest.iter().enumerate().all(|(i, byte)| {
                            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16) == Ok(*byte)
                        })
                }
            }
        }
    }

    /// Its user metadata, when a HEAD said it.
    pub fn metadata(&self) -> Option<UserMetadata> {
        self.headers_known.then(|| {
            self.extra
                .as_deref()
                .map(|e| e.metadata.clone())
                .unwrap_or_default()
        })
    }

    /// True when a HEAD said its user metadata.
    pub fn headers_known(&self) -> bool {
        self.headers_known
    }
}

/// `t` as seconds from the epoch (negative before it) and nanoseconds after those.
fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => (
            i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            after.subsec_nanos(),
        ),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            match before.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

fn join_time(secs: i64, nanos: u32) -> SystemTime {
    let t = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: Expected<'static> = Expected {
        prefix: "pre/",
        path: "d/f",
    };

    fn object(key: &str, etag: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: 42,
            etag: etag.to_string(),
            last_modified: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            metadata: None,
            content_type: None,
            headers: StandardHeaders::NONE,
        }
    }

    #[test]
    fn every_object_comes_back_exactly() {
        let md5 = "\"0123456789abcdef0123456789abcdef\"";
        let mut headed = object("pre/d/f", md5);
        headed.metadata = Some(UserMetadata::from([("mode".into(), "33188".into())]));
        headed.content_type = Some("text/plain".into());
        headed.headers.cache_control = Some("no-cache".into());
        let mut empty_headers = object("pre/d/f", md5);
        empty_headers.metadata = Some(UserMetadata::new());
        let mut before_1970 = object("pre/d/f", md5);
        before_1970.last_modified = SystemTime::UNIX_EPOCH - Duration::new(5, 250);
        let cases = [
            object("pre/d/f", md5),
            object("pre/d/f/", md5),
            object("pre/d/f_$folder$", md5),
            object("elsewhere", md5),
            object("pre/d/f", "\"0123456789abcdef0123456789abcdef-12\""),
            object("pre/d/f", "\"0123456789ABCDEF0123456789abcdef\""),
            object("pre/d/f", "0123456789abcdef0123456789abcdef"),
            object("pre/d/f", "\"0123456789abcdef0123456789abcdef-0\""),
            object("pre/d/f", "\"0123456789abcdef0123456789abcdef-012\""),
            object("pre/d/f", "\"short\""),
            object("pre/d/f", ""),
            object("pre/d/f", "\"0123456789abcdef0123456789abcdé\""),
            headed,
            empty_headers,
            before_1970,
        ];
        for meta in cases {
            if let Some(parsed) = Etag::parse(&meta.etag) {
                assert_eq!(
                    parsed.render(),
                    meta.etag,
                    "packed only when it renders back"
                );
            }
            let packed = PackedObject::pack(meta.clone(), AT);
            assert_eq!(packed.unpack(AT), meta);
            assert!(packed.key_is(&meta.key, AT), "{}", meta.key);
            assert!(!packed.key_is("pre/d/g", AT));
            assert_eq!(packed.is_marker(), meta.key.ends_with('/'));
            assert!(packed.etag_is(&meta.etag));
            assert!(packed.etag_is(meta.etag.trim_matches('"')));
            assert!(!packed.etag_is("\"ffff\""));
            for other in [
                "\"0123456789abcdef0123456789abcdee\"",
                "\"0123456789abcdef0123456789abcdef-13\"",
                "\"0123456789abcdef0123456789abcdef-012\"",
                "\"0123456789ABCDEF0123456789ABCDEF\"",
            ] {
                assert_eq!(
                    packed.etag_is(other),
                    crate::fs::same_etag(&meta.etag, other),
                    "{} against {other}",
                    meta.etag
                );
            }
            assert_eq!(packed.headers_known(), meta.metadata.is_some());
        }
    }

    #[test]
    fn an_object_seen_in_a_listing_takes_no_heap() {
        let packed = PackedObject::pack(
            object("pre/d/f", "\"0123456789abcdef0123456789abcdef-3\""),
            AT,
        );
        assert!(packed.extra.is_none());
        assert!(matches!(packed.etag, Etag::Md5 { parts: 3, .. }));
        assert!(std::mem::size_of::<PackedObject>() <= 64);
    }
}
