//! What a name is in the bucket, asked of the store: a file, a directory, or nothing.
//!
//! Non-obvious problems:
//! 1. A lookup of an unknown name costs one HEAD (`dir/name`) and one LIST (`dir/name/`, one
//!    key), issued concurrently; a directory wins over a file of the same name. A name found
//!    under neither costs one more HEAD (`dir/name_$folder$`, Hadoop's directory object).
//! 2. A name last seen as a file is checked with the HEAD alone first: only if it is gone is
//!    the LIST sent, to find a directory of that name.
//! 3. A version whose delete waits for a last close (deferred.rs) is not there.
//! 4. A name last seen as a directory is checked with the LIST alone first, and its `dir/`
//!    marker is not HEADed again while the listing shows the same version of it: one request
//!    each time the kernel checks a directory again after the TTL (a path walk does, for
//!    every directory on the way). Only an empty listing sends the HEADs.

use std::sync::Arc;

use super::deferred::Deferred;
use super::names::Names;
use super::{list, object_kind, Kind};
use crate::error::FsResult;
use crate::store::{ListRequest, ListStart, ObjectMeta, ObjectStore};

/// What a name was last seen as, so the probe asks the likely question first.
#[derive(Debug, Clone)]
pub(super) enum Known {
    Nothing,
    File,
    /// A directory, with its `dir/` marker as last seen (none for a directory of keys only).
    Dir(Option<Box<ObjectMeta>>),
}

/// Asks the store what names are.
#[derive(Debug)]
pub(super) struct Prober {
    store: Arc<dyn ObjectStore>,
    names: Names,
    deferred: Arc<Deferred>,
}

impl Prober {
    /// A prober over `store`, blind to what `deferred` hides.
    pub(super) fn new(store: Arc<dyn ObjectStore>, names: Names, deferred: Arc<Deferred>) -> Self {
        Self {
            store,
            names,
            deferred,
        }
    }

    /// A HEAD's answer, unless it is a version whose delete waits for a last close.
    fn visible(&self, head: Option<ObjectMeta>) -> Option<ObjectMeta> {
        head.filter(|m| !self.deferred.hides(&m.key, &m.etag))
    }

    /// HEAD `key` and LIST `key/` concurrently: a directory, a file, or nothing (then one
    /// more HEAD for another tool's `key_$folder$` directory object). A name last seen as a
    /// file is checked with the HEAD alone first (see 2.).
    pub(super) async fn probe(
        &self,
        path: &str,
        known: Known,
    ) -> FsResult<Option<(Kind, Option<ObjectMeta>)>> {
        let key = self.names.key(path);
        // A known file's HEAD goes first, alone; its answer stands in for the concurrent one.
        let head_first = if let Known::File = known {
            match self.visible(self.store.head_object(&key).await?) {
                Some(meta) if !list::is_dir_object(&meta) => {
                    return Ok(Some((object_kind(&meta), Some(meta))))
                }
                head => Some(Ok(head)),
            }
        } else {
            None
        };
        let request = ListRequest {
            prefix: format!("{key}/"),
            delimiter: Some("/".to_string()),
            start: ListStart::Beginning,
            max_keys: 1,
        };
        let (head, listing) = match (head_first, &known) {
            (Some(head), _) => (head, self.store.list_objects_v2(&request).await),
            // A known directory's LIST goes first, alone (see 4.).
            (None, Known::Dir(_)) => {
                let listing = self.store.list_objects_v2(&request).await?;
                let head = if listing.objects.is_empty() && listing.common_prefixes.is_empty() {
                    self.store.head_object(&key).await
                } else {
                    Ok(None)
                };
                (head, Ok(listing))
            }
            (None, _) => tokio::join!(
                self.store.head_object(&key),
                self.store.list_objects_v2(&request)
            ),
        };
        let listing = listing?;
        if !listing.objects.is_empty() || !listing.common_prefixes.is_empty() {
            // A `dir/` marker sorts first; its headers hold the directory's mode and owner.
            let marker = format!("{key}/");
            let meta = match (listing.objects.first(), known) {
                (Some(o), Known::Dir(Some(seen)))
                    if o.key == marker
                        && seen.metadata.is_some()
                        && super::same_etag(&seen.etag, &o.etag) =>
                {
                    Some(*seen)
                }
                (Some(o), _) if o.key == marker => self.store.head_object(&marker).await?,
                _ => None,
            };
            return Ok(Some((Kind::Dir, meta)));
        }
        match self.visible(head?) {
            Some(meta) => Ok(Some((object_kind(&meta), Some(meta)))),
            // Nothing under either name: perhaps another tool's `name_$folder$` directory.
            None => {
                let folder = format!("{key}{}", list::FOLDER_SUFFIX);
                let head = self.store.head_object(&folder).await?;
                Ok(head.map(|meta| (Kind::Dir, Some(meta))))
            }
        }
    }
}
