//! `iris-notify`: the notify service on the backends `IRIS_BACKEND` names. Embedded (default): the
//! notify consumer and the local WebSocket gateway (`IRIS_WS_BIND`). AWS: the consumer alone,
//! posting through the API Gateway Management API at `IRIS_WS_CALLBACK_URL`.

use std::sync::Arc;

use anyhow::Context;
use iris_shared::config::{BackendKind, IrisConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IrisConfig::from_env()?;
    iris_shared::telemetry::init(config.log_format);
    let shutdown = CancellationToken::new();
    iris_shared::cancel_on_shutdown_signals(shutdown.clone());
    match config.backend {
        BackendKind::Embedded => {
            let backends = iris_aws::open_configured_backends(&config).await?;
            let listener = tokio::net::TcpListener::bind(config.websocket_bind).await?;
            tracing::info!(address = %listener.local_addr()?, "notify gateway bound");
            iris_notify::run_service(&backends, &config, listener, shutdown).await;
        }
        BackendKind::Aws => {
            let callback_url = config
                .websocket_callback_url
                .clone()
                .context("IRIS_WS_CALLBACK_URL must name the WebSocket stage's Management API endpoint")?;
            let clients = iris_aws::AwsClients::from_environment().await;
            let backends =
                iris_shared::fault::with_injected_faults(iris_aws::open_backends(&config, &clients).await?, &config);
            let gateway = Arc::new(iris_aws::ApiGatewayConnectionGateway::new(&clients.sdk_config, &callback_url));
            let core = Arc::new(iris_notify::NotifyCore::new(
                Arc::clone(&backends.jobs),
                Arc::clone(&backends.connections),
                gateway,
            ));
            iris_notify::run_consumer(&backends, &config, core, shutdown).await;
        }
    }
    Ok(())
}
