//! `WorkQueue` on Amazon SQS: long polling, visibility heartbeats with `ChangeMessageVisibility`,
//! delete on ack, and a dead-letter queue named `<queue>-dlq` (also the target of the queue's
//! redrive policy, which `bootstrap` sets to one receive beyond the workers' attempts).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use iris_core::ports::{PortError, QueueDepth, ReceiptHandle, ReceivedMessage, WorkQueue};

use crate::error::{error_code, port_error};

const BACKEND: &str = "sqs";
/// SQS's longest long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

pub struct SqsWorkQueue {
    client: aws_sdk_sqs::Client,
    name: String,
    url: String,
    dead_letter_url: String,
}

impl SqsWorkQueue {
    /// Looks up the queue and its dead-letter queue by name.
    pub async fn open(client: aws_sdk_sqs::Client, name: &str) -> Result<SqsWorkQueue, PortError> {
        let url = queue_url(&client, name).await?;
        let dead_letter_url = queue_url(&client, &format!("{name}-dlq")).await?;
        Ok(SqsWorkQueue { client, name: name.to_owned(), url, dead_letter_url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn approximate(&self, url: &str, attribute: QueueAttributeName) -> Result<u64, PortError> {
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(attribute.clone())
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        Ok(attributes.attributes().and_then(|a| a.get(&attribute)).and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}

async fn queue_url(client: &aws_sdk_sqs::Client, name: &str) -> Result<String, PortError> {
    let found = client.get_queue_url().queue_name(name).send().await.map_err(|e| port_error(BACKEND, e))?;
    found
        .queue_url()
        .map(str::to_owned)
        .ok_or_else(|| PortError::Invalid { backend: BACKEND, message: format!("queue {name} has no URL") })
}

/// Whole seconds, rounded up (SQS counts visibility in seconds).
fn seconds(duration: Duration) -> i32 {
    duration.as_secs_f64().ceil().min(43_200.0) as i32
}

fn is_stale<E: aws_sdk_sqs::error::ProvideErrorMetadata, R>(error: &aws_sdk_sqs::error::SdkError<E, R>) -> bool {
    matches!(
        error_code(error),
        Some(
            "ReceiptHandleIsInvalid"
                | "InvalidParameterValue"
                | "MessageNotInflight"
                | "AWS.SimpleQueueService.MessageNotInflight"
        )
    )
}

#[async_trait]
impl WorkQueue for SqsWorkQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &str) -> Result<(), PortError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        Ok(())
    }

    async fn receive(
        &self,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, PortError> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max_messages.clamp(1, 10) as i32)
            .visibility_timeout(seconds(visibility_timeout))
            .wait_time_seconds(seconds(wait.min(MAX_WAIT)))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        Ok(received
            .messages()
            .iter()
            .filter_map(|message| {
                Some(ReceivedMessage {
                    message_id: message.message_id()?.to_owned(),
                    body: message.body().unwrap_or_default().to_owned(),
                    receipt: ReceiptHandle(message.receipt_handle()?.to_owned()),
                    receive_count: message
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                })
            })
            .collect())
    }

    async fn extend_visibility(&self, receipt: &ReceiptHandle, visibility_timeout: Duration) -> Result<(), PortError> {
        match self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(seconds(visibility_timeout))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_stale(&error) => Err(PortError::StaleReceipt),
            Err(error) => Err(port_error(BACKEND, error)),
        }
    }

    /// SQS may accept a delete with an older receipt without deleting the redelivered message;
    /// either way the message is never lost.
    async fn ack(&self, receipt: &ReceiptHandle) -> Result<(), PortError> {
        match self.client.delete_message().queue_url(&self.url).receipt_handle(&receipt.0).send().await {
            Ok(_) => Ok(()),
            Err(error) if is_stale(&error) => Err(PortError::StaleReceipt),
            Err(error) => Err(port_error(BACKEND, error)),
        }
    }

    async fn dead_letter(&self, message: &ReceivedMessage, reason: &str) -> Result<(), PortError> {
        let reason_attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(reason.chars().take(1000).collect::<String>())
            .build()
            .map_err(|e| PortError::Invalid { backend: BACKEND, message: e.to_string() })?;
        self.client
            .send_message()
            .queue_url(&self.dead_letter_url)
            .message_body(&message.body)
            .message_attributes("reason", reason_attribute)
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        self.ack(&message.receipt).await
    }

    async fn depth(&self) -> Result<QueueDepth, PortError> {
        Ok(QueueDepth {
            visible: self.approximate(&self.url, QueueAttributeName::ApproximateNumberOfMessages).await?,
            in_flight: self.approximate(&self.url, QueueAttributeName::ApproximateNumberOfMessagesNotVisible).await?,
            dead_lettered: self
                .approximate(&self.dead_letter_url, QueueAttributeName::ApproximateNumberOfMessages)
                .await?
                + self
                    .approximate(&self.dead_letter_url, QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                    .await?,
        })
    }
}
