//! Test support shared by every unit-test suite: an in-memory double of each port
//! ([`MemoryKv`], [`WatchedKv`], [`FixedAccess`], [`ScriptedSender`], [`FakeTransformer`],
//! [`FixedClock`]) and the
//! fixtures several suites set up the same way (webhooks stored, messages, a delivery service).
//! It sits above every other module, so it may use any of them; nothing but tests uses it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use crate::bindings::exports::mainflux::webhooks::events::Message;
use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op, StoreError};
use crate::deliveries::Events;
use crate::deliveries::record::Delivery;
use crate::deliveries::retry::RetryPolicy;
use crate::error::Result;
use crate::keys;
use crate::ports::{
    Access, Action, Answer, AttemptResult, Changes, Clock, DESTINATION_REFUSED, Kv, Request, Sender, TransformError,
    TransformMessage, Transformer,
};
use crate::record::Record;
use crate::webhooks::record::Webhook;
use crate::webhooks::storage;
use crate::{Error, Role};

/// A `BTreeMap` behind the [`Kv`] trait.
#[derive(Default)]
pub struct MemoryKv {
    /// The stored pairs.
    pub map: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Kv for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.borrow().get(key).cloned())
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        Ok(keys.iter().map(|k| self.map.borrow().get(k).cloned()).collect())
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: u32, reverse: bool) -> Result<Vec<Entry>, StoreError> {
        let map = self.map.borrow();
        let matching = map.iter().filter(|(k, _)| k.starts_with(prefix));
        let entries: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = if reverse {
            Box::new(matching.rev().filter(|(k, _)| after.is_none_or(|a| k.as_slice() < a)))
        } else {
            Box::new(matching.filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a)))
        };
        Ok(entries
            .take(limit as usize)
            .map(|(k, v)| Entry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect())
    }

    fn commit(&self, guards: &[Condition], ops: &[Op]) -> Result<(), StoreError> {
        let mut map = self.map.borrow_mut();
        for (index, guard) in guards.iter().enumerate() {
            let holds = match guard {
                Condition::Absent(key) => !map.contains_key(key),
                Condition::Present(key) => map.contains_key(key),
                Condition::Equals(entry) => map.get(&entry.key) == Some(&entry.value),
            };
            if !holds {
                return Err(StoreError::Conflict(index as u32));
            }
        }
        for op in ops {
            match op {
                Op::Put(entry) => {
                    map.insert(entry.key.clone(), entry.value.clone());
                }
                Op::Delete(key) => {
                    map.remove(key);
                }
            }
        }
        Ok(())
    }
}

/// A write a test makes to the store underneath a [`WatchedKv`].
type Interference = Box<dyn FnOnce(&MemoryKv)>;

/// A [`MemoryKv`] a test can watch and interfere with: it remembers every prefix scanned (to
/// tell an index read from a full one), counts reads and commits, and may write something of its own
/// just before the next commit, as a concurrent writer would.
#[derive(Default)]
pub struct WatchedKv {
    /// The store underneath, read and written directly by the test.
    pub memory: MemoryKv,
    scanned: RefCell<Vec<Vec<u8>>>,
    scan_calls: Cell<usize>,
    get_many_calls: Cell<usize>,
    commits: Cell<usize>,
    before_commit: Cell<Option<Interference>>,
}

impl WatchedKv {
    /// The prefixes scanned since the last call, forgotten once answered.
    pub fn take_scanned(&self) -> Vec<Vec<u8>> {
        self.scanned.take()
    }

    /// How many scan calls were asked of it (`scan` or `scan-prefixes`, one each).
    pub fn scan_calls(&self) -> usize {
        self.scan_calls.get()
    }

    /// How many `get-many` calls were asked of it.
    pub fn get_many_calls(&self) -> usize {
        self.get_many_calls.get()
    }

    /// How many commits were asked of it, applied or refused.
    pub fn commits(&self) -> usize {
        self.commits.get()
    }

    /// Runs `write` on the store just before the next commit is applied.
    pub fn before_next_commit(&self, write: impl FnOnce(&MemoryKv) + 'static) {
        self.before_commit.set(Some(Box::new(write)));
    }
}

impl Kv for WatchedKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.memory.get(key)
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.get_many_calls.set(self.get_many_calls.get() + 1);
        self.memory.get_many(keys)
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: u32, reverse: bool) -> Result<Vec<Entry>, StoreError> {
        self.scanned.borrow_mut().push(prefix.to_vec());
        self.scan_calls.set(self.scan_calls.get() + 1);
        self.memory.scan(prefix, after, limit, reverse)
    }

    fn scan_prefixes(&self, prefixes: &[Vec<u8>], limit: u32) -> Result<Vec<Vec<Entry>>, StoreError> {
        self.scanned.borrow_mut().extend(prefixes.iter().cloned());
        self.scan_calls.set(self.scan_calls.get() + 1);
        self.memory.scan_prefixes(prefixes, limit)
    }

    fn commit(&self, guards: &[Condition], ops: &[Op]) -> Result<(), StoreError> {
        self.commits.set(self.commits.get() + 1);
        if let Some(write) = self.before_commit.take() {
            write(&self.memory);
        }
        self.memory.commit(guards, ops)
    }
}

/// One group `g1` holding things `t1` and `t2`; `editor` edits it, `viewer` views it,
/// `outsider` is in no group; any other token is unknown.
pub struct FixedAccess;

impl FixedAccess {
    fn role(token: &str) -> Result<Option<Role>> {
        match token {
            "editor" => Ok(Some(Role::Editor)),
            "viewer" => Ok(Some(Role::Viewer)),
            "outsider" => Ok(None),
            _ => Err(Error::Unauthenticated("unknown token".into())),
        }
    }

    fn check(token: &str, group: &str, role: Role) -> Result<()> {
        let held = Self::role(token)?;
        if group != "g1" {
            return Err(Error::NotFound("group not found".into()));
        }
        match held {
            Some(held) if held as u8 >= role as u8 => Ok(()),
            _ => Err(Error::Forbidden("no access".into())),
        }
    }
}

impl Access for FixedAccess {
    fn authenticate(&self, token: &str) -> Result<String> {
        Self::role(token).map(|_| token.to_owned())
    }

    fn authorize_thing(&self, token: &str, thing_id: &str, role: Role) -> Result<String> {
        Self::role(token)?;
        if !["t1", "t2"].contains(&thing_id) {
            return Err(Error::NotFound("thing not found".into()));
        }
        Self::check(token, "g1", role).map(|_| "g1".to_owned())
    }

    fn authorize_group(&self, token: &str, group_id: &str, role: Role) -> Result<()> {
        Self::check(token, group_id, role)
    }
}

/// How the host explains a refused loopback destination.
pub const LOOPBACK_REFUSED: &str = "destination refused: 127.0.0.1 is a loopback address; \
                                    set MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS=true to allow it";

/// Answers each request with the status its URL's last path segment names, query aside (or the failure
/// `refused`, `loopback`, `down` or `malformed` names), and remembers what it was sent.
#[derive(Default)]
pub struct ScriptedSender {
    /// Every request sent, in order.
    pub sent: RefCell<Vec<Request>>,
}

impl Sender for ScriptedSender {
    fn send_all(&self, requests: &[Request]) -> Vec<AttemptResult> {
        self.sent.borrow_mut().extend(requests.iter().cloned());
        requests
            .iter()
            .map(|r| match r.url.split('?').next().unwrap().rsplit('/').next().unwrap() {
                "refused" => AttemptResult::Refused(DESTINATION_REFUSED.into()),
                "loopback" => AttemptResult::Refused(LOOPBACK_REFUSED.into()),
                "down" => AttemptResult::Failed("connection refused".into()),
                "malformed" => AttemptResult::Permanent("invalid request: header \"X\" refused".into()),
                code => AttemptResult::Answered(Answer::status(code.parse().unwrap())),
            })
            .collect()
    }
}

/// How a fake transform answers a message, given the webhook's metadata as JSON text.
type Behaviour = Box<dyn Fn(&TransformMessage, &str) -> Result<Action, TransformError>>;

/// The start of the bytes [`FakeTransformer`] refuses as not a component.
pub const NOT_A_COMPONENT: &[u8] = b"not a component";

/// The `transforms` capability in memory. A component is known by the SHA-256 of its bytes and
/// answers as the test told ([`FakeTransformer::behave`]; send unchanged when told nothing);
/// bytes starting with [`NOT_A_COMPONENT`] are refused as invalid. A component is `unknown`
/// until loaded, as on a host that never checked it in; [`FakeTransformer::forget`] drops every
/// one, as a restart does.
#[derive(Default)]
pub struct FakeTransformer {
    behaviours: RefCell<HashMap<String, Behaviour>>,
    held: RefCell<HashSet<String>>,
    /// How many times `load` was called.
    pub loads: Cell<usize>,
    /// Every call of `apply` that ran a transform: its SHA-256, message and metadata.
    pub applied: RefCell<Vec<(String, TransformMessage, String)>>,
    /// What `quota` answers.
    pub quota: Cell<u32>,
}

impl FakeTransformer {
    /// Makes the component of these bytes answer with `behaviour`; answers its SHA-256.
    pub fn behave(
        &self,
        component: &[u8],
        behaviour: impl Fn(&TransformMessage, &str) -> Result<Action, TransformError> + 'static,
    ) -> String {
        let sha256 = sha256_hex(component);
        self.behaviours.borrow_mut().insert(sha256.clone(), Box::new(behaviour));
        sha256
    }

    /// Drops every component held, so each is `unknown` until loaded again.
    pub fn forget(&self) {
        self.held.borrow_mut().clear();
    }
}

impl Transformer for FakeTransformer {
    fn load(&self, component: &[u8]) -> Result<String, TransformError> {
        self.loads.set(self.loads.get() + 1);
        if component.starts_with(NOT_A_COMPONENT) {
            return Err(TransformError::Invalid(
                "the bytes are not a component of the transform world".into(),
            ));
        }
        let sha256 = sha256_hex(component);
        self.held.borrow_mut().insert(sha256.clone());
        Ok(sha256)
    }

    fn apply(&self, sha256: &str, message: &TransformMessage, metadata: &str) -> Result<Action, TransformError> {
        if !self.held.borrow().contains(sha256) {
            return Err(TransformError::Unknown);
        }
        self.applied
            .borrow_mut()
            .push((sha256.to_owned(), message.clone(), metadata.to_owned()));
        match self.behaviours.borrow().get(sha256) {
            Some(behaviour) => behaviour(message, metadata),
            None => Ok(Action::Send(unchanged())),
        }
    }

    fn quota(&self) -> u32 {
        self.quota.get()
    }
}

/// The SHA-256 of the bytes, in hex, as the host names a component.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Changes that change nothing: the payload sent as it is.
pub fn unchanged() -> Changes {
    Changes {
        body: None,
        content_type: None,
        headers: Vec::new(),
        path: String::new(),
    }
}

/// Attaches the component to a stored webhook as an attach commits it, without asking anyone:
/// the host does not hold it yet, so its first use loads it from the store.
pub fn attach_stored(kv: &dyn Kv, webhook_id: &str, component: &[u8]) {
    let bytes = kv.get(&keys::webhook(webhook_id)).unwrap().unwrap();
    let mut hook = Webhook::decode(&bytes).unwrap();
    let sha256 = sha256_hex(component);
    hook.transform = Some(crate::webhooks::record::TransformRef {
        sha256: sha256.clone(),
        size: component.len() as u64,
        attached_ms: NOW,
    });
    let mut ops = Vec::new();
    storage::put_webhook(&mut ops, &hook);
    storage::put_transform(&mut ops, &hook, &sha256, component.to_vec());
    kv.commit(&[], &ops).unwrap();
}

/// The time the fixtures' clock shows, ms since the Unix epoch.
pub const NOW: u64 = 1_000_000;

/// A clock that shows what the test sets.
pub struct FixedClock(AtomicU64);

/// The fixtures' clock, at [`NOW`].
pub static AT_NOW: FixedClock = FixedClock::at(NOW);

impl FixedClock {
    /// A clock showing `ms`.
    pub const fn at(ms: u64) -> Self {
        FixedClock(AtomicU64::new(ms))
    }
}

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A webhook of group `g`, posting to `http://h`, with nothing else set.
pub fn webhook(id: &str, thing: &str, name: &str) -> Webhook {
    Webhook {
        v: 1,
        id: id.into(),
        thing_id: thing.into(),
        group_id: "g".into(),
        name: name.into(),
        url: "http://h".into(),
        headers: Map::new(),
        metadata: Map::new(),
        secret: None,
        disabled: false,
        disabled_reason: None,
        transform: None,
    }
}

/// Stores a webhook with its index entries, as creating it does.
pub fn store(kv: &dyn Kv, webhook: &Webhook) {
    let mut ops = Vec::new();
    storage::put_webhook(&mut ops, webhook);
    kv.commit(&[], &ops).unwrap();
}

/// Stores a webhook the way the version before the name-search index did: its record, thing
/// and group entries and name reservation, without name-search entries.
pub fn store_unindexed(kv: &dyn Kv, webhook: &Webhook) {
    let mut ops = Vec::new();
    storage::put_webhook(&mut ops, webhook);
    ops.retain(|op| !matches!(op, Op::Put(entry) if entry.key.starts_with(b"gs\0")));
    ops.push(Op::Put(Entry {
        key: keys::name(&webhook.thing_id, &webhook.name),
        value: webhook.id.as_bytes().to_vec(),
    }));
    kv.commit(&[], &ops).unwrap();
}

/// The keys of every name-search entry stored, in key order.
pub fn name_entries(kv: &MemoryKv) -> Vec<Vec<u8>> {
    kv.map
        .borrow()
        .keys()
        .filter(|k| k.starts_with(b"gs\0"))
        .cloned()
        .collect()
}

/// Query parameters as the API hands them over.
pub fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The setting of the delivery suites: a store and a scripted sender.
#[derive(Default)]
pub struct Deliveries {
    /// The store.
    pub kv: MemoryKv,
    /// The outgoing HTTP.
    pub sender: ScriptedSender,
}

impl Deliveries {
    /// A store holding these webhooks, each `(id, thing, url)` with no headers.
    pub fn with_webhooks(webhooks: &[(&str, &str, &str)]) -> Self {
        let setting = Deliveries::default();
        for (id, thing, url) in webhooks {
            store_webhook(&setting.kv, id, thing, url, Value::Null);
        }
        setting
    }
}

/// Stores webhook `id` (named `id`) of `thing`, posting to `url` with these headers.
pub fn store_webhook(kv: &dyn Kv, id: &str, thing: &str, url: &str, headers: Value) {
    let mut hook = webhook(id, thing, id);
    hook.url = url.into();
    hook.headers = headers.as_object().cloned().unwrap_or_default();
    store(kv, &hook);
}

/// A message `thing` published at [`NOW`].
pub fn message(thing: &str, id: Option<&str>, payload: &[u8], content_type: Option<&str>) -> Message {
    Message {
        id: id.map(str::to_owned),
        thing_id: thing.into(),
        payload: payload.to_vec(),
        content_type: content_type.map(str::to_owned),
        subtopic: String::new(),
        received_ms: NOW,
    }
}

/// The delivery operations at [`NOW`], with retries after 1s and 5s and no jitter.
pub fn events<'a>(kv: &'a dyn Kv, sender: &'a dyn Sender) -> Events<'a> {
    events_at(kv, sender, &AT_NOW)
}

/// The delivery operations as [`events`] builds them, at the time `clock` shows.
pub fn events_at<'a>(kv: &'a dyn Kv, sender: &'a dyn Sender, clock: &'a dyn Clock) -> Events<'a> {
    Events::new(kv, sender, clock)
        .with_lease(0)
        .with_policy(RetryPolicy {
            schedule_ms: vec![1_000, 5_000],
        })
        .with_random(|| 0.5)
}

/// The stored delivery with this id.
pub fn delivery(kv: &dyn Kv, id: &str) -> Delivery {
    Delivery::decode(&kv.get(&keys::delivery(id)).unwrap().unwrap()).unwrap()
}

/// Publishes a message; answers the ids of the deliveries recorded for it.
pub fn publish(events: &Events, message: Message) -> Vec<String> {
    let accepted = events.on_message(message).unwrap();
    accepted.deliveries.into_iter().map(|d| d.id).collect()
}
