//! Link settings of the plugin's component.

fn main() {
    // An instance starts with 4 MiB of linear memory, as much as the host keeps resident per
    // pooled slot, instead of the 1.2 MiB of stack and data alone. Nearly every call used to
    // grow the heap, and the host then changed the slot's protection twice, once to grow and
    // once to shrink it back for the next instance: each an `mprotect` that flushed the TLB of
    // every core running the host.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=--initial-memory={}", 4 << 20);
    }
}
