//! Prometheus metrics. Every label is a bounded set: reasons, results,
//! issuers; never principals.
//!
//! Two kinds of values:
//!
//! - Events the sidecar sees (decisions, upstream calls, policy reloads) are
//!   recorded through [`Metrics`]' methods as they happen.
//! - The verifier keeps its own counters (key fetches, key-set age, token
//!   cache hits). They are read at scrape time through the closure given to
//!   [`Metrics::set_verifier_stats`], so nothing is counted twice and the
//!   verifier needs no knowledge of Prometheus.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::proxy::ProxyFailure;

/// The `reason` label of an allowed request.
pub const ALLOWED: &str = "allowed";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// What the verifier reports at scrape time. Built from
/// `idgate::VerifierStats` by the gate wiring; a plain struct here so this
/// module can be tested without a verifier.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifierSnapshot {
    /// Verified-token cache hits so far.
    pub token_cache_hits: u64,
    /// Verified-token cache misses so far.
    pub token_cache_misses: u64,
    /// The hits that a hot slot answered (no map lookup).
    pub token_cache_hot_hits: u64,
    /// One entry per configured issuer.
    pub issuers: Vec<IssuerSnapshot>,
}

/// One issuer's key cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IssuerSnapshot {
    /// The configured issuer's name (a bounded label).
    pub issuer: String,
    /// Successful JWKS fetches so far.
    pub fetches_ok: u64,
    /// Failed JWKS fetches so far.
    pub fetches_failed: u64,
    /// Age of the key set in use; `None` before the first successful fetch.
    pub key_set_age: Option<Duration>,
}

impl From<&idgate::VerifierStats> for VerifierSnapshot {
    fn from(s: &idgate::VerifierStats) -> Self {
        VerifierSnapshot {
            token_cache_hits: s.token_cache_hits,
            token_cache_misses: s.token_cache_misses,
            token_cache_hot_hits: s.token_cache_hot_hits,
            issuers: s
                .issuers
                .iter()
                .map(|i| IssuerSnapshot {
                    issuer: i.issuer.to_string(),
                    fetches_ok: i.fetches_ok,
                    fetches_failed: i.fetches_failed,
                    key_set_age: i.age,
                })
                .collect(),
        }
    }
}

type StatsFn = Box<dyn Fn() -> VerifierSnapshot + Send + Sync>;

/// The process's metrics. Cheap to share (`Arc<Metrics>`).
pub struct Metrics {
    registry: Registry,
    decisions: Family<ReasonLabel, Counter>,
    /// The `allowed` series of `decisions`, held so the common case skips
    /// the family's lock and label hash.
    allowed: Counter,
    verification: Histogram,
    upstream: Family<ResultLabel, Histogram>,
    /// The `ok` series of `upstream`, the same way; made on the first
    /// upstream answer so the series appears only once there is one.
    upstream_ok: OnceLock<Histogram>,
    reloads: Family<ResultLabel, Counter>,
    resends: Counter,
    verifier: Arc<OnceLock<StatsFn>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `idgate_` prefix, with every
    /// decision reason present from the start (at zero), so dashboards and
    /// alerts see the series before the first denial.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("idgate");
        let decisions = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "decisions",
            "Gate decisions by reason: `allowed`, or the reason code of the refusal",
            decisions.clone(),
        );
        for reason in idgate::Reason::ALL.iter().map(|r| r.as_str()) {
            let _ = decisions.get_or_create(&ReasonLabel { reason });
        }
        let allowed = decisions
            .get_or_create(&ReasonLabel { reason: ALLOWED })
            .clone();
        // 50 µs .. ~1.6 s: a cache hit is microseconds, a cold key fetch
        // hundreds of milliseconds.
        let verification = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "verification_duration_seconds",
            "Time the gate took to decide a request",
            verification.clone(),
        );
        let upstream = Family::<ResultLabel, Histogram>::new_with_constructor(
            // 1 ms .. ~65 s.
            || Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time until the upstream answered with headers, by result",
            upstream.clone(),
        );
        let resends = Counter::default();
        registry.register(
            "upstream_resends",
            "Requests sent again on a new upstream connection because the upstream closed \
             the kept-alive one they went out on before answering",
            resends.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads by result (ok, error)",
            reloads.clone(),
        );
        for result in ["ok", "error"] {
            let _ = reloads.get_or_create(&ResultLabel { result });
        }
        let verifier = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(VerifierCollector(verifier.clone())));
        Metrics {
            registry,
            decisions,
            allowed,
            verification,
            upstream,
            upstream_ok: OnceLock::new(),
            reloads,
            resends,
            verifier,
        }
    }

    /// The count of requests the upstream pool sent again on a new
    /// connection, for the pool to add to.
    pub fn upstream_resends(&self) -> Counter {
        self.resends.clone()
    }

    /// Counts a gate decision: `None` for allowed, else the refusal's reason,
    /// with how long deciding took.
    pub fn record_decision(&self, reason: Option<idgate::Reason>, elapsed: Duration) {
        match reason {
            None => self.allowed.inc(),
            Some(r) => self
                .decisions
                .get_or_create(&ReasonLabel { reason: r.as_str() })
                .inc(),
        };
        self.verification.observe(elapsed.as_secs_f64());
    }

    /// Records an upstream exchange: how long until headers, and how it
    /// ended (`None` for a response).
    pub fn record_upstream(&self, elapsed: Duration, failure: Option<ProxyFailure>) {
        let seconds = elapsed.as_secs_f64();
        match failure {
            None => self
                .upstream_ok
                .get_or_init(|| {
                    self.upstream
                        .get_or_create(&ResultLabel { result: "ok" })
                        .clone()
                })
                .observe(seconds),
            Some(f) => self
                .upstream
                .get_or_create(&ResultLabel { result: f.as_str() })
                .observe(seconds),
        }
    }

    /// Counts a policy reload.
    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Where scrapes read the verifier's counters. Set once, when the
    /// verifier is built; later calls are ignored.
    pub fn set_verifier_stats(&self, stats: impl Fn() -> VerifierSnapshot + Send + Sync + 'static) {
        let _ = self.verifier.set(Box::new(stats));
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Reads the verifier's counters at scrape time. Its metric names carry no
/// `idgate_` prefix: the registry adds it, as for every other metric.
struct VerifierCollector(Arc<OnceLock<StatsFn>>);

impl fmt::Debug for VerifierCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifierCollector")
    }
}

impl Collector for VerifierCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(stats) = self.0.get() else {
            return Ok(());
        };
        let s = stats();

        for (name, help, value) in [
            (
                "token_cache_hits",
                "Verified-token cache hits",
                s.token_cache_hits,
            ),
            (
                "token_cache_misses",
                "Verified-token cache misses (signature checked)",
                s.token_cache_misses,
            ),
            (
                "token_cache_hot_hits",
                "Verified-token cache hits answered by a hot-token slot (included in the hits)",
                s.token_cache_hot_hits,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }

        let mut fetches = encoder.encode_descriptor(
            "jwks_fetches",
            "JWKS fetches by issuer and result (ok, error)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for i in &s.issuers {
            for (result, n) in [("ok", i.fetches_ok), ("error", i.fetches_failed)] {
                let labels = [("issuer", i.issuer.as_str()), ("result", result)];
                ConstCounter::new(n).encode(fetches.encode_family(&labels)?)?;
            }
        }

        let mut age = encoder.encode_descriptor(
            "jwks_key_set_age_seconds",
            "Age of the key set in use, by issuer (absent before the first fetch)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for i in &s.issuers {
            if let Some(a) = i.key_set_age {
                let labels = [("issuer", i.issuer.as_str())];
                ConstGauge::new(a.as_secs_f64()).encode(age.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_present_from_the_start() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains("idgate_decisions_total{reason=\"allowed\"} 0"),
            "{text}"
        );
        for r in idgate::Reason::ALL {
            let line = format!("idgate_decisions_total{{reason=\"{}\"}} 0", r.as_str());
            assert!(text.contains(&line), "missing {line}");
        }
        assert!(text.contains("idgate_policy_reloads_total{result=\"error\"} 0"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn recorded_values_show() {
        let m = Metrics::new();
        m.record_decision(None, Duration::from_micros(80));
        m.record_decision(Some(idgate::Reason::Expired), Duration::from_micros(80));
        m.record_decision(Some(idgate::Reason::Expired), Duration::from_micros(80));
        m.record_upstream(Duration::from_millis(3), None);
        m.record_upstream(Duration::from_secs(1), Some(ProxyFailure::Timeout));
        m.record_reload(true);
        m.upstream_resends().inc();
        let text = m.encode();
        assert!(
            text.contains("idgate_decisions_total{reason=\"allowed\"} 1"),
            "{text}"
        );
        assert!(text.contains("idgate_upstream_resends_total 1"), "{text}");
        assert!(text.contains("idgate_decisions_total{reason=\"expired\"} 2"));
        assert!(text.contains("idgate_verification_duration_seconds_count 3"));
        assert!(text.contains("idgate_upstream_duration_seconds_count{result=\"ok\"} 1"));
        assert!(
            text.contains("idgate_upstream_duration_seconds_count{result=\"upstream_timeout\"} 1")
        );
        assert!(text.contains("idgate_policy_reloads_total{result=\"ok\"} 1"));
    }

    #[test]
    fn verifier_counters_are_read_at_scrape_time() {
        let m = Metrics::new();
        assert!(!m.encode().contains("idgate_jwks_fetches"));
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = calls.clone();
        m.set_verifier_stats(move || {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            VerifierSnapshot {
                token_cache_hits: 10 * n,
                token_cache_misses: 2,
                token_cache_hot_hits: 7,
                issuers: vec![
                    IssuerSnapshot {
                        issuer: "google".into(),
                        fetches_ok: 3,
                        fetches_failed: 1,
                        key_set_age: Some(Duration::from_secs(42)),
                    },
                    IssuerSnapshot {
                        issuer: "dev".into(),
                        ..Default::default()
                    },
                ],
            }
        });
        let text = m.encode();
        assert!(text.contains("idgate_token_cache_hits_total 10"), "{text}");
        assert!(text.contains("idgate_token_cache_misses_total 2"));
        assert!(
            text.contains("idgate_token_cache_hot_hits_total 7"),
            "{text}"
        );
        assert!(text.contains("idgate_jwks_fetches_total{issuer=\"google\",result=\"ok\"} 3"));
        assert!(text.contains("idgate_jwks_fetches_total{issuer=\"google\",result=\"error\"} 1"));
        assert!(text.contains("idgate_jwks_fetches_total{issuer=\"dev\",result=\"ok\"} 0"));
        assert!(text.contains("idgate_jwks_key_set_age_seconds{issuer=\"google\"} 42"));
        assert!(!text.contains("idgate_jwks_key_set_age_seconds{issuer=\"dev\"}"));
        assert!(
            m.encode().contains("idgate_token_cache_hits_total 20"),
            "read anew each scrape"
        );
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.starts_with("idgate_") && !l.starts_with("idgate_idgate_")),
            "one prefix, once: {text}"
        );
    }
}
