//! The typed façade over calls into the plugin: one method per export the host calls, each
//! in a fresh instance within the call limits, each answering [`CallError`] alone, so a caller
//! handles the plugin's refusal and a failed call in one `match`.
//!
//! The façade also carries the rollout: a call tied to a group (by its path, or by its thing's
//! group while a canary runs) goes to the canary when the canary serves that group, and reads
//! and message intake run on a dry-run candidate beside the active version, to be compared.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use wasmtime::Store;

use super::bindings::BoxCall;
use super::bindings::exports::mainflux::webhooks::events::{Accepted, AttemptOutcome, Message};
use super::bindings::exports::mainflux::webhooks::migration::{ForeignWebhook, ImportOutcome};
use super::bindings::exports::mainflux::webhooks::transform_api::Trial;
use super::bindings::mainflux::webhooks::types::{DueDelivery, Error as PluginError, Query};
use super::shadow::{self, Answer};
use super::{CallError, Exports, HostState, Mode, Runtime, SHADOW_HEAD_START};

impl Runtime {
    /// The plugin's `api` exports, for the REST layer.
    pub fn api(self: &Arc<Self>) -> ApiCalls<'_> {
        ApiCalls { runtime: self }
    }

    /// The plugin's `events` exports, for intake, dispatch, retention and removals.
    pub fn events(self: &Arc<Self>) -> EventCalls<'_> {
        EventCalls { runtime: self }
    }

    /// The plugin's `migration` exports, for the import of the Go service's webhooks.
    pub fn migration(self: &Arc<Self>) -> MigrationCalls<'_> {
        MigrationCalls { runtime: self }
    }

    /// The plugin's `transform-api` exports, for the REST layer.
    pub fn transforms(self: &Arc<Self>) -> TransformCalls<'_> {
        TransformCalls { runtime: self }
    }

    /// Runs `call` like [`Runtime::call`] and lifts the plugin's own error into
    /// [`CallError::Refused`].
    async fn answer<R, F>(
        &self,
        export: &'static str,
        waiting: Duration,
        group: Option<&str>,
        call: F,
    ) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> BoxCall<'a, Result<R, PluginError>>,
    {
        self.call_waiting(export, waiting, group, call)
            .await?
            .map_err(CallError::Refused)
    }

    /// Like [`Runtime::answer`]; while a dry run is on, also runs `call` on the candidate over
    /// the dry-run capabilities and compares the two answers, each reduced by `reduce`. The
    /// candidate goes first by up to `head_start` (message intake, whose commit would change
    /// what the candidate reads); otherwise beside. Its answer never reaches the caller.
    async fn answer_compared<R, F, N>(
        self: &Arc<Self>,
        export: &'static str,
        group: Option<&str>,
        head_start: Option<Duration>,
        reduce: N,
        call: F,
    ) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> BoxCall<'a, Result<R, PluginError>>
            + Clone
            + Send
            + 'static,
        R: Send + 'static,
        N: Fn(&R) -> Value + Send + Sync + 'static,
    {
        let Some(candidate) = self.candidate().filter(|c| c.mode == Mode::Shadow) else {
            return self.answer(export, Duration::ZERO, group, call).await;
        };
        let reduce = Arc::new(reduce);
        let (active_tx, active_rx) = tokio::sync::oneshot::channel::<Answer>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = self.clone();
        let (shadow_call, shadow_reduce) = (call.clone(), reduce.clone());
        tokio::spawn(async move {
            let result = runtime.run_shadow(candidate.version.plugin.clone(), shadow_call).await;
            let _ = done_tx.send(());
            let Some(result) = result else {
                tracing::debug!(export, "dry run skipped: no free instance");
                return;
            };
            let result = result.and_then(|answer| answer.map_err(CallError::Refused));
            let shadow = Answer::of(&result, shadow_reduce.as_ref());
            if let Ok(active) = active_rx.await {
                shadow::compare(export, &active, &shadow);
            }
        });
        if let Some(head_start) = head_start {
            let _ = tokio::time::timeout(head_start, done_rx).await;
        }
        let result = self.answer(export, Duration::ZERO, group, call).await;
        let _ = active_tx.send(Answer::of(&result, reduce.as_ref()));
        result
    }

    /// The group of a thing, while a canary needs it to route the thing's calls.
    async fn canary_group(&self, thing_id: &str) -> Option<String> {
        let candidate = self.candidate()?;
        if !matches!(candidate.mode, Mode::Canary { .. }) {
            return None;
        }
        self.capabilities.identity.thing_group(thing_id).await.ok()
    }
}

/// The parts of an accepted message that any version must answer alike: not the ids it makes
/// up (the delivery ids, and the message id when the publisher gave none).
fn accepted_answer(id_given: bool) -> impl Fn(&Accepted) -> Value + Send + Sync + 'static {
    move |accepted| {
        let mut webhooks: Vec<&str> = accepted.deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
        webhooks.sort_unstable();
        serde_json::json!({
            "message_id": id_given.then_some(&accepted.message_id),
            "duplicate": accepted.duplicate,
            "webhooks": webhooks,
        })
    }
}

/// The exports of the plugin's `api` interface; the arguments are moved into the call, a
/// request body shared rather than copied.
pub struct ApiCalls<'r> {
    runtime: &'r Arc<Runtime>,
}

impl ApiCalls<'_> {
    /// `api.create-webhooks`: answers the created webhooks as JSON.
    pub async fn create_webhooks(&self, token: String, thing_id: String, body: Bytes) -> Result<String, CallError> {
        let group = self.runtime.canary_group(&thing_id).await;
        self.runtime
            .answer(
                "api.create-webhooks",
                Duration::ZERO,
                group.as_deref(),
                move |exports, store| {
                    Box::pin(async move {
                        exports
                            .api(store)?
                            .call_create_webhooks(store, &token, &thing_id, &body)
                            .await
                    })
                },
            )
            .await
    }

    /// `api.list-thing-webhooks`: answers a page of the thing's webhooks as JSON.
    pub async fn list_thing_webhooks(
        &self,
        token: String,
        thing_id: String,
        query: Query,
    ) -> Result<String, CallError> {
        let group = self.runtime.canary_group(&thing_id).await;
        self.runtime
            .answer_compared(
                "api.list-thing-webhooks",
                group.as_deref(),
                None,
                shadow::json,
                move |exports, store| {
                    Box::pin(async move {
                        exports
                            .api(store)?
                            .call_list_thing_webhooks(store, &token, &thing_id, &query)
                            .await
                    })
                },
            )
            .await
    }

    /// `api.list-group-webhooks`: answers a page of the group's webhooks as JSON.
    pub async fn list_group_webhooks(
        &self,
        token: String,
        group_id: String,
        query: Query,
    ) -> Result<String, CallError> {
        let group = group_id.clone();
        self.runtime
            .answer_compared(
                "api.list-group-webhooks",
                Some(&group),
                None,
                shadow::json,
                move |exports, store| {
                    Box::pin(async move {
                        exports
                            .api(store)?
                            .call_list_group_webhooks(store, &token, &group_id, &query)
                            .await
                    })
                },
            )
            .await
    }

    /// `api.search-thing-webhooks`: answers a page of the thing's webhooks matching `body`.
    pub async fn search_thing_webhooks(
        &self,
        token: String,
        thing_id: String,
        body: Bytes,
    ) -> Result<String, CallError> {
        let group = self.runtime.canary_group(&thing_id).await;
        self.runtime
            .answer_compared(
                "api.search-thing-webhooks",
                group.as_deref(),
                None,
                shadow::json,
                move |exports, store| {
                    Box::pin(async move {
                        exports
                            .api(store)?
                            .call_search_thing_webhooks(store, &token, &thing_id, &body)
                            .await
                    })
                },
            )
            .await
    }

    /// `api.search-group-webhooks`: answers a page of the group's webhooks matching `body`.
    pub async fn search_group_webhooks(
        &self,
        token: String,
        group_id: String,
        body: Bytes,
    ) -> Result<String, CallError> {
        let group = group_id.clone();
        self.runtime
            .answer_compared(
                "api.search-group-webhooks",
                Some(&group),
                None,
                shadow::json,
                move |exports, store| {
                    Box::pin(async move {
                        exports
                            .api(store)?
                            .call_search_group_webhooks(store, &token, &group_id, &body)
                            .await
                    })
                },
            )
            .await
    }

    /// `api.view-webhook`: answers the webhook as JSON.
    pub async fn view_webhook(&self, token: String, id: String) -> Result<String, CallError> {
        self.runtime
            .answer_compared("api.view-webhook", None, None, shadow::json, move |exports, store| {
                Box::pin(async move { exports.api(store)?.call_view_webhook(store, &token, &id).await })
            })
            .await
    }

    /// `api.update-webhook`.
    pub async fn update_webhook(&self, token: String, id: String, body: Bytes) -> Result<(), CallError> {
        self.runtime
            .answer("api.update-webhook", Duration::ZERO, None, move |exports, store| {
                Box::pin(async move { exports.api(store)?.call_update_webhook(store, &token, &id, &body).await })
            })
            .await
    }

    /// `api.remove-webhooks`.
    pub async fn remove_webhooks(&self, token: String, body: Bytes) -> Result<(), CallError> {
        self.runtime
            .answer("api.remove-webhooks", Duration::ZERO, None, move |exports, store| {
                Box::pin(async move { exports.api(store)?.call_remove_webhooks(store, &token, &body).await })
            })
            .await
    }

    /// `api.list-deliveries`: answers a page of the webhook's deliveries as JSON.
    pub async fn list_deliveries(&self, token: String, webhook_id: String, query: Query) -> Result<String, CallError> {
        self.runtime
            .answer_compared(
                "api.list-deliveries",
                None,
                None,
                shadow::json,
                move |exports, store| {
                    Box::pin(async move {
                        exports
                            .api(store)?
                            .call_list_deliveries(store, &token, &webhook_id, &query)
                            .await
                    })
                },
            )
            .await
    }

    /// `api.retry-delivery`: answers the delivery, due now, for the dispatcher.
    pub async fn retry_delivery(
        &self,
        token: String,
        webhook_id: String,
        delivery_id: String,
    ) -> Result<DueDelivery, CallError> {
        self.runtime
            .answer("api.retry-delivery", Duration::ZERO, None, move |exports, store| {
                Box::pin(async move {
                    exports
                        .api(store)?
                        .call_retry_delivery(store, &token, &webhook_id, &delivery_id)
                        .await
                })
            })
            .await
    }
}

/// The exports of the plugin's `events` interface; the arguments are moved into the call.
pub struct EventCalls<'r> {
    runtime: &'r Arc<Runtime>,
}

impl EventCalls<'_> {
    /// `events.on-message`: records the message's deliveries; answers them once durable.
    pub async fn on_message(&self, message: Message) -> Result<Accepted, CallError> {
        let group = self.runtime.canary_group(&message.thing_id).await;
        let reduce = accepted_answer(message.id.is_some());
        self.runtime
            .answer_compared(
                "events.on-message",
                group.as_deref(),
                Some(SHADOW_HEAD_START),
                reduce,
                move |exports, store| {
                    Box::pin(async move { exports.events(store)?.call_on_message(store, &message).await })
                },
            )
            .await
    }

    /// `intake.on-messages`: records the deliveries of every message in one instance, with one
    /// commit when the version has the `intake` export and one `on-message` call after another
    /// when it has not; answers one result per message, in order. The active version takes
    /// them all: while a candidate runs, messages go one by one through
    /// [`EventCalls::on_message`], which routes and compares each.
    pub async fn on_messages(&self, messages: Vec<Message>) -> Result<Vec<Result<Accepted, PluginError>>, CallError> {
        self.runtime
            .answer("intake.on-messages", Duration::ZERO, None, move |exports, store| {
                Box::pin(async move {
                    if let Some(intake) = exports.intake(store)? {
                        return intake.call_on_messages(store, &messages).await;
                    }
                    let events = exports.events(store)?;
                    let mut answers = Vec::with_capacity(messages.len());
                    for message in &messages {
                        answers.push(events.call_on_message(&mut *store, message).await?);
                    }
                    Ok(Ok(answers))
                })
            })
            .await
    }

    /// `events.due`: up to `limit` deliveries due now.
    pub async fn due(&self, limit: u32) -> Result<Vec<DueDelivery>, CallError> {
        self.runtime
            .answer("events.due", Duration::ZERO, None, move |exports, store| {
                Box::pin(async move { exports.events(store)?.call_due(store, limit).await })
            })
            .await
    }

    /// `attempts.deliver`: one attempt of each delivery, requests in flight together, each
    /// given with the webhook it was queued under; a version without the `attempts` export gets
    /// the ids alone through `events.deliver`. Metrics and traces name the call `events.deliver`
    /// either way, as before the export came, so operators' dashboards keep their series. The
    /// call's deadline is extended by `waiting`, the longest wait for an answer, so a slow
    /// receiver is not taken for a runaway plugin.
    pub async fn deliver(
        &self,
        deliveries: Vec<DueDelivery>,
        waiting: Duration,
    ) -> Result<Vec<AttemptOutcome>, CallError> {
        self.runtime
            .answer("events.deliver", waiting, None, move |exports, store| {
                Box::pin(async move {
                    if let Some(attempts) = exports.attempts(store)? {
                        return attempts.call_deliver(store, &deliveries).await;
                    }
                    let ids: Vec<String> = deliveries.into_iter().map(|d| d.id).collect();
                    exports.events(store)?.call_deliver(store, &ids).await
                })
            })
            .await
    }

    /// `events.release`: gives back the claims on these deliveries; answers how many.
    pub async fn release(&self, ids: Vec<String>) -> Result<u32, CallError> {
        self.runtime
            .answer("events.release", Duration::ZERO, None, move |exports, store| {
                Box::pin(async move { exports.events(store)?.call_release(store, &ids).await })
            })
            .await
    }

    /// `events.expire`: deletes up to `limit` records past the retention; answers how many.
    pub async fn expire(&self, limit: u32) -> Result<u32, CallError> {
        self.runtime
            .answer("events.expire", Duration::ZERO, None, move |exports, store| {
                Box::pin(async move { exports.events(store)?.call_expire(store, limit).await })
            })
            .await
    }

    /// `events.maintain`: brings up to `limit` stored records up to date; answers how many.
    pub async fn maintain(&self, limit: u32) -> Result<u32, CallError> {
        self.runtime
            .answer("events.maintain", Duration::ZERO, None, move |exports, store| {
                Box::pin(async move { exports.events(store)?.call_maintain(store, limit).await })
            })
            .await
    }

    /// `events.on-thing-removed`: removes the thing's webhooks; answers how many.
    pub async fn on_thing_removed(&self, thing_id: String) -> Result<u32, CallError> {
        self.runtime
            .answer(
                "events.on-thing-removed",
                Duration::ZERO,
                None,
                move |exports, store| {
                    Box::pin(async move { exports.events(store)?.call_on_thing_removed(store, &thing_id).await })
                },
            )
            .await
    }

    /// `events.on-group-removed`: removes the group's webhooks; answers how many.
    pub async fn on_group_removed(&self, group_id: String) -> Result<u32, CallError> {
        self.runtime
            .answer(
                "events.on-group-removed",
                Duration::ZERO,
                None,
                move |exports, store| {
                    Box::pin(async move { exports.events(store)?.call_on_group_removed(store, &group_id).await })
                },
            )
            .await
    }
}

/// The exports of the plugin's `migration` interface, which a plugin built before it was added
/// lacks: calls then answer [`PluginError::Unavailable`] saying so.
pub struct MigrationCalls<'r> {
    runtime: &'r Arc<Runtime>,
}

impl MigrationCalls<'_> {
    /// Whether the current plugin has the `migration` exports.
    pub fn available(&self) -> bool {
        self.runtime.current().migration.is_some()
    }

    /// `migration.import-webhooks`: stores the webhooks not stored yet, with their ids; one
    /// outcome per webhook, in order.
    pub async fn import_webhooks(&self, webhooks: Vec<ForeignWebhook>) -> Result<Vec<ImportOutcome>, CallError> {
        self.runtime
            .answer(
                "migration.import-webhooks",
                Duration::ZERO,
                None,
                move |exports, store| {
                    Box::pin(async move {
                        match exports.migration(store)? {
                            Some(migration) => migration.call_import_webhooks(store, &webhooks).await,
                            None => Ok(Err(PluginError::Unavailable(
                                "this plugin version has no migration exports; load a newer one to import webhooks"
                                    .to_owned(),
                            ))),
                        }
                    })
                },
            )
            .await
    }
}

/// The exports of the plugin's `transform-api` interface, which a plugin built before it was
/// added lacks: calls then answer [`PluginError::Unavailable`] saying so.
pub struct TransformCalls<'r> {
    runtime: &'r Arc<Runtime>,
}

/// The answer of a plugin version without the `transform-api` export.
fn no_transforms() -> PluginError {
    PluginError::Unavailable(
        "this plugin version serves no transforms; load one built for the world 0.1.2 or later".to_owned(),
    )
}

impl TransformCalls<'_> {
    /// `transform-api.attach-transform`: answers `{"sha256", "size", "attached_at"}` as JSON.
    ///
    /// The first transform raises the stored data format to 3, which a candidate version
    /// (canary or dry run) that knows no transforms cannot read: while one is loaded, attaching
    /// is refused, so a rollout never ends with a version serving data it would misread.
    pub async fn attach(&self, token: String, webhook_id: String, component: Bytes) -> Result<String, CallError> {
        if let Some(candidate) = self.runtime.candidate()
            && !candidate.version.plugin.formats().serves(3)
        {
            return Err(CallError::Refused(PluginError::Conflict(
                "a candidate plugin version that knows no transforms is loaded; promote or drop it before attaching one"
                    .to_owned(),
            )));
        }
        self.runtime
            .answer(
                "transform-api.attach-transform",
                Duration::ZERO,
                None,
                move |exports, store| {
                    Box::pin(async move {
                        match exports.transform_api(store)? {
                            Some(api) => api.call_attach_transform(store, &token, &webhook_id, &component).await,
                            None => Ok(Err(no_transforms())),
                        }
                    })
                },
            )
            .await
    }

    /// `transform-api.detach-transform`.
    pub async fn detach(&self, token: String, webhook_id: String) -> Result<(), CallError> {
        self.runtime
            .answer(
                "transform-api.detach-transform",
                Duration::ZERO,
                None,
                move |exports, store| {
                    Box::pin(async move {
                        match exports.transform_api(store)? {
                            Some(api) => api.call_detach_transform(store, &token, &webhook_id).await,
                            None => Ok(Err(no_transforms())),
                        }
                    })
                },
            )
            .await
    }

    /// `transform-api.try-transform`: what the webhook's transform makes of a sample.
    pub async fn try_sample(&self, token: String, webhook_id: String, sample: Bytes) -> Result<Trial, CallError> {
        self.runtime
            .answer(
                "transform-api.try-transform",
                Duration::ZERO,
                None,
                move |exports, store| {
                    Box::pin(async move {
                        match exports.transform_api(store)? {
                            Some(api) => api.call_try_transform(store, &token, &webhook_id, &sample).await,
                            None => Ok(Err(no_transforms())),
                        }
                    })
                },
            )
            .await
    }
}
