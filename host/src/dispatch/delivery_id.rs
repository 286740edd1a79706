//! Delivery ids as the dispatcher keeps them while their deliveries wait. A drain queues tens of
//! thousands at once (26,000 at the peak of `bench drain 20000 3`), each id held twice: in its
//! webhook's queue and among the known ones. The ids the plugin makes are UUIDs in their
//! lowercase hyphenated form; those are kept as their 16 bytes instead of a 36-byte string
//! on the heap, and any other id as it is.

use std::fmt;

/// A delivery's id, compact when it is a UUID in the form the plugin writes it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum DeliveryId {
    /// A UUID whose lowercase hyphenated form is the id.
    Uuid([u8; 16]),
    /// Any other id, as given.
    Text(Box<str>),
}

impl DeliveryId {
    /// The id of `text`: compact exactly when writing the UUID back gives `text` again.
    pub fn new(text: &str) -> Self {
        if text.len() == uuid::fmt::Hyphenated::LENGTH
            && let Ok(parsed) = uuid::Uuid::try_parse(text)
            && parsed.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()) == text
        {
            return DeliveryId::Uuid(parsed.into_bytes());
        }
        DeliveryId::Text(text.into())
    }
}

impl From<String> for DeliveryId {
    fn from(text: String) -> Self {
        match DeliveryId::new(&text) {
            DeliveryId::Text(_) => DeliveryId::Text(text.into_boxed_str()),
            compact => compact,
        }
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryId::Uuid(bytes) => fmt::Display::fmt(&uuid::Uuid::from_bytes(*bytes).hyphenated(), f),
            DeliveryId::Text(text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryId;

    #[test]
    fn a_lowercase_hyphenated_uuid_is_kept_as_its_bytes_and_written_back_the_same() {
        let text = "0192f7c4-1d2e-7a3b-9c4d-5e6f708192a3";
        let id = DeliveryId::from(text.to_owned());
        assert!(matches!(id, DeliveryId::Uuid(_)));
        assert_eq!(id.to_string(), text);
        assert_eq!(id, DeliveryId::new(text));
    }

    #[test]
    fn any_other_id_is_kept_as_given() {
        for text in [
            "0192F7C4-1D2E-7A3B-9C4D-5E6F708192A3",
            "0192f7c41d2e7a3b9c4d5e6f708192a3",
            "{0192f7c4-1d2e-7a3b-9c4d-5e6f708192a3}",
            "urn:uuid:0192f7c4-1d2e-7a3b-9c4d-5e6f708192a3",
            "delivery-1",
            "",
        ] {
            let id = DeliveryId::from(text.to_owned());
            assert_eq!(id, DeliveryId::Text(text.into()), "{text}");
            assert_eq!(id.to_string(), text);
        }
    }

    #[test]
    fn the_compact_form_takes_no_more_room_than_a_string() {
        assert!(std::mem::size_of::<DeliveryId>() <= std::mem::size_of::<String>());
    }
}
