//! A view of a store for a dry run: reads go to the live data, commits are judged by their
//! guards as the backend would judge them and then discarded.

use std::sync::Arc;

use super::{BoxFuture, Condition, Entry, KvBackend, Op, StoreError};

/// Reads through to `live`; writes nothing.
pub struct DryRun {
    live: Arc<dyn KvBackend>,
}

impl DryRun {
    /// A view of `live` that discards every write.
    pub fn over(live: Arc<dyn KvBackend>) -> Arc<dyn KvBackend> {
        Arc::new(DryRun { live })
    }
}

impl KvBackend for DryRun {
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        self.live.get(key)
    }

    fn get_many(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, Result<Vec<Option<Vec<u8>>>, StoreError>> {
        self.live.get_many(keys)
    }

    fn scan(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
        reverse: bool,
    ) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>> {
        self.live.scan(prefix, after, limit, reverse)
    }

    fn scan_prefixes(&self, prefixes: Vec<Vec<u8>>, limit: u32) -> BoxFuture<'_, Result<Vec<Vec<Entry>>, StoreError>> {
        self.live.scan_prefixes(prefixes, limit)
    }

    fn commit(&self, guards: Vec<Condition>, _ops: Vec<Op>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let keys = guards.iter().map(|guard| guard.key().to_vec()).collect();
            let values = self.live.get_many(keys).await?;
            match guards
                .iter()
                .zip(&values)
                .position(|(guard, value)| !guard.holds(value.as_deref()))
            {
                Some(index) => Err(StoreError::Conflict(index as u32)),
                None => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn reads_are_live_and_writes_are_judged_then_dropped() {
        let dir = tempfile_dir();
        let live: Arc<dyn KvBackend> = Arc::new(SqliteStore::open(dir.join("kv.db").to_str().unwrap()).unwrap());
        live.commit(vec![], vec![Op::Put(b"a".to_vec(), b"1".to_vec())])
            .await
            .unwrap();
        let view = DryRun::over(live.clone());
        assert_eq!(view.get(b"a".to_vec()).await.unwrap(), Some(b"1".to_vec()));
        view.commit(
            vec![Condition::Equals(b"a".to_vec(), b"1".to_vec())],
            vec![Op::Put(b"b".to_vec(), b"2".to_vec()), Op::Delete(b"a".to_vec())],
        )
        .await
        .unwrap();
        assert_eq!(live.get(b"b".to_vec()).await.unwrap(), None);
        assert_eq!(live.get(b"a".to_vec()).await.unwrap(), Some(b"1".to_vec()));
        let refused = view
            .commit(
                vec![Condition::Absent(b"b".to_vec()), Condition::Absent(b"a".to_vec())],
                vec![Op::Put(b"c".to_vec(), b"3".to_vec())],
            )
            .await;
        assert_eq!(refused, Err(StoreError::Conflict(1)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dry-run-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
