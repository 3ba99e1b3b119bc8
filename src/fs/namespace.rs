//! Names and attributes: mkdir, rmdir, unlink, rename, symlink, readlink and setattr.
//!
//! Non-obvious problems:
//! 1. S3 has no rename: a file is copied (server-side, metadata kept; a multipart copy above
//!    CopyObject's 5 GiB) and then deleted; a directory is every key under it, all copied before
//!    any is deleted, so a crash midway leaves both names, never neither.
//! 2. chmod, chown and utime rewrite headers, which S3 only allows by copying an object onto
//!    itself with the REPLACE directive; a directory's headers live on its `dir/` marker, which
//!    is simply written again (some servers refuse to copy markers).
//! 3. rmdir must not delete anything but the marker: one LIST of two keys tells an empty
//!    directory (at most its marker) from a full one. A directory without a marker is gone
//!    from S3 once its last key is, so rmdir of a vanished directory succeeds.
//! 4. A rename over a file that only readers hold open must not take their bytes: S3 cannot
//!    keep an overwritten key's old version (without bucket versioning), so the version they
//!    read is first copied on the server to `.bucketfs-kept-<hex>` in the same directory, their
//!    handles read it there, and it is deleted at their last close (deferred.rs, recorded
//!    across a kill). That costs a server-side copy of the target, never a download; a file
//!    with a writer keeps its bytes in staging instead (writers/mod.rs, 10.).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::names::check_name;
use super::posix::{Posix, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::{join, object_kind, Attr, Fs, Ino, Kind};
use crate::error::{FsError, FsResult};
use crate::store::{
    CopySource, ListRequest, ListStart, ObjectMeta, PutOptions, StandardHeaders, UserMetadata,
};

/// Names of the copies set aside for readers of a file a rename replaced (see 4.), in its
/// directory: as NFS's `.nfsXXXX` silly renames, seen by other clients until the last close.
pub const KEPT_PREFIX: &str = ".bucketfs-kept-";
/// Content-Type of `dir/` markers, as s3fs writes them.
pub const DIRECTORY_TYPE: &str = "application/x-directory";

/// Attribute changes of one setattr.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New permission bits (type bits ignored).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New length.
    pub size: Option<u64>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
    /// New access time.
    pub atime: Option<SystemTime>,
}

impl SetAttr {
    fn touches_headers(&self) -> bool {
        self.mode.is_some()
            || self.uid.is_some()
            || self.gid.is_some()
            || self.mtime.is_some()
            || self.atime.is_some()
    }

    /// Applies the change; any change of attributes moves the ctime.
    fn apply(&self, posix: &mut Posix, type_bits: u32) {
        posix.ctime = Some(SystemTime::now());
        if self.atime.is_some() {
            posix.atime = self.atime;
        }
        if let Some(mode) = self.mode {
            posix.mode = Some(type_bits | (mode & 0o7777));
        }
        if self.uid.is_some() {
            posix.uid = self.uid;
        }
        if self.gid.is_some() {
            posix.gid = self.gid;
        }
        if self.mtime.is_some() {
            posix.mtime = self.mtime;
        }
    }
}

/// renameat2 flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenameMode {
    /// RENAME_NOREPLACE: fail with EEXIST when the target exists.
    pub noreplace: bool,
    /// RENAME_EXCHANGE: swap the two names (not possible on S3).
    pub exchange: bool,
}

impl Fs {
    /// setattr: truncation and header changes (mode, owner, mtime).
    pub async fn setattr(&self, ino: Ino, change: SetAttr) -> FsResult<Attr> {
        self.check_changes_allowed()?;
        if ino == Ino::ROOT {
            // The bucket root has no object to hold headers: kept for the mount's life only.
            self.attrs.wrote_dir(ino, |p| change.apply(p, S_IFDIR));
            return Ok(self.root_attr());
        }
        if let Some(size) = change.size {
            self.truncate(ino, size).await?;
        }
        if !change.touches_headers() {
            return self.getattr(ino).await;
        }
        if let Some(writer) = self.writers.of(ino) {
            // An open file takes the change with its next commit.
            let changed = self.writers.change_open(&writer, |posix, _| {
                change.apply(posix, S_IFREG);
                Ok(())
            })?;
            if changed {
                return Ok(self.writers.attr(&writer));
            }
        }
        self.rewrite_headers(ino, |posix, _| {
            let type_bits = posix.type_bits().unwrap_or(S_IFREG);
            change.apply(posix, type_bits);
            Ok(())
        })
        .await
    }

    /// Rewrites the headers of `ino` (not open for writing): `change` edits its POSIX
    /// attributes and its other headers, then the object is copied onto itself with them (a
    /// directory's marker is written again, made if the directory was implicit).
    pub(super) async fn rewrite_headers(
        &self,
        ino: Ino,
        change: impl FnOnce(&mut Posix, &mut UserMetadata) -> FsResult<()>,
    ) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        let (kind, meta) = self.node(ino).await?;
        let current = self.attrs.of(ino, kind, meta.as_ref());
        let type_bits = kind.type_bits();
        let mut posix = Posix {
            mode: Some(type_bits | u32::from(current.perm)),
            uid: Some(current.uid),
            gid: Some(current.gid),
            mtime: Some(current.mtime),
            atime: Some(current.atime),
            ctime: Some(current.ctime),
            rdev: super::posix_of(meta.as_ref()).rdev,
        };
        // A directory's headers live on its marker, which may not exist yet (implicit), or on
        // the directory object another tool made (s3fs's legacy `name`, Hadoop's
        // `name_$folder$`), which is rewritten in place so that rmdir still finds it.
        let key = match (kind, &meta) {
            (Kind::Dir, Some(m)) if !m.key.ends_with('/') => m.key.clone(),
            (Kind::Dir, _) => self.names.dir_prefix(&path),
            _ => self.names.key(&path),
        };
        let (size, etag, mut extra, content_type, standard) =
            match self.copier.with_headers(&key, meta).await? {
                Some(m) => (
                    m.size,
                    m.etag,
                    m.metadata.unwrap_or_default(),
                    m.content_type,
                    m.headers,
                ),
                None if kind == Kind::Dir => (
                    0,
                    String::new(),
                    Default::default(),
                    None,
                    StandardHeaders::NONE,
                ),
                None => return Err(FsError::not_found()),
            };
        // The object keeps its Content-Type and other headers (a REPLACE copy would drop them).
        let content_type = content_type.unwrap_or_else(|| self.names.guess_type(&key));
        change(&mut posix, &mut extra)?;
        let metadata = posix.apply_to(&extra);
        super::xattr::check_fits(&metadata)?;
        if kind == Kind::Dir {
            // Kept by this mount whatever the server keeps of the marker's headers.
            self.attrs.wrote_dir(ino, |p| p.merge(&posix));
        }
        let source = CopySource {
            key: &key,
            etag: &etag,
            size,
            headers: &standard,
        };
        let replace = (&metadata, Some(content_type.as_str()));
        let etag = self.copier.copy(source, &key, Some(replace)).await?;
        let new = ObjectMeta {
            key,
            size,
            etag,
            last_modified: SystemTime::now(),
            metadata: Some(metadata),
            content_type: Some(content_type),
            headers: standard,
        };
        let kind = if kind == Kind::Dir {
            Kind::Dir
        } else {
            object_kind(&new)
        };
        Ok(self
            .tables
            .lock()
            .record(&self.attrs, &path, kind, Some(new)))
    }

    /// truncate(2) and ftruncate(2).
    async fn truncate(&self, ino: Ino, size: u64) -> FsResult<()> {
        if let Some(writer) = self.writers.of(ino) {
            return self.writers.truncate(&writer, size).await;
        }
        let mode = super::OpenMode {
            write: true,
            truncate: size == 0,
            opener: 0,
            direct: false,
        };
        let writer = self.attach_writer(ino, mode).await?;
        let result = async {
            if size > 0 {
                self.writers.truncate(&writer, size).await?;
            }
            self.writers.commit(&writer).await
        }
        .await;
        self.writers.detach(&writer).await;
        result
    }

    /// mkdir: writes the `dir/` marker, so the directory exists before anything is in it.
    pub async fn mkdir(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        let path = self.new_path(parent, name)?;
        let posix = Posix::new_node(S_IFDIR | (mode & 0o7777), owner, 0);
        let marker = self
            .put_new(self.names.dir_prefix(&path), Bytes::new(), &posix)
            .await?;
        let ino = self.tables.lock().meta.ino_for(&path);
        self.attrs.wrote_dir(ino, |p| p.merge(&posix));
        let attr = self
            .tables
            .lock()
            .record(&self.attrs, &path, Kind::Dir, Some(marker));
        self.attrs.dir_changed(parent);
        // A new directory is empty: its lookups need no request until the listing expires.
        let mut t = self.tables.lock();
        t.meta.made_dir(attr.ino);
        t.meta.looked_up(&path);
        Ok(attr)
    }

    /// symlink: an object whose body is the target, with S_IFLNK in its mode header.
    pub async fn symlink(
        &self,
        parent: Ino,
        name: &str,
        target: &str,
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        let path = self.new_path(parent, name)?;
        let posix = Posix::new_node(S_IFLNK | 0o777, owner, 0);
        let body = Bytes::copy_from_slice(target.as_bytes());
        self.make_node(parent, &path, Kind::Symlink, body, &posix)
            .await
    }

    /// Writes the object of a new symlink or special file at `path` in `parent`.
    async fn make_node(
        &self,
        parent: Ino,
        path: &str,
        kind: Kind,
        body: Bytes,
        posix: &Posix,
    ) -> FsResult<Attr> {
        let meta = self.put_new(self.names.key(path), body, posix).await?;
        let attr = self
            .tables
            .lock()
            .record(&self.attrs, path, kind, Some(meta));
        self.attrs.dir_changed(parent);
        self.tables.lock().meta.looked_up(path);
        Ok(attr)
    }

    /// PutObject of a new object with `posix` as its headers.
    async fn put_new(&self, key: String, body: Bytes, posix: &Posix) -> FsResult<ObjectMeta> {
        let options = PutOptions {
            metadata: posix.to_metadata(),
            content_type: Some(self.names.guess_type(&key)),
            if_none_match: false,
        };
        let size = body.len() as u64;
        let etag = self.store.put_object(&key, body, &options).await?;
        Ok(ObjectMeta {
            key,
            size,
            etag,
            last_modified: SystemTime::now(),
            metadata: Some(options.metadata),
            content_type: options.content_type,
            headers: StandardHeaders::NONE,
        })
    }

    /// mknod: a regular file is created empty; a FIFO, socket or device is an empty object
    /// whose mode header carries its type (and `rdev` its device number), as s3fs stores them.
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        rdev: u32,
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        let mode = super::posix::file_mode_bits(mode);
        match Kind::from_type_bits(mode) {
            Some(Kind::File) => {
                let open = super::OpenMode {
                    write: true,
                    ..Default::default()
                };
                let (attr, fh) = self.create(parent, name, mode, owner, true, open).await?;
                let result = self.writers.fsync(fh).await;
                self.release(fh).await;
                result.map(|()| attr)
            }
            Some(kind) if kind.is_special() => {
                let path = self.new_path(parent, name)?;
                let device = matches!(kind, Kind::CharDevice | Kind::BlockDevice);
                let posix = Posix::new_node(mode, owner, if device { rdev } else { 0 });
                self.make_node(parent, &path, kind, Bytes::new(), &posix)
                    .await
            }
            _ => Err(FsError::new(
                libc::EINVAL,
                format!("mknod of file type {:o}", mode & S_IFMT),
            )),
        }
    }

    /// readlink: the body of the symlink object.
    pub async fn readlink(&self, ino: Ino) -> FsResult<Bytes> {
        match self.node(ino).await? {
            (Kind::Symlink, Some(meta)) => {
                let object = Arc::new(crate::cache::ObjectId {
                    key: meta.key,
                    etag: meta.etag,
                });
                // A target is at most PATH_MAX bytes: an object that claims to be a symlink
                // but holds gigabytes is not read whole.
                let state = parking_lot::Mutex::default();
                let len = meta.size.min(libc::PATH_MAX as u64) as u32;
                self.cache.read(&object, meta.size, &state, 0, len).await
            }
            _ => Err(FsError::new(libc::EINVAL, "not a symlink")),
        }
    }

    /// unlink: DeleteObject. A file still open keeps its bytes for its handles (writers/mod.rs,
    /// 10.); nothing of it is uploaded any more.
    pub async fn unlink(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.check_changes_allowed()?;
        check_name(name)?;
        let path = join(&self.path_of(parent)?, name);
        let attr = self.find(parent, name, false).await?;
        if attr.kind == Kind::Dir {
            return Err(FsError::new(libc::EISDIR, "is a directory"));
        }
        let key = self.names.key(&path);
        let open = self.handles.is_open(attr.ino);
        if open && self.writers.of(attr.ino).is_none() {
            // Only readers: the object stays, hidden, until their last close (deferred.rs).
            let etag = match self.node(attr.ino).await? {
                (_, Some(meta)) => meta.etag,
                (_, None) => return Err(FsError::not_found()),
            };
            self.deferred.defer(attr.ino, key, etag, attr);
            self.tables.lock().meta.unlinked_open(&path);
        } else if open && self.writers.unlink_committing(attr.ino, &path) {
            // A commit of it runs: the delete waits for its end and the last close (writers/mod.rs,
            // 13.).
        } else if open {
            self.keep_for_handles(attr.ino).await?;
            if let Err(e) = self.store.delete_object(&key).await {
                self.writers.unkeep(attr.ino).await;
                return Err(e.into());
            }
            self.tables.lock().meta.unlinked_open(&path);
        } else {
            // A commit still running (the last release's) lands before the delete.
            self.writers.forget_closed(attr.ino).await;
            self.store.delete_object(&key).await?;
            self.tables.lock().meta.removed(&path);
        }
        self.attrs.dir_changed(parent);
        Ok(())
    }

    /// rmdir: ENOTEMPTY while any key is under the prefix, else deletes the marker.
    pub async fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.check_changes_allowed()?;
        check_name(name)?;
        let path = join(&self.path_of(parent)?, name);
        let attr = match self.find(parent, name, false).await {
            Ok(attr) => attr,
            // A directory without a marker vanishes with its last key: it is as removed as
            // asked (`rm -r` removes the files, then the directory).
            Err(e) if e.errno == libc::ENOENT => {
                self.tables.lock().meta.removed(&path);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if attr.kind != Kind::Dir {
            return Err(FsError::new(libc::ENOTDIR, "not a directory"));
        }
        let marker = self.names.dir_prefix(&path);
        if !self.dir_is_empty(&path, &marker).await? {
            return Err(FsError::new(libc::ENOTEMPTY, "directory not empty"));
        }
        let legacy = self.tables.lock().meta.dir_object(attr.ino);
        self.store.delete_object(&marker).await?;
        if let Some(legacy) = legacy {
            self.store.delete_object(&legacy).await?;
        }
        self.tables.lock().meta.removed(&path);
        self.attrs.dir_gone(attr.ino);
        self.attrs.dir_changed(parent);
        Ok(())
    }

    async fn dir_is_empty(&self, path: &str, marker: &str) -> FsResult<bool> {
        if self.tables.lock().writers.writing_below(path) {
            return Ok(false);
        }
        let request = ListRequest {
            prefix: marker.to_string(),
            delimiter: None,
            start: ListStart::Beginning,
            max_keys: 2,
        };
        let page = self.store.list_objects_v2(&request).await?;
        Ok(page.objects.iter().all(|o| o.key == marker) && page.common_prefixes.is_empty())
    }

    /// rename: copy then delete; directories key by key.
    pub async fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        mode: RenameMode,
    ) -> FsResult<()> {
        self.check_changes_allowed()?;
        check_name(new_name)?;
        if mode.exchange {
            return Err(FsError::new(
                libc::EINVAL,
                "RENAME_EXCHANGE cannot be done on S3",
            ));
        }
        let from = join(&self.path_of(parent)?, name);
        let to = join(&self.path_of(new_parent)?, new_name);
        self.names.check_key_length(&to, 1)?;
        let source = self.find(parent, name, false).await?;
        let target = match self.find(new_parent, new_name, false).await {
            Ok(attr) => Some(attr),
            Err(e) if e.errno == libc::ENOENT => None,
            Err(e) => return Err(e),
        };
        if from == to {
            return Ok(());
        }
        if let Some(target) = &target {
            if mode.noreplace {
                return Err(FsError::new(libc::EEXIST, "target exists"));
            }
            match (source.kind == Kind::Dir, target.kind == Kind::Dir) {
                (true, false) => {
                    return Err(FsError::new(libc::ENOTDIR, "target is not a directory"))
                }
                (false, true) => return Err(FsError::new(libc::EISDIR, "target is a directory")),
                (true, true) if !self.dir_is_empty(&to, &self.names.dir_prefix(&to)).await? => {
                    return Err(FsError::new(libc::ENOTEMPTY, "target directory not empty"))
                }
                _ => {}
            }
        }
        // A file replaced while open keeps its bytes for its handles, as if unlinked (set
        // aside on the server when only readers have it, see 4.), and its writer (if any)
        // commits no more: its old content must not land on the new file.
        let replaced_open = match &target {
            Some(t)
                if t.kind != Kind::Dir && t.ino != source.ino && self.handles.is_open(t.ino) =>
            {
                let aside = self.writers.of(t.ino).is_none() && self.set_aside(t, &to).await?;
                // A writer that opened it meanwhile keeps its bytes in staging, and so stops
                // committing over the new file.
                if !aside || self.writers.of(t.ino).is_some() {
                    self.keep_for_handles(t.ino).await?;
                }
                Some(t.ino)
            }
            _ => None,
        };
        let moved_file = if source.kind == Kind::Dir {
            if to.starts_with(&format!("{from}/")) {
                return Err(FsError::new(
                    libc::EINVAL,
                    "cannot move a directory into itself",
                ));
            }
            let legacy = self.tables.lock().meta.dir_object(source.ino);
            if self.tables.lock().writers.writing_below(&from) {
                return Err(FsError::new(
                    libc::EBUSY,
                    "files in the directory are open for writing",
                ));
            }
            let (old, new) = (self.names.dir_prefix(&from), self.names.dir_prefix(&to));
            self.copier.move_tree(&old, &new).await?;
            if let Some(legacy) = legacy {
                // The old name's directory object goes too; the new name has a `dir/` form.
                self.store.delete_object(&legacy).await?;
            }
            None
        } else {
            match self.rename_file(source.ino, &from, &to).await {
                Ok(meta) => Some(meta),
                Err(e) => {
                    if let Some(ino) = replaced_open {
                        self.writers.unkeep(ino).await;
                    }
                    return Err(e);
                }
            }
        };
        if replaced_open.is_some() {
            self.tables.lock().meta.unlinked_open(&to);
        }
        {
            // The moved inodes take the new paths, and cached listings follow.
            let mut t = self.tables.lock();
            t.meta.renamed(&from, &to, source.clone());
            t.writers.moved(source.ino, &to);
        }
        match moved_file {
            // Recorded under the moved inode, headers included, so listings keep them.
            Some(Some(meta)) => {
                self.tables
                    .lock()
                    .record(&self.attrs, &to, object_kind(&meta), Some(meta));
            }
            // A file open for writing answers for itself until its next commit records it.
            Some(None) => {}
            None => self
                .attrs
                .wrote_dir(source.ino, |p| p.ctime = Some(SystemTime::now())),
        }
        if let Some(target) = target.filter(|t| t.kind == Kind::Dir && t.ino != source.ino) {
            self.attrs.dir_gone(target.ino);
        }
        self.attrs.dir_changed(parent);
        self.attrs.dir_changed(new_parent);
        Ok(())
    }

    /// Sets aside the version of `target` (at `path`) that only readers hold, before a rename
    /// replaces it (see 4.): copied on the server next to it, read there by its handles and
    /// deleted at their last close. False when no name for the copy fits in a key.
    async fn set_aside(&self, target: &Attr, path: &str) -> FsResult<bool> {
        let meta = match self.node(target.ino).await? {
            (Kind::File, Some(meta)) => meta,
            _ => return Ok(false),
        };
        let (dir, _) = super::split(path);
        let seed = format!("{}{}{:?}", target.ino.0, meta.etag, SystemTime::now());
        let tag = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, seed.as_bytes());
        let aside = join(dir, &format!("{KEPT_PREFIX}{tag:016x}"));
        if self.names.check_key_length(&aside, 0).is_err() {
            return Ok(false);
        }
        let key = self.names.key(&aside);
        // Copied whole with its headers (COPY): nothing is sent again.
        let source = CopySource {
            key: &meta.key,
            etag: &meta.etag,
            size: meta.size,
            headers: &StandardHeaders::NONE,
        };
        let etag = self.copier.copy(source, &key, None).await?;
        let read = crate::cache::ObjectId {
            key: meta.key,
            etag: meta.etag,
        };
        let kept = Arc::new(crate::cache::ObjectId {
            key: key.clone(),
            etag: etag.clone(),
        });
        // If the rename fails after this, the readers read the same bytes from the copy,
        // which still goes at their last close.
        self.deferred.defer(target.ino, key, etag, target.clone());
        self.handles.repoint(target.ino, &read, kept);
        Ok(true)
    }

    /// Copies the file to its new key and deletes the old one; returns the moved object
    /// (`None`: a file open for writing, moved by its writer).
    async fn rename_file(&self, ino: Ino, from: &str, to: &str) -> FsResult<Option<ObjectMeta>> {
        if let Some(writer) = self.writers.of(ino) {
            return self.writers.rename(&writer, to).await;
        }
        let (_, meta) = self.node(ino).await?;
        let old_key = self.names.key(from);
        // The headers say what the moved node is (a symlink, its mode): read them if the
        // cached version came from a listing.
        let meta = self
            .copier
            .with_headers(&old_key, meta)
            .await?
            .ok_or_else(FsError::not_found)?;
        self.copier
            .move_object(meta, &self.names.key(to))
            .await
            .map(Some)
    }

    /// Hard links cannot be expressed in S3: the error link(2) gives.
    pub fn link(&self) -> FsError {
        FsError::new(libc::EPERM, "hard links are not supported on S3")
    }
}
