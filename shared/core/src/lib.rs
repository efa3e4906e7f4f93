//! IRIS Oculus core: the domain (ids, the job state machine, keys, artifacts, error codes, events),
//! the ports every adapter implements, the worker runtime every service runs on, and the stage
//! protocol. No I/O of its own and no adapter: services and adapters both depend on this crate,
//! never the other way round. See ARCHITECTURE.md at the repository root.

pub mod artifacts;
pub mod backends;
pub mod cancel;
pub mod config;
#[cfg(feature = "testing")]
pub mod contract;
pub mod error_code;
pub mod events;
pub mod fault;
pub mod ids;
pub mod job;
pub mod keys;
pub mod labels;
pub mod notification;
pub mod ports;
pub mod runtime;
pub mod s3_event;
pub mod stage;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use artifacts::Artifact;
pub use backends::Backends;
pub use error_code::ErrorCode;
pub use ids::{JobId, UserId};
