//! `ingest.json`: what ingest found and did, and everything later stages need to put results back
//! on exactly the upload's grid. Technical metadata only: never patient identifiers.

use serde::{Deserialize, Serialize};

use crate::nifti_codec::{AffineSource, NiftiGeometry};
use crate::volume::{Affine, Reorientation};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestReport {
    pub format_version: u32,
    /// "nifti" (DICOM arrives with the ingest issue).
    pub source_format: String,
    pub source_datatype: String,
    /// The upload's grid, verbatim.
    pub original: OriginalGrid,
    /// The canonical RAS grid of `volume.nii.gz`.
    pub canonical: CanonicalGrid,
    /// Permutation and flips from the upload's grid to the canonical one (exact, no resampling).
    pub reorientation: Reorientation,
    pub intensity: IntensitySummary,
    /// For DICOM uploads: the series taken (technical attributes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dicom: Option<DicomSeries>,
    /// Choices made (e.g. which series was taken) and things ignored.
    #[serde(default)]
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Technical metadata of a DICOM series: no patient, study or institution attributes, no UIDs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DicomSeries {
    pub modality: String,
    pub transfer_syntax: String,
    pub rows: usize,
    pub columns: usize,
    pub slices: usize,
    /// Row spacing, column spacing (mm), as PixelSpacing.
    pub pixel_spacing_mm: [f64; 2],
    /// Distance between consecutive slice centres along the slice normal (mm).
    pub slice_spacing_mm: f64,
    pub slice_thickness_mm: Option<f64>,
    pub kvp: Option<f64>,
    /// The slice grid's own orientation before reorientation (e.g. "LPS").
    pub acquisition_orientation: String,
    pub series_in_upload: usize,
    pub files_read: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginalGrid {
    pub dims: [usize; 3],
    pub affine: Affine,
    pub affine_source: AffineSource,
    pub orientation: String,
    pub spacing_mm: [f64; 3],
    pub geometry: NiftiGeometry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanonicalGrid {
    pub dims: [usize; 3],
    pub affine: Affine,
    pub spacing_mm: [f64; 3],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntensitySummary {
    pub min_hu: i16,
    pub max_hu: i16,
    /// Voxels whose value was outside the int16 range and was clipped.
    pub clipped_voxels: u64,
}

pub const INGEST_REPORT_VERSION: u32 = 1;
