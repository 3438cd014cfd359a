//! Health: [`HealthStatus`] and the rules that derive it from a listener's breaker and windowed attempts.

use std::fmt;

use crate::circuit::CircuitState;
use crate::error::Error;
use crate::metrics::WindowedAttempts;

/// The health of a listener or of a whole manager.
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
/// window.
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

/// When a manager counts as healthy or degraded, by the share of its listeners that are healthy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ManagerHealthThresholds {
    /// At least this share of healthy listeners is `Healthy`. Default 0.8.
    pub healthy_share: f64,
    /// At least this share is `Degraded`; less is `Unhealthy`. Default 0.5.
    pub degraded_share: f64,
}

impl Default for ManagerHealthThresholds {
    fn default() -> Self {
        ManagerHealthThresholds {
            healthy_share: 0.8,
            degraded_share: 0.5,
        }
    }
}

impl ManagerHealthThresholds {
    /// Checks that `0 <= degraded_share <= healthy_share <= 1`.
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.healthy_share) {
            return Err(Error::invalid_config(
                "health.healthy_share",
                "must be between 0 and 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.degraded_share) || self.degraded_share > self.healthy_share {
            return Err(Error::invalid_config(
                "health.degraded_share",
                "must be between 0 and health.healthy_share",
            ));
        }
        Ok(())
    }

    /// The manager's health from its listeners': none → `Healthy`; any `CircuitOpen` → `CircuitOpen`;
    /// else by the share of `Healthy` listeners.
    pub fn manager_health(
        &self,
        listeners: impl IntoIterator<Item = HealthStatus>,
    ) -> HealthStatus {
        let (mut total, mut healthy) = (0usize, 0usize);
        for status in listeners {
            if status == HealthStatus::CircuitOpen {
                return HealthStatus::CircuitOpen;
            }
            total += 1;
            healthy += usize::from(status == HealthStatus::Healthy);
        }
        if total == 0 {
            return HealthStatus::Healthy;
        }
        let share = healthy as f64 / total as f64;
        if share >= self.healthy_share {
            HealthStatus::Healthy
        } else if share >= self.degraded_share {
            HealthStatus::Degraded
        } else {
            HealthStatus::Unhealthy
        }
    }
}
