//! The PHI boundary: patient identifiers never leave ingest.

use crate::support::*;

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
