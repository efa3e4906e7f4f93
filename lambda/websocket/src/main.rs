//! `iris-websocket-lambda`: the WebSocket API's routes and `$connect` authorizer as an AWS Lambda
//! function (deployed as `bootstrap` on `provided.al2023`). Reads the jobs and connections tables,
//! posts through the Management API at `IRIS_WS_CALLBACK_URL`, verifies tokens with
//! `IRIS_TOKEN_PUBLIC_KEY` (unset: every connection is refused).

use std::sync::Arc;

use anyhow::Context;
use iris_core::config::IrisConfig;
use iris_notify::auth::TokenVerifier;
use iris_notify::lambda::WebSocketRoutes;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = IrisConfig::from_env()?;
    iris_core::telemetry::init(config.log_format);
    let verifier = match config.token_public_key.as_deref() {
        Some(key) => Some(TokenVerifier::from_public_key(key).context("IRIS_TOKEN_PUBLIC_KEY")?),
        None => {
            tracing::warn!("IRIS_TOKEN_PUBLIC_KEY is not set: every connection will be refused");
            None
        }
    };
    let callback_url = config
        .websocket_callback_url
        .clone()
        .context("IRIS_WS_CALLBACK_URL must name the WebSocket stage's Management API endpoint")?;
    let clients = iris_aws::AwsClients::from_environment().await;
    let core = Arc::new(iris_notify::NotifyCore::new(
        Arc::new(iris_aws::DynamoJobStore::new(clients.dynamodb.clone(), &config.jobs_table)),
        Arc::new(iris_aws::DynamoConnectionStore::new(clients.dynamodb.clone(), &config.connections_table)),
        Arc::new(iris_aws::ApiGatewayConnectionGateway::new(&clients.sdk_config, &callback_url)),
    ));
    let routes = Arc::new(WebSocketRoutes { core, verifier });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let routes = Arc::clone(&routes);
        async move { routes.handle(event.payload).await.map_err(lambda_runtime::Error::from) }
    }))
    .await
}
