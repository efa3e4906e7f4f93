//! Creates every resource the pipeline needs on the configured endpoint, idempotently: the bucket
//! and its notification configuration (the same prefix/suffix rules as the embedded store), each
//! queue with its dead-letter queue and redrive policy, the job and connection tables with their
//! indexes and TTL, and the event bus with its rule to the notify queue.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, Event, FilterRule, FilterRuleName, NotificationConfiguration,
    NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter,
};
use aws_sdk_sqs::types::QueueAttributeName;
use iris_core::config::IrisConfig;
use iris_core::events::EVENT_SOURCE;
use iris_core::keys::{PIPELINE_NOTIFICATION_RULES, QueueRole};
use iris_core::ports::PortError;
use serde::Serialize;

use crate::AwsClients;
use crate::dynamo::{JOB_INDEX, USER_INDEX};
use crate::error::{error_code, port_error};

/// What `bootstrap` created or found: every name and address, for `iris aws bootstrap` to print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub bucket: String,
    /// Queue name → URL, dead-letter queues included.
    pub queues: BTreeMap<String, String>,
    pub jobs_table: String,
    pub connections_table: String,
    pub event_bus: String,
    /// Rule name → target queue name.
    pub event_rules: BTreeMap<String, String>,
    /// Notification rule id → (prefix, suffix, queue name).
    pub notifications: BTreeMap<String, (String, String, String)>,
}

/// Retention of every queue's messages, and of dead letters: 14 days (SQS's maximum).
pub const MESSAGE_RETENTION_SECONDS: u32 = 14 * 24 * 3600;

fn build_error(error: impl std::fmt::Display) -> PortError {
    PortError::Invalid { backend: "bootstrap", message: error.to_string() }
}

/// The name of the EventBridge rule that feeds a queue from the pipeline's events.
pub fn event_rule_name(config: &IrisConfig, queue_name: &str) -> String {
    format!("{}-to-{}", config.event_bus, queue_name)
}

/// Creates (or finds) every resource of `config`.
pub async fn bootstrap(config: &IrisConfig, clients: &AwsClients) -> Result<Resources, PortError> {
    create_bucket(config, clients).await?;
    let mut queues = BTreeMap::new();
    let mut arns = BTreeMap::new();
    for role in QueueRole::ALL {
        let name = config.queue_name(role);
        let (url, arn, dead_letter_url) = create_queue_with_dead_letter_queue(config, clients, &name).await?;
        queues.insert(name.clone(), url);
        queues.insert(format!("{name}-dlq"), dead_letter_url);
        arns.insert(role, arn);
    }
    let notifications = configure_notifications(config, clients, &arns).await?;
    create_jobs_table(config, clients).await?;
    create_connections_table(config, clients).await?;
    create_event_bus(config, clients).await?;
    let notify_queue = config.queue_name(QueueRole::Notify);
    let rule = route_events_to_queue(config, clients, &notify_queue).await?;
    Ok(Resources {
        bucket: config.bucket.clone(),
        queues,
        jobs_table: config.jobs_table.clone(),
        connections_table: config.connections_table.clone(),
        event_bus: config.event_bus.clone(),
        event_rules: BTreeMap::from([(rule, notify_queue)]),
        notifications,
    })
}

async fn create_bucket(config: &IrisConfig, clients: &AwsClients) -> Result<(), PortError> {
    let region = clients.s3.config().region().map(|r| r.as_ref().to_owned()).unwrap_or_else(|| "us-east-1".into());
    let mut request = clients.s3.create_bucket().bucket(&config.bucket);
    if region != "us-east-1" {
        request = request.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build(),
        );
    }
    match request.send().await {
        Ok(_) => Ok(()),
        Err(error) if matches!(error_code(&error), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
        Err(error) => Err(port_error("s3", error)),
    }
}

async fn queue_arn(clients: &AwsClients, url: &str) -> Result<String, PortError> {
    let attributes = clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| port_error("sqs", e))?;
    attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| build_error(format!("queue {url} has no ARN")))
}

/// Creates `<name>-dlq` and `<name>` with a redrive policy to it; returns (url, arn, dead-letter url).
async fn create_queue_with_dead_letter_queue(
    config: &IrisConfig,
    clients: &AwsClients,
    name: &str,
) -> Result<(String, String, String), PortError> {
    let dead_letter = clients
        .sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(QueueAttributeName::MessageRetentionPeriod, MESSAGE_RETENTION_SECONDS.to_string())
        .send()
        .await
        .map_err(|e| port_error("sqs", e))?;
    let dead_letter_url = dead_letter.queue_url().unwrap_or_default().to_owned();
    let dead_letter_arn = queue_arn(clients, &dead_letter_url).await?;
    // One receive beyond the workers' attempts: a worker sees an exhausted message first and fails
    // its job; the redrive policy catches whatever still slips through.
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dead_letter_arn,
        "maxReceiveCount": config.max_attempts + 1,
    });
    let visibility = config.visibility_timeout.as_secs().max(1);
    let created = clients
        .sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, visibility.to_string())
        .attributes(QueueAttributeName::MessageRetentionPeriod, MESSAGE_RETENTION_SECONDS.to_string())
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .map_err(|e| port_error("sqs", e))?;
    let url = created.queue_url().unwrap_or_default().to_owned();
    let arn = queue_arn(clients, &url).await?;
    // S3 and EventBridge may send to the queue, but only from this bucket and this bus's rules.
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "pipeline-producers",
            "Effect": "Allow",
            "Principal": {"Service": ["s3.amazonaws.com", "events.amazonaws.com"]},
            "Action": "sqs:SendMessage",
            "Resource": arn,
            "Condition": {"ArnLike": {"aws:SourceArn": [
                format!("arn:aws:s3:::{}", config.bucket),
                format!("arn:aws:events:*:*:rule/{}/*", config.event_bus),
            ]}}
        }]
    });
    clients
        .sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::Policy, policy.to_string())
        .send()
        .await
        .map_err(|e| port_error("sqs", e))?;
    Ok((url, arn, dead_letter_url))
}

async fn configure_notifications(
    config: &IrisConfig,
    clients: &AwsClients,
    arns: &BTreeMap<QueueRole, String>,
) -> Result<BTreeMap<String, (String, String, String)>, PortError> {
    let mut configurations = Vec::new();
    let mut described = BTreeMap::new();
    for rule in &PIPELINE_NOTIFICATION_RULES {
        let mut filters = vec![FilterRule::builder().name(FilterRuleName::Prefix).value(rule.prefix).build()];
        if !rule.suffix.is_empty() {
            filters.push(FilterRule::builder().name(FilterRuleName::Suffix).value(rule.suffix).build());
        }
        configurations.push(
            QueueConfiguration::builder()
                .id(rule.id)
                .queue_arn(&arns[&rule.queue])
                .events(Event::S3ObjectCreated)
                .filter(
                    NotificationConfigurationFilter::builder()
                        .key(S3KeyFilter::builder().set_filter_rules(Some(filters)).build())
                        .build(),
                )
                .build()
                .map_err(build_error)?,
        );
        described.insert(
            rule.id.to_owned(),
            (rule.prefix.to_owned(), rule.suffix.to_owned(), config.queue_name(rule.queue)),
        );
    }
    clients
        .s3
        .put_bucket_notification_configuration()
        .bucket(&config.bucket)
        .notification_configuration(
            NotificationConfiguration::builder().set_queue_configurations(Some(configurations)).build(),
        )
        .send()
        .await
        .map_err(|e| port_error("s3", e))?;
    Ok(described)
}

fn attribute(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, PortError> {
    AttributeDefinition::builder().attribute_name(name).attribute_type(kind).build().map_err(build_error)
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, PortError> {
    KeySchemaElement::builder().attribute_name(name).key_type(kind).build().map_err(build_error)
}

fn index(name: &str, keys: Vec<KeySchemaElement>) -> Result<GlobalSecondaryIndex, PortError> {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .set_key_schema(Some(keys))
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(build_error)
}

async fn create_table(
    clients: &AwsClients,
    table: &str,
    attributes: Vec<AttributeDefinition>,
    keys: Vec<KeySchemaElement>,
    indexes: Vec<GlobalSecondaryIndex>,
) -> Result<(), PortError> {
    let created = clients
        .dynamodb
        .create_table()
        .table_name(table)
        .set_attribute_definitions(Some(attributes))
        .set_key_schema(Some(keys))
        .set_global_secondary_indexes(Some(indexes))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(error) if error_code(&error) == Some("ResourceInUseException") => {}
        Err(error) => return Err(port_error("dynamodb", error)),
    }
    // Wait until the table is active (immediate on moto; seconds on AWS).
    for _ in 0..120 {
        let described =
            clients.dynamodb.describe_table().table_name(table).send().await.map_err(|e| port_error("dynamodb", e))?;
        if described.table().and_then(|t| t.table_status()).map(|s| s.as_str() == "ACTIVE").unwrap_or(false) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let ttl =
        TimeToLiveSpecification::builder().attribute_name("expiresAt").enabled(true).build().map_err(build_error)?;
    match clients.dynamodb.update_time_to_live().table_name(table).time_to_live_specification(ttl).send().await {
        Ok(_) => Ok(()),
        // Enabling TTL twice is refused ("already enabled"): the table is as wanted.
        Err(error) if error_code(&error) == Some("ValidationException") => Ok(()),
        Err(error) => Err(port_error("dynamodb", error)),
    }
}

async fn create_jobs_table(config: &IrisConfig, clients: &AwsClients) -> Result<(), PortError> {
    create_table(
        clients,
        &config.jobs_table,
        vec![
            attribute("jobId", ScalarAttributeType::S)?,
            attribute("userId", ScalarAttributeType::S)?,
            attribute("createdAt", ScalarAttributeType::N)?,
        ],
        vec![key("jobId", KeyType::Hash)?],
        vec![index(USER_INDEX, vec![key("userId", KeyType::Hash)?, key("createdAt", KeyType::Range)?])?],
    )
    .await
}

async fn create_connections_table(config: &IrisConfig, clients: &AwsClients) -> Result<(), PortError> {
    create_table(
        clients,
        &config.connections_table,
        vec![
            attribute("connectionId", ScalarAttributeType::S)?,
            attribute("item", ScalarAttributeType::S)?,
            attribute("jobId", ScalarAttributeType::S)?,
        ],
        vec![key("connectionId", KeyType::Hash)?, key("item", KeyType::Range)?],
        vec![index(JOB_INDEX, vec![key("jobId", KeyType::Hash)?])?],
    )
    .await
}

async fn create_event_bus(config: &IrisConfig, clients: &AwsClients) -> Result<(), PortError> {
    if config.event_bus == "default" {
        return Ok(());
    }
    match clients.eventbridge.create_event_bus().name(&config.event_bus).send().await {
        Ok(_) => Ok(()),
        Err(error) if error_code(&error) == Some("ResourceAlreadyExistsException") => Ok(()),
        Err(error) => Err(port_error("eventbridge", error)),
    }
}

/// Adds a rule on the pipeline's bus that sends every pipeline event to the (existing) queue
/// `queue_name`: the notify queue, or an integration's. Returns the rule name.
pub async fn route_events_to_queue(
    config: &IrisConfig,
    clients: &AwsClients,
    queue_name: &str,
) -> Result<String, PortError> {
    let url = clients
        .sqs
        .get_queue_url()
        .queue_name(queue_name)
        .send()
        .await
        .map_err(|e| port_error("sqs", e))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let arn = queue_arn(clients, &url).await?;
    let rule = event_rule_name(config, queue_name);
    clients
        .eventbridge
        .put_rule()
        .name(&rule)
        .event_bus_name(&config.event_bus)
        .event_pattern(serde_json::json!({ "source": [EVENT_SOURCE] }).to_string())
        .send()
        .await
        .map_err(|e| port_error("eventbridge", e))?;
    let target = aws_sdk_eventbridge::types::Target::builder()
        .id(format!("{queue_name}-queue"))
        .arn(arn)
        .build()
        .map_err(build_error)?;
    let added = clients
        .eventbridge
        .put_targets()
        .rule(&rule)
        .event_bus_name(&config.event_bus)
        .targets(target)
        .send()
        .await
        .map_err(|e| port_error("eventbridge", e))?;
    if added.failed_entry_count() > 0 {
        return Err(build_error(format!("rule {rule}: target for {queue_name} was refused")));
    }
    Ok(rule)
}

/// Creates a plain queue (no dead-letter queue), e.g. for an integration or a test observer.
pub async fn create_plain_queue(clients: &AwsClients, name: &str) -> Result<String, PortError> {
    let created = clients.sqs.create_queue().queue_name(name).send().await.map_err(|e| port_error("sqs", e))?;
    Ok(created.queue_url().unwrap_or_default().to_owned())
}
