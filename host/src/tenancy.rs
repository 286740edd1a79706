//! What each group (tenant) may take of the intake: its share of the plugin calls taking
//! messages in, and the quotas on its publishes (SPEC.md section 7, rows "isolation" and
//! "quotas"). A refused publish is answered `429` with `Retry-After` before anything is recorded,
//! so nothing accepted is ever dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::dispatch::UNKNOWN_GROUP;
use crate::identity::IdentityBackend;
use crate::metrics::METRICS;

/// The operator's limits per group; 0 turns a quota off.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Most messages a group's things may publish per second (`MF_WEBHOOKS_QUOTA_PUBLISH_RATE`).
    pub publish_rate: u32,
    /// Most deliveries of a group waiting for or in their attempt on this host
    /// (`MF_WEBHOOKS_QUOTA_PENDING`).
    pub pending: usize,
    /// Most messages of one group being taken in at once: the rest of the plugin's instances
    /// stay free for the other groups' messages.
    pub intake_in_flight: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            publish_rate: 0,
            pending: 0,
            intake_in_flight: 64,
        }
    }
}

/// Which quota a publish ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Publishes per second.
    PublishRate,
    /// Deliveries pending.
    Pending,
}

impl Quota {
    /// The name used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Quota::PublishRate => "publish_rate",
            Quota::Pending => "pending",
        }
    }
}

/// A publish refused by a quota of its group.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}; publish again in {} s", retry_after.as_secs())]
pub struct QuotaExceeded {
    /// The quota.
    pub quota: Quota,
    /// The sentence naming it.
    pub reason: String,
    /// When a publish may succeed again (whole seconds, at least one).
    pub retry_after: Duration,
}

/// Most groups whose publish rate is tracked; past it, groups with a full allowance are
/// forgotten (they lose nothing by it).
const TRACKED_GROUPS: usize = 10_000;

/// A group's allowance of publishes: refilled at the quota's rate, holding at most one
/// second's worth.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Instant,
}

/// The groups' shares and quotas on intake.
pub struct Tenancy {
    identity: Arc<dyn IdentityBackend>,
    quotas: Quotas,
    allowances: Mutex<HashMap<String, Allowance>>,
    intake: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Tenancy {
    /// Shares and quotas over the groups `identity` knows.
    pub fn new(identity: Arc<dyn IdentityBackend>, quotas: Quotas) -> Self {
        Tenancy {
            identity,
            quotas,
            allowances: Mutex::new(HashMap::new()),
            intake: Mutex::new(HashMap::new()),
        }
    }

    /// The quotas in force.
    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    /// The group of a publishing thing; [`UNKNOWN_GROUP`] when the identity service cannot say
    /// now: a message is never refused for it, and is then counted under no group's quota.
    pub async fn group_of(&self, thing_id: &str) -> String {
        match self.identity.thing_group(thing_id).await {
            Ok(group) => group,
            Err(error) => {
                tracing::debug!(thing = thing_id, %error, "the thing's group is not known; taken in under no group's quota");
                UNKNOWN_GROUP.to_owned()
            }
        }
    }

    /// Checks a publish of `group`, whose deliveries queued or running number `backlog`,
    /// against its quotas, and takes one publish of its allowance when it passes.
    pub fn admit(&self, group: &str, backlog: usize) -> Result<(), QuotaExceeded> {
        if group == UNKNOWN_GROUP {
            return Ok(());
        }
        if self.quotas.pending > 0 && backlog >= self.quotas.pending {
            return Err(self.refused(
                Quota::Pending,
                format!(
                    "the group has {backlog} deliveries pending, its quota of {}",
                    self.quotas.pending
                ),
                Duration::from_secs(1),
            ));
        }
        if self.quotas.publish_rate > 0 {
            let rate = f64::from(self.quotas.publish_rate);
            let now = Instant::now();
            let mut allowances = self.allowances.lock().expect("allowances poisoned");
            if allowances.len() >= TRACKED_GROUPS && !allowances.contains_key(group) {
                allowances.retain(|_, allowance| refill(*allowance, rate, now).tokens < rate);
            }
            let allowance = allowances
                .entry(group.to_owned())
                .or_insert(Allowance { tokens: rate, at: now });
            *allowance = refill(*allowance, rate, now);
            if allowance.tokens < 1.0 {
                let wait = (1.0 - allowance.tokens) / rate;
                return Err(self.refused(
                    Quota::PublishRate,
                    format!(
                        "the group is over its quota of {} publishes per second",
                        self.quotas.publish_rate
                    ),
                    Duration::from_secs_f64(wait),
                ));
            }
            allowance.tokens -= 1.0;
        }
        Ok(())
    }

    /// Waits for one of the group's places among the messages being taken in.
    pub async fn intake_slot(&self, group: &str) -> Option<OwnedSemaphorePermit> {
        if group == UNKNOWN_GROUP {
            return None;
        }
        let places = {
            let mut intake = self.intake.lock().expect("intake places poisoned");
            if intake.len() >= TRACKED_GROUPS && !intake.contains_key(group) {
                // Only groups with a message being taken in hold a place.
                let full = self.quotas.intake_in_flight;
                intake.retain(|_, places| places.available_permits() < full);
            }
            intake
                .entry(group.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.quotas.intake_in_flight.max(1))))
                .clone()
        };
        places.acquire_owned().await.ok()
    }

    fn refused(&self, quota: Quota, reason: String, wait: Duration) -> QuotaExceeded {
        METRICS.quota_refusals.with_label_values(&[quota.name()]).inc();
        QuotaExceeded {
            quota,
            reason,
            retry_after: Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64),
        }
    }
}

fn refill(allowance: Allowance, rate: f64, now: Instant) -> Allowance {
    let earned = now.saturating_duration_since(allowance.at).as_secs_f64() * rate;
    Allowance {
        tokens: (allowance.tokens + earned).min(rate.max(1.0)),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::registry::RegistryBackend;

    fn tenancy(quotas: Quotas) -> Tenancy {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tenancy-registry-{}-{}.json",
            std::process::id(),
            FILES.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::write(
            &path,
            r#"{"users": [], "groups": [{"id": "g", "members": {}}], "things": [{"id": "t", "group_id": "g", "key": "k"}]}"#,
        )
        .expect("a registry file");
        let registry = RegistryBackend::open(&path).expect("a registry");
        let _ = std::fs::remove_file(&path);
        Tenancy::new(Arc::new(registry), quotas)
    }

    #[tokio::test]
    async fn a_thing_is_counted_under_its_group_and_an_unknown_one_under_none() {
        let tenancy = tenancy(Quotas::default());
        assert_eq!(tenancy.group_of("t").await, "g");
        assert_eq!(tenancy.group_of("nobody").await, UNKNOWN_GROUP);
    }

    #[test]
    fn a_group_past_its_publish_rate_waits_and_another_group_does_not() {
        let tenancy = tenancy(Quotas {
            publish_rate: 5,
            ..Quotas::default()
        });
        for _ in 0..5 {
            tenancy.admit("a", 0).expect("within one second's allowance");
        }
        let refused = tenancy.admit("a", 0).unwrap_err();
        assert_eq!(refused.quota, Quota::PublishRate);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(refused.to_string().contains("5 publishes per second"), "{refused}");
        tenancy.admit("b", 0).expect("another group has its own allowance");
        std::thread::sleep(Duration::from_millis(250));
        tenancy.admit("a", 0).expect("refilled at 5 per second");
    }

    #[test]
    fn a_group_with_its_quota_of_pending_deliveries_is_refused_until_they_go() {
        let tenancy = tenancy(Quotas {
            pending: 10,
            ..Quotas::default()
        });
        tenancy.admit("a", 9).expect("below the quota");
        let refused = tenancy.admit("a", 10).unwrap_err();
        assert_eq!(refused.quota, Quota::Pending);
        assert!(refused.to_string().contains("10 deliveries pending"), "{refused}");
        tenancy.admit(UNKNOWN_GROUP, 1_000).expect("no quota without a group");
    }

    #[test]
    fn quotas_of_zero_refuse_nothing() {
        let tenancy = tenancy(Quotas::default());
        for _ in 0..10_000 {
            tenancy.admit("a", usize::MAX - 1).expect("no quota");
        }
    }

    #[tokio::test]
    async fn a_group_takes_in_at_most_its_share_of_messages_at_once() {
        let tenancy = tenancy(Quotas {
            intake_in_flight: 2,
            ..Quotas::default()
        });
        let first = tenancy.intake_slot("a").await;
        let _second = tenancy.intake_slot("a").await;
        let third = tokio::time::timeout(Duration::from_millis(50), tenancy.intake_slot("a")).await;
        assert!(third.is_err(), "a third message of the group waits");
        let other = tokio::time::timeout(Duration::from_millis(50), tenancy.intake_slot("b")).await;
        assert!(other.is_ok(), "another group does not");
        drop(first);
        tokio::time::timeout(Duration::from_millis(50), tenancy.intake_slot("a"))
            .await
            .expect("a place came free");
    }
}
