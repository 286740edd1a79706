//! The embedded identity registry: users, groups and things from a JSON file that is
//! re-read when it changes, whether rewritten in place or replaced by a rename.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

use super::{IdentityBackend, IdentityError, KeyKind, Role};
use crate::store::BoxFuture;

/// How often the file is checked for changes; SPEC.md promises a change within 2 seconds.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    users: Vec<UserEntry>,
    #[serde(default)]
    groups: Vec<GroupEntry>,
    #[serde(default)]
    things: Vec<ThingEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    id: String,
    token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    id: String,
    #[serde(default)]
    #[allow(dead_code, reason = "part of the file format, shown to operators only")]
    name: String,
    #[serde(default)]
    members: HashMap<String, Role>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThingEntry {
    id: String,
    group_id: String,
    key: String,
}

/// A parsed registry, indexed for the questions the service asks.
#[derive(Debug, Default)]
pub struct Registry {
    users_by_token: HashMap<String, String>,
    members_by_group: HashMap<String, HashMap<String, Role>>,
    group_by_thing: HashMap<String, String>,
    thing_by_key: HashMap<String, String>,
}

/// Why a registry file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid registry.
    #[error("{path} is not a valid registry: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Registry {
    /// Parses and checks a registry document: ids, tokens and keys unique and non-empty,
    /// every thing in a known group, every member a known user.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let file: RegistryFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut registry = Registry::default();
        let mut user_ids = Vec::with_capacity(file.users.len());
        for user in file.users {
            if user.id.is_empty() || user.token.is_empty() {
                return Err("every user needs a non-empty id and token".into());
            }
            if user_ids.contains(&user.id) {
                return Err(format!("user {} appears twice", user.id));
            }
            user_ids.push(user.id.clone());
            if registry.users_by_token.insert(user.token, user.id.clone()).is_some() {
                return Err(format!("user {} shares a token with another user", user.id));
            }
        }
        for group in file.groups {
            if group.id.is_empty() {
                return Err("every group needs a non-empty id".into());
            }
            if let Some(unknown) = group.members.keys().find(|member| !user_ids.contains(member)) {
                return Err(format!("group {} names unknown user {unknown}", group.id));
            }
            if registry
                .members_by_group
                .insert(group.id.clone(), group.members)
                .is_some()
            {
                return Err(format!("group {} appears twice", group.id));
            }
        }
        for thing in file.things {
            if thing.id.is_empty() || thing.key.is_empty() {
                return Err("every thing needs a non-empty id and key".into());
            }
            if !registry.members_by_group.contains_key(&thing.group_id) {
                return Err(format!(
                    "thing {} belongs to unknown group {}",
                    thing.id, thing.group_id
                ));
            }
            if registry
                .group_by_thing
                .insert(thing.id.clone(), thing.group_id)
                .is_some()
            {
                return Err(format!("thing {} appears twice", thing.id));
            }
            if registry.thing_by_key.insert(thing.key, thing.id.clone()).is_some() {
                return Err(format!("thing {} shares a key with another thing", thing.id));
            }
        }
        Ok(registry)
    }

    /// Reads and parses a registry file.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let bytes = std::fs::read(path).map_err(|source| RegistryError::Read {
            path: path.to_owned(),
            source,
        })?;
        Registry::parse(&bytes).map_err(|reason| RegistryError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// The user id of a token.
    pub fn user(&self, token: &str) -> Result<&str, IdentityError> {
        self.users_by_token
            .get(token)
            .map(String::as_str)
            .ok_or_else(|| IdentityError::Unauthenticated("unknown bearer token".into()))
    }

    /// Checks a user's role in a group.
    pub fn check_group(&self, token: &str, group_id: &str, role: Role) -> Result<(), IdentityError> {
        let user = self.user(token)?;
        let members = self
            .members_by_group
            .get(group_id)
            .ok_or_else(|| IdentityError::NotFound("group not found".into()))?;
        match members.get(user) {
            Some(held) if *held >= role => Ok(()),
            _ => Err(IdentityError::Forbidden(format!(
                "this operation needs the {} role in the group",
                format!("{role:?}").to_lowercase()
            ))),
        }
    }

    /// Checks a user's role in a thing's group; answers the group's id.
    pub fn check_thing(&self, token: &str, thing_id: &str, role: Role) -> Result<String, IdentityError> {
        self.user(token)?;
        let group_id = self
            .group_by_thing
            .get(thing_id)
            .ok_or_else(|| IdentityError::NotFound("thing not found".into()))?;
        self.check_group(token, group_id, role)?;
        Ok(group_id.clone())
    }

    /// The group a thing belongs to.
    pub fn group_of(&self, thing_id: &str) -> Option<&str> {
        self.group_by_thing.get(thing_id).map(String::as_str)
    }

    /// The thing a device key belongs to.
    pub fn thing_by_key(&self, key: &str) -> Option<&str> {
        self.thing_by_key.get(key).map(String::as_str)
    }

    /// Every thing id.
    pub fn thing_ids(&self) -> impl Iterator<Item = &str> {
        self.group_by_thing.keys().map(String::as_str)
    }

    /// Every group id.
    pub fn group_ids(&self) -> impl Iterator<Item = &str> {
        self.members_by_group.keys().map(String::as_str)
    }
}

/// Things and groups present in one registry and gone from the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Removed thing ids.
    pub things: Vec<String>,
    /// Removed group ids.
    pub groups: Vec<String>,
}

impl Removed {
    /// What `before` has and `after` lacks.
    pub fn between(before: &Registry, after: &Registry) -> Self {
        let mut things: Vec<String> = before
            .thing_ids()
            .filter(|id| !after.group_by_thing.contains_key(*id))
            .map(str::to_owned)
            .collect();
        let mut groups: Vec<String> = before
            .group_ids()
            .filter(|id| !after.members_by_group.contains_key(*id))
            .map(str::to_owned)
            .collect();
        things.sort();
        groups.sort();
        Removed { things, groups }
    }

    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.things.is_empty() && self.groups.is_empty()
    }
}

/// The registry file as an identity backend, kept current by [`RegistryBackend::watch`].
pub struct RegistryBackend {
    path: PathBuf,
    current: RwLock<Arc<Registry>>,
}

impl RegistryBackend {
    /// Loads the registry file; a missing or invalid file is an error.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let registry = Registry::load(path)?;
        Ok(RegistryBackend {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(registry)),
        })
    }

    /// The registry in force.
    pub fn current(&self) -> Arc<Registry> {
        self.current.read().expect("registry lock poisoned").clone()
    }

    /// Re-reads the file whenever its content changes, until the backend is dropped. A
    /// change that does not parse is logged and ignored: the last good registry stays. Things
    /// and groups that disappear are reported to `on_removed`.
    pub fn watch(self: &Arc<Self>, on_removed: impl Fn(Removed) + Send + 'static) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let mut last = std::fs::read(&self.path).ok();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(POLL_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(backend) = weak.upgrade() else { return };
                // A rename may leave the path briefly missing; wait for the next tick.
                let Ok(bytes) = std::fs::read(&backend.path) else {
                    continue;
                };
                if last.as_deref() == Some(bytes.as_slice()) {
                    continue;
                }
                match Registry::parse(&bytes) {
                    Ok(registry) => {
                        let registry = Arc::new(registry);
                        let previous = std::mem::replace(
                            &mut *backend.current.write().expect("registry lock poisoned"),
                            registry.clone(),
                        );
                        tracing::info!(path = %backend.path.display(), "registry reloaded");
                        let removed = Removed::between(&previous, &registry);
                        if !removed.is_empty() {
                            on_removed(removed);
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(path = %backend.path.display(), %reason, "registry change ignored: not a valid registry; the last good one stays in force");
                    }
                }
                last = Some(bytes);
            }
        })
    }
}

impl IdentityBackend for RegistryBackend {
    fn authenticate(&self, token: &str) -> BoxFuture<'_, Result<String, IdentityError>> {
        let result = self.current().user(token).map(str::to_owned);
        Box::pin(std::future::ready(result))
    }

    fn authorize_thing(&self, token: &str, thing_id: &str, role: Role) -> BoxFuture<'_, Result<String, IdentityError>> {
        let result = self.current().check_thing(token, thing_id, role);
        Box::pin(std::future::ready(result))
    }

    fn authorize_group(&self, token: &str, group_id: &str, role: Role) -> BoxFuture<'_, Result<(), IdentityError>> {
        let result = self.current().check_group(token, group_id, role);
        Box::pin(std::future::ready(result))
    }

    fn identify_thing(&self, key: &str, kind: KeyKind) -> BoxFuture<'_, Result<String, IdentityError>> {
        // The registry holds the platform's internal keys only.
        let result = match kind {
            KeyKind::Internal => self.current().thing_by_key(key).map(str::to_owned),
            KeyKind::External => None,
        }
        .ok_or_else(|| IdentityError::Unauthenticated("unknown thing key".into()));
        Box::pin(std::future::ready(result))
    }

    fn thing_group(&self, thing_id: &str) -> BoxFuture<'_, Result<String, IdentityError>> {
        let result = self
            .current()
            .group_of(thing_id)
            .map(str::to_owned)
            .ok_or_else(|| IdentityError::NotFound("thing not found".into()));
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
        "users": [{"id": "alice", "token": "ta"}, {"id": "bob", "token": "tb"}, {"id": "carol", "token": "tc"}],
        "groups": [{"id": "g", "name": "plant", "members": {"alice": "admin", "bob": "viewer"}}, {"id": "h", "members": {}}],
        "things": [{"id": "t", "group_id": "g", "key": "k"}]
    }"#;

    #[test]
    fn roles_order_and_checks() {
        let registry = Registry::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(registry.check_thing("ta", "t", Role::Admin).unwrap(), "g");
        assert!(registry.check_thing("tb", "t", Role::Viewer).is_ok());
        assert!(matches!(
            registry.check_thing("tb", "t", Role::Editor),
            Err(IdentityError::Forbidden(_))
        ));
        assert!(matches!(
            registry.check_thing("tc", "t", Role::Viewer),
            Err(IdentityError::Forbidden(_))
        ));
        assert!(matches!(
            registry.check_thing("zz", "t", Role::Viewer),
            Err(IdentityError::Unauthenticated(_))
        ));
        assert!(matches!(
            registry.check_thing("ta", "nope", Role::Viewer),
            Err(IdentityError::NotFound(_))
        ));
        assert!(matches!(
            registry.check_group("ta", "h", Role::Viewer),
            Err(IdentityError::Forbidden(_))
        ));
        assert!(matches!(
            registry.check_group("ta", "x", Role::Viewer),
            Err(IdentityError::NotFound(_))
        ));
        assert_eq!(registry.thing_by_key("k"), Some("t"));
    }

    #[test]
    fn removals_are_what_disappeared() {
        let before = Registry::parse(SAMPLE.as_bytes()).unwrap();
        let after = Registry::parse(br#"{"groups": [{"id": "g", "members": {}}]}"#).unwrap();
        assert_eq!(
            Removed::between(&before, &after),
            Removed {
                things: vec!["t".into()],
                groups: vec!["h".into()]
            }
        );
        assert!(Removed::between(&after, &before).is_empty());
    }

    #[test]
    fn inconsistent_registries_are_refused() {
        for bad in [
            r#"{"users": [{"id": "a", "token": "t"}, {"id": "b", "token": "t"}]}"#,
            r#"{"groups": [{"id": "g", "members": {"ghost": "admin"}}]}"#,
            r#"{"things": [{"id": "t", "group_id": "none", "key": "k"}]}"#,
            r#"{"groups": [{"id": "g", "members": {}}], "things": [{"id": "t", "group_id": "g", "key": "k"}, {"id": "u", "group_id": "g", "key": "k"}]}"#,
            r#"{"users": [{"id": "a", "token": "t"}], "groups": [{"id": "g", "members": {"a": "owner"}}]}"#,
            r#"{"users": []"#,
            r#"{"userz": []}"#,
        ] {
            assert!(Registry::parse(bad.as_bytes()).is_err(), "accepted {bad}");
        }
    }
}
