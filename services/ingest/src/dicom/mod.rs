//! DICOM series → one 3-D volume, with dicom2nifti's geometry.
//!
//! Input is a `.zip` of a series (or of several: the CT series with the most slices is taken) or a
//! single multi-frame file. Slices are sorted along the slice normal by ImagePositionPatient;
//! rescale slope/intercept give Hounsfield units. Uneven or missing slices, gantry tilt and mixed
//! orientations fail the job with a code (no resampling: a wrong geometry is worse than none).
//!
//! The volume is returned on dicom2nifti's grid (LAS: permutation and flips of the slice grid, no
//! resampling), so the label map lands on the same grid a user converting with dicom2nifti gets.
//!
//! Only technical attributes are read. Patient, study and institution attributes and UIDs are
//! never copied out (UIDs are used in memory to group slices into series, nothing more).

mod archive;
mod geometry;
mod guards;
mod headers;
mod pixels;

use std::io::Cursor;

use iris_core::ErrorCode;
use iris_volume::ingest_report::DicomSeries;
use iris_volume::volume::{Affine, Reorientation, Volume};

pub use archive::{ArchiveReader, PositionedFile, open_dicom_file, open_dicom_zip};

use archive::DicomFiles;
use geometry::Placement;
use headers::FileSummary;

/// Caps applied while unpacking, before anything large is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DicomLimits {
    pub max_decompressed_bytes: u64,
    pub max_voxels: u64,
    /// Largest allowed ratio of an archive entry's size to its compressed size (zip bombs).
    pub max_compression_ratio: u64,
    pub max_files: usize,
}

/// A series assembled into a volume on dicom2nifti's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomVolume {
    /// Modality values (HU for CT), rounded to int16, on the LAS grid; affine in RAS millimetres.
    pub volume: Volume<i16>,
    /// Voxels whose value was outside the int16 range, clipped.
    pub clipped: u64,
    pub metadata: DicomSeries,
    /// Choices made and things ignored, for the ingest report (never identifiers).
    pub notes: Vec<String>,
}

/// A series whose files are chosen, sorted and checked, and whose grid is known, before any pixel
/// is decoded: [`DicomSeriesReader::read_volume`] decodes it whole; where every canonical z-plane
/// is one whole image, [`DicomSeriesReader::decode_canonical_planes`] decodes any run of planes
/// on its own, so a caller can write the volume plane by plane without ever holding it.
pub struct DicomSeriesReader<'a, R: ArchiveReader> {
    upload: DicomFiles<'a, R>,
    files: Vec<FileSummary>,
    /// For each file of the series, its frames and the slice (sorted position) each one is.
    frames_of_file: Vec<Vec<(u32, usize)>>,
    /// For each slice, the file that holds it.
    file_of_slice: Vec<usize>,
    /// dicom2nifti's grid.
    dims: [usize; 3],
    affine: Affine,
    /// Where each slice-grid voxel lands on dicom2nifti's grid.
    placement: Placement,
    /// The slice grid (columns, rows, slices) and how it maps onto canonical RAS.
    slice_dims: [usize; 3],
    slice_to_canonical: Reorientation,
    metadata: DicomSeries,
    notes: Vec<String>,
    limits: DicomLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("the archive is damaged or not a zip file: {0}")]
    CorruptArchive(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the upload holds no DICOM images ({0})")]
    NoImages(String),
    #[error("the DICOM file has no pixel data")]
    NoPixelData,
    #[error("no CT series in the upload (found: {0}); this pipeline segments CT")]
    NoCtSeries(String),
    #[error("the series is inconsistent: {0}")]
    InconsistentSeries(String),
    #[error("the slices are not evenly spaced: {0}")]
    UnevenSpacing(String),
    #[error("the series was acquired with a tilted gantry ({0:.2}°); resample it to an untilted grid first")]
    GantryTilt(f64),
    #[error("a single slice is not a volume")]
    SingleSlice,
    #[error("transfer syntax {0} cannot be decoded ({1})")]
    UnsupportedTransferSyntax(String, String),
    #[error("the DICOM data is damaged: {0}")]
    Corrupt(String),
    #[error(
        "the images carry burned-in annotations (BurnedInAnnotation is YES): their pixels may show patient \
         identifiers, which would reach every output; upload a series without them"
    )]
    BurnedInAnnotation,
}

impl DicomError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DicomError::CorruptArchive(_) | DicomError::Corrupt(_) => ErrorCode::CorruptFile,
            DicomError::TooLarge(_) => ErrorCode::TooLarge,
            DicomError::NoImages(_) => ErrorCode::NoDicomImages,
            DicomError::NoPixelData => ErrorCode::NoPixelData,
            DicomError::NoCtSeries(_) => ErrorCode::NoCtSeries,
            DicomError::InconsistentSeries(_) => ErrorCode::InconsistentSeries,
            DicomError::UnevenSpacing(_) => ErrorCode::UnevenSliceSpacing,
            DicomError::GantryTilt(_) => ErrorCode::GantryTilt,
            DicomError::SingleSlice => ErrorCode::NotAVolume,
            DicomError::UnsupportedTransferSyntax(..) => ErrorCode::UnsupportedTransferSyntax,
            DicomError::BurnedInAnnotation => ErrorCode::BurnedInAnnotation,
        }
    }
}

/// Reads a zip of DICOM files (in memory) into a volume.
pub fn read_dicom_zip(bytes: &[u8], limits: &DicomLimits) -> Result<DicomVolume, DicomError> {
    open_dicom_zip(Cursor::new(bytes), limits)?.read_volume()
}

/// Reads one DICOM file (a multi-frame image, e.g. enhanced CT) into a volume.
pub fn read_dicom_file(bytes: &[u8], limits: &DicomLimits) -> Result<DicomVolume, DicomError> {
    open_dicom_file(bytes, limits)?.read_volume()
}
