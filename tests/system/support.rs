//! What the system tests share: a pipeline harness on a temporary data directory, the small
//! phantom, and the checks of a completed job's outputs. Re-exports what the tests use.

pub use std::collections::BTreeMap;
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Stdio};
pub use std::time::{Duration, Instant};

pub use futures_util::{SinkExt, StreamExt};
pub use iris::{RunningPipeline, start_pipeline, submit_bytes, wait_for_job};
pub use iris_core::ErrorCode;
pub use iris_core::backends::Backends;
pub use iris_core::config::IrisConfig;
pub use iris_core::ids::{JobId, UserId};
pub use iris_core::job::{JobRecord, JobStatus, Stage};
pub use iris_core::keys::{ObjectKey, QueueRole};
pub use iris_core::ports::{JobStore, ObjectStore, WorkQueue};
pub use iris_embedded::{DirectoryObjectStore, EmbeddedBackends};
pub use iris_volume::nifti_codec::{DecodeLimits, DecodedNifti, NiftiGeometry, decode_nifti, encode_nifti_gz};
pub use iris_volume::phantom::{PhantomSpec, synthetic_ct};
pub use iris_volume::volume::{Affine, Volume};
pub use tokio::net::TcpListener;
pub use tokio_tungstenite::tungstenite::Message;

pub const LADDER: [&str; 7] = ["RECEIVED", "INGESTING", "INGESTED", "SEGMENTING", "SEGMENTED", "MESHING", "COMPLETED"];
pub const LIMITS: DecodeLimits = DecodeLimits { max_voxels: 1 << 30 };

pub fn shared_ct(test: &str) -> Option<PathBuf> {
    iris_core::testing::shared_data(test, env!("CARGO_MANIFEST_DIR"), "example_ct_sm.nii.gz")
}

/// The `iris` binary (built by `cargo test` with this package's tests).
pub fn iris_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iris"))
}

/// Whether ONNX Runtime loads; when it does not, the caller skips (or fails, when strict).
pub fn onnx_runtime_loads(test: &str) -> bool {
    use iris_segment::NetworkRuntime;
    let probe = config_for(Path::new("/nonexistent"), &[]);
    let found = iris_onnxruntime::OrtRuntime::new(&probe.segment).check().map_err(|error| error.to_string());
    iris_core::testing::prerequisite(test, iris_core::testing::Prerequisite::OnnxRuntime, found).is_some()
}

pub fn config_for(directory: &Path, extra: &[(&str, &str)]) -> IrisConfig {
    let mut variables: BTreeMap<String, String> =
        extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    variables.insert("IRIS_DATA_DIR".into(), directory.display().to_string());
    if let Ok(library) = std::env::var("ORT_DYLIB_PATH") {
        variables.entry("ORT_DYLIB_PATH".into()).or_insert(library);
    }
    variables.entry("IRIS_VISIBILITY_TIMEOUT_SECS".into()).or_insert_with(|| "5".into());
    variables.entry("IRIS_RETRY_BACKOFF_MS".into()).or_insert_with(|| "100".into());
    variables.entry("IRIS_MAX_ATTEMPTS".into()).or_insert_with(|| "4".into());
    IrisConfig::from_lookup(|name| variables.get(name).cloned()).expect("test configuration")
}

pub fn small_phantom() -> Vec<u8> {
    let phantom = synthetic_ct(&PhantomSpec::small());
    encode_nifti_gz(&phantom, &NiftiGeometry::from_affine(phantom.dims(), phantom.affine())).expect("encode phantom")
}

pub struct Harness {
    pub _directory: tempfile::TempDir,
    pub config: IrisConfig,
    pub embedded: EmbeddedBackends,
    pub backends: Backends,
}

impl Harness {
    pub fn new(extra: &[(&str, &str)]) -> Harness {
        let directory = tempfile::tempdir().expect("temp dir");
        let config = config_for(directory.path(), extra);
        let embedded = EmbeddedBackends::open(&config).expect("open backends");
        let backends = embedded.ports();
        Harness { _directory: directory, config, embedded, backends }
    }

    pub async fn start(&self) -> RunningPipeline {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        start_pipeline(&self.backends, &self.config, listener).expect("start pipeline")
    }

    pub async fn submit(&self, user: &str, name: &str, body: Vec<u8>) -> JobId {
        let user = UserId::parse(user).expect("user");
        submit_bytes(self.backends.objects.as_ref(), &user, name, body, &BTreeMap::new()).await.expect("submit").job_id
    }

    pub async fn wait(&self, job_id: &JobId) -> JobRecord {
        wait_for_job(&self.backends, job_id, Duration::from_secs(120), |_| {}).await.expect("job ends")
    }

    pub async fn object(&self, key: ObjectKey) -> Vec<u8> {
        self.backends.objects.get(&key).await.unwrap_or_else(|e| panic!("{key}: {e}"))
    }

    pub async fn outputs(&self, job_id: &JobId) -> BTreeMap<String, Vec<u8>> {
        let mut outputs = BTreeMap::new();
        for object in self.backends.objects.list(&format!("jobs/{job_id}/")).await.expect("list") {
            outputs.insert(object.key.to_string(), self.object(object.key).await);
        }
        outputs
    }
}

pub async fn object(backends: &Backends, key: ObjectKey) -> Vec<u8> {
    backends.objects.get(&key).await.unwrap_or_else(|e| panic!("{key}: {e}"))
}

pub fn assert_same_grid(upload: &DecodedNifti, labels: &DecodedNifti) {
    assert_eq!(labels.volume.dims(), upload.volume.dims(), "labels have the upload's shape");
    assert_eq!(labels.affine, upload.affine, "labels have the upload's affine, bit for bit");
    assert_eq!(labels.geometry, upload.geometry, "labels carry the upload's qform and sform");
}

pub fn obj_groups(obj: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(obj).lines().filter_map(|l| l.strip_prefix("g ")).map(str::to_owned).collect()
}

/// Checks a completed job's outputs against its upload; returns the label names meshed.
pub async fn check_completed_job(backends: &Backends, job: &JobRecord, upload: &[u8]) -> Vec<String> {
    assert_eq!(job.status, JobStatus::Completed, "job error: {:?}", job.error);
    for stage in Stage::ALL {
        let record = &job.stages[&stage];
        assert!(record.started_at.is_some() && record.ended_at.is_some(), "{stage} timed");
    }
    let upload = decode_nifti(upload, &LIMITS).expect("upload decodes");
    let labels =
        decode_nifti(&object(backends, iris_core::Artifact::Labels.key(&job.job_id)).await, &LIMITS).expect("labels");
    assert_same_grid(&upload, &labels);
    let canonical =
        decode_nifti(&object(backends, iris_core::Artifact::Volume.key(&job.job_id)).await, &LIMITS).expect("volume");
    assert_eq!(canonical.affine.orientation_code().expect("orientation"), "RAS", "ingest writes canonical RAS");

    let stats: iris_core::labels::SegmentationStats =
        serde_json::from_slice(&object(backends, iris_core::Artifact::Stats.key(&job.job_id)).await)
            .expect("stats.json");
    let label_voxels: u64 = labels.volume.voxels().iter().filter(|v| **v > 0.0).count() as u64;
    assert_eq!(stats.labels.iter().map(|l| l.voxels).sum::<u64>(), label_voxels, "stats count every labelled voxel");
    let present: Vec<String> =
        stats.labels.iter().filter(|l| l.voxels >= iris_mesh::DEFAULT_MINIMUM_VOXELS).map(|l| l.name.clone()).collect();
    let groups = obj_groups(&object(backends, iris_core::Artifact::MeshObj.key(&job.job_id)).await);
    assert_eq!(groups, present, "model.obj has one named group per label found");
    let manifest: serde_json::Value =
        serde_json::from_slice(&object(backends, iris_core::Artifact::MeshManifest.key(&job.job_id)).await)
            .expect("manifest");
    assert_eq!(manifest["labels"].as_array().map(Vec::len), Some(present.len()));
    let glb = object(backends, iris_core::Artifact::MeshGlb.key(&job.job_id)).await;
    assert_eq!(&glb[..4], b"glTF", "scene.glb is a binary glTF");
    assert!(manifest["labels"].as_array().into_iter().flatten().all(|l| l["triangles"].as_u64() > Some(0)));
    present
}

/// Puts a committed test model (`services/segment/tests/models/<name>`) into the object store.
pub async fn store_test_model(objects: &dyn ObjectStore, name: &str) {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("services/segment/tests/models").join(name);
    for file in ["card.json", "model.onnx"] {
        let key = ObjectKey::parse(&format!("models/{name}/{file}")).unwrap();
        objects.put(&key, std::fs::read(directory.join(file)).unwrap(), &BTreeMap::new()).await.unwrap();
    }
}
