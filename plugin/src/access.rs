//! Who may do what: the identity capability as the plugin's logic sees it.

use crate::{Error, Role};

/// Answers the identity questions the plugin asks before acting.
pub trait Access {
    /// Checks that the token is known; returns the user's id.
    fn authenticate(&self, token: &str) -> Result<String, Error>;
    /// Checks the token's role in the thing's group; returns the group's id.
    fn authorize_thing(&self, token: &str, thing_id: &str, role: Role) -> Result<String, Error>;
    /// Checks the token's role in the group.
    fn authorize_group(&self, token: &str, group_id: &str, role: Role) -> Result<(), Error>;
}

/// Refuses an empty token before asking the identity capability anything.
pub fn require_token(token: &str) -> Result<(), Error> {
    if token.is_empty() {
        Err(Error::Unauthenticated("missing or empty bearer token".into()))
    } else {
        Ok(())
    }
}
