//! AWS adapters for the core ports: `S3ObjectStore`, `SqsWorkQueue`, `DynamoJobStore`,
//! `DynamoConnectionStore`, `EventBridgeBus`, `ApiGatewayConnectionGateway`, and `bootstrap`, which creates every resource the
//! pipeline needs (the same names and notification rules the CDK app deploys).
//!
//! The only crate that imports `aws_sdk_*`. Endpoints follow the standard AWS configuration
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials chain); with an endpoint URL set (moto, LocalStack)
//! S3 uses path-style addressing.

pub mod apigateway;
pub mod bootstrap;
pub mod contract;
pub mod dynamo;
pub mod error;
pub mod eventbridge;
pub mod local;
pub mod s3;
pub mod sqs;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::keys::QueueRole;
use iris_core::ports::{PortError, WorkQueue};

pub use apigateway::ApiGatewayConnectionGateway;
pub use dynamo::{DynamoConnectionStore, DynamoJobStore};
pub use eventbridge::EventBridgeBus;
pub use s3::S3ObjectStore;
pub use sqs::SqsWorkQueue;

/// One client per service, built from one loaded AWS configuration.
#[derive(Clone)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    /// The configuration the clients came from (region, credentials, endpoint), for clients made
    /// later such as the Management API's, whose endpoint is a stage's callback URL.
    pub sdk_config: aws_config::SdkConfig,
}

impl AwsClients {
    /// Loads the standard AWS configuration from the environment.
    pub async fn from_environment() -> AwsClients {
        let shared = aws_config::load_from_env().await;
        AwsClients::from_sdk_config(&shared)
    }

    pub fn from_sdk_config(shared: &aws_config::SdkConfig) -> AwsClients {
        let path_style = shared.endpoint_url().is_some();
        let s3 = aws_sdk_s3::config::Builder::from(shared).force_path_style(path_style).build();
        // Long polls wait up to 20 s: every HTTP timeout of the SQS client must be longer.
        let sqs_timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .operation_attempt_timeout(Duration::from_secs(35))
            .operation_timeout(Duration::from_secs(90))
            .build();
        let sqs = aws_sdk_sqs::config::Builder::from(shared).timeout_config(sqs_timeouts).build();
        AwsClients {
            s3: aws_sdk_s3::Client::from_conf(s3),
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
            dynamodb: aws_sdk_dynamodb::Client::new(shared),
            eventbridge: aws_sdk_eventbridge::Client::new(shared),
            sdk_config: shared.clone(),
        }
    }
}

/// The AWS adapters of a configuration, as ports. Resources must exist (`bootstrap` or the CDK app).
pub async fn open_backends(config: &IrisConfig, clients: &AwsClients) -> Result<Backends, PortError> {
    let mut queues: BTreeMap<QueueRole, Arc<dyn WorkQueue>> = BTreeMap::new();
    for role in QueueRole::ALL {
        let queue = SqsWorkQueue::open(clients.sqs.clone(), &config.queue_name(role)).await?;
        queues.insert(role, Arc::new(queue));
    }
    Ok(Backends {
        objects: Arc::new(S3ObjectStore::new(clients.s3.clone(), &config.bucket)),
        jobs: Arc::new(DynamoJobStore::new(clients.dynamodb.clone(), &config.jobs_table)),
        events: Arc::new(EventBridgeBus::new(clients.eventbridge.clone(), &config.event_bus)),
        connections: Arc::new(DynamoConnectionStore::new(clients.dynamodb.clone(), &config.connections_table)),
        queues,
    })
}
