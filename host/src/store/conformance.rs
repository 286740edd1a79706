//! The semantics every store backend must have, checked against each: ordered, bounded and
//! resumable prefix scans; all-or-nothing guarded commits; and compare-and-set that holds when
//! many commits race, also from separate hosts sharing one PostgreSQL database.
//!
//! The PostgreSQL cases need `WEBHOOKS_TEST_POSTGRES` (a superuser URL; `tests/services`
//! starts a server and sets it) and fail without it rather than pass without checking.

use std::sync::Arc;

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::{Condition, Entry, KvBackend, Op, StoreError};

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

fn keys(entries: Vec<Entry>) -> Vec<Vec<u8>> {
    entries.into_iter().map(|(k, _)| k).collect()
}

async fn scans_are_ordered_bounded_and_resumable(store: &dyn KvBackend) {
    let ops = [&b"a"[..], b"p\x00", b"p\x001", b"p\x002", b"p\xff", b"q", b"\xff\xff"]
        .iter()
        .map(|k| put(k, b"v"))
        .collect();
    store.commit(vec![], ops).await.unwrap();
    let all = keys(store.scan(b"p".to_vec(), None, 10, false).await.unwrap());
    assert_eq!(
        all,
        vec![
            b"p\x00".to_vec(),
            b"p\x001".to_vec(),
            b"p\x002".to_vec(),
            b"p\xff".to_vec()
        ]
    );
    let next = keys(
        store
            .scan(b"p".to_vec(), Some(b"p\x001".to_vec()), 2, false)
            .await
            .unwrap(),
    );
    assert_eq!(next, vec![b"p\x002".to_vec(), b"p\xff".to_vec()]);
    let back = keys(store.scan(b"p".to_vec(), None, 2, true).await.unwrap());
    assert_eq!(back, vec![b"p\xff".to_vec(), b"p\x002".to_vec()]);
    let back = keys(
        store
            .scan(b"p".to_vec(), Some(b"p\x002".to_vec()), 10, true)
            .await
            .unwrap(),
    );
    assert_eq!(back, vec![b"p\x001".to_vec(), b"p\x00".to_vec()]);
    let everything = keys(store.scan(vec![], None, 100, false).await.unwrap());
    assert_eq!(everything.len(), 7);
    assert_eq!(everything.last().unwrap(), &b"\xff\xff".to_vec(), "bytes sort unsigned");
    let top = keys(store.scan(b"\xff".to_vec(), None, 10, false).await.unwrap());
    assert_eq!(top, vec![b"\xff\xff".to_vec()], "a prefix with no upper bound");
    assert_eq!(
        store
            .get_many(vec![b"q".to_vec(), b"none".to_vec(), b"q".to_vec()])
            .await
            .unwrap(),
        vec![Some(b"v".to_vec()), None, Some(b"v".to_vec())]
    );
}

async fn guards_make_commits_all_or_nothing(store: &dyn KvBackend) {
    store.commit(vec![], vec![put(b"k", b"1")]).await.unwrap();
    let failed = store
        .commit(
            vec![Condition::Present(b"k".to_vec()), Condition::Absent(b"k".to_vec())],
            vec![put(b"other", b"x")],
        )
        .await;
    assert_eq!(failed, Err(StoreError::Conflict(1)));
    assert_eq!(store.get(b"other".to_vec()).await.unwrap(), None);
    let stale = store
        .commit(
            vec![Condition::Equals(b"k".to_vec(), b"0".to_vec())],
            vec![Op::Delete(b"k".to_vec())],
        )
        .await;
    assert_eq!(stale, Err(StoreError::Conflict(0)));
    store
        .commit(
            vec![Condition::Equals(b"k".to_vec(), b"1".to_vec())],
            vec![Op::Delete(b"k".to_vec()), put(b"j", b"2")],
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_many(vec![b"k".to_vec(), b"j".to_vec()]).await.unwrap(),
        vec![None, Some(b"2".to_vec())]
    );
    // Ops apply in order: a put after a delete of the same key stands, and the reverse.
    store
        .commit(
            vec![],
            vec![
                Op::Delete(b"x".to_vec()),
                put(b"x", b"kept"),
                put(b"y", b"gone"),
                Op::Delete(b"y".to_vec()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_many(vec![b"x".to_vec(), b"y".to_vec()]).await.unwrap(),
        vec![Some(b"kept".to_vec()), None]
    );
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
async fn sqlite_scans() {
    scans_are_ordered_bounded_and_resumable(sqlite().store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_guards() {
    guards_make_commits_all_or_nothing(sqlite().store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_races() {
    let fixture = sqlite();
    racing_claims_each_have_one_winner(vec![fixture.store.clone()]).await;
    compare_and_set_counts_every_increment(vec![fixture.store.clone()]).await;
    wide_commits_exclude_narrow_ones(vec![fixture.store.clone()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scans() {
    let store = postgres(&postgres_database().await).await;
    scans_are_ordered_bounded_and_resumable(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_guards() {
    let store = postgres(&postgres_database().await).await;
    guards_make_commits_all_or_nothing(store.as_ref()).await;
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
