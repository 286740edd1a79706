//! The format of the stored data as a whole: which formats this version serves, which it
//! brings a store to, and the key that names the stored one (`wit/migration.wit`).
//!
//! | format | promise |
//! |---|---|
//! | 1 | what plugins before the name-search index wrote: webhook records and their indexes |
//! | 2 | as 1, and every webhook has its name-search entries (`ix\0group-names` is set) |
//! | 3 | webhooks may carry transforms (the record's `transform`, `tc` and `tg` keys) and deliveries may be `skipped`; the name-search promise of 2 holds once `ix\0group-names` is set |
//! | 4 | as 3, and new deliveries are written in the compact layout: the payload inside the delivery record, no `dc` creation-index entry (their time-ordered ids list them by creation under `dl`); deliveries of the earlier layout may remain |
//! | 5 | as 4, and lean deliveries: a delivery's status lives in its record alone (its log entry, written once at intake, empty, only orders the log; a status filter reads the records), and a new delivery has no due entry (its intake's host attempts it at once; one that no host attempted gets its due entry from the recovery of first attempts, whose cursor is `ix\0first-attempts`); deliveries made earlier keep theirs |
//! | 6 | as 5, and new delivery records are packed (`deliveries::packed`) instead of JSON; records made earlier stay JSON |
//!
//! A version may only write a format that the version before it serves, so that a rollback
//! finds data it reads (the compatibility rules in README.md). Format 3 is the exception on
//! purpose: upkeep never raises to it; the first attach of a transform does, in the attach's
//! own commit, so a rollback to a version that knows no transforms stays possible until one is
//! attached, and is refused after, when that version would drop the field on update and send
//! payloads untransformed. The attach may find a store still in format 1 (its name-search
//! backfill unfinished), hence the marker, not the number, tells whether format 2's promise
//! holds in format 3.
//!
//! Format 4 is not raised by upkeep either, since the version before this one does not read it:
//! the operator raises it (the host's `PUT /admin/data-format`), giving up rollbacks to versions
//! that do not read it for the cheaper layout. Until then this version writes the earlier
//! layout; from then on every version that serves the store writes the compact one, and reads
//! both. Format 5 is raised the same way, for the same reason: a version that reads at most 4
//! would filter the log by the statuses its entries no longer carry, and never attempt a new
//! delivery that its intake's host left unattempted. Format 6 too: a version that reads at most
//! 5 cannot read a packed record.

use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::error::{Result, internal};
use crate::keys;
use crate::ports::Kv;
use crate::store::{self, Step};

/// The oldest stored format this version reads and keeps whole.
pub const OLDEST: u32 = 1;
/// The newest stored format this version reads and keeps whole.
pub const NEWEST: u32 = 6;
/// The format this version's upkeep brings a store to.
pub const WRITES: u32 = 2;
/// The format of a store whose webhooks may carry transforms, named by the first attach.
pub const TRANSFORMS: u32 = 3;
/// The format from which new deliveries are written in the compact layout.
pub const COMPACT: u32 = 4;
/// The format from which a delivery's log entry no longer carries its status and a new
/// delivery has no due entry.
pub const LEAN: u32 = 5;
/// The format from which new delivery records are packed.
pub const PACKED: u32 = 6;

/// The stored format: 1 when the store names none.
pub fn stored(kv: &dyn Kv) -> Result<u32> {
    of_value(kv.get(&keys::data_format()).map_err(store::store_error)?.as_deref())
}

/// Reads a stored format value (decimal digits).
pub fn parse(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The format that the value of [`keys::data_format`], as read, names: 1 when absent.
pub fn of_value(value: Option<&[u8]>) -> Result<u32> {
    match value {
        None => Ok(1),
        Some(value) => parse(value).ok_or_else(|| internal("the stored data format is not a number")),
    }
}

/// Names `format` as the stored one, unless the store already names it or a newer one: the
/// format only rises. Called by upkeep once the data keeps every promise of `format`.
pub fn raise(kv: &dyn Kv, format: u32) -> Result<()> {
    let gave_up = || internal("the stored data format kept changing while being raised");
    store::commit_retrying(kv, gave_up, |_| {
        Ok(match raise_within(kv, format)? {
            None => Step::Done(()),
            Some((guard, op)) => Step::Commit {
                guards: vec![guard],
                ops: vec![op],
                answer: (),
            },
        })
    })
}

/// The guard and write that name `format` as the stored one within another commit, when the
/// store names an older one (or none); `None` when it already names `format` or a newer one.
/// The guard holds the format as read, so a concurrent change fails the commit rather than be
/// overwritten.
pub fn raise_within(kv: &dyn Kv, format: u32) -> Result<Option<(Condition, Op)>> {
    let key = keys::data_format();
    let current = kv.get(&key).map_err(store::store_error)?;
    let stored = match &current {
        None => 1,
        Some(value) => parse(value).ok_or_else(|| internal("the stored data format is not a number"))?,
    };
    if current.is_some() && stored >= format {
        return Ok(None);
    }
    let guard = match current {
        Some(value) => Condition::Equals(Entry {
            key: key.clone(),
            value,
        }),
        None => Condition::Absent(key.clone()),
    };
    let op = Op::Put(Entry {
        key,
        value: format.to_string().into_bytes(),
    });
    Ok(Some((guard, op)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryKv;

    #[test]
    fn a_store_without_a_format_is_in_format_1() {
        assert_eq!(stored(&MemoryKv::default()).unwrap(), 1);
    }

    #[test]
    fn the_format_only_rises() {
        let kv = MemoryKv::default();
        raise(&kv, 2).unwrap();
        assert_eq!(stored(&kv).unwrap(), 2);
        assert_eq!(kv.get(&keys::data_format()).unwrap(), Some(b"2".to_vec()));
        raise(&kv, 1).unwrap();
        assert_eq!(stored(&kv).unwrap(), 2);
        raise(&kv, 3).unwrap();
        assert_eq!(stored(&kv).unwrap(), 3);
    }

    #[test]
    fn a_raise_within_another_commit_is_guarded_by_the_format_as_read() {
        let kv = MemoryKv::default();
        let (guard, op) = raise_within(&kv, 3).unwrap().unwrap();
        assert!(matches!(&guard, Condition::Absent(key) if *key == keys::data_format()));
        // Someone names format 2 meanwhile: the guard fails rather than hide it.
        raise(&kv, 2).unwrap();
        assert!(kv.commit(&[guard], &[op]).is_err());
        let (guard, op) = raise_within(&kv, 3).unwrap().unwrap();
        kv.commit(&[guard], &[op]).unwrap();
        assert_eq!(stored(&kv).unwrap(), 3);
        assert!(raise_within(&kv, 3).unwrap().is_none());
        assert!(raise_within(&kv, 2).unwrap().is_none());
    }

    #[test]
    fn what_this_version_writes_is_within_what_it_reads() {
        assert!((OLDEST..=NEWEST).contains(&WRITES));
        assert!((OLDEST..=NEWEST).contains(&TRANSFORMS));
        assert!((OLDEST..=NEWEST).contains(&COMPACT));
        assert!((OLDEST..=NEWEST).contains(&LEAN));
        assert!((OLDEST..=NEWEST).contains(&PACKED));
        // Only the operator names formats 4 to 6: earlier versions do not read them.
        const { assert!(WRITES < COMPACT && COMPACT < LEAN && LEAN < PACKED) };
        // Upkeep stops short of transforms: only an attach names format 3.
        const { assert!(WRITES < TRANSFORMS) };
    }
}
