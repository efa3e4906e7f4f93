//! The one place that knows both adapter families: it opens the backends a configuration names
//! (`IRIS_BACKEND`): the embedded ones in the data directory, or, with the `aws` feature, S3, SQS,
//! DynamoDB and EventBridge (whose resources must exist: `iris aws bootstrap` or the CDK app).
//! Fault injection (`IRIS_FAULT_*`, off by default) wraps them here, once, as the configuration asks.
//!
//! Binaries call [`open`]; service libraries never see which adapters they were given.

use iris_core::backends::Backends;
use iris_core::config::{BackendKind, IrisConfig};
use iris_core::fault::with_injected_faults;
use iris_core::ports::PortError;

/// The backends `config.backend` names, with the configuration's fault injection applied.
pub async fn open(config: &IrisConfig) -> Result<Backends, PortError> {
    let backends = match config.backend {
        BackendKind::Embedded => iris_embedded::EmbeddedBackends::open(config)?.ports(),
        BackendKind::Aws => open_aws(config).await?,
    };
    Ok(with_injected_faults(backends, config))
}

#[cfg(feature = "aws")]
async fn open_aws(config: &IrisConfig) -> Result<Backends, PortError> {
    iris_aws::open_backends(config, &iris_aws::AwsClients::from_environment().await).await
}

#[cfg(not(feature = "aws"))]
async fn open_aws(_config: &IrisConfig) -> Result<Backends, PortError> {
    Err(PortError::Invalid {
        backend: "configuration",
        message: "IRIS_BACKEND=aws, but this build has no AWS adapters (the `aws` feature of iris-backends)".into(),
    })
}

/// The API Gateway Management API of the WebSocket stage at `IRIS_WS_CALLBACK_URL`: where the
/// notify service posts on the AWS backend.
#[cfg(feature = "aws")]
pub async fn api_gateway_connections(
    config: &IrisConfig,
) -> Result<std::sync::Arc<dyn iris_core::ports::ConnectionGateway>, PortError> {
    let callback_url = config.websocket_callback_url.clone().ok_or_else(|| PortError::Invalid {
        backend: "configuration",
        message: "IRIS_WS_CALLBACK_URL must name the WebSocket stage's Management API endpoint".into(),
    })?;
    let clients = iris_aws::AwsClients::from_environment().await;
    Ok(std::sync::Arc::new(iris_aws::ApiGatewayConnectionGateway::new(&clients.sdk_config, &callback_url)))
}
