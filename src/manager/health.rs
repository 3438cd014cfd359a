//! Health: [`HealthStatus`] and the rules that derive it from a listener's breaker and windowed attempts.

use std::fmt;

use crate::circuit::CircuitState;
use crate::error::Error;
use crate::metrics::WindowedAttempts;

/// The health of a listener or of a whole manager.
///
/// ```
/// use tower_listener::{Event, HealthStatus, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_listener::Error> {
/// let manager = ListenerManager::new(ManagerConfig::default())?;
/// manager.register(listener_fn("audit", |_e: Event| async { Ok::<_, std::io::Error>(()) }), ListenerConfig::default())?;
/// assert_eq!(manager.health(), HealthStatus::Healthy);
/// manager.circuit_breaker("audit")?.force_open();
/// assert_eq!(manager.listener_health("audit")?, HealthStatus::CircuitOpen);
/// assert_eq!(manager.health().to_string(), "circuit-open");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum HealthStatus {
    /// Working normally.
    Healthy,
    /// Some failures, still serving.
    Degraded,
    /// Mostly failing.
    Unhealthy,
    /// A circuit breaker is open: calls are being rejected.
    CircuitOpen,
}

impl HealthStatus {
    /// "healthy", "degraded", "unhealthy" or "circuit-open".
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::CircuitOpen => "circuit-open",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a listener counts as degraded or unhealthy, by the failure ratio of its attempts over its health
/// window. Permanent failures are left out of the ratio: a malformed event says nothing about the
/// listener's dependencies.
///
/// ```
/// use tower_listener::HealthThresholds;
///
/// // Stricter than the default: degraded from 5 % failed attempts, unhealthy above 25 %.
/// let rule = HealthThresholds { degraded: 0.05, unhealthy: 0.25 };
/// assert!(rule.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthThresholds {
    /// A failure ratio at or above this is `Degraded`. Default 0.1.
    pub degraded: f64,
    /// A failure ratio above this is `Unhealthy`. Default 0.5.
    pub unhealthy: f64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            degraded: 0.1,
            unhealthy: 0.5,
        }
    }
}

impl HealthThresholds {
    /// Checks that `0 <= degraded <= unhealthy <= 1`.
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.degraded) {
            return Err(Error::invalid_config(
                "health.degraded",
                "must be between 0 and 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.unhealthy) || self.unhealthy < self.degraded {
            return Err(Error::invalid_config(
                "health.unhealthy",
                "must be between health.degraded and 1",
            ));
        }
        Ok(())
    }

    /// The health of a listener whose breaker is in `circuit` and whose attempts inside the health window
    /// are `attempts`. Open (or forced open) → `CircuitOpen`; no attempts → `Healthy`; ratio above
    /// `unhealthy` → `Unhealthy`; at or above `degraded` → `Degraded`; else `Healthy`.
    pub fn listener_health(
        &self,
        circuit: CircuitState,
        attempts: WindowedAttempts,
    ) -> HealthStatus {
        if circuit.is_open() {
            return HealthStatus::CircuitOpen;
        }
        if attempts.succeeded + attempts.failed == 0 {
            return HealthStatus::Healthy;
        }
        let ratio = attempts.failure_ratio();
        if ratio > self.unhealthy {
            HealthStatus::Unhealthy
        } else if ratio >= self.degraded {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }
}

/// How a manager's health follows from its listeners'.
///
/// No listeners → `Healthy`; any listener `CircuitOpen` → `CircuitOpen`; else at least `unhealthy_share`
/// of the listeners `Unhealthy` → `Unhealthy`; else fewer than `healthy_share` of them `Healthy` →
/// `Degraded`; else `Healthy`. So a manager whose listeners are merely degraded is never `Unhealthy`: its
/// `/health` does not answer 503, and an orchestrator does not restart a service that is working.
///
/// ```
/// use tower_listener::{HealthStatus::*, ManagerHealthThresholds};
///
/// let rule = ManagerHealthThresholds::default(); // healthy_share 0.8, unhealthy_share 0.5
/// assert_eq!(rule.manager_health([Healthy, Degraded, Degraded]), Degraded);
/// assert_eq!(rule.manager_health([Unhealthy, Unhealthy, Healthy]), Unhealthy);
/// assert_eq!(rule.manager_health([Healthy, CircuitOpen, Healthy]), CircuitOpen);
/// assert_eq!(rule.manager_health([Healthy, Healthy]), Healthy);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ManagerHealthThresholds {
    /// Fewer than this share of `Healthy` listeners is `Degraded`. Default 0.8. In `[0, 1]`; 0 never
    /// reports `Degraded`.
    pub healthy_share: f64,
    /// At least this share of `Unhealthy` listeners is `Unhealthy`. Default 0.5. In `(0, 1]`: a share of
    /// 0 would call every manager unhealthy.
    pub unhealthy_share: f64,
}

impl Default for ManagerHealthThresholds {
    fn default() -> Self {
        ManagerHealthThresholds {
            healthy_share: 0.8,
            unhealthy_share: 0.5,
        }
    }
}

impl ManagerHealthThresholds {
    /// Checks that `healthy_share` is in `[0, 1]` and `unhealthy_share` in `(0, 1]` (the two are
    /// independent: one counts healthy listeners, the other unhealthy ones).
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.healthy_share) {
            return Err(Error::invalid_config(
                "health.healthy_share",
                "must be between 0 and 1",
            ));
        }
        if !(self.unhealthy_share > 0.0 && self.unhealthy_share <= 1.0) {
            return Err(Error::invalid_config(
                "health.unhealthy_share",
                "must be greater than 0 and at most 1",
            ));
        }
        Ok(())
    }

    /// The manager's health from its listeners' (see the type's docs for the rule).
    pub fn manager_health(
        &self,
        listeners: impl IntoIterator<Item = HealthStatus>,
    ) -> HealthStatus {
        let (mut total, mut healthy, mut unhealthy) = (0usize, 0usize, 0usize);
        for status in listeners {
            if status == HealthStatus::CircuitOpen {
                return HealthStatus::CircuitOpen;
            }
            total += 1;
            healthy += usize::from(status == HealthStatus::Healthy);
            unhealthy += usize::from(status == HealthStatus::Unhealthy);
        }
        if total == 0 {
            return HealthStatus::Healthy;
        }
        let share = |n: usize| n as f64 / total as f64;
        if share(unhealthy) >= self.unhealthy_share {
            HealthStatus::Unhealthy
        } else if share(healthy) < self.healthy_share {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::*;

    fn field(result: Result<(), Error>) -> Option<&'static str> {
        match result {
            Ok(()) => None,
            Err(Error::InvalidConfig { field, .. }) => Some(field),
            Err(other) => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    fn attempts(succeeded: u64, failed: u64) -> WindowedAttempts {
        WindowedAttempts { succeeded, failed }
    }

    #[test]
    fn listener_thresholds_accept_their_bounds_and_equal_values_and_refuse_the_rest() {
        let rule = |degraded, unhealthy| {
            field(
                HealthThresholds {
                    degraded,
                    unhealthy,
                }
                .validate(),
            )
        };
        // 0 <= degraded <= unhealthy <= 1, equality included at every step.
        assert_eq!(rule(0.3, 0.3), None);
        assert_eq!(rule(0.0, 0.0), None);
        assert_eq!(rule(1.0, 1.0), None);
        assert_eq!(rule(0.0, 1.0), None);
        assert_eq!(rule(-0.01, 0.5), Some("health.degraded"));
        assert_eq!(rule(1.01, 1.0), Some("health.degraded"));
        assert_eq!(rule(f64::NAN, 0.5), Some("health.degraded"));
        assert_eq!(rule(0.3, 0.29), Some("health.unhealthy"));
        assert_eq!(rule(0.3, 1.01), Some("health.unhealthy"));
        assert_eq!(rule(0.0, -0.01), Some("health.unhealthy"));
        assert_eq!(rule(0.3, f64::NAN), Some("health.unhealthy"));
    }

    #[test]
    fn a_listener_ratio_on_a_threshold_takes_the_documented_side() {
        let rule = HealthThresholds {
            degraded: 0.25,
            unhealthy: 0.5,
        };
        let closed = CircuitState::Closed;
        assert_eq!(rule.listener_health(closed, attempts(0, 0)), Healthy);
        assert_eq!(rule.listener_health(closed, attempts(4, 0)), Healthy);
        assert_eq!(rule.listener_health(closed, attempts(4, 1)), Healthy); // 0.2
        assert_eq!(rule.listener_health(closed, attempts(3, 1)), Degraded); // 0.25: at degraded
        assert_eq!(rule.listener_health(closed, attempts(1, 1)), Degraded); // 0.5: not above unhealthy
        assert_eq!(rule.listener_health(closed, attempts(1, 2)), Unhealthy); // 0.67
        assert_eq!(rule.listener_health(closed, attempts(0, 3)), Unhealthy);
        for open in [CircuitState::Open, CircuitState::ForcedOpen] {
            assert_eq!(rule.listener_health(open, attempts(0, 0)), CircuitOpen);
            assert_eq!(rule.listener_health(open, attempts(9, 0)), CircuitOpen);
        }
        for admitting in [CircuitState::HalfOpen, CircuitState::Disabled] {
            assert_eq!(rule.listener_health(admitting, attempts(9, 0)), Healthy);
        }
    }

    #[test]
    fn manager_thresholds_accept_their_bounds_and_refuse_the_rest() {
        let rule = |healthy_share, unhealthy_share| {
            field(
                ManagerHealthThresholds {
                    healthy_share,
                    unhealthy_share,
                }
                .validate(),
            )
        };
        // healthy_share in [0, 1], unhealthy_share in (0, 1]; the two are independent.
        assert_eq!(rule(0.0, 1.0), None);
        assert_eq!(rule(1.0, 1.0), None);
        assert_eq!(rule(0.5, 0.5), None);
        assert_eq!(rule(0.2, 0.9), None);
        assert_eq!(rule(1.0, 0.001), None);
        assert_eq!(rule(-0.01, 0.5), Some("health.healthy_share"));
        assert_eq!(rule(1.01, 0.5), Some("health.healthy_share"));
        assert_eq!(rule(f64::NAN, 0.5), Some("health.healthy_share"));
        assert_eq!(rule(0.8, 0.0), Some("health.unhealthy_share"));
        assert_eq!(rule(0.8, 1.01), Some("health.unhealthy_share"));
        assert_eq!(rule(0.8, f64::NAN), Some("health.unhealthy_share"));
    }

    #[test]
    fn a_manager_share_on_a_threshold_takes_the_documented_side() {
        let rule = ManagerHealthThresholds {
            healthy_share: 0.75,
            unhealthy_share: 0.5,
        };
        assert_eq!(rule.manager_health([]), Healthy);
        // Exactly 3 of 4 healthy is not fewer than 0.75: healthy.
        assert_eq!(
            rule.manager_health([Healthy, Healthy, Healthy, Degraded]),
            Healthy
        );
        assert_eq!(
            rule.manager_health([Healthy, Healthy, Degraded, Degraded]),
            Degraded
        );
        // Exactly half unhealthy reaches 0.5: unhealthy; one in four does not.
        assert_eq!(
            rule.manager_health([Unhealthy, Unhealthy, Healthy, Healthy]),
            Unhealthy
        );
        assert_eq!(
            rule.manager_health([Unhealthy, Healthy, Healthy, Healthy]),
            Healthy
        );
        assert_eq!(
            rule.manager_health([Unhealthy, Degraded, Healthy, Healthy]),
            Degraded
        );
        // Any open breaker wins, wherever it is.
        assert_eq!(
            rule.manager_health([Healthy, Healthy, CircuitOpen]),
            CircuitOpen
        );
        assert_eq!(
            rule.manager_health([CircuitOpen, Unhealthy, Unhealthy]),
            CircuitOpen
        );
        // A healthy share of 0 never reports Degraded.
        let lenient = ManagerHealthThresholds {
            healthy_share: 0.0,
            unhealthy_share: 1.0,
        };
        assert_eq!(lenient.manager_health([Degraded, Degraded]), Healthy);
        assert_eq!(lenient.manager_health([Unhealthy, Degraded]), Healthy);
        assert_eq!(lenient.manager_health([Unhealthy, Unhealthy]), Unhealthy);
    }

    #[test]
    fn statuses_have_stable_names() {
        let names = [
            (Healthy, "healthy"),
            (Degraded, "degraded"),
            (Unhealthy, "unhealthy"),
            (CircuitOpen, "circuit-open"),
        ];
        for (status, name) in names {
            assert_eq!(status.as_str(), name);
            assert_eq!(status.to_string(), name);
        }
    }
}
