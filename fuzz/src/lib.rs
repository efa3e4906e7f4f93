//! What the fuzz targets share: running one upload through ingest and its output encoder, and
//! printing each input's outcome on request.

use iris_ingest::{IngestLimits, Upload, encode_outputs, ingest_upload, ingest_upload_to};

/// Small caps, so that a file claiming a huge image is refused rather than allocated.
pub const SMALL_LIMITS: IngestLimits = IngestLimits { max_upload_bytes: 1 << 24, max_voxels: 1 << 22 };

/// Ingests `data` as an upload named `file_name`, then encodes the outputs of a volume it accepts;
/// ingests it again through the writer that decodes plane by plane, which must agree: the same
/// `volume.nii.gz` and report, or the same error code.
/// An `Err` is a normal outcome; a panic, abort, timeout or an allocation past the RSS limit is a bug.
pub fn ingest_and_encode(data: &[u8], file_name: &str, limits: &IngestLimits) {
    let whole = ingest_upload(data.to_vec(), file_name, limits);
    let mut written = Vec::new();
    let by_plane = ingest_upload_to(Upload::Bytes(data.to_vec()), file_name, limits, &mut written);
    match (whole, by_plane) {
        (Ok(ingested), Ok((report, assembly))) => {
            let encoded = encode_outputs(&ingested);
            assert!(report == ingested.report, "the two paths' reports differ ({assembly:?})");
            if let Ok(outputs) = &encoded {
                assert!(outputs.volume_nii_gz == written, "the two paths' volumes differ ({assembly:?})");
            }
            show(|| format!("ingest: {:?} ({assembly:?}), encoded: {}", ingested.canonical.dims(), encoded.is_ok()));
        }
        (Err(error), Err(by_plane_error)) => {
            assert_eq!(error.code(), by_plane_error.code(), "{error} / {by_plane_error}");
            show(|| format!("ingest: {}: {error}", error.code()));
        }
        (whole, by_plane) => panic!("one path accepted the upload: {:?} / {:?}", whole.err(), by_plane.err()),
    }
}

/// `IRIS_FUZZ_SHOW=1`: print each input's outcome (to check seeds and triage; run a target's
/// binary on files: `$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/TARGET FILE...`).
pub fn show(outcome: impl FnOnce() -> String) {
    static SHOW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *SHOW.get_or_init(|| std::env::var_os("IRIS_FUZZ_SHOW").is_some()) {
        eprintln!("iris-fuzz: {}", outcome());
    }
}
