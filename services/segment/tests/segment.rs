//! The segment crate's integration tests: model cards and tasks, the model store, ONNX Runtime
//! with the sliding window against the Python reference, task merges, and the classical model
//! against TotalSegmentator's reference segmentation.
//!
//! Tests that need ONNX Runtime (`scripts/onnx-env.sh install`) or `../shared/data` skip with a
//! message when either is missing, except that `IRIS_REQUIRE_ONNX=1` (set by `scripts/test.sh`)
//! turns a missing runtime into a failure, so CI cannot skip them silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iris_segment::card::{ModelCard, TaskDefinition};
use iris_segment::model_store::load_local_model;
use iris_segment::{
    ModelStore, ModelStoreError, OnnxRuntime, SegmentError, SegmentOptions, Segmenter, TaskPlan, decode_canonical,
    load_local_plan, onnx_runtime, segment_classical, segment_with_plan,
};
use iris_shared::config::{DeviceChoice, SegmentSettings};
use iris_shared::nifti_codec::{DecodeLimits, decode_nifti_hounsfield};
use iris_shared::ports::{ObjectMetadata, ObjectStore};
use iris_shared::volume::{Affine, Volume};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models")
}

fn shared_data(file: &str) -> Option<PathBuf> {
    let path = repo_root().join("../shared/data/totalseg").join(file);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("SKIP: {} is absent (the ../shared kit is not beside the repo)", path.display());
        None
    }
}

fn require_onnx() -> bool {
    std::env::var("IRIS_REQUIRE_ONNX").is_ok_and(|value| value == "1")
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

/// ONNX Runtime, or `None` (test skipped) when it is not installed and not required.
fn runtime() -> Option<&'static OnnxRuntime> {
    match onnx_runtime(&settings()) {
        Ok(runtime) => Some(runtime),
        Err(error) if require_onnx() => panic!("IRIS_REQUIRE_ONNX=1 but {error}"),
        Err(error) => {
            eprintln!("SKIP: {error}");
            None
        }
    }
}

/// The Python of the project's ONNX venv (for the reference), or `None` (skipped) when absent.
fn reference_python() -> Option<PathBuf> {
    let python = std::env::var_os("IRIS_ONNX_PYTHON")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/iris-onnx-venv/bin/python")))?;
    if python.is_file() {
        return Some(python);
    }
    assert!(!require_onnx(), "IRIS_REQUIRE_ONNX=1 but the reference's Python {} is missing", python.display());
    eprintln!("SKIP: {} is missing (scripts/onnx-env.sh install)", python.display());
    None
}

fn read_labels(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap();
    let (decoded, _) = decode_nifti_hounsfield(&bytes, &DecodeLimits { max_voxels: u64::MAX }).unwrap();
    decoded.volume.into_voxels()
}

fn card_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models_dir().join("tiny-random-a/card.json")).unwrap()).unwrap();
    edit(&mut card);
    serde_json::to_vec(&card).unwrap()
}

#[test]
fn committed_cards_parse_into_window_settings() {
    let card = ModelCard::parse("tiny-random-a", &std::fs::read(models_dir().join("tiny-random-a/card.json")).unwrap())
        .unwrap();
    assert_eq!(card.window.spacing_mm, [4.5, 4.0, 4.0]);
    assert_eq!(card.window.patch, [16, 24, 24]);
    assert_eq!(card.window.mirror_axes, vec![0, 2]);
    assert_eq!(card.window.channels, 3);
    assert_eq!(card.window.batch_size, 2);
    assert_eq!(card.labels.get(&2).map(String::as_str), Some("organ_a2"));
    let task = TaskDefinition::parse("tiny-merge", &std::fs::read(models_dir().join("tiny-merge/task.json")).unwrap())
        .unwrap();
    assert_eq!(task.models.len(), 2);
    assert_eq!(task.models[1].label_map, Some(BTreeMap::from([(1, 1), (3, 9)])));
    assert_eq!(task.label_id("organ_a2"), Some(7));
}

#[test]
fn bad_cards_are_refused_with_the_reason() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"{".to_vec(), "EOF"),
        ("axis order", card_json(|c| c["axis_order"] = "xyz".into()), "axis_order"),
        ("checksum", card_json(|c| c["onnx_sha256"] = "abc".into()), "64 hexadecimal"),
        ("spacing", card_json(|c| c["spacing_mm"] = serde_json::json!([0.0, 1.0, 1.0])), "spacing_mm"),
        ("patch", card_json(|c| c["patch_size"] = serde_json::json!([0, 16, 16])), "patch_size"),
        ("step", card_json(|c| c["tile_step"] = 1.5.into()), "tile_step"),
        ("mirror", card_json(|c| c["mirror_axes"] = serde_json::json!([0, 0])), "mirror_axes"),
        ("mirror axis", card_json(|c| c["mirror_axes"] = serde_json::json!([3])), "mirror_axes"),
        ("batch", card_json(|c| c["batch_size"] = 0.into()), "batch_size"),
        ("scheme", card_json(|c| c["normalization"]["scheme"] = "zscore".into()), "scheme"),
        ("std", card_json(|c| c["normalization"]["std"] = 0.0.into()), "std > 0"),
        ("clip", card_json(|c| c["normalization"]["clip_hu"] = serde_json::json!([100.0, -100.0])), "low < high"),
        ("label id", card_json(|c| c["labels"] = serde_json::json!([{"id": 300, "name": "x"}])), "between 1"),
        ("label zero", card_json(|c| c["labels"] = serde_json::json!([{"id": 0, "name": "x"}])), "between 1"),
        (
            "duplicate",
            card_json(|c| c["labels"] = serde_json::json!([{"id": 1, "name": "x"}, {"id": 1, "name": "y"}])),
            "twice",
        ),
        ("unknown field", card_json(|c| c["surprise"] = 1.into()), "unknown field"),
        ("version", card_json(|c| c["format_version"] = 2.into()), "format_version"),
    ];
    for (what, bytes, expected) in cases {
        let error = ModelCard::parse("m", &bytes).expect_err(what);
        assert!(error.to_string().contains(expected), "{what}: {error}");
        assert_eq!(SegmentError::Store(ModelStoreError::Card(error)).code(), "model_card_invalid");
    }
}

#[test]
fn bad_tasks_are_refused_with_the_reason() {
    let task = |models: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({
            "format_version": 1, "name": "t", "labels": [{"id": 4, "name": "liver"}], "models": models
        }))
        .unwrap()
    };
    let cases = [
        (task(serde_json::json!([])), "at least one model"),
        (task(serde_json::json!([{"model": "m", "label_map": {"1": 5}}])), "not in labels"),
        (task(serde_json::json!([{"model": "m", "label_map": {"zero": 4}}])), "not an id"),
    ];
    for (bytes, expected) in cases {
        let error = TaskDefinition::parse("t", &bytes).unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[test]
fn options_select_models_and_labels() {
    let task = TaskDefinition::parse("tiny-merge", &std::fs::read(models_dir().join("tiny-merge/task.json")).unwrap())
        .unwrap();
    let options = |pairs: &[(&str, &str)]| {
        SegmentOptions::from_job_options(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    };
    let (models, keep) = TaskPlan::select(&task, &options(&[]).unwrap()).unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(keep, None);
    // organ_a1 (3) comes only from tiny-random-a: tiny-random-b is not run.
    let (models, keep) = TaskPlan::select(&task, &options(&[("roi-subset", "organ_a1")]).unwrap()).unwrap();
    assert_eq!(models.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(), vec!["tiny-random-a"]);
    assert_eq!(keep, Some(BTreeSet::from([3])));
    let error = TaskPlan::select(&task, &options(&[("roi-subset", "heart")]).unwrap()).unwrap_err();
    assert_eq!(error.code(), "invalid_option");
    let error = TaskPlan::select(&task, &options(&[("fast", "true")]).unwrap()).unwrap_err();
    assert!(error.to_string().contains("no fast models"), "{error}");
    assert_eq!(options(&[("fast", "maybe")]).unwrap_err().code(), "invalid_option");
    assert_eq!(options(&[("model", " tiny-merge ")]).unwrap().model.as_deref(), Some("tiny-merge"));
}

#[test]
fn local_models_are_checked_against_their_card() {
    for name in ["tiny-threshold", "tiny-random-a", "tiny-random-b"] {
        let model = load_local_model(&models_dir().join(name)).unwrap();
        assert_eq!(model.card.name, name);
    }
    let tampered = tempfile::tempdir().unwrap();
    let dir = tampered.path().join("tiny-threshold");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(models_dir().join("tiny-threshold/card.json"), dir.join("card.json")).unwrap();
    let mut onnx = std::fs::read(models_dir().join("tiny-threshold/model.onnx")).unwrap();
    let last = onnx.len() - 1;
    onnx[last] ^= 1;
    std::fs::write(dir.join("model.onnx"), onnx).unwrap();
    let error = load_local_model(&dir).unwrap_err();
    assert_eq!(error.code(), "model_checksum_mismatch");
    std::fs::remove_file(dir.join("model.onnx")).unwrap();
    assert_eq!(load_local_model(&dir).unwrap_err().code(), "model_not_found");
}

async fn store_with_models(root: &Path, names: &[&str]) -> Arc<dyn ObjectStore> {
    let database = iris_shared::embedded::SqliteDatabase::open(&root.join("db.sqlite3")).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(iris_shared::embedded::DirectoryObjectStore::new(
        database,
        root.join("objects"),
        "test",
        BTreeMap::new(),
    ));
    for name in names {
        for entry in std::fs::read_dir(models_dir().join(name)).unwrap() {
            let path = entry.unwrap().path();
            let key = format!("models/{name}/{}", path.file_name().unwrap().to_str().unwrap());
            let key = iris_shared::keys::ObjectKey::parse(&key).unwrap();
            store.put(&key, std::fs::read(&path).unwrap(), &ObjectMetadata::new()).await.unwrap();
        }
    }
    store
}

#[tokio::test]
async fn the_model_store_verifies_caches_and_names_what_is_missing() {
    let root = tempfile::tempdir().unwrap();
    let store = store_with_models(root.path(), &["tiny-threshold", "tiny-merge", "tiny-random-a"]).await;
    let cache = root.path().join("cache");
    let models = ModelStore::new(Arc::clone(&store), cache.clone());
    assert!(matches!(models.resolve("tiny-merge").await.unwrap(), Some(iris_segment::ResolvedModel::Task(_))));
    assert!(matches!(models.resolve("tiny-threshold").await.unwrap(), Some(iris_segment::ResolvedModel::Single(_))));
    assert_eq!(models.resolve("absent").await.unwrap(), None);
    assert_eq!(models.resolve("../etc").await.unwrap_err().code(), "invalid_option");
    assert_eq!(models.resolve("Upper").await.unwrap_err().code(), "invalid_option");

    let fetched = models.fetch("tiny-threshold").await.unwrap();
    assert!(fetched.onnx_path.starts_with(&cache));
    assert_eq!(
        std::fs::read(&fetched.onnx_path).unwrap(),
        std::fs::read(models_dir().join("tiny-threshold/model.onnx")).unwrap()
    );
    // Cached by checksum: a later fetch does not need model.onnx in the store any more.
    let onnx_key = iris_shared::keys::ObjectKey::parse("models/tiny-threshold/model.onnx").unwrap();
    store.put(&onnx_key, b"corrupt".to_vec(), &ObjectMetadata::new()).await.unwrap();
    assert_eq!(models.fetch("tiny-threshold").await.unwrap(), fetched);
    // A fresh cache gets the corrupt bytes and refuses them.
    let fresh = ModelStore::new(Arc::clone(&store), root.path().join("fresh-cache"));
    assert_eq!(fresh.fetch("tiny-threshold").await.unwrap_err().code(), "model_checksum_mismatch");
    assert_eq!(fresh.fetch("tiny-random-b").await.unwrap_err().code(), "model_not_found");
}

#[test]
fn threshold_model_labels_follow_the_hounsfield_bands() {
    let Some(runtime) = runtime() else { return };
    // 6 mm voxels, the model's own spacing: no resampling, so each voxel keeps its own band.
    let hounsfield: Vec<i16> = (0..20 * 18 * 16).map(|i| [-1000, -600, -499, 0, 250, 251, 1200][i % 7]).collect();
    let affine = Affine([[6.0, 0.0, 0.0, 0.0], [0.0, 6.0, 0.0, 0.0], [0.0, 0.0, 6.0, 0.0], [0.0, 0.0, 0.0, 1.0]]);
    let ct = Volume::new([20, 18, 16], affine, hounsfield.clone()).unwrap();
    let plan = load_local_plan(&models_dir().join("tiny-threshold"), &SegmentOptions::default()).unwrap();
    let (labels, reports) = segment_with_plan(&ct, &plan, runtime, &|_, _, _| {}).unwrap();
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
    let Some(ct_path) = shared_data("example_ct_sm.nii.gz") else { return };
    let Some(runtime) = runtime() else { return };
    let Some(python) = reference_python() else { return };
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
        let (rust, _) = segment_with_plan(&ct, &plan, runtime, &|_, _, _| {}).unwrap();
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
    let Some(ct_path) = shared_data("example_ct_sm.nii.gz") else { return };
    let Some(runtime) = runtime() else { return };
    let ct = decode_canonical(&std::fs::read(&ct_path).unwrap(), u64::MAX).unwrap();
    let run = |path: PathBuf, options: &SegmentOptions| {
        let plan = load_local_plan(&path, options).unwrap();
        segment_with_plan(&ct, &plan, runtime, &|_, _, _| {}).unwrap().0
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
    let Some(ct_path) = shared_data("example_ct_sm.nii.gz") else { return };
    let Some(runtime) = runtime() else { return };
    let ct = decode_canonical(&std::fs::read(&ct_path).unwrap(), u64::MAX).unwrap();
    let task_path = models_dir().join("tiny-five/task.json");
    let task = TaskDefinition::parse("tiny-five", &std::fs::read(&task_path).unwrap()).unwrap();
    assert_eq!(task.models.len(), 5);
    let plan = load_local_plan(&task_path, &SegmentOptions::default()).unwrap();
    let (merged, reports) = segment_with_plan(&ct, &plan, runtime, &|_, _, _| {}).unwrap();
    assert_eq!(reports.len(), 5, "every part ran");
    let mut expected = vec![0u8; ct.voxel_count()];
    for part in &task.models {
        let single = load_local_plan(&models_dir().join(&part.model), &SegmentOptions::default()).unwrap();
        let (local, _) = segment_with_plan(&ct, &single, runtime, &|_, _, _| {}).unwrap();
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

#[tokio::test]
async fn the_default_model_falls_back_to_classical_and_a_requested_one_must_exist() {
    let root = tempfile::tempdir().unwrap();
    let config = iris_shared::config::IrisConfig::from_lookup(|name| match name {
        "IRIS_DATA_DIR" => Some(root.path().display().to_string()),
        "IRIS_SEGMENT_MODEL" => Some("tiny-threshold".into()),
        _ => None,
    })
    .unwrap();
    let backends = iris_shared::backends::EmbeddedBackends::open(&config).unwrap().ports();
    let handler = iris_segment::SegmentHandler::from_config(&backends, &config);
    let choose = |model: Option<&str>| {
        let options = SegmentOptions { model: model.map(str::to_owned), ..SegmentOptions::default() };
        let handler = &handler;
        async move { handler.choose_segmenter(&options).await }
    };
    // Nothing in the store: the default falls back with its reason, a named model is an error.
    match choose(None).await.unwrap() {
        Segmenter::Classical { reason: Some(reason) } => assert!(reason.contains("tiny-threshold"), "{reason}"),
        other => panic!("expected the classical fallback, got {other:?}"),
    }
    assert_eq!(choose(Some("tiny-threshold")).await.unwrap_err().code(), "model_not_found");
    assert_eq!(choose(Some("classical")).await.unwrap(), Segmenter::Classical { reason: None });
    // In the store: it runs when ONNX Runtime loads.
    for entry in std::fs::read_dir(models_dir().join("tiny-threshold")).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("models/tiny-threshold/{}", path.file_name().unwrap().to_str().unwrap());
        let key = iris_shared::keys::ObjectKey::parse(&key).unwrap();
        backends.objects.put(&key, std::fs::read(&path).unwrap(), &ObjectMetadata::new()).await.unwrap();
    }
    if runtime().is_some() {
        match choose(None).await.unwrap() {
            Segmenter::Onnx(plan) => assert_eq!(plan.models[0].0.card.name, "tiny-threshold"),
            other => panic!("expected the ONNX model, got {other:?}"),
        }
    }
}

/// The classical model against TotalSegmentator's reference on the shared CT: lungs (the five lobes)
/// Dice ≥ 0.80, bone (vertebrae, ribs, sternum, sacrum, hips, femurs, humeri, scapulae, clavicles,
/// skull) Dice ≥ 0.75. The figures are printed; BENCHMARKS.md records them.
#[test]
fn classical_model_dice_against_totalsegmentator() {
    let Some(ct_path) = shared_data("example_ct_sm.nii.gz") else { return };
    let Some(seg_path) = shared_data("example_seg.nii.gz") else { return };
    let Some(labels_path) = shared_data("total_labels.json") else { return };
    let ct = decode_canonical(&std::fs::read(&ct_path).unwrap(), u64::MAX).unwrap();
    let reference = read_labels(&seg_path);
    assert_eq!(reference.len(), ct.voxel_count(), "the reference is on the CT's grid");
    let table: serde_json::Value = serde_json::from_slice(&std::fs::read(labels_path).unwrap()).unwrap();
    let ids_where = |keep: &dyn Fn(&str) -> bool| -> BTreeSet<i16> {
        table["labels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|label| keep(label["name"].as_str().unwrap()))
            .map(|label| label["id"].as_i64().unwrap() as i16)
            .collect()
    };
    let lung_ids = ids_where(&|name| name.starts_with("lung_") && name.contains("lobe"));
    assert_eq!(lung_ids.len(), 5);
    let bone_ids = ids_where(&|name| {
        ["vertebrae_", "rib_", "humerus_", "scapula_", "clavicula_", "femur_", "hip_"]
            .iter()
            .any(|p| name.starts_with(p))
            || ["sternum", "sacrum", "skull"].contains(&name)
    });
    assert_eq!(bone_ids.len(), 25 + 24 + 2 * 5 + 3);
    let labels = segment_classical(&ct).unwrap();
    let dice = |ours: u8, theirs: &BTreeSet<i16>| {
        let (mut both, mut a, mut b) = (0u64, 0u64, 0u64);
        for (label, truth) in labels.iter().zip(&reference) {
            let (x, y) = (*label == ours, theirs.contains(truth));
            both += u64::from(x && y);
            a += u64::from(x);
            b += u64::from(y);
        }
        2.0 * both as f64 / (a + b) as f64
    };
    let lungs = dice(iris_segment::classical::LUNGS_LABEL, &lung_ids);
    let bone = dice(iris_segment::classical::BONE_LABEL, &bone_ids);
    println!("classical-ct-v1 vs TotalSegmentator on example_ct_sm: lungs Dice {lungs:.3}, bone Dice {bone:.3}");
    assert!(lungs >= 0.80, "lungs Dice {lungs:.3} < 0.80");
    assert!(bone >= 0.75, "bone Dice {bone:.3} < 0.75");
}

/// The TotalSegmentator task template (`tasks/totalsegmentator/task.json`): its five 1.5 mm models
/// produce each of the 117 classes exactly once, from consecutive local ids; the fast model maps
/// every class to itself; ids, names and colours are those of the shared `total_labels.json`.
#[test]
fn the_totalsegmentator_task_template_covers_every_class_once() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/totalsegmentator/task.json");
    let task = TaskDefinition::parse("totalsegmentator", &std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(task.labels.len(), 117);
    assert_eq!(task.models.len(), 5);
    let mut producer: BTreeMap<u8, &str> = BTreeMap::new();
    for model in &task.models {
        let map = model.label_map.as_ref().expect("the template spells every label map out");
        let locals: Vec<u8> = map.keys().copied().collect();
        assert_eq!(locals, (1..=map.len() as u8).collect::<Vec<_>>(), "{}: local ids 1..n", model.model);
        for &class in map.values() {
            assert_eq!(producer.insert(class, &model.model), None, "class {class} comes from two models");
        }
    }
    let classes: BTreeSet<u8> = task.labels.iter().map(|label| label.id as u8).collect();
    assert_eq!(producer.keys().copied().collect::<BTreeSet<u8>>(), classes);
    // The split of TotalSegmentator's class_map_5_parts, spot-checked at each model's ends.
    let local_of = |model: &str, name: &str| {
        let id = task.label_id(name).unwrap();
        let map = task.models.iter().find(|m| m.model == model).unwrap().label_map.as_ref().unwrap();
        map.iter().find(|(_, class)| **class == id).map(|(local, _)| *local)
    };
    assert_eq!(local_of("totalseg-291-organs", "spleen"), Some(1));
    assert_eq!(local_of("totalseg-291-organs", "kidney_cyst_right"), Some(24));
    assert_eq!(local_of("totalseg-292-vertebrae", "sacrum"), Some(1));
    assert_eq!(local_of("totalseg-292-vertebrae", "vertebrae_C1"), Some(26));
    assert_eq!(local_of("totalseg-293-cardiac", "heart"), Some(1));
    assert_eq!(local_of("totalseg-293-cardiac", "iliac_vena_right"), Some(18));
    assert_eq!(local_of("totalseg-294-muscles", "humerus_left"), Some(1));
    assert_eq!(local_of("totalseg-294-muscles", "skull"), Some(23));
    assert_eq!(local_of("totalseg-295-ribs", "rib_left_1"), Some(1));
    assert_eq!(local_of("totalseg-295-ribs", "costal_cartilages"), Some(26));
    assert_eq!(task.fast_models.len(), 1);
    let fast = task.fast_models[0].label_map.as_ref().unwrap();
    assert_eq!(fast.len(), 117);
    assert!(fast.iter().all(|(local, class)| local == class), "the 3 mm model's ids are the task's");

    let Some(labels_path) = shared_data("total_labels.json") else { return };
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(labels_path).unwrap()).unwrap();
    let reference: Vec<(u16, String, [u8; 3])> = reference["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|label| {
            let rgb = label["rgb"].as_array().unwrap();
            let channel = |n: usize| rgb[n].as_u64().unwrap() as u8;
            (
                label["id"].as_u64().unwrap() as u16,
                label["name"].as_str().unwrap().to_owned(),
                [channel(0), channel(1), channel(2)],
            )
        })
        .collect();
    let template: Vec<(u16, String, [u8; 3])> =
        task.labels.iter().map(|label| (label.id, label.name.clone(), label.color)).collect();
    assert_eq!(template, reference);
}
