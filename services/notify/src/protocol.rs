//! The WebSocket protocol, identical on API Gateway and the local gateway. Clients send JSON with
//! an `action` (API Gateway's route selection expression is `$request.body.action`).

use iris_core::events::{DetailType, JobEventDetail};
use iris_core::ids::JobId;
use iris_core::job::{JobRecord, JobStatus};
use iris_core::time::Timestamp;
use serde::{Deserialize, Serialize};

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum ClientMessage {
    /// Receive every state change of a job of the caller's user, starting with its current state.
    Subscribe {
        #[serde(rename = "jobId")]
        job_id: String,
    },
    Unsubscribe {
        #[serde(rename = "jobId")]
        job_id: String,
    },
    /// The caller's recent jobs.
    List,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    Subscribed {
        #[serde(rename = "jobId")]
        job_id: JobId,
    },
    Unsubscribed {
        #[serde(rename = "jobId")]
        job_id: JobId,
    },
    /// A job reached a status. `event` is the pipeline event's detail (stable `eventId`).
    JobState {
        #[serde(rename = "detailType")]
        detail_type: DetailType,
        event: JobEventDetail,
    },
    /// Advisory progress inside a stage (`event.progress`: done of total units). Not part of the
    /// ordered state stream: a client ignores one for a job whose state has already moved on.
    Progress {
        #[serde(rename = "jobId")]
        job_id: JobId,
        event: JobEventDetail,
    },
    Jobs {
        jobs: Vec<JobSummary>,
    },
    Error {
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub job_id: JobId,
    pub status: JobStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl ServerMessage {
    pub fn job_state(event: JobEventDetail) -> ServerMessage {
        ServerMessage::JobState { detail_type: event.detail_type(), event }
    }

    pub fn error(code: &str, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error { code: code.to_owned(), message: message.into() }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"internal_error","message":""}"#.into())
    }
}

impl JobSummary {
    pub fn of(job: &JobRecord) -> JobSummary {
        JobSummary {
            job_id: job.job_id.clone(),
            status: job.status,
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub code: &'static str,
    pub message: String,
}

impl From<BadRequest> for ServerMessage {
    fn from(bad: BadRequest) -> ServerMessage {
        ServerMessage::error(bad.code, bad.message)
    }
}

/// Parses a client frame.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, BadRequest> {
    if text.len() > 4096 {
        return Err(BadRequest { code: "message_too_large", message: "messages are at most 4096 bytes".into() });
    }
    serde_json::from_str(text).map_err(|e| BadRequest {
        code: "bad_request",
        message: format!(
            "expected {{\"action\":\"subscribe\"|\"unsubscribe\",\"jobId\":\"…\"}} or {{\"action\":\"list\"}}: {e}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_use_the_action_field() {
        assert_eq!(
            parse_client_message(r#"{"action":"subscribe","jobId":"abc"}"#).unwrap(),
            ClientMessage::Subscribe { job_id: "abc".into() }
        );
        assert_eq!(parse_client_message(r#"{"action":"list"}"#).unwrap(), ClientMessage::List);
        for bad in ["", "{}", r#"{"action":"drop"}"#, r#"{"action":"subscribe"}"#, "[1]"] {
            assert_eq!(parse_client_message(bad).map_err(|e| e.code), Err("bad_request"), "{bad:?} accepted");
        }
        assert_eq!(parse_client_message(&"x".repeat(5000)).map_err(|e| e.code), Err("message_too_large"));
    }
}
