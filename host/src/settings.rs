//! The `settings` capability: the operator's delivery settings, handed to the plugin's policy.

use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use crate::runtime::bindings::mainflux::webhooks::settings as wit;

/// The delivery settings of SPEC.md section 7, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    /// Delays before each retry.
    pub retry_schedule: Vec<Duration>,
    /// How long deliveries and message ids are kept.
    pub retention: Duration,
    /// How long a claim on a delivery being attempted holds (see [`claim_lease`]).
    pub claim_lease: Duration,
    /// Most webhooks one group may have; 0 for no limit.
    pub webhook_quota: u32,
}

/// Margin of a claim over the longest an attempt may take, for clock differences between
/// hosts sharing a store.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// The claim lease for attempts bounded by this plugin deadline and delivery timeout: a batch's
/// plugin call may run for both together (see `Runtime::call_waiting`), and a claim must
/// outlive it.
pub fn claim_lease(plugin_deadline: Duration, delivery_timeout: Duration) -> Duration {
    plugin_deadline + delivery_timeout + CLAIM_MARGIN
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            retry_schedule: parse_schedule("5s,5m,30m,2h,5h,10h,10h").expect("the default schedule parses"),
            retention: Duration::from_secs(14 * 24 * 3600),
            claim_lease: claim_lease(Duration::from_secs(10), Duration::from_secs(15)),
            webhook_quota: 0,
        }
    }
}

/// Parses a retry schedule: comma-separated durations such as `5s,5m,30m`; empty means no
/// retries.
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|part| {
            humantime::parse_duration(part.trim())
                .map_err(|e| format!("{:?} is not a duration such as 5s: {e}", part.trim()))
        })
        .collect()
}

/// The per-call state of the `settings` capability.
pub struct SettingsCtx {
    settings: wit::DeliveryPolicy,
    claim_lease_ms: u64,
    webhook_quota: u32,
}

impl SettingsCtx {
    /// Grants these settings.
    pub fn new(settings: &DeliverySettings) -> Self {
        SettingsCtx {
            settings: wit::DeliveryPolicy {
                retry_schedule_ms: settings.retry_schedule.iter().map(|d| d.as_millis() as u64).collect(),
                retention_ms: settings.retention.as_millis() as u64,
            },
            claim_lease_ms: settings.claim_lease.as_millis() as u64,
            webhook_quota: settings.webhook_quota,
        }
    }
}

/// How a call's data exposes its `settings` state, as `WasiHttpView` does for `wasi:http`.
pub trait SettingsView: Send + 'static {
    /// The call's `settings` state.
    fn settings(&mut self) -> &mut SettingsCtx;
}

/// Adds the `settings` interface to `linker`, served from each call's [`SettingsCtx`].
pub fn add_to_linker<T: SettingsView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<SettingsCtx>>(linker, T::settings)
}

impl wit::Host for SettingsCtx {
    async fn delivery_settings(&mut self) -> wit::DeliveryPolicy {
        self.settings.clone()
    }

    async fn claim_lease_ms(&mut self) -> u64 {
        self.claim_lease_ms
    }

    async fn webhook_quota(&mut self) -> u32 {
        self.webhook_quota
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse() {
        assert_eq!(
            parse_schedule("1s, 2m").unwrap(),
            vec![Duration::from_secs(1), Duration::from_secs(120)]
        );
        assert_eq!(parse_schedule("").unwrap(), Vec::<Duration>::new());
        assert!(parse_schedule("1s,soon").is_err());
        assert_eq!(DeliverySettings::default().retry_schedule.len(), 7);
    }
}
