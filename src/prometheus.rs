//! Prometheus / OpenMetrics export (feature `prometheus`): a collector that reads a manager's counters,
//! breaker states, latency histograms, dead-letter stores and source settlements **at scrape time**.
//!
//! Nothing is added to the path of an event: the crate keeps these counters anyway (sharded atomics and
//! lock-free histograms, see [`ListenerMetrics`]), and the collector reads them
//! when Prometheus asks. Built on [prometheus-client](https://docs.rs/prometheus-client), the official
//! OpenMetrics client: register a [`ManagerCollector`] into your own `Registry`, next to your other
//! metrics, and serve the registry as you serve it (or use the `/metrics` route of
//! [`http::router`](crate::http::router) with feature `axum`).
//!
//! The names (all with the prefix `tower_listener_`, label `listener` = the listener's id; every label
//! value comes from a fixed set, never an event id or an error message):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `events_total` | counter | `outcome` = `succeeded`, `failed` (not permanent), `permanent`, `rejected` (calls rejected; an event rejected and then dead-lettered is also `failed`) |
//! | `event_duration_seconds`, `attempt_duration_seconds` | histogram | buckets from 100 µs to 60 s |
//! | `in_flight` | gauge | |
//! | `retries_total`, `timeouts_total` | counter | |
//! | `rejections_total` | counter | `cause` = `circuit_open`, `overloaded` |
//! | `circuit_breaker_state` | gauge, one-hot | `state` = `closed`, `open`, `half_open` (forced open reads `open`, disabled `closed`) |
//! | `circuit_breaker_transitions_total` | counter | `from`, `to` (the same three states; all six pairs, from 0; forced open to open is no change here) |
//! | `dead_letters_total` | counter | `reason` (the reasons' names) |
//! | `dead_letter_failures_total` | counter | |
//! | `dead_letters_stored`, `dead_letter_oldest_age_seconds` | gauge | `store` (the name given to [`ManagerCollector::with_store`]) |
//! | `redriven_total` | counter | `outcome` = `succeeded`, `failed` |
//! | `source_settlements_total` | counter | `action` = `ack`, `term`, `nak`, `progress` |
//! | `source_redeliveries_total` | counter | |
//! | `health` | gauge, one-hot | `status` = `healthy`, `degraded`, `unhealthy`, `circuit-open` (the manager) |
//! | `listener_health` | gauge, one-hot | `status`, per listener |
//!
//! Two managers in one registry: register each under a label of its own
//! (`registry.sub_registry_with_label(("manager".into(), name.into()))`), or their series collide.
//!
//! A breaker's state series are one-hot and written whole at every scrape: exactly one of them is 1, so
//! no stale 1 of a past state lingers. A store's figures are read by a task of the collector every
//! `every` (a store's count is a request to it, not an atomic), so they are up to that old.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::circuit::CircuitState;
use crate::dead_letter::{DeadLetterStore, LetterFilter};
use crate::manager::HealthStatus;
use crate::metrics::{ListenerMetrics, Stats};
use crate::{Error, ListenerManager};

/// The upper bounds of the latency histograms' buckets, in nanoseconds: 100 µs to 60 s.
const BOUNDS: [u64; 18] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// The breaker states as exported, and every change between two of them.
const STATES: [&str; 3] = ["closed", "open", "half_open"];
const TRANSITIONS: [(&str, &str); 6] = [
    ("closed", "open"),
    ("closed", "half_open"),
    ("open", "half_open"),
    ("open", "closed"),
    ("half_open", "closed"),
    ("half_open", "open"),
];

/// What a store's refresher last read.
#[derive(Debug, Default, Clone, Copy)]
struct StoreFigures {
    stored: Option<u64>,
    oldest: Option<SystemTime>,
}

#[derive(Debug)]
struct StoreGauges {
    name: String,
    figures: Arc<Mutex<StoreFigures>>,
}

/// Exports a [`ListenerManager`]'s metrics at scrape time. See the [module docs](self).
///
/// ```
/// use prometheus_client::registry::Registry;
/// use tower_listener::prometheus::ManagerCollector;
/// use tower_listener::{Event, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_listener::Error> {
/// let manager = ListenerManager::new(ManagerConfig::default())?;
/// manager.register(listener_fn("orders", |_e: Event| async { Ok::<_, std::io::Error>(()) }), ListenerConfig::default())?;
/// manager.start().await?;
/// manager.process("orders", Event::new("o-1", "order.created", serde_json::json!({}))).await?;
///
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(ManagerCollector::new(manager.clone())));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"tower_listener_events_total{listener="orders",outcome="succeeded"} 1"#));
/// # Ok(()) }
/// ```
pub struct ManagerCollector<T = serde_json::Value> {
    manager: ListenerManager<T>,
    stores: Vec<StoreGauges>,
}

impl<T> fmt::Debug for ManagerCollector<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerCollector")
            .field("manager", &self.manager.name())
            .field("stores", &self.stores)
            .finish()
    }
}

impl<T: Send + Sync + 'static> ManagerCollector<T> {
    /// A collector of `manager`'s listeners.
    pub fn new(manager: ListenerManager<T>) -> Self {
        ManagerCollector {
            manager,
            stores: Vec::new(),
        }
    }

    /// Also exports `dead_letters_stored{store=name}` and `dead_letter_oldest_age_seconds{store=name}` of
    /// `store`, read by a task every `every` (at least 100 ms; from now, on the current tokio runtime) for
    /// as long as the collector lives. A read that fails is logged, and the series are left out until one
    /// succeeds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming `with_store` when called outside a tokio runtime (there is none
    /// to run the task on).
    pub fn with_store<S: DeadLetterStore<T>>(
        mut self,
        name: impl Into<String>,
        store: S,
        every: Duration,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::invalid_config(
                "with_store",
                "call it inside a tokio runtime: a task of that runtime reads the store",
            )
        })?;
        let name = name.into();
        let figures = Arc::new(Mutex::new(StoreFigures::default()));
        let watched: Weak<Mutex<StoreFigures>> = Arc::downgrade(&figures);
        let every = every.max(Duration::from_millis(100));
        let shown = name.clone();
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(figures) = watched.upgrade() else {
                    return; // the collector is gone
                };
                let read = async {
                    let stored = store.count(LetterFilter::all()).await?;
                    let oldest = store.oldest().await?;
                    Ok::<_, crate::Error>(StoreFigures {
                        stored: Some(stored),
                        oldest,
                    })
                };
                let read = read.await.unwrap_or_else(|e| {
                    tracing::warn!(target: "tower_listener::dead_letter", store = %shown, error = %e, "cannot read the dead-letter store for its metrics");
                    StoreFigures::default()
                });
                *figures.lock().unwrap_or_else(PoisonError::into_inner) = read;
            }
        });
        self.stores.push(StoreGauges { name, figures });
        Ok(self)
    }

    /// Registers a collector of `manager` into `registry`.
    ///
    /// ```
    /// # use prometheus_client::registry::Registry;
    /// # let manager = tower_listener::ListenerManager::new(Default::default()).unwrap();
    /// let mut registry = Registry::default();
    /// tower_listener::prometheus::ManagerCollector::register(&mut registry, manager);
    /// ```
    pub fn register(registry: &mut Registry, manager: ListenerManager<T>) {
        registry.register_collector(Box::new(Self::new(manager)));
    }
}

/// The exported name of a breaker state.
fn state_label(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Open | CircuitState::ForcedOpen => "open",
        CircuitState::HalfOpen => "half_open",
        CircuitState::Closed | CircuitState::Disabled => "closed",
    }
}

/// Writes one family: its descriptor, then one sample per `(labels, value)`.
fn family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

impl<T: Send + Sync + 'static> Collector for ManagerCollector<T> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let listeners: Vec<(
            String,
            Arc<ListenerMetrics>,
            Stats,
            CircuitState,
            HealthStatus,
        )> = self
            .manager
            .listeners()
            .into_iter()
            .filter_map(|id| {
                let metrics = self.manager.listener_metrics(&id).ok()?;
                let stats = self.manager.listener_stats(&id).ok()?;
                let state = self.manager.circuit_breaker(&id).ok()?.state();
                let health = self.manager.listener_health(&id).ok()?;
                Some((id, metrics, stats, state, health))
            })
            .collect();
        let per_listener = |value: &dyn Fn(&Stats) -> u64| {
            listeners
                .iter()
                .map(|(id, _, stats, _, _)| ([("listener", id.as_str())], counter(value(stats))))
                .collect::<Vec<_>>()
        };

        family(
            &mut encoder,
            "tower_listener_events",
            "Events whose outcome is final, by outcome (`rejected` counts calls rejected by a breaker or a limit)",
            None,
            MetricType::Counter,
            listeners.iter().flat_map(|(id, _, s, _, _)| {
                [
                    ("succeeded", s.events_succeeded),
                    ("failed", s.events_failed - s.permanent_failures.min(s.events_failed)),
                    ("permanent", s.permanent_failures),
                    ("rejected", s.rejected),
                ]
                .map(|(outcome, v)| ([("listener", id.as_str()), ("outcome", outcome)], counter(v)))
            }),
        )?;
        for (name, help, coarse) in [
            (
                "tower_listener_event_duration",
                "Latency of whole events, retries and backoff included",
                true,
            ),
            (
                "tower_listener_attempt_duration",
                "Latency of single attempts",
                false,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (id, metrics, _, _, _) in &listeners {
                let histogram = if coarse {
                    metrics.event_latency_coarse(&BOUNDS)
                } else {
                    metrics.attempt_latency_coarse(&BOUNDS)
                };
                let buckets: Vec<(f64, u64)> = BOUNDS
                    .iter()
                    .map(|&nanos| nanos as f64 / 1e9)
                    .chain([f64::INFINITY])
                    .zip(histogram.counts.iter().copied())
                    .collect();
                family
                    .encode_family(&[("listener", id.as_str())])?
                    .encode_histogram::<NoLabelSet>(
                        histogram.sum_seconds,
                        histogram.count,
                        &buckets,
                        None,
                    )?;
            }
        }
        family(
            &mut encoder,
            "tower_listener_in_flight",
            "Events being processed now",
            None,
            MetricType::Gauge,
            listeners
                .iter()
                .map(|(id, _, s, _, _)| ([("listener", id.as_str())], gauge(s.in_flight as i64))),
        )?;
        family(
            &mut encoder,
            "tower_listener_retries",
            "Retry attempts (attempts after the first)",
            None,
            MetricType::Counter,
            per_listener(&|s| s.events_retried),
        )?;
        family(
            &mut encoder,
            "tower_listener_timeouts",
            "Attempts that ran past their timeout",
            None,
            MetricType::Counter,
            per_listener(&|s| s.timeouts),
        )?;
        family(
            &mut encoder,
            "tower_listener_rejections",
            "Calls rejected without running, by cause",
            None,
            MetricType::Counter,
            listeners.iter().flat_map(|(id, _, s, _, _)| {
                [
                    ("circuit_open", s.rejected_circuit_open),
                    ("overloaded", s.rejected_overloaded),
                ]
                .map(|(cause, v)| ([("listener", id.as_str()), ("cause", cause)], counter(v)))
            }),
        )?;
        family(
            &mut encoder,
            "tower_listener_circuit_breaker_state",
            "The breaker's state, one-hot: exactly one series per listener is 1",
            None,
            MetricType::Gauge,
            listeners.iter().flat_map(|(id, _, _, state, _)| {
                let now = state_label(*state);
                STATES.map(|label| {
                    (
                        [("listener", id.as_str()), ("state", label)],
                        gauge(i64::from(label == now)),
                    )
                })
            }),
        )?;
        family(
            &mut encoder,
            "tower_listener_circuit_breaker_transitions",
            "Breaker state changes, by the states before and after",
            None,
            MetricType::Counter,
            listeners.iter().flat_map(|(id, metrics, _, _, _)| {
                // Every pair of distinct states, from zero: a counter that appears only at its first
                // increment loses that increment to `rate()`.
                let mut counts = TRANSITIONS.map(|(from, to)| (from, to, 0u64));
                for (from, to, count) in metrics.circuit_transitions() {
                    let (from, to) = (state_label(from), state_label(to));
                    if let Some(entry) = counts.iter_mut().find(|(f, t, _)| *f == from && *t == to)
                    {
                        entry.2 += count;
                    }
                }
                counts.map(move |(from, to, count)| {
                    (
                        [("listener", id.as_str()), ("from", from), ("to", to)],
                        counter(count),
                    )
                })
            }),
        )?;
        family(
            &mut encoder,
            "tower_listener_dead_letters",
            "Dead letters a sink took, by reason",
            None,
            MetricType::Counter,
            listeners.iter().flat_map(|(id, metrics, _, _, _)| {
                metrics
                    .dead_letters_by_reason()
                    .into_iter()
                    .map(move |(reason, count)| {
                        (
                            [("listener", id.as_str()), ("reason", reason.as_str())],
                            counter(count),
                        )
                    })
            }),
        )?;
        family(
            &mut encoder,
            "tower_listener_dead_letter_failures",
            "Dead letters a sink failed to take",
            None,
            MetricType::Counter,
            per_listener(&|s| s.dead_letter_failures),
        )?;
        let now = SystemTime::now();
        let figures: Vec<(&str, StoreFigures)> = self
            .stores
            .iter()
            .map(|s| {
                let figures = *s.figures.lock().unwrap_or_else(PoisonError::into_inner);
                (s.name.as_str(), figures)
            })
            .collect();
        family(
            &mut encoder,
            "tower_listener_dead_letters_stored",
            "Letters held by a dead-letter store",
            None,
            MetricType::Gauge,
            figures
                .iter()
                .filter_map(|(name, f)| Some(([("store", *name)], gauge(f.stored? as i64)))),
        )?;
        family(
            &mut encoder,
            "tower_listener_dead_letter_oldest_age",
            "Age of a dead-letter store's oldest letter (0 when it is empty)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            figures.iter().filter_map(|(name, f)| {
                f.stored?;
                let age = f
                    .oldest
                    .and_then(|oldest| now.duration_since(oldest).ok())
                    .unwrap_or_default();
                Some(([("store", *name)], ConstGauge::new(age.as_secs_f64())))
            }),
        )?;
        family(
            &mut encoder,
            "tower_listener_redriven",
            "Dead letters redriven, by outcome",
            None,
            MetricType::Counter,
            listeners.iter().flat_map(|(id, _, s, _, _)| {
                [
                    ("succeeded", s.redriven_succeeded),
                    ("failed", s.redriven_failed),
                ]
                .map(|(outcome, v)| {
                    (
                        [("listener", id.as_str()), ("outcome", outcome)],
                        counter(v),
                    )
                })
            }),
        )?;
        family(
            &mut encoder,
            "tower_listener_source_settlements",
            "Deliveries from a source settled on the broker, by action",
            None,
            MetricType::Counter,
            listeners.iter().flat_map(|(id, _, s, _, _)| {
                [
                    ("ack", s.source_acks),
                    ("term", s.source_terms),
                    ("nak", s.source_naks),
                    ("progress", s.source_progress),
                ]
                .map(|(action, v)| ([("listener", id.as_str()), ("action", action)], counter(v)))
            }),
        )?;
        family(
            &mut encoder,
            "tower_listener_source_redeliveries",
            "Deliveries from a source that were redeliveries",
            None,
            MetricType::Counter,
            per_listener(&|s| s.redeliveries),
        )?;
        const STATUSES: [HealthStatus; 4] = [
            HealthStatus::Healthy,
            HealthStatus::Degraded,
            HealthStatus::Unhealthy,
            HealthStatus::CircuitOpen,
        ];
        let health = self.manager.health();
        family(
            &mut encoder,
            "tower_listener_health",
            "The manager's health, one-hot",
            None,
            MetricType::Gauge,
            STATUSES.map(|status| {
                (
                    [("status", status.as_str())],
                    gauge(i64::from(status == health)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "tower_listener_listener_health",
            "Each listener's health, one-hot",
            None,
            MetricType::Gauge,
            listeners.iter().flat_map(|(id, _, _, _, health)| {
                STATUSES.map(|status| {
                    (
                        [("listener", id.as_str()), ("status", status.as_str())],
                        gauge(i64::from(status == *health)),
                    )
                })
            }),
        )?;
        Ok(())
    }
}
