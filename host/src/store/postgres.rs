//! The PostgreSQL backend of the store, shared by every host pointed at the same database: one
//! `webhooks_kv` table of bytea pairs (bytea sorts bytewise, as the store's keys must), pooled
//! connections, and commits whose guards hold when several hosts commit at once.
//!
//! A commit takes a transaction-scoped advisory lock on every key it guards or writes, in one
//! sorted order, before it reads its guards; two commits that touch a common key therefore run
//! one after the other, and each sees the other's writes, which is what a compare-and-set
//! needs. The keys also fall in [`BUCKETS`] buckets: a commit takes its buckets' locks shared
//! before its keys' locks. A commit touching more keys than [`WIDE_COMMIT`] (a large create,
//! a retention sweep, removing a large group) takes its buckets exclusive instead of locking
//! each key, so no commit holds more than a few thousand locks, and a wide commit holds up only
//! the commits that share a bucket with it, never the whole store.
//!
//! A commit is one call of a server-side function ([`COMMIT_FUNCTION`]) that takes the locks,
//! reads the guards and writes: one statement and one round trip, so its locks are held only
//! while the server runs it, never while a reply travels to this host and its next request
//! back.
//!
//! Every host sharing a database must lock this way: a host of a release that took one
//! store-wide lock for wide commits is not excluded by these bucket locks.

use std::collections::HashMap;
use std::time::Duration;

use super::tls::TlsSettings;
use super::{BoxFuture, Condition, Entry, KvBackend, Op, ScanRange, StoreError, prefix_end, scan_range};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use sha2::{Digest, Sha256};

/// The first key of every advisory lock this store takes, so they never collide with other
/// applications' locks in the same database ("WHK1").
const LOCK_CLASS: i32 = 0x5748_4b31;
/// The first key of every bucket lock ("WHK2").
pub(super) const BUCKET_CLASS: i32 = 0x5748_4b32;
/// How many buckets the keys fall in: a wide commit holds at most this many locks.
const BUCKETS: i32 = 4_096;
/// Commits touching more distinct keys than this lock their buckets exclusive instead of
/// each key.
const WIDE_COMMIT: usize = 256;
/// How long a call waits for a pooled connection before the store counts as unavailable.
const POOL_WAIT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS webhooks_kv (key BYTEA PRIMARY KEY, value BYTEA NOT NULL)";
/// The commit of [`PostgresStore`] as one server-side function, so that a commit is one
/// statement and one round trip: its locks (buckets before keys, each list sorted), its guards
/// read after every lock is held, and its writes only when every guard holds. It answers the
/// position of the first guard that does not hold, or NULL once written. A volatile function
/// in READ COMMITTED takes a new snapshot for each statement in it, so the guards see every
/// commit that held the locks before. Versioned by name: a change to it is a new function,
/// so hosts of different releases sharing a database each call their own.
///
/// When the host expects every written key to be new (`fresh`, see [`expect_fresh`]), the
/// writes are first tried as a plain `INSERT`: an upsert probes the index for a conflict before
/// it inserts, so a new row costs it two descents of the index where a plain insert, which
/// checks uniqueness on its way down, costs one. A key that exists after all rolls the insert
/// back (the block is a subtransaction) and the upsert writes everything.
const COMMIT_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION webhooks_commit_v2(
    bucket_class int4, buckets int4[], exclusive_buckets boolean, key_class int4, key_locks int4[],
    guard_keys bytea[], guard_kinds int2[], guard_values bytea[],
    put_keys bytea[], put_values bytea[], deleted bytea[], fresh boolean)
RETURNS int4 LANGUAGE plpgsql VOLATILE AS $body$
DECLARE
    failed int4;
BEGIN
    IF exclusive_buckets THEN
        PERFORM pg_advisory_xact_lock(bucket_class, b) FROM unnest(buckets) AS b;
    ELSE
        PERFORM pg_advisory_xact_lock_shared(bucket_class, b) FROM unnest(buckets) AS b;
        PERFORM pg_advisory_xact_lock(key_class, k) FROM unnest(key_locks) AS k;
    END IF;
    IF cardinality(guard_keys) > 0 THEN
        SELECT g.position INTO failed
        FROM unnest(guard_keys, guard_kinds, guard_values) WITH ORDINALITY
            AS g(guarded, kind, expected, position)
        LEFT JOIN webhooks_kv AS kv ON kv.key = g.guarded
        WHERE NOT CASE g.kind
            WHEN 0 THEN kv.key IS NULL
            WHEN 1 THEN kv.key IS NOT NULL
            ELSE kv.key IS NOT NULL AND kv.value = g.expected
        END
        ORDER BY g.position
        LIMIT 1;
        IF failed IS NOT NULL THEN
            RETURN failed - 1;
        END IF;
    END IF;
    IF cardinality(put_keys) > 0 AND fresh THEN
        BEGIN
            INSERT INTO webhooks_kv (key, value) SELECT * FROM unnest(put_keys, put_values);
        EXCEPTION WHEN unique_violation THEN
            fresh := false;
        END;
    END IF;
    IF cardinality(put_keys) > 0 AND NOT fresh THEN
        INSERT INTO webhooks_kv (key, value) SELECT * FROM unnest(put_keys, put_values)
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
    END IF;
    IF cardinality(deleted) > 0 THEN
        DELETE FROM webhooks_kv WHERE key = ANY(deleted);
    END IF;
    RETURN NULL;
END
$body$"#;

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
                "BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, -1); {SCHEMA}; {COMMIT_FUNCTION}; COMMIT;"
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

/// The bucket of one key: that of its last NUL-separated part, which in the plugin's layout
/// is the id of what the key belongs to, so a delivery's or a webhook's keys share one bucket
/// and a commit locks about one bucket per thing it touches. Any stable function would keep
/// commits apart; this one keeps the count of bucket locks low.
fn bucket_of(key: &[u8]) -> i32 {
    let owner = match key.iter().rposition(|&byte| byte == 0) {
        Some(at) if at + 1 < key.len() => &key[at + 1..],
        _ => key,
    };
    lock_of(owner).rem_euclid(BUCKETS)
}

/// The advisory locks a commit takes, each list sorted, so that every commit takes its locks in
/// one order (buckets before keys) and no two commits deadlock.
#[derive(Debug, PartialEq)]
pub(super) enum LockPlan {
    /// The buckets shared, then each key exclusive.
    Narrow { buckets: Vec<i32>, keys: Vec<i32> },
    /// The buckets exclusive.
    Wide { buckets: Vec<i32> },
}

/// The locks of a commit touching these keys (its guards' and its writes').
pub(super) fn lock_plan<'a>(keys: impl Iterator<Item = &'a [u8]>) -> LockPlan {
    let (mut locks, mut buckets): (Vec<i32>, Vec<i32>) = keys.map(|key| (lock_of(key), bucket_of(key))).unzip();
    locks.sort_unstable();
    locks.dedup();
    buckets.sort_unstable();
    buckets.dedup();
    if locks.len() > WIDE_COMMIT {
        LockPlan::Wide { buckets }
    } else {
        LockPlan::Narrow { buckets, keys: locks }
    }
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

/// How the commit function tests a guard: `0` absent, `1` present, `2` equal to its value.
fn guard_kind(guard: &Condition) -> (i16, Option<&[u8]>) {
    match guard {
        Condition::Absent(_) => (0, None),
        Condition::Present(_) => (1, None),
        Condition::Equals(_, expected) => (2, Some(expected.as_slice())),
    }
}

/// Whether a commit's writes are likely all of new keys, so that the commit function tries them
/// as a plain insert first: no key it writes is guarded as present (a record rewritten under a
/// guard on its value, as outcomes and claims do). An intake's records, due entries and log
/// entries are of fresh ids and guarded, if at all, as absent. A guess either way is correct;
/// a wrong `true` costs a rolled-back insert.
fn expect_fresh(guards: &[Condition], writes: &HashMap<Vec<u8>, Option<Vec<u8>>>) -> bool {
    writes.values().any(Option::is_some)
        && !guards
            .iter()
            .any(|guard| !matches!(guard, Condition::Absent(_)) && matches!(writes.get(guard.key()), Some(Some(_))))
}

async fn commit_on(client: &Object, guards: Vec<Condition>, ops: Vec<Op>) -> Result<(), StoreError> {
    let writes = final_writes(ops);
    let fresh = expect_fresh(&guards, &writes);
    let guard_keys: Vec<&[u8]> = guards.iter().map(Condition::key).collect();
    let plan = lock_plan(guard_keys.iter().copied().chain(writes.keys().map(Vec::as_slice)));
    let (buckets, exclusive, key_locks) = match plan {
        LockPlan::Narrow { buckets, keys } => (buckets, false, keys),
        LockPlan::Wide { buckets } => (buckets, true, Vec::new()),
    };
    let (guard_kinds, guard_values): (Vec<i16>, Vec<Option<&[u8]>>) = guards.iter().map(guard_kind).unzip();
    let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in &writes {
        match value {
            Some(value) => {
                put_keys.push(key.as_slice());
                put_values.push(value.as_slice());
            }
            None => deletes.push(key.as_slice()),
        }
    }
    let commit = client
        .prepare_cached("SELECT webhooks_commit_v2($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
        .await
        .map_err(unavailable)?;
    let row = client
        .query_one(
            &commit,
            &[
                &BUCKET_CLASS,
                &buckets,
                &exclusive,
                &LOCK_CLASS,
                &key_locks,
                &guard_keys,
                &guard_kinds,
                &guard_values,
                &put_keys,
                &put_values,
                &deletes,
                &fresh,
            ],
        )
        .await
        .map_err(unavailable)?;
    match row.get::<_, Option<i32>>(0) {
        Some(index) => Err(StoreError::Conflict(index as u32)),
        None => Ok(()),
    }
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

    fn scan_prefixes(&self, prefixes: Vec<Vec<u8>>, limit: u32) -> BoxFuture<'_, Result<Vec<Vec<Entry>>, StoreError>> {
        Box::pin(async move {
            let mut answers: Vec<Vec<Entry>> = vec![Vec::new(); prefixes.len()];
            // Each prefix is the range [prefix, its end): one statement reads every range, an
            // index range scan per prefix. The rare prefix with no end (empty, or all 0xff
            // bytes) is scanned on its own.
            let (mut lows, mut highs, mut slots) = (Vec::new(), Vec::new(), Vec::new());
            for (slot, prefix) in prefixes.into_iter().enumerate() {
                match prefix_end(&prefix) {
                    Some(end) => {
                        lows.push(prefix);
                        highs.push(end);
                        slots.push(slot);
                    }
                    None => answers[slot] = self.scan(prefix, None, limit, false).await?,
                }
            }
            if lows.is_empty() {
                return Ok(answers);
            }
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT r.at, e.key, e.value \
                     FROM unnest($1::bytea[], $2::bytea[]) WITH ORDINALITY AS r(low, high, at) \
                     CROSS JOIN LATERAL (SELECT key, value FROM webhooks_kv \
                         WHERE key >= r.low AND key < r.high ORDER BY key LIMIT $3) AS e \
                     ORDER BY r.at, e.key",
                )
                .await
                .map_err(unavailable)?;
            let rows = client
                .query(&statement, &[&lows, &highs, &i64::from(limit)])
                .await
                .map_err(unavailable)?;
            for row in rows {
                let at: i64 = row.get(0);
                let slot = usize::try_from(at - 1)
                    .ok()
                    .and_then(|index| slots.get(index))
                    .ok_or_else(|| StoreError::Unavailable(format!("scan of prefixes: row for range {at}")))?;
                answers[*slot].push((row.get(1), row.get(2)));
            }
            Ok(answers)
        })
    }

    fn commit(&self, guards: Vec<Condition>, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if guards.is_empty() && ops.is_empty() {
                return Ok(());
            }
            // One statement outside any transaction: when it fails, nothing of it is left open
            // on the connection.
            commit_on(&self.client().await?, guards, ops).await
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
    fn only_writes_of_keys_not_guarded_as_present_are_expected_fresh() {
        let writes = |ops: Vec<Op>| final_writes(ops);
        let put = |key: &str| Op::Put(key.as_bytes().to_vec(), b"v".to_vec());
        let intake = writes(vec![put("d"), put("due"), put("seen")]);
        assert!(expect_fresh(&[Condition::Absent(b"seen".to_vec())], &intake));
        assert!(expect_fresh(&[], &intake));
        // An outcome rewrites the record it guards by value.
        let outcome = writes(vec![Op::Delete(b"due".to_vec()), put("d")]);
        assert!(!expect_fresh(
            &[Condition::Equals(b"d".to_vec(), b"old".to_vec())],
            &outcome
        ));
        assert!(!expect_fresh(&[Condition::Present(b"d".to_vec())], &outcome));
        // A guard on a key the commit does not write says nothing about its writes.
        assert!(expect_fresh(
            &[Condition::Equals(b"other".to_vec(), b"x".to_vec())],
            &outcome
        ));
        // Nothing to insert.
        assert!(!expect_fresh(&[], &writes(vec![Op::Delete(b"due".to_vec())])));
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

    fn keys(prefix: &str, count: usize) -> Vec<Vec<u8>> {
        (0..count).map(|i| format!("{prefix}{i}").into_bytes()).collect()
    }

    #[test]
    fn narrow_commits_lock_their_buckets_then_each_key_in_order() {
        // Two deliveries' records, due entries and log entries.
        let keys: Vec<Vec<u8>> = ["d1", "d2"]
            .iter()
            .flat_map(|id| {
                [
                    format!("dl\0{id}"),
                    format!("dd\0t1\0{id}"),
                    format!("lg\0w1\0t1\0{id}"),
                ]
            })
            .chain(["wh\0w1".to_owned(), "ix\0format".to_owned()])
            .map(String::into_bytes)
            .collect();
        let LockPlan::Narrow { buckets, keys: locks } = lock_plan(keys.iter().map(Vec::as_slice)) else {
            panic!("8 keys lock key by key");
        };
        assert_eq!(locks.len(), 8);
        assert_eq!(bucket_of(b"dl\0d1"), bucket_of(b"lg\0w1\0t1\0d1"));
        assert!(locks.is_sorted() && buckets.is_sorted());
        assert!(buckets.iter().all(|bucket| (0..BUCKETS).contains(bucket)));
        assert!(buckets.len() < locks.len(), "keys of one owner share its bucket");
        for key in &keys {
            assert!(buckets.contains(&bucket_of(key)));
        }
    }

    #[test]
    fn a_wide_commit_locks_a_bounded_share_of_the_buckets_of_the_keys_it_touches() {
        // About the keys of a 100-webhook create: each webhook's records and name-search
        // entries.
        let create: Vec<Vec<u8>> = (0..100)
            .flat_map(|webhook| {
                let id = format!("id-{webhook}");
                [
                    format!("wh\0{id}"),
                    format!("wt\0thing\0{id}"),
                    format!("wn\0thing\0name-{webhook}"),
                ]
                .into_iter()
                .chain((0..12).map(move |suffix| format!("gs\0group\0suffix{suffix}\0{id}")))
                .map(String::into_bytes)
                .collect::<Vec<_>>()
            })
            .collect();
        let LockPlan::Wide { buckets } = lock_plan(create.iter().map(Vec::as_slice)) else {
            panic!("1,500 keys lock by bucket");
        };
        assert!(buckets.is_sorted());
        assert!(
            buckets.len() <= 200,
            "one bucket per webhook and per name: {}",
            buckets.len()
        );
        // Any narrow commit on one of its keys shares a bucket with it, so they exclude each
        // other.
        for key in create.iter().step_by(97) {
            let LockPlan::Narrow { buckets: narrow, .. } = lock_plan(std::iter::once(key.as_slice())) else {
                panic!("one key is narrow");
            };
            assert!(buckets.contains(&narrow[0]));
        }
        let sweep = keys("d\0", 100_000);
        let LockPlan::Wide { buckets } = lock_plan(sweep.iter().map(Vec::as_slice)) else {
            panic!("wide");
        };
        assert!(buckets.len() <= BUCKETS as usize);
        let edge = keys("e\0", WIDE_COMMIT);
        assert!(matches!(
            lock_plan(edge.iter().map(Vec::as_slice)),
            LockPlan::Narrow { .. }
        ));
    }
}
