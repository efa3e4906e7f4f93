//! IRIS Oculus common library: the domain model (jobs, events, keys), the ports and their embedded
//! adapters, the worker runtime every service runs on, and volume geometry and NIfTI I/O.
//! See ARCHITECTURE.md at the repository root.

pub mod backends;
pub mod config;
pub mod contract;
pub mod embedded;
pub mod events;
pub mod fault;
pub mod ingest_report;
pub mod job;
pub mod keys;
pub mod labels;
pub mod memory;
pub mod nifti_codec;
pub mod phantom;
pub mod ports;
pub mod runtime;
pub mod s3_event;
pub mod stage;
pub mod telemetry;
pub mod time;
pub mod volume;

/// Resolves when SIGINT or SIGTERM arrives, cancelling `token`: the services' shutdown signal.
pub fn cancel_on_shutdown_signals(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        tracing::info!("shutdown requested: finishing in-flight work");
        token.cancel();
    });
}
