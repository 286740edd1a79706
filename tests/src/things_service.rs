//! A stand-in for the platform's things service: a real gRPC server of `protomfx.ThingsService`
//! on a loopback port, answering the four calls the host makes from a fixture the test may
//! change while it runs. The test can also slow every answer down, read every call it got, and
//! stop the server so its port is closed.
//!
//! The service is written by hand the way tonic's generated server code is, so the suite
//! needs neither `protoc` nor a build script; the messages are the host's own prost structs.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Status, body::Body};
use tonic_prost::ProstCodec;
use webhooks_host::identity::Role;
use webhooks_host::identity::things::{
    CAN_USER_ACCESS_GROUP, CAN_USER_ACCESS_THING, Empty, GET_GROUP_ID_BY_THING, GroupId, IDENTIFY, SERVICE, ThingId,
    ThingKey, UserAccessReq,
};

use crate::{ADMIN, EDITOR, GROUP_1, GROUP_2, LONER, OTHER_ADMIN, THING_1, THING_2, THING_3, VIEWER};

/// The external key of `THING_1` (its internal key is `key-1`, as in the standard registry).
pub const EXTERNAL_KEY_1: &str = "external-key-1";
/// The external key of `THING_2` (internal: `key-2`).
pub const EXTERNAL_KEY_2: &str = "external-key-2";
/// The external key of `THING_3` (internal: `key-3`).
pub const EXTERNAL_KEY_3: &str = "external-key-3";

/// A thing as the service knows it.
#[derive(Debug, Clone)]
pub struct Thing {
    /// The group it belongs to.
    pub group_id: String,
    /// Its key for `Authorization: Thing <key>`.
    pub internal_key: String,
    /// Its key for `Authorization: External <key>`.
    pub external_key: String,
}

/// What the service knows: users with their roles per group, groups, and things.
#[derive(Debug, Clone, Default)]
pub struct Fixture {
    /// Every known token, with the user's role in each of its groups (none: a known user in
    /// no group).
    pub users: HashMap<String, HashMap<String, Role>>,
    /// Every group's id, things or not.
    pub groups: BTreeSet<String>,
    /// Every thing, by id.
    pub things: HashMap<String, Thing>,
}

impl Fixture {
    /// The standard registry of the tests as the platform would hold it: the same groups,
    /// things, internal keys and tokens, plus an external key per thing.
    pub fn standard() -> Self {
        let users = [
            (ADMIN, vec![(GROUP_1, Role::Admin)]),
            (EDITOR, vec![(GROUP_1, Role::Editor)]),
            (VIEWER, vec![(GROUP_1, Role::Viewer)]),
            (OTHER_ADMIN, vec![(GROUP_2, Role::Admin)]),
            (LONER, vec![]),
        ];
        let things = [
            (THING_1, GROUP_1, "key-1", EXTERNAL_KEY_1),
            (THING_2, GROUP_1, "key-2", EXTERNAL_KEY_2),
            (THING_3, GROUP_2, "key-3", EXTERNAL_KEY_3),
        ];
        Fixture {
            users: users
                .into_iter()
                .map(|(token, roles)| {
                    let roles = roles
                        .into_iter()
                        .map(|(group, role)| (group.to_owned(), role))
                        .collect();
                    (token.to_owned(), roles)
                })
                .collect(),
            groups: [GROUP_1, GROUP_2].into_iter().map(str::to_owned).collect(),
            things: things
                .into_iter()
                .map(|(id, group, internal, external)| {
                    let thing = Thing {
                        group_id: group.to_owned(),
                        internal_key: internal.to_owned(),
                        external_key: external.to_owned(),
                    };
                    (id.to_owned(), thing)
                })
                .collect(),
        }
    }

    /// The roles of the user with this token; an empty or unknown token is `UNAUTHENTICATED`.
    fn roles_of(&self, token: &str) -> Result<&HashMap<String, Role>, Status> {
        if token.is_empty() {
            return Err(Status::unauthenticated("missing token"));
        }
        self.users
            .get(token)
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// An access check: credentials first, as the platform does, so an unknown token never
    /// learns what exists; then the action; then the group, found by `group_of`; then whether
    /// the user's role there is at least the one asked for (a higher role satisfies a lower).
    fn access<'a>(
        &'a self,
        request: &UserAccessReq,
        group_of: impl FnOnce(&'a Self) -> Result<&'a str, Status>,
    ) -> Result<Empty, Status> {
        let roles = self.roles_of(&request.token)?;
        let wanted = role_of_action(&request.action)?;
        let group = group_of(self)?;
        match roles.get(group) {
            Some(role) if *role >= wanted => Ok(Empty {}),
            Some(_) => Err(Status::permission_denied(format!(
                "{} needs a higher role",
                request.action
            ))),
            None => Err(Status::permission_denied("not a member of the group")),
        }
    }

    /// `CanUserAccessThing`: the user's role in the thing's group.
    fn can_user_access_thing(&self, request: &UserAccessReq) -> Result<Empty, Status> {
        self.access(request, |fixture| {
            fixture
                .things
                .get(&request.id)
                .map(|thing| thing.group_id.as_str())
                .ok_or_else(|| Status::not_found("thing not found"))
        })
    }

    /// `CanUserAccessGroup`: the user's role in the group.
    fn can_user_access_group(&self, request: &UserAccessReq) -> Result<Empty, Status> {
        self.access(request, |fixture| {
            fixture
                .groups
                .get(&request.id)
                .map(String::as_str)
                .ok_or_else(|| Status::not_found("group not found"))
        })
    }

    /// `GetGroupIDByThing`: the thing's group.
    fn get_group_id_by_thing(&self, request: &ThingId) -> Result<GroupId, Status> {
        let thing = self
            .things
            .get(&request.value)
            .ok_or_else(|| Status::not_found("thing not found"))?;
        Ok(GroupId {
            value: thing.group_id.clone(),
        })
    }

    /// `Identify`: the thing whose key of this type it is.
    fn identify(&self, request: &ThingKey) -> Result<ThingId, Status> {
        let key_of: fn(&Thing) -> &str = match request.r#type.as_str() {
            "internal" => |thing| thing.internal_key.as_str(),
            "external" => |thing| thing.external_key.as_str(),
            other => return Err(Status::invalid_argument(format!("unknown key type {other:?}"))),
        };
        self.things
            .iter()
            .find(|(_, thing)| !request.value.is_empty() && key_of(thing) == request.value)
            .map(|(id, _)| ThingId { value: id.clone() })
            .ok_or_else(|| Status::not_found("unknown key"))
    }
}

/// The role an access request's `action` asks for; anything else is `INVALID_ARGUMENT`.
fn role_of_action(action: &str) -> Result<Role, Status> {
    match action {
        "viewer" => Ok(Role::Viewer),
        "editor" => Ok(Role::Editor),
        "admin" => Ok(Role::Admin),
        other => Err(Status::invalid_argument(format!("unknown action {other:?}"))),
    }
}

/// One call the service got, with its request.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `CanUserAccessThing`.
    CanUserAccessThing(UserAccessReq),
    /// `CanUserAccessGroup`.
    CanUserAccessGroup(UserAccessReq),
    /// `GetGroupIDByThing`.
    GetGroupIdByThing(ThingId),
    /// `Identify`.
    Identify(ThingKey),
}

impl Call {
    /// The call's full method path, such as [`IDENTIFY`].
    pub fn path(&self) -> &'static str {
        match self {
            Call::CanUserAccessThing(_) => CAN_USER_ACCESS_THING,
            Call::CanUserAccessGroup(_) => CAN_USER_ACCESS_GROUP,
            Call::GetGroupIdByThing(_) => GET_GROUP_ID_BY_THING,
            Call::Identify(_) => IDENTIFY,
        }
    }
}

/// What the server and the test share.
#[derive(Default)]
struct Shared {
    fixture: Mutex<Fixture>,
    delay: Mutex<Duration>,
    calls: Mutex<Vec<Call>>,
}

/// Locks a mutex even if a panicking test poisoned it: the data stays consistent, each
/// change being a single assignment.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running things service; stops when dropped.
pub struct ThingsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ThingsServer {
    /// Starts a service with the standard fixture on a free loopback port.
    pub async fn start() -> Result<Self> {
        Self::start_on(0, Fixture::standard()).await
    }

    /// Starts a service with the standard fixture on a free loopback port, speaking TLS with
    /// this PEM certificate chain and key.
    pub async fn start_tls(certificate: &[u8], key: &[u8]) -> Result<Self> {
        let tls =
            tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(certificate, key));
        Self::serve(0, Fixture::standard(), Some(tls)).await
    }

    /// Starts a service with this fixture on this loopback port (0 for any), on the current
    /// tokio runtime.
    pub async fn start_on(port: u16, fixture: Fixture) -> Result<Self> {
        Self::serve(port, fixture, None).await
    }

    async fn serve(port: u16, fixture: Fixture, tls: Option<tonic::transport::ServerTlsConfig>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding the things service to 127.0.0.1:{port}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            fixture: Mutex::new(fixture),
            ..Shared::default()
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = ThingsGrpc(shared.clone());
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context("the test TLS identity")?;
        }
        let task = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let serving = builder.serve_with_incoming_shutdown(service, incoming, async {
                let _ = stopped.await;
            });
            if let Err(error) = serving.await {
                eprintln!("things service on {addr} failed: {error}");
            }
        });
        Ok(ThingsServer {
            addr,
            shared,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// Its address as `MF_THINGS_AUTH_GRPC_URL` takes it: `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Gives the user with this token this role in a group, or takes its membership away
    /// (`None`); the token stays known either way.
    pub fn set_role(&self, token: &str, group: &str, role: Option<Role>) {
        let mut fixture = lock(&self.shared.fixture);
        let roles = fixture.users.entry(token.to_owned()).or_default();
        match role {
            Some(role) => roles.insert(group.to_owned(), role),
            None => roles.remove(group),
        };
    }

    /// Changes the fixture in any other way.
    pub fn edit(&self, change: impl FnOnce(&mut Fixture)) {
        change(&mut lock(&self.shared.fixture));
    }

    /// Waits this long before each answer from now on, as a slow service would.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.shared.delay) = delay;
    }

    /// Every call received so far, answered or not, in order of arrival.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }

    /// How many calls of a method (a full path such as [`IDENTIFY`]) were received.
    pub fn count(&self, path: &str) -> usize {
        lock(&self.shared.calls)
            .iter()
            .filter(|call| call.path() == path)
            .count()
    }

    /// Stops listening and waits until its port refuses connections and every open
    /// connection has closed. Calls in flight are still answered.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
            // A graceful shutdown ends once every connection has: until then the host's open
            // connection could still be answered.
            if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
                .await
                .is_err()
            {
                bail!(
                    "the things service on {} still serves a connection after 5 s",
                    self.addr
                );
            }
        }
        let started = Instant::now();
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            if started.elapsed() > Duration::from_secs(5) {
                bail!(
                    "the things service still accepts connections on {} after 5 s",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

impl Drop for ThingsServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Dropping the accept loop closes the port; open connections end once idle.
        self.task.abort();
    }
}

/// `protomfx.ThingsService` as a tower service, dispatching on the call's path the way
/// tonic's generated servers do.
#[derive(Clone)]
struct ThingsGrpc(Arc<Shared>);

impl NamedService for ThingsGrpc {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<Body>> for ThingsGrpc {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let response = match request.uri().path() {
                CAN_USER_ACCESS_THING => {
                    let method = Method::new(shared, Call::CanUserAccessThing, Fixture::can_user_access_thing);
                    Grpc::new(ProstCodec::default()).unary(method, request).await
                }
                CAN_USER_ACCESS_GROUP => {
                    let method = Method::new(shared, Call::CanUserAccessGroup, Fixture::can_user_access_group);
                    Grpc::new(ProstCodec::default()).unary(method, request).await
                }
                GET_GROUP_ID_BY_THING => {
                    let method = Method::new(shared, Call::GetGroupIdByThing, Fixture::get_group_id_by_thing);
                    Grpc::new(ProstCodec::default()).unary(method, request).await
                }
                IDENTIFY => {
                    let method = Method::new(shared, Call::Identify, Fixture::identify);
                    Grpc::new(ProstCodec::default()).unary(method, request).await
                }
                path => Status::unimplemented(format!("{path} is not a call of {SERVICE}")).into_http(),
            };
            Ok(response)
        })
    }
}

/// One unary call: records the request, waits the configured delay, then answers from the
/// fixture as it is at that moment.
struct Method<Req, Resp> {
    shared: Arc<Shared>,
    record: fn(Req) -> Call,
    answer: fn(&Fixture, &Req) -> Result<Resp, Status>,
}

impl<Req, Resp> Method<Req, Resp> {
    fn new(shared: Arc<Shared>, record: fn(Req) -> Call, answer: fn(&Fixture, &Req) -> Result<Resp, Status>) -> Self {
        Method { shared, record, answer }
    }
}

impl<Req, Resp> UnaryService<Req> for Method<Req, Resp>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<Result<tonic::Response<Resp>, Status>>;

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        let (shared, record, answer) = (self.shared.clone(), self.record, self.answer);
        Box::pin(async move {
            let request = request.into_inner();
            lock(&shared.calls).push(record(request.clone()));
            let delay = *lock(&shared.delay);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer(&lock(&shared.fixture), &request).map(tonic::Response::new)
        })
    }
}
