//! The `identity` capability: who a token belongs to and which role it holds where, behind
//! one trait with one module per backend.

mod capability;
pub mod offline;
pub mod registry;
pub mod things;

pub use capability::{IdentityCtx, IdentityView, add_to_linker};

use crate::store::BoxFuture;

/// A user's role in a group, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May view and list.
    Viewer,
    /// May also create, update and remove.
    Editor,
    /// May do everything.
    Admin,
}

/// Why an identity question was answered no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Missing or unknown credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Known credentials without the needed role.
    #[error("{0}")]
    Forbidden(String),
    /// The thing or group does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The identity service found the request malformed.
    #[error("{0}")]
    Invalid(String),
    /// The identity service could not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// Which of the platform's two forms of device key a publisher used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `Authorization: Thing <key>`.
    Internal,
    /// `Authorization: External <key>`.
    External,
}

/// A source of identity: the registry file, or the platform's things service.
pub trait IdentityBackend: Send + Sync + 'static {
    /// The id of the user a token belongs to.
    fn authenticate(&self, token: &str) -> BoxFuture<'_, Result<String, IdentityError>>;
    /// Checks the token's role in the thing's group; answers the group's id.
    fn authorize_thing(&self, token: &str, thing_id: &str, role: Role) -> BoxFuture<'_, Result<String, IdentityError>>;
    /// Checks the token's role in the group.
    fn authorize_group(&self, token: &str, group_id: &str, role: Role) -> BoxFuture<'_, Result<(), IdentityError>>;
    /// The thing a device key of this kind belongs to.
    fn identify_thing(&self, key: &str, kind: KeyKind) -> BoxFuture<'_, Result<String, IdentityError>>;
    /// The group a thing belongs to, without an access check: intake counts a message under
    /// its group's share and quotas, and the runtime routes a canary's calls by group.
    fn thing_group(&self, thing_id: &str) -> BoxFuture<'_, Result<String, IdentityError>>;
}
