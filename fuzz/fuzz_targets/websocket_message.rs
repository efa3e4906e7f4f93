//! The WebSocket message parser: a client text frame through `parse_client_message`. An accepted
//! message must survive a JSON round trip; a refused one must turn into a valid JSON error reply.
#![no_main]

use iris_notify::protocol::{ClientMessage, ServerMessage, parse_client_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_client_message(text) {
        Ok(message) => {
            let json = serde_json::to_string(&message).expect("a client message serializes");
            let again: ClientMessage = serde_json::from_str(&json).expect("a serialized client message parses");
            assert_eq!(again, message);
        }
        Err(bad) => {
            let reply = ServerMessage::from(bad).to_json();
            let _: serde_json::Value = serde_json::from_str(&reply).expect("the error reply is JSON");
        }
    }
});
