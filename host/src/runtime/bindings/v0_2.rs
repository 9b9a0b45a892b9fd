//! API 0.2 (`wit/since_v0.2.0`), the newest: what the host is written
//! against.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit/since_v0.2.0",
    imports: { default: async },
    exports: { default: async },
});
