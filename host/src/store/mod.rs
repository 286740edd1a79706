//! The `store` capability: an ordered key-value store with prefix scans and atomic commits
//! guarded by compare-and-set conditions, behind one trait with one module per backend.

mod capability;
#[cfg(test)]
mod conformance;
mod dry_run;
pub mod postgres;
pub mod sqlite;
pub mod tls;
mod wal_vfs;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use capability::{StoreCtx, StoreView, add_to_linker};
pub use dry_run::DryRun;

/// A boxed future, so backends can sit behind `dyn` trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The guard at this index did not hold; nothing was written.
    #[error("guard {0} of the commit did not hold")]
    Conflict(u32),
    /// The backend failed; nothing was written.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// A compare-and-set condition of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key holds no value.
    Absent(Vec<u8>),
    /// The key holds some value.
    Present(Vec<u8>),
    /// The key holds exactly this value.
    Equals(Vec<u8>, Vec<u8>),
}

impl Condition {
    /// The key the condition is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Condition::Absent(key) | Condition::Present(key) | Condition::Equals(key, _) => key,
        }
    }

    /// Whether it holds of the value read for its key.
    pub fn holds(&self, value: Option<&[u8]>) -> bool {
        match self {
            Condition::Absent(_) => value.is_none(),
            Condition::Present(_) => value.is_some(),
            Condition::Equals(_, expected) => value == Some(expected.as_slice()),
        }
    }
}

/// One write of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put(Vec<u8>, Vec<u8>),
    /// Remove; absent keys are no error.
    Delete(Vec<u8>),
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A storage backend of the `store` capability.
pub trait KvBackend: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>>;
    /// Reads several keys, one slot per key in order.
    fn get_many(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, Result<Vec<Option<Vec<u8>>>, StoreError>>;
    /// Lists up to `limit` entries under `prefix` in key order (descending when `reverse`),
    /// strictly after `after` in that order.
    fn scan(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
        reverse: bool,
    ) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>>;
    /// Lists, for each prefix in order, up to `limit` of its entries in ascending key order:
    /// what `scan(prefix, None, limit, false)` answers for each. Backends with a round trip
    /// per statement read them all in one.
    fn scan_prefixes(&self, prefixes: Vec<Vec<u8>>, limit: u32) -> BoxFuture<'_, Result<Vec<Vec<Entry>>, StoreError>> {
        Box::pin(async move {
            let mut answers = Vec::with_capacity(prefixes.len());
            for prefix in prefixes {
                answers.push(self.scan(prefix, None, limit, false).await?);
            }
            Ok(answers)
        })
    }
    /// Applies every op atomically if every guard holds.
    fn commit(&self, guards: Vec<Condition>, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Why a storage URL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL names no backend this host has.
    #[error("unknown storage scheme in {0:?}; expected sqlite://PATH or postgres://USER:PASS@HOST:PORT/DB")]
    UnknownScheme(String),
    /// The backend refused to open.
    #[error("{0}")]
    Backend(String),
}

/// Opens the backend a storage URL names: `sqlite://PATH`, or
/// `postgres://USER:PASS@HOST:PORT/DB` with at most `connections` pooled connections, over TLS
/// only if the URL's `sslmode` asks for it.
pub async fn open(url: &str, connections: usize) -> Result<Arc<dyn KvBackend>, OpenError> {
    open_with_tls(url, connections, &tls::TlsSettings::default()).await
}

/// Like [`open`], with PostgreSQL's TLS settings.
pub async fn open_with_tls(
    url: &str,
    connections: usize,
    tls: &tls::TlsSettings,
) -> Result<Arc<dyn KvBackend>, OpenError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let store = sqlite::SqliteStore::open(path).map_err(|e| OpenError::Backend(e.to_string()))?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = postgres::PostgresStore::open(url, connections, tls)
            .await
            .map_err(OpenError::Backend)?;
        Ok(Arc::new(store))
    } else {
        Err(OpenError::UnknownScheme(url.to_owned()))
    }
}

/// The keys a scan reads: from `low` (itself included or not) up to `high`, excluded (none:
/// to the end of the key space).
#[derive(Debug, PartialEq, Eq)]
pub struct ScanRange {
    /// The lowest key.
    pub low: Vec<u8>,
    /// Whether `low` itself is in the range.
    pub low_inclusive: bool,
    /// The first key past the range.
    pub high: Option<Vec<u8>>,
}

/// The range of a scan of `prefix`, narrowed by the cursor `after` in the scan's direction:
/// `prefix <= key < prefix_end`, then past the cursor.
pub fn scan_range(prefix: &[u8], after: Option<&[u8]>, reverse: bool) -> ScanRange {
    let end = prefix_end(prefix);
    let (low, low_inclusive, high) = match (reverse, after) {
        (false, Some(after)) if after >= prefix => (after.to_vec(), false, end),
        (true, Some(after)) if end.as_deref().is_none_or(|end| after < end) => {
            (prefix.to_vec(), true, Some(after.to_vec()))
        }
        _ => (prefix.to_vec(), true, end),
    };
    ScanRange {
        low,
        low_inclusive,
        high,
    }
}

/// The smallest key greater than every key starting with `prefix`, if there is one.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
