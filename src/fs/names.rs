//! Paths in the mount and keys in the bucket: the mount's prefix, key lengths, Content-Types.
//!
//! Non-obvious problems:
//! 1. A key maps to a path only below the mount's prefix and when every part is a name the
//!    mount can show; `dir/` markers and `dir_$folder$` objects name the directory itself.
//!    Other keys are ignored (they come from S3 events and upload progress).
//! 2. A directory's marker is one byte longer than its name's key, so a new name is checked
//!    with room for it.

use super::list::{valid_name, FOLDER_SUFFIX, NAME_MAX};
use super::namespace::DIRECTORY_TYPE;
use crate::error::{FsError, FsResult};

/// Longest key S3 accepts, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

/// How paths become keys, and what Content-Type a new key gets.
#[derive(Debug, Clone)]
pub(super) struct Names {
    prefix: String,
    content_type_default: String,
}

impl Names {
    /// Keys under `prefix`; new objects whose name suggests no type get `content_type_default`.
    pub(super) fn new(prefix: &str, content_type_default: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            content_type_default: content_type_default.to_string(),
        }
    }

    /// The key of the object at `path`.
    pub(super) fn key(&self, path: &str) -> String {
        format!("{}{}", self.prefix, path)
    }

    /// The prefix of the keys under directory `path` (its marker's key).
    pub(super) fn dir_prefix(&self, path: &str) -> String {
        if path.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{}/", self.prefix, path)
        }
    }

    /// Content-Type of a new object at `key`: from its name's extension, else the mount's
    /// default; a `dir/` marker is `application/x-directory`, as s3fs writes it.
    pub(super) fn guess_type(&self, key: &str) -> String {
        if key.ends_with('/') {
            return DIRECTORY_TYPE.to_string();
        }
        let name = key.rsplit('/').next().unwrap_or(key);
        mime_guess::from_path(name)
            .first_raw()
            .map_or_else(|| self.content_type_default.clone(), str::to_string)
    }

    /// ENAMETOOLONG for a path whose key (plus `extra` bytes) would be longer than S3 allows.
    pub(super) fn check_key_length(&self, path: &str, extra: usize) -> FsResult<()> {
        if self.key(path).len() + extra > MAX_KEY_LEN {
            return Err(FsError::new(
                libc::ENAMETOOLONG,
                format!("the key of '{path}' would be longer than S3's {MAX_KEY_LEN} bytes"),
            ));
        }
        Ok(())
    }

    /// The path `key` shows as (see 1.).
    pub(super) fn path_of_key(&self, key: &str) -> Option<String> {
        let rel = key.strip_prefix(self.prefix.as_str())?;
        let path = rel
            .strip_suffix('/')
            .or_else(|| rel.strip_suffix(FOLDER_SUFFIX))
            .unwrap_or(rel);
        let showable = !path.is_empty() && path.split('/').all(valid_name);
        showable.then(|| path.to_string())
    }
}

/// ENAMETOOLONG for a name longer than NAME_MAX.
pub(super) fn check_length(name: &str) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            format!("a name has at most {NAME_MAX} bytes"),
        ));
    }
    Ok(())
}

/// ENAMETOOLONG or EINVAL for a name a new entry cannot have.
pub(super) fn check_name(name: &str) -> FsResult<()> {
    check_length(name)?;
    if !valid_name(name) {
        return Err(FsError::new(
            libc::EINVAL,
            format!("'{name}' cannot be a name"),
        ));
    }
    Ok(())
}
