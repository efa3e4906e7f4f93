//! `ConnectionGateway` on the API Gateway Management API: `PostToConnection` to a WebSocket
//! connection of the stage whose callback URL (`https://{api}.execute-api.{region}.amazonaws.com/{stage}`)
//! it is given. A connection that no longer exists (410 `GoneException`) is `PortError::Gone`, which
//! the notify core answers by removing it. Throttling (`LimitExceededException`, which API Gateway
//! also answers when the client's buffer is full) is retried by the SDK's standard retry strategy,
//! with more attempts and a shorter first backoff than the SDK default; what still fails is
//! `Unavailable`, so the event is redelivered.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use iris_core::ports::{ConnectionGateway, PortError};

use crate::error::port_error;

const BACKEND: &str = "apigateway";

/// Attempts of one post (first try included) before a throttled post is given up for now.
pub const POST_ATTEMPTS: u32 = 5;
/// First retry backoff of a throttled post (the SDK doubles it, with jitter, up to 2 s).
pub const POST_INITIAL_BACKOFF: Duration = Duration::from_millis(50);

pub struct ApiGatewayConnectionGateway {
    client: aws_sdk_apigatewaymanagement::Client,
}

impl ApiGatewayConnectionGateway {
    /// A gateway posting through the stage at `callback_url`, with `shared`'s credentials and region.
    pub fn new(shared: &aws_config::SdkConfig, callback_url: &str) -> ApiGatewayConnectionGateway {
        let retry = RetryConfig::standard()
            .with_max_attempts(POST_ATTEMPTS)
            .with_initial_backoff(POST_INITIAL_BACKOFF)
            .with_max_backoff(Duration::from_secs(2));
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(shared)
            .endpoint_url(callback_url.trim_end_matches('/'))
            .retry_config(retry)
            .build();
        ApiGatewayConnectionGateway { client: aws_sdk_apigatewaymanagement::Client::from_conf(config) }
    }
}

#[async_trait]
impl ConnectionGateway for ApiGatewayConnectionGateway {
    async fn post_to_connection(&self, connection_id: &str, payload: &str) -> Result<(), PortError> {
        let result = self
            .client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(payload.as_bytes()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) => {
                let gone = error.as_service_error().is_some_and(|e| e.is_gone_exception())
                    || error.raw_response().is_some_and(|response| response.status().as_u16() == 410);
                if gone {
                    return Err(PortError::Gone(connection_id.to_owned()));
                }
                let throttled = error.as_service_error().is_some_and(|e| e.is_limit_exceeded_exception())
                    || error.raw_response().is_some_and(|response| response.status().as_u16() == 429);
                if throttled {
                    return Err(PortError::unavailable(
                        BACKEND,
                        format!("posting to {connection_id} throttled after {POST_ATTEMPTS} attempts"),
                    ));
                }
                Err(port_error(BACKEND, error))
            }
        }
    }
}
