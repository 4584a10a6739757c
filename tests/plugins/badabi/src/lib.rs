//! A test plugin built for another plugin ABI: it exports `herald_plugin_v1`, but its
//! table says `abi_version = 2`. The loader must refuse it, naming both versions, before
//! calling any of its functions (which is why they are inert).
// The table is written by hand (the export macro always writes the current version), which
// needs `extern "C"` items; nothing here dereferences anything.
#![allow(unsafe_code)]

use std::ffi::c_void;

use herald_plugin_api::abi::{HostCallbacks, PluginVTable, RBuf};

extern "C" fn manifest() -> RBuf {
    RBuf::from_vec(Vec::new())
}
extern "C" fn create(_: *const u8, _: usize, _: *const HostCallbacks, _: *mut *mut c_void) -> RBuf {
    RBuf::from_vec(Vec::new())
}
extern "C" fn destroy(_: *mut c_void) {}
extern "C" fn call(_: *mut c_void, _: *const u8, _: usize) -> RBuf {
    RBuf::from_vec(Vec::new())
}
extern "C" fn free_buf(_: RBuf) {}

static TABLE: PluginVTable = PluginVTable {
    abi_version: 2,
    struct_size: size_of::<PluginVTable>() as u32,
    manifest,
    create,
    destroy,
    allowed_hosts: call,
    begin: call,
    resume: call,
    webhook: call,
    free_buf,
    batch_keys: call,
    begin_batch: call,
    resume_batch: call,
};

/// The entry point, with a table from the future.
#[unsafe(no_mangle)]
pub extern "C" fn herald_plugin_v1() -> &'static PluginVTable {
    &TABLE
}
