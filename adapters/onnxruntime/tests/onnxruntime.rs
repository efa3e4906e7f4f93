//! ONNX Runtime as segment's network runtime: the sliding window with real networks (the committed
//! test models of `services/segment/tests/models/`) against the Python reference of the same
//! algorithm (`bench/segment/reference.py`), thresholds through a network, and task merges.
//!
//! These tests need ONNX Runtime and the reference's Python (`scripts/onnx-env.sh install`), and
//! most of them the real CT of `../shared/data`; they skip with a message when either is missing,
//! unless `IRIS_TEST_STRICT=1` (`scripts/test.sh`) makes a missing runtime a failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use iris_core::config::{DeviceChoice, SegmentSettings};
use iris_core::testing::{self, Prerequisite};
use iris_onnxruntime::OrtRuntime;
use iris_segment::card::TaskDefinition;
use iris_segment::{NetworkRuntime, SegmentOptions, decode_canonical, load_local_plan, segment_with_plan};
use iris_volume::nifti_codec::{DecodeLimits, decode_nifti_hounsfield};
use iris_volume::volume::{Affine, Volume};

fn repo_root() -> PathBuf {
    testing::repository_root(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    repo_root().join("services/segment/tests/models")
}

fn shared_data(test: &str, file: &str) -> Option<PathBuf> {
    testing::shared_data(test, env!("CARGO_MANIFEST_DIR"), file)
}

fn settings() -> SegmentSettings {
    SegmentSettings {
        default_model: "total".to_owned(),
        device: DeviceChoice::Cpu,
        model_cache_dir: std::env::temp_dir(),
        onnx_runtime_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        onnx_threads: 2,
    }
}

/// ONNX Runtime on the CPU, or `None` (skipped) when it is not installed.
fn runtime(test: &str) -> Option<OrtRuntime> {
    let runtime = OrtRuntime::new(&settings());
    let found = runtime.check().map(|()| runtime).map_err(|error| error.to_string());
    testing::prerequisite(test, Prerequisite::OnnxRuntime, found)
}

/// The Python of the project's ONNX venv (for the reference), or `None` (skipped) when absent.
fn reference_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("IRIS_ONNX_PYTHON")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/iris-onnx-venv/bin/python")))
        .ok_or_else(|| "neither IRIS_ONNX_PYTHON nor HOME is set".to_owned())
        .and_then(|python| if python.is_file() { Ok(python) } else { Err(format!("{} is missing", python.display())) });
    testing::prerequisite(test, Prerequisite::OnnxRuntime, python)
}

fn read_labels(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap();
    let (decoded, _) = decode_nifti_hounsfield(&bytes, &DecodeLimits { max_voxels: u64::MAX }).unwrap();
    decoded.volume.into_voxels()
}

/// The network runtime reports where it runs, and a network's input shape is what the card says.
#[test]
fn a_loaded_network_describes_its_input_and_device() {
    const TEST: &str = "a_loaded_network_describes_its_input_and_device";
    let Some(runtime) = runtime(TEST) else { return };
    let plan = load_local_plan(&models_dir().join("tiny-random-a"), &SegmentOptions::default()).unwrap();
    let network = runtime.network(&plan.models[0].0).unwrap();
    assert_eq!(network.execution_provider(), "CPUExecutionProvider");
    let patch = plan.models[0].0.card.window.patch;
    for (fixed, card) in network.fixed_patch().into_iter().zip(patch) {
        assert!(fixed.is_none_or(|fixed| fixed == card), "{fixed:?} against the card's {card}");
    }
}

#[test]
fn threshold_model_labels_follow_the_hounsfield_bands() {
    const TEST: &str = "threshold_model_labels_follow_the_hounsfield_bands";
    let Some(runtime) = runtime(TEST) else { return };
    // 6 mm voxels, the model's own spacing: no resampling, so each voxel keeps its own band.
    let hounsfield: Vec<i16> = (0..20 * 18 * 16).map(|i| [-1000, -600, -499, 0, 250, 251, 1200][i % 7]).collect();
    let affine = Affine([[6.0, 0.0, 0.0, 0.0], [0.0, 6.0, 0.0, 0.0], [0.0, 0.0, 6.0, 0.0], [0.0, 0.0, 0.0, 1.0]]);
    let ct = Volume::new([20, 18, 16], affine, hounsfield.clone()).unwrap();
    let plan = load_local_plan(&models_dir().join("tiny-threshold"), &SegmentOptions::default()).unwrap();
    let (labels, reports) = segment_with_plan(&ct, &plan, &runtime, &|_, _, _| {}).unwrap();
    let expected: Vec<u8> = hounsfield
        .iter()
        .map(|hu| {
            if *hu < -499 {
                0
            } else if *hu <= 250 {
                1
            } else {
                2
            }
        })
        .collect();
    assert_eq!(labels, expected);
    assert_eq!(reports[0].1.tiles, 2 * 2);
}

/// The Rust pipeline and `bench/segment/reference.py` give the same labels, voxel for voxel.
#[test]
fn rust_equals_the_python_reference_on_the_shared_ct() {
    const TEST: &str = "rust_equals_the_python_reference_on_the_shared_ct";
    let Some(ct_path) = shared_data(TEST, "example_ct_sm.nii.gz") else { return };
    let Some(runtime) = runtime(TEST) else { return };
    let Some(python) = reference_python(TEST) else { return };
    let ct = decode_canonical(&std::fs::read(&ct_path).unwrap(), u64::MAX).unwrap();
    let out = tempfile::tempdir().unwrap();
    for (model, arguments) in [
        ("tiny-threshold", vec!["--model".to_owned(), models_dir().join("tiny-threshold").display().to_string()]),
        ("tiny-random-a", vec!["--model".to_owned(), models_dir().join("tiny-random-a").display().to_string()]),
        ("tiny-random-b", vec!["--model".to_owned(), models_dir().join("tiny-random-b").display().to_string()]),
        (
            "tiny-merge/task.json",
            vec![
                "--task".to_owned(),
                models_dir().join("tiny-merge/task.json").display().to_string(),
                "--models-root".to_owned(),
                models_dir().display().to_string(),
            ],
        ),
    ] {
        let plan = load_local_plan(&models_dir().join(model), &SegmentOptions::default()).unwrap();
        let (rust, _) = segment_with_plan(&ct, &plan, &runtime, &|_, _, _| {}).unwrap();
        let reference = out.path().join("reference.nii.gz");
        let status = std::process::Command::new(&python)
            .arg(repo_root().join("bench/segment/reference.py"))
            .arg("--volume")
            .arg(&ct_path)
            .args(&arguments)
            .arg("--out")
            .arg(&reference)
            .args(["--threads", "2"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "reference.py failed for {model}");
        let python_labels = read_labels(&reference);
        assert_eq!(python_labels.len(), rust.len(), "{model}");
        let differing = rust.iter().zip(&python_labels).filter(|(r, p)| i16::from(**r) != **p).count();
        assert_eq!(differing, 0, "{model}: {differing} voxels differ from the Python reference");
        let distinct: BTreeSet<u8> = rust.iter().copied().collect();
        assert!(distinct.len() >= 3, "{model}: a meaningful comparison needs several labels, got {distinct:?}");
    }
}

/// A task's labels are its models' labels remapped through `label_map`, later models on top.
#[test]
fn task_merge_remaps_local_ids() {
    const TEST: &str = "task_merge_remaps_local_ids";
    let Some(ct_path) = shared_data(TEST, "example_ct_sm.nii.gz") else { return };
    let Some(runtime) = runtime(TEST) else { return };
    let ct = decode_canonical(&std::fs::read(&ct_path).unwrap(), u64::MAX).unwrap();
    let run = |path: PathBuf, options: &SegmentOptions| {
        let plan = load_local_plan(&path, options).unwrap();
        segment_with_plan(&ct, &plan, &runtime, &|_, _, _| {}).unwrap().0
    };
    let merged = run(models_dir().join("tiny-merge/task.json"), &SegmentOptions::default());
    let a = run(models_dir().join("tiny-random-a"), &SegmentOptions::default());
    let b = run(models_dir().join("tiny-random-b"), &SegmentOptions::default());
    let map_a = [0u8, 3, 7];
    let map_b = [0u8, 1, 0, 9];
    let expected: Vec<u8> = a
        .iter()
        .zip(&b)
        .map(|(a, b)| if map_b[usize::from(*b)] != 0 { map_b[usize::from(*b)] } else { map_a[usize::from(*a)] })
        .collect();
    assert_eq!(merged, expected);
    let ids: BTreeSet<u8> = merged.iter().copied().collect();
    assert_eq!(ids, BTreeSet::from([0, 1, 3, 7, 9]));
    // roi-subset keeps only the named labels.
    let subset = SegmentOptions { roi_subset: vec!["organ_a2".into(), "organ_b3".into()], ..SegmentOptions::default() };
    let kept = run(models_dir().join("tiny-merge/task.json"), &subset);
    let expected: Vec<u8> = expected
        .iter()
        .zip(&a)
        .zip(&b)
        .map(|((_, a), b)| {
            if *b == 3 {
                9
            } else if *a == 2 {
                7
            } else {
                0
            }
        })
        .collect();
    assert_eq!(kept, expected);
}

/// A five-part task (as TotalSegmentator's 1.5 mm task): every part's local ids go through its own
/// map, and a later part's label wins where two parts label a voxel.
#[test]
fn five_part_merge_remaps_each_parts_ids_in_order() {
    const TEST: &str = "five_part_merge_remaps_each_parts_ids_in_order";
    let Some(ct_path) = shared_data(TEST, "example_ct_sm.nii.gz") else { return };
    let Some(runtime) = runtime(TEST) else { return };
    let ct = decode_canonical(&std::fs::read(&ct_path).unwrap(), u64::MAX).unwrap();
    let task_path = models_dir().join("tiny-five/task.json");
    let task = TaskDefinition::parse("tiny-five", &std::fs::read(&task_path).unwrap()).unwrap();
    assert_eq!(task.models.len(), 5);
    let plan = load_local_plan(&task_path, &SegmentOptions::default()).unwrap();
    let (merged, reports) = segment_with_plan(&ct, &plan, &runtime, &|_, _, _| {}).unwrap();
    assert_eq!(reports.len(), 5, "every part ran");
    let mut expected = vec![0u8; ct.voxel_count()];
    for part in &task.models {
        let single = load_local_plan(&models_dir().join(&part.model), &SegmentOptions::default()).unwrap();
        let (local, _) = segment_with_plan(&ct, &single, &runtime, &|_, _, _| {}).unwrap();
        let map = part.label_map.as_ref().unwrap();
        for (out, id) in expected.iter_mut().zip(&local) {
            if let Some(task_id) = map.get(id) {
                *out = *task_id;
            }
        }
    }
    assert_eq!(merged, expected);
    let ids: BTreeSet<u8> = merged.iter().copied().collect();
    assert!(ids.is_subset(&BTreeSet::from([0, 10, 11, 20, 21, 30, 32, 41, 52])), "{ids:?}");
    assert!(ids.len() >= 6, "most parts show through: {ids:?}");
}
