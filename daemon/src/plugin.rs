//! The plugin loader: opens `libherald_<plugin>.so`, checks the ABI and API versions,
//! and wraps instances in a safe API. With `plugin-api`'s export glue, this is the only
//! code with `unsafe`.
//!
//! Libraries are never unloaded (a plugin's statics, threads or panic hook may outlive an
//! instance). Each call copies the plugin's reply out of the plugin-owned buffer and frees
//! the buffer through the plugin's own `free_buf`.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_plugin_api::abi::{
    ABI_VERSION, BatchResumeInput, CallError, CallErrorKind, ENTRY_SYMBOL, HostCallbacks,
    PluginVTable, RBuf, Reply, ResumeInput, V1_1_TABLE_SIZE, WebhookInput,
};
use herald_plugin_api::log::Level;
use herald_plugin_api::version::check_api_compat;
use herald_plugin_api::{
    API_VERSION, Delivery, Manifest, Message, ProviderConfig, Step, WebhookOutput, WebhookRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "plugin {plugin:?}: {path} does not exist; build it (cargo build --release -p herald-{plugin}) or point daemon.plugin_dir at the directory that holds it"
    )]
    NotFound { plugin: String, path: PathBuf },
    #[error("plugin {plugin:?}: cannot load {path}: {message}")]
    Load {
        plugin: String,
        path: PathBuf,
        message: String,
    },
    #[error("plugin {plugin:?}: {message}")]
    Incompatible { plugin: String, message: String },
    #[error("provider {provider:?} (plugin {plugin:?}): {message}")]
    Config {
        provider: String,
        plugin: String,
        message: String,
    },
}

/// A loaded plugin library (never unloaded).
pub struct Library {
    pub name: String,
    pub path: PathBuf,
    pub manifest: Manifest,
    vtable: &'static PluginVTable,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("version", &self.manifest.version)
            .finish()
    }
}

/// Copies a reply out of a plugin buffer and frees it with the plugin's allocator.
fn take<T: DeserializeOwned>(vt: &PluginVTable, buf: RBuf) -> Result<T, CallError> {
    // SAFETY: `buf` was just returned by a call into this plugin and is freed exactly once,
    // below, by the same plugin's `free_buf`.
    let reply: Result<Reply<T>, _> = serde_json::from_slice(unsafe { buf.as_slice() });
    // SAFETY: see above.
    unsafe { (vt.free_buf)(buf) };
    match reply {
        Ok(Reply::Ok(v)) => Ok(v),
        Ok(Reply::Err(e)) => Err(e),
        Err(e) => Err(CallError {
            kind: CallErrorKind::BadInput,
            message: format!("the plugin's reply is not valid JSON for this host: {e}"),
        }),
    }
}

/// Opens plugins by name from one directory, each at most once.
#[derive(Debug)]
pub struct Loader {
    dir: PathBuf,
    loaded: HashMap<String, Arc<Library>>,
}

impl Loader {
    pub fn new(dir: &Path) -> Loader {
        Loader {
            dir: dir.to_path_buf(),
            loaded: HashMap::new(),
        }
    }

    pub fn load(&mut self, plugin: &str) -> Result<Arc<Library>, PluginError> {
        if let Some(lib) = self.loaded.get(plugin) {
            return Ok(Arc::clone(lib));
        }
        let path = self.dir.join(format!("libherald_{plugin}.so"));
        if !path.exists() {
            return Err(PluginError::NotFound {
                plugin: plugin.into(),
                path,
            });
        }
        // SAFETY: loading a library runs its initialisers. We only load files named
        // libherald_*.so from the operator's configured plugin_dir.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| PluginError::Load {
            plugin: plugin.into(),
            path: path.clone(),
            message: e.to_string(),
        })?;
        type Entry = extern "C" fn() -> &'static PluginVTable;
        // SAFETY: the symbol, if present, has the v1 entry signature by contract: plugins of
        // another ABI major version export a differently named symbol.
        let entry: Entry = match unsafe { lib.get::<Entry>(ENTRY_SYMBOL) } {
            Ok(sym) => *sym,
            Err(_) => {
                return Err(PluginError::Incompatible {
                    plugin: plugin.into(),
                    message: format!(
                        "{} exports no herald_plugin_v{ABI_VERSION} symbol: it is not a Herald plugin, or it was built for another plugin ABI major version (this heraldd speaks ABI {ABI_VERSION})",
                        path.display()
                    ),
                });
            }
        };
        let vtable = entry();
        if vtable.abi_version != ABI_VERSION {
            return Err(PluginError::Incompatible {
                plugin: plugin.into(),
                message: format!(
                    "the plugin speaks plugin ABI version {}, this heraldd speaks ABI version {ABI_VERSION}; rebuild the plugin against herald-plugin-api {API_VERSION}",
                    vtable.abi_version
                ),
            });
        }
        // A plugin built against plugin-api 1.0/1.1 has a shorter table (no batch entry
        // points): it still loads, and its messages go singly.
        if (vtable.struct_size as usize) < V1_1_TABLE_SIZE {
            return Err(PluginError::Incompatible {
                plugin: plugin.into(),
                message: format!(
                    "the plugin's function table is {} bytes, this heraldd needs at least {V1_1_TABLE_SIZE}; rebuild the plugin against herald-plugin-api {API_VERSION}",
                    vtable.struct_size,
                ),
            });
        }
        // SAFETY: a v1 table with a checked size; `manifest` takes no arguments.
        let manifest: Manifest = take(vtable, unsafe { (vtable.manifest)() }).map_err(|e| {
            PluginError::Incompatible {
                plugin: plugin.into(),
                message: format!("cannot read its manifest: {}", e.message),
            }
        })?;
        check_api_compat(API_VERSION, &manifest.api_version).map_err(|message| {
            PluginError::Incompatible {
                plugin: plugin.into(),
                message,
            }
        })?;
        let mut manifest = manifest;
        if let Some(limits) = manifest.batch {
            if !has_batch_entries(vtable.struct_size) {
                tracing::warn!(
                    plugin,
                    "the plugin states batch limits but its function table has no batch entry points; sending its messages singly"
                );
                manifest.batch = None;
            } else if limits.max < 2 {
                manifest.batch = None;
            }
        }
        if manifest.name != plugin {
            return Err(PluginError::Incompatible {
                plugin: plugin.into(),
                message: format!(
                    "{} calls itself {:?}; the file name must match the plugin name",
                    path.display(),
                    manifest.name
                ),
            });
        }
        // Never unload: keep the mapping for the life of the process.
        std::mem::forget(lib);
        let lib = Arc::new(Library {
            name: plugin.into(),
            path,
            manifest,
            vtable,
        });
        self.loaded.insert(plugin.into(), Arc::clone(&lib));
        Ok(lib)
    }
}

/// Whether a table of `struct_size` bytes has the plugin-api 1.2 batch entry points.
pub fn has_batch_entries(struct_size: u32) -> bool {
    struct_size as usize >= size_of::<PluginVTable>()
}

/// Plugins often start a config error with `provider "<name>": ` (or `provider "<name>"
/// (<plugin>): `); the loader names the provider itself, so drop it rather than say it twice.
fn without_provider_prefix<'a>(message: &'a str, provider: &str, plugin: &str) -> &'a str {
    let named = format!("provider {provider:?}");
    let Some(rest) = message.strip_prefix(&named) else {
        return message;
    };
    let rest = rest.strip_prefix(&format!(" ({plugin})")).unwrap_or(rest);
    rest.strip_prefix(": ").unwrap_or(message)
}

/// What the plugin's log callback needs: which provider instance is talking.
struct LogContext {
    provider: String,
    plugin: String,
}

unsafe extern "C" fn host_log(ctx: *const c_void, level: u32, msg: *const u8, len: usize) {
    if ctx.is_null() || (msg.is_null() && len > 0) {
        return;
    }
    // SAFETY: `ctx` is the `LogContext` owned by the `Instance`, which outlives the plugin
    // instance; `msg`/`len` are a live slice for the duration of the call.
    let (ctx, bytes) = unsafe {
        (
            &*ctx.cast::<LogContext>(),
            if len == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(msg, len)
            },
        )
    };
    let text = String::from_utf8_lossy(bytes);
    let (provider, plugin) = (ctx.provider.as_str(), ctx.plugin.as_str());
    match Level::from_u32(level) {
        Level::Error => tracing::error!(provider, plugin, "{text}"),
        Level::Warn => tracing::warn!(provider, plugin, "{text}"),
        Level::Info => tracing::info!(provider, plugin, "{text}"),
        Level::Debug => tracing::debug!(provider, plugin, "{text}"),
        Level::Trace => tracing::trace!(provider, plugin, "{text}"),
    }
}

/// One configured provider instance inside a plugin.
pub struct Instance {
    lib: Arc<Library>,
    ptr: *mut c_void,
    // Boxed so their addresses stay fixed while the plugin holds pointers to them; dropped
    // after the instance is destroyed.
    _callbacks: Box<HostCallbacks>,
    _log: Box<LogContext>,
}

// SAFETY: plugin instances are `Send + Sync` by the `Provider` trait's bounds (the glue
// keeps them behind an `RwLock<Arc<P>>`); the pointer is only used through the vtable.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", &self.lib.name)
            .field("provider", &self._log.provider)
            .finish()
    }
}

impl Instance {
    /// Creates an instance; the plugin validates `config` here.
    pub fn create(lib: &Arc<Library>, config: &ProviderConfig) -> Result<Instance, PluginError> {
        let log = Box::new(LogContext {
            provider: config.name.clone(),
            plugin: lib.name.clone(),
        });
        let callbacks = Box::new(HostCallbacks {
            struct_size: size_of::<HostCallbacks>() as u32,
            ctx: std::ptr::from_ref::<LogContext>(&log).cast::<c_void>(),
            log: host_log,
        });
        let refused = |message: String| PluginError::Config {
            provider: config.name.clone(),
            plugin: lib.name.clone(),
            message,
        };
        let input = serde_json::to_vec(config)
            .map_err(|e| refused(format!("cannot encode config: {e}")))?;
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: input, callbacks and ptr are live for the call; the callbacks live as long
        // as the instance (both owned by the returned `Instance`).
        let buf =
            unsafe { (lib.vtable.create)(input.as_ptr(), input.len(), &*callbacks, &mut ptr) };
        match take::<()>(lib.vtable, buf) {
            Ok(()) if !ptr.is_null() => Ok(Instance {
                lib: Arc::clone(lib),
                ptr,
                _callbacks: callbacks,
                _log: log,
            }),
            Ok(()) => Err(refused("the plugin returned no instance".into())),
            Err(e) => Err(refused(
                without_provider_prefix(&e.message, &config.name, &lib.name).to_string(),
            )),
        }
    }

    pub fn library(&self) -> &Arc<Library> {
        &self.lib
    }

    fn call<I: Serialize, O: DeserializeOwned>(
        &self,
        f: unsafe extern "C" fn(*mut c_void, *const u8, usize) -> RBuf,
        input: &I,
    ) -> Result<O, CallError> {
        let bytes = serde_json::to_vec(input).map_err(|e| CallError {
            kind: CallErrorKind::BadInput,
            message: format!("host could not encode the call: {e}"),
        })?;
        // SAFETY: `self.ptr` is a live instance of this library; `bytes` lives for the call.
        let buf = unsafe { f(self.ptr, bytes.as_ptr(), bytes.len()) };
        take(self.lib.vtable, buf)
    }

    pub fn allowed_hosts(&self) -> Result<Vec<String>, CallError> {
        self.call(self.lib.vtable.allowed_hosts, &())
    }

    pub fn begin(&self, delivery: &Delivery) -> Result<Step, CallError> {
        self.call(self.lib.vtable.begin, delivery)
    }

    pub fn resume(&self, input: &ResumeInput) -> Result<Step, CallError> {
        self.call(self.lib.vtable.resume, input)
    }

    pub fn webhook(&self, request: WebhookRequest, now: u64) -> Result<WebhookOutput, CallError> {
        self.call(self.lib.vtable.webhook, &WebhookInput { request, now })
    }

    /// The batch entry points are only called for a plugin whose manifest (as the loader
    /// kept it) states batch limits, which it keeps only for a table that has them.
    fn batch_entry(
        &self,
        f: impl FnOnce(&PluginVTable) -> unsafe extern "C" fn(*mut c_void, *const u8, usize) -> RBuf,
    ) -> Result<unsafe extern "C" fn(*mut c_void, *const u8, usize) -> RBuf, CallError> {
        if self.lib.manifest.batch.is_none() || !has_batch_entries(self.lib.vtable.struct_size) {
            return Err(CallError {
                kind: CallErrorKind::BadInput,
                message: "the plugin has no batch entry points".into(),
            });
        }
        Ok(f(self.lib.vtable))
    }

    /// Each message's batch key (`None`: it goes singly), in order.
    pub fn batch_keys(&self, messages: &[Message]) -> Result<Vec<Option<String>>, CallError> {
        let f = self.batch_entry(|t| t.batch_keys)?;
        let keys: Vec<Option<String>> = self.call(f, &messages)?;
        if keys.len() != messages.len() {
            return Err(CallError {
                kind: CallErrorKind::BadInput,
                message: format!(
                    "the plugin returned {} batch keys for {} messages",
                    keys.len(),
                    messages.len()
                ),
            });
        }
        Ok(keys)
    }

    pub fn begin_batch(&self, deliveries: &[Delivery]) -> Result<Step, CallError> {
        let f = self.batch_entry(|t| t.begin_batch)?;
        self.call(f, &deliveries)
    }

    pub fn resume_batch(&self, input: &BatchResumeInput) -> Result<Step, CallError> {
        let f = self.batch_entry(|t| t.resume_batch)?;
        self.call(f, input)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: created by this library's `create`, destroyed exactly once.
        unsafe { (self.lib.vtable.destroy)(self.ptr) };
    }
}

#[cfg(test)]
mod tests {
    use super::{V1_1_TABLE_SIZE, has_batch_entries, without_provider_prefix};

    /// A 1.1 plugin's table ends at `free_buf`: it is accepted (the loader's minimum) and
    /// has no batch entry points; a 1.2 table has them.
    #[test]
    fn table_sizes() {
        let v1_1 = V1_1_TABLE_SIZE as u32;
        assert!(!has_batch_entries(v1_1));
        assert!(has_batch_entries(
            size_of::<herald_plugin_api::abi::PluginVTable>() as u32
        ));
        // Three function pointers were appended.
        assert_eq!(
            size_of::<herald_plugin_api::abi::PluginVTable>() - V1_1_TABLE_SIZE,
            3 * size_of::<usize>()
        );
    }

    #[test]
    fn provider_is_named_once() {
        assert_eq!(
            without_provider_prefix("provider \"hook\": url bad", "hook", "webhook"),
            "url bad"
        );
        assert_eq!(
            without_provider_prefix("provider \"r\" (resend): key bad", "r", "resend"),
            "key bad"
        );
        assert_eq!(
            without_provider_prefix("url bad", "hook", "webhook"),
            "url bad"
        );
        assert_eq!(
            without_provider_prefix("provider \"other\": x", "hook", "webhook"),
            "provider \"other\": x"
        );
    }
}
