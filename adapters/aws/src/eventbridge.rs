//! `EventBus` on Amazon EventBridge: `PutEvents` in batches of at most 10, resending the entries a
//! call reports as failed (`FailedEntryCount`).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use iris_core::events::EventEnvelope;
use iris_core::ports::{EventBus, PortError};

use crate::error::port_error;

const BACKEND: &str = "eventbridge";
const BATCH: usize = 10;
const ATTEMPTS: u32 = 5;

pub struct EventBridgeBus {
    client: aws_sdk_eventbridge::Client,
    bus_name: String,
}

impl EventBridgeBus {
    pub fn new(client: aws_sdk_eventbridge::Client, bus_name: &str) -> EventBridgeBus {
        EventBridgeBus { client, bus_name: bus_name.to_owned() }
    }

    fn entry(&self, event: &EventEnvelope) -> Result<PutEventsRequestEntry, PortError> {
        let detail = serde_json::to_string(&event.detail)
            .map_err(|e| PortError::Invalid { backend: BACKEND, message: e.to_string() })?;
        Ok(PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus_name)
            .source(&event.source)
            .detail_type(event.detail_type.as_str())
            .detail(detail)
            .build())
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), PortError> {
        for batch in events.chunks(BATCH) {
            let mut pending: Vec<PutEventsRequestEntry> =
                batch.iter().map(|e| self.entry(e)).collect::<Result<_, _>>()?;
            for attempt in 1..=ATTEMPTS {
                let output = self
                    .client
                    .put_events()
                    .set_entries(Some(pending.clone()))
                    .send()
                    .await
                    .map_err(|e| port_error(BACKEND, e))?;
                if output.failed_entry_count() == 0 {
                    pending.clear();
                    break;
                }
                // Entries answer in request order; keep those that carry an error code.
                pending = pending
                    .into_iter()
                    .zip(output.entries())
                    .filter(|(_, result)| result.error_code().is_some())
                    .map(|(entry, _)| entry)
                    .collect();
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            if !pending.is_empty() {
                return Err(PortError::unavailable(
                    BACKEND,
                    format!("{} events not accepted after {ATTEMPTS} attempts", pending.len()),
                ));
            }
        }
        Ok(())
    }
}
