//! `iris-notify`: the notify service and the local WebSocket gateway (`IRIS_WS_BIND`), on the
//! backends `IRIS_BACKEND` names (embedded by default).

use iris_shared::config::IrisConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IrisConfig::from_env()?;
    iris_shared::telemetry::init(config.log_format);
    let backends = iris_aws::open_configured_backends(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.websocket_bind).await?;
    tracing::info!(address = %listener.local_addr()?, "notify gateway bound");
    let shutdown = CancellationToken::new();
    iris_shared::cancel_on_shutdown_signals(shutdown.clone());
    iris_notify::run_service(&backends, &config, listener, shutdown).await;
    Ok(())
}
