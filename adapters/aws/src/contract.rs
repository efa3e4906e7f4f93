//! The pipeline's resource contract as data: every name, notification rule, queue setting, table key
//! and event rule that `bootstrap` creates. `iris aws contract` prints it; the CDK app reads the
//! committed copy (`cdk/pipeline-contract.json`) and its tests check the synthesised template
//! against it, and a test here checks the copy against this code, so the two cannot drift.

use iris_core::config::IrisConfig;
use iris_core::events::EVENT_SOURCE;
use iris_core::keys::{PIPELINE_NOTIFICATION_RULES, QueueRole};
use serde_json::{Value, json};

use crate::bootstrap::{MESSAGE_RETENTION_SECONDS, event_rule_name};
use crate::dynamo::{CONNECTION_TIME_TO_LIVE_SECONDS, JOB_INDEX, USER_INDEX};

/// The contract for `config`'s names and settings.
pub fn pipeline_contract(config: &IrisConfig) -> Value {
    let queues: Vec<Value> = QueueRole::ALL
        .iter()
        .map(|role| {
            let name = config.queue_name(*role);
            json!({
                "role": role.as_str(),
                "name": name,
                "deadLetterQueue": format!("{name}-dlq"),
                "maxReceiveCount": config.max_attempts + 1,
                "visibilityTimeoutSeconds": config.visibility_timeout.as_secs().max(1),
                "retentionSeconds": MESSAGE_RETENTION_SECONDS,
            })
        })
        .collect();
    let notifications: Vec<Value> = PIPELINE_NOTIFICATION_RULES
        .iter()
        .map(|rule| {
            json!({
                "id": rule.id,
                "events": ["s3:ObjectCreated:*"],
                "prefix": rule.prefix,
                "suffix": rule.suffix,
                "queue": config.queue_name(rule.queue),
            })
        })
        .collect();
    let notify_queue = config.queue_name(QueueRole::Notify);
    json!({
        "formatVersion": 1,
        "bucket": { "name": config.bucket, "notifications": notifications },
        "queues": queues,
        "jobsTable": {
            "name": config.jobs_table,
            "partitionKey": {"name": "jobId", "type": "S"},
            "indexes": [{"name": USER_INDEX, "partitionKey": {"name": "userId", "type": "S"}, "sortKey": {"name": "createdAt", "type": "N"}}],
            "timeToLiveAttribute": "expiresAt",
        },
        "connectionsTable": {
            "name": config.connections_table,
            "partitionKey": {"name": "connectionId", "type": "S"},
            "sortKey": {"name": "item", "type": "S"},
            "indexes": [{"name": JOB_INDEX, "partitionKey": {"name": "jobId", "type": "S"}}],
            "timeToLiveAttribute": "expiresAt",
            "timeToLiveSeconds": CONNECTION_TIME_TO_LIVE_SECONDS,
        },
        "eventBus": {
            "name": config.event_bus,
            "source": EVENT_SOURCE,
            "detailTypes": ["JobStateChanged", "JobCompleted", "JobFailed", "JobProgress"],
            "rules": [{"name": event_rule_name(config, &notify_queue), "eventPattern": {"source": [EVENT_SOURCE]}, "targetQueue": notify_queue}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CDK app's copy must be what this code creates with default settings.
    #[test]
    fn the_cdk_apps_copy_of_the_contract_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cdk/pipeline-contract.json");
        let defaults = IrisConfig::from_lookup(|_| None).expect("defaults");
        let expected = pipeline_contract(&defaults);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; write it with `iris aws contract > cdk/pipeline-contract.json`", path.display())
        });
        let committed: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(committed, expected, "cdk/pipeline-contract.json is stale: regenerate it with `iris aws contract`");
    }
}
