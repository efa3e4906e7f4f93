//! The port contract suites (iris_core::contract) against the AWS adapters, on a moto server
//! (real AWS wire protocols, offline). `scripts/test.sh` starts moto and sets IRIS_MOTO_URL.
//! Each test bootstraps its own uniquely named resources, so tests run in parallel on one server.

use std::sync::Arc;

use iris_aws::{AwsClients, bootstrap, local};
use iris_core::config::IrisConfig;
use iris_core::contract;
use iris_core::keys::QueueRole;
use iris_core::ports::JobStore;

/// A fresh, bootstrapped set of resources on the test moto server, or `None` (skipped) without one.
async fn moto_resources(test: &str, max_attempts: u32) -> Option<(IrisConfig, AwsClients)> {
    let clients = local::clients_for_endpoint(&iris_core::testing::moto_url(test)?).await;
    let attempts = max_attempts.to_string();
    let config = local::isolated_config(&local::unique_prefix(), &[("IRIS_MAX_ATTEMPTS", &attempts)]).expect("config");
    bootstrap::bootstrap(&config, &clients).await.expect("bootstrap on moto");
    Some((config, clients))
}

#[tokio::test]
async fn s3_object_store_keeps_the_object_store_contract() {
    const TEST: &str = "s3_object_store_keeps_the_object_store_contract";
    let Some((config, clients)) = moto_resources(TEST, 4).await else { return };
    let store = iris_aws::S3ObjectStore::new(clients.s3.clone(), &config.bucket);
    contract::object_store_contract(&store).await;
}

#[tokio::test]
async fn sqs_work_queue_keeps_the_work_queue_contract() {
    // Redrive after max_attempts + 1 = 3 receives. The notify queue gets no S3 test event.
    const TEST: &str = "sqs_work_queue_keeps_the_work_queue_contract";
    let Some((config, clients)) = moto_resources(TEST, 2).await else { return };
    let queue = iris_aws::SqsWorkQueue::open(clients.sqs.clone(), &config.queue_name(QueueRole::Notify)).await.unwrap();
    contract::work_queue_contract(&queue, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamo_job_store_keeps_the_job_store_contract() {
    const TEST: &str = "dynamo_job_store_keeps_the_job_store_contract";
    let Some((config, clients)) = moto_resources(TEST, 4).await else { return };
    let store: Arc<dyn JobStore> =
        Arc::new(iris_aws::DynamoJobStore::new(clients.dynamodb.clone(), &config.jobs_table));
    contract::job_store_contract(store).await;
}

#[tokio::test]
async fn eventbridge_bus_keeps_the_event_bus_contract() {
    const TEST: &str = "eventbridge_bus_keeps_the_event_bus_contract";
    let Some((config, clients)) = moto_resources(TEST, 4).await else { return };
    let bus = iris_aws::EventBridgeBus::new(clients.eventbridge.clone(), &config.event_bus);
    let target =
        iris_aws::SqsWorkQueue::open(clients.sqs.clone(), &config.queue_name(QueueRole::Notify)).await.unwrap();
    contract::event_bus_contract(&bus, &target).await;
}

#[tokio::test]
async fn dynamo_connection_store_keeps_the_connection_store_contract() {
    const TEST: &str = "dynamo_connection_store_keeps_the_connection_store_contract";
    let Some((config, clients)) = moto_resources(TEST, 4).await else { return };
    let store = iris_aws::DynamoConnectionStore::new(clients.dynamodb.clone(), &config.connections_table);
    contract::connection_store_contract(&store).await;
}

#[tokio::test]
async fn bootstrap_is_idempotent_and_creates_the_notification_rules() {
    const TEST: &str = "bootstrap_is_idempotent_and_creates_the_notification_rules";
    let Some((config, clients)) = moto_resources(TEST, 4).await else { return };
    let again = bootstrap::bootstrap(&config, &clients).await.expect("second bootstrap");
    assert_eq!(again.queues.len(), 8, "four queues, each with a dead-letter queue");
    let notifications = clients.s3.get_bucket_notification_configuration().bucket(&config.bucket).send().await.unwrap();
    let mut rules: Vec<(String, String)> = notifications
        .queue_configurations()
        .iter()
        .map(|q| {
            let filters: Vec<String> = q
                .filter()
                .and_then(|f| f.key())
                .map(|k| {
                    k.filter_rules()
                        .iter()
                        .map(|r| format!("{}={}", r.name().map(|n| n.as_str()).unwrap_or(""), r.value().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            (q.id().unwrap_or_default().to_owned(), filters.join(","))
        })
        .collect();
    rules.sort();
    let mut expected: Vec<(String, String)> = iris_core::keys::PIPELINE_NOTIFICATION_RULES
        .iter()
        .map(|r| {
            let mut filters = vec![format!("prefix={}", r.prefix)];
            if !r.suffix.is_empty() {
                filters.push(format!("suffix={}", r.suffix));
            }
            (r.id.to_owned(), filters.join(","))
        })
        .collect();
    expected.sort();
    assert_eq!(
        rules.iter().map(|(id, f)| (id.clone(), f.to_lowercase())).collect::<Vec<_>>(),
        expected.iter().map(|(id, f)| (id.clone(), f.to_lowercase())).collect::<Vec<_>>(),
        "the bucket's rules are the pipeline's rules"
    );
}
