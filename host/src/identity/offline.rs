//! The identity of a command that serves no user (`webhooks-host import`): every question is
//! answered unavailable, so no token is ever accepted.

use super::{IdentityBackend, IdentityError, KeyKind, Role};
use crate::store::BoxFuture;

/// Answers every identity question with [`IdentityError::Unavailable`].
pub struct Offline;

fn refused<T: Send + 'static>() -> BoxFuture<'static, Result<T, IdentityError>> {
    Box::pin(async {
        Err(IdentityError::Unavailable(
            "no identity service in this command".to_owned(),
        ))
    })
}

impl IdentityBackend for Offline {
    fn authenticate(&self, _token: &str) -> BoxFuture<'_, Result<String, IdentityError>> {
        refused()
    }

    fn authorize_thing(
        &self,
        _token: &str,
        _thing_id: &str,
        _role: Role,
    ) -> BoxFuture<'_, Result<String, IdentityError>> {
        refused()
    }

    fn authorize_group(&self, _token: &str, _group_id: &str, _role: Role) -> BoxFuture<'_, Result<(), IdentityError>> {
        refused()
    }

    fn identify_thing(&self, _key: &str, _kind: KeyKind) -> BoxFuture<'_, Result<String, IdentityError>> {
        refused()
    }

    fn thing_group(&self, _thing_id: &str) -> BoxFuture<'_, Result<String, IdentityError>> {
        refused()
    }
}
