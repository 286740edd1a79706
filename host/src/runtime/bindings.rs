//! Host-side bindings of the `webhooks` world, generated from `wit/`.

#![allow(
    missing_docs,
    reason = "generated from the WIT, whose doc comments it carries where it can"
)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "webhooks",
    imports: { default: async },
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
    },
});

/// The future a call into an instance returns.
pub type BoxCall<'a, R> = std::pin::Pin<Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>>;
