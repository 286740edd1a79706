//! Where messages come in: the device-facing publish endpoint and the broker. Each
//! message is handed to the plugin, which records its deliveries; only then is it
//! acknowledged, and its deliveries go to the dispatcher. The platform's removals come in
//! here too, from its event stream.

pub mod broker;
pub mod device_key;
pub mod event_stream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Instrument;

use crate::dispatch::Dispatcher;
use crate::runtime::bindings::exports::mainflux::webhooks::events::{Accepted, Message};
use crate::runtime::{CallError, Runtime};

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

/// Records a message's deliveries through the plugin and hands them to the dispatcher;
/// returning `Ok` means they are durably recorded; [`CallError::Refused`] means the plugin
/// refused the message.
pub async fn accept(
    runtime: &Arc<Runtime>,
    dispatcher: &Arc<Dispatcher>,
    incoming: Incoming,
) -> Result<Accepted, CallError> {
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
    let accepted = runtime.events().on_message(message).instrument(span.clone()).await?;
    span.record("message.id", accepted.message_id.as_str());
    span.record("deliveries", accepted.deliveries.len());
    if !accepted.deliveries.is_empty() {
        dispatcher.enqueue(accepted.deliveries.clone());
    }
    Ok(accepted)
}
