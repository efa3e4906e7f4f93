//! Reading and writing NIfTI-1 (`.nii`, `.nii.gz`) with the `nifti` crate, with the checks that
//! keep bad input from panicking or exhausting memory, and a record of the source header's
//! geometry so outputs can be written back on exactly the upload's grid.

mod geometry;
mod nifti2;
mod read;
mod write;

use iris_core::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::volume::{Affine, Volume};

pub use read::{
    Int16PlaneReader, decode_nifti, decode_nifti_hounsfield, decode_nifti_uint8, open_int16_planes, round_to_int16,
};
pub use write::{
    GZIP_MEMBER_TARGET_BYTES, encode_nifti_gz, nifti1_header_bytes, write_nifti_gz, write_nifti_gz_by_planes,
    write_nifti_gz_in_order,
};

const NIFTI1_HEADER_SIZE: usize = 348;
const NIFTI2_HEADER_SIZE: usize = 540;

/// The geometry fields of a NIfTI header, kept verbatim so that a volume written with them has
/// the same shape, qform, sform and therefore the same affine as the source file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NiftiGeometry {
    pub dims: [usize; 3],
    pub pixdim: [f32; 8],
    pub xyzt_units: u8,
    pub qform_code: i16,
    pub sform_code: i16,
    pub quatern_b: f32,
    pub quatern_c: f32,
    pub quatern_d: f32,
    pub quatern_x: f32,
    pub quatern_y: f32,
    pub quatern_z: f32,
    pub srow_x: [f32; 4],
    pub srow_y: [f32; 4],
    pub srow_z: [f32; 4],
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecodedNifti<T = f32> {
    pub geometry: NiftiGeometry,
    /// The affine the standard says to use: sform if set, else qform, else scaling only.
    pub affine: Affine,
    pub affine_source: AffineSource,
    /// Data type name as in the header, e.g. "Int16".
    pub datatype: String,
    /// Intensities after `scl_slope`/`scl_inter`.
    pub volume: Volume<T>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffineSource {
    Sform,
    Qform,
    PixdimOnly,
    /// Computed from DICOM ImagePositionPatient / ImageOrientationPatient / PixelSpacing.
    DicomSlices,
}

/// Caps applied before anything large is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_voxels: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NiftiDecodeError {
    #[error("the file is not a NIfTI-1 image ({0})")]
    NotNifti(String),
    #[error("the file is damaged or incomplete: {0}")]
    Corrupt(String),
    #[error("the image is not a 3-D volume: {0}")]
    NotAVolume(String),
    #[error("the image has {voxels} voxels, more than the limit of {limit}")]
    TooLarge { voxels: u64, limit: u64 },
    #[error("the image's voxel data type is not supported: {0}")]
    UnsupportedDataType(String),
    #[error("the image's geometry is unusable: {0}")]
    BadGeometry(String),
    #[error(
        "the compressed file holds more than {limit_mib} MiB beyond the voxel data its header describes (a gzip bomb?)"
    )]
    TrailingData { limit_mib: u64 },
    #[error(
        "the header puts the voxel data at byte {offset}, more than {limit_mib} MiB of extensions after the header"
    )]
    ExtensionsTooLarge { offset: u64, limit_mib: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum NiftiEncodeError {
    #[error("could not write NIfTI: {0}")]
    Write(String),
}

impl NiftiDecodeError {
    /// The job error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            NiftiDecodeError::NotNifti(_) | NiftiDecodeError::UnsupportedDataType(_) => ErrorCode::UnsupportedFormat,
            NiftiDecodeError::Corrupt(_) => ErrorCode::CorruptFile,
            NiftiDecodeError::NotAVolume(_) | NiftiDecodeError::BadGeometry(_) => ErrorCode::NotAVolume,
            NiftiDecodeError::TooLarge { .. }
            | NiftiDecodeError::TrailingData { .. }
            | NiftiDecodeError::ExtensionsTooLarge { .. } => ErrorCode::TooLarge,
        }
    }
}

#[cfg(test)]
mod tests;
