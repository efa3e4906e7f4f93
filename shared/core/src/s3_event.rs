//! S3 event notification messages, as S3 (and moto) put them on an SQS queue, and as the
//! embedded object store writes them: the same JSON in both modes.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A queue message body from an S3 bucket notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum S3Notification {
    Records {
        #[serde(rename = "Records")]
        records: Vec<S3EventRecord>,
    },
    /// Sent once when a notification configuration is created; carries no object.
    TestEvent {
        #[serde(rename = "Event")]
        event: String,
        #[serde(rename = "Bucket", default)]
        bucket: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3EventRecord {
    #[serde(default)]
    pub event_version: Option<String>,
    #[serde(default)]
    pub event_source: Option<String>,
    #[serde(default)]
    pub aws_region: Option<String>,
    #[serde(default)]
    pub event_time: Option<String>,
    pub event_name: String,
    pub s3: S3Entity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Entity {
    #[serde(default)]
    pub s3_schema_version: Option<String>,
    #[serde(default)]
    pub configuration_id: Option<String>,
    pub bucket: S3Bucket,
    pub object: S3Object,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct S3Bucket {
    pub name: String,
    #[serde(default)]
    pub arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Object {
    /// URL-encoded as S3 sends it (`+` for space); use [`S3Object::decoded_key`].
    pub key: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "eTag")]
    pub e_tag: Option<String>,
    #[serde(default)]
    pub version_id: Option<String>,
    #[serde(default)]
    pub sequencer: Option<String>,
}

/// What S3 leaves unescaped in notification keys (unreserved characters and `/`).
const KEY_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
/// The message does not repeat the key (an upload's key may name the patient).
#[error("the object key in the notification is not valid percent-encoded UTF-8")]
pub struct KeyDecodeError(pub String);

impl S3Object {
    pub fn decoded_key(&self) -> Result<String, KeyDecodeError> {
        decode_notification_key(&self.key)
    }
}

impl S3EventRecord {
    pub fn is_object_created(&self) -> bool {
        self.event_name.starts_with("ObjectCreated:") || self.event_name == "s3:ObjectCreated:*"
    }
}

/// Decodes a key as written in S3 event notifications: `+` is a space, then percent-decoding.
pub fn decode_notification_key(encoded: &str) -> Result<String, KeyDecodeError> {
    let spaced = encoded.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| KeyDecodeError(encoded.chars().take(200).collect()))
}

/// Encodes a key as S3 does in event notifications.
pub fn encode_notification_key(key: &str) -> String {
    utf8_percent_encode(key, KEY_ENCODE_SET).to_string().replace("%20", "+")
}

/// The notification S3 sends for one created object.
pub fn object_created_notification(
    bucket: &str,
    key: &str,
    size: u64,
    etag: &str,
    rule_id: &str,
    at: Timestamp,
    sequencer: u64,
) -> S3Notification {
    S3Notification::Records {
        records: vec![S3EventRecord {
            event_version: Some("2.1".to_owned()),
            event_source: Some("aws:s3".to_owned()),
            aws_region: Some("local".to_owned()),
            event_time: Some(at.to_rfc3339()),
            event_name: "ObjectCreated:Put".to_owned(),
            s3: S3Entity {
                s3_schema_version: Some("1.0".to_owned()),
                configuration_id: Some(rule_id.to_owned()),
                bucket: S3Bucket { name: bucket.to_owned(), arn: Some(format!("arn:aws:s3:::{bucket}")) },
                object: S3Object {
                    key: encode_notification_key(key),
                    size: Some(size),
                    e_tag: Some(etag.to_owned()),
                    version_id: None,
                    sequencer: Some(format!("{sequencer:016X}")),
                },
            },
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_s3_encoding() {
        for key in ["uploads/u/scan 1.nii.gz", "uploads/u/ü+ß%.zip", "uploads/u/a&b=c?.dcm"] {
            let encoded = encode_notification_key(key);
            assert!(!encoded.contains(' '));
            assert_eq!(decode_notification_key(&encoded).unwrap(), key);
        }
        assert_eq!(decode_notification_key("uploads/u/scan+1%2B2.nii").unwrap(), "uploads/u/scan 1+2.nii");
        assert!(decode_notification_key("uploads/%FF").is_err());
    }

    #[test]
    fn parses_real_s3_records_and_the_test_event() {
        let record = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-1",
            "eventTime":"2024-01-01T00:00:00.000Z","eventName":"ObjectCreated:Put",
            "userIdentity":{"principalId":"AWS:X"},"s3":{"s3SchemaVersion":"1.0","configurationId":"c",
            "bucket":{"name":"b","ownerIdentity":{"principalId":"X"},"arn":"arn:aws:s3:::b"},
            "object":{"key":"uploads/u/my+scan.nii.gz","size":10,"eTag":"abc","sequencer":"0A"}}}]}"#;
        let S3Notification::Records { records } = serde_json::from_str(record).unwrap() else { panic!("not records") };
        assert!(records[0].is_object_created());
        assert_eq!(records[0].s3.object.decoded_key().unwrap(), "uploads/u/my scan.nii.gz");
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2024-01-01T00:00:00.000Z","Bucket":"b"}"#;
        assert!(matches!(serde_json::from_str(test).unwrap(), S3Notification::TestEvent { .. }));
        assert!(serde_json::from_str::<S3Notification>("{\"hello\":1}").is_err());
    }
}
