//! The system tests: the whole pipeline and the binaries, end to end, on the embedded backends
//! and on moto, plus the crate graph's invariants. One test binary, grouped by area:
//!
//! - `architecture`: what each crate may link (`cargo tree`);
//! - `models`: TotalSegmentator's weights imported and pushed with `iris model`, run by `iris process`;
//! - `pipeline`: every stage in one process, geometry, bad inputs, duplicates;
//! - `websocket`: notifications to real WebSocket clients, event schemas;
//! - `processes`: `iris` and the service binaries as processes (kills, one per service, inbox);
//! - `on_moto`: the AWS backends against moto server;
//! - `retry`: a failed job re-opened by a new upload of the same file;
//! - `phi`: no patient identifier past ingest.
//!
//! Tests that read `../shared/data` skip with a message when it is absent; those that need ONNX
//! Runtime, moto or the service binaries skip too, unless `IRIS_TEST_STRICT=1` (`scripts/test.sh`).

mod architecture;
mod models;
mod on_moto;
mod phi;
mod pipeline;
mod processes;
mod retry;
mod support;
mod websocket;
