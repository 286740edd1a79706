//! Where messages come in: the device-facing publish endpoint and the broker. Each
//! message is handed to the plugin, which records its deliveries; only then is it
//! acknowledged, and its deliveries go to the dispatcher. The platform's removals come in
//! here too, from its event stream.

pub mod broker;
pub mod device_key;
pub mod event_stream;
pub mod gathering;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Instrument;

use self::gathering::Gathering;
use crate::dispatch::Dispatcher;
use crate::runtime::bindings::exports::mainflux::webhooks::events::{Accepted, Message};
use crate::runtime::{CallError, Runtime};
use crate::tenancy::{QuotaExceeded, Tenancy};

/// A message as it arrives, before the plugin sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The publisher's message id, if given.
    pub id: Option<String>,
    /// The publishing thing.
    pub thing_id: String,
    /// Exact payload bytes.
    pub payload: Vec<u8>,
    /// The publisher's content type.
    pub content_type: Option<String>,
    /// The subtopic, empty for none.
    pub subtopic: String,
}

/// Why a message was not taken in.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The plugin refused it, or the call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// Its group is over a quota; nothing was recorded.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
}

/// Where messages are taken in: the plugin records their deliveries, within each group's share
/// and quotas, many messages a call under load, and the dispatcher attempts them.
pub struct Intake {
    runtime: Arc<Runtime>,
    dispatcher: Arc<Dispatcher>,
    tenancy: Tenancy,
    gathering: Arc<Gathering>,
}

impl Intake {
    /// Takes messages in through `runtime`, at most `batch` a plugin call, and hands their
    /// deliveries to `dispatcher`.
    pub fn new(runtime: Arc<Runtime>, dispatcher: Arc<Dispatcher>, tenancy: Tenancy, batch: usize) -> Self {
        Intake {
            gathering: Gathering::new(runtime.clone(), batch),
            runtime,
            dispatcher,
            tenancy,
        }
    }

    /// Records a message's deliveries through the plugin and hands them to the dispatcher;
    /// returning `Ok` means they are durably recorded. A group over a quota gets
    /// [`IntakeError::Quota`] before anything is recorded.
    pub async fn accept(&self, incoming: Incoming) -> Result<Accepted, IntakeError> {
        let group = self.tenancy.group_of(&incoming.thing_id).await;
        self.tenancy.admit(&group, self.dispatcher.group_backlog(&group))?;
        let _place = self.tenancy.intake_slot(&group).await;
        let message = Message {
            id: incoming.id,
            thing_id: incoming.thing_id,
            payload: incoming.payload,
            content_type: incoming.content_type,
            subtopic: incoming.subtopic,
            received_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let span = tracing::debug_span!(
            target: crate::telemetry::SPANS,
            "message",
            otel.name = "message taken in",
            thing_id = %message.thing_id,
            message.id = tracing::field::Empty,
            deliveries = tracing::field::Empty,
        );
        // While a candidate runs, each message goes alone: to the version that serves its group,
        // and to a dry run beside.
        let accepted = if self.runtime.candidate().is_some() {
            self.runtime
                .events()
                .on_message(message)
                .instrument(span.clone())
                .await?
        } else {
            self.gathering.take_in(message, span.clone()).await?
        };
        span.record("message.id", accepted.message_id.as_str());
        span.record("deliveries", accepted.deliveries.len());
        if !accepted.deliveries.is_empty() {
            self.dispatcher.enqueue(Some(&group), accepted.deliveries.clone());
        }
        Ok(accepted)
    }
}
