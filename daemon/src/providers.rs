//! The running provider set: one [`Provider`] per `[[providers]]` entry (plugin instance,
//! allowed hosts, breaker, rate limit, counters) and the channel routes over them.
//!
//! Building a [`Routing`] is the whole validation of the provider half of a config: the
//! plugin loads, its manifest accepts the keys (secrets only from `${ENV}`), its `new`
//! accepts the values, and every routed provider serves its channel. Reload builds a new
//! `Routing` first and swaps only if that succeeded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_plugin_api::{Channel, Manifest, ProviderConfig};

use crate::breaker::{Breaker, Transition};
use crate::config::{Config, ProviderSpec};
use crate::plugin::{Instance, Loader};
use crate::ratelimit::RateLimiter;
use crate::store::BreakerRecord;

#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
    pub rejected: AtomicU64,
    /// One exchange with the provider, start to outcome (`/metrics`).
    pub call_latency: Arc<crate::metrics::LatencyHistogram>,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One configured provider instance.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub plugin: String,
    pub manifest: Manifest,
    pub instance: Instance,
    pub allowed_hosts: Vec<String>,
    pub breaker: Arc<Breaker>,
    pub rate: Option<RateLimiter>,
    pub timeout_ms: u64,
    /// `failover_after`: see [`crate::dispatch::verdict::failover_start`].
    pub failover_after: Option<u32>,
    /// `max_in_flight`: a permit per request to the provider (shared with the provider a
    /// reload replaces, when the limit stays).
    pub in_flight: Option<(u32, Arc<tokio::sync::Semaphore>)>,
    pub counters: Arc<Counters>,
    /// Until when (Unix ms; 0: never) the provider asked for no calls at all (a 429 with
    /// `Retry-After`, a quota). Shared with the provider a reload replaces.
    pub pause: Arc<AtomicU64>,
    /// The most messages per batch request (the plugin's limit, lowered by `batch_max`);
    /// `None`: every message goes alone (the plugin cannot batch, or `batch = false`).
    pub batch_max: Option<usize>,
}

impl Provider {
    /// Until when the provider is paused, if it is at `now`.
    pub fn paused_until(&self, now: u64) -> Option<u64> {
        let until = self.pause.load(Ordering::Relaxed);
        (until > now).then_some(until)
    }

    /// Pauses the provider until `until` (a later pause already set stays). Returns
    /// whether this extended the pause.
    pub fn pause_until(&self, until: u64) -> bool {
        self.pause.fetch_max(until, Ordering::Relaxed) < until
    }
}

/// The batch size for `spec`: the plugin's limit, lowered by `batch_max`; `None` when the
/// plugin cannot batch or the operator said `batch = false`.
fn batch_max(spec: &ProviderSpec, manifest: &Manifest) -> Option<usize> {
    let plugin = manifest.batch?.max;
    if !spec.batch || plugin < 2 {
        return None;
    }
    let max = spec.batch_max.map_or(plugin, |m| m.min(plugin));
    Some(max as usize)
}

#[derive(Debug, Default)]
pub struct Routing {
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub routes: BTreeMap<Channel, Vec<Arc<Provider>>>,
}

/// Checks the keys of `spec` against the plugin's manifest: required keys present, secret
/// keys given only as `${ENV}` references.
fn check_keys(spec: &ProviderSpec, manifest: &Manifest) -> Result<(), String> {
    for key in &manifest.config {
        let present = spec.settings.contains_key(&key.name);
        if key.secret && present && !spec.env_keys.contains(&key.name) {
            let var = format!("{}_{}", spec.name, key.name)
                .to_ascii_uppercase()
                .replace('-', "_");
            return Err(format!(
                "provider {:?}: {} is a secret; write {} = \"${{{var}}}\" and export {var}, so it never sits in the config file",
                spec.name, key.name, key.name
            ));
        }
        if key.required && !present {
            return Err(format!(
                "provider {:?} (plugin {}): missing required key {}{}",
                spec.name,
                spec.plugin,
                key.name,
                if key.description.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", key.description)
                }
            ));
        }
    }
    Ok(())
}

/// The breaker of `spec`: the running one if the provider stays the same (with the new
/// thresholds if they changed), else its stored state if it was stored for this plugin,
/// else a closed one.
fn breaker_for(
    spec: &ProviderSpec,
    old: Option<&Arc<Provider>>,
    stored: &BTreeMap<String, BreakerRecord>,
) -> Arc<Breaker> {
    match old {
        Some(p) if p.breaker.config() == spec.breaker => Arc::clone(&p.breaker),
        Some(p) => Arc::new(Breaker::restored(spec.breaker, p.breaker.snapshot())),
        None => match stored.get(&spec.name) {
            Some(r) if r.plugin == spec.plugin => Arc::new(Breaker::restored(
                spec.breaker,
                Transition {
                    generation: r.generation,
                    opened_at: r.opened_at,
                    trips: r.trips,
                },
            )),
            _ => Arc::new(Breaker::new(spec.breaker)),
        },
    }
}

impl Routing {
    /// Loads every provider of `config`. Breakers and counters of same-named providers in
    /// `previous` carry over, so a reload does not forget that a provider is down; other
    /// breakers start from their `stored` state (the one before a restart).
    pub fn build(
        config: &Config,
        loader: &mut Loader,
        previous: Option<&Routing>,
        stored: &BTreeMap<String, BreakerRecord>,
        now: u64,
    ) -> Result<Routing, String> {
        let mut providers = BTreeMap::new();
        for spec in &config.providers {
            let lib = loader.load(&spec.plugin).map_err(|e| e.to_string())?;
            check_keys(spec, &lib.manifest)?;
            let webhook_url = config
                .webhooks
                .as_ref()
                .and_then(|w| w.public_url.as_ref())
                .map(|base| format!("{base}/webhooks/{}", spec.name));
            let instance = Instance::create(
                &lib,
                &ProviderConfig {
                    name: spec.name.clone(),
                    settings: spec.settings.clone(),
                    webhook_url,
                },
            )
            .map_err(|e| e.to_string())?;
            let allowed_hosts = instance.allowed_hosts().map_err(|e| {
                format!(
                    "provider {:?}: cannot read its allowed hosts: {}",
                    spec.name, e.message
                )
            })?;
            let old = previous
                .and_then(|p| p.providers.get(&spec.name))
                .filter(|p| p.plugin == spec.plugin);
            let provider = Provider {
                name: spec.name.clone(),
                plugin: spec.plugin.clone(),
                manifest: lib.manifest.clone(),
                instance,
                allowed_hosts,
                breaker: breaker_for(spec, old, stored),
                rate: spec.rate_limit.map(|r| RateLimiter::new(r, now)),
                timeout_ms: spec.timeout_ms,
                failover_after: spec.failover_after,
                in_flight: spec.max_in_flight.map(|max| {
                    match old.and_then(|p| p.in_flight.as_ref()) {
                        Some((n, s)) if *n == max => (max, Arc::clone(s)),
                        _ => (max, Arc::new(tokio::sync::Semaphore::new(max as usize))),
                    }
                }),
                counters: old.map(|p| Arc::clone(&p.counters)).unwrap_or_default(),
                pause: old.map(|p| Arc::clone(&p.pause)).unwrap_or_default(),
                batch_max: batch_max(spec, &lib.manifest),
            };
            providers.insert(spec.name.clone(), Arc::new(provider));
        }
        let mut routes = BTreeMap::new();
        for (channel, names) in &config.routes {
            let mut list = Vec::new();
            for name in names {
                let p = providers
                    .get(name)
                    .ok_or_else(|| format!("routes.{channel}: unknown provider {name:?}"))?;
                if !p.manifest.channels.contains(channel) {
                    let serves: Vec<&str> =
                        p.manifest.channels.iter().map(|c| c.as_str()).collect();
                    return Err(format!(
                        "routes.{channel} lists {name:?}, but plugin {} serves only {}",
                        p.plugin,
                        serves.join(", ")
                    ));
                }
                list.push(Arc::clone(p));
            }
            routes.insert(*channel, list);
        }
        Ok(Routing { providers, routes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_plugin_api::ConfigKey;
    use std::collections::BTreeSet;

    #[test]
    fn secrets_must_come_from_env_and_required_keys_exist() {
        let manifest = Manifest {
            name: "resend".into(),
            version: "1".into(),
            api_version: "1.0.0".into(),
            description: String::new(),
            channels: vec![Channel::Email],
            config: vec![
                ConfigKey::required("api_key", "Resend API key").secret(),
                ConfigKey::required("from", "default sender"),
            ],
            webhooks: true,
            idempotent: true,
            blocking: false,
            batch: None,
            allowed_hosts: vec![],
        };
        let mut spec = ProviderSpec {
            name: "resend".into(),
            plugin: "resend".into(),
            settings: serde_json::json!({"api_key": "re_live", "from": "a@b.io"})
                .as_object()
                .cloned()
                .unwrap(),
            env_keys: BTreeSet::new(),
            rate_limit: None,
            breaker: Default::default(),
            timeout_ms: 1000,
            failover_after: None,
            max_in_flight: None,
            batch: true,
            batch_max: None,
        };
        let err = check_keys(&spec, &manifest).unwrap_err();
        assert!(
            err.contains("${RESEND_API_KEY}") && !err.contains("re_live"),
            "{err}"
        );
        spec.env_keys.insert("api_key".into());
        assert!(check_keys(&spec, &manifest).is_ok());
        spec.settings.remove("from");
        let err = check_keys(&spec, &manifest).unwrap_err();
        assert!(err.contains("missing required key from"), "{err}");
    }
}
