//! Who publishes on the device-facing endpoint: the device key of `Authorization: Thing <key>`
//! or `Authorization: External <key>`, and the thing identity says it belongs to.

use crate::identity::{IdentityBackend, IdentityError, KeyKind};

/// Why a publisher was not identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceKeyError {
    /// No device key in a form the endpoint accepts.
    #[error("missing thing key: use Authorization: Thing <key>")]
    Missing,
    /// A key no thing holds.
    #[error("unknown thing key")]
    Unknown,
    /// Identity could not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// The key and its kind in an `Authorization` header value, if it holds a device key.
pub fn parse(authorization: &str) -> Option<(&str, KeyKind)> {
    let (scheme, key) = authorization.split_once(' ')?;
    let key = key.trim();
    let kind = if scheme.eq_ignore_ascii_case("thing") {
        KeyKind::Internal
    } else if scheme.eq_ignore_ascii_case("external") {
        KeyKind::External
    } else {
        return None;
    };
    (!key.is_empty()).then_some((key, kind))
}

/// The thing whose device key the `Authorization` header value carries.
pub async fn identify(identity: &dyn IdentityBackend, authorization: Option<&str>) -> Result<String, DeviceKeyError> {
    let (key, kind) = authorization.and_then(parse).ok_or(DeviceKeyError::Missing)?;
    identity.identify_thing(key, kind).await.map_err(|e| match e {
        IdentityError::Unavailable(m) => DeviceKeyError::Unavailable(m),
        _ => DeviceKeyError::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_keys_are_read_from_either_scheme_in_any_case() {
        assert_eq!(parse("Thing k1"), Some(("k1", KeyKind::Internal)));
        assert_eq!(parse("thing  k1 "), Some(("k1", KeyKind::Internal)));
        assert_eq!(parse("EXTERNAL k2"), Some(("k2", KeyKind::External)));
        assert_eq!(parse("Bearer k1"), None);
        assert_eq!(parse("Thing "), None);
        assert_eq!(parse("Thing"), None);
    }
}
