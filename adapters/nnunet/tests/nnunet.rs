//! nnU-Net models in iris, against nnU-Net itself. Each test builds an nnU-Net v2 results folder
//! with nnU-Net's own code (`python/nnunet_fixture.py`: the trainer's network from the plans,
//! random weights, small patches so CI stays fast), imports it, and compares what iris does with
//! what nnU-Net's code does.
//!
//! - `import`: the card says what nnU-Net's classes read (spacing, patch, normalisation, labels,
//!   mirror axes, folds), refusals say why;
//! - `parity`: `nnUNetPredictor` and iris's sliding window on the shared CT at the model's spacing:
//!   logits on the model grid, and labels;
//! - `totalsegmentator`: TotalSegmentator's weights folder, as TotalSegmentator lays it out.
//!
//! They need nnU-Net's venv (`scripts/nnunet-env.sh install`), ONNX Runtime and the shared CT;
//! without one they skip with a message, unless `IRIS_TEST_STRICT=1` (`scripts/test.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use iris_core::testing::{self, Prerequisite};
use iris_nnunet::{ImportError, ImportOptions, NnunetPython, import_nnunet};
use iris_segment::sliding_window::{
    Resampling, zoom_hounsfield_like_totalsegmentator, zoom_labels_like_totalsegmentator, zoomed_length,
};

fn repo_root() -> PathBuf {
    testing::repository_root(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/nnunet_fixture.py")
}

/// nnU-Net's Python, or `None` (skipped) without its venv.
fn python(test: &str) -> Option<NnunetPython> {
    testing::prerequisite(test, Prerequisite::Nnunet, NnunetPython::locate().map_err(|error| error.to_string()))
}

/// Runs the fixture script; its stdout.
fn fixture(python: &NnunetPython, arguments: &[&str]) -> String {
    let output = Command::new(&python.python).arg(fixture_script()).args(arguments).output().expect("run python");
    assert!(output.status.success(), "nnunet_fixture.py {arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A trained-model folder made by the fixture script (its last line of output) from `arguments`
/// (whitespace-separated).
fn trained_model(python: &NnunetPython, results: &Path, arguments: &str) -> PathBuf {
    let mut all = vec!["model", results.to_str().unwrap()];
    all.extend(arguments.split_whitespace());
    PathBuf::from(fixture(python, &all).lines().last().expect("the model folder").trim())
}

mod import {
    use super::*;

    #[test]
    fn the_card_says_what_nnunet_reads_from_the_plans_and_dataset() {
        const TEST: &str = "the_card_says_what_nnunet_reads_from_the_plans_and_dataset";
        let Some(python) = python(TEST) else { return };
        let work = tempfile::tempdir().unwrap();
        // A transposed, anisotropic model with two folds and nnU-Net's default mirroring. The
        // fixture's --spacing and --patch are plans.json's, in the network's (transposed) order.
        let folder = trained_model(
            &python,
            &work.path().join("results"),
            "--dataset 902 --name Liver --labels liver tumour --spacing 2.0 1.0 0.5 --patch 8 16 24 --features 4 8 --folds 0 1 --transpose 2 0 1",
        );
        let imported = import_nnunet(&folder, &work.path().join("models"), &ImportOptions::default(), &python).unwrap();
        let card = &imported.card;
        assert_eq!(card.name, "dataset902-liver");
        // plans.json holds spacing and patch after transpose_forward [2, 0, 1]: network axis i is
        // volume axis transpose_forward[i]; the card holds them in the volume's own order.
        assert_eq!(imported.facts.transpose_forward, [2, 0, 1]);
        assert_eq!(card.window.spacing_mm, [1.0, 0.5, 2.0]);
        assert_eq!(card.window.patch, [16, 24, 8]);
        assert_eq!(card.window.mirror_axes, vec![0, 1, 2]);
        assert_eq!(imported.facts.folds, ["0", "1"]);
        let names: Vec<&str> = card.labels.values().map(String::as_str).collect();
        assert_eq!(names, ["liver", "tumour"]);
        // CTNormalization: clip to the 0.5th and 99.5th percentiles, then the mean and std.
        let norm = card.window.normalization;
        assert_eq!((norm.clip_low, norm.clip_high, norm.mean, norm.std), (-1004.0, 1588.0, 44.4, 398.9));
        assert_eq!(card.window.tile_step, 0.5);
        let difference = imported.facts.check.max_abs_difference.expect("checked by ONNX Runtime");
        assert!(difference < 1e-3, "ONNX against torch: {difference}");
        for file in ["model.onnx", "card.json", "nnunet.json"] {
            assert!(imported.dir.join(file).is_file(), "{file}");
        }
    }

    #[test]
    fn no_mirroring_trainers_give_no_mirror_axes_and_one_fold_can_be_chosen() {
        const TEST: &str = "no_mirroring_trainers_give_no_mirror_axes_and_one_fold_can_be_chosen";
        let Some(python) = python(TEST) else { return };
        let work = tempfile::tempdir().unwrap();
        let folder = trained_model(
            &python,
            &work.path().join("results"),
            "--dataset 903 --name Old --labels a b c --spacing 3 3 3 --patch 16 16 16 --features 4 8 --folds 0 3 --trainer nnUNetTrainerNoMirroring --old-plans",
        );
        let options =
            ImportOptions { name: Some("old".into()), folds: Some(vec!["3".into()]), ..ImportOptions::default() };
        let imported = import_nnunet(&folder, &work.path().join("models"), &options, &python).unwrap();
        assert!(imported.card.window.mirror_axes.is_empty());
        assert_eq!(imported.facts.folds, ["3"]);
        assert_eq!(imported.facts.trainer, "nnUNetTrainerNoMirroring");
        assert_eq!(imported.card.labels.len(), 3);
    }

    #[test]
    fn what_iris_cannot_run_is_refused_with_the_reason() {
        const TEST: &str = "what_iris_cannot_run_is_refused_with_the_reason";
        let Some(python) = python(TEST) else { return };
        let work = tempfile::tempdir().unwrap();
        let results = work.path().join("results");
        let folder = trained_model(
            &python,
            &results,
            "--dataset 904 --name Regions --labels a b --spacing 3 3 3 --patch 16 16 16 --features 4 8",
        );
        // The same folder, made regions-based, then MR-normalised, then without its plans.
        let dataset_path = folder.join("dataset.json");
        let original = std::fs::read_to_string(&dataset_path).unwrap();
        let mut dataset: serde_json::Value = serde_json::from_str(&original).unwrap();
        dataset["labels"] = serde_json::json!({"background": 0, "whole": [1, 2], "core": 2});
        dataset["regions_class_order"] = serde_json::json!([1, 2]);
        std::fs::write(&dataset_path, dataset.to_string()).unwrap();
        let out = work.path().join("models");
        match import_nnunet(&folder, &out, &ImportOptions::default(), &python) {
            Err(ImportError::Refused(reason)) => assert!(reason.contains("regions"), "{reason}"),
            other => panic!("a regions-based model was not refused: {other:?}"),
        }
        std::fs::write(&dataset_path, &original).unwrap();
        let plans_path = folder.join("plans.json");
        let plans_text = std::fs::read_to_string(&plans_path).unwrap();
        std::fs::write(&plans_path, plans_text.replace("CTNormalization", "ZScoreNormalization")).unwrap();
        match import_nnunet(&folder, &out, &ImportOptions::default(), &python) {
            Err(ImportError::Refused(reason)) => assert!(reason.contains("CTNormalization"), "{reason}"),
            other => panic!("a Z-score model was not refused: {other:?}"),
        }
        std::fs::remove_file(&plans_path).unwrap();
        match import_nnunet(&folder, &out, &ImportOptions::default(), &python) {
            Err(ImportError::Layout(reason)) => assert!(reason.contains("plans.json"), "{reason}"),
            other => panic!("a folder without plans.json was not refused: {other:?}"),
        }
        assert!(!out.join("dataset904-regions").exists(), "nothing is written for a refused model");
    }
}

mod parity {
    use iris_core::config::{DeviceChoice, SegmentSettings};
    use iris_onnxruntime::OrtRuntime;
    use iris_segment::{NetworkRuntime, SegmentOptions, decode_canonical, load_local_plan, run_sliding_window_logits};

    use super::*;

    fn runtime(test: &str) -> Option<OrtRuntime> {
        let settings = SegmentSettings {
            default_model: String::new(),
            device: DeviceChoice::Cpu,
            model_cache_dir: std::env::temp_dir(),
            onnx_runtime_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
            onnx_threads: 2,
        };
        let runtime = OrtRuntime::new(&settings);
        let found = runtime.check().map(|()| runtime).map_err(|error| error.to_string());
        testing::prerequisite(test, Prerequisite::OnnxRuntime, found)
    }

    fn read_f32(path: &Path) -> Vec<f32> {
        std::fs::read(path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// nnU-Net's predictor and iris on the shared CT at the model's spacing (3 mm: no resampling on
    /// either side), with a two-fold ensemble and nnU-Net's default mirroring over all three axes.
    ///
    /// nnU-Net accumulates the tiles' weighted logits and their weights in float16
    /// (`torch.half` in `_internal_predict_sliding_window_return_logits`), iris in float32; both
    /// weigh the tiles with nnU-Net's float16 Gaussian map. So the test runs nnU-Net's predictor
    /// twice: as it is, and with its two accumulators in float32. Against the second, iris's logits
    /// must agree to float32 precision and the labels everywhere (the algorithm is nnU-Net's);
    /// against the first, the labels must agree on at least 99.9 % of voxels: where they differ,
    /// nnU-Net's own float32 run agrees with iris, so the float16 sums changed nnU-Net's answer.
    #[test]
    fn iris_gives_nnunet_predictor_logits_and_labels_on_the_shared_ct() {
        const TEST: &str = "iris_gives_nnunet_predictor_logits_and_labels_on_the_shared_ct";
        let Some(ct_path) = testing::shared_data(TEST, env!("CARGO_MANIFEST_DIR"), "example_ct_sm.nii.gz") else {
            return;
        };
        let Some(python) = python(TEST) else { return };
        let Some(runtime) = runtime(TEST) else { return };
        let work = tempfile::tempdir().unwrap();
        let folder = trained_model(
            &python,
            &work.path().join("results"),
            "--dataset 905 --name Parity --labels a b c d --spacing 3 3 3 --patch 16 48 64 --features 4 8 16 --folds 0 1",
        );
        let imported = import_nnunet(&folder, &work.path().join("models"), &ImportOptions::default(), &python).unwrap();
        let prefix = work.path().join("nnunet");
        let (ct_arg, prefix_arg) = (ct_path.to_str().unwrap(), prefix.to_str().unwrap());
        let predict =
            ["predict", folder.to_str().unwrap(), ct_arg, prefix_arg, "--threads", "2", "--float32-accumulation"];
        fixture(&python, &predict);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(prefix.with_extension("json")).unwrap()).unwrap();
        let shape: Vec<usize> = serde_json::from_value(report["logits_shape"].clone()).unwrap();
        let input: Vec<usize> = serde_json::from_value(report["input_shape_zyx"].clone()).unwrap();
        assert_eq!(
            shape[1..],
            input[..],
            "nnU-Net cropped the CT ({}): the tiles would differ",
            report["crop_bbox_zyx"]
        );
        let nnunet = read_f32(&prefix.with_extension("logits.f32"));
        let nnunet_f32 = read_f32(&prefix.with_extension("logits32.f32"));

        let ct = decode_canonical(&std::fs::read(&ct_path).unwrap(), u64::MAX).unwrap();
        let plan = load_local_plan(&imported.dir, &SegmentOptions::default()).unwrap();
        let (model, _) = &plan.models[0];
        let mut network = runtime.network(model).unwrap();
        let logits = run_sliding_window_logits(&ct, &model.card.window, network.as_mut()).unwrap();
        assert_eq!([logits.channels, logits.grid[0], logits.grid[1], logits.grid[2]][..], shape[..]);

        let relative = |a: f32, b: f32| (a - b).abs() / b.abs().max(1.0);
        let worst =
            |reference: &[f32]| logits.values.iter().zip(reference).map(|(a, b)| relative(*a, *b)).fold(0f32, f32::max);
        let (against_f32, against_f16) = (worst(&nnunet_f32), worst(&nnunet));
        let voxels = logits.values.len() / logits.channels;
        let argmax = |values: &[f32], voxel: usize| {
            (0..logits.channels)
                .fold(0, |best, c| if values[c * voxels + voxel] > values[best * voxels + voxel] { c } else { best })
        };
        let iris_labels: Vec<usize> = (0..voxels).map(|v| argmax(&logits.values, v)).collect();
        let differing: Vec<usize> = (0..voxels).filter(|v| iris_labels[*v] != argmax(&nnunet, *v)).collect();
        let differing_f32 = (0..voxels).filter(|v| iris_labels[*v] != argmax(&nnunet_f32, *v)).count();
        let agreement = 1.0 - differing.len() as f64 / voxels as f64;
        let classes: std::collections::BTreeSet<usize> = iris_labels.iter().copied().collect();
        eprintln!(
            "parity: {voxels} voxels, {} classes; logits against nnU-Net with float32 sums: {against_f32:.1e} relative \
             at most, labels differ on {differing_f32}; against nnU-Net as it is (float16 sums): {against_f16:.1e}, labels \
             equal on {:.4} % ({} voxels differ)",
            classes.len(),
            agreement * 100.0,
            differing.len()
        );
        assert!(classes.len() >= 3, "a meaningful comparison needs several classes, got {classes:?}");
        // ONNX Runtime's kernels and torch's differ by about 1e-4 on the network itself (the
        // exporter's own check); that is all that may separate the two.
        assert!(against_f32 < 1e-3, "logits differ from nnU-Net's float32 sums by {against_f32} (relative)");
        assert_eq!(differing_f32, 0, "labels differ from nnU-Net's with float32 sums");
        assert!(agreement >= 0.999, "labels equal nnU-Net's on only {:.4} %", agreement * 100.0);
    }
}

mod totalsegmentator {
    use iris_segment::decode_canonical;

    use super::*;

    /// The weights folder as TotalSegmentator lays it out (old plans format, its trainers, its
    /// label names), with small networks: imported, it is TotalSegmentator's `total` task.
    #[test]
    fn totalsegmentator_weights_become_the_total_task() {
        const TEST: &str = "totalsegmentator_weights_become_the_total_task";
        let Some(python) = python(TEST) else { return };
        let work = tempfile::tempdir().unwrap();
        let weights = work.path().join("weights");
        let template = repo_root().join("services/segment/tasks/totalsegmentator/task.json");
        fixture(&python, &["totalsegmentator", weights.to_str().unwrap(), "--template", template.to_str().unwrap()]);
        let out = work.path().join("models");
        let imported = iris_nnunet::import_totalsegmentator(&weights, &out, &python).unwrap();
        assert_eq!(imported.task.labels.len(), 117);
        assert_eq!(imported.models.len(), 6);
        assert_eq!(imported.task.fast_models.len(), 1);
        for model in &imported.models {
            assert_eq!(model.card.window.tile_step, 0.8, "{}", model.card.name);
            assert_eq!(model.card.window.resampling, Resampling::TotalSegmentator, "{}", model.card.name);
            assert!(
                model.card.window.mirror_axes.is_empty(),
                "{}: TotalSegmentator's trainers do not mirror",
                model.card.name
            );
        }
        let spacing: Vec<f64> = imported.models.iter().map(|model| model.card.window.spacing_mm[0]).collect();
        assert_eq!(spacing, [1.5, 1.5, 1.5, 1.5, 1.5, 3.0]);
        assert!(out.join("total/task.json").is_file());
        // Without the fast model the task has no fast mode; a renamed class is refused.
        std::fs::remove_dir_all(weights.join("Dataset297_TotalSegmentator_total_3mm_1559subj")).unwrap();
        let without_fast =
            iris_nnunet::import_totalsegmentator(&weights, &work.path().join("models2"), &python).unwrap();
        assert!(without_fast.task.fast_models.is_empty());
        let organs = weights.join("Dataset291_TotalSegmentator_part1_organs_1559subj/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/dataset.json");
        let text = std::fs::read_to_string(&organs).unwrap();
        std::fs::write(&organs, text.replace("\"spleen\"", "\"milt\"")).unwrap();
        match iris_nnunet::import_totalsegmentator(&weights, &work.path().join("models3"), &python) {
            Err(ImportError::Refused(reason)) => {
                assert!(reason.contains("milt") && reason.contains("spleen"), "{reason}")
            }
            other => panic!("a renamed class was not refused: {other:?}"),
        }
    }

    /// iris's `totalsegmentator` resampling gives the array TotalSegmentator's `change_spacing`
    /// gives (scipy's zoom, run here), integer for integer, to the models' 1.5 mm and to an
    /// anisotropic spacing with uneven ratios; and its labels come back to the CT's grid as
    /// scipy's order-0 zoom brings them.
    #[test]
    fn iris_resamples_the_ct_and_labels_as_totalsegmentator_does() {
        const TEST: &str = "iris_resamples_the_ct_and_labels_as_totalsegmentator_does";
        let Some(ct_path) = testing::shared_data(TEST, env!("CARGO_MANIFEST_DIR"), "example_ct_sm.nii.gz") else {
            return;
        };
        let Some(python) = python(TEST) else { return };
        let ct = decode_canonical(&std::fs::read(&ct_path).unwrap(), u64::MAX).unwrap();
        let work = tempfile::tempdir().unwrap();
        for (index, spacing_xyz) in [[1.5, 1.5, 1.5], [1.3, 2.2, 0.9]].into_iter().enumerate() {
            let prefix = work.path().join(format!("zoom{index}"));
            let arguments = [spacing_xyz[0].to_string(), spacing_xyz[1].to_string(), spacing_xyz[2].to_string()];
            let mut command = vec!["zoom", ct_path.to_str().unwrap(), prefix.to_str().unwrap(), "--spacing"];
            command.extend(arguments.iter().map(String::as_str));
            fixture(&python, &command);
            let [nx, ny, nz] = ct.dims();
            let spacing = ct.spacing();
            let model = [
                zoomed_length(nz, spacing[2], spacing_xyz[2]),
                zoomed_length(ny, spacing[1], spacing_xyz[1]),
                zoomed_length(nx, spacing[0], spacing_xyz[0]),
            ];
            let scipy: Vec<i32> = std::fs::read(prefix.with_extension("hu.i32"))
                .unwrap()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(scipy.len(), model.iter().product::<usize>(), "grid {model:?} at {spacing_xyz:?}");
            let iris = zoom_hounsfield_like_totalsegmentator(&ct, model);
            let differing = iris.iter().zip(&scipy).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "{differing} of {} voxels differ from scipy at {spacing_xyz:?}", iris.len());
            let labels = std::fs::read(prefix.with_extension("labels.u8")).unwrap();
            let back = std::fs::read(prefix.with_extension("back.u8")).unwrap();
            assert_eq!(zoom_labels_like_totalsegmentator(&labels, model, [nx, ny, nz]), back, "{spacing_xyz:?}");
        }
    }
}
