//! `iris-notify`: the notify service on the backends `IRIS_BACKEND` names. Embedded (default): the
//! notify consumer and the local WebSocket gateway (`IRIS_WS_BIND`). AWS: the consumer alone,
//! posting through the API Gateway Management API at `IRIS_WS_CALLBACK_URL`.

use std::sync::Arc;

use iris_core::config::BackendKind;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let iris::process::ServiceProcess { config, backends, shutdown } = iris::process::ServiceProcess::start().await?;
    match config.backend {
        BackendKind::Embedded => {
            let listener = tokio::net::TcpListener::bind(config.websocket_bind).await?;
            tracing::info!(address = %listener.local_addr()?, "notify gateway bound");
            iris_notify::run_service(&backends, &config, listener, shutdown).await;
        }
        BackendKind::Aws => {
            let gateway = iris_backends::api_gateway_connections(&config).await?;
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
