//! End-to-end tests of the whole pipeline on the embedded backends: in one process, as `iris run`
//! killed mid-job, as one process per service, and over real WebSocket connections.
//!
//! Tests that read `../shared/data` skip with a message when it is absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use iris::{RunningPipeline, start_pipeline, submit_bytes, wait_for_job};
use iris_shared::backends::{Backends, EmbeddedBackends};
use iris_shared::config::IrisConfig;
use iris_shared::embedded::DirectoryObjectStore;
use iris_shared::job::{JobId, JobRecord, JobStatus, Stage, UploadSource};
use iris_shared::keys::{ObjectKey, QueueRole, UserId};
use iris_shared::nifti_codec::{DecodeLimits, DecodedNifti, NiftiGeometry, decode_nifti, encode_nifti_gz};
use iris_shared::phantom::{PhantomSpec, synthetic_ct};
use iris_shared::ports::{JobStore, ObjectStore, WorkQueue};
use iris_shared::volume::{Affine, Volume};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const LADDER: [&str; 7] = ["RECEIVED", "INGESTING", "INGESTED", "SEGMENTING", "SEGMENTED", "MESHING", "COMPLETED"];
const LIMITS: DecodeLimits = DecodeLimits { max_voxels: 1 << 30 };

fn shared_ct() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/totalseg/example_ct_sm.nii.gz");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {} is absent (the kit ../shared is not beside the repository)", path.display());
        None
    }
}

fn config_for(directory: &Path, extra: &[(&str, &str)]) -> IrisConfig {
    let mut variables: BTreeMap<String, String> =
        extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    variables.insert("IRIS_DATA_DIR".into(), directory.display().to_string());
    if let Ok(library) = std::env::var("ORT_DYLIB_PATH") {
        variables.entry("ORT_DYLIB_PATH".into()).or_insert(library);
    }
    variables.entry("IRIS_VISIBILITY_TIMEOUT_SECS".into()).or_insert_with(|| "5".into());
    variables.entry("IRIS_RETRY_BACKOFF_MS".into()).or_insert_with(|| "100".into());
    IrisConfig::from_lookup(|name| variables.get(name).cloned()).expect("test configuration")
}

fn small_phantom() -> Vec<u8> {
    let phantom = synthetic_ct(&PhantomSpec::small());
    encode_nifti_gz(&phantom, &NiftiGeometry::from_affine(phantom.dims(), phantom.affine())).expect("encode phantom")
}

struct Harness {
    _directory: tempfile::TempDir,
    config: IrisConfig,
    embedded: EmbeddedBackends,
    backends: Backends,
}

impl Harness {
    fn new(extra: &[(&str, &str)]) -> Harness {
        let directory = tempfile::tempdir().expect("temp dir");
        let config = config_for(directory.path(), extra);
        let embedded = EmbeddedBackends::open(&config).expect("open backends");
        let backends = embedded.ports();
        Harness { _directory: directory, config, embedded, backends }
    }

    async fn start(&self) -> RunningPipeline {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        start_pipeline(&self.backends, &self.config, listener).expect("start pipeline")
    }

    async fn submit(&self, user: &str, name: &str, body: Vec<u8>) -> JobId {
        let user = UserId::parse(user).expect("user");
        submit_bytes(self.backends.objects.as_ref(), &user, name, body, &BTreeMap::new()).await.expect("submit").job_id
    }

    async fn wait(&self, job_id: &JobId) -> JobRecord {
        wait_for_job(&self.backends, job_id, Duration::from_secs(120), |_| {}).await.expect("job ends")
    }

    async fn object(&self, key: ObjectKey) -> Vec<u8> {
        self.backends.objects.get(&key).await.unwrap_or_else(|e| panic!("{key}: {e}"))
    }

    async fn outputs(&self, job_id: &JobId) -> BTreeMap<String, Vec<u8>> {
        let mut outputs = BTreeMap::new();
        for object in self.backends.objects.list(&format!("jobs/{job_id}/")).await.expect("list") {
            outputs.insert(object.key.to_string(), self.object(object.key).await);
        }
        outputs
    }
}

async fn object(backends: &Backends, key: ObjectKey) -> Vec<u8> {
    backends.objects.get(&key).await.unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn assert_same_grid(upload: &DecodedNifti, labels: &DecodedNifti) {
    assert_eq!(labels.volume.dims(), upload.volume.dims(), "labels have the upload's shape");
    assert_eq!(labels.affine, upload.affine, "labels have the upload's affine, bit for bit");
    assert_eq!(labels.geometry, upload.geometry, "labels carry the upload's qform and sform");
}

fn obj_groups(obj: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(obj).lines().filter_map(|l| l.strip_prefix("g ")).map(str::to_owned).collect()
}

/// Checks a completed job's outputs against its upload; returns the label names meshed.
async fn check_completed_job(backends: &Backends, job: &JobRecord, upload: &[u8]) -> Vec<String> {
    assert_eq!(job.status, JobStatus::Completed, "job error: {:?}", job.error);
    for stage in Stage::ALL {
        let record = &job.stages[&stage];
        assert!(record.started_at.is_some() && record.ended_at.is_some(), "{stage} timed");
    }
    let upload = decode_nifti(upload, &LIMITS).expect("upload decodes");
    let labels =
        decode_nifti(&object(backends, iris_shared::keys::labels_key(&job.job_id)).await, &LIMITS).expect("labels");
    assert_same_grid(&upload, &labels);
    let canonical =
        decode_nifti(&object(backends, iris_shared::keys::volume_key(&job.job_id)).await, &LIMITS).expect("volume");
    assert_eq!(canonical.affine.orientation_code().expect("orientation"), "RAS", "ingest writes canonical RAS");

    let stats: iris_shared::labels::SegmentationStats =
        serde_json::from_slice(&object(backends, iris_shared::keys::stats_key(&job.job_id)).await).expect("stats.json");
    let label_voxels: u64 = labels.volume.voxels().iter().filter(|v| **v > 0.0).count() as u64;
    assert_eq!(stats.labels.iter().map(|l| l.voxels).sum::<u64>(), label_voxels, "stats count every labelled voxel");
    let present: Vec<String> =
        stats.labels.iter().filter(|l| l.voxels >= iris_mesh::DEFAULT_MINIMUM_VOXELS).map(|l| l.name.clone()).collect();
    let groups = obj_groups(&object(backends, iris_shared::keys::mesh_obj_key(&job.job_id)).await);
    assert_eq!(groups, present, "model.obj has one named group per label found");
    let manifest: serde_json::Value =
        serde_json::from_slice(&object(backends, iris_shared::keys::mesh_manifest_key(&job.job_id)).await)
            .expect("manifest");
    assert_eq!(manifest["labels"].as_array().map(Vec::len), Some(present.len()));
    let glb = object(backends, iris_shared::keys::mesh_glb_key(&job.job_id)).await;
    assert_eq!(&glb[..4], b"glTF", "scene.glb is a binary glTF");
    assert!(manifest["labels"].as_array().into_iter().flatten().all(|l| l["triangles"].as_u64() > Some(0)));
    present
}

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
    let Some(path) = shared_ct() else { return };
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
    if !onnx_runtime_loads() {
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
    let reorientation = iris_shared::volume::Reorientation::to_canonical(phantom.dims(), phantom.affine()).unwrap();
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
            serde_json::from_slice(&harness.object(iris_shared::keys::stats_key(&job.job_id)).await).unwrap();
        assert_eq!(stats["model"], model.unwrap_or("classical-ct-v1"));
        let labels = decode_nifti(&harness.object(iris_shared::keys::labels_key(&job.job_id)).await, &LIMITS).unwrap();
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
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("text.nii.gz", b"this is a radiology report, not an image".to_vec(), "unsupported_format"),
        ("truncated.nii.gz", good[..good.len() / 3].to_vec(), "corrupt_file"),
        ("empty.nii", Vec::new(), "unsupported_format"),
        ("slice.nii.gz", flat, "not_a_volume"),
        ("series.zip", b"PK\x03\x04".to_vec(), "corrupt_file"),
        ("notes.txt", b"hello".to_vec(), "unsupported_format"),
        ("phantom-water.nii.gz", uniform, "not_ct_like"),
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

/// A WebSocket client of `user`, with a token signed by the data directory's key (what
/// `iris token issue --user USER` prints).
async fn connect(harness: &Harness, address: std::net::SocketAddr, user: &str) -> Socket {
    let token = token_for(harness, user);
    let (socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/?token={token}")).await.expect("connect");
    socket
}

fn token_for(harness: &Harness, user: &str) -> String {
    iris_notify::auth::TokenSigner::load_or_create(&harness.config.data_dir)
        .expect("token key")
        .issue(&UserId::parse(user).unwrap(), Duration::from_secs(600), iris_shared::time::Timestamp::now())
        .expect("token")
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(socket: &mut Socket, value: serde_json::Value) {
    socket.send(Message::text(value.to_string())).await.expect("send");
}

async fn next_json(socket: &mut Socket) -> serde_json::Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("a message within 60 s")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// An ONNX model's tiles reach a subscriber as progress messages between SEGMENTING and SEGMENTED,
/// the last one saying every tile is done; the state stream is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_segmentation_progress_between_the_states() {
    if !onnx_runtime_loads() {
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
    let progress = iris_shared::events::StageProgress { done: 3, total: 8, unit: "tiles".into(), step: 1, steps: 2 };
    let mut segmenting = job.clone();
    segmenting.status = JobStatus::Segmenting;
    let detail =
        iris_shared::events::JobEventDetail::progress_of(&segmenting, progress, iris_shared::time::Timestamp::now());
    events.push(serde_json::to_value(iris_shared::events::EventEnvelope::new(detail)).unwrap());

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
        let typed: iris_shared::events::EventEnvelope = serde_json::from_value(example.clone()).unwrap();
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

/// The local gateway accepts only a valid token, as API Gateway's authorizer does: none, a
/// malformed one, one signed by another key and an expired one are all answered 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_gateway_refuses_connections_without_a_valid_token() {
    let harness = Harness::new(&[]);
    let pipeline = harness.start().await;
    let address = pipeline.websocket_address;
    let alice = UserId::parse("alice").unwrap();
    let foreign = iris_notify::auth::TokenSigner::generate().unwrap();
    let own = iris_notify::auth::TokenSigner::load_or_create(&harness.config.data_dir).unwrap();
    let long_ago = iris_shared::time::Timestamp::from_epoch_millis(1_000_000_000);
    let refused = [
        ("no token", format!("ws://{address}/")),
        ("the old ?user= form", format!("ws://{address}/?user=alice")),
        ("a malformed token", format!("ws://{address}/?token=abc.def.ghi")),
        (
            "another key's token",
            format!(
                "ws://{address}/?token={}",
                foreign.issue(&alice, Duration::from_secs(600), iris_shared::time::Timestamp::now()).unwrap()
            ),
        ),
        (
            "an expired token",
            format!("ws://{address}/?token={}", own.issue(&alice, Duration::from_secs(60), long_ago).unwrap()),
        ),
    ];
    for (what, url) in refused {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401, "{what}")
            }
            other => panic!("{what}: expected 401, got {:?}", other.map(|(_, response)| response.status())),
        }
    }
    // The same token in an Authorization header is accepted.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{address}/"))
            .unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", token_for(&harness, "alice")).parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("bearer token accepted");
    send(&mut socket, serde_json::json!({"action": "list"})).await;
    assert_eq!(next_json(&mut socket).await["type"], "jobs");
    pipeline.stop().await;
}

/// A client that vanishes without a close frame is removed from the connection store, and
/// states posted to it afterwards go nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_is_removed() {
    let harness = Harness::new(&[]);
    let pipeline = harness.start().await;
    let mut alice = connect(&harness, pipeline.websocket_address, "alice").await;
    let upload = UploadSource { bucket: "b".into(), key: "uploads/alice/x".into(), etag: "e".into(), version_id: None };
    let job = JobRecord::received(
        &upload,
        UserId::parse("alice").unwrap(),
        BTreeMap::new(),
        iris_shared::time::Timestamp::now(),
    );
    send(&mut alice, serde_json::json!({"action": "subscribe", "jobId": job.job_id})).await;
    assert_eq!(next_json(&mut alice).await["type"], "subscribed");
    assert_eq!(harness.backends.connections.subscribers(&job.job_id).await.unwrap().len(), 1);
    // Drop the TCP connection under the WebSocket: no close handshake.
    drop(alice);
    let started = Instant::now();
    while !harness.backends.connections.subscribers(&job.job_id).await.unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "the dropped connection is still recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let local = iris_notify::LocalNotify::new(&harness.backends);
    assert_eq!(local.core.deliver(&iris_shared::events::JobEventDetail::from_job(&job)).await.unwrap(), 0);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_is_gone_is_removed_when_a_state_is_posted_to_it() {
    let harness = Harness::new(&[]);
    let local = iris_notify::LocalNotify::new(&harness.backends);
    let user = UserId::parse("alice").unwrap();
    // A connection recorded in the store that the gateway no longer holds (e.g. before a restart).
    let stale = iris_shared::ports::Connection {
        connection_id: "stale".into(),
        user_id: user.clone(),
        connected_at: iris_shared::time::Timestamp::now(),
    };
    harness.backends.connections.add_connection(&stale).await.unwrap();
    let upload = UploadSource { bucket: "b".into(), key: "uploads/alice/x".into(), etag: "e".into(), version_id: None };
    let job = JobRecord::received(&upload, user, BTreeMap::new(), iris_shared::time::Timestamp::now());
    harness.backends.connections.subscribe("stale", &job.job_id).await.unwrap();
    let sent = local.core.deliver(&iris_shared::events::JobEventDetail::from_job(&job)).await.unwrap();
    assert_eq!(sent, 0);
    assert_eq!(harness.backends.connections.get_connection("stale").await.unwrap(), None, "removed after Gone");
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

/// Whether ONNX Runtime loads; when it does not, the caller skips (or, with `IRIS_REQUIRE_ONNX=1`
/// as `scripts/test.sh` sets it, fails).
fn onnx_runtime_loads() -> bool {
    let probe = config_for(Path::new("/nonexistent"), &[]);
    match iris_segment::onnx_runtime(&probe.segment) {
        Ok(_) => true,
        Err(error) => {
            assert!(std::env::var("IRIS_REQUIRE_ONNX").as_deref() != Ok("1"), "IRIS_REQUIRE_ONNX=1 but {error}");
            eprintln!("SKIP: {error}");
            false
        }
    }
}

/// Puts a committed test model (`services/segment/tests/models/<name>`) into the object store.
async fn store_test_model(objects: &dyn ObjectStore, name: &str) {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("services/segment/tests/models").join(name);
    for file in ["card.json", "model.onnx"] {
        let key = ObjectKey::parse(&format!("models/{name}/{file}")).unwrap();
        objects.put(&key, std::fs::read(directory.join(file)).unwrap(), &BTreeMap::new()).await.unwrap();
    }
}

fn iris_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iris"))
}

fn spawn_quiet(command: &mut Command) -> Child {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn")
}

#[test]
fn process_command_exits_one_and_reports_the_error_code_for_a_bad_file() {
    let directory = tempfile::tempdir().unwrap();
    let bad = directory.path().join("report.nii.gz");
    std::fs::write(&bad, "not an image").unwrap();
    let output = Command::new(iris_binary())
        .args(["process", bad.to_str().unwrap(), "--json", "--out", directory.path().join("out").to_str().unwrap()])
        .env("IRIS_DATA_DIR", directory.path().join("data"))
        .output()
        .expect("run iris process");
    assert_eq!(output.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let record: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(record["status"], "FAILED");
    assert_eq!(record["error"]["code"], "unsupported_format");
    assert!(record["error"]["message"].as_str().unwrap().contains("NIfTI"));
}

/// Waits for a condition on the data directory shared with child processes.
async fn poll_until<T>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_job_the_pipeline_completes_it_once_with_identical_outputs() {
    let upload = small_phantom();
    // An undisturbed run for reference.
    let reference = Harness::new(&[]);
    let pipeline = reference.start().await;
    let job_id = reference.submit("local", "crash.nii.gz", upload.clone()).await;
    assert_eq!(reference.wait(&job_id).await.status, JobStatus::Completed);
    pipeline.stop().await;
    let expected = reference.outputs(&job_id).await;

    // `iris run` as a child process; each stage pauses after writing its outputs, before recording
    // itself finished, which is where a crash hurts most. SIGKILL it while a stage is in flight.
    let directory = tempfile::tempdir().unwrap();
    let launch = |pause: &str| {
        let mut command = Command::new(iris_binary());
        command
            .arg("run")
            .env("IRIS_DATA_DIR", directory.path())
            .env("IRIS_WS_BIND", "127.0.0.1:0")
            .env("IRIS_VISIBILITY_TIMEOUT_SECS", "2")
            .env("IRIS_FAULT_PAUSE_BEFORE_FINISH_MS", pause)
            .env("RUST_LOG", "warn");
        KillOnDrop(spawn_quiet(&mut command))
    };
    let mut first = launch("700");
    let gateway_file = directory.path().join("gateway.json");
    poll_until("iris run to start", Duration::from_secs(60), async || gateway_file.is_file().then_some(())).await;
    let config = config_for(directory.path(), &[]);
    let backends = EmbeddedBackends::open(&config).unwrap();
    let submitted = submit_bytes(
        backends.objects.as_ref(),
        &UserId::parse("local").unwrap(),
        "crash.nii.gz",
        upload,
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    assert_eq!(submitted.job_id, job_id, "deterministic job id across data directories");
    let killed_at = poll_until("a stage in flight", Duration::from_secs(60), async || {
        let job = backends.jobs.get(&job_id).await.ok().flatten()?;
        (job.status.rank() >= JobStatus::Segmenting.rank()).then_some(job.status)
    })
    .await;
    assert!(!killed_at.is_terminal(), "killed mid-job, at {killed_at}");
    eprintln!("SIGKILL while the job was {killed_at}");
    first.0.kill().expect("SIGKILL");
    first.0.wait().unwrap();

    let _second = launch("0");
    let finished = poll_until("the job to end after the restart", Duration::from_secs(120), async || {
        backends.jobs.get(&job_id).await.ok().flatten().filter(|job| job.status.is_terminal())
    })
    .await;
    assert_eq!(finished.status, JobStatus::Completed, "{:?}", finished.error);
    assert!(
        finished.stages.values().any(|stage| stage.attempts >= 2),
        "the interrupted stage ran again: {:?}",
        finished.stages
    );
    let history = backends.jobs.history(&job_id).await.unwrap();
    assert_eq!(history.iter().filter(|h| h.status == "COMPLETED").count(), 1, "COMPLETED exactly once");
    let statuses: Vec<&str> = history.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(statuses, LADDER, "the ladder, in order, each status once");
    for event in backends.events.published(&job_id).await.unwrap() {
        let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
        let status = body["detail"]["status"].as_str().unwrap();
        assert_eq!(event.event_id, format!("{job_id}:{status}"), "a repeated event carries the same id");
    }
    let mut actual = BTreeMap::new();
    for object in backends.objects.list(&format!("jobs/{job_id}/")).await.unwrap() {
        actual.insert(object.key.to_string(), backends.objects.get(&object.key).await.unwrap());
    }
    assert_eq!(actual.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (key, bytes) in &expected {
        assert!(actual[key] == *bytes, "{key} differs from the undisturbed run");
    }
    // Nothing left in flight, nothing dead-lettered.
    poll_until("queues to drain", Duration::from_secs(30), async || {
        let mut busy = 0;
        for queue in backends.queues.values() {
            let depth = queue.depth().await.ok()?;
            assert_eq!(depth.dead_lettered, 0, "{} has dead letters", queue.name());
            busy += depth.visible + depth.in_flight;
        }
        (busy == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_runs_as_its_own_process_on_one_data_directory() {
    let binaries = iris_binary().parent().unwrap().to_owned();
    let directory = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for service in ["iris-ingest", "iris-segment", "iris-mesh", "iris-notify"] {
        let path = binaries.join(service);
        assert!(
            path.is_file(),
            "{} is not built: `cargo test` builds only this package's binaries; run `cargo build --workspace --bins` \
             first (scripts/test.sh does)",
            path.display()
        );
        let mut command = Command::new(path);
        command.env("IRIS_DATA_DIR", directory.path()).env("IRIS_WS_BIND", "127.0.0.1:0").env("RUST_LOG", "warn");
        children.push(KillOnDrop(spawn_quiet(&mut command)));
    }
    let config = config_for(directory.path(), &[]);
    let backends = EmbeddedBackends::open(&config).unwrap().ports();
    let upload = small_phantom();
    let submission = submit_bytes(
        backends.objects.as_ref(),
        &UserId::parse("local").unwrap(),
        "multi.nii.gz",
        upload,
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let job = wait_for_job(&backends, &submission.job_id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    // SIGTERM: each service finishes and exits cleanly.
    for child in &mut children {
        let status = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
    for child in &mut children {
        let started = Instant::now();
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                assert!(status.success(), "service exited with {status}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "service did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_dropped_in_the_inbox_is_processed_and_watch_prints_its_states() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let inbox = directory.path().join("inbox");
    let mut run = Command::new(iris_binary());
    run.args(["run", "--inbox", inbox.to_str().unwrap()])
        .env("IRIS_DATA_DIR", &data)
        .env("IRIS_WS_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn");
    let _server = KillOnDrop(spawn_quiet(&mut run));
    let gateway_file = data.join("gateway.json");
    poll_until("iris run to start", Duration::from_secs(60), async || gateway_file.is_file().then_some(())).await;
    poll_until("the inbox to exist", Duration::from_secs(10), async || inbox.join("submitted").is_dir().then_some(()))
        .await;

    let upload = small_phantom();
    let config = config_for(&data, &[]);
    let job_id =
        JobId::derive(&config.bucket, "uploads/local/dropped scan.nii.gz", &DirectoryObjectStore::etag_for(&upload));
    let watch = Command::new(iris_binary())
        .args(["watch", job_id.as_str()])
        .env("IRIS_DATA_DIR", &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iris watch");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Written under a hidden name, then renamed: the inbox never sees a half-written file.
    std::fs::write(inbox.join(".partial"), &upload).unwrap();
    std::fs::rename(inbox.join(".partial"), inbox.join("dropped scan.nii.gz")).unwrap();

    let output = tokio::task::spawn_blocking(move || watch.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(output.status.code(), Some(0), "watch stderr: {}", String::from_utf8_lossy(&output.stderr));
    let statuses: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["type"] == "jobState")
        .map(|message| message["event"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses.last().map(String::as_str), Some("COMPLETED"), "{statuses:?}");
    let ranks: Vec<usize> = statuses.iter().map(|s| LADDER.iter().position(|l| l == s).unwrap()).collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "states in order: {statuses:?}");
    assert!(inbox.join("submitted").join("dropped scan.nii.gz").is_file(), "moved out of the inbox once uploaded");

    let status = Command::new(iris_binary())
        .args(["status", job_id.as_str(), "--json"])
        .env("IRIS_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(0));
    let record: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(record["status"], "COMPLETED");
    assert_eq!(record["sourceKey"], "uploads/local/dropped scan.nii.gz");
}

// ---------------------------------------------------------------------------------------------
// The same pipeline on the AWS backends, against moto server (S3 notifications to SQS, SQS,
// DynamoDB, EventBridge rules to SQS). scripts/test.sh starts moto and sets IRIS_MOTO_URL.

mod on_moto {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use iris::{start_pipeline, submit_bytes, wait_for_job};
    use iris_aws::{bootstrap, local};
    use iris_shared::config::IrisConfig;
    use iris_shared::events::EventEnvelope;
    use iris_shared::job::{JobStatus, Stage};
    use iris_shared::keys::{QueueRole, UserId};
    use iris_shared::ports::WorkQueue;
    use iris_shared::s3_event::object_created_notification;
    use iris_shared::time::Timestamp;
    use tokio::net::TcpListener;

    use super::{LADDER, check_completed_job, small_phantom};

    async fn setup(observer: bool) -> (IrisConfig, iris_aws::AwsClients, Option<iris_aws::SqsWorkQueue>) {
        let clients = local::clients_for_endpoint(&local::moto_url_for_tests()).await;
        let prefix = local::unique_prefix();
        let config = local::isolated_config(
            &prefix,
            &[("IRIS_MAX_ATTEMPTS", "2"), ("IRIS_VISIBILITY_TIMEOUT_SECS", "5"), ("IRIS_RETRY_BACKOFF_MS", "200")],
        )
        .unwrap();
        bootstrap::bootstrap(&config, &clients).await.expect("bootstrap");
        let observer = if observer {
            // An integration's queue, fed by its own EventBridge rule.
            let name = format!("{prefix}-observer");
            bootstrap::create_plain_queue(&clients, &name).await.unwrap();
            bootstrap::route_events_to_queue(&config, &clients, &name).await.unwrap();
            // Its dead-letter twin, which SqsWorkQueue::open expects.
            bootstrap::create_plain_queue(&clients, &format!("{name}-dlq")).await.unwrap();
            Some(iris_aws::SqsWorkQueue::open(clients.sqs.clone(), &name).await.unwrap())
        } else {
            None
        };
        (config, clients, observer)
    }

    /// Every event on the observer queue until `quiet` passes without one.
    async fn drain_events(queue: &iris_aws::SqsWorkQueue, quiet: Duration) -> Vec<EventEnvelope> {
        let mut events = Vec::new();
        loop {
            let batch = queue.receive(10, Duration::from_secs(30), quiet).await.unwrap();
            if batch.is_empty() {
                return events;
            }
            for message in batch {
                events.push(serde_json::from_str(&message.body).expect("an EventBridge envelope"));
                queue.ack(&message.receipt).await.unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_flows_through_s3_sqs_dynamodb_and_eventbridge_and_a_duplicate_event_changes_nothing() {
        let (config, clients, observer) = setup(true).await;
        let observer = observer.unwrap();
        let backends = iris_aws::open_backends(&config, &clients).await.unwrap();
        let pipeline = start_pipeline(&backends, &config, TcpListener::bind(("127.0.0.1", 0)).await.unwrap()).unwrap();
        let upload = small_phantom();
        let user = UserId::parse("alice").unwrap();
        let submission =
            submit_bytes(backends.objects.as_ref(), &user, "my scan.nii.gz", upload.clone(), &BTreeMap::new())
                .await
                .unwrap();
        let job = wait_for_job(&backends, &submission.job_id, Duration::from_secs(120), |_| {}).await.unwrap();
        check_completed_job(&backends, &job, &upload).await;
        assert_eq!(job.user_id, user);

        let events = drain_events(&observer, Duration::from_secs(3)).await;
        // Events may repeat (same stable id); an integration keeps the first of each id.
        let mut seen_ids = std::collections::BTreeSet::new();
        let statuses: Vec<&str> = events
            .iter()
            .filter(|e| seen_ids.insert(e.detail.event_id.clone()))
            .map(|e| e.detail.status.as_str())
            .collect();
        assert_eq!(statuses, LADDER, "every state change reached the integration's queue, in order");
        assert_eq!(events.iter().filter(|e| e.detail_type.as_str() == "JobCompleted").count(), 1);
        assert!(events.iter().all(|e| e.source == "iris.pipeline" && e.detail.job_id == job.job_id));

        // The same S3 event delivered again (at-least-once): no second job, no second JobCompleted.
        let head = backends.objects.head(&submission.key).await.unwrap().unwrap();
        let duplicate = object_created_notification(
            &config.bucket,
            submission.key.as_str(),
            head.size,
            &head.etag,
            "uploads-to-ingest",
            Timestamp::now(),
            1,
        );
        let ingest = backends.queue(QueueRole::Ingest);
        ingest.send(&serde_json::to_string(&duplicate).unwrap()).await.unwrap();
        ingest.send(&serde_json::to_string(&duplicate).unwrap()).await.unwrap();
        let started = Instant::now();
        loop {
            let depth = ingest.depth().await.unwrap();
            if depth.visible + depth.in_flight == 0 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "duplicates not consumed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let later = drain_events(&observer, Duration::from_secs(2)).await;
        assert!(later.is_empty(), "a duplicate event produced {later:?}");
        assert_eq!(backends.jobs.get(&job.job_id).await.unwrap().unwrap(), job, "the job is untouched");
        assert_eq!(backends.jobs.list_by_user(&user, 10).await.unwrap().len(), 1, "one job per upload");
        pipeline.stop().await;
    }

    /// JobCompleted published on EventBridge reaches the notify queue through the bus's rule, and
    /// the notify service posts it to the subscribed connection through the API Gateway
    /// Management API endpoint (moto's; a post moto refused would fail the delivery and release
    /// the subscription's rank, so the advanced rank proves the post was accepted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn job_completed_goes_through_eventbridge_and_sqs_and_is_posted_through_the_management_api() {
        use iris_shared::events::JobEventDetail;
        use iris_shared::job::{JobRecord, UploadSource};
        use iris_shared::ports::Connection;
        let (config, clients, _) = setup(false).await;
        let backends = iris_aws::open_backends(&config, &clients).await.unwrap();
        let user = UserId::parse("alice").unwrap();
        let upload = UploadSource {
            bucket: config.bucket.clone(),
            key: "uploads/alice/a.nii.gz".into(),
            etag: "e".into(),
            version_id: None,
        };
        let mut job = JobRecord::received(&upload, user.clone(), BTreeMap::new(), Timestamp::now());
        job.status = JobStatus::Completed;
        let connection_id = "moto-connection-1=";
        backends
            .connections
            .add_connection(&Connection {
                connection_id: connection_id.into(),
                user_id: user,
                connected_at: Timestamp::now(),
            })
            .await
            .unwrap();
        backends.connections.subscribe(connection_id, &job.job_id).await.unwrap();

        backends.events.publish(&[EventEnvelope::new(JobEventDetail::from_job(&job))]).await.unwrap();
        let notify_queue = backends.queue(QueueRole::Notify);
        let started = Instant::now();
        let message = loop {
            let mut batch = notify_queue.receive(1, Duration::from_secs(30), Duration::from_secs(2)).await.unwrap();
            if let Some(message) = batch.pop() {
                break message;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the rule did not deliver JobCompleted");
        };
        let envelope: EventEnvelope = serde_json::from_str(&message.body).expect("an EventBridge envelope");
        assert_eq!(envelope.detail_type.as_str(), "JobCompleted");
        assert_eq!(envelope.detail.job_id, job.job_id);

        let gateway = std::sync::Arc::new(iris_aws::ApiGatewayConnectionGateway::new(
            &clients.sdk_config,
            &local::moto_url_for_tests(),
        ));
        let core = std::sync::Arc::new(iris_notify::NotifyCore::new(
            backends.jobs.clone(),
            backends.connections.clone(),
            gateway,
        ));
        let handler = iris_notify::NotifyHandler::new(core);
        let outcome = iris_shared::runtime::MessageHandler::process_one(&handler, &message).await;
        assert!(matches!(outcome, iris_shared::runtime::Outcome::Done), "{outcome:?}");
        notify_queue.ack(&message.receipt).await.unwrap();
        let subscription = backends.connections.subscribers(&job.job_id).await.unwrap().pop().expect("subscribed");
        assert_eq!(subscription.delivered_rank, JobStatus::Completed.rank(), "the post went through");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_that_keeps_crashing_its_worker_lands_in_the_dead_letter_queue_and_fails_the_job() {
        let (config, clients, _) = setup(false).await;
        let backends = iris_aws::open_backends(&config, &clients).await.unwrap();
        // Ingest only: the study stops at INGESTED with its segment message queued.
        let shutdown = tokio_util::sync::CancellationToken::new();
        let ingest = tokio::spawn({
            let (backends, config, shutdown) = (backends.clone(), config.clone(), shutdown.clone());
            async move { iris_ingest::run_service(&backends, &config, shutdown).await }
        });
        let submission = submit_bytes(
            backends.objects.as_ref(),
            &UserId::parse("bob").unwrap(),
            "poison.nii.gz",
            small_phantom(),
            &BTreeMap::new(),
        )
        .await
        .unwrap();
        let started = Instant::now();
        while backends.jobs.get(&submission.job_id).await.unwrap().map(|j| j.status) != Some(JobStatus::Ingested) {
            assert!(started.elapsed() < Duration::from_secs(60), "ingest did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shutdown.cancel();
        ingest.await.unwrap();
        // Two segment workers take the message and die without acking (max attempts: 2).
        let segment = backends.queue(QueueRole::Segment);
        let mut deliveries = 0;
        while deliveries < 2 {
            let got = segment.receive(1, Duration::from_secs(1), Duration::from_secs(10)).await.unwrap();
            assert_eq!(got.len(), 1, "the study's segment message is queued");
            if got[0].body.contains("s3:TestEvent") {
                // S3 (and moto) sends one when notifications are configured: a worker acks it.
                segment.ack(&got[0].receipt).await.unwrap();
                continue;
            }
            deliveries += 1;
            assert_eq!(got[0].receive_count, deliveries);
            tokio::time::sleep(Duration::from_millis(1300)).await;
        }
        // The whole pipeline now gets the third delivery and gives the message up.
        let pipeline = start_pipeline(&backends, &config, TcpListener::bind(("127.0.0.1", 0)).await.unwrap()).unwrap();
        let job = wait_for_job(&backends, &submission.job_id, Duration::from_secs(60), |_| {}).await.unwrap();
        pipeline.stop().await;
        assert_eq!(job.status, JobStatus::Failed);
        let error = job.error.unwrap();
        assert_eq!(error.code, "retries_exhausted");
        assert_eq!(error.stage, Some(Stage::Segment));
        assert_eq!(segment.depth().await.unwrap().dead_lettered, 1, "the message is in the dead-letter queue");
    }
}

/// A DICOM series of the phantom whose patient, study and institution attributes all carry a
/// canary: after the whole pipeline, the canary is in no job record, event, log line or output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_patient_identifier_reaches_the_job_record_events_logs_or_outputs() {
    use iris_ingest::synthetic_dicom::{PHI_CANARY, axial_series, zip_series};
    let phantom = synthetic_ct(&PhantomSpec::small());
    let [nx, ny, nz] = phantom.dims();
    let origin = phantom.affine().apply([0.0, 0.0, 0.0]);
    assert_eq!(phantom.affine().orientation_code().unwrap(), "LPS", "the phantom's grid is DICOM's own");
    let spacing = phantom.spacing();
    let slices = axial_series(
        ny,
        nx,
        nz,
        [spacing[1], spacing[0]],
        spacing[2],
        [-origin[0], -origin[1], origin[2]],
        |i, j, k| *phantom.get(i, j, k),
    );
    let directory = tempfile::tempdir().unwrap();
    let upload = directory.path().join("series.zip");
    std::fs::write(&upload, zip_series(&slices, &[]).unwrap()).unwrap();
    let data = directory.path().join("data");
    let out = directory.path().join("out");
    let output = Command::new(iris_binary())
        .args(["process", upload.to_str().unwrap(), "--json", "--out", out.to_str().unwrap()])
        .env("IRIS_DATA_DIR", &data)
        .env("RUST_LOG", "debug")
        .output()
        .expect("run iris process");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.lines().count() > 20, "debug logging was on");
    assert!(!stdout.contains(PHI_CANARY), "canary in the job record printed");
    assert!(!stderr.contains(PHI_CANARY), "canary in the logs");
    let record: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(record["status"], "COMPLETED");
    let job_id = JobId::parse(record["jobId"].as_str().unwrap()).unwrap();
    let backends = EmbeddedBackends::open(&config_for(&data, &[])).unwrap();
    let events = backends.events.published(&job_id).await.unwrap();
    let distinct: std::collections::BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(distinct.len(), 7, "one event id per status");
    assert!(events.iter().all(|e| !e.body.contains(PHI_CANARY)), "canary in an event");
    let stored = serde_json::to_string(&backends.jobs.get(&job_id).await.unwrap().unwrap()).unwrap();
    assert!(!stored.contains(PHI_CANARY), "canary in the stored job record");
    let mut files = 0;
    for entry in walk(&out) {
        let mut bytes = std::fs::read(&entry).unwrap();
        if entry.extension().is_some_and(|e| e == "gz") {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain).unwrap();
            bytes = plain;
        }
        assert!(!bytes.windows(PHI_CANARY.len()).any(|w| w == PHI_CANARY.as_bytes()), "canary in {}", entry.display());
        files += 1;
    }
    assert_eq!(files, 8, "every output was checked (ingest.json, volume, labels, stats, GLB, OBJ, MTL, manifest)");
}

fn walk(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

// ---------------------------------------------------------------------------------------------
// The reliability suites (src/reliability, RELIABILITY.md), short versions, on both backends:
// chaos (SIGKILLs), duplicate and late delivery, the bad-input corpus, and a small load. The long
// runs are `scripts/reliability.sh`.
mod reliability_suites {
    use std::path::PathBuf;
    use std::time::Duration;

    use iris::reliability::bad_inputs::{BadInputPlan, run_bad_inputs};
    use iris::reliability::chaos::{ChaosPlan, run_chaos};
    use iris::reliability::duplicates::{DuplicatesPlan, run_duplicates};
    use iris::reliability::load::{LoadPlan, run_load};
    use iris::reliability::{Service, Target};

    fn binaries() -> PathBuf {
        let directory = super::iris_binary().parent().unwrap().to_owned();
        assert!(
            directory.join("iris-segment").is_file(),
            "the service binaries are not built: run `cargo build --workspace --bins` first (scripts/test.sh does)"
        );
        directory
    }

    fn moto() -> Target {
        Target::Moto { endpoint_url: iris_aws::local::moto_url_for_tests() }
    }

    async fn chaos(target: Target) {
        let plan = ChaosPlan { studies: 6, kills: 8, seed: 7, ..ChaosPlan::default() };
        let report = run_chaos(&target, &binaries(), &plan).await.expect("the suite runs");
        eprintln!("{}", report.to_markdown());
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert_eq!(report.kills.values().sum::<usize>(), 8, "every kill landed while a job was unfinished");
        assert_eq!((report.completed, report.failed_as_expected), (4, 2));
    }

    async fn duplicates(target: Target) {
        let plan = DuplicatesPlan { studies: 3, max_delay: Duration::from_millis(1500) };
        let report = run_duplicates(&target, &plan).await.expect("the suite runs");
        eprintln!("{}", report.to_markdown());
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert_eq!(report.jobs, 4, "one job per upload");
        // Three completed jobs of seven states and a failed one of three, each seen once.
        assert_eq!(report.distinct_states, 3 * 7 + 3);
        assert!(report.copies_delivered >= 16, "{} copies", report.copies_delivered);
    }

    async fn bad_inputs(target: Target) {
        let report = run_bad_inputs(&target, &binaries(), &BadInputPlan::default()).await.expect("the suite runs");
        eprintln!("{}", report.to_markdown());
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert!(report.uploads.len() > 30, "{} uploads", report.uploads.len());
        assert_eq!(report.dead_lettered.values().sum::<u64>(), report.malformed_messages as u64);
        assert_eq!(report.peak_rss.len(), Service::ALL.len());
    }

    async fn load(target: Target) {
        let plan = LoadPlan { studies: 12, ..LoadPlan::default() };
        let report = run_load(&target, &binaries(), &plan).await.expect("the suite runs");
        eprintln!("{}", report.to_markdown());
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert_eq!(report.completed, 12);
        assert!(report.studies_per_minute() > 0.0 && report.queue_age_p99_all >= 0.0);
        assert_eq!(report.queue_age_seconds.len(), 3, "a queue wait for every stage");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chaos_sigkills_leave_every_job_as_an_undisturbed_run_ends_it_embedded() {
        chaos(Target::Embedded).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chaos_sigkills_leave_every_job_as_an_undisturbed_run_ends_it_on_moto() {
        chaos(moto()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_message_delivered_twice_and_late_changes_nothing_embedded() {
        duplicates(Target::Embedded).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_message_delivered_twice_and_late_changes_nothing_on_moto() {
        duplicates(moto()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_bad_input_fails_with_its_code_and_malformed_messages_are_dead_lettered_embedded() {
        bad_inputs(Target::Embedded).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_bad_input_fails_with_its_code_and_malformed_messages_are_dead_lettered_on_moto() {
        bad_inputs(moto()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_studies_all_completes_embedded() {
        load(Target::Embedded).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_studies_all_completes_on_moto() {
        load(moto()).await;
    }
}
