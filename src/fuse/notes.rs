//! The bounded queue between the filesystem (which learns of changes: S3 events, its own
//! commits) and the thread that tells the kernel (`KernelNotifier`).
//!
//! Non-obvious problems:
//! 1. What fills it is remote: an event storm on the bucket's queue may outrun the kernel,
//!    whose notifications wait for directory locks. So the queue holds at most `MAX_NOTES`
//!    notes; past that, each note is coalesced into an invalidation of its directory (the
//!    entry's parent, or the inode itself), kept in a set of at most `MAX_DIRS`; and past
//!    that, notes are dropped and counted, with one warning. A dropped note leaves the
//!    kernel's copy to expire with its TTL, as with notifications off.
//! 2. The coalesced directories are told before newer notes, and each only once however many
//!    notes were folded into it.

use std::collections::{HashSet, VecDeque};

use parking_lot::{Condvar, Mutex};

use crate::fs::{Ino, KernelNote};

/// Notes held at most: ~100 bytes each, so a few MiB at the bound.
pub const MAX_NOTES: usize = 32_768;

/// Directories held for coalesced notes at most.
pub const MAX_DIRS: usize = 8_192;

/// Notes taken by the kernel thread at a time.
const BATCH: usize = 256;

#[derive(Debug, Default)]
struct Queued {
    notes: VecDeque<KernelNote>,
    dirs: HashSet<Ino>,
    dropped: u64,
    closed: bool,
}

/// Notes waiting for the kernel.
#[derive(Debug, Default)]
pub struct NoteQueue {
    queued: Mutex<Queued>,
    ready: Condvar,
}

impl NoteQueue {
    /// Adds `notes`, coalescing or dropping past the bounds (1.).
    pub fn push(&self, notes: Vec<KernelNote>) {
        let mut q = self.queued.lock();
        for note in notes {
            if q.notes.len() < MAX_NOTES {
                q.notes.push_back(note);
                continue;
            }
            let dir = match note {
                KernelNote::Entry { parent, .. } => parent,
                KernelNote::Inode(ino) => ino,
            };
            if q.dirs.len() < MAX_DIRS || q.dirs.contains(&dir) {
                q.dirs.insert(dir);
            } else {
                if q.dropped == 0 {
                    tracing::warn!(
                        "kernel notifications are {MAX_NOTES} behind and {MAX_DIRS} directories \
                         are waiting: dropping notes (the kernel's entries expire with their TTL)"
                    );
                }
                q.dropped += 1;
            }
        }
        drop(q);
        self.ready.notify_one();
    }

    /// The next notes to tell the kernel, waiting for some; None once closed and empty.
    pub fn next_batch(&self) -> Option<Vec<KernelNote>> {
        let mut q = self.queued.lock();
        while q.notes.is_empty() && q.dirs.is_empty() {
            if q.closed {
                return None;
            }
            self.ready.wait(&mut q);
        }
        let mut batch: Vec<KernelNote> = q.dirs.drain().map(KernelNote::Inode).collect();
        let n = q.notes.len().min(BATCH);
        batch.extend(q.notes.drain(..n));
        Some(batch)
    }

    /// Ends the queue: `next_batch` returns what is left, then None.
    pub fn close(&self) {
        self.queued.lock().closed = true;
        self.ready.notify_all();
    }

    /// Notes waiting, directories waiting, and notes dropped so far.
    #[cfg(test)]
    fn depth(&self) -> (usize, usize, u64) {
        let q = self.queued.lock();
        (q.notes.len(), q.dirs.len(), q.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent: u64, n: usize) -> KernelNote {
        KernelNote::Entry {
            parent: Ino(parent),
            name: format!("f{n}"),
            deleted: None,
        }
    }

    #[test]
    fn a_storm_is_bounded_coalesced_into_directories_then_dropped() {
        let q = NoteQueue::default();
        // A million notes in one directory: one directory invalidation past the bound.
        q.push((0..1_000_000).map(|n| entry(7, n)).collect());
        assert_eq!(q.depth(), (MAX_NOTES, 1, 0));
        // Notes in more directories than the set holds: the excess is dropped and counted.
        q.push(
            (0..MAX_DIRS + 10)
                .map(|d| entry(100 + d as u64, 0))
                .collect(),
        );
        assert_eq!(q.depth(), (MAX_NOTES, MAX_DIRS, 11));
        let first = q.next_batch().unwrap();
        assert_eq!(
            first.len(),
            MAX_DIRS + BATCH,
            "directories first, then a batch"
        );
        assert!(first.contains(&KernelNote::Inode(Ino(7))));
        assert_eq!(
            first[MAX_DIRS],
            entry(7, 0),
            "then the oldest notes, in order"
        );
        q.close();
        let mut rest = 0;
        while let Some(batch) = q.next_batch() {
            rest += batch.len();
        }
        assert_eq!(
            rest,
            MAX_NOTES - BATCH,
            "what was queued is told after close"
        );
    }

    #[test]
    fn the_kernel_thread_waits_for_notes_and_ends_when_closed() {
        let q = std::sync::Arc::new(NoteQueue::default());
        let reader = {
            let q = std::sync::Arc::clone(&q);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while let Some(batch) = q.next_batch() {
                    seen.extend(batch);
                }
                seen
            })
        };
        q.push(vec![KernelNote::Inode(Ino(1))]);
        q.push(vec![entry(1, 2)]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        q.close();
        assert_eq!(
            reader.join().unwrap(),
            vec![KernelNote::Inode(Ino(1)), entry(1, 2)]
        );
    }
}
