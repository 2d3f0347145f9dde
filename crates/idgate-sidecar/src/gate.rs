//! Where `serve` gets its gate: the verifier, the policy and the tower layer
//! built from [`Settings`], with their hooks into metrics, readiness and
//! reload.
//!
//! This is the one place the binary obtains a [`GateLayer`]. It never
//! returns a pass-through: without a gate, `serve` refuses to start.
//!
//! Hooks:
//! - decisions: the gate's `on_decision` feeds [`Metrics::record_decision`]
//!   (the gate itself logs each decision: denials at INFO, with
//!   `auth.reason` and `auth.principal`);
//! - metrics: scrapes read `Verifier::stats` through
//!   [`Metrics::set_verifier_stats`];
//! - readiness: `Verifier::is_ready` (keys loaded for every issuer);
//! - reload: `PolicyHandle::reload`, validated then swapped atomically.

use std::sync::Arc;
use std::time::Duration;

use idgate::auth::{AuthLayer, Gate, GateConfigError};
use idgate::policy::{PolicyErrors, PolicyHandle, PolicySources};
use idgate::{IssuerConfig, JwksSettings, Verifier, VerifierBuilder};
use tracing::warn;

use crate::admin::ReadyCheck;
use crate::app::GateLayer;
use crate::config::{KeySource, Settings, StatusCodes};
use crate::metrics::{Metrics, VerifierSnapshot};
use crate::reload::ReloadFn;

/// What the gate gives the rest of `serve`.
pub struct GateParts {
    /// The layer that wraps the proxy.
    pub layer: Arc<dyn GateLayer>,
    /// Whether keys are loaded for every issuer.
    pub ready: ReadyCheck,
    /// Reloads the policy.
    pub reload: Option<ReloadFn>,
    /// To log once logging is up.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for GateParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateParts").finish_non_exhaustive()
    }
}

/// Why no gate could be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The settings are valid on their own but the verifier refuses them
    /// (for example a clock skew over its 5 min maximum).
    #[error("verifier settings")]
    Verifier(#[source] idgate::ConfigError),
    /// The policy files or members do not load.
    #[error("policy")]
    Policy(#[source] PolicyErrors),
    /// The gate refuses its settings (public paths).
    #[error("auth gate settings")]
    Gate(#[source] GateConfigError),
}

/// The verifier's settings. A discovery issuer's JWKS URL is
/// `jwks_url_for`'s when it knows one, else read from its discovery
/// document when its keys are first fetched.
pub fn verifier_builder(
    settings: &Settings,
    jwks_url_for: impl Fn(&str) -> Option<String>,
) -> VerifierBuilder {
    let v = &settings.verifier;
    let mut jwks = JwksSettings::default();
    jwks.min_ttl = v.jwks.min_ttl;
    jwks.max_ttl = v.jwks.max_ttl;
    jwks.refresh_interval = v.jwks.refresh_interval;
    jwks.stale_if_error = v.jwks.stale_if_error;
    let mut builder = Verifier::builder();
    if v.google {
        builder = builder.issuer(match &v.google_jwks_url {
            Some(url) => IssuerConfig::google().with_jwks_url(url),
            None => IssuerConfig::google(),
        });
    }
    let mut builder = builder
        .audiences(v.audiences.iter().cloned())
        .clock_skew(v.clock_skew)
        .max_token_bytes(v.max_token_bytes)
        .token_cache_capacity(v.token_cache_capacity)
        .jwks(jwks);
    for issuer in &v.issuers {
        let url = match &issuer.keys {
            KeySource::JwksUrl(url) => Some(url.clone()),
            KeySource::Discovery => jwks_url_for(&issuer.issuer),
        };
        // The issuer URL doubles as its metrics label: unique, and bounded
        // by the configuration.
        let cfg = IssuerConfig::new(&issuer.issuer, &issuer.issuer, "");
        let mut cfg = match url {
            Some(url) => cfg.with_jwks_url(url),
            None => cfg.with_discovery(),
        };
        // Fail closed: another issuer's emails mean nothing to IAM (anyone
        // it signs for could claim any address), so they name
        // `user:`/`serviceAccount:` members only when the operator says the
        // issuer stands in for Google (a dev issuer, a test double).
        cfg.google = issuer.trust_emails;
        if let Some(pool) = &issuer.pool {
            cfg = cfg.with_pool(pool.clone());
        }
        builder = builder.issuer(cfg);
    }
    builder
}

fn policy_sources(settings: &Settings) -> PolicySources {
    PolicySources {
        files: settings.policy.files.clone(),
        members: settings.policy.members.clone(),
        groups_file: settings.policy.groups_file.clone(),
        invoker_roles: settings.policy.invoker_roles.clone(),
        pools: settings.policy.pools.clone(),
    }
}

/// The policy, then the gate over `verifier` and it.
fn gate_over(
    settings: &Settings,
    verifier: Arc<Verifier>,
    metrics: Option<Arc<Metrics>>,
) -> Result<(Gate, Arc<PolicyHandle>, Vec<String>), GateError> {
    let (policy, warnings) =
        PolicyHandle::new(policy_sources(settings)).map_err(GateError::Policy)?;
    let policy = Arc::new(policy);
    let mut builder =
        Gate::builder(verifier, policy.clone()).status_codes(match settings.status_codes {
            StatusCodes::Rfc6750 => idgate::auth::StatusCodes::Rfc6750,
            StatusCodes::CloudRun => idgate::auth::StatusCodes::CloudRun,
        });
    for prefix in &settings.public_paths {
        builder = builder.public_path(prefix.clone());
    }
    if let Some(m) = metrics {
        builder = builder.on_decision(move |ev| m.record_decision(ev.outcome.reason(), ev.elapsed));
    }
    let gate = builder.build().map_err(GateError::Gate)?;
    Ok((gate, policy, warnings))
}

/// What `--check-config` checks beyond the settings, without the network:
/// the verifier's rules, the policy (files parsed, members and conditions
/// checked) and the gate's. Discovery issuers are not fetched. Returns the
/// policy's warnings.
pub fn check(settings: &Settings) -> Result<Vec<String>, GateError> {
    let verifier = verifier_builder(settings, |_| None)
        .build()
        .map_err(GateError::Verifier)?;
    let (_, _, warnings) = gate_over(settings, Arc::new(verifier), None)?;
    Ok(warnings)
}

/// How long startup waits for the first keys before listening anyway.
/// Platforms send traffic as soon as the port accepts (Cloud Run's default
/// startup probe is a TCP connect), and a request before any key is loaded
/// can only be answered 503.
pub const KEY_WARMUP: Duration = Duration::from_secs(10);

/// Builds the gate for `serve`: the verifier with its metrics and
/// readiness hooks, the policy, the auth layer; then waits up to
/// [`KEY_WARMUP`] for the first keys (discovery included). Needs a tokio
/// runtime.
pub async fn build(settings: &Settings, metrics: &Arc<Metrics>) -> Result<GateParts, GateError> {
    // Discovery issuers find their JWKS URL at their first key fetch: an
    // issuer that is down now delays its own keys, not the sidecar.
    let verifier = verifier_builder(settings, |_| None)
        .build()
        .map_err(GateError::Verifier)?;
    let verifier = Arc::new(verifier);
    let (gate, policy, warnings) = gate_over(settings, verifier.clone(), Some(metrics.clone()))?;

    let v = verifier.clone();
    metrics.set_verifier_stats(move || VerifierSnapshot::from(&v.stats()));
    // The refreshers stop when the verifier is dropped.
    drop(verifier.spawn_key_refreshers());
    if tokio::time::timeout(KEY_WARMUP, verifier.refresh_keys())
        .await
        .is_err()
        || !verifier.is_ready()
    {
        warn!("keys are not loaded for every issuer yet; requests get 503 until they are");
    }
    let v = verifier.clone();
    let ready: ReadyCheck = Arc::new(move || v.is_ready());
    let reload: ReloadFn = Arc::new(move || {
        policy
            .reload()
            .map_err(|e| e.to_string().replace('\n', "; "))
    });
    Ok(GateParts {
        layer: Arc::new(AuthLayer::new(Arc::new(gate))),
        ready,
        reload: Some(reload),
        warnings,
    })
}
