//! Bucket notifications as stages read them: S3's event JSON (also what the embedded store
//! writes) turned into the objects it announces, and the job outputs that trigger a stage.

use crate::artifacts::Artifact;
use crate::ids::JobId;
use crate::keys::ObjectKey;
use crate::s3_event::S3Notification;
use crate::time::Timestamp;

/// One object named by a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedObject {
    pub bucket: String,
    pub key: ObjectKey,
    pub etag: String,
    pub version_id: Option<String>,
    pub size: Option<u64>,
    /// When the object was written, from the event (millisecond resolution).
    pub event_time: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// S3's `s3:TestEvent`: nothing to do.
    Test,
    Created(Vec<CreatedObject>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotificationError {
    #[error("message body is not an S3 event notification: {0}")]
    Malformed(String),
    #[error("notification names an unusable object key: {0}")]
    BadKey(String),
}

/// A job output that starts the next stage (`jobs/<id>/volume.nii.gz`, `jobs/<id>/labels.nii.gz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageTrigger {
    pub job_id: JobId,
    /// When the trigger object was written.
    pub triggered_at: Option<Timestamp>,
}

/// Parses a queue message from a bucket notification (S3's JSON, also the embedded store's).
pub fn parse_notification(body: &str) -> Result<Notification, NotificationError> {
    let notification: S3Notification =
        serde_json::from_str(body).map_err(|e| NotificationError::Malformed(e.to_string()))?;
    match notification {
        S3Notification::TestEvent { .. } => Ok(Notification::Test),
        S3Notification::Records { records } => {
            let mut created = Vec::new();
            for record in records.into_iter().filter(|r| r.is_object_created()) {
                let decoded = record.s3.object.decoded_key().map_err(|e| NotificationError::BadKey(e.to_string()))?;
                let key = ObjectKey::parse(&decoded).map_err(|e| NotificationError::BadKey(e.to_string()))?;
                created.push(CreatedObject {
                    bucket: record.s3.bucket.name,
                    key,
                    etag: record.s3.object.e_tag.unwrap_or_default().trim_matches('"').to_owned(),
                    version_id: record.s3.object.version_id,
                    size: record.s3.object.size,
                    event_time: record.event_time.as_deref().and_then(Timestamp::parse_rfc3339),
                });
            }
            Ok(Notification::Created(created))
        }
    }
}

/// The job outputs `trigger` that a notification announces. `Ok(None)` for S3's test event; an
/// error (for the dead-letter queue) when it names any other object.
pub fn stage_triggers(body: &str, trigger: Artifact) -> Result<Option<Vec<StageTrigger>>, NotificationError> {
    match parse_notification(body)? {
        Notification::Test => Ok(None),
        Notification::Created(objects) => objects
            .iter()
            .map(|object| match object.key.job_id() {
                Some(job_id) if object.key == trigger.key(&job_id) => {
                    Ok(StageTrigger { job_id, triggered_at: object.event_time })
                }
                _ => Err(NotificationError::BadKey(format!("{} is not a job's {}", object.key, trigger.file()))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse_to_created_objects() {
        let body = serde_json::to_string(&crate::s3_event::object_created_notification(
            "b",
            "uploads/u/my scan.nii.gz",
            5,
            "e1",
            "rule",
            Timestamp::from_epoch_millis(0),
            1,
        ))
        .unwrap();
        let Notification::Created(objects) = parse_notification(&body).unwrap() else { panic!("not created") };
        assert_eq!(objects[0].key.as_str(), "uploads/u/my scan.nii.gz");
        assert_eq!(objects[0].etag, "e1");
        assert_eq!(parse_notification(r#"{"Event":"s3:TestEvent"}"#).unwrap(), Notification::Test);
        assert!(matches!(parse_notification("not json"), Err(NotificationError::Malformed(_))));
        let escaping = body.replace("uploads/u/my+scan.nii.gz", "uploads/../../etc/passwd");
        assert!(matches!(parse_notification(&escaping), Err(NotificationError::BadKey(_))));
    }
}
