//! Deletes deferred to the last close: a file unlinked while only readers have it open stays
//! in the bucket, hidden from this mount, until its last handle closes.
//!
//! Non-obvious problems:
//! 1. POSIX keeps an unlinked file readable through its open descriptors. Copying the object
//!    into staging first (what a writer's file gets) would cost a whole download before
//!    `rm` returns; a reader needs none: its handle pins the ETag, and the object stays.
//! 2. Hidden by key and ETag: a listing or a HEAD that shows the same version is treated as
//!    gone. A new version under the name (written since, here or elsewhere) is shown, and the
//!    deferred delete then leaves it: the version is checked by a HEAD just before the delete.
//! 3. Recorded in the staging directory (a small JSON file per bucket and prefix, replaced
//!    whole on each change), so a daemon killed before the last close deletes at its next
//!    start what it still owes.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use super::inode::Ino;
use super::Attr;
use crate::store::ObjectStore;
use crate::upload::staging::StagingDir;

/// One version whose delete waits for the last close.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// The object's key.
    pub key: String,
    /// The version to delete.
    pub etag: String,
}

/// Where the pending deletes are recorded across restarts.
#[derive(Debug, Clone)]
pub struct DeleteRecord {
    /// The staging directory that holds the record.
    pub staging: Arc<StagingDir>,
    /// Endpoint, bucket and prefix of the mount: the record's identity.
    pub source: String,
}

impl DeleteRecord {
    fn name(&self) -> String {
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, self.source.as_bytes());
        format!("deletes-{crc:016x}.json")
    }

    fn save(&self, deletes: Vec<Pending>) {
        let result = if deletes.is_empty() {
            self.staging.remove_record(&self.name())
        } else {
            let deletes: Vec<_> = deletes
                .into_iter()
                .map(|p| serde_json::json!({"key": p.key, "etag": p.etag}))
                .collect();
            let record = serde_json::json!({"source": self.source, "deletes": deletes});
            self.staging
                .save_record(&self.name(), record.to_string().as_bytes())
        };
        if let Err(e) = result {
            tracing::warn!("cannot record the deletes owed at the last close: {e}");
        }
    }

    fn load(&self) -> Vec<Pending> {
        let bytes = match self.staging.load_record(&self.name()) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Vec::new(),
            Err(e) => {
                tracing::warn!("cannot read the deletes owed by an earlier run: {e}");
                return Vec::new();
            }
        };
        let record = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!("ignoring an unreadable record of owed deletes: {e}");
                return Vec::new();
            }
        };
        if record["source"].as_str() != Some(self.source.as_str()) {
            return Vec::new();
        }
        let entries = record["deletes"].as_array().cloned().unwrap_or_default();
        entries
            .iter()
            .filter_map(|e| {
                Some(Pending {
                    key: e["key"].as_str()?.to_string(),
                    etag: e["etag"].as_str()?.to_string(),
                })
            })
            .collect()
    }
}

/// Deletes owed at the last close of unlinked files, by inode.
#[derive(Debug, Default)]
pub struct Deferred {
    /// The version owed, and the attributes its handles see (nlink 0).
    pending: Mutex<HashMap<Ino, (Pending, Attr)>>,
    record: Option<DeleteRecord>,
}

impl Deferred {
    /// Deferred deletes recorded through `record` (none: kept in memory only).
    pub fn new(record: Option<DeleteRecord>) -> Self {
        Self {
            pending: Mutex::default(),
            record,
        }
    }

    /// Deletes what an earlier run of this mount still owed (see 3.), each only if the
    /// version is still the one it recorded.
    pub async fn settle_earlier(&self, store: &dyn ObjectStore) {
        let Some(record) = &self.record else {
            return;
        };
        let owed = record.load();
        if owed.is_empty() {
            return;
        }
        tracing::info!(
            count = owed.len(),
            "deleting what an earlier run owed at its last close"
        );
        let mut left = Vec::new();
        for pending in owed {
            if !delete_pending(store, &pending).await {
                left.push(pending);
            }
        }
        record.save(left);
    }

    /// Every delete owed, for a successor (fs/state.rs).
    pub fn entries(&self) -> Vec<(Ino, Pending, Attr)> {
        self.pending
            .lock()
            .iter()
            .map(|(ino, (p, a))| (*ino, p.clone(), a.clone()))
            .collect()
    }

    /// Number of deletes owed.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    /// True when no delete is owed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes over the deletes a predecessor owed (its record on disk says the same).
    pub fn restore(&self, entries: Vec<(Ino, Pending, Attr)>) {
        let mut pending = self.pending.lock();
        for (ino, p, attr) in entries {
            pending.insert(ino, (p, attr));
        }
    }

    /// The delete of `ino`'s object waits for its last close.
    pub fn defer(&self, ino: Ino, key: String, etag: String, mut attr: Attr) {
        attr.nlink = 0;
        let mut pending = self.pending.lock();
        pending.insert(ino, (Pending { key, etag }, attr));
        self.save(&pending);
    }

    /// The attributes of unlinked file `ino` while its delete waits.
    pub fn attr(&self, ino: Ino) -> Option<Attr> {
        self.pending.lock().get(&ino).map(|(_, attr)| attr.clone())
    }

    /// True when `key` at `etag` is a version waiting for its delete: not shown (see 2.).
    pub fn hides(&self, key: &str, etag: &str) -> bool {
        self.pending
            .lock()
            .values()
            .any(|(p, _)| p.key == key && super::same_etag(&p.etag, etag))
    }

    /// True when `ino`'s delete waits for its last close.
    pub fn owes(&self, ino: Ino) -> bool {
        self.pending.lock().contains_key(&ino)
    }

    /// The last handle of `ino` closed: its delete is done now.
    pub async fn closed(&self, ino: Ino, store: &dyn ObjectStore) {
        let Some((pending, _)) = self.pending.lock().get(&ino).cloned() else {
            return;
        };
        let done = delete_pending(store, &pending).await;
        let mut all = self.pending.lock();
        if done {
            all.remove(&ino);
            self.save(&all);
        }
    }

    fn save(&self, pending: &HashMap<Ino, (Pending, Attr)>) {
        if let Some(record) = &self.record {
            record.save(pending.values().map(|(p, _)| p.clone()).collect());
        }
    }
}

/// Deletes `pending` if its key still holds that version; true when nothing is owed any more
/// (deleted, gone, or replaced by a newer version that stays).
async fn delete_pending(store: &dyn ObjectStore, pending: &Pending) -> bool {
    match super::delete_version(store, &pending.key, &pending.etag).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(key = %pending.key, "the delete owed at the last close failed (tried again at the next start): {e}");
            false
        }
    }
}
