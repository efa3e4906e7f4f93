//! Notifications of a running pipeline over real WebSocket connections to the local gateway: every
//! state in order and only one's own jobs, segmentation progress, and every emitted event against
//! its documented JSON Schema. (The gateway's own behaviour, tokens and dropped connections, is
//! tested in `services/notify/tests/`.)

use iris_notify::testing::{self, Socket, next_json, send};

use crate::support::*;

/// A client of `user` connected to the harness's gateway.
async fn connect(harness: &Harness, address: std::net::SocketAddr, user: &str) -> Socket {
    testing::connect(&harness.config.data_dir, address, user).await
}

/// An ONNX model's tiles reach a subscriber as progress messages between SEGMENTING and SEGMENTED,
/// the last one saying every tile is done; the state stream is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_segmentation_progress_between_the_states() {
    if !onnx_runtime_loads("a_subscriber_sees_segmentation_progress_between_the_states") {
        return;
    }
    let harness = Harness::new(&[("IRIS_SEGMENT_MODEL", "tiny-random-a")]);
    store_test_model(harness.backends.objects.as_ref(), "tiny-random-a").await;
    let pipeline = harness.start().await;
    let upload = small_phantom();
    let key = "uploads/alice/scan.nii.gz";
    let job_id = JobId::derive(harness.backends.objects.bucket(), key, &DirectoryObjectStore::etag_for(&upload));
    let mut alice = connect(&harness, pipeline.websocket_address, "alice").await;
    send(&mut alice, serde_json::json!({"action": "subscribe", "jobId": job_id})).await;
    assert_eq!(next_json(&mut alice).await["type"], "subscribed");
    harness.submit("alice", "scan.nii.gz", upload).await;
    let mut states = Vec::new();
    let mut progress = Vec::new();
    while states.last().map(String::as_str) != Some("COMPLETED") {
        let message = next_json(&mut alice).await;
        match message["type"].as_str() {
            Some("jobState") => states.push(message["event"]["status"].as_str().unwrap().to_owned()),
            Some("progress") => {
                assert_eq!(states.last().map(String::as_str), Some("SEGMENTING"), "{message}");
                let detail = &message["event"]["progress"];
                assert_eq!(detail["unit"], "tiles");
                assert_eq!((detail["step"].as_u64(), detail["steps"].as_u64()), (Some(1), Some(1)));
                progress.push((detail["done"].as_u64().unwrap(), detail["total"].as_u64().unwrap()));
            }
            _ => panic!("unexpected message {message}"),
        }
    }
    assert_eq!(states, LADDER, "progress does not disturb the state stream");
    assert!(!progress.is_empty(), "progress messages arrive");
    let total = progress[0].1;
    assert!(progress.windows(2).all(|pair| pair[0].0 < pair[1].0), "done only grows: {progress:?}");
    assert_eq!(progress.last(), Some(&(total, total)), "the last says every tile is done");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscribers_see_every_state_in_order_and_only_their_own_jobs() {
    let harness = Harness::new(&[]);
    let pipeline = harness.start().await;
    let address = pipeline.websocket_address;
    let upload = small_phantom();
    // The job id is known before the upload (bucket, key, ETag), so the subscription comes first.
    let key = "uploads/alice/scan.nii.gz";
    let job_id = JobId::derive(harness.backends.objects.bucket(), key, &DirectoryObjectStore::etag_for(&upload));
    let mut alice = connect(&harness, address, "alice").await;
    send(&mut alice, serde_json::json!({"action": "subscribe", "jobId": job_id})).await;
    assert_eq!(next_json(&mut alice).await["type"], "subscribed");
    assert_eq!(harness.submit("alice", "scan.nii.gz", upload).await, job_id);

    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("COMPLETED") {
        let message = next_json(&mut alice).await;
        assert_eq!(message["type"], "jobState", "{message}");
        assert_eq!(message["event"]["jobId"], job_id.as_str());
        let status = message["event"]["status"].as_str().unwrap().to_owned();
        assert_eq!(message["event"]["eventId"], format!("{job_id}:{status}"));
        seen.push(status);
    }
    assert_eq!(seen, LADDER, "every state change, in order, once");

    // Another user cannot subscribe to alice's job.
    let mut bob = connect(&harness, address, "bob").await;
    send(&mut bob, serde_json::json!({"action": "subscribe", "jobId": job_id})).await;
    let refusal = next_json(&mut bob).await;
    assert_eq!(refusal["type"], "error");
    assert_eq!(refusal["code"], "forbidden");
    send(&mut bob, serde_json::json!({"action": "list"})).await;
    assert_eq!(next_json(&mut bob).await["jobs"].as_array().map(Vec::len), Some(0), "bob sees none of alice's jobs");

    // Bob's own job: he sees all of it; alice, still connected and subscribed to hers, sees none.
    let bob_upload = synthetic_ct(&PhantomSpec { dims: [20, 18, 14], spacing_mm: 9.0 });
    let bob_upload = encode_nifti_gz(&bob_upload, &NiftiGeometry::from_affine(bob_upload.dims(), bob_upload.affine()))
        .expect("encode");
    let bob_job = JobId::derive(
        harness.backends.objects.bucket(),
        "uploads/bob/mine.nii.gz",
        &DirectoryObjectStore::etag_for(&bob_upload),
    );
    send(&mut bob, serde_json::json!({"action": "subscribe", "jobId": bob_job})).await;
    assert_eq!(next_json(&mut bob).await["type"], "subscribed");
    assert_eq!(harness.submit("bob", "mine.nii.gz", bob_upload).await, bob_job);
    let mut bob_seen = Vec::new();
    while bob_seen.last().map(String::as_str) != Some("COMPLETED") {
        let message = next_json(&mut bob).await;
        assert_eq!(message["event"]["jobId"], bob_job.as_str(), "bob gets only his job: {message}");
        assert_eq!(message["event"]["userId"], "bob");
        bob_seen.push(message["event"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(bob_seen, LADDER);
    send(&mut alice, serde_json::json!({"action": "list"})).await;
    let listed = next_json(&mut alice).await;
    assert_eq!(listed["type"], "jobs", "alice's next message is her list reply, nothing of bob's: {listed}");
    let listed: Vec<&str> = listed["jobs"].as_array().unwrap().iter().map(|j| j["jobId"].as_str().unwrap()).collect();
    assert_eq!(listed, [job_id.as_str()], "alice lists only her own job");

    // A late subscriber gets the current state at once.
    let mut late = connect(&harness, address, "alice").await;
    send(&mut late, serde_json::json!({"action": "subscribe", "jobId": job_id})).await;
    assert_eq!(next_json(&mut late).await["type"], "subscribed");
    let current = next_json(&mut late).await;
    assert_eq!(current["event"]["status"], "COMPLETED");
    assert_eq!(current["detailType"], "JobCompleted");

    // Bad frames get an error, not a dropped connection.
    send(&mut late, serde_json::json!({"action": "subscribe", "jobId": "../../etc"})).await;
    assert_eq!(next_json(&mut late).await["code"], "bad_request");
    late.send(Message::text("not json")).await.unwrap();
    assert_eq!(next_json(&mut late).await["code"], "bad_request");
    pipeline.stop().await;
}

fn event_schema(detail_type: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("docs/events/{detail_type}.schema.json"));
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_matches_schema(event: &serde_json::Value) {
    let detail_type = event["detail-type"].as_str().expect("detail-type");
    let errors: Vec<String> =
        event_schema(detail_type).iter_errors(event).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{detail_type} does not match its schema: {errors:?}\n{event:#}");
}

/// Every event the pipeline emits (a completed job's states, a failed job's JobFailed, the progress
/// event segment publishes) matches its detail type's JSON Schema in docs/events/, and so does
/// each documented example; the schemas are strict enough to refuse a wrong event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_events_match_the_documented_json_schemas() {
    let harness = Harness::new(&[]);
    let pipeline = harness.start().await;
    let good = harness.submit("alice", "scan.nii.gz", small_phantom()).await;
    let bad = harness.submit("alice", "broken.nii.gz", b"not a NIfTI file".to_vec()).await;
    assert_eq!(harness.wait(&good).await.status, JobStatus::Completed);
    assert_eq!(harness.wait(&bad).await.status, JobStatus::Failed);
    pipeline.stop().await;
    let mut events: Vec<serde_json::Value> = Vec::new();
    for job in [&good, &bad] {
        for published in harness.embedded.events.published(job).await.unwrap() {
            events.push(serde_json::from_str(&published.body).unwrap());
        }
    }
    // Progress as the segment stage builds it (an ONNX model's tiles; the classical model has none).
    let job = harness.backends.jobs.get(&good).await.unwrap().unwrap();
    let progress = iris_core::events::StageProgress { done: 3, total: 8, unit: "tiles".into(), step: 1, steps: 2 };
    let mut segmenting = job.clone();
    segmenting.status = JobStatus::Segmenting;
    let detail =
        iris_core::events::JobEventDetail::progress_of(&segmenting, progress, iris_core::time::Timestamp::now());
    events.push(serde_json::to_value(iris_core::events::EventEnvelope::new(detail)).unwrap());

    let mut types = std::collections::BTreeSet::new();
    for event in &events {
        assert_matches_schema(event);
        types.insert(event["detail-type"].as_str().unwrap().to_owned());
    }
    assert_eq!(types, ["JobCompleted", "JobFailed", "JobProgress", "JobStateChanged"].map(String::from).into());
    let completed = events.iter().find(|e| e["detail-type"] == "JobCompleted").unwrap();
    assert_eq!(completed["detail"]["summary"]["meshes"].as_u64(), Some(job.summary.meshes.unwrap() as u64));
    assert!(completed["detail"]["summary"]["triangles"].as_u64().unwrap() > 0);
    assert_eq!(completed["detail"]["summary"]["sourceFormat"], "nifti");

    // The documented examples match too, and read back into the pipeline's own types.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/events/examples");
    for name in ["JobStateChanged", "JobCompleted", "JobFailed", "JobProgress"] {
        let example: serde_json::Value =
            serde_json::from_slice(&std::fs::read(examples.join(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(example["detail-type"], name);
        assert_matches_schema(&example);
        let typed: iris_core::events::EventEnvelope = serde_json::from_value(example.clone()).unwrap();
        assert_eq!(typed.detail_type.as_str(), name);
    }

    // Wrong events are refused: a completion without its summary, a state event naming a terminal status.
    let mut no_summary = completed.clone();
    no_summary["detail"].as_object_mut().unwrap().remove("summary");
    assert!(!event_schema("JobCompleted").is_valid(&no_summary));
    let mut terminal = events.iter().find(|e| e["detail-type"] == "JobStateChanged").unwrap().clone();
    terminal["detail"]["status"] = "COMPLETED".into();
    assert!(!event_schema("JobStateChanged").is_valid(&terminal));
    let mut patient = completed.clone();
    patient["detail"]["patientName"] = "DOE^JANE".into();
    assert!(!event_schema("JobCompleted").is_valid(&patient), "no field beyond the documented ones");
}
