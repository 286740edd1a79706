//! The `transforms` interface of the world, granted to each plugin instance: the plugin hands
//! over a component's bytes or names one by its SHA-256, and the host checks, compiles and runs
//! it in the transforms' own sandbox ([`Transforms`]).

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Action, Changes, Message, TransformError, Transforms};
use crate::runtime::bindings::mainflux::transform::transformation as shapes;
use crate::runtime::bindings::mainflux::webhooks::transforms as wit;

/// How a call's data exposes its `transforms` state, as `WasiHttpView` does for `wasi:http`.
pub trait TransformsView: Send + 'static {
    /// The call's `transforms` state.
    fn transforms(&mut self) -> &mut TransformsCtx;
}

/// Adds the `transforms` interface to `linker`, served from each call's [`TransformsCtx`].
pub fn add_to_linker<T: TransformsView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<TransformsCtx>>(linker, T::transforms)
}

/// The per-call state of the `transforms` capability: a handle to the shared sandbox.
pub struct TransformsCtx {
    transforms: Arc<Transforms>,
}

impl TransformsCtx {
    /// Grants the use of `transforms`.
    pub fn new(transforms: Arc<Transforms>) -> Self {
        TransformsCtx { transforms }
    }
}

fn to_wit(error: TransformError) -> wit::TransformError {
    match error {
        TransformError::Unknown(_) => wit::TransformError::Unknown,
        TransformError::TooLarge { .. } | TransformError::Invalid(_) => wit::TransformError::Invalid(error.to_string()),
        TransformError::Trap(_)
        | TransformError::Memory(_)
        | TransformError::Deadline(_)
        | TransformError::AnswerTooLarge { .. }
        | TransformError::Failed(_) => wit::TransformError::Failed(error.to_string()),
    }
}

impl wit::Host for TransformsCtx {
    async fn load(&mut self, component: Vec<u8>) -> Result<String, wit::TransformError> {
        // Compiling takes tens of milliseconds to seconds: off the async workers.
        let transforms = self.transforms.clone();
        tokio::task::spawn_blocking(move || transforms.load(&component))
            .await
            .map_err(|e| wit::TransformError::Invalid(format!("checking the component failed: {e}")))?
            .map_err(to_wit)
    }

    async fn apply(
        &mut self,
        sha256: String,
        message: shapes::Message,
        metadata: String,
    ) -> Result<shapes::Action, wit::TransformError> {
        let message = Message {
            payload: message.payload,
            content_type: message.content_type,
            subtopic: message.subtopic,
            thing_id: message.thing_id,
            message_id: message.message_id,
        };
        match self.transforms.apply(&sha256, &message, &metadata).await {
            Ok(Action::Skip(reason)) => Ok(shapes::Action::Skip(reason)),
            Ok(Action::Send(Changes {
                body,
                content_type,
                headers,
                path,
            })) => Ok(shapes::Action::Send(shapes::Changes {
                body,
                content_type,
                headers,
                path,
            })),
            Err(error) => {
                if !matches!(error, TransformError::Unknown(_)) {
                    tracing::info!(sha256, %error, "a transform gave no answer");
                }
                Err(to_wit(error))
            }
        }
    }

    async fn quota(&mut self) -> u32 {
        self.transforms.limits().group_quota
    }
}
