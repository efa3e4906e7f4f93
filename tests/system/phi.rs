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

/// Parts of a hostile upload name: a patient's name, a record number, a date of birth.
const HOSTILE: [&str; 3] = ["DOE^JOHN", "MRN123456", "1970-01-01"];

fn hostile_parts_in(text: &str) -> Vec<&'static str> {
    HOSTILE.iter().copied().filter(|part| text.contains(part)).collect()
}

/// Issue #24: uploads named after the patient (`DOE^JOHN_MRN123456_1970-01-01…`), a zip whose
/// entries are named so, and a series whose images carry burned-in annotations (and the patient
/// in their attributes, private tags included) fail with their codes, and neither the name nor a
/// DICOM identifier is in the job record (which keeps a salted digest of the key, not the key),
/// an error message, an event, a log line at debug level or a dead-letter reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_reach_no_error_message_event_log_or_dead_letter_reason() {
    let directory = tempfile::tempdir().unwrap();
    let name = "DOE^JOHN_MRN123456_1970-01-01";
    let entry = format!("{name}/IM0001.dcm");
    let zip = iris_ingest::synthetic_dicom::zip_series(&[], &[(entry.as_str(), b"not a DICOM file".to_vec())]).unwrap();
    let mut burned_in = iris_ingest::synthetic_dicom::small_axial_series(|_, _| {});
    burned_in.iter_mut().for_each(|slice| slice.burned_in_annotation = true);
    let burned_in = iris_ingest::synthetic_dicom::zip_series(&burned_in, &[]).unwrap();
    let cases: [(String, Vec<u8>, ErrorCode); 4] = [
        (format!("{name}.txt"), b"a report, not an image".to_vec(), ErrorCode::UnsupportedFormat),
        (format!("{name}.nii.gz"), vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3], ErrorCode::CorruptFile),
        (format!("{name}.zip"), zip, ErrorCode::NoDicomImages),
        (format!("{name}-annotated.zip"), burned_in, ErrorCode::BurnedInAnnotation),
    ];
    let identifiers = |text: &str| {
        let mut found = hostile_parts_in(text);
        if text.contains(iris_ingest::synthetic_dicom::PHI_CANARY) {
            found.push(iris_ingest::synthetic_dicom::PHI_CANARY);
        }
        found
    };
    for (file_name, body, code) in cases {
        let upload = directory.path().join(&file_name);
        std::fs::write(&upload, body).unwrap();
        let data = directory.path().join(format!("data-{code}"));
        let output = Command::new(iris_binary())
            .args(["process", upload.to_str().unwrap(), "--json"])
            .env("IRIS_DATA_DIR", &data)
            .env("RUST_LOG", "debug")
            .output()
            .expect("run iris process");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(stderr.contains("job failed"), "{file_name}: the logs were captured\n{stderr}");
        let record: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(record["status"], "FAILED", "{file_name}: {record}");
        assert_eq!(record["error"]["code"], code.as_str(), "{file_name}: {record}");
        assert!(record.get("sourceKey").is_none(), "{file_name}: the record keeps no key: {record}");
        assert_eq!(record["sourceKeyDigest"].as_str().map(str::len), Some(64), "{file_name}: a digest instead");
        assert_eq!(identifiers(&record.to_string()), Vec::<&str>::new(), "{file_name}: in the record: {record}");
        assert_eq!(identifiers(&stderr), Vec::<&str>::new(), "{file_name}: in the logs:\n{stderr}");
        let job_id = JobId::parse(record["jobId"].as_str().unwrap()).unwrap();
        let backends = EmbeddedBackends::open(&config_for(&data, &[])).unwrap();
        let events = backends.events.published(&job_id).await.unwrap();
        assert!(events.len() >= 2, "RECEIVED and FAILED were published");
        for event in &events {
            assert_eq!(identifiers(&event.body), Vec::<&str>::new(), "{file_name}: in an event: {}", event.body);
        }
    }
    // A key whose user segment is the patient's name: the message is dead-lettered, and the
    // reason says why without repeating the key.
    let data = directory.path().join("data-reject");
    let config = config_for(&data, &[]);
    let backends = EmbeddedBackends::open(&config).unwrap().ports();
    let handler = iris_ingest::IngestHandler::from_config(&backends, &config);
    let key = format!("uploads/{}/{name}.nii.gz", name.replace('^', "%5E"));
    let body = serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "eventTime": "2026-12-03T00:00:00.000Z",
        "s3": {"bucket": {"name": "iris"}, "object": {"key": key, "size": 10, "eTag": "e"}}
    }]});
    let message = iris_core::ports::ReceivedMessage {
        message_id: "m".into(),
        body: body.to_string(),
        receipt: iris_core::ports::ReceiptHandle("r".into()),
        receive_count: 1,
    };
    match iris_core::runtime::MessageHandler::process_one(&handler, &message).await {
        iris_core::runtime::Outcome::Reject { reason } => {
            assert_eq!(hostile_parts_in(&reason), Vec::<&str>::new(), "in the dead-letter reason: {reason}")
        }
        other => panic!("expected the message to be rejected, got {other:?}"),
    }
}
