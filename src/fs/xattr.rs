//! Extended attributes, kept in the object's `x-amz-meta-xattr` header in s3fs's format, so a
//! bucket's xattrs read the same through s3fs.
//!
//! Non-obvious problems:
//! 1. The format: a JSON-like object `{"NAME":"BASE64 VALUE",...}`, the whole of it
//!    percent-encoded (header values must be ASCII). s3fs splits it at `,` and `:` without
//!    unescaping, so names holding `"`, `,` or `:` cannot be stored (EINVAL); a header that
//!    does not parse is ignored rather than failing the file.
//! 2. S3 allows 2 KiB of user metadata per object, all headers together: a change that would
//!    pass it fails (ENOSPC; E2BIG when the attribute alone is too large) instead of failing
//!    at the server.
//! 3. Changing an attribute rewrites the headers (a CopyObject onto itself, as chmod does).
//! 4. `ls -l` asks every entry for `security.selinux` and `system.posix_acl_access`. For an
//!    object known only from a listing (no headers read yet) those two families answer
//!    "none" without a HEAD, which would cost one request per entry; `user.*` and the rest
//!    read the headers. So `ls -l` of 100k entries stays one LIST per 1,000, and an ACL set
//!    elsewhere shows once the object was looked up by name (`getfacl` of a path does).
//!    POSIX ACLs are stored, not enforced: the kernel checks the mode bits.
//! 5. Even answered from memory, those two questions are two FUSE round trips per entry:
//!    `ls -l` of 100k entries took 2.2x as long as with `--no-xattr`. So "none" is EOPNOTSUPP
//!    for those two families, as on a filesystem mounted without labels or ACLs (neither is
//!    enforced here), and ENODATA for the rest. `ls` (and libacl, rsync, cp) read EOPNOTSUPP
//!    as "this filesystem has none" and stop asking for the rest of the mount; a label or ACL
//!    that was set is still returned, listed, copied and removable.

use std::collections::BTreeMap;

use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{Fs, Ino, Kind};
use crate::error::{FsError, FsResult};
use crate::store::UserMetadata;

/// The header that holds them (`x-amz-meta-xattr`).
const HEADER: &str = "xattr";
/// S3's limit on all user metadata of one object, names and values.
pub const METADATA_LIMIT: usize = 2048;
/// Characters kept as they are in the percent-encoded header.
const KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Attribute names and values.
pub type Xattrs = BTreeMap<String, Vec<u8>>;

/// setxattr flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SetMode {
    /// Create or replace.
    #[default]
    Any,
    /// XATTR_CREATE: fail with EEXIST when it exists.
    Create,
    /// XATTR_REPLACE: fail with ENODATA when it does not.
    Replace,
}

/// The attributes in `metadata`; none when the header is absent or does not parse.
pub fn parse(metadata: &UserMetadata) -> Xattrs {
    let Some(raw) = metadata.get(HEADER) else {
        return Xattrs::new();
    };
    let Ok(text) = percent_decode_str(raw).decode_utf8() else {
        return Xattrs::new();
    };
    let Some(body) = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
    else {
        return Xattrs::new();
    };
    let unquote = |s: &str| {
        s.trim()
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .map(str::to_string)
    };
    let engine = base64::engine::general_purpose::STANDARD;
    body.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .filter_map(|pair| {
            let (name, value) = pair.split_once(':')?;
            let value = engine.decode(unquote(value)?).ok()?;
            Some((unquote(name)?, value))
        })
        .collect()
}

/// `metadata` with its xattr header set to `xattrs` (removed when there are none).
pub fn store(metadata: &mut UserMetadata, xattrs: &Xattrs) {
    if xattrs.is_empty() {
        metadata.remove(HEADER);
        return;
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let pairs: Vec<String> = xattrs
        .iter()
        .map(|(name, value)| format!("\"{name}\":\"{}\"", engine.encode(value)))
        .collect();
    let json = format!("{{{}}}", pairs.join(","));
    metadata.insert(HEADER.into(), utf8_percent_encode(&json, KEEP).to_string());
}

/// ENOSPC when `metadata` passes S3's limit on user metadata.
pub fn check_fits(metadata: &UserMetadata) -> FsResult<()> {
    let size: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > METADATA_LIMIT {
        return Err(FsError::new(
            libc::ENOSPC,
            format!("the object's headers would take {size} bytes; S3 allows {METADATA_LIMIT}"),
        ));
    }
    Ok(())
}

/// Applies one setxattr to `xattrs`.
pub fn set(xattrs: &mut Xattrs, name: &str, value: &[u8], mode: SetMode) -> FsResult<()> {
    if name.is_empty() || name.contains(['"', ',', ':']) {
        return Err(FsError::new(
            libc::EINVAL,
            format!("'{name}' cannot be stored as an extended attribute name"),
        ));
    }
    if name.len() + value.len().div_ceil(3) * 4 > METADATA_LIMIT {
        return Err(FsError::new(
            libc::E2BIG,
            format!(
                "extended attribute {name} is larger than S3's {METADATA_LIMIT} bytes of metadata"
            ),
        ));
    }
    match (mode, xattrs.contains_key(name)) {
        (SetMode::Create, true) => Err(FsError::new(libc::EEXIST, "attribute exists")),
        (SetMode::Replace, false) => Err(no_data()),
        _ => {
            xattrs.insert(name.to_string(), value.to_vec());
            Ok(())
        }
    }
}

/// The value of attribute `name` in `headers` (none: no attributes), or why there is none
/// (see 5.).
fn value_in(headers: Option<&UserMetadata>, name: &str) -> FsResult<Vec<u8>> {
    let mut xattrs = headers.map(parse).unwrap_or_default();
    xattrs
        .remove(name)
        .ok_or_else(|| match asked_of_every_entry(name) {
            true => FsError::new(libc::EOPNOTSUPP, "no label or ACL: none is enforced here"),
            false => no_data(),
        })
}

fn no_data() -> FsError {
    FsError::new(libc::ENODATA, "no such attribute")
}

/// Names `ls -l` asks of every entry (see 4. and 5.).
fn asked_of_every_entry(name: &str) -> bool {
    name.starts_with("security.") || name.starts_with("system.posix_acl_")
}

impl Fs {
    /// The headers of `ino` other than its POSIX ones: an open file's pending ones, else the
    /// object's (a HEAD when only a listing saw it).
    async fn headers_of(&self, ino: Ino) -> FsResult<Option<UserMetadata>> {
        if let Some(writer) = self.writers.of(ino) {
            return Ok(Some(self.writers.open_headers(&writer)));
        }
        if ino == Ino::ROOT {
            return Ok(None);
        }
        let (kind, meta) = self.node(ino).await?;
        let path = self.path_of(ino)?;
        let key = if kind == Kind::Dir {
            self.names.dir_prefix(&path)
        } else {
            self.names.key(&path)
        };
        let token = self.tables.lock().meta.fill_started();
        let meta = self.copier.with_headers(&key, meta).await?;
        if let Some(m) = &meta {
            // Remembered for the next question.
            self.tables
                .lock()
                .remember(&self.attrs, &path, kind, Some(m.clone()), false, token);
        }
        Ok(meta.and_then(|m| m.metadata))
    }

    /// getxattr answered from memory, without a request or waiting on anything, when that
    /// can be done: an open file's headers, an object's known headers, or (see 4.) "none"
    /// for the names `ls -l` asks of an object seen only in a listing. `None`: ask `getxattr`.
    pub fn getxattr_now(&self, ino: Ino, name: &str) -> Option<FsResult<Vec<u8>>> {
        let headers = match self.writers.of(ino) {
            Some(writer) => Some(self.writers.open_headers(&writer)),
            None if ino == Ino::ROOT => None,
            None => {
                let t = self.tables.lock();
                match t.meta.known_meta(ino).map(|m| m.metadata) {
                    Some(Some(headers)) => Some(headers),
                    // Seen, headers unknown (a listing, a directory without marker).
                    _ if asked_of_every_entry(name) && t.meta.path(ino).is_some() => None,
                    _ => return None,
                }
            }
        };
        Some(value_in(headers.as_ref(), name))
    }

    /// getxattr: the value of `name`, or ENODATA. (The questions `ls -l` asks are answered
    /// by `getxattr_now` whenever the inode is known.)
    pub async fn getxattr(&self, ino: Ino, name: &str) -> FsResult<Vec<u8>> {
        let headers = self.headers_of(ino).await?;
        value_in(headers.as_ref(), name)
    }

    /// listxattr: every name.
    pub async fn listxattr(&self, ino: Ino) -> FsResult<Vec<String>> {
        let headers = self.headers_of(ino).await?;
        let xattrs = headers.as_ref().map(parse).unwrap_or_default();
        Ok(xattrs.into_keys().collect())
    }

    /// setxattr (`value: Some`) and removexattr (`None`): the headers are rewritten.
    pub async fn change_xattr(
        &self,
        ino: Ino,
        name: &str,
        value: Option<&[u8]>,
        mode: SetMode,
    ) -> FsResult<()> {
        self.check_changes_allowed()?;
        if ino == Ino::ROOT {
            return Err(FsError::new(
                libc::ENOTSUP,
                "the bucket root has no object to hold extended attributes",
            ));
        }
        let change = |posix: &mut super::posix::Posix, headers: &mut UserMetadata| {
            let mut xattrs = parse(headers);
            match value {
                Some(value) => set(&mut xattrs, name, value, mode)?,
                None => {
                    xattrs.remove(name).ok_or_else(no_data)?;
                }
            }
            store(headers, &xattrs);
            posix.ctime = Some(std::time::SystemTime::now());
            Ok(())
        };
        if let Some(writer) = self.writers.of(ino) {
            if self.writers.change_open(&writer, change)? {
                return Ok(());
            }
        }
        self.rewrite_headers(ino, change).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3fs_format_round_trips() {
        let mut xattrs = Xattrs::new();
        xattrs.insert("user.comment".into(), b"h\xe9llo, world".to_vec());
        xattrs.insert("system.posix_acl_access".into(), vec![2, 0, 0, 0, 1, 0, 6]);
        let mut m = UserMetadata::new();
        m.insert("mode".into(), "33188".into());
        store(&mut m, &xattrs);
        let raw = m.get("xattr").unwrap();
        assert!(raw.is_ascii() && raw.starts_with("%7B%22"), "{raw}");
        assert_eq!(parse(&m), xattrs);
        // What s3fs writes for user.a = "b".
        let mut s3fs = UserMetadata::new();
        s3fs.insert("xattr".into(), "%7B%22user.a%22%3A%22Yg%3D%3D%22%7D".into());
        assert_eq!(
            parse(&s3fs).get("user.a").map(Vec::as_slice),
            Some(&b"b"[..])
        );
        store(&mut m, &Xattrs::new());
        assert!(!m.contains_key("xattr"));
        s3fs.insert("xattr".into(), "%7Bbroken".into());
        assert!(parse(&s3fs).is_empty(), "garbage is ignored");
    }

    #[test]
    fn a_missing_label_or_acl_is_eopnotsupp_and_other_names_enodata() {
        let errno =
            |headers: Option<&UserMetadata>, name| value_in(headers, name).unwrap_err().errno;
        assert_eq!(errno(None, "security.selinux"), libc::EOPNOTSUPP);
        assert_eq!(errno(None, "system.posix_acl_default"), libc::EOPNOTSUPP);
        assert_eq!(errno(None, "user.a"), libc::ENODATA);
        assert_eq!(errno(None, "trusted.a"), libc::ENODATA);
        let mut m = UserMetadata::new();
        let mut xattrs = Xattrs::new();
        xattrs.insert("security.selinux".into(), b"label".to_vec());
        store(&mut m, &xattrs);
        assert_eq!(value_in(Some(&m), "security.selinux").unwrap(), b"label");
        assert_eq!(errno(Some(&m), "system.posix_acl_access"), libc::EOPNOTSUPP);
    }

    #[test]
    fn flags_names_and_limits() {
        let mut x = Xattrs::new();
        set(&mut x, "user.a", b"1", SetMode::Create).unwrap();
        assert_eq!(
            set(&mut x, "user.a", b"2", SetMode::Create)
                .unwrap_err()
                .errno,
            libc::EEXIST
        );
        assert_eq!(
            set(&mut x, "user.b", b"2", SetMode::Replace)
                .unwrap_err()
                .errno,
            libc::ENODATA
        );
        assert_eq!(
            set(&mut x, "user.a:b", b"", SetMode::Any)
                .unwrap_err()
                .errno,
            libc::EINVAL
        );
        assert_eq!(
            set(&mut x, "user.big", &[0; 2000], SetMode::Any)
                .unwrap_err()
                .errno,
            libc::E2BIG
        );
        let mut m = UserMetadata::new();
        set(&mut x, "user.c", &[7; 1000], SetMode::Any).unwrap();
        set(&mut x, "user.d", &[7; 1000], SetMode::Any).unwrap();
        store(&mut m, &x);
        assert_eq!(check_fits(&m).unwrap_err().errno, libc::ENOSPC);
    }
}
