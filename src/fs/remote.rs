//! Changes made elsewhere, pushed in (S3 event notifications), and the kernel's side of them.
//!
//! Non-obvious problems:
//! 1. The kernel keeps entries and attributes for the TTL it was given with them, which is
//!    long while notifications work: forgetting a change in `meta` is not enough, the kernel
//!    must be told too. `fs` stays FUSE-free: it hands `KernelNote`s to a `KernelCache` port
//!    that `fuse.rs` implements over fuser's notifier.
//! 2. The port must never be called with the tables locked, and must not block: telling the
//!    kernel to drop an entry waits for the directory's lock, which a FUSE request in flight
//!    may hold while it waits for us. The port queues notes for a thread of its own.
//! 3. A key maps to a path as `names.rs` says; other keys are ignored.
//! 4. When notifications stop working, the TTLs fall back to short ones (`set_ttls`), and the
//!    kernel forgets what it holds, since it was given those entries for the long TTL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::meta::{Elsewhere, KernelNote};
use super::Fs;

/// The kernel's caches, as far as `fs` needs them: notes to forget entries and nodes.
pub trait KernelCache: Send + Sync + std::fmt::Debug {
    /// Forgets what `notes` name; returns at once (the work is queued).
    fn invalidate(&self, notes: Vec<KernelNote>);
}

/// The kernel's side of the mount: the port to its caches and the TTL its entries get.
#[derive(Debug)]
pub(super) struct Kernel {
    /// Set once the session exists.
    port: OnceLock<Arc<dyn KernelCache>>,
    /// The TTL of entries and attributes handed to the kernel, in nanoseconds.
    ttl_nanos: AtomicU64,
}

impl Kernel {
    /// Entries handed out with `ttl`, no port yet.
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            port: OnceLock::new(),
            ttl_nanos: AtomicU64::new(nanos(ttl)),
        }
    }

    /// Tells the kernel to forget what `notes` name (see 2.).
    pub(super) fn tell(&self, notes: Vec<KernelNote>) {
        if let (Some(port), false) = (self.port.get(), notes.is_empty()) {
            port.invalidate(notes);
        }
    }
}

fn nanos(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)
}

impl Fs {
    /// Connects the kernel's caches, once the session exists.
    pub fn attach_kernel(&self, port: Arc<dyn KernelCache>) {
        let _ = self.kernel.port.set(port);
    }

    /// How long the kernel may keep entries and attributes it is given now.
    pub fn ttl(&self) -> Duration {
        Duration::from_nanos(self.kernel.ttl_nanos.load(Ordering::Relaxed))
    }

    /// Trusts attributes and listings for `ttl` and misses for `negative_ttl` from now on;
    /// when that is shorter than before, the kernel forgets what it holds (see 4.).
    pub fn set_ttls(&self, ttl: Duration, negative_ttl: Duration) {
        self.kernel.ttl_nanos.store(nanos(ttl), Ordering::Relaxed);
        let notes = self.tables.lock().meta.set_ttls(ttl, negative_ttl);
        self.kernel.tell(notes);
    }

    /// The object at `key` changed elsewhere: what may be out of date is forgotten, here and
    /// in the kernel. Returns whether anything was (false for keys outside the mount and for
    /// what memory already agrees with, such as this mount's own commits).
    pub fn changed_elsewhere(&self, key: &str, change: &Elsewhere) -> bool {
        let Some(path) = self.names.path_of_key(key) else {
            return false;
        };
        let notes = {
            let mut t = self.tables.lock();
            t.meta.changed_unlisted(&path);
            t.meta.changed_elsewhere(&path, change)
        };
        if notes.is_empty() {
            return false;
        }
        tracing::debug!(key, ?change, "changed elsewhere");
        self.kernel.tell(notes);
        true
    }
}
