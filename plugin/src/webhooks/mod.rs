//! Webhooks: the record and its validation, the operations behind the REST API, listings and
//! the name-search index, and the import of webhooks another service kept.

#[cfg(not(feature = "previous-world"))]
pub mod import;
pub mod listing;
pub mod name_index;
pub mod operations;
pub mod record;
pub mod storage;
