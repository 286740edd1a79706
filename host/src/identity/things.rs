//! The platform's things service as the identity backend (SPEC.md section 6): a gRPC client of
//! `protomfx.ThingsService` with a per-call timeout and a short-lived cache of positive
//! answers, so a revoked role stops working within [`POSITIVE_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::{IdentityBackend, IdentityError, KeyKind, Role};
use crate::store::BoxFuture;

/// `UserAccessReq { string token = 1; string id = 2; string action = 3; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserAccessReq {
    /// The user's token.
    #[prost(string, tag = "1")]
    pub token: String,
    /// The thing or group.
    #[prost(string, tag = "2")]
    pub id: String,
    /// The role asked for: `viewer`, `editor` or `admin`.
    #[prost(string, tag = "3")]
    pub action: String,
}

/// `ThingID { string value = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ThingId {
    /// The thing's id.
    #[prost(string, tag = "1")]
    pub value: String,
}

/// `GroupID { string value = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupId {
    /// The group's id.
    #[prost(string, tag = "1")]
    pub value: String,
}

/// `ThingKey { string value = 1; string type = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ThingKey {
    /// The device key.
    #[prost(string, tag = "1")]
    pub value: String,
    /// `internal` (`Authorization: Thing`) or `external` (`Authorization: External`).
    #[prost(string, tag = "2")]
    pub r#type: String,
}

/// `google.protobuf.Empty`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// The service's name, and the paths of the four calls.
pub const SERVICE: &str = "protomfx.ThingsService";
/// `rpc CanUserAccessThing(UserAccessReq) returns (google.protobuf.Empty)`
pub const CAN_USER_ACCESS_THING: &str = "/protomfx.ThingsService/CanUserAccessThing";
/// `rpc CanUserAccessGroup(UserAccessReq) returns (google.protobuf.Empty)`
pub const CAN_USER_ACCESS_GROUP: &str = "/protomfx.ThingsService/CanUserAccessGroup";
/// `rpc GetGroupIDByThing(ThingID) returns (GroupID)`
pub const GET_GROUP_ID_BY_THING: &str = "/protomfx.ThingsService/GetGroupIDByThing";
/// `rpc Identify(ThingKey) returns (ThingID)`
pub const IDENTIFY: &str = "/protomfx.ThingsService/Identify";

/// How long a positive answer is reused.
pub const POSITIVE_TTL: Duration = Duration::from_secs(2);
/// Most answers cached; the cache is emptied when it would grow past this.
const CACHE_LIMIT: usize = 100_000;

/// How to reach the things service.
#[derive(Debug, Clone)]
pub struct ThingsConfig {
    /// `HOST:PORT`.
    pub address: String,
    /// Time limit of each call, connecting included.
    pub timeout: Duration,
    /// Whether to speak TLS.
    pub tls: bool,
    /// PEM CA certificates to verify the service with; without them, the web PKI roots.
    pub ca_certs: Option<Vec<u8>>,
}

/// Why the client could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ThingsSetupError(String);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Question {
    Thing(String, String, Role),
    Group(String, String, Role),
    Key(String, KeyKind),
    GroupOf(String),
}

/// A client of the platform's things service.
pub struct ThingsService {
    grpc: tonic::client::Grpc<Channel>,
    timeout: Duration,
    cache: Mutex<HashMap<Question, (Instant, String)>>,
}

impl ThingsService {
    /// Sets up the client; it connects on first use, so start-up does not wait for the service.
    pub fn new(config: &ThingsConfig) -> Result<Self, ThingsSetupError> {
        let scheme = if config.tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", config.address))
            .map_err(|e| ThingsSetupError(format!("{:?} is not HOST:PORT: {e}", config.address)))?
            // The whole call is bounded in `unary`, with one message whichever part was slow.
            .connect_timeout(config.timeout);
        if config.tls {
            let mut tls = ClientTlsConfig::new();
            tls = match &config.ca_certs {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_webpki_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ThingsSetupError(format!("TLS: {e}")))?;
        }
        Ok(ThingsService {
            grpc: tonic::client::Grpc::new(endpoint.connect_lazy()),
            timeout: config.timeout,
            cache: Mutex::new(HashMap::new()),
        })
    }

    async fn unary<Req, Resp>(&self, path: &'static str, request: Req) -> Result<Resp, IdentityError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        let call = async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("cannot reach the things service: {e}")))?;
            grpc.unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::<Req, Resp>::default(),
            )
            .await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(IdentityError::Unavailable(format!(
                "the things service did not answer within {:?}",
                self.timeout
            ))),
            Ok(Err(status)) => Err(from_status(status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    fn cached(&self, question: &Question) -> Option<String> {
        let cache = self.cache.lock().expect("identity cache poisoned");
        cache
            .get(question)
            .filter(|(at, _)| at.elapsed() < POSITIVE_TTL)
            .map(|(_, answer)| answer.clone())
    }

    fn remember(&self, question: Question, answer: &str) {
        let mut cache = self.cache.lock().expect("identity cache poisoned");
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, (at, _)| at.elapsed() < POSITIVE_TTL);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(question, (Instant::now(), answer.to_owned()));
    }
}

/// The action name of a role in the platform's access requests.
pub fn action(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Editor => "editor",
        Role::Admin => "admin",
    }
}

/// SPEC.md section 6's mapping of the service's status codes.
fn from_status(status: Status) -> IdentityError {
    let message = status.message().to_owned();
    let or = |fallback: &str| {
        if message.is_empty() {
            fallback.to_owned()
        } else {
            message.clone()
        }
    };
    match status.code() {
        Code::Unauthenticated => IdentityError::Unauthenticated(or("missing or invalid credentials")),
        Code::PermissionDenied => IdentityError::Forbidden(or("not allowed")),
        Code::NotFound => IdentityError::NotFound(or("not found")),
        Code::InvalidArgument => IdentityError::Invalid(or("invalid request")),
        code => IdentityError::Unavailable(format!("the things service failed ({code:?}): {message}")),
    }
}

impl IdentityBackend for ThingsService {
    fn authenticate(&self, token: &str) -> BoxFuture<'_, Result<String, IdentityError>> {
        // The things service has no call that only checks a token: the access checks that
        // follow every authentication answer 401 for an unknown one.
        let known = if token.is_empty() {
            Err(IdentityError::Unauthenticated("missing token".into()))
        } else {
            Ok(String::new())
        };
        Box::pin(std::future::ready(known))
    }

    fn authorize_thing(&self, token: &str, thing_id: &str, role: Role) -> BoxFuture<'_, Result<String, IdentityError>> {
        let question = Question::Thing(token.to_owned(), thing_id.to_owned(), role);
        let (token, thing_id) = (token.to_owned(), thing_id.to_owned());
        Box::pin(async move {
            if let Some(group) = self.cached(&question) {
                return Ok(group);
            }
            let access = UserAccessReq {
                token,
                id: thing_id.clone(),
                action: action(role).to_owned(),
            };
            self.unary::<_, Empty>(CAN_USER_ACCESS_THING, access).await?;
            // The thing's group is the same answer whoever asks: intake and canary routing
            // reuse it.
            let group_of = Question::GroupOf(thing_id.clone());
            let group = match self.cached(&group_of) {
                Some(group) => group,
                None => {
                    let group: GroupId = self.unary(GET_GROUP_ID_BY_THING, ThingId { value: thing_id }).await?;
                    self.remember(group_of, &group.value);
                    group.value
                }
            };
            self.remember(question, &group);
            Ok(group)
        })
    }

    fn authorize_group(&self, token: &str, group_id: &str, role: Role) -> BoxFuture<'_, Result<(), IdentityError>> {
        let question = Question::Group(token.to_owned(), group_id.to_owned(), role);
        let access = UserAccessReq {
            token: token.to_owned(),
            id: group_id.to_owned(),
            action: action(role).to_owned(),
        };
        Box::pin(async move {
            if self.cached(&question).is_some() {
                return Ok(());
            }
            self.unary::<_, Empty>(CAN_USER_ACCESS_GROUP, access).await?;
            self.remember(question, "");
            Ok(())
        })
    }

    fn identify_thing(&self, key: &str, kind: KeyKind) -> BoxFuture<'_, Result<String, IdentityError>> {
        let question = Question::Key(key.to_owned(), kind);
        let request = ThingKey {
            value: key.to_owned(),
            r#type: match kind {
                KeyKind::Internal => "internal",
                KeyKind::External => "external",
            }
            .to_owned(),
        };
        Box::pin(async move {
            if let Some(thing) = self.cached(&question) {
                return Ok(thing);
            }
            let thing: ThingId = self.unary(IDENTIFY, request).await?;
            self.remember(question, &thing.value);
            Ok(thing.value)
        })
    }

    fn thing_group(&self, thing_id: &str) -> BoxFuture<'_, Result<String, IdentityError>> {
        let question = Question::GroupOf(thing_id.to_owned());
        let thing = ThingId {
            value: thing_id.to_owned(),
        };
        Box::pin(async move {
            if let Some(group) = self.cached(&question) {
                return Ok(group);
            }
            let group: GroupId = self.unary(GET_GROUP_ID_BY_THING, thing).await?;
            self.remember(question, &group.value);
            Ok(group.value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_as_the_spec_says() {
        assert!(matches!(
            from_status(Status::unauthenticated("")),
            IdentityError::Unauthenticated(_)
        ));
        assert!(matches!(from_status(Status::permission_denied("no")), IdentityError::Forbidden(m) if m == "no"));
        assert!(matches!(from_status(Status::not_found("")), IdentityError::NotFound(_)));
        assert!(matches!(
            from_status(Status::invalid_argument("")),
            IdentityError::Invalid(_)
        ));
        assert!(matches!(
            from_status(Status::internal("boom")),
            IdentityError::Unavailable(_)
        ));
        assert!(matches!(
            from_status(Status::unavailable("")),
            IdentityError::Unavailable(_)
        ));
    }

    #[test]
    fn messages_have_the_platform_wire_format() {
        // UserAccessReq{token="t", id="i", action="viewer"}: fields 1, 2, 3 as length-delimited.
        let bytes = prost::Message::encode_to_vec(&UserAccessReq {
            token: "t".into(),
            id: "i".into(),
            action: "viewer".into(),
        });
        assert_eq!(bytes, b"\x0a\x01t\x12\x01i\x1a\x06viewer");
        let key = prost::Message::encode_to_vec(&ThingKey {
            value: "k".into(),
            r#type: "external".into(),
        });
        assert_eq!(key, b"\x0a\x01k\x12\x08external");
    }
}
