//! The segment crate's integration tests: model cards and tasks, the model store, model choice, and
//! the classical model against TotalSegmentator's reference segmentation. (The sliding window with
//! real networks against the Python reference is tested with ONNX Runtime in `adapters/onnxruntime`.)
//!
//! Tests that need `../shared/data` skip with a message when it is absent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iris_core::ports::{ObjectMetadata, ObjectStore};
use iris_core::{ErrorCode, testing};
use iris_segment::card::{ModelCard, TaskDefinition};
use iris_segment::classical::{BONE_LABEL, LUNGS_LABEL, classical_counterpart_of_totalsegmentator_class};
use iris_segment::model_store::load_local_model;
use iris_segment::sliding_window::Resampling;
use iris_segment::{
    LocalModel, ModelStore, ModelStoreError, Network, NetworkRuntime, NoNetworkRuntime, RuntimeError, SegmentError,
    SegmentOptions, Segmenter, TaskPlan, decode_canonical, segment_classical,
};
use iris_volume::nifti_codec::{DecodeLimits, decode_nifti_hounsfield};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models")
}

fn shared_data(test: &str, file: &str) -> Option<PathBuf> {
    testing::shared_data(test, env!("CARGO_MANIFEST_DIR"), file)
}

/// A stand-in for ONNX Runtime whose library always loads: what model choice asks of a runtime
/// is only whether it loads (the real runtime's tests are in `adapters/onnxruntime`).
struct LoadableRuntime;

impl NetworkRuntime for LoadableRuntime {
    fn check(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn network(&self, _model: &LocalModel) -> Result<Box<dyn Network + '_>, RuntimeError> {
        Err(RuntimeError::InvalidModel("the stand-in runs no network".to_owned()))
    }
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
    assert_eq!(card.window.resampling, Resampling::HalfPixel, "a card without `resampling` keeps iris's own");
    let totalseg = ModelCard::parse("m", &card_json(|c| c["resampling"] = "totalsegmentator".into())).unwrap();
    assert_eq!(totalseg.window.resampling, Resampling::TotalSegmentator);
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
        ("resampling", card_json(|c| c["resampling"] = "cubic".into()), "resampling 'cubic'"),
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
        assert_eq!(SegmentError::Store(ModelStoreError::Card(error)).code(), ErrorCode::ModelCardInvalid);
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
    assert_eq!(error.code(), ErrorCode::InvalidOption);
    let error = TaskPlan::select(&task, &options(&[("fast", "true")]).unwrap()).unwrap_err();
    assert!(error.to_string().contains("no fast models"), "{error}");
    assert_eq!(options(&[("fast", "maybe")]).unwrap_err().code(), ErrorCode::InvalidOption);
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
    assert_eq!(error.code(), ErrorCode::ModelChecksumMismatch);
    std::fs::remove_file(dir.join("model.onnx")).unwrap();
    assert_eq!(load_local_model(&dir).unwrap_err().code(), ErrorCode::ModelNotFound);
}

async fn store_with_models(root: &Path, names: &[&str]) -> Arc<dyn ObjectStore> {
    let database = iris_embedded::SqliteDatabase::open(&root.join("db.sqlite3")).unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(iris_embedded::DirectoryObjectStore::new(database, root.join("objects"), "test", BTreeMap::new()));
    for name in names {
        for entry in std::fs::read_dir(models_dir().join(name)).unwrap() {
            let path = entry.unwrap().path();
            let key = format!("models/{name}/{}", path.file_name().unwrap().to_str().unwrap());
            let key = iris_core::keys::ObjectKey::parse(&key).unwrap();
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
    assert_eq!(models.resolve("../etc").await.unwrap_err().code(), ErrorCode::InvalidOption);
    assert_eq!(models.resolve("Upper").await.unwrap_err().code(), ErrorCode::InvalidOption);

    let fetched = models.fetch("tiny-threshold").await.unwrap();
    assert!(fetched.onnx_path.starts_with(&cache));
    assert_eq!(
        std::fs::read(&fetched.onnx_path).unwrap(),
        std::fs::read(models_dir().join("tiny-threshold/model.onnx")).unwrap()
    );
    // Cached by checksum: a later fetch does not need model.onnx in the store any more.
    let onnx_key = iris_core::keys::ObjectKey::parse("models/tiny-threshold/model.onnx").unwrap();
    store.put(&onnx_key, b"corrupt".to_vec(), &ObjectMetadata::new()).await.unwrap();
    assert_eq!(models.fetch("tiny-threshold").await.unwrap(), fetched);
    // A fresh cache gets the corrupt bytes and refuses them.
    let fresh = ModelStore::new(Arc::clone(&store), root.path().join("fresh-cache"));
    assert_eq!(fresh.fetch("tiny-threshold").await.unwrap_err().code(), ErrorCode::ModelChecksumMismatch);
    assert_eq!(fresh.fetch("tiny-random-b").await.unwrap_err().code(), ErrorCode::ModelNotFound);
}

#[tokio::test]
async fn models_and_tasks_are_pushed_listed_and_removed() {
    let root = tempfile::tempdir().unwrap();
    let store = store_with_models(root.path(), &[]).await;
    let models = ModelStore::new(Arc::clone(&store), root.path().join("cache"));
    assert_eq!(models.push(&models_dir().join("tiny-threshold"), None).await.unwrap(), "tiny-threshold");
    assert_eq!(models.push(&models_dir().join("tiny-random-a"), Some("renamed")).await.unwrap(), "renamed");
    assert_eq!(models.push(&models_dir().join("tiny-merge"), None).await.unwrap(), "tiny-merge");
    // What was pushed runs: fetched and checked against its card.
    assert_eq!(models.fetch("renamed").await.unwrap().card.name, "renamed");
    let listed = models.list().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|model| model.name.as_str()).collect();
    assert_eq!(names, ["renamed", "tiny-merge", "tiny-threshold"]);
    assert_eq!(listed[1].kind.as_deref(), Some("task of 2 models"));
    assert!(listed[2].kind.as_deref().is_some_and(|kind| kind.starts_with("model, ")), "{:?}", listed[2].kind);
    assert_eq!(listed[2].files.keys().map(String::as_str).collect::<Vec<_>>(), ["card.json", "model.onnx"]);
    assert_eq!(listed[2].onnx_sha256.as_deref().map(str::len), Some(64));

    // A model whose network does not match its card is refused before anything is stored.
    let corrupt = root.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::copy(models_dir().join("tiny-threshold/card.json"), corrupt.join("card.json")).unwrap();
    std::fs::write(corrupt.join("model.onnx"), b"not the network").unwrap();
    assert_eq!(models.push(&corrupt, None).await.unwrap_err().code(), ErrorCode::ModelChecksumMismatch);
    assert_eq!(
        models.push(&models_dir().join("tiny-threshold"), Some("Bad/Name")).await.unwrap_err().code(),
        ErrorCode::InvalidOption
    );
    assert!(models.list().await.unwrap().iter().all(|model| model.name != "corrupt"));

    assert_eq!(models.remove("tiny-threshold").await.unwrap(), 2);
    assert_eq!(models.resolve("tiny-threshold").await.unwrap(), None);
    assert_eq!(models.remove("tiny-threshold").await.unwrap(), 0, "removing what is gone removes nothing");
    assert_eq!(models.list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_default_model_falls_back_to_classical_and_a_requested_one_must_exist() {
    let root = tempfile::tempdir().unwrap();
    let config = iris_core::config::IrisConfig::from_lookup(|name| match name {
        "IRIS_DATA_DIR" => Some(root.path().display().to_string()),
        "IRIS_SEGMENT_MODEL" => Some("tiny-threshold".into()),
        _ => None,
    })
    .unwrap();
    let backends = iris_embedded::EmbeddedBackends::open(&config).unwrap().ports();
    let without_runtime = NoNetworkRuntime { reason: "no ONNX Runtime in this test".to_owned() };
    let handlers = [
        iris_segment::SegmentHandler::from_config(&backends, &config, Arc::new(LoadableRuntime)),
        iris_segment::SegmentHandler::from_config(&backends, &config, Arc::new(without_runtime)),
    ];
    let choose = |handler: usize, model: Option<&str>| {
        let options = SegmentOptions { model: model.map(str::to_owned), ..SegmentOptions::default() };
        let handler = &handlers[handler];
        async move { handler.choose_segmenter(&options).await }
    };
    let (loads, missing) = (0, 1);
    // Nothing in the store: the default falls back with its reason, a named model is an error.
    match choose(loads, None).await.unwrap() {
        Segmenter::Classical { reason: Some(reason) } => assert!(reason.contains("tiny-threshold"), "{reason}"),
        other => panic!("expected the classical fallback, got {other:?}"),
    }
    assert_eq!(choose(loads, Some("tiny-threshold")).await.unwrap_err().code(), ErrorCode::ModelNotFound);
    assert_eq!(choose(loads, Some("classical")).await.unwrap(), Segmenter::Classical { reason: None });
    // In the store: it runs when the runtime loads; without a runtime the default falls back with
    // the runtime's reason, and a job that names the model fails.
    for entry in std::fs::read_dir(models_dir().join("tiny-threshold")).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("models/tiny-threshold/{}", path.file_name().unwrap().to_str().unwrap());
        let key = iris_core::keys::ObjectKey::parse(&key).unwrap();
        backends.objects.put(&key, std::fs::read(&path).unwrap(), &ObjectMetadata::new()).await.unwrap();
    }
    match choose(loads, None).await.unwrap() {
        Segmenter::Onnx(plan) => assert_eq!(plan.models[0].0.card.name, "tiny-threshold"),
        other => panic!("expected the ONNX model, got {other:?}"),
    }
    match choose(missing, None).await.unwrap() {
        Segmenter::Classical { reason: Some(reason) } => assert!(reason.contains("no ONNX Runtime"), "{reason}"),
        other => panic!("expected the classical fallback, got {other:?}"),
    }
    let error = choose(missing, Some("tiny-threshold")).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::ModelRuntimeUnavailable, "{error}");
}

/// The classical model against TotalSegmentator's reference on the shared CT: lungs (the five lobes)
/// Dice ≥ 0.90, bone (vertebrae, ribs, sternum, sacrum, hips, femurs, humeri, scapulae, clavicles,
/// skull) Dice ≥ 0.80 (issue #23's goals). The figures are printed; BENCHMARKS.md records them with
/// a second CT (`iris-dev eval classical`).
#[test]
fn classical_model_dice_against_totalsegmentator() {
    const TEST: &str = "classical_model_dice_against_totalsegmentator";
    let Some(ct_path) = shared_data(TEST, "example_ct_sm.nii.gz") else { return };
    let Some(seg_path) = shared_data(TEST, "example_seg.nii.gz") else { return };
    let Some(labels_path) = shared_data(TEST, "total_labels.json") else { return };
    let ct = decode_canonical(&std::fs::read(&ct_path).unwrap(), u64::MAX).unwrap();
    let reference = read_labels(&seg_path);
    assert_eq!(reference.len(), ct.voxel_count(), "the reference is on the CT's grid");
    let table: serde_json::Value = serde_json::from_slice(&std::fs::read(labels_path).unwrap()).unwrap();
    let ids_where = |wanted: u8| -> BTreeSet<i16> {
        table["labels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|label| {
                classical_counterpart_of_totalsegmentator_class(label["name"].as_str().unwrap()) == Some(wanted)
            })
            .map(|label| label["id"].as_i64().unwrap() as i16)
            .collect()
    };
    let lung_ids = ids_where(LUNGS_LABEL);
    assert_eq!(lung_ids.len(), 5);
    let bone_ids = ids_where(BONE_LABEL);
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
    let lungs = dice(LUNGS_LABEL, &lung_ids);
    let bone = dice(BONE_LABEL, &bone_ids);
    println!("classical-ct-v1 vs TotalSegmentator on example_ct_sm: lungs Dice {lungs:.3}, bone Dice {bone:.3}");
    assert!(lungs >= 0.90, "lungs Dice {lungs:.3} < 0.90");
    assert!(bone >= 0.80, "bone Dice {bone:.3} < 0.80");
}

/// The TotalSegmentator task template (`tasks/totalsegmentator/task.json`): its five 1.5 mm models
/// produce each of the 117 classes exactly once, from consecutive local ids; the fast model maps
/// every class to itself; ids, names and colours are those of the shared `total_labels.json`.
#[test]
fn the_totalsegmentator_task_template_covers_every_class_once() {
    const TEST: &str = "the_totalsegmentator_task_template_covers_every_class_once";
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

    let Some(labels_path) = shared_data(TEST, "total_labels.json") else { return };
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
