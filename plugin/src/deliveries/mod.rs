//! Deliveries: a published message on its way to each webhook of its thing. [`Events`] holds
//! the message path's capabilities and settings; its operations live in one file per concern
//! (intake, attempts, the recovery of first attempts, retention), beside the record and its
//! packed layout, the retry policy, the request each attempt
//! sends, what a webhook's transform decides of it, the delivery log and the outgoing-HTTP
//! port's `wasi:http` side.

pub mod attempts;
pub mod intake;
pub mod log;
pub mod outbound;
pub mod packed;
pub mod record;
pub mod recovery;
pub mod request;
pub mod retention;
pub mod retry;
pub mod transform;

use crate::deliveries::retry::{RetryPolicy, random_unit};
use crate::ports::{Clock, Kv, NoTransforms, Sender, Transformer};

/// The message operations over a store and an outgoing HTTP sender.
pub struct Events<'a> {
    kv: &'a dyn Kv,
    sender: &'a dyn Sender,
    transformer: &'a dyn Transformer,
    clock: &'a dyn Clock,
    policy: RetryPolicy,
    random: fn() -> f64,
    lease_ms: u64,
}

/// How long a claim holds when the host names no lease.
pub const DEFAULT_LEASE_MS: u64 = 30_000;

impl<'a> Events<'a> {
    /// Binds the operations to their capabilities and a clock, with the default retry policy
    /// and no transforms.
    pub fn new(kv: &'a dyn Kv, sender: &'a dyn Sender, clock: &'a dyn Clock) -> Self {
        Events {
            kv,
            sender,
            transformer: &NoTransforms,
            clock,
            policy: RetryPolicy::default(),
            random: random_unit,
            lease_ms: DEFAULT_LEASE_MS,
        }
    }

    /// Claims deliveries for this long while attempting them.
    pub fn with_lease(mut self, lease_ms: u64) -> Self {
        self.lease_ms = lease_ms;
        self
    }

    /// How long after its creation a new delivery stays claimed by the host that took its
    /// message in, when the store is shared (a lease above 0): a lease and a
    /// [`Events::fresh_window_ms`] more, so that host may attempt it at once without a claim
    /// of its own, and any host may once it lapses. `None` with one host, which claims
    /// nothing.
    fn intake_claim_ms(&self) -> Option<u64> {
        (self.lease_ms > 0).then(|| self.lease_ms.saturating_add(self.fresh_window_ms()))
    }

    /// How long after its creation the host that took a delivery in may start attempting it
    /// under the intake's claim alone: an attempt started then ends, at the latest, a lease
    /// less its margin later, before the intake's claim lapses.
    fn fresh_window_ms(&self) -> u64 {
        self.lease_ms / 4
    }

    /// Runs webhooks' transforms through this capability.
    pub fn with_transformer(mut self, transformer: &'a dyn Transformer) -> Self {
        self.transformer = transformer;
        self
    }

    /// Uses this retry policy.
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Draws the retry jitter from this source of numbers in [0, 1).
    pub fn with_random(mut self, random: fn() -> f64) -> Self {
        self.random = random;
        self
    }
}
