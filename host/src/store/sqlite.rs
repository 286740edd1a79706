//! The embedded SQLite backend of the store: one `kv` table in WAL mode, one writer thread
//! that group-commits, and a small pool of readers.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{BoxFuture, Condition, Entry, KvBackend, Op, ScanRange, StoreError, scan_range};

/// Readers kept open between calls.
const IDLE_READERS: usize = 8;

/// A store in one SQLite database file.
pub struct SqliteStore {
    path: String,
    /// Commits go to one writer thread, which groups them (see [`run_writer`]).
    writer: Mutex<std::sync::mpsc::Sender<PendingCommit>>,
    readers: Mutex<Vec<Connection>>,
    /// Dropped with the store, which ends the checkpoint thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
}

/// How often the checkpoint thread copies the write-ahead log into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Copies committed pages from the write-ahead log into the database file, so the log stays
/// short, until the store is dropped. A passive checkpoint never blocks the writer or readers.
fn run_checkpoints(conn: Connection, stopped: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
        match checkpoint(&conn, "PASSIVE") {
            // Readers come and go all the time under load, so the log is rarely free for the
            // writer to start again from its beginning on its own: once it is long, wait for a
            // moment without readers. Frames already copied make this wait short.
            Ok(frames) if frames >= RESTART_FRAMES => {
                if let Err(error) = checkpoint(&conn, "RESTART") {
                    tracing::warn!(%error, "SQLite checkpoint failed; the next one tries again");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "SQLite checkpoint failed; the next one tries again"),
        }
    }
}

/// Runs a checkpoint in this mode; answers the frames in the log before it ran.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| row.get(1))
}

/// Log length, in pages, from which a checkpoint makes the writer start the log again.
const RESTART_FRAMES: i64 = 4096;

/// Longest wait of a restarting checkpoint for readers to leave the log; the writer waits
/// meanwhile, so it is short, and a checkpoint that gives up tries again at the next tick.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

impl SqliteStore {
    /// Opens the database at `path`, creating it and its folder if missing.
    pub fn open(path: &str) -> Result<Self, rusqlite::Error> {
        if path.is_empty() {
            return Err(rusqlite::Error::InvalidPath("empty path".into()));
        }
        if let Some(parent) = Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| rusqlite::Error::InvalidPath(format!("cannot create {}: {e}", parent.display()).into()))?;
        }
        // Only the writer writes the log, so only it needs the VFS that gathers its writes.
        super::wal_vfs::register()?;
        let writer = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), super::wal_vfs::NAME)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        // A commit is the service's promise that data is kept: sync it to disk.
        // The write-ahead log VFS relies on it too (see `wal_vfs`).
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
        )?;
        // Checkpoints run on their own thread (see `run_checkpoints`), so no commit waits for
        // one to copy the log.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        tune(&writer)?;
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(RESTART_WAIT)?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel();
        let thread_error =
            |e: std::io::Error| rusqlite::Error::InvalidPath(format!("cannot start a thread: {e}").into());
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run_checkpoints(checkpointer, stopped))
            .map_err(thread_error)?;
        let (queue, commits) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run_writer(writer, commits))
            .map_err(thread_error)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(queue),
            readers: Mutex::new(Vec::new()),
            _stop_checkpoints: stop_checkpoints,
        })
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().expect("reader pool poisoned").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(unavailable)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))
                    .map_err(unavailable)?;
                tune(&conn).map_err(unavailable)?;
                conn
            }
        };
        let result = f(&conn).map_err(unavailable);
        let mut readers = self.readers.lock().expect("reader pool poisoned");
        if readers.len() < IDLE_READERS {
            readers.push(conn);
        }
        result
    }
}

/// How much of the database file connections map into memory: none. Mapped, the pages a
/// drain touched counted in the host's resident memory (a 60,000-delivery drain peaked at
/// 83–88 MiB mapped, 68–70 MiB read through SQLite's own page cache) for no CPU saved.
const MMAP_BYTES: i64 = 0;

/// Settings of a connection, for speed; none changes what a statement does.
fn tune(conn: &Connection) -> rusqlite::Result<()> {
    // The bundled SQLite has STAT4, which makes a range scan re-plan (re-parse) on every new
    // bound value; one table with one key has one plan.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    Ok(())
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn scan(
    conn: &Connection,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: u32,
    reverse: bool,
) -> rusqlite::Result<Vec<Entry>> {
    let ScanRange {
        low,
        low_inclusive,
        high,
    } = scan_range(prefix, after, reverse);
    let mut sql = String::from("SELECT key, value FROM kv WHERE key ");
    sql.push_str(if low_inclusive { ">= ?1" } else { "> ?1" });
    if high.is_some() {
        sql.push_str(" AND key < ?2");
    }
    sql.push_str(if reverse {
        " ORDER BY key DESC LIMIT ?3"
    } else {
        " ORDER BY key LIMIT ?3"
    });
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(params![low, high, limit], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

/// One commit waiting for the writer.
struct PendingCommit {
    guards: Vec<Condition>,
    ops: Vec<Op>,
    reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// Most commits the writer groups into one transaction.
const GROUP_LIMIT: usize = 256;

/// The writer thread: takes every commit waiting, applies each in turn (so each sees the ones
/// before it), then makes them durable with one transaction commit and one sync for the whole
/// group.
fn run_writer(mut conn: Connection, queue: std::sync::mpsc::Receiver<PendingCommit>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_LIMIT {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let results = commit_group(&mut conn, &group);
        for (pending, result) in group.into_iter().zip(results) {
            let _ = pending.reply.send(result);
        }
    }
}

/// One transaction for the group. A commit whose guard fails has written nothing (guards are
/// read before any write), so it needs no savepoint to be undone; a write that fails leaves a
/// commit half applied, so the whole transaction rolls back and every commit of the group
/// fails, none of it kept. Savepoints copied each page a commit first touched to a statement
/// journal: 6.5 % of the host's CPU during a drain, a quarter of the writer thread's.
fn commit_group(conn: &mut Connection, group: &[PendingCommit]) -> Vec<Result<(), StoreError>> {
    let all_failed = |e: &StoreError| group.iter().map(|_| Err(e.clone())).collect();
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return all_failed(&unavailable(e)),
    };
    let mut results = Vec::with_capacity(group.len());
    for pending in group {
        match apply(&tx, &pending.guards, &pending.ops) {
            Ok(()) => results.push(Ok(())),
            Err(conflict @ StoreError::Conflict(_)) => results.push(Err(conflict)),
            // Dropping the transaction rolls it back.
            Err(failed) => return all_failed(&failed),
        }
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => all_failed(&unavailable(e)),
    }
}

/// Checks the guards and applies the ops of one commit inside an open transaction.
fn apply(conn: &Connection, guards: &[Condition], ops: &[Op]) -> Result<(), StoreError> {
    let mut read = conn
        .prepare_cached("SELECT value FROM kv WHERE key = ?1")
        .map_err(unavailable)?;
    for (index, guard) in guards.iter().enumerate() {
        let current: Option<Vec<u8>> = read
            .query_row([guard.key()], |row| row.get(0))
            .optional()
            .map_err(unavailable)?;
        if !guard.holds(current.as_deref()) {
            return Err(StoreError::Conflict(index as u32));
        }
    }
    let mut put = conn
        .prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")
        .map_err(unavailable)?;
    let mut delete = conn
        .prepare_cached("DELETE FROM kv WHERE key = ?1")
        .map_err(unavailable)?;
    for op in ops {
        match op {
            Op::Put(key, value) => put.execute(params![key, value]).map_err(unavailable)?,
            Op::Delete(key) => delete.execute([key]).map_err(unavailable)?,
        };
    }
    Ok(())
}

impl KvBackend for SqliteStore {
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        let result = self.with_reader(|conn| {
            conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")?
                .query_row([key], |row| row.get(0))
                .optional()
        });
        Box::pin(std::future::ready(result))
    }

    fn get_many(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, Result<Vec<Option<Vec<u8>>>, StoreError>> {
        let result = self.with_reader(|conn| {
            let mut statement = conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")?;
            keys.iter()
                .map(|key| statement.query_row([key], |row| row.get(0)).optional())
                .collect()
        });
        Box::pin(std::future::ready(result))
    }

    fn scan(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
        reverse: bool,
    ) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>> {
        let result = self.with_reader(|conn| scan(conn, &prefix, after.as_deref(), limit, reverse));
        Box::pin(std::future::ready(result))
    }

    fn scan_prefixes(&self, prefixes: Vec<Vec<u8>>, limit: u32) -> BoxFuture<'_, Result<Vec<Vec<Entry>>, StoreError>> {
        let result = self.with_reader(|conn| {
            prefixes
                .iter()
                .map(|prefix| scan(conn, prefix, None, limit, false))
                .collect()
        });
        Box::pin(std::future::ready(result))
    }

    fn commit(&self, guards: Vec<Condition>, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StoreError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = self
            .writer
            .lock()
            .expect("writer queue poisoned")
            .send(PendingCommit { guards, ops, reply });
        Box::pin(async move {
            queued.map_err(|_| StoreError::Unavailable("the writer thread stopped".into()))?;
            answer
                .await
                .map_err(|_| StoreError::Unavailable("the writer thread stopped".into()))?
        })
    }
}
