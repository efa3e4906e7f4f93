//! Identities: the job id (derived from the upload) and the user id (the first path segment after
//! `uploads/`). Both are validated at parse, so a value of either type is safe to put in a key, a
//! path or a query.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Deterministic job identity: 32 lowercase hex characters derived from the upload
/// (bucket, key, and version id or ETag), so a duplicated object-created event maps to the same job.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// The user an upload belongs to: the first path segment after `uploads/`.
/// 1–128 characters of `A-Z a-z 0-9 . _ - @`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a job id: {0:?} (expected 32 lowercase hex characters)")]
pub struct InvalidJobId(pub String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the user id is not allowed (1-128 characters of letters, digits, '.', '_', '-', '@')")]
pub struct InvalidUserId(pub String);

impl JobId {
    pub fn derive(bucket: &str, key: &str, version_or_etag: &str) -> JobId {
        let mut hasher = Sha256::new();
        for part in [bucket, key, version_or_etag] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        JobId(hex::encode(&hasher.finalize()[..16]))
    }

    pub fn parse(text: &str) -> Result<JobId, InvalidJobId> {
        let valid = text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid { Ok(JobId(text.to_owned())) } else { Err(InvalidJobId(text.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        JobId::parse(&value)
    }
}

impl From<JobId> for String {
    fn from(value: JobId) -> String {
        value.0
    }
}

impl UserId {
    pub fn parse(text: &str) -> Result<UserId, InvalidUserId> {
        let valid = !text.is_empty()
            && text.len() <= 128
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
            && text != "."
            && text != "..";
        if valid { Ok(UserId(text.to_owned())) } else { Err(InvalidUserId(text.chars().take(200).collect())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidUserId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        UserId::parse(&value)
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> String {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_is_deterministic_and_separates_fields() {
        let a = JobId::derive("bucket", "uploads/u/x", "e1");
        assert_eq!(a, JobId::derive("bucket", "uploads/u/x", "e1"));
        assert_ne!(a, JobId::derive("bucket", "uploads/u/x", "e2"));
        assert_ne!(JobId::derive("ab", "c", "e"), JobId::derive("a", "bc", "e"));
        assert_eq!(JobId::parse(a.as_str()).unwrap(), a);
        assert!(JobId::parse("../etc").is_err());
        assert!(JobId::parse(&"A".repeat(32)).is_err());
    }

    #[test]
    fn user_ids_are_plain_names() {
        for good in ["alice", "a.b-c_d@example.org", &"u".repeat(128)] {
            assert!(UserId::parse(good).is_ok(), "{good:?} rejected");
        }
        for bad in ["", ".", "..", "al ice", "a/b", &"u".repeat(129)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
