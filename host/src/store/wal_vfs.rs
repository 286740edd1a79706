//! The writer connection's SQLite VFS: the operating system's default VFS, except that the
//! write-ahead log's frames, written one `pwrite` for each 24-byte header and one for each
//! page, reach the file in one `pwrite` per run of adjacent writes, at the latest before the
//! log is synced, read, truncated, sized or closed.
//!
//! Why: during a drain the writer thread spent 12 % of the host's CPU in `walWriteOneFrame`,
//! nearly all of it in the kernel's per-call and per-page work of two small writes per frame.
//! Nothing a commit promises changes: with `synchronous=FULL`, SQLite makes a commit's frames
//! visible to readers (in the log's index) only after it synced the log, and a sync first
//! writes what is held here; frames written before a crash were never durable without that
//! sync either. A write error surfaces at the next flush instead of at the write, which fails
//! the same transaction. Only FULL keeps this true: with NORMAL a commit does not sync the log,
//! so other connections would find frames listed in its index but not yet in the file (tried:
//! the host failed at start with "disk I/O error").

use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections open this VFS by.
pub const NAME: &CStr = c"webhooks-wal-writes";

/// Writes held at most, in bytes, before they go to the file: 29 frames of 4 KiB pages. The
/// unix VFS writes at most 128 KiB - 1 bytes a call (`seekAndWriteFd` masks the length with
/// `0x1ffff`; SQLite itself never writes more than a page and its header at once), and
/// reports a longer write as a full disk.
const HELD_BYTES: usize = 120 << 10;

/// The default VFS this one wraps, and this one; registered once per process.
struct Registered {
    default: *mut ffi::sqlite3_vfs,
    _ours: Box<ffi::sqlite3_vfs>,
}

// SAFETY: both point to VFS objects that live as long as the process and that SQLite itself
// shares between threads.
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Result<Registered, c_int>> = OnceLock::new();

/// Registers the VFS (once; later calls answer the first call's outcome).
pub fn register() -> rusqlite::Result<()> {
    let registered = REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe in SQLite's
        // default (serialized) threading mode; the copy keeps every method and field of the
        // default VFS, whose methods other than xOpen do not depend on which VFS object they
        // are called through.
        unsafe {
            let initialized = ffi::sqlite3_initialize();
            if initialized != ffi::SQLITE_OK {
                return Err(initialized);
            }
            let default = ffi::sqlite3_vfs_find(std::ptr::null());
            if default.is_null() {
                return Err(ffi::SQLITE_ERROR);
            }
            let mut ours = Box::new(std::ptr::read(default));
            ours.zName = NAME.as_ptr();
            ours.pNext = std::ptr::null_mut();
            ours.szOsFile = (file_size() + (*default).szOsFile as usize) as c_int;
            ours.xOpen = Some(open);
            let rc = ffi::sqlite3_vfs_register(&mut *ours, 0);
            if rc != ffi::SQLITE_OK {
                return Err(rc);
            }
            Ok(Registered { default, _ours: ours })
        }
    });
    match registered {
        Ok(_) => Ok(()),
        Err(code) => Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(*code),
            Some("registering the write-ahead log VFS".into()),
        )),
    }
}

fn default_vfs() -> *mut ffi::sqlite3_vfs {
    match REGISTERED.get() {
        Some(Ok(registered)) => registered.default,
        _ => unreachable!("the VFS opens files only once registered"),
    }
}

/// A write-ahead log opened through this VFS; the default VFS's own file follows it.
#[repr(C)]
struct LogFile {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    /// Offset in the file of `held[0]`.
    start: i64,
    held: Vec<u8>,
}

/// The bytes a [`LogFile`] takes before the default VFS's file, kept 8-byte aligned.
const fn file_size() -> usize {
    std::mem::size_of::<LogFile>().next_multiple_of(8)
}

static LOG_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size_of),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let default = default_vfs();
    // SAFETY: SQLite hands `file` with szOsFile bytes, at least the default VFS's size, and
    // calls the default VFS's xOpen as it would itself; a log file's default part starts
    // `file_size()` bytes in, within the same allocation.
    unsafe {
        let default_open = (*default).xOpen.expect("a VFS opens files");
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return default_open(default, name, file, flags, out_flags);
        }
        let inner = file.cast::<u8>().add(file_size()).cast::<ffi::sqlite3_file>();
        (*inner).pMethods = std::ptr::null();
        let rc = default_open(default, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            if let Some(methods) = (*inner).pMethods.as_ref()
                && let Some(close) = methods.xClose
            {
                close(inner);
            }
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        std::ptr::write(
            file.cast::<LogFile>(),
            LogFile {
                base: ffi::sqlite3_file { pMethods: &LOG_METHODS },
                inner,
                start: 0,
                held: Vec::new(),
            },
        );
        ffi::SQLITE_OK
    }
}

/// The log file behind a `sqlite3_file` this VFS opened with [`LOG_METHODS`].
///
/// # Safety
/// `file` is such a file, not closed, and used by one thread at a time (SQLite's contract).
unsafe fn log<'f>(file: *mut ffi::sqlite3_file) -> &'f mut LogFile {
    unsafe { &mut *file.cast::<LogFile>() }
}

/// The default VFS's methods of the log's own file.
fn methods(log: &LogFile) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: the default VFS opened `inner` successfully, so its methods are set and static.
    unsafe { &*(*log.inner).pMethods }
}

impl LogFile {
    /// Writes what is held to the file.
    fn flush(&mut self) -> c_int {
        if self.held.is_empty() {
            return ffi::SQLITE_OK;
        }
        let write = methods(self).xWrite.expect("a file writes");
        // SAFETY: `held` is at most HELD_BYTES plus one write SQLite made, far below c_int.
        let rc = unsafe {
            write(
                self.inner,
                self.held.as_ptr().cast(),
                self.held.len() as c_int,
                self.start,
            )
        };
        self.held.clear();
        rc
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file once, after its last use.
    unsafe {
        let log = log(file);
        let flushed = log.flush();
        let close = methods(log).xClose.expect("a file closes");
        let closed = close(log.inner);
        std::ptr::drop_in_place(&mut log.held);
        (*file).pMethods = std::ptr::null();
        if flushed != ffi::SQLITE_OK { flushed } else { closed }
    }
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, buffer: *mut c_void, amount: c_int, offset: i64) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    let rc = log.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let read = methods(log).xRead.expect("a file reads");
    unsafe { read(log.inner, buffer, amount, offset) }
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    // SAFETY: see `log`; SQLite's buffer holds `amount` bytes.
    let log = unsafe { log(file) };
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), amount as usize) };
    let adjacent = offset == log.start + log.held.len() as i64;
    if !(adjacent && log.held.len() + bytes.len() <= HELD_BYTES) {
        let rc = log.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        log.start = offset;
    }
    log.held.extend_from_slice(bytes);
    ffi::SQLITE_OK
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    let rc = log.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let truncate = methods(log).xTruncate.expect("a file truncates");
    unsafe { truncate(log.inner, size) }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    let rc = log.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let sync = methods(log).xSync.expect("a file syncs");
    unsafe { sync(log.inner, flags) }
}

unsafe extern "C" fn file_size_of(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    let rc = log.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let file_size = methods(log).xFileSize.expect("a file has a size");
    unsafe { file_size(log.inner, size) }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    unsafe { methods(log).xLock.expect("a file locks")(log.inner, level) }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    unsafe { methods(log).xUnlock.expect("a file unlocks")(log.inner, level) }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, reserved: *mut c_int) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    unsafe { methods(log).xCheckReservedLock.expect("a file reports its lock")(log.inner, reserved) }
}

unsafe extern "C" fn file_control(file: *mut ffi::sqlite3_file, op: c_int, argument: *mut c_void) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    let rc = log.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    unsafe { methods(log).xFileControl.expect("a file takes controls")(log.inner, op, argument) }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    unsafe { methods(log).xSectorSize.expect("a file has a sector size")(log.inner) }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `log`.
    let log = unsafe { log(file) };
    unsafe { methods(log).xDeviceCharacteristics.expect("a file has characteristics")(log.inner) }
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};

    struct Folder(std::path::PathBuf);

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn folder(what: &str) -> Folder {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "webhooks-wal-vfs-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Folder(path)
    }

    fn writer(path: &std::path::Path) -> Connection {
        super::register().unwrap();
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), super::NAME).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;")
            .unwrap();
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM kv", [], |row| row.get(0)).unwrap()
    }

    #[test]
    fn every_commit_is_in_the_files_when_it_returns() {
        let dir = folder("commit");
        let path = dir.0.join("store.db");
        let conn = writer(&path);
        for n in 0..50u32 {
            let tx = conn.unchecked_transaction().unwrap();
            for i in 0..20u32 {
                tx.execute(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2)",
                    (format!("{n:04}-{i:04}").into_bytes(), vec![n as u8; 300]),
                )
                .unwrap();
            }
            tx.commit().unwrap();
            // What a crash right now would leave: the files as they are, the writer still open.
            let copy = folder("copy");
            std::fs::copy(&path, copy.0.join("store.db")).unwrap();
            std::fs::copy(dir.0.join("store.db-wal"), copy.0.join("store.db-wal")).unwrap();
            let recovered = Connection::open(copy.0.join("store.db")).unwrap();
            assert_eq!(rows(&recovered), i64::from((n + 1) * 20), "after commit {n}");
        }
    }

    #[test]
    fn a_commit_of_megabytes_goes_in_whole() {
        let dir = folder("large");
        let path = dir.0.join("store.db");
        let conn = writer(&path);
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..3_000u32 {
            tx.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)",
                (i.to_be_bytes().to_vec(), vec![(i % 251) as u8; 1_000]),
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(rows(&reader), 3_000);
        let check: String = reader
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn a_transaction_larger_than_the_page_cache_reads_its_own_writes_and_rolls_back() {
        let dir = folder("spill");
        let path = dir.0.join("store.db");
        let conn = writer(&path);
        // A small cache makes the transaction spill pages into the log before it commits, and
        // read them back from it.
        conn.pragma_update(None, "cache_size", 4).unwrap();
        let fill = |tx: &rusqlite::Transaction, tag: u8| {
            for i in 0..2_000u32 {
                tx.execute(
                    "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
                    (i.to_be_bytes().to_vec(), vec![tag; 200]),
                )
                .unwrap();
            }
        };
        let tx = conn.unchecked_transaction().unwrap();
        fill(&tx, 1);
        let sum: i64 = tx
            .query_row("SELECT sum(length(value)) FROM kv", [], |row| row.get(0))
            .unwrap();
        assert_eq!(sum, 2_000 * 200);
        tx.rollback().unwrap();
        assert_eq!(rows(&conn), 0);

        let tx = conn.unchecked_transaction().unwrap();
        fill(&tx, 2);
        tx.commit().unwrap();
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(rows(&reader), 2_000);
        let tags: i64 = reader
            .query_row("SELECT count(*) FROM kv WHERE value = ?1", [vec![2u8; 200]], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(tags, 2_000);
        let check: String = reader
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn the_log_starts_again_after_a_checkpoint_and_the_data_stays_whole() {
        let dir = folder("restart");
        let path = dir.0.join("store.db");
        let conn = writer(&path);
        let checkpointer = Connection::open(&path).unwrap();
        for round in 0..5u32 {
            for n in 0..20u32 {
                conn.execute(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2)",
                    (format!("{round}-{n}").into_bytes(), vec![7u8; 1_000]),
                )
                .unwrap();
            }
            let busy: i64 = checkpointer
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))
                .unwrap();
            assert_eq!(busy, 0);
        }
        drop(conn);
        let reopened = Connection::open(&path).unwrap();
        assert_eq!(rows(&reopened), 100);
        let check: String = reopened
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
