//! The semantics every store backend must have, checked against each: the sequential cases of
//! `tests/conformance/store.json` (ordered, bounded and resumable prefix scans; all-or-nothing
//! guarded commits), which the embeddings' stores run too; and compare-and-set that holds when
//! many commits race, also from separate hosts sharing one PostgreSQL database.
//!
//! The PostgreSQL cases need `WEBHOOKS_TEST_POSTGRES` (a superuser URL; `tests/services`
//! starts a server and sets it) and fail without it rather than pass without checking.

use std::sync::Arc;

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use serde_json::{Value, json};

use super::{Condition, KvBackend, Op, StoreError};

fn unique_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{what}_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh SQLite store in its own folder, removed on drop.
struct SqliteFixture {
    store: Arc<SqliteStore>,
    dir: std::path::PathBuf,
}

impl Drop for SqliteFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sqlite() -> SqliteFixture {
    let dir = std::env::temp_dir().join(unique_name("webhooks-store-test"));
    let path = dir.join("nested/store.db");
    let store = Arc::new(SqliteStore::open(path.to_str().unwrap()).unwrap());
    SqliteFixture { store, dir }
}

/// The URL of a new, empty database on the test server.
async fn postgres_database() -> String {
    let admin = std::env::var("WEBHOOKS_TEST_POSTGRES")
        .expect("WEBHOOKS_TEST_POSTGRES is not set: run the tests through tests/services (make test)");
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL server answers");
    tokio::spawn(connection);
    let name = unique_name("store_test");
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let base = admin.rsplit_once('/').expect("the URL names a database").0;
    format!("{base}/{name}")
}

async fn postgres(url: &str) -> Arc<PostgresStore> {
    Arc::new(PostgresStore::open(url, 8, &Default::default()).await.unwrap())
}

fn put(key: &[u8], value: &[u8]) -> Op {
    Op::Put(key.to_vec(), value.to_vec())
}

/// The sequential cases every implementation of the `store` import is held to, as data that
/// the embeddings' own stores run too (`tests/conformance/store.json` says the format).
const CASES: &str = include_str!("../../../tests/conformance/store.json");

fn cases() -> Vec<Value> {
    let file: Value = serde_json::from_str(CASES).expect("the conformance file is JSON");
    file["cases"].as_array().expect("a list of cases").clone()
}

/// A key or value of the file: one byte per character (latin1).
fn bytes(text: &Value) -> Vec<u8> {
    text.as_str()
        .unwrap_or_else(|| panic!("bytes are written as strings: {text}"))
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or_else(|_| panic!("{c:?} is not one byte")))
        .collect()
}

fn text(bytes: &[u8]) -> Value {
    Value::String(bytes.iter().map(|&b| char::from(b)).collect())
}

fn optional_text(bytes: Option<Vec<u8>>) -> Value {
    bytes.map_or(Value::Null, |bytes| text(&bytes))
}

/// A store answer in the file's terms.
fn answer<T>(result: Result<T, StoreError>, ok: impl FnOnce(T) -> Value) -> Value {
    match result {
        Ok(value) => json!({ "ok": ok(value) }),
        Err(StoreError::Conflict(index)) => json!({ "conflict": index }),
        Err(StoreError::Unavailable(why)) => json!({ "unavailable": why }),
    }
}

fn condition(guard: &Value) -> Condition {
    if let Some(key) = guard.get("absent") {
        Condition::Absent(bytes(key))
    } else if let Some(key) = guard.get("present") {
        Condition::Present(bytes(key))
    } else {
        let pair = &guard["equals"];
        Condition::Equals(bytes(&pair[0]), bytes(&pair[1]))
    }
}

fn op(op: &Value) -> Op {
    match op.get("put") {
        Some(pair) => Op::Put(bytes(&pair[0]), bytes(&pair[1])),
        None => Op::Delete(bytes(&op["delete"])),
    }
}

fn list<T>(values: &Value, each: impl Fn(&Value) -> T) -> Vec<T> {
    values
        .as_array()
        .unwrap_or_else(|| panic!("a list: {values}"))
        .iter()
        .map(each)
        .collect()
}

/// Makes the call a step names and answers what the store said.
async fn run_step(store: &dyn KvBackend, step: &Value) -> Value {
    if let Some(key) = step.get("get") {
        answer(store.get(bytes(key)).await, optional_text)
    } else if let Some(keys) = step.get("get-many") {
        answer(store.get_many(list(keys, bytes)).await, |values| {
            values.into_iter().map(optional_text).collect()
        })
    } else if let Some(scan) = step.get("scan") {
        let after = (!scan["after"].is_null()).then(|| bytes(&scan["after"]));
        let limit = scan["limit"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .expect("a u32 limit");
        let reverse = scan["reverse"].as_bool().expect("reverse is a bool");
        let found = store.scan(bytes(&scan["prefix"]), after, limit, reverse).await;
        answer(found, |entries| {
            entries
                .iter()
                .map(|(key, value)| json!([text(key), text(value)]))
                .collect()
        })
    } else if let Some(scan) = step.get("scan-prefixes") {
        let limit = scan["limit"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .expect("a u32 limit");
        let found = store.scan_prefixes(list(&scan["prefixes"], bytes), limit).await;
        answer(found, |answers| {
            answers
                .iter()
                .map(|entries| {
                    entries
                        .iter()
                        .map(|(key, value)| json!([text(key), text(value)]))
                        .collect::<Value>()
                })
                .collect()
        })
    } else if let Some(commit) = step.get("commit") {
        let guards = list(&commit["guards"], condition);
        let ops = list(&commit["ops"], op);
        answer(store.commit(guards, ops).await, |()| Value::Null)
    } else {
        panic!("a step names get, get-many, scan, scan-prefixes or commit: {step}")
    }
}

/// Runs one case on an empty store; panics at the first answer that differs.
async fn run_case(store: &dyn KvBackend, case: &Value) {
    for (index, step) in list(&case["steps"], Value::clone).iter().enumerate() {
        let answered = run_step(store, step).await;
        assert_eq!(answered, step["expect"], "case {}, step {index}: {step}", case["name"]);
    }
}

/// 200 commits race to claim 20 keys, spread over the given handles (hosts): exactly one wins
/// each key, and a loser wrote nothing.
async fn racing_claims_each_have_one_winner(stores: Vec<Arc<dyn KvBackend>>) {
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let store = stores[i as usize % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("claim-{}", i % 20).into_bytes();
            let marker = format!("marker-{i}").into_bytes();
            let won = store
                .commit(
                    vec![Condition::Absent(key.clone())],
                    vec![put(&key, &i.to_be_bytes()), put(&marker, b"1")],
                )
                .await;
            (i, won)
        }));
    }
    let mut winners = 0;
    for task in tasks {
        let (i, won) = task.await.unwrap();
        let marker = stores[0].get(format!("marker-{i}").into_bytes()).await.unwrap();
        match won {
            Ok(()) => {
                winners += 1;
                assert!(marker.is_some(), "a winner's other write is there");
            }
            Err(StoreError::Conflict(0)) => assert!(marker.is_none(), "a loser wrote nothing"),
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(winners, 20);
}

/// Compare-and-set increments from several hosts: none is lost, because each commit's guard
/// sees every commit before it.
async fn compare_and_set_counts_every_increment(stores: Vec<Arc<dyn KvBackend>>) {
    stores[0].commit(vec![], vec![put(b"counter", b"0")]).await.unwrap();
    let mut tasks = Vec::new();
    for worker in 0..8usize {
        let store = stores[worker % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 25 {
                let current = store.get(b"counter".to_vec()).await.unwrap().unwrap();
                let next: u32 = std::str::from_utf8(&current).unwrap().parse::<u32>().unwrap() + 1;
                match store
                    .commit(
                        vec![Condition::Equals(b"counter".to_vec(), current)],
                        vec![put(b"counter", next.to_string().as_bytes())],
                    )
                    .await
                {
                    Ok(()) => done += 1,
                    Err(StoreError::Conflict(0)) => continue,
                    Err(other) => panic!("{other}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(stores[0].get(b"counter".to_vec()).await.unwrap(), Some(b"200".to_vec()));
}

/// A commit too wide to lock key by key still excludes the narrow commits racing it.
async fn wide_commits_exclude_narrow_ones(stores: Vec<Arc<dyn KvBackend>>) {
    let wide: Vec<Op> = (0..2_000u32)
        .map(|i| put(format!("wide-{i:05}").as_bytes(), b"w"))
        .collect();
    let first = stores[0].clone();
    let wide_commit = tokio::spawn(async move {
        first
            .commit(vec![Condition::Absent(b"wide-done".to_vec())], {
                let mut ops = wide;
                ops.push(put(b"wide-done", b"1"));
                ops
            })
            .await
    });
    let second = stores[stores.len() - 1].clone();
    let narrow = tokio::spawn(async move {
        second
            .commit(
                vec![Condition::Absent(b"wide-done".to_vec())],
                vec![put(b"wide-done", b"2")],
            )
            .await
    });
    let results = [wide_commit.await.unwrap(), narrow.await.unwrap()];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    let done = stores[0].get(b"wide-done".to_vec()).await.unwrap().unwrap();
    let wide_written = stores[0]
        .scan(b"wide-".to_vec(), None, 5_000, false)
        .await
        .unwrap()
        .len();
    match done.as_slice() {
        b"1" => assert_eq!(wide_written, 2_001),
        _ => assert_eq!(wide_written, 1, "the losing wide commit wrote nothing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_answers_the_conformance_cases() {
    for case in cases() {
        run_case(sqlite().store.as_ref(), &case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_races() {
    let fixture = sqlite();
    racing_claims_each_have_one_winner(vec![fixture.store.clone()]).await;
    compare_and_set_counts_every_increment(vec![fixture.store.clone()]).await;
    wide_commits_exclude_narrow_ones(vec![fixture.store.clone()]).await;
}

/// A commit as wide as a 100-webhook create, held open by another host, holds up the commits
/// that share one of its buckets and no other: it takes no store-wide lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wide_commits_hold_up_only_the_commits_sharing_their_buckets() {
    use super::postgres::{BUCKET_CLASS, LockPlan, lock_plan};
    use std::time::Duration;

    let url = postgres_database().await;
    let store = postgres(&url).await;
    let wide_keys: Vec<Vec<u8>> = (0..1_500u32).map(|i| format!("wide-{i:05}").into_bytes()).collect();
    let LockPlan::Wide { buckets } = lock_plan(wide_keys.iter().map(Vec::as_slice)) else {
        panic!("1,500 keys lock by bucket");
    };
    let bucket_of = |key: &[u8]| match lock_plan(std::iter::once(key)) {
        LockPlan::Narrow { buckets, .. } => buckets[0],
        LockPlan::Wide { .. } => unreachable!(),
    };
    let outside = (0..)
        .map(|i: u32| format!("narrow-{i}").into_bytes())
        .find(|key| !buckets.contains(&bucket_of(key)))
        .unwrap();

    // The other host's wide commit, stopped once it holds its locks.
    let (other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    other.batch_execute("BEGIN").await.unwrap();
    other
        .execute(
            "SELECT pg_advisory_xact_lock($1, b) FROM unnest($2::int4[]) AS b",
            &[&BUCKET_CLASS, &buckets],
        )
        .await
        .unwrap();

    let free = store.commit(vec![Condition::Absent(outside.clone())], vec![put(&outside, b"1")]);
    tokio::time::timeout(Duration::from_secs(5), free)
        .await
        .expect("a commit outside the wide commit's buckets does not wait for it")
        .unwrap();

    let inside = wide_keys[700].clone();
    let held = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .commit(vec![Condition::Absent(inside.clone())], vec![put(&inside, b"n")])
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a commit on a key of the wide commit waits for it");
    other.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the waiting commit goes on once the wide one ends")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_answers_the_conformance_cases() {
    for case in cases() {
        let store = postgres(&postgres_database().await).await;
        run_case(store.as_ref(), &case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_races_between_two_hosts() {
    let url = postgres_database().await;
    // Two pools opened together, as two hosts starting at once: both create the table.
    let (a, b) = tokio::join!(postgres(&url), postgres(&url));
    let hosts: Vec<Arc<dyn KvBackend>> = vec![a, b];
    racing_claims_each_have_one_winner(hosts.clone()).await;
    compare_and_set_counts_every_increment(hosts.clone()).await;
    wide_commits_exclude_narrow_ones(hosts).await;
}
