//! [`shutdown_signal`]: the future a tokio service waits on before it shuts down gracefully.

/// Resolves when the process is asked to stop: on Ctrl-C (SIGINT) everywhere, and on SIGTERM on unix (what
/// Kubernetes, systemd and `docker stop` send). Wait on it, then stop the manager so that in-flight events
/// finish or are dead-lettered; with axum, hand it to `axum::serve(..).with_graceful_shutdown(..)` first
/// (the `axum_service` example does).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_listener::{shutdown_signal, ListenerManager, ManagerConfig};
///
/// # async fn run() -> Result<(), tower_listener::Error> {
/// let manager = ListenerManager::new(ManagerConfig::named("shop"))?;
/// manager.start().await?;
/// // ... consume and dispatch events ...
/// shutdown_signal().await;
/// manager.stop(Duration::from_secs(30)).await?; // what is still running gets 30 s, then is dead-lettered
/// # Ok(()) }
/// ```
///
/// If a signal handler cannot be installed (the runtime has no signal driver), that signal is logged and
/// ignored, and the future waits for the other; it never resolves because of such an error.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(target: "tower_listener::manager", error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(e) => {
                tracing::error!(target: "tower_listener::manager", error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(target: "tower_listener::manager", "Ctrl-C received; shutting down"),
        () = terminate => tracing::info!(target: "tower_listener::manager", "SIGTERM received; shutting down"),
    }
}
