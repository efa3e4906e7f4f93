//! Ingest's logic, free of I/O: an uploaded file's bytes become the canonical RAS volume (CT as
//! int16 HU) and the ingest report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use iris_core::ErrorCode;
use iris_core::cancel::CancellableRead;
use iris_volume::ingest_report::{CanonicalGrid, INGEST_REPORT_VERSION, IngestReport, IntensitySummary, OriginalGrid};
use iris_volume::nifti_codec::{
    AffineSource, DecodeLimits, NiftiDecodeError, NiftiEncodeError, NiftiGeometry, decode_nifti_hounsfield,
    encode_nifti_gz, open_int16_planes, write_nifti_gz, write_nifti_gz_by_planes, write_nifti_gz_in_order,
};
use iris_volume::volume::{Affine, Reorientation, Volume, VolumeError};
use rayon::prelude::*;

use crate::dicom::{
    ArchiveReader, DicomError, DicomLimits, PositionedFile, open_dicom_zip, read_dicom_file, read_dicom_zip,
};

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

/// Where an upload's bytes are: already in memory (fetched from the object store), or in a local
/// file (read in place: a DICOM zip is then never held whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upload {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// How [`ingest_upload_to`] built the canonical volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeAssembly {
    /// Plane by plane, each z-plane decoded from its own image and compressed as it came: the
    /// volume was never held (an axial DICOM series in a zip).
    PlaneByPlane,
    /// Read in order, plane by plane, from a decompressing reader and compressed as it came, the
    /// members before compressed while the next are read: the volume was never held (an int16
    /// NIfTI without scaling whose slice axis stays the canonical z-axis, unflipped: LPS, LAS, RAS …).
    InFileOrder,
    /// Decoded whole, reoriented, then written (other NIfTI files, multi-frame DICOM, coronal or
    /// sagittal series).
    WholeVolume,
}

impl VolumeAssembly {
    /// A few words for logs and the command line.
    pub fn description(self) -> &'static str {
        match self {
            VolumeAssembly::PlaneByPlane => "plane by plane",
            VolumeAssembly::InFileOrder => "in file order",
            VolumeAssembly::WholeVolume => "whole volume",
        }
    }
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
    #[error("could not read the upload: {0}")]
    Read(String),
}

impl From<NiftiEncodeError> for IngestError {
    fn from(error: NiftiEncodeError) -> IngestError {
        IngestError::Encode(error.to_string())
    }
}

impl IngestError {
    /// Stable error code recorded on the failed job.
    pub fn code(&self) -> ErrorCode {
        match self {
            IngestError::UnsupportedFormat(_) => ErrorCode::UnsupportedFormat,
            IngestError::Nifti(error) => error.code(),
            IngestError::Dicom(error) => error.code(),
            IngestError::UploadTooLarge { .. } => ErrorCode::TooLarge,
            IngestError::Geometry(_) => ErrorCode::NotAVolume,
            IngestError::Encode(_) | IngestError::Read(_) => ErrorCode::InternalError,
        }
    }

    /// Whether trying again could help (never, for input problems).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// What the report says of the decoded upload, besides its grid and intensities.
struct SourceDescription {
    format: &'static str,
    datatype: String,
    geometry: NiftiGeometry,
    affine_source: AffineSource,
    dicom: Option<iris_volume::ingest_report::DicomSeries>,
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
    let (source, volume, clipped) = match SourceFormat::from_file_name(file_name) {
        Some(SourceFormat::Nifti) => {
            let (decoded, clipped) = decode_nifti_hounsfield(&bytes, &DecodeLimits { max_voxels: limits.max_voxels })?;
            let source = SourceDescription {
                format: "nifti",
                datatype: decoded.datatype,
                geometry: decoded.geometry,
                affine_source: decoded.affine_source,
                dicom: None,
                notes: Vec::new(),
            };
            (source, decoded.volume, clipped)
        }
        Some(format @ (SourceFormat::DicomZip | SourceFormat::Dicom)) => {
            let series = if format == SourceFormat::DicomZip {
                read_dicom_zip(&bytes, &limits.dicom())?
            } else {
                read_dicom_file(&bytes, &limits.dicom())?
            };
            let source = SourceDescription {
                format: "dicom",
                datatype: "DICOM".into(),
                geometry: NiftiGeometry::from_affine(series.volume.dims(), series.volume.affine()),
                affine_source: AffineSource::DicomSlices,
                dicom: Some(series.metadata),
                notes: series.notes,
            };
            (source, series.volume, series.clipped)
        }
        None => {
            // The name is not repeated: an upload's file name may name the patient.
            return Err(IngestError::UnsupportedFormat(
                "the upload's name ends in neither .nii or .nii.gz (NIfTI) nor .dcm or .zip (DICOM)".into(),
            ));
        }
    };
    drop(bytes);
    let original_affine = *volume.affine();
    let dims = volume.dims();
    let (min_hu, max_hu) = volume
        .voxels()
        .par_chunks(1 << 20)
        .map(|chunk| chunk.iter().fold((i16::MAX, i16::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v))))
        .reduce(|| (i16::MAX, i16::MIN), |(a, b), (c, d)| (a.min(c), b.max(d)));
    let reorientation = Reorientation::to_canonical(dims, &original_affine)?;
    let canonical = reorientation.apply_owned(volume)?;
    let intensity = IntensitySummary { min_hu, max_hu, clipped_voxels: clipped };
    let report = report_of(source, dims, original_affine, reorientation, intensity)?;
    Ok(IngestedVolume { canonical, report })
}

/// Decodes an upload, brings it to canonical RAS orientation and writes the canonical volume as
/// `.nii.gz` to `volume_sink` (the same bytes [`encode_outputs`] gives for [`ingest_upload`]'s
/// volume); returns the report and how the volume was built.
///
/// An axial DICOM series in a zip is written plane by plane ([`VolumeAssembly::PlaneByPlane`]):
/// each canonical z-plane is decoded from its image, checked and compressed, a few planes at a
/// time in parallel, and the volume is never held; read from a file, the zip is not held either.
/// Anything else is decoded whole first. On an error the sink may hold part of a file: the
/// caller discards it.
pub fn ingest_upload_to(
    upload: Upload,
    file_name: &str,
    limits: &IngestLimits,
    volume_sink: &mut dyn std::io::Write,
) -> Result<(IngestReport, VolumeAssembly), IngestError> {
    let read_error = |e: std::io::Error| IngestError::Read(e.to_string());
    if SourceFormat::from_file_name(file_name) == Some(SourceFormat::DicomZip) {
        let streamed = match &upload {
            Upload::Bytes(bytes) => {
                check_upload_size(bytes.len() as u64, limits)?;
                ingest_dicom_zip_by_plane(
                    CancellableRead::new(std::io::Cursor::new(bytes.as_slice())),
                    limits,
                    volume_sink,
                )?
            }
            Upload::File(path) => {
                let file = PositionedFile::open(path).map_err(read_error)?;
                check_upload_size(file.len(), limits)?;
                ingest_dicom_zip_by_plane(CancellableRead::new(file), limits, volume_sink)?
            }
        };
        if let Some(report) = streamed {
            return Ok((report, VolumeAssembly::PlaneByPlane));
        }
    }
    let bytes = match upload {
        Upload::Bytes(bytes) => bytes,
        Upload::File(path) => {
            check_upload_size(std::fs::metadata(&path).map_err(read_error)?.len(), limits)?;
            std::fs::read(&path).map_err(read_error)?
        }
    };
    check_upload_size(bytes.len() as u64, limits)?;
    let in_file_order = match SourceFormat::from_file_name(file_name) {
        Some(SourceFormat::Nifti) => ingest_nifti_in_file_order(&bytes, limits, volume_sink)?,
        _ => None,
    };
    if let Some(report) = in_file_order {
        return Ok((report, VolumeAssembly::InFileOrder));
    }
    let ingested = ingest_upload(bytes, file_name, limits)?;
    let geometry = NiftiGeometry::from_affine(ingested.canonical.dims(), ingested.canonical.affine());
    write_nifti_gz(&ingested.canonical, &geometry, volume_sink)?;
    Ok((ingested.report, VolumeAssembly::WholeVolume))
}

/// The report as pretty JSON with a final newline.
pub fn report_json(report: &IngestReport) -> Result<Vec<u8>, IngestError> {
    let mut json = serde_json::to_vec_pretty(report).map_err(|e| IngestError::Encode(e.to_string()))?;
    json.push(b'\n');
    Ok(json)
}

/// Whether NIfTI-1 can hold these dims (16-bit signed). Written as it is read, the header goes
/// out before any voxel: a volume it cannot describe (say a header's negative dim, read as a huge
/// one, over too little data) is left to the whole-volume path, which finds what is wrong with
/// the file first, as it always did.
fn fits_nifti1(dims: [usize; 3]) -> bool {
    dims.iter().all(|extent| i16::try_from(*extent).is_ok())
}

fn check_upload_size(size: u64, limits: &IngestLimits) -> Result<(), IngestError> {
    if size > limits.max_upload_bytes {
        return Err(IngestError::UploadTooLarge { size, limit: limits.max_upload_bytes });
    }
    Ok(())
}

/// [`ingest_upload_to`] for a DICOM zip whose series decodes by canonical plane: the report, once
/// the volume is written; `None` (nothing written) for a series that must be decoded whole.
fn ingest_dicom_zip_by_plane<R: ArchiveReader>(
    reader: R,
    limits: &IngestLimits,
    volume_sink: &mut dyn std::io::Write,
) -> Result<Option<IngestReport>, IngestError> {
    let series = open_dicom_zip(reader, &limits.dicom())?;
    if !series.decodes_by_canonical_plane() {
        return Ok(None);
    }
    let (dims, original_affine) = series.grid();
    if !fits_nifti1(dims) {
        return Ok(None);
    }
    let reorientation = Reorientation::to_canonical(dims, &original_affine)?;
    let canonical_dims = reorientation.canonical_dims();
    let canonical_affine = reorientation.canonical_affine(&original_affine);
    let geometry = NiftiGeometry::from_affine(canonical_dims, &canonical_affine);
    let (min_hu, max_hu) = (AtomicI32::new(i32::from(i16::MAX)), AtomicI32::new(i32::from(i16::MIN)));
    let clipped = AtomicU64::new(0);
    write_nifti_gz_by_planes(&geometry, volume_sink, |planes, values: &mut [i16]| {
        clipped.fetch_add(series.decode_canonical_planes(planes, values)?, Ordering::Relaxed);
        let (lo, hi) = values.iter().fold((i16::MAX, i16::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        min_hu.fetch_min(i32::from(lo), Ordering::Relaxed);
        max_hu.fetch_max(i32::from(hi), Ordering::Relaxed);
        Ok::<_, IngestError>(())
    })?;
    let source = SourceDescription {
        format: "dicom",
        datatype: "DICOM".into(),
        geometry: NiftiGeometry::from_affine(dims, &original_affine),
        affine_source: AffineSource::DicomSlices,
        dicom: Some(series.metadata().clone()),
        notes: series.notes().to_vec(),
    };
    // Every value was an int16 when it was folded in.
    let narrow = |value: AtomicI32| i16::try_from(value.into_inner()).unwrap_or_default();
    let intensity =
        IntensitySummary { min_hu: narrow(min_hu), max_hu: narrow(max_hu), clipped_voxels: clipped.into_inner() };
    Ok(Some(report_of(source, dims, original_affine, reorientation, intensity)?))
}

/// [`ingest_upload_to`] for an int16 NIfTI without scaling whose planes stay the canonical z-planes
/// in the same order: read in file order, each run of planes reoriented in-plane (flips, or a
/// swap of x and y) and compressed while the next is read. `None` (nothing written) otherwise.
fn ingest_nifti_in_file_order(
    bytes: &[u8],
    limits: &IngestLimits,
    volume_sink: &mut dyn std::io::Write,
) -> Result<Option<IngestReport>, IngestError> {
    let Some(mut reader) = open_int16_planes(bytes, &DecodeLimits { max_voxels: limits.max_voxels })? else {
        return Ok(None);
    };
    let (dims, original_affine) = (reader.dims, reader.affine);
    let reorientation = Reorientation::to_canonical(dims, &original_affine)?;
    if reorientation.axes[2].world_axis != 2 || reorientation.axes[2].flipped || !fits_nifti1(dims) {
        return Ok(None);
    }
    let source = SourceDescription {
        format: "nifti",
        datatype: reader.datatype.clone(),
        geometry: reader.geometry.clone(),
        affine_source: reader.affine_source,
        dicom: None,
        notes: Vec::new(),
    };
    let canonical_affine = reorientation.canonical_affine(&original_affine);
    let geometry = NiftiGeometry::from_affine(reorientation.canonical_dims(), &canonical_affine);
    let (mut min_hu, mut max_hu) = (i16::MAX, i16::MIN);
    let mut stored = Vec::new();
    write_nifti_gz_in_order(&geometry, volume_sink, |planes, values: &mut [i16]| {
        if reorientation.is_identity() {
            reader.read_next(values)?;
        } else {
            stored.resize(values.len(), 0);
            reader.read_next(&mut stored)?;
            // The same permutation and flips on these planes only (z is neither moved nor
            // flipped); flips are done in place, and the buffer is kept for the next run.
            let in_plane = Reorientation { original_dims: [dims[0], dims[1], planes.len()], axes: reorientation.axes };
            let run = Volume::new(in_plane.original_dims, Affine::identity(), std::mem::take(&mut stored))?;
            let canonical = in_plane.apply_owned(run)?;
            values.copy_from_slice(canonical.voxels());
            stored = canonical.into_voxels();
        }
        let (lo, hi) = values.iter().fold((min_hu, max_hu), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        (min_hu, max_hu) = (lo, hi);
        Ok::<_, IngestError>(())
    })?;
    reader.finish()?;
    let intensity = IntensitySummary { min_hu, max_hu, clipped_voxels: 0 };
    Ok(Some(report_of(source, dims, original_affine, reorientation, intensity)?))
}

/// The ingest report for a decoded source on `dims` and `original_affine`, brought to canonical
/// by `reorientation`.
fn report_of(
    source: SourceDescription,
    dims: [usize; 3],
    original_affine: Affine,
    reorientation: Reorientation,
    intensity: IntensitySummary,
) -> Result<IngestReport, IngestError> {
    let mut warnings = Vec::new();
    if intensity.clipped_voxels > 0 {
        warnings.push(format!("{} voxels were outside the int16 range and were clipped", intensity.clipped_voxels));
    }
    if intensity.min_hu > -500 {
        warnings.push(format!(
            "the darkest voxel is {} HU; a CT with air in view has values near -1000 HU",
            intensity.min_hu
        ));
    }
    let canonical_affine = reorientation.canonical_affine(&original_affine);
    Ok(IngestReport {
        format_version: INGEST_REPORT_VERSION,
        source_format: source.format.to_owned(),
        source_datatype: source.datatype,
        original: OriginalGrid {
            dims,
            affine: original_affine,
            affine_source: source.affine_source,
            orientation: original_affine.orientation_code()?,
            spacing_mm: original_affine.spacing(),
            geometry: source.geometry,
        },
        canonical: CanonicalGrid {
            dims: reorientation.canonical_dims(),
            affine: canonical_affine,
            spacing_mm: canonical_affine.spacing(),
        },
        reorientation,
        intensity,
        dicom: source.dicom,
        notes: source.notes,
        warnings,
    })
}

/// Encodes the canonical volume as `.nii.gz` and the report as JSON. Deterministic.
pub fn encode_outputs(ingested: &IngestedVolume) -> Result<IngestOutputs, IngestError> {
    let geometry = NiftiGeometry::from_affine(ingested.canonical.dims(), ingested.canonical.affine());
    let volume_nii_gz =
        encode_nifti_gz(&ingested.canonical, &geometry).map_err(|e| IngestError::Encode(e.to_string()))?;
    Ok(IngestOutputs { volume_nii_gz, report_json: report_json(&ingested.report)? })
}
