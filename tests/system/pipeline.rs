//! The whole pipeline in one process on the embedded backends: every stage, labels on the
//! upload's grid for RAS, LPS and LAS uploads (classical and ONNX models), bad inputs, duplicate
//! events, and the classical fallback without ONNX Runtime.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phantom_goes_through_every_stage_and_its_labels_land_on_the_upload_grid() {
    let harness = Harness::new(&[]);
    let pipeline = harness.start().await;
    let upload = small_phantom();
    let job_id = harness.submit("local", "phantom.nii.gz", upload.clone()).await;
    let job = harness.wait(&job_id).await;
    let names = check_completed_job(&harness.backends, &job, &upload).await;
    assert_eq!(names, vec!["body", "lungs", "bone"], "the phantom has body, lungs and bone");
    let history: Vec<String> =
        harness.embedded.jobs.history(&job_id).await.unwrap().into_iter().map(|h| h.status).collect();
    assert_eq!(history, LADDER, "every status, in order, once");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_ct_completes_with_labels_on_the_upload_grid() {
    let Some(path) = shared_ct("shared_ct_completes_with_labels_on_the_upload_grid") else { return };
    let harness = Harness::new(&[]);
    let pipeline = harness.start().await;
    let upload = std::fs::read(&path).expect("read shared CT");
    let job_id = harness.submit("local", "example_ct_sm.nii.gz", upload.clone()).await;
    let job = harness.wait(&job_id).await;
    let names = check_completed_job(&harness.backends, &job, &upload).await;
    assert!(names.contains(&"lungs".to_owned()) && names.contains(&"bone".to_owned()), "found {names:?}");
    pipeline.stop().await;
}

/// LPS and LAS uploads: labels come back on each upload's own grid, and each label voxel sits at
/// the same world position as in the RAS upload of the same anatomy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_identical_in_world_space_for_ras_lps_and_las_uploads() {
    labels_in_world_space_for_ras_lps_and_las(None).await;
}

/// The same with an ONNX model from the object store, chosen by the upload's `model` option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_model_labels_are_identical_in_world_space_for_ras_lps_and_las_uploads() {
    if !onnx_runtime_loads("onnx_model_labels_are_identical_in_world_space_for_ras_lps_and_las_uploads") {
        return;
    }
    labels_in_world_space_for_ras_lps_and_las(Some("tiny-threshold")).await;
}

async fn labels_in_world_space_for_ras_lps_and_las(model: Option<&str>) {
    let harness = Harness::new(&[]);
    let mut metadata = BTreeMap::new();
    if let Some(model) = model {
        store_test_model(harness.backends.objects.as_ref(), model).await;
        metadata.insert("model".to_owned(), model.to_owned());
    }
    let pipeline = harness.start().await;
    let phantom = synthetic_ct(&PhantomSpec::small());
    let reorientation = iris_volume::volume::Reorientation::to_canonical(phantom.dims(), phantom.affine()).unwrap();
    let ras = reorientation.apply(&phantom).unwrap();
    // LAS: flip the first axis of the RAS grid.
    let [nx, ny, nz] = ras.dims();
    let mut las_voxels = Vec::with_capacity(ras.voxel_count());
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                las_voxels.push(*ras.get(nx - 1 - i, j, k));
            }
        }
    }
    let mut las_affine = ras.affine().0;
    for row in &mut las_affine[..3] {
        row[3] += row[0] * (nx - 1) as f64;
        row[0] = -row[0];
    }
    let las = Volume::new(ras.dims(), Affine(las_affine), las_voxels).unwrap();
    let mut results = Vec::new();
    for (name, volume) in [("ras.nii.gz", &ras), ("lps.nii.gz", &phantom), ("las.nii.gz", &las)] {
        assert_eq!(&volume.affine().orientation_code().unwrap(), &name[..3].to_uppercase());
        let upload = encode_nifti_gz(volume, &NiftiGeometry::from_affine(volume.dims(), volume.affine())).unwrap();
        let user = UserId::parse("local").unwrap();
        let submission =
            submit_bytes(harness.backends.objects.as_ref(), &user, name, upload.clone(), &metadata).await.unwrap();
        let job = harness.wait(&submission.job_id).await;
        check_completed_job(&harness.backends, &job, &upload).await;
        let stats: serde_json::Value =
            serde_json::from_slice(&harness.object(iris_core::Artifact::Stats.key(&job.job_id)).await).unwrap();
        assert_eq!(stats["model"], model.unwrap_or("classical-ct-v1"));
        let labels =
            decode_nifti(&harness.object(iris_core::Artifact::Labels.key(&job.job_id)).await, &LIMITS).unwrap();
        let distinct: std::collections::BTreeSet<_> = labels.volume.voxels().iter().map(|v| *v as i64).collect();
        assert!(distinct.len() >= 3, "{name}: labels {distinct:?}");
        results.push(labels);
    }
    // Sample voxels of the RAS result; the other two must hold the same label at the same world point.
    let reference = &results[0];
    let [nx, ny, nz] = reference.volume.dims();
    let mut checked = 0;
    for k in (0..nz).step_by(3) {
        for j in (0..ny).step_by(3) {
            for i in (0..nx).step_by(3) {
                let world = reference.affine.apply([i as f64, j as f64, k as f64]);
                let expected = *reference.volume.get(i, j, k);
                for other in &results[1..] {
                    let index = world_to_index(&other.affine, world);
                    assert_eq!(*other.volume.get(index[0], index[1], index[2]), expected, "label at {world:?}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 1000);
    pipeline.stop().await;
}

fn world_to_index(affine: &Affine, world: [f64; 3]) -> [usize; 3] {
    // Axis-aligned grids only: each voxel axis maps to one world axis.
    [0, 1, 2].map(|voxel| {
        let world_axis = (0..3).max_by(|a, b| affine.0[*a][voxel].abs().total_cmp(&affine.0[*b][voxel].abs())).unwrap();
        ((world[world_axis] - affine.0[world_axis][3]) / affine.0[world_axis][voxel]).round() as usize
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_with_their_codes_and_the_pipeline_keeps_serving() {
    let harness = Harness::new(&[]);
    let pipeline = harness.start().await;
    let good = small_phantom();
    let flat = Volume::new([8, 8, 1], Affine::identity(), vec![0i16; 64]).unwrap();
    let flat = encode_nifti_gz(&flat, &NiftiGeometry::from_affine(flat.dims(), flat.affine())).unwrap();
    let uniform = Volume::new([16, 16, 8], Affine::identity(), vec![40i16; 2048]).unwrap();
    let uniform = encode_nifti_gz(&uniform, &NiftiGeometry::from_affine(uniform.dims(), uniform.affine())).unwrap();
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("text.nii.gz", b"this is a radiology report, not an image".to_vec(), ErrorCode::UnsupportedFormat),
        ("truncated.nii.gz", good[..good.len() / 3].to_vec(), ErrorCode::CorruptFile),
        ("empty.nii", Vec::new(), ErrorCode::UnsupportedFormat),
        ("slice.nii.gz", flat, ErrorCode::NotAVolume),
        ("series.zip", b"PK\x03\x04".to_vec(), ErrorCode::CorruptFile),
        ("notes.txt", b"hello".to_vec(), ErrorCode::UnsupportedFormat),
        ("phantom-water.nii.gz", uniform, ErrorCode::NotCtLike),
    ];
    let mut jobs = Vec::new();
    for (name, body, code) in cases {
        jobs.push((harness.submit("local", name, body).await, name, code));
    }
    let good_job = harness.submit("local", "good.nii.gz", good.clone()).await;
    for (job_id, name, code) in jobs {
        let job = harness.wait(&job_id).await;
        assert_eq!(job.status, JobStatus::Failed, "{name}");
        let error = job.error.expect("error recorded");
        assert_eq!(error.code, code, "{name}: {}", error.message);
        assert!(!error.message.is_empty());
    }
    let job = harness.wait(&good_job).await;
    check_completed_job(&harness.backends, &job, &good).await;
    // A malformed queue message goes to the dead-letter queue and the worker keeps serving.
    let ingest = &harness.embedded.queues[&QueueRole::Ingest];
    ingest.send("{\"Records\": 42}").await.unwrap();
    let started = Instant::now();
    while ingest.depth().await.unwrap().dead_lettered == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "malformed message not dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = harness.submit("local", "again.nii.gz", synthetic_ct_with_offset()).await;
    assert_eq!(harness.wait(&again).await.status, JobStatus::Completed);
    pipeline.stop().await;
}

fn synthetic_ct_with_offset() -> Vec<u8> {
    let phantom = synthetic_ct(&PhantomSpec::small());
    let mut affine = *phantom.affine();
    affine.0[2][3] += 10.0;
    let moved = phantom.with_voxels(phantom.voxels().to_vec()).unwrap();
    let moved = Volume::new(moved.dims(), affine, moved.into_voxels()).unwrap();
    encode_nifti_gz(&moved, &NiftiGeometry::from_affine(moved.dims(), moved.affine())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_upload_event_maps_to_the_same_job_and_completes_it_once() {
    let harness = Harness::new(&[]);
    let pipeline = harness.start().await;
    let upload = small_phantom();
    let job_id = harness.submit("local", "twice.nii.gz", upload.clone()).await;
    let first = harness.wait(&job_id).await;
    let before = harness.outputs(&job_id).await;
    // The same S3 event delivered again, and the same bytes uploaded again.
    let again = harness.submit("local", "twice.nii.gz", upload).await;
    assert_eq!(again, job_id, "same bucket, key and ETag: same job");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let depth = harness.embedded.queues[&QueueRole::Ingest].depth().await.unwrap();
    assert_eq!(depth.visible + depth.in_flight, 0, "the repeat was consumed");
    let after = harness.backends.jobs.get(&job_id).await.unwrap().unwrap();
    assert_eq!(after, first, "the job record is untouched by the repeat");
    assert_eq!(harness.outputs(&job_id).await, before);
    let history = harness.embedded.jobs.history(&job_id).await.unwrap();
    assert_eq!(history.iter().filter(|h| h.status == "COMPLETED").count(), 1);
    pipeline.stop().await;
}

/// With a model in the store but no ONNX Runtime library, the default model gives way to the
/// classical one: the job completes, and the log says why no model ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_onnx_runtime_the_classical_model_runs_and_the_log_says_why() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    {
        let config = config_for(&data, &[]);
        let backends = EmbeddedBackends::open(&config).unwrap().ports();
        store_test_model(backends.objects.as_ref(), "tiny-threshold").await;
    }
    let upload = directory.path().join("phantom.nii.gz");
    std::fs::write(&upload, small_phantom()).unwrap();
    let output = Command::new(iris_binary())
        .args(["process", upload.to_str().unwrap(), "--json", "--out", directory.path().join("out").to_str().unwrap()])
        .env("IRIS_DATA_DIR", &data)
        .env("IRIS_SEGMENT_MODEL", "tiny-threshold")
        .env("ORT_DYLIB_PATH", directory.path().join("missing/libonnxruntime.so"))
        .env("RUST_LOG", "info")
        .output()
        .expect("run iris process");
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {log}");
    let record: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(record["status"], "COMPLETED");
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(directory.path().join("out/stats.json")).unwrap()).unwrap();
    assert_eq!(stats["model"], "classical-ct-v1");
    let why: Vec<&str> = log.lines().filter(|line| line.contains("no ONNX model ran")).collect();
    assert_eq!(why.len(), 1, "one line says why: {log}");
    assert!(why[0].contains("ORT_DYLIB_PATH") && why[0].contains("is not a file"), "{}", why[0]);
}
