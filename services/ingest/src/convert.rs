//! Ingest's logic, free of I/O: an uploaded file's bytes become the canonical RAS volume (CT as
//! int16 HU) and the ingest report.

use iris_shared::ingest_report::{CanonicalGrid, INGEST_REPORT_VERSION, IngestReport, IntensitySummary, OriginalGrid};
use iris_shared::nifti_codec::{
    AffineSource, DecodeLimits, NiftiDecodeError, NiftiGeometry, decode_nifti_hounsfield, encode_nifti_gz,
};
use rayon::prelude::*;

use crate::dicom::{DicomError, DicomLimits, read_dicom_file, read_dicom_zip};
use iris_shared::volume::{Reorientation, Volume, VolumeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    pub max_upload_bytes: u64,
    pub max_voxels: u64,
}

impl IngestLimits {
    /// Limits for unpacking DICOM archives, derived from the voxel cap: an archive may unpack to at
    /// most twice the int16 size of the largest volume allowed (room for headers and other files).
    pub fn dicom(&self) -> DicomLimits {
        DicomLimits {
            max_decompressed_bytes: self.max_voxels.saturating_mul(4),
            max_voxels: self.max_voxels,
            max_compression_ratio: 200,
            max_files: 100_000,
        }
    }
}

/// The canonical volume and the report, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestedVolume {
    pub canonical: Volume<i16>,
    pub report: IngestReport,
}

/// The encoded outputs: `volume.nii.gz` and `ingest.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestOutputs {
    pub volume_nii_gz: Vec<u8>,
    pub report_json: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    UnsupportedFormat(String),
    #[error("{0}")]
    Nifti(#[from] NiftiDecodeError),
    #[error("{0}")]
    Dicom(#[from] DicomError),
    #[error("the upload is {size} bytes, more than the limit of {limit}")]
    UploadTooLarge { size: u64, limit: u64 },
    #[error("the volume's geometry is unusable: {0}")]
    Geometry(#[from] VolumeError),
    #[error("could not write the canonical volume: {0}")]
    Encode(String),
}

impl IngestError {
    /// Stable error code recorded on the failed job.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::UnsupportedFormat(_) => "unsupported_format",
            IngestError::Nifti(error) => error.code(),
            IngestError::Dicom(error) => error.code(),
            IngestError::UploadTooLarge { .. } => "too_large",
            IngestError::Geometry(_) => "not_a_volume",
            IngestError::Encode(_) => "internal_error",
        }
    }

    /// Whether trying again could help (never, for input problems).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// An upload decoded to intensities on its (or dicom2nifti's) grid.
struct DecodedSource {
    format: &'static str,
    datatype: String,
    geometry: NiftiGeometry,
    affine_source: AffineSource,
    volume: Volume<i16>,
    /// Voxels outside the int16 range, clipped.
    clipped: u64,
    dicom: Option<iris_shared::ingest_report::DicomSeries>,
    notes: Vec<String>,
}

/// The input formats ingest recognises by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Nifti,
    DicomZip,
    Dicom,
}

impl SourceFormat {
    pub fn from_file_name(name: &str) -> Option<SourceFormat> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".nii") || lower.ends_with(".nii.gz") {
            Some(SourceFormat::Nifti)
        } else if lower.ends_with(".zip") {
            Some(SourceFormat::DicomZip)
        } else if lower.ends_with(".dcm") {
            Some(SourceFormat::Dicom)
        } else {
            None
        }
    }
}

/// Decodes an upload and brings it to canonical RAS orientation.
/// Takes the upload's bytes by value and frees them once decoded (peak memory matters for large CT).
pub fn ingest_upload(bytes: Vec<u8>, file_name: &str, limits: &IngestLimits) -> Result<IngestedVolume, IngestError> {
    if bytes.len() as u64 > limits.max_upload_bytes {
        return Err(IngestError::UploadTooLarge { size: bytes.len() as u64, limit: limits.max_upload_bytes });
    }
    let source = match SourceFormat::from_file_name(file_name) {
        Some(SourceFormat::Nifti) => {
            let (decoded, clipped) = decode_nifti_hounsfield(&bytes, &DecodeLimits { max_voxels: limits.max_voxels })?;
            DecodedSource {
                clipped,
                format: "nifti",
                datatype: decoded.datatype,
                geometry: decoded.geometry,
                affine_source: decoded.affine_source,
                volume: decoded.volume,
                dicom: None,
                notes: Vec::new(),
            }
        }
        Some(format @ (SourceFormat::DicomZip | SourceFormat::Dicom)) => {
            let series = if format == SourceFormat::DicomZip {
                read_dicom_zip(&bytes, &limits.dicom())?
            } else {
                read_dicom_file(&bytes, &limits.dicom())?
            };
            DecodedSource {
                clipped: series.clipped,
                format: "dicom",
                datatype: "DICOM".into(),
                geometry: NiftiGeometry::from_affine(series.volume.dims(), series.volume.affine()),
                affine_source: AffineSource::DicomSlices,
                volume: series.volume,
                dicom: Some(series.metadata),
                notes: series.notes,
            }
        }
        None => {
            return Err(IngestError::UnsupportedFormat(format!(
                "{file_name:?} is neither NIfTI (.nii, .nii.gz) nor DICOM (.dcm, or a .zip of a series)"
            )));
        }
    };
    drop(bytes);
    let original_affine = *source.volume.affine();
    let dims = source.volume.dims();
    let clipped = source.clipped;
    let (min_hu, max_hu) = source
        .volume
        .voxels()
        .par_chunks(1 << 20)
        .map(|chunk| chunk.iter().fold((i16::MAX, i16::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v))))
        .reduce(|| (i16::MAX, i16::MIN), |(a, b), (c, d)| (a.min(c), b.max(d)));
    let original = source.volume;
    let reorientation = Reorientation::to_canonical(dims, &original_affine)?;
    let canonical = reorientation.apply_owned(original)?;
    let mut warnings = Vec::new();
    if clipped > 0 {
        warnings.push(format!("{clipped} voxels were outside the int16 range and were clipped"));
    }
    if min_hu > -500 {
        warnings.push(format!("the darkest voxel is {min_hu} HU; a CT with air in view has values near -1000 HU"));
    }
    let report = IngestReport {
        format_version: INGEST_REPORT_VERSION,
        source_format: source.format.to_owned(),
        source_datatype: source.datatype.clone(),
        original: OriginalGrid {
            dims,
            affine: original_affine,
            affine_source: source.affine_source,
            orientation: original_affine.orientation_code()?,
            spacing_mm: original_affine.spacing(),
            geometry: source.geometry.clone(),
        },
        canonical: CanonicalGrid {
            dims: canonical.dims(),
            affine: *canonical.affine(),
            spacing_mm: canonical.spacing(),
        },
        reorientation,
        intensity: IntensitySummary { min_hu, max_hu, clipped_voxels: clipped },
        dicom: source.dicom,
        notes: source.notes,
        warnings,
    };
    Ok(IngestedVolume { canonical, report })
}

/// Encodes the canonical volume as `.nii.gz` and the report as JSON. Deterministic.
pub fn encode_outputs(ingested: &IngestedVolume) -> Result<IngestOutputs, IngestError> {
    let geometry = NiftiGeometry::from_affine(ingested.canonical.dims(), ingested.canonical.affine());
    let volume_nii_gz =
        encode_nifti_gz(&ingested.canonical, &geometry).map_err(|e| IngestError::Encode(e.to_string()))?;
    let mut report_json =
        serde_json::to_vec_pretty(&ingested.report).map_err(|e| IngestError::Encode(e.to_string()))?;
    report_json.push(b'\n');
    Ok(IngestOutputs { volume_nii_gz, report_json })
}
