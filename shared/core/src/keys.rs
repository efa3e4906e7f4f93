//! Object keys, the pipeline's key layout and the object-created notification rules
//! (the same rules drive the embedded store, `iris aws bootstrap` and the CDK app).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::artifacts::Artifact;
use crate::ids::{InvalidUserId, JobId, UserId};

/// A validated object key: 1–1024 bytes, relative, `/`-separated, no empty, `.` or `..`
/// segment, no NUL or backslash. Safe to map onto a directory tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

/// Why a key was refused. The messages never repeat the key: an upload's key is its file name,
/// which may name the patient, and these messages reach logs and dead-letter reasons (the key is
/// kept in the variant for the caller that needs it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the object key is not allowed: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{0}")]
    InvalidUser(#[from] InvalidUserId),
    #[error("the key is not an upload (expected uploads/<user>/<file name>)")]
    NotAnUpload(String),
}

/// The queues of the pipeline. Each has a dead-letter queue named `<name>-dlq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueRole {
    Ingest,
    Segment,
    Mesh,
    Notify,
}

/// An S3-style bucket notification rule: object-created events of keys with this prefix and
/// suffix go to this queue. Rules must not overlap (S3 refuses ambiguous configurations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRule {
    pub id: &'static str,
    pub prefix: &'static str,
    pub suffix: &'static str,
    pub queue: QueueRole,
}

pub const UPLOADS_PREFIX: &str = "uploads/";
pub const JOBS_PREFIX: &str = "jobs/";
/// The pipeline's notification rules. Segment and mesh triggers are scoped to `jobs/` so that no
/// upload named `…volume.nii.gz` matches two rules (S3 rejects overlapping prefix/suffix rules).
pub const PIPELINE_NOTIFICATION_RULES: [NotificationRule; 3] = [
    NotificationRule { id: "uploads-to-ingest", prefix: UPLOADS_PREFIX, suffix: "", queue: QueueRole::Ingest },
    NotificationRule {
        id: "volume-to-segment",
        prefix: JOBS_PREFIX,
        suffix: Artifact::Volume.file(),
        queue: QueueRole::Segment,
    },
    NotificationRule {
        id: "labels-to-mesh",
        prefix: JOBS_PREFIX,
        suffix: Artifact::Labels.file(),
        queue: QueueRole::Mesh,
    },
];

impl ObjectKey {
    pub fn parse(text: &str) -> Result<ObjectKey, KeyError> {
        let invalid = |reason| Err(KeyError::InvalidKey { key: text.chars().take(200).collect(), reason });
        if text.is_empty() {
            return invalid("it is empty");
        }
        if text.len() > 1024 {
            return invalid("it is longer than 1024 bytes");
        }
        if text.contains('\0') {
            return invalid("it contains a NUL character");
        }
        if text.contains('\\') {
            return invalid("it contains a backslash");
        }
        if text.starts_with('/') {
            return invalid("it is an absolute path");
        }
        for segment in text.split('/') {
            match segment {
                "" => return invalid("it has an empty path segment"),
                "." | ".." => return invalid("it has a '.' or '..' path segment"),
                _ => {}
            }
        }
        if text.chars().any(|c| c.is_control()) {
            return invalid("it contains a control character");
        }
        Ok(ObjectKey(text.to_owned()))
    }

    /// The key of a job's output, e.g. `jobs/<id>/mesh/model.obj`. Job ids and relative names
    /// used by the pipeline are always valid, so this cannot fail for them.
    pub fn for_job(job_id: &JobId, relative: &str) -> ObjectKey {
        ObjectKey(format!("{JOBS_PREFIX}{job_id}/{relative}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last path segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The job a `jobs/<id>/…` key belongs to.
    pub fn job_id(&self) -> Option<JobId> {
        let rest = self.0.strip_prefix(JOBS_PREFIX)?;
        JobId::parse(rest.split('/').next()?).ok()
    }

    /// The user of an `uploads/<user>/<name>` key.
    pub fn upload_user(&self) -> Result<UserId, KeyError> {
        let rest = self.0.strip_prefix(UPLOADS_PREFIX).ok_or_else(|| KeyError::NotAnUpload(self.0.clone()))?;
        match rest.split_once('/') {
            Some((user, name)) if !name.is_empty() => Ok(UserId::parse(user)?),
            _ => Err(KeyError::NotAnUpload(self.0.clone())),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ObjectKey::parse(&value)
    }
}

impl From<ObjectKey> for String {
    fn from(value: ObjectKey) -> String {
        value.0
    }
}

impl QueueRole {
    pub const ALL: [QueueRole; 4] = [QueueRole::Ingest, QueueRole::Segment, QueueRole::Mesh, QueueRole::Notify];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueRole::Ingest => "ingest",
            QueueRole::Segment => "segment",
            QueueRole::Mesh => "mesh",
            QueueRole::Notify => "notify",
        }
    }
}

impl NotificationRule {
    pub fn matches(&self, key: &ObjectKey) -> bool {
        key.as_str().starts_with(self.prefix) && key.as_str().ends_with(self.suffix)
    }
}

/// The queues an object-created event of `key` goes to.
pub fn queues_for_created_object(key: &ObjectKey) -> impl Iterator<Item = &'static NotificationRule> + '_ {
    PIPELINE_NOTIFICATION_RULES.iter().filter(move |rule| rule.matches(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_a_directory_are_rejected() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "a//b", "a/./b", "a\0b", "a\\b", "a/\u{7}"] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["uploads/u/scan 1.nii.gz", "jobs/x/mesh/model.obj", "a.b/c..d"] {
            assert!(ObjectKey::parse(good).is_ok(), "{good:?} rejected");
        }
        assert!(ObjectKey::parse(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn upload_user_is_the_first_segment() {
        let key = ObjectKey::parse("uploads/alice/ct/scan.nii.gz").unwrap();
        assert_eq!(key.upload_user().unwrap().as_str(), "alice");
        assert!(ObjectKey::parse("uploads/alice").unwrap().upload_user().is_err());
        assert!(ObjectKey::parse("jobs/alice/x").unwrap().upload_user().is_err());
        assert!(ObjectKey::parse("uploads/al ice/x").unwrap().upload_user().is_err());
    }

    #[test]
    fn notification_rules_route_each_key_to_at_most_one_queue() {
        let job = JobId::derive("b", "k", "e");
        let cases = [
            ("uploads/u/volume.nii.gz".to_owned(), Some(QueueRole::Ingest)),
            ("uploads/u/labels.nii.gz".to_owned(), Some(QueueRole::Ingest)),
            (Artifact::Volume.key(&job).to_string(), Some(QueueRole::Segment)),
            (Artifact::Labels.key(&job).to_string(), Some(QueueRole::Mesh)),
            (Artifact::Stats.key(&job).to_string(), None),
            (Artifact::MeshObj.key(&job).to_string(), None),
            ("models/x/model.onnx".to_owned(), None),
        ];
        for (key, expected) in cases {
            let key = ObjectKey::parse(&key).unwrap();
            let queues: Vec<_> = queues_for_created_object(&key).map(|r| r.queue).collect();
            assert_eq!(queues, expected.into_iter().collect::<Vec<_>>(), "{key}");
        }
        assert_eq!(Artifact::Labels.key(&job).job_id(), Some(job));
    }
}
