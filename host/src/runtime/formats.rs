//! Data compatibility: the format the store is in, the formats a version serves, and the rule
//! that hands the store only to a version that serves its format (`wit/migration.wit`).

use crate::store::KvBackend;

/// The key under which the store names its format (decimal digits; absent: format 1).
pub const FORMAT_KEY: &[u8] = b"ix\0format";

/// The formats of stored data a version serves, as it declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFormats {
    /// The oldest stored format it reads and keeps whole.
    pub oldest: u32,
    /// The newest stored format it reads and keeps whole.
    pub newest: u32,
    /// The format its upkeep brings the store to.
    pub writes: u32,
}

impl DataFormats {
    /// What a version without `migration.data-formats` serves: every world the host loads has
    /// `maintain`, and every version with it keeps the name-search index (format 2).
    pub const EARLIER_WORLD: DataFormats = DataFormats {
        oldest: 1,
        newest: 2,
        writes: 2,
    };

    /// Whether the version reads a store in `format` and keeps it whole.
    pub fn serves(&self, format: u32) -> bool {
        (self.oldest..=self.newest).contains(&format)
    }

    /// Why the declaration cannot be right, if it cannot.
    pub fn flaw(&self) -> Option<String> {
        (self.oldest > self.newest || !self.serves(self.writes)).then(|| {
            format!(
                "it declares data formats {} to {} and writes {}, outside them",
                self.oldest, self.newest, self.writes
            )
        })
    }

    /// Why this version may not be handed a store in `stored`, if it may not.
    pub fn refusal(&self, stored: u32) -> Option<String> {
        (!self.serves(stored)).then(|| {
            let range = if self.oldest == self.newest {
                format!("only data format {}", self.oldest)
            } else {
                format!("data formats {} to {}", self.oldest, self.newest)
            };
            format!("the stored data is in format {stored}, and this plugin version reads {range}")
        })
    }
}

/// Reads a stored format value (decimal digits).
pub fn parse(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The format the store is in.
pub async fn stored(store: &dyn KvBackend) -> Result<u32, String> {
    match store.get(FORMAT_KEY.to_vec()).await {
        Ok(None) => Ok(1),
        Ok(Some(value)) => parse(&value).ok_or_else(|| format!("the stored data format is not a number: {value:?}")),
        Err(error) => Err(format!("cannot read the stored data format: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_serves_the_formats_it_declares() {
        let legacy = DataFormats {
            oldest: 1,
            newest: 1,
            writes: 1,
        };
        assert_eq!(legacy.refusal(1), None);
        assert_eq!(
            legacy.refusal(2).unwrap(),
            "the stored data is in format 2, and this plugin version reads only data format 1"
        );
        assert_eq!(DataFormats::EARLIER_WORLD.refusal(2), None);
        assert_eq!(
            DataFormats::EARLIER_WORLD.refusal(3).unwrap(),
            "the stored data is in format 3, and this plugin version reads data formats 1 to 2"
        );
    }

    #[test]
    fn a_declaration_must_write_what_it_reads() {
        assert_eq!(DataFormats::EARLIER_WORLD.flaw(), None);
        let wrong = DataFormats {
            oldest: 2,
            newest: 3,
            writes: 1,
        };
        assert!(wrong.flaw().is_some());
    }

    #[test]
    fn the_key_is_the_one_plugins_write() {
        assert_eq!(FORMAT_KEY, b"ix\x00format");
    }
}
