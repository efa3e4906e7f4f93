//! ONNX Runtime keeps one model's session at a time. In a test binary of its own: the runtime is
//! one per process, so a test running beside this one could hold (or replace) a session and make
//! the check race — as it did on CI's two cores when it lived in `onnxruntime.rs`.
//!
//! Needs ONNX Runtime (`scripts/onnx-env.sh install`); skips with a message when it is missing,
//! unless `IRIS_TEST_STRICT=1` (`scripts/test.sh`) makes that a failure.

use std::path::PathBuf;

use iris_core::config::{DeviceChoice, SegmentSettings};
use iris_core::testing::{self, Prerequisite};
use iris_onnxruntime::OrtRuntime;
use iris_segment::{NetworkRuntime, SegmentOptions, load_local_plan};

fn models_dir() -> PathBuf {
    testing::repository_root(env!("CARGO_MANIFEST_DIR")).join("services/segment/tests/models")
}

/// ONNX Runtime on the CPU, or `None` (skipped) when it is not installed.
fn runtime(test: &str) -> Option<OrtRuntime> {
    let settings = SegmentSettings {
        default_model: "total".to_owned(),
        device: DeviceChoice::Cpu,
        model_cache_dir: std::env::temp_dir(),
        onnx_runtime_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        onnx_threads: 2,
    };
    let runtime = OrtRuntime::new(&settings);
    let found = runtime.check().map(|()| runtime).map_err(|error| error.to_string());
    testing::prerequisite(test, Prerequisite::OnnxRuntime, found)
}

/// Only the last model's session is kept: the same model is served by the same session, and
/// loading another releases the first (a five-model task never holds five networks' memory).
#[test]
fn the_runtime_keeps_only_the_last_models_session() {
    const TEST: &str = "the_runtime_keeps_only_the_last_models_session";
    let Some(runtime) = runtime(TEST) else { return };
    let loaded = runtime.loaded().unwrap();
    let model = |name: &str| {
        let plan = load_local_plan(&models_dir().join(name), &SegmentOptions::default()).unwrap();
        plan.models[0].0.clone()
    };
    let (a, b) = (model("tiny-random-a"), model("tiny-random-b"));
    let first = loaded.session(&a.card.onnx_sha256, &a.onnx_path).unwrap();
    let again = loaded.session(&a.card.onnx_sha256, &a.onnx_path).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "the same model reuses its session");
    let released = std::sync::Arc::downgrade(&first);
    drop((first, again));
    let _other = loaded.session(&b.card.onnx_sha256, &b.onnx_path).unwrap();
    assert!(released.upgrade().is_none(), "loading another model released the first one's session");
}
