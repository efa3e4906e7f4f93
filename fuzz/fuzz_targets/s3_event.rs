//! The S3 event parser: a queue message body as S3 (or the embedded store) sends it, through
//! `parse_notification` (JSON, URL-decoded keys, key validation, event times) and `stage_triggers`.
//! Also checks that every key it accepts survives S3's notification encoding unchanged.
#![no_main]

use iris_core::Artifact;
use iris_core::notification::{Notification, parse_notification, stage_triggers};
use iris_core::s3_event::{decode_notification_key, encode_notification_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    if let Ok(Notification::Created(objects)) = parse_notification(body) {
        for object in objects {
            let key = object.key.as_str();
            assert_eq!(decode_notification_key(&encode_notification_key(key)).as_deref(), Ok(key));
        }
    }
    let _ = stage_triggers(body, Artifact::Volume);
});
