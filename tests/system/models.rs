//! Models brought in as a user brings them: TotalSegmentator's weights folder (laid out as
//! TotalSegmentator lays it out, random weights, made by nnU-Net's own code) imported and pushed
//! with `iris model`, then jobs that run its task end to end with `iris process`: every one of its
//! 117 classes named in the outputs, `fast` mode, and `roi-subset`.

use crate::support::*;

/// Runs `iris` with `arguments` on `data`; its stdout, after checking its exit code is 0.
fn iris(data: &Path, arguments: &[&str]) -> String {
    let output = Command::new(iris_binary()).args(arguments).env("IRIS_DATA_DIR", data).output().expect("run iris");
    assert!(
        output.status.success(),
        "iris {arguments:?} exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `iris process` of a copy of `ct` named `name` with the job options; the job record and stats.json.
fn process(
    data: &Path,
    work: &Path,
    ct: &Path,
    name: &str,
    options: &[&str],
) -> (serde_json::Value, serde_json::Value) {
    let upload = work.join(name);
    std::fs::copy(ct, &upload).unwrap();
    let out = work.join(format!("{name}.out"));
    let mut arguments = vec!["process", upload.to_str().unwrap(), "--json", "--out", out.to_str().unwrap()];
    for option in options {
        arguments.extend(["--option", option]);
    }
    let record: serde_json::Value = serde_json::from_str(&iris(data, &arguments)).expect("the job record");
    let stats = serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    (record, stats)
}

fn label_names(stats: &serde_json::Value) -> Vec<String> {
    stats["labels"].as_array().unwrap().iter().map(|label| label["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_totalsegmentator_weights_folder_becomes_a_task_that_process_runs() {
    const TEST: &str = "a_totalsegmentator_weights_folder_becomes_a_task_that_process_runs";
    let Some(ct) = shared_ct(TEST) else { return };
    let python = iris_nnunet::NnunetPython::locate().map_err(|error| error.to_string());
    let Some(python) = iris_core::testing::prerequisite(TEST, iris_core::testing::Prerequisite::Nnunet, python) else {
        return;
    };
    if !onnx_runtime_loads(TEST) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (weights, data) = (work.path().join("weights"), work.path().join("data"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let made = Command::new(&python.python)
        .arg(root.join("adapters/nnunet/python/nnunet_fixture.py"))
        .args(["totalsegmentator", weights.to_str().unwrap(), "--template"])
        .arg(root.join("services/segment/tasks/totalsegmentator/task.json"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let models = work.path().join("models");
    iris(
        &data,
        &[
            "model",
            "import",
            "totalsegmentator",
            weights.to_str().unwrap(),
            "--out",
            models.to_str().unwrap(),
            "--push",
        ],
    );
    let listed: serde_json::Value = serde_json::from_str(&iris(&data, &["model", "list", "--json"])).unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|model| model["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "total",
            "totalseg-291-organs",
            "totalseg-292-vertebrae",
            "totalseg-293-cardiac",
            "totalseg-294-muscles",
            "totalseg-295-ribs",
            "totalseg-297-fast"
        ]
    );

    // The default: the five 1.5 mm parts, merged into TotalSegmentator's 117 classes.
    let (record, stats) = process(&data, work.path(), &ct, "ct.nii.gz", &["model=total"]);
    assert_eq!(record["status"], "COMPLETED", "{record}");
    assert_eq!(stats["model"], "total");
    let all = label_names(&stats);
    assert_eq!(all.len(), 117, "every class of the task is named in stats.json");
    for name in ["spleen", "liver", "vertebrae_L1", "heart", "rib_left_12", "gluteus_maximus_left"] {
        assert!(all.iter().any(|label| label == name), "{name} is missing");
    }
    assert!(stats["labels"].as_array().unwrap().iter().filter(|label| label["voxels"].as_u64() > Some(0)).count() > 10);

    // fast=true: the 3 mm model alone, the same 117 classes.
    let (record, fast) = process(&data, work.path(), &ct, "ct-fast.nii.gz", &["model=total", "fast=true"]);
    assert_eq!(record["status"], "COMPLETED", "{record}");
    assert_eq!(label_names(&fast).len(), 117);

    // roi-subset: only the classes asked for, and only the parts that make them run.
    let (record, subset) =
        process(&data, work.path(), &ct, "ct-roi.nii.gz", &["model=total", "roi-subset=liver,rib_left_3"]);
    assert_eq!(record["status"], "COMPLETED", "{record}");
    assert_eq!(label_names(&subset), ["liver", "rib_left_3"]);

    // `iris model rm` takes a model out again.
    iris(&data, &["model", "rm", "totalseg-297-fast"]);
    let listed: serde_json::Value = serde_json::from_str(&iris(&data, &["model", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 6);
}
