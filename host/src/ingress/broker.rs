//! The NATS JetStream ingress (SPEC.md section 6): the platform's rules and integrations
//! publish `Webhook` messages on subject `webhooks` of stream `mainflux`; every host consumes
//! them as members of the durable queue consumer `webhooks_webhooks` (deliver group `webhooks`),
//! the platform's own webhooks service's, so each message goes to one host.
//!
//! A message is acked only once its deliveries are recorded. One that cannot be decoded or that
//! the plugin refuses is logged and terminated, so the broker never sends it again; one that
//! failed for a passing reason (storage down, plugin trap) is handed back for redelivery. Each
//! message's id derives from its place in the stream, so a redelivered message, to this host or
//! another, is recognised by the plugin and records nothing twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::push, stream};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};

use super::{Incoming, Intake, IntakeError};
use crate::metrics::METRICS;
use crate::runtime::CallError;
use crate::runtime::bindings::mainflux::webhooks::types::Error as PluginError;

/// The platform's stream.
pub const STREAM: &str = "mainflux";
/// The subjects the platform creates the stream with, used when it is missing.
pub const STREAM_SUBJECTS: [&str; 7] = [
    "things.>", "groups.>", "alarms.*", "smtp.*", "smpp.*", "webhooks", "rules",
];
/// The subject webhook messages are published on.
pub const SUBJECT: &str = "webhooks";
/// The durable consumer: the platform's own webhooks service consumes under this name, so a
/// host that replaces it continues from its position in the stream.
pub const CONSUMER: &str = "webhooks_webhooks";
/// The queue group the consumer's hosts share, as the platform's service names it.
pub const DELIVER_GROUP: &str = "webhooks";
/// The durable consumer of earlier versions of this service: taken over from its ack floor,
/// then deleted.
pub const LEGACY_CONSUMER: &str = "webhooks";
/// Where the broker pushes the consumer's messages. The same on every host: a host that
/// created the consumer with a subject of its own would take the work away from the hosts
/// listening on the one before (JetStream lets a create change it).
pub const DELIVER_SUBJECT: &str = "_INBOX.mainflux-webhooks";
/// How long the broker waits for an ack before it sends a message again, to any host.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages handed out and not yet acked, over all hosts.
const MAX_ACK_PENDING: i64 = 4096;
/// Messages one host handles at once.
const IN_FLIGHT: usize = 256;
/// How long a message that failed for a passing reason waits before it comes back.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The platform's protobuf `Webhook { string thing_id = 1; bytes payload = 2; int64 created = 3; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WebhookMessage {
    /// The thing that published the message.
    #[prost(string, tag = "1")]
    pub thing_id: String,
    /// The exact payload.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    /// When the platform received it, in nanoseconds since the Unix epoch.
    #[prost(int64, tag = "3")]
    pub created: i64,
}

/// Why the broker ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The server did not answer.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The configured URL.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// JetStream refused the stream or the consumer.
    #[error("JetStream {what}: {reason}")]
    JetStream {
        /// What was asked.
        what: &'static str,
        /// The server's answer.
        reason: String,
    },
}

fn jetstream_error(what: &'static str) -> impl Fn(String) -> BrokerError {
    move |reason| BrokerError::JetStream { what, reason }
}

/// Connects, makes sure the stream and the consumer exist, and consumes until `stopping`
/// holds a stop time; answers the task, which ends once the messages in hand are settled.
pub async fn start(
    url: &str,
    intake: Arc<Intake>,
    stopping: watch::Receiver<Option<Instant>>,
) -> Result<tokio::task::JoinHandle<()>, BrokerError> {
    let client = async_nats::ConnectOptions::new()
        .name("mainflux-webhooks")
        .connect(url)
        .await
        .map_err(|e| BrokerError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let context = jetstream::new(client.clone());
    let stream = ensure_stream(&context).await?;
    // A stream deleted and created again starts its sequence over; its creation time tells
    // the two apart, so message ids never repeat across them.
    let origin: Arc<str> = format!("{STREAM}@{}", stream.cached_info().created.unix_timestamp_nanos()).into();
    let consumer = ensure_consumer(&stream).await?;
    tracing::info!(
        url,
        stream = STREAM,
        subject = SUBJECT,
        consumer = CONSUMER,
        "consuming the broker"
    );
    Ok(tokio::spawn(consume(consumer, origin, intake, stopping)))
}

/// The shared durable consumer: the existing one (this service's, or the platform's service's
/// it replaces), else a new one that starts past what the legacy consumer `webhooks` acked
/// (deleted once the new one exists), else one from the start of the stream.
async fn ensure_consumer(stream: &stream::Stream) -> Result<jetstream::consumer::Consumer<push::Config>, BrokerError> {
    use jetstream::consumer::DeliverPolicy;
    let consumer_error = jetstream_error("consumer");
    if let Ok(consumer) = stream.get_consumer::<push::Config>(CONSUMER).await {
        return Ok(consumer);
    }
    let legacy = match stream.consumer_info(LEGACY_CONSUMER).await {
        Ok(info) => Some(info.ack_floor.stream_sequence),
        Err(error) if error.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => None,
        Err(error) => return Err(consumer_error(format!("reading {LEGACY_CONSUMER}: {error}"))),
    };
    let deliver_policy = match legacy {
        // Messages past the ack floor come again: the plugin knows those it already recorded.
        Some(acked) => DeliverPolicy::ByStartSequence {
            start_sequence: acked + 1,
        },
        None => DeliverPolicy::All,
    };
    let config = push::Config {
        durable_name: Some(CONSUMER.to_owned()),
        deliver_subject: DELIVER_SUBJECT.to_owned(),
        deliver_group: Some(DELIVER_GROUP.to_owned()),
        filter_subject: SUBJECT.to_owned(),
        deliver_policy,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    // Hosts starting together race here: a create with the same configuration is idempotent.
    let consumer = stream
        .get_or_create_consumer(CONSUMER, config)
        .await
        .map_err(|e| consumer_error(e.to_string()))?;
    if let Some(acked) = legacy {
        // Another host may have deleted it first.
        let deleted = stream.delete_consumer(LEGACY_CONSUMER).await.is_ok();
        tracing::info!(
            from = LEGACY_CONSUMER,
            to = CONSUMER,
            acked,
            deleted,
            "took over the consumer of an earlier version"
        );
    }
    Ok(consumer)
}

async fn ensure_stream(context: &jetstream::Context) -> Result<stream::Stream, BrokerError> {
    let config = stream::Config {
        name: STREAM.to_owned(),
        subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        storage: stream::StorageType::File,
        ..Default::default()
    };
    match context.get_or_create_stream(config).await {
        Ok(stream) => Ok(stream),
        // Another host created it between our look and our create.
        Err(_) => context
            .get_stream(STREAM)
            .await
            .map_err(|e| jetstream_error("stream")(e.to_string())),
    }
}

async fn consume(
    consumer: jetstream::consumer::Consumer<push::Config>,
    origin: Arc<str>,
    intake: Arc<Intake>,
    mut stopping: watch::Receiver<Option<Instant>>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    'subscribe: while stopping.borrow().is_none() {
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::error!(%error, "cannot subscribe to the broker consumer; trying again");
                tokio::select! {
                    _ = stopping.wait_for(Option::is_some) => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = stopping.wait_for(Option::is_some) => break 'subscribe,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        break 'subscribe;
                    };
                    let (origin, intake) = (origin.clone(), intake.clone());
                    tokio::spawn(async move {
                        handle(message, &origin, &intake).await;
                        drop(slot);
                    });
                }
                Some(Err(error)) => tracing::warn!(%error, "broker subscription error"),
                None => {
                    tracing::warn!("broker subscription ended; subscribing again");
                    continue 'subscribe;
                }
            }
        }
    }
    // Messages received and not yet handled go back to the broker when the subscription
    // drops (after the ack wait); the ones being handled finish and are acked.
    let _ = slots.acquire_many(IN_FLIGHT as u32).await;
    tracing::info!("broker consumer stopped");
}

/// Reads a broker message as a message of a thing, with an id fixed by its stream position.
pub fn decode(data: &[u8], origin: &str, stream_sequence: u64) -> Result<Incoming, String> {
    let webhook =
        <WebhookMessage as prost::Message>::decode(data).map_err(|e| format!("not a Webhook message: {e}"))?;
    if webhook.thing_id.is_empty() {
        return Err("the Webhook message names no thing".to_owned());
    }
    Ok(Incoming {
        id: Some(message_id(origin, stream_sequence)),
        thing_id: webhook.thing_id,
        payload: webhook.payload,
        content_type: None,
        subtopic: String::new(),
    })
}

/// A UUID naming one stream position, the same on every host and every redelivery.
pub fn message_id(origin: &str, stream_sequence: u64) -> String {
    let mut hash = Sha256::new();
    hash.update(origin.as_bytes());
    hash.update(stream_sequence.to_be_bytes());
    let digest = hash.finalize();
    let bytes: [u8; 16] = digest[..16].try_into().expect("a SHA-256 digest has 32 bytes");
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

async fn handle(message: jetstream::Message, origin: &str, intake: &Intake) {
    let sequence = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(error) => {
            tracing::warn!(%error, subject = %message.subject, "broker message without JetStream metadata; ignored");
            return;
        }
    };
    let (kind, outcome) = match decode(&message.payload, origin, sequence) {
        Err(reason) => {
            tracing::warn!(sequence, reason, "malformed broker message; terminated");
            (AckKind::Term, "terminated")
        }
        Ok(incoming) => {
            let thing = incoming.thing_id.clone();
            match intake.accept(incoming).await {
                Ok(accepted) if accepted.duplicate => (AckKind::Ack, "duplicate"),
                Ok(accepted) => {
                    tracing::debug!(
                        sequence,
                        thing,
                        message = accepted.message_id,
                        deliveries = accepted.deliveries.len(),
                        "broker message accepted"
                    );
                    (AckKind::Ack, "acked")
                }
                // Held back, not dropped: the broker keeps it until the group is within its quota.
                Err(IntakeError::Quota(refused)) => {
                    tracing::info!(
                        sequence,
                        thing,
                        reason = refused.reason,
                        "broker message over its group's quota; it will be redelivered"
                    );
                    (AckKind::Nak(Some(refused.retry_after)), "retried")
                }
                Err(IntakeError::Call(CallError::Refused(error))) if passing(&error) => {
                    tracing::warn!(
                        sequence,
                        thing,
                        ?error,
                        "broker message not recorded; it will be redelivered"
                    );
                    (AckKind::Nak(Some(RETRY_DELAY)), "retried")
                }
                Err(IntakeError::Call(CallError::Refused(error))) => {
                    tracing::warn!(sequence, thing, ?error, "broker message refused; terminated");
                    (AckKind::Term, "terminated")
                }
                Err(IntakeError::Call(error)) => {
                    tracing::error!(sequence, thing, %error, "broker message not recorded; it will be redelivered");
                    (AckKind::Nak(Some(RETRY_DELAY)), "retried")
                }
            }
        }
    };
    METRICS.broker_messages.with_label_values(&[outcome]).inc();
    if let Err(error) = message.ack_with(kind).await {
        // Unacked, it comes back after the ack wait, and its id makes the second time a no-op.
        tracing::warn!(sequence, %error, "could not answer the broker");
    }
}

/// Whether a refusal may pass if the message comes again later.
fn passing(error: &PluginError) -> bool {
    matches!(error, PluginError::Unavailable(_) | PluginError::Internal(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_with_an_id_fixed_by_their_stream_position() {
        let bytes = prost::Message::encode_to_vec(&WebhookMessage {
            thing_id: "thing-1".into(),
            payload: b"{\"t\":1}".to_vec(),
            created: 1_700_000_000_000_000_000,
        });
        let first = decode(&bytes, "mainflux@1", 7).unwrap();
        assert_eq!(first.thing_id, "thing-1");
        assert_eq!(first.payload, b"{\"t\":1}");
        let again = decode(&bytes, "mainflux@1", 7).unwrap();
        assert_eq!(first.id, again.id, "a redelivery has the same id");
        assert_ne!(first.id, decode(&bytes, "mainflux@1", 8).unwrap().id);
        assert_ne!(
            first.id,
            decode(&bytes, "mainflux@2", 7).unwrap().id,
            "a recreated stream"
        );
        uuid::Uuid::try_parse(first.id.as_deref().unwrap()).unwrap();
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(decode(b"\xff\xff\xff", "s", 1).is_err());
        let no_thing = prost::Message::encode_to_vec(&WebhookMessage {
            thing_id: String::new(),
            payload: b"x".to_vec(),
            created: 0,
        });
        assert!(decode(&no_thing, "s", 1).unwrap_err().contains("no thing"));
    }
}
