//! Guarded commits over any [`Kv`]: a failed guard told from a failed store, and the one
//! read-modify-write loop every operation that commits under guards runs.

use crate::Error;
use crate::bindings::mainflux::webhooks::store::{Condition, Op, StoreError};
use crate::error::{Result, internal};
use crate::ports::Kv;

/// How many entries one scan call asks for.
pub const SCAN_CHUNK: u32 = 512;

/// What a failed commit means to the operation that tried it.
#[derive(Debug)]
pub enum CommitFailure {
    /// The guard at this index did not hold.
    Conflict(usize),
    /// The store failed.
    Store(Error),
}

/// Turns a store failure that no operation can recover from into the answer's error.
pub fn store_error(error: StoreError) -> Error {
    match error {
        StoreError::Unavailable(reason) => Error::Unavailable(format!("storage is unavailable: {reason}")),
        StoreError::Conflict(_) => internal("storage reported a conflict outside a commit"),
    }
}

/// Applies a commit, telling a failed guard from a failed store.
pub fn commit(kv: &dyn Kv, guards: &[Condition], ops: &[Op]) -> Result<(), CommitFailure> {
    kv.commit(guards, ops).map_err(|e| match e {
        StoreError::Conflict(index) => CommitFailure::Conflict(index as usize),
        other => CommitFailure::Store(store_error(other)),
    })
}

/// How often a guarded commit is tried again after concurrent writes changed what it read:
/// enough to outlast a burst of writers, few enough that a caller never spins for long.
pub const COMMIT_ATTEMPTS: usize = 8;

/// What one try of a guarded read-modify-write settled on.
pub enum Step<T> {
    /// Nothing to write; the operation answers this.
    Done(T),
    /// Commit these writes if every guard holds; the operation then answers `answer`.
    Commit {
        /// What must still hold of the records the try read.
        guards: Vec<Condition>,
        /// The writes, applied in order.
        ops: Vec<Op>,
        /// The answer once the commit is in.
        answer: T,
    },
}

/// Runs a read-modify-write until its commit goes in, at most [`COMMIT_ATTEMPTS`] times.
/// `next` reads and builds each try; it is handed the index of the guard that failed the
/// previous try (`None` on the first), so it can drop what someone else changed or give up
/// with its own error. When every try conflicts, answers `gave_up()`.
pub fn commit_retrying<T>(
    kv: &dyn Kv,
    gave_up: impl FnOnce() -> Error,
    mut next: impl FnMut(Option<usize>) -> Result<Step<T>>,
) -> Result<T> {
    let mut conflict = None;
    for _ in 0..COMMIT_ATTEMPTS {
        match next(conflict)? {
            Step::Done(answer) => return Ok(answer),
            Step::Commit { guards, ops, answer } => match commit(kv, &guards, &ops) {
                Ok(()) => return Ok(answer),
                Err(CommitFailure::Conflict(index)) => conflict = Some(index),
                Err(CommitFailure::Store(e)) => return Err(e),
            },
        }
    }
    Err(gave_up())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::mainflux::webhooks::store::Entry;
    use crate::testing::MemoryKv;
    use std::cell::Cell;

    fn put(key: &[u8], value: &[u8]) -> Op {
        Op::Put(Entry {
            key: key.to_vec(),
            value: value.to_vec(),
        })
    }

    fn gave_up() -> Error {
        internal("gave up")
    }

    #[test]
    fn a_commit_that_holds_goes_in_at_the_first_try() {
        let kv = MemoryKv::default();
        let tries = Cell::new(0);
        let answer = commit_retrying(&kv, gave_up, |conflict| {
            tries.set(tries.get() + 1);
            assert_eq!(conflict, None);
            Ok(Step::Commit {
                guards: vec![Condition::Absent(b"k".to_vec())],
                ops: vec![put(b"k", b"v")],
                answer: 7,
            })
        });
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(tries.get(), 1);
        assert_eq!(kv.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn a_conflict_is_tried_again_with_the_failed_guard_named() {
        let kv = MemoryKv::default();
        kv.commit(&[], &[put(b"b", b"taken")]).unwrap();
        let mut seen = Vec::new();
        let answer = commit_retrying(&kv, gave_up, |conflict| {
            seen.push(conflict);
            // The first try guards two keys, the second of which is taken; the next drops it.
            let guards = match conflict {
                None => vec![Condition::Absent(b"a".to_vec()), Condition::Absent(b"b".to_vec())],
                Some(_) => vec![Condition::Absent(b"a".to_vec())],
            };
            Ok(Step::Commit {
                guards,
                ops: vec![put(b"a", b"1")],
                answer: (),
            })
        });
        assert!(answer.is_ok());
        assert_eq!(seen, [None, Some(1)]);
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn done_writes_nothing_and_errors_stop_at_once() {
        let kv = MemoryKv::default();
        assert_eq!(
            commit_retrying(&kv, gave_up, |_| Ok(Step::Done("same"))).unwrap(),
            "same"
        );
        assert!(kv.map.borrow().is_empty());
        let tries = Cell::new(0);
        let failed: Result<()> = commit_retrying(&kv, gave_up, |_| {
            tries.set(tries.get() + 1);
            Err(crate::error::not_found("gone"))
        });
        assert!(matches!(failed, Err(Error::NotFound(m)) if m == "gone"));
        assert_eq!(tries.get(), 1);
    }

    #[test]
    fn a_commit_that_never_holds_gives_up_after_the_last_try() {
        let kv = MemoryKv::default();
        kv.commit(&[], &[put(b"k", b"v")]).unwrap();
        let tries = Cell::new(0);
        let failed: Result<()> = commit_retrying(&kv, gave_up, |_| {
            tries.set(tries.get() + 1);
            Ok(Step::Commit {
                guards: vec![Condition::Absent(b"k".to_vec())],
                ops: vec![put(b"x", b"never")],
                answer: (),
            })
        });
        assert!(matches!(failed, Err(Error::Internal(m)) if m == "gave up"));
        assert_eq!(tries.get(), COMMIT_ATTEMPTS);
        assert_eq!(kv.get(b"x").unwrap(), None);
    }
}
