//! The C ABI between `heraldd` and a plugin `.so`, and the glue that exports a
//! [`Provider`] through it.
//!
//! A plugin exports one symbol, `herald_plugin_v1` (the major ABI version is in the name),
//! returning a `&'static` [`PluginVTable`]. The table starts with `abi_version` and
//! `struct_size`; fields are only ever appended, so a host checks `struct_size` before
//! touching a field it knows of. Every argument and result crosses as a JSON byte buffer of
//! this crate's types. Buffers the plugin returns ([`RBuf`]) are owned by the plugin's
//! allocator and are freed only through the table's `free_buf`.
//!
//! Every glue function runs inside `catch_unwind`: a plugin panic becomes a
//! [`CallErrorKind::Panic`] reply and the instance is re-created from its config, so a bad
//! plugin never aborts the daemon. This module and the daemon's loader are the only places
//! with `unsafe` code.
#![allow(unsafe_code)]

use std::any::Any;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::log::{Level, Logger};
use crate::provider::{
    Delivery, Host, Provider, ProviderConfig, TransportResponse, WebhookError, WebhookRequest,
};
use crate::types::{Message, UnixMillis};

/// The ABI major version; also part of the entry symbol's name.
pub const ABI_VERSION: u32 = 1;

/// The symbol every plugin exports, NUL-terminated for `dlsym`.
pub const ENTRY_SYMBOL: &[u8] = b"herald_plugin_v1\0";

/// A byte buffer allocated by the plugin and handed to the host. Free it with
/// [`PluginVTable::free_buf`], never with the host's allocator.
#[repr(C)]
#[derive(Debug)]
pub struct RBuf {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl RBuf {
    pub fn from_vec(v: Vec<u8>) -> RBuf {
        let mut v = ManuallyDrop::new(v);
        RBuf {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
        }
    }

    /// Borrows the bytes.
    ///
    /// # Safety
    /// `self` must have been returned by a plugin call and not yet been freed.
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: per the caller's contract, ptr/len describe a live allocation of `len`
        // initialised bytes made by `from_vec`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The host's log callback: `ctx` is the host's opaque pointer, `msg` UTF-8.
pub type LogFn = unsafe extern "C" fn(ctx: *const c_void, level: u32, msg: *const u8, len: usize);

/// What the host passes to `create`. Valid for the life of the instance.
#[repr(C)]
#[derive(Debug)]
pub struct HostCallbacks {
    pub struct_size: u32,
    pub ctx: *const c_void,
    pub log: LogFn,
}

type CallFn = unsafe extern "C" fn(instance: *mut c_void, input: *const u8, len: usize) -> RBuf;

/// The table a plugin exports. Append fields only; never reorder.
#[repr(C)]
#[derive(Debug)]
pub struct PluginVTable {
    pub abi_version: u32,
    pub struct_size: u32,
    /// → `Reply<Manifest>`.
    pub manifest: unsafe extern "C" fn() -> RBuf,
    /// `ProviderConfig` JSON → `Reply<()>`; on success `*out` is the new instance.
    pub create: unsafe extern "C" fn(
        config: *const u8,
        len: usize,
        host: *const HostCallbacks,
        out: *mut *mut c_void,
    ) -> RBuf,
    /// Drops an instance made by `create`.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
    /// (no input) → `Reply<Vec<String>>`.
    pub allowed_hosts: CallFn,
    /// `Delivery` → `Reply<Step>`.
    pub begin: CallFn,
    /// `ResumeInput` → `Reply<Step>`.
    pub resume: CallFn,
    /// `WebhookInput` → `Reply<WebhookOutput>`.
    pub webhook: CallFn,
    pub free_buf: unsafe extern "C" fn(buf: RBuf),
    // --- Appended in plugin-api 1.2 (batch requests). A table from an older plugin ends
    // before these ([`V1_1_TABLE_SIZE`]); the host reads them only when `struct_size`
    // covers them.
    /// `Vec<Message>` → `Reply<Vec<Option<String>>>`: each message's batch key.
    pub batch_keys: CallFn,
    /// `Vec<Delivery>` → `Reply<Step>`.
    pub begin_batch: CallFn,
    /// `BatchResumeInput` → `Reply<Step>`.
    pub resume_batch: CallFn,
}

/// The size of a plugin-api 1.0/1.1 table (up to `free_buf`): the least a host accepts.
pub const V1_1_TABLE_SIZE: usize = std::mem::offset_of!(PluginVTable, batch_keys);

/// The envelope of every result: `{"ok": ...}` or `{"err": {"kind", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Err(CallError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallErrorKind {
    /// `create` refused the config.
    Config,
    /// The plugin panicked; the instance has been re-created.
    Panic,
    /// The host sent input the plugin could not decode (version skew or a host bug).
    BadInput,
    /// Webhook signature or timestamp check failed.
    Unauthorized,
    /// Webhook was authentic but unparseable.
    BadRequest,
    /// The plugin takes no webhooks.
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallError {
    pub kind: CallErrorKind,
    pub message: String,
}

impl From<WebhookError> for CallError {
    fn from(e: WebhookError) -> CallError {
        match e {
            WebhookError::Unauthorized(message) => CallError {
                kind: CallErrorKind::Unauthorized,
                message,
            },
            WebhookError::BadRequest(message) => CallError {
                kind: CallErrorKind::BadRequest,
                message,
            },
            WebhookError::Unsupported => CallError {
                kind: CallErrorKind::Unsupported,
                message: "this plugin takes no webhooks".into(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeInput {
    pub delivery: Delivery,
    #[serde(default)]
    pub state: Value,
    pub response: TransportResponse,
}

/// The input of `resume_batch`: the deliveries of `begin_batch`, in the same order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResumeInput {
    pub deliveries: Vec<Delivery>,
    #[serde(default)]
    pub state: Value,
    pub response: TransportResponse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookInput {
    pub request: WebhookRequest,
    pub now: UnixMillis,
}

/// Builds the vtable for `P`; used by [`crate::export_plugin!`].
pub const fn vtable<P: Provider>() -> PluginVTable {
    PluginVTable {
        abi_version: ABI_VERSION,
        struct_size: size_of::<PluginVTable>() as u32,
        manifest: manifest_glue::<P>,
        create: create_glue::<P>,
        destroy: destroy_glue::<P>,
        allowed_hosts: allowed_hosts_glue::<P>,
        begin: begin_glue::<P>,
        resume: resume_glue::<P>,
        webhook: webhook_glue::<P>,
        free_buf: free_buf_glue,
        batch_keys: batch_keys_glue::<P>,
        begin_batch: begin_batch_glue::<P>,
        resume_batch: resume_batch_glue::<P>,
    }
}

/// Exports `$provider` as this library's Herald plugin.
#[macro_export]
macro_rules! export_plugin {
    ($provider:ty) => {
        /// The Herald plugin entry point (ABI v1).
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn herald_plugin_v1() -> &'static $crate::abi::PluginVTable {
            static VTABLE: $crate::abi::PluginVTable = $crate::abi::vtable::<$provider>();
            &VTABLE
        }
    };
}

/// A live instance as the glue holds it: the config it was made from (to re-create it
/// after a panic) and the current provider value.
struct Instance<P> {
    config: ProviderConfig,
    host: Host,
    current: RwLock<Arc<P>>,
}

impl<P: Provider> Instance<P> {
    fn get(&self) -> Arc<P> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces a provider that panicked with a fresh one built from the same config.
    fn recreate(&self) {
        let fresh = catch_unwind(AssertUnwindSafe(|| {
            P::new(self.config.clone(), self.host.clone())
        }));
        match fresh {
            Ok(Ok(p)) => {
                let mut guard = match self.current.write() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *guard = Arc::new(p);
            }
            _ => self
                .host
                .log
                .error("could not re-create the instance after a panic; keeping the old one"),
        }
    }
}

fn encode<T: Serialize>(reply: &Reply<T>) -> RBuf {
    let bytes = serde_json::to_vec(reply).unwrap_or_else(|e| {
        let fallback: Reply<()> = Reply::Err(CallError {
            kind: CallErrorKind::BadInput,
            message: format!("plugin could not encode its reply: {e}"),
        });
        serde_json::to_vec(&fallback).unwrap_or_default()
    });
    RBuf::from_vec(bytes)
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

fn panicked(payload: &(dyn Any + Send)) -> CallError {
    // The hook's text names the source location too; without the hook, the payload.
    let message = LAST_PANIC
        .with(|p| p.take())
        .unwrap_or_else(|| panic_message(payload));
    CallError {
        kind: CallErrorKind::Panic,
        message: format!("plugin panicked: {message}"),
    }
}

fn decode<T: DeserializeOwned>(input: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(input).map_err(|e| CallError {
        kind: CallErrorKind::BadInput,
        message: format!("plugin could not decode its input: {e}"),
    })
}

/// # Safety
/// `ptr` must be valid for reads of `len` bytes (or `len` must be 0).
unsafe fn input<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: guaranteed by the caller (the host passes a live slice for the call).
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

thread_local! {
    /// The last panic on this thread, as the hook saw it (message and location).
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Keeps a panic's text for the [`CallError`] every entry point turns it into, instead of
/// letting this plugin's copy of std print it to stderr. The host logs that error with the
/// provider it belongs to. (The hook is process-wide, so it must not hold any instance's
/// logger: instances come and go with reloads.)
fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    if cfg!(test) {
        return;
    }
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
        }));
    });
}

fn logger_from(host: &HostCallbacks) -> Logger {
    let ctx = host.ctx as usize;
    let log = host.log;
    Logger::from_fn(move |level: Level, msg: &str| {
        // SAFETY: the host guarantees `log` and `ctx` stay valid for the instance's life,
        // and `msg` is a live UTF-8 slice for the duration of the call.
        unsafe { log(ctx as *const c_void, level as u32, msg.as_ptr(), msg.len()) }
    })
}

unsafe extern "C" fn manifest_glue<P: Provider>() -> RBuf {
    let reply = match catch_unwind(P::manifest) {
        Ok(mut m) => {
            m.api_version = crate::API_VERSION.to_string();
            Reply::Ok(m)
        }
        Err(p) => Reply::Err(panicked(p.as_ref())),
    };
    encode(&reply)
}

unsafe extern "C" fn create_glue<P: Provider>(
    config: *const u8,
    len: usize,
    host: *const HostCallbacks,
    out: *mut *mut c_void,
) -> RBuf {
    // SAFETY: the host passes a live config slice for the duration of this call.
    let bytes = unsafe { input(config, len) };
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<*mut c_void, CallError> {
        if host.is_null() || out.is_null() {
            return Err(CallError {
                kind: CallErrorKind::BadInput,
                message: "create called with a null host or out pointer".into(),
            });
        }
        // SAFETY: checked non-null; the host keeps the callbacks alive for the instance.
        let callbacks = unsafe { &*host };
        if (callbacks.struct_size as usize) < size_of::<HostCallbacks>() {
            return Err(CallError {
                kind: CallErrorKind::BadInput,
                message: format!(
                    "host callbacks are {} bytes, this plugin needs {}",
                    callbacks.struct_size,
                    size_of::<HostCallbacks>()
                ),
            });
        }
        let log = logger_from(callbacks);
        install_panic_hook();
        let config: ProviderConfig = decode(bytes)?;
        let host = Host { log };
        let provider = P::new(config.clone(), host.clone()).map_err(|e| CallError {
            kind: CallErrorKind::Config,
            message: e.message,
        })?;
        let instance = Box::new(Instance {
            config,
            host,
            current: RwLock::new(Arc::new(provider)),
        });
        Ok(Box::into_raw(instance).cast::<c_void>())
    }));
    let reply = match result {
        Ok(Ok(ptr)) => {
            // SAFETY: `out` was checked non-null above and points to host-owned storage.
            unsafe { *out = ptr };
            Reply::Ok(())
        }
        Ok(Err(e)) => Reply::Err(e),
        Err(p) => Reply::Err(panicked(p.as_ref())),
    };
    encode(&reply)
}

unsafe extern "C" fn destroy_glue<P: Provider>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: `instance` came from `create_glue::<P>` and the host destroys it once.
    let boxed = unsafe { Box::from_raw(instance.cast::<Instance<P>>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

/// Runs `f` against the instance, catching panics (and re-creating the instance after one).
///
/// # Safety
/// `instance` must be a live pointer from `create_glue::<P>`.
unsafe fn with_instance<P: Provider, T: Serialize>(
    instance: *mut c_void,
    f: impl FnOnce(&P) -> Result<T, CallError>,
) -> RBuf {
    if instance.is_null() {
        return encode::<()>(&Reply::Err(CallError {
            kind: CallErrorKind::BadInput,
            message: "null instance".into(),
        }));
    }
    // SAFETY: per the function contract.
    let inst = unsafe { &*instance.cast::<Instance<P>>() };
    let provider = inst.get();
    let reply = match catch_unwind(AssertUnwindSafe(|| f(&provider))) {
        Ok(Ok(v)) => Reply::Ok(v),
        Ok(Err(e)) => Reply::Err(e),
        Err(p) => {
            let err = panicked(p.as_ref());
            drop(provider);
            inst.recreate();
            Reply::Err(err)
        }
    };
    encode(&reply)
}

unsafe extern "C" fn allowed_hosts_glue<P: Provider>(
    instance: *mut c_void,
    _input: *const u8,
    _len: usize,
) -> RBuf {
    // SAFETY: the host passes an instance it created and has not destroyed.
    unsafe { with_instance::<P, _>(instance, |p| Ok(p.allowed_hosts())) }
}

unsafe extern "C" fn begin_glue<P: Provider>(
    instance: *mut c_void,
    ptr: *const u8,
    len: usize,
) -> RBuf {
    // SAFETY: live input slice for this call.
    let bytes = unsafe { input(ptr, len) };
    // SAFETY: the host passes an instance it created and has not destroyed.
    unsafe {
        with_instance::<P, _>(instance, |p| {
            let delivery: Delivery = decode(bytes)?;
            Ok(p.begin(&delivery))
        })
    }
}

unsafe extern "C" fn resume_glue<P: Provider>(
    instance: *mut c_void,
    ptr: *const u8,
    len: usize,
) -> RBuf {
    // SAFETY: live input slice for this call.
    let bytes = unsafe { input(ptr, len) };
    // SAFETY: the host passes an instance it created and has not destroyed.
    unsafe {
        with_instance::<P, _>(instance, |p| {
            let ResumeInput {
                delivery,
                state,
                response,
            } = decode(bytes)?;
            Ok(p.resume(&delivery, state, response))
        })
    }
}

unsafe extern "C" fn webhook_glue<P: Provider>(
    instance: *mut c_void,
    ptr: *const u8,
    len: usize,
) -> RBuf {
    // SAFETY: live input slice for this call.
    let bytes = unsafe { input(ptr, len) };
    // SAFETY: the host passes an instance it created and has not destroyed.
    unsafe {
        with_instance::<P, _>(instance, |p| {
            let WebhookInput { request, now } = decode(bytes)?;
            p.webhook(&request, now).map_err(CallError::from)
        })
    }
}

unsafe extern "C" fn batch_keys_glue<P: Provider>(
    instance: *mut c_void,
    ptr: *const u8,
    len: usize,
) -> RBuf {
    // SAFETY: live input slice for this call.
    let bytes = unsafe { input(ptr, len) };
    // SAFETY: the host passes an instance it created and has not destroyed.
    unsafe {
        with_instance::<P, _>(instance, |p| {
            let messages: Vec<Message> = decode(bytes)?;
            Ok(messages
                .iter()
                .map(|m| p.batch_key(m))
                .collect::<Vec<Option<String>>>())
        })
    }
}

unsafe extern "C" fn begin_batch_glue<P: Provider>(
    instance: *mut c_void,
    ptr: *const u8,
    len: usize,
) -> RBuf {
    // SAFETY: live input slice for this call.
    let bytes = unsafe { input(ptr, len) };
    // SAFETY: the host passes an instance it created and has not destroyed.
    unsafe {
        with_instance::<P, _>(instance, |p| {
            let deliveries: Vec<Delivery> = decode(bytes)?;
            Ok(p.begin_batch(&deliveries))
        })
    }
}

unsafe extern "C" fn resume_batch_glue<P: Provider>(
    instance: *mut c_void,
    ptr: *const u8,
    len: usize,
) -> RBuf {
    // SAFETY: live input slice for this call.
    let bytes = unsafe { input(ptr, len) };
    // SAFETY: the host passes an instance it created and has not destroyed.
    unsafe {
        with_instance::<P, _>(instance, |p| {
            let BatchResumeInput {
                deliveries,
                state,
                response,
            } = decode(bytes)?;
            Ok(p.resume_batch(&deliveries, state, response))
        })
    }
}

unsafe extern "C" fn free_buf_glue(buf: RBuf) {
    if buf.ptr.is_null() {
        return;
    }
    // SAFETY: `buf` was made by `RBuf::from_vec` in this library and is freed once.
    drop(unsafe { Vec::from_raw_parts(buf.ptr, buf.len, buf.cap) });
}

#[cfg(test)]
mod tests {
    //! Drives the glue exactly as the host does, through the vtable's function pointers.
    use super::*;
    use crate::provider::{ConfigError, Manifest, Outcome, Step};
    use crate::types::{Channel, Content, Message, SmsContent};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CREATED: AtomicUsize = AtomicUsize::new(0);

    struct Flaky {
        panic_on: String,
    }

    impl Provider for Flaky {
        fn manifest() -> Manifest {
            Manifest {
                name: "flaky".into(),
                version: "0.0.1".into(),
                api_version: String::new(),
                description: String::new(),
                channels: vec![Channel::Sms],
                config: vec![],
                webhooks: false,
                idempotent: false,
                blocking: false,
                allowed_hosts: vec!["example.com".into()],
                batch: Some(crate::provider::BatchLimits { max: 10 }),
            }
        }
        fn new(config: ProviderConfig, _host: Host) -> Result<Self, ConfigError> {
            CREATED.fetch_add(1, Ordering::SeqCst);
            let panic_on = config
                .settings
                .get("panic_on")
                .and_then(|v| v.as_str())
                .ok_or_else(|| ConfigError::new("panic_on is required"))?;
            Ok(Flaky {
                panic_on: panic_on.into(),
            })
        }
        fn begin(&self, d: &Delivery) -> Step {
            if self.panic_on == d.message.to {
                panic!("boom for {}", d.message.to);
            }
            Step::done(Outcome::Accepted {
                provider_message_id: Some(format!("p-{}", d.message.id)),
                delivered: false,
            })
        }
        fn resume(&self, _: &Delivery, _: Value, _: TransportResponse) -> Step {
            Step::done(Outcome::retry("unexpected"))
        }
        fn batch_key(&self, m: &Message) -> Option<String> {
            (m.to != self.panic_on).then(|| "all".into())
        }
        fn begin_batch(&self, ds: &[Delivery]) -> Step {
            Step::http(
                crate::provider::HttpRequest::new("POST", "https://example.com/batch"),
                Value::from(ds.len()),
            )
        }
        fn resume_batch(&self, ds: &[Delivery], state: Value, _: TransportResponse) -> Step {
            assert_eq!(state, Value::from(ds.len()));
            Step::done_batch(
                ds.iter()
                    .map(|d| Outcome::Accepted {
                        provider_message_id: Some(format!("b-{}", d.message.id)),
                        delivered: false,
                    })
                    .collect(),
            )
        }
    }

    unsafe extern "C" fn no_log(_: *const c_void, _: u32, _: *const u8, _: usize) {}

    fn take<T: DeserializeOwned>(t: &PluginVTable, buf: RBuf) -> Reply<T> {
        // SAFETY: buf is a fresh reply from the glue, freed right after.
        let v = serde_json::from_slice(unsafe { buf.as_slice() }).unwrap();
        unsafe { (t.free_buf)(buf) };
        v
    }

    #[test]
    fn glue_round_trip_panic_and_recreate() {
        let t = vtable::<Flaky>();
        assert_eq!(t.abi_version, ABI_VERSION);
        let Reply::Ok(m) = take::<Manifest>(&t, unsafe { (t.manifest)() }) else {
            panic!("manifest failed");
        };
        assert_eq!(m.api_version, crate::API_VERSION);

        let host = HostCallbacks {
            struct_size: size_of::<HostCallbacks>() as u32,
            ctx: std::ptr::null(),
            log: no_log,
        };
        let mut inst: *mut c_void = std::ptr::null_mut();
        let bad = serde_json::to_vec(&serde_json::json!({"name": "f"})).unwrap();
        let r = take::<()>(&t, unsafe {
            (t.create)(bad.as_ptr(), bad.len(), &host, &mut inst)
        });
        assert!(matches!(
            r,
            Reply::Err(CallError {
                kind: CallErrorKind::Config,
                ..
            })
        ));

        let cfg = serde_json::to_vec(
            &serde_json::json!({"name": "f", "settings": {"panic_on": "+15550000001"}}),
        )
        .unwrap();
        let r = take::<()>(&t, unsafe {
            (t.create)(cfg.as_ptr(), cfg.len(), &host, &mut inst)
        });
        assert_eq!(r, Reply::Ok(()));
        let before = CREATED.load(Ordering::SeqCst);

        let delivery = |to: &str| Delivery {
            message: Message {
                id: "m1".into(),
                to: to.into(),
                content: Content::Sms(SmsContent {
                    body: "hi".into(),
                    ..Default::default()
                }),
                tags: vec![],
                created_at: 0,
            },
            attempt: 1,
            now: 0,
        };
        let input = serde_json::to_vec(&delivery("+15550000001")).unwrap();
        let r = take::<Step>(&t, unsafe { (t.begin)(inst, input.as_ptr(), input.len()) });
        let Reply::Err(e) = r else {
            panic!("expected a panic error")
        };
        assert_eq!(e.kind, CallErrorKind::Panic);
        assert!(e.message.contains("boom"), "{}", e.message);
        assert_eq!(CREATED.load(Ordering::SeqCst), before + 1, "re-created");

        let input = serde_json::to_vec(&delivery("+15550000002")).unwrap();
        let r = take::<Step>(&t, unsafe { (t.begin)(inst, input.as_ptr(), input.len()) });
        assert!(matches!(
            r,
            Reply::Ok(Step::Done {
                outcome: Outcome::Accepted { .. }
            })
        ));

        let garbage = b"{not json";
        let r = take::<Step>(&t, unsafe {
            (t.begin)(inst, garbage.as_ptr(), garbage.len())
        });
        assert!(matches!(
            r,
            Reply::Err(CallError {
                kind: CallErrorKind::BadInput,
                ..
            })
        ));

        let r = take::<crate::provider::WebhookOutput>(&t, unsafe {
            let input = serde_json::to_vec(&WebhookInput {
                request: WebhookRequest {
                    method: "POST".into(),
                    url: "https://x/webhooks/f".into(),
                    headers: vec![],
                    body: String::new(),
                },
                now: 0,
            })
            .unwrap();
            (t.webhook)(inst, input.as_ptr(), input.len())
        });
        assert!(matches!(
            r,
            Reply::Err(CallError {
                kind: CallErrorKind::Unsupported,
                ..
            })
        ));

        // The batch entry points (plugin-api 1.2).
        assert!(t.struct_size as usize > V1_1_TABLE_SIZE);
        let messages = vec![
            delivery("+15550000001").message,
            delivery("+15550000002").message,
        ];
        let input = serde_json::to_vec(&messages).unwrap();
        let r = take::<Vec<Option<String>>>(&t, unsafe {
            (t.batch_keys)(inst, input.as_ptr(), input.len())
        });
        assert_eq!(r, Reply::Ok(vec![None, Some("all".into())]));
        let ds = vec![delivery("+15550000002"), delivery("+15550000003")];
        let input = serde_json::to_vec(&ds).unwrap();
        let Reply::Ok(Step::Call { state, .. }) = take::<Step>(&t, unsafe {
            (t.begin_batch)(inst, input.as_ptr(), input.len())
        }) else {
            panic!("begin_batch")
        };
        let input = serde_json::to_vec(&BatchResumeInput {
            deliveries: ds,
            state,
            response: TransportResponse::Http(crate::provider::HttpResponse {
                status: 200,
                headers: vec![],
                body: String::new(),
            }),
        })
        .unwrap();
        let r = take::<Step>(&t, unsafe {
            (t.resume_batch)(inst, input.as_ptr(), input.len())
        });
        let Reply::Ok(Step::DoneBatch { outcomes }) = r else {
            panic!("{r:?}")
        };
        assert_eq!(outcomes.len(), 2);
        unsafe { (t.destroy)(inst) };
    }
}
