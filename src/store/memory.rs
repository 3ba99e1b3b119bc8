//! An in-memory `ObjectStore` for unit tests of logic: paging, lookups, caching, read-ahead.
//!
//! Non-obvious problems:
//! 1. Listing must follow S3's rules exactly (keys in byte order, common prefixes rolled up at the
//!    first delimiter after the prefix, `max_keys` counting keys and prefixes together), or the
//!    tests of paging prove nothing about a real server.
//! 2. Request counters let tests assert costs ("ls of N entries is ceil(N/1000) LISTs").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ListPage, ListRequest, ListStart, ObjectMeta, ObjectStore, StoreError, StoreErrorKind,
};

/// Requests served so far, per S3 call.
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// HeadObject calls.
    pub head: AtomicU64,
    /// ListObjectsV2 calls.
    pub list: AtomicU64,
    /// GetObject calls.
    pub get: AtomicU64,
}

/// A bucket held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, String)>>,
    version: AtomicU64,
    /// Request counters.
    pub counts: RequestCounts,
}

impl MemoryStore {
    /// An empty bucket.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `body` under `key`, with a fresh ETag.
    pub fn put(&self, key: &str, body: impl Into<Bytes>) {
        let n = self.version.fetch_add(1, Ordering::Relaxed);
        let etag = format!("\"etag-{n}\"");
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_string(), (body.into(), etag));
    }

    fn meta(key: &str, body: &Bytes, etag: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: body.len() as u64,
            etag: etag.to_string(),
            last_modified: SystemTime::UNIX_EPOCH,
        }
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn head_bucket(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.counts.head.fetch_add(1, Ordering::Relaxed);
        let objects = self.objects.lock().unwrap();
        Ok(objects.get(key).map(|(b, e)| Self::meta(key, b, e)))
    }

    async fn list_objects_v2(&self, request: &ListRequest) -> Result<ListPage, StoreError> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        let objects = self.objects.lock().unwrap();
        let after = match &request.start {
            ListStart::Beginning => None,
            ListStart::Token(t) | ListStart::After(t) => Some(t.clone()),
        };
        let mut page = ListPage::default();
        let mut count = 0;
        let mut last: Option<String> = None;
        for (key, (body, etag)) in objects.range(request.prefix.clone()..) {
            if !key.starts_with(&request.prefix) {
                break;
            }
            let rest = &key[request.prefix.len()..];
            let rolled_up = request
                .delimiter
                .as_deref()
                .and_then(|d| rest.find(d).map(|i| &rest[..i + d.len()]));
            let entry = match rolled_up {
                Some(common) => format!("{}{common}", request.prefix),
                None => key.clone(),
            };
            if after.as_ref().is_some_and(|a| entry.as_str() <= a.as_str()) {
                continue;
            }
            if last.as_ref() == Some(&entry) {
                continue;
            }
            if count == request.max_keys {
                page.next_continuation_token = last.clone();
                break;
            }
            count += 1;
            if rolled_up.is_some() {
                page.common_prefixes.push(entry.clone());
            } else {
                page.objects.push(Self::meta(key, body, etag));
            }
            last = Some(entry);
        }
        Ok(page)
    }

    async fn get_object_range(
        &self,
        key: &str,
        etag: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let objects = self.objects.lock().unwrap();
        let (body, current) = objects.get(key).ok_or_else(|| {
            StoreError::new(StoreErrorKind::NotFound, format!("NoSuchKey: {key}"))
        })?;
        if current != etag {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                format!("PreconditionFailed: {key}"),
            ));
        }
        let len = body.len() as u64;
        if range.start >= len && len > 0 {
            return Err(StoreError::new(
                StoreErrorKind::InvalidRange,
                "InvalidRange",
            ));
        }
        let end = range.end.min(len);
        Ok(body.slice(range.start.min(len) as usize..end as usize))
    }
}
