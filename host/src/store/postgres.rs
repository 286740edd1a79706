//! The PostgreSQL backend of the store, shared by every host pointed at the same database: one
//! `webhooks_kv` table of bytea pairs (bytea sorts bytewise, as the store's keys must), pooled
//! connections, and commits whose guards hold when several hosts commit at once.
//!
//! A commit takes a transaction-scoped advisory lock on every key it guards or writes, in one
//! sorted order, before it reads its guards; two commits that touch a common key therefore run
//! one after the other, and each sees the other's writes, which is what a compare-and-set
//! needs. Commits touching more keys than [`WIDE_COMMIT`] (retention sweeps, removing a large
//! group) take one exclusive lock instead, which every other commit takes shared, so no commit
//! holds thousands of locks.

use std::collections::HashMap;
use std::time::Duration;

use super::tls::TlsSettings;
use super::{BoxFuture, Condition, Entry, KvBackend, Op, ScanRange, StoreError, scan_range};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use sha2::{Digest, Sha256};

/// The first key of every advisory lock this store takes, so they never collide with other
/// applications' locks in the same database ("WHK1").
const LOCK_CLASS: i32 = 0x5748_4b31;
/// The second key of the lock that wide commits take exclusive and others take shared.
const WIDE_LOCK: i32 = 0;
/// Commits touching more distinct keys than this lock the whole store instead of each key.
const WIDE_COMMIT: usize = 256;
/// How long a call waits for a pooled connection before the store counts as unavailable.
const POOL_WAIT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS webhooks_kv (key BYTEA PRIMARY KEY, value BYTEA NOT NULL)";

/// A store in a PostgreSQL database.
pub struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER:PASS@HOST:PORT/DB`) over TLS as
    /// `tls` says, with at most `connections` pooled connections, and creates the table if
    /// missing.
    pub async fn open(url: &str, connections: usize, tls: &TlsSettings) -> Result<Self, String> {
        let (config, connector) = connection_settings(url, tls)?;
        let server = describe(&config);
        let manager = Manager::from_config(
            config,
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| e.to_string())?;
        let client = pool.get().await.map_err(|e| {
            let cause = match &e {
                // The pool's own wording adds nothing to the driver's.
                deadpool_postgres::PoolError::Backend(e) => causes(e),
                other => causes(other),
            };
            format!("cannot connect to {server}: {cause}")
        })?;
        // Hosts starting together would race on the catalog: one creates, the others wait.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, -1); {SCHEMA}; COMMIT;"
            ))
            .await
            .map_err(|e| format!("cannot create the table on {server}: {}", causes(&e)))?;
        Ok(PostgresStore { pool })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("no database connection: {e}")))
    }
}

/// The driver's settings and TLS connector for `url` and `tls`. A mode in `tls` overrides the
/// URL's own `sslmode`; with neither, no TLS, as the Go webhooks service's default (the
/// driver's own default would be `prefer`).
pub fn connection_settings(
    url: &str,
    tls: &TlsSettings,
) -> Result<(tokio_postgres::Config, tokio_postgres_rustls::MakeRustlsConnect), String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    match tls.mode {
        Some(mode) => {
            config.ssl_mode(mode.negotiation());
        }
        None if !url.contains("sslmode=") => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        None => {}
    }
    let connector = tls
        .connector()
        .map_err(|fault| format!("TLS {}: {}", fault.setting, fault.message))?;
    Ok((config, connector))
}

/// Where a configuration points, for start-up errors: host, port, database and user, never
/// the password.
fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(index)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{name}:{port}")
        })
        .collect();
    format!(
        "PostgreSQL at {} (database {:?}, user {:?})",
        if hosts.is_empty() {
            "localhost:5432".to_owned()
        } else {
            hosts.join(",")
        },
        config.get_dbname().unwrap_or_default(),
        config.get_user().unwrap_or_default(),
    )
}

/// An error and each of its causes that it does not already spell out, in one line.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = error.source();
    }
    line.replace('\n', " ")
}

fn unavailable(e: tokio_postgres::Error) -> StoreError {
    // The server's own message says more than the driver's summary.
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    StoreError::Unavailable(message)
}

/// The advisory lock of one key: a stable hash, the same on every host.
fn lock_of(key: &[u8]) -> i32 {
    let digest = Sha256::digest(key);
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Each key's last write in the commit: `None` deletes it. Later ops on a key replace earlier
/// ones, as applying them in order would.
fn final_writes(ops: Vec<Op>) -> HashMap<Vec<u8>, Option<Vec<u8>>> {
    let mut writes = HashMap::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put(key, value) => writes.insert(key, Some(value)),
            Op::Delete(key) => writes.insert(key, None),
        };
    }
    writes
}

/// Whether each guard holds against the current values; the index of the first that does not.
fn first_failed(guards: &[Condition], current: &HashMap<Vec<u8>, Vec<u8>>) -> Option<u32> {
    guards
        .iter()
        .position(|guard| !guard.holds(current.get(guard.key()).map(Vec::as_slice)))
        .map(|index| index as u32)
}

async fn commit_on(client: &Object, guards: Vec<Condition>, ops: Vec<Op>) -> Result<(), StoreError> {
    let guard_keys: Vec<Vec<u8>> = guards.iter().map(|guard| guard.key().to_vec()).collect();
    let writes = final_writes(ops);
    let mut locks: Vec<i32> = guard_keys.iter().chain(writes.keys()).map(|k| lock_of(k)).collect();
    locks.sort_unstable();
    locks.dedup();
    let wide = locks.len() > WIDE_COMMIT;

    let lock_keys = client
        .prepare_cached("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k")
        .await
        .map_err(unavailable)?;
    let lock_whole = client
        .prepare_cached(if wide {
            "SELECT pg_advisory_xact_lock($1, $2)"
        } else {
            "SELECT pg_advisory_xact_lock_shared($1, $2)"
        })
        .await
        .map_err(unavailable)?;
    let read = client
        .prepare_cached("SELECT key, value FROM webhooks_kv WHERE key = ANY($1)")
        .await
        .map_err(unavailable)?;

    // One round trip. Requests go out in the order their futures are first polled, which
    // `join!` does in order, and the server runs them in that order: the guards are read after
    // every lock is held, from a snapshot that sees every commit that held them before.
    let begin = client.batch_execute("BEGIN");
    let whole = client.execute(&lock_whole, &[&LOCK_CLASS, &WIDE_LOCK]);
    let each = async {
        if wide {
            Ok(0)
        } else {
            client.execute(&lock_keys, &[&LOCK_CLASS, &locks]).await
        }
    };
    let current = async {
        if guard_keys.is_empty() {
            Ok(Vec::new())
        } else {
            client.query(&read, &[&guard_keys]).await
        }
    };
    let (begun, whole, each, current) = tokio::join!(begin, whole, each, current);
    begun.map_err(unavailable)?;
    whole.map_err(unavailable)?;
    each.map_err(unavailable)?;
    let current: HashMap<Vec<u8>, Vec<u8>> = current
        .map_err(unavailable)?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    if let Some(index) = first_failed(&guards, &current) {
        client.batch_execute("ROLLBACK").await.map_err(unavailable)?;
        return Err(StoreError::Conflict(index));
    }

    let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in writes {
        match value {
            Some(value) => {
                put_keys.push(key);
                put_values.push(value);
            }
            None => deletes.push(key),
        }
    }
    let upsert = client
        .prepare_cached(
            "INSERT INTO webhooks_kv (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .await
        .map_err(unavailable)?;
    let delete = client
        .prepare_cached("DELETE FROM webhooks_kv WHERE key = ANY($1)")
        .await
        .map_err(unavailable)?;
    // One more round trip: the writes and the commit. A failed write aborts the transaction,
    // and the COMMIT after it then only rolls back; its error is what is reported.
    let puts = async {
        if put_keys.is_empty() {
            Ok(0)
        } else {
            client.execute(&upsert, &[&put_keys, &put_values]).await
        }
    };
    let removals = async {
        if deletes.is_empty() {
            Ok(0)
        } else {
            client.execute(&delete, &[&deletes]).await
        }
    };
    let (puts, removals, committed) = tokio::join!(puts, removals, client.batch_execute("COMMIT"));
    puts.map_err(unavailable)?;
    removals.map_err(unavailable)?;
    committed.map_err(unavailable)
}

/// Builds the scan statement for these bounds; `$1` is the low bound, `$2` the high one if
/// any, and `$3` the limit.
fn scan_sql(low_inclusive: bool, has_high: bool, reverse: bool) -> String {
    let mut sql = String::from("SELECT key, value FROM webhooks_kv WHERE key ");
    sql.push_str(if low_inclusive { ">= $1" } else { "> $1" });
    if has_high {
        sql.push_str(" AND key < $2");
    }
    sql.push_str(if reverse { " ORDER BY key DESC" } else { " ORDER BY key" });
    sql.push_str(if has_high { " LIMIT $3" } else { " LIMIT $2" });
    sql
}

impl KvBackend for PostgresStore {
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT value FROM webhooks_kv WHERE key = $1")
                .await
                .map_err(unavailable)?;
            let row = client.query_opt(&statement, &[&key]).await.map_err(unavailable)?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn get_many(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, Result<Vec<Option<Vec<u8>>>, StoreError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT key, value FROM webhooks_kv WHERE key = ANY($1)")
                .await
                .map_err(unavailable)?;
            let rows = client.query(&statement, &[&keys]).await.map_err(unavailable)?;
            let found: HashMap<Vec<u8>, Vec<u8>> = rows.into_iter().map(|row| (row.get(0), row.get(1))).collect();
            Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
        })
    }

    fn scan(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
        reverse: bool,
    ) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move {
            let ScanRange {
                low,
                low_inclusive,
                high,
            } = scan_range(&prefix, after.as_deref(), reverse);
            let client = self.client().await?;
            let statement = client
                .prepare_cached(&scan_sql(low_inclusive, high.is_some(), reverse))
                .await
                .map_err(unavailable)?;
            let limit = i64::from(limit);
            let rows = match &high {
                Some(high) => client.query(&statement, &[&low, high, &limit]).await,
                None => client.query(&statement, &[&low, &limit]).await,
            }
            .map_err(unavailable)?;
            Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
        })
    }

    fn commit(&self, guards: Vec<Condition>, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if guards.is_empty() && ops.is_empty() {
                return Ok(());
            }
            let client = self.client().await?;
            let result = commit_on(&client, guards, ops).await;
            if let Err(StoreError::Unavailable(_)) = &result {
                // The connection may be left inside a transaction: try to end it, and if that
                // fails too, drop the connection rather than hand it to the next call.
                if client.batch_execute("ROLLBACK").await.is_err() {
                    drop(Object::take(client));
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_write_of_a_key_wins() {
        let writes = final_writes(vec![
            Op::Put(b"a".to_vec(), b"1".to_vec()),
            Op::Delete(b"a".to_vec()),
            Op::Delete(b"b".to_vec()),
            Op::Put(b"b".to_vec(), b"2".to_vec()),
        ]);
        assert_eq!(writes[&b"a".to_vec()], None);
        assert_eq!(writes[&b"b".to_vec()], Some(b"2".to_vec()));
    }

    #[test]
    fn guards_are_checked_in_order() {
        let current: HashMap<Vec<u8>, Vec<u8>> = [(b"k".to_vec(), b"1".to_vec())].into_iter().collect();
        let guards = vec![
            Condition::Present(b"k".to_vec()),
            Condition::Equals(b"k".to_vec(), b"1".to_vec()),
            Condition::Absent(b"k".to_vec()),
            Condition::Absent(b"j".to_vec()),
        ];
        assert_eq!(first_failed(&guards, &current), Some(2));
        assert_eq!(first_failed(&guards[..2], &current), None);
        assert_eq!(
            first_failed(&[Condition::Equals(b"k".to_vec(), b"2".to_vec())], &current),
            Some(0)
        );
    }

    #[test]
    fn scan_statements_bind_what_they_use() {
        assert_eq!(
            scan_sql(true, true, false),
            "SELECT key, value FROM webhooks_kv WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3"
        );
        assert_eq!(
            scan_sql(false, false, true),
            "SELECT key, value FROM webhooks_kv WHERE key > $1 ORDER BY key DESC LIMIT $2"
        );
        assert_eq!(lock_of(b"a"), lock_of(b"a"));
        assert_ne!(lock_of(b"a"), lock_of(b"b"));
    }
}
