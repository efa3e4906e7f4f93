//! Reading and writing NIfTI-1 (`.nii`, `.nii.gz`) with the `nifti` crate, with the checks that
//! keep bad input from panicking or exhausting memory, and a record of the source header's
//! geometry so outputs can be written back on exactly the upload's grid.

use std::io::Read;

use flate2::read::MultiGzDecoder;
use nifti::{IntoNdArray, NiftiHeader};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::volume::{Affine, Volume, VolumeError};

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
}

#[derive(Debug, thiserror::Error)]
pub enum NiftiEncodeError {
    #[error("could not write NIfTI: {0}")]
    Write(String),
}

impl NiftiDecodeError {
    /// The job error code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            NiftiDecodeError::NotNifti(_) | NiftiDecodeError::UnsupportedDataType(_) => "unsupported_format",
            NiftiDecodeError::Corrupt(_) => "corrupt_file",
            NiftiDecodeError::NotAVolume(_) | NiftiDecodeError::BadGeometry(_) => "not_a_volume",
            NiftiDecodeError::TooLarge { .. } | NiftiDecodeError::TrailingData { .. } => "too_large",
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const NIFTI1_HEADER_SIZE: usize = 348;
const NIFTI2_HEADER_SIZE: usize = 540;

fn source_reader(bytes: &[u8]) -> Box<dyn Read + Send + '_> {
    // Multi-member gzip (pigz, and this codec's own parallel writer) is read to the end.
    if bytes.starts_with(&GZIP_MAGIC) { Box::new(MultiGzDecoder::new(bytes)) } else { Box::new(bytes) }
}

/// Decompressed bytes a `.nii.gz` may hold past its voxel data (extensions some writers append).
const MAX_TRAILING_BYTES: u64 = 16 << 20;

/// Reads a gzip stream from the end of the voxel data to its end, so every member's CRC-32 and
/// length are checked (a damaged file must not pass as a CT with wrong values), refusing one that
/// goes on for more than [`MAX_TRAILING_BYTES`] (a small header on a huge stream of zeros).
fn check_rest_of_stream(bytes: &[u8], source: &mut dyn Read) -> Result<(), NiftiDecodeError> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(());
    }
    let rest = std::io::copy(&mut source.take(MAX_TRAILING_BYTES + 1), &mut std::io::sink())
        .map_err(|e| NiftiDecodeError::Corrupt(format!("the compressed data is damaged: {e}")))?;
    if rest > MAX_TRAILING_BYTES {
        return Err(NiftiDecodeError::TrailingData { limit_mib: MAX_TRAILING_BYTES >> 20 });
    }
    Ok(())
}

/// Reads the first bytes of the (possibly gzipped) file: enough for either header.
fn read_header_bytes(bytes: &[u8], size: usize) -> Result<Vec<u8>, NiftiDecodeError> {
    let mut header = Vec::with_capacity(size);
    source_reader(bytes)
        .take(size as u64)
        .read_to_end(&mut header)
        .map_err(|e| NiftiDecodeError::Corrupt(format!("cannot decompress: {e}")))?;
    if header.len() < NIFTI1_HEADER_SIZE {
        return Err(NiftiDecodeError::NotNifti(format!("only {} bytes, a NIfTI-1 header needs 348", header.len())));
    }
    Ok(header)
}

/// Decodes a `.nii` or `.nii.gz` held in memory into a 3-D volume of intensities.
pub fn decode_nifti(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedNifti, NiftiDecodeError> {
    let (header, dims, volume) = read_object(bytes, limits)?;
    let array = volume.into_ndarray::<f32>().map_err(|e| NiftiDecodeError::UnsupportedDataType(e.to_string()))?;
    let (mut voxels, _) = array.into_raw_vec_and_offset();
    for value in voxels.iter_mut().filter(|v| !v.is_finite()) {
        *value = 0.0;
    }
    finish(header, dims, voxels)
}

/// Decodes a CT as whole Hounsfield units (int16). Int16 data without rescaling is taken as is
/// (no floating-point copy: half the memory of [`decode_nifti`]); anything else is rescaled,
/// rounded and clipped to the int16 range. Returns the volume and the number of clipped voxels.
pub fn decode_nifti_hounsfield(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(DecodedNifti<i16>, u64), NiftiDecodeError> {
    let (header, dims, data_offset) = read_header(bytes, limits)?;
    let identity = (header.scl_slope == 0.0 || header.scl_slope == 1.0) && header.scl_inter == 0.0;
    if identity
        && header.datatype == nifti::NiftiType::Int16 as i16
        && header.endianness == nifti::Endianness::Little
        && cfg!(target_endian = "little")
    {
        // The common CT case: the voxel bytes are already int16 in memory order. Reading them
        // straight into the destination avoids the nifti crate's byte buffer plus typed copy
        // (half the peak memory, and no per-voxel conversion).
        let voxels = read_raw_voxels::<i16>(bytes, data_offset, dims)?;
        return Ok((finish(header, dims, voxels)?, 0));
    }
    let volume = read_volume(bytes, &header, data_offset)?;
    let array = volume.into_ndarray::<f32>().map_err(|e| NiftiDecodeError::UnsupportedDataType(e.to_string()))?;
    let (values, _) = array.into_raw_vec_and_offset();
    let (voxels, clipped) = round_to_int16(&values);
    Ok((finish(header, dims, voxels)?, clipped))
}

/// Whole Hounsfield units: each value rounded and clipped to the int16 range (non-finite values
/// become 0). Returns the values and how many were clipped.
pub fn round_to_int16(values: &[f32]) -> (Vec<i16>, u64) {
    let mut clipped = 0u64;
    let voxels = values
        .iter()
        .map(|value| {
            let rounded = if value.is_finite() { value.round() } else { 0.0 };
            if rounded < f32::from(i16::MIN) || rounded > f32::from(i16::MAX) {
                clipped += 1;
            }
            rounded.clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
        })
        .collect();
    (voxels, clipped)
}

/// The int16 voxels of a single-member `.nii.gz` whose uncompressed size is exactly
/// `data_offset + 2 · count` (what its gzip trailer says), inflated by libdeflate in one call,
/// straight into the destination (about 1.5× the streaming decoder's speed). `None` when the file
/// is not like that (not gzip, several members, trailing data, an odd offset): the caller then
/// streams it.
fn inflate_single_member<T: bytemuck::Pod>(bytes: &[u8], data_offset: u64, count: usize) -> Option<Vec<T>> {
    let size = std::mem::size_of::<T>();
    let gzip = bytes.len() > 18 && bytes[0] == 0x1f && bytes[1] == 0x8b;
    let total = usize::try_from(data_offset).ok()?.checked_add(count.checked_mul(size)?)?;
    let trailer_size = u32::from_le_bytes(bytes.get(bytes.len().checked_sub(4)?..)?.try_into().ok()?);
    if !gzip || !data_offset.is_multiple_of(size as u64) || u64::from(trailer_size) != total as u64 & 0xffff_ffff {
        return None;
    }
    let mut buffer: Vec<T> = crate::memory::large_zeroed_vec(total / size);
    let written =
        libdeflater::Decompressor::new().gzip_decompress(bytes, bytemuck::cast_slice_mut(&mut buffer)).ok()?;
    if written != total {
        return None;
    }
    buffer.drain(..data_offset as usize / size);
    Some(buffer)
}

/// The voxel data as stored, for a type whose stored bytes are its in-memory bytes (the caller
/// checked data type and byte order): one libdeflate call when the file allows, else streamed.
fn read_raw_voxels<T: bytemuck::Pod>(
    bytes: &[u8],
    data_offset: u64,
    dims: [usize; 3],
) -> Result<Vec<T>, NiftiDecodeError> {
    let count = dims[0] * dims[1] * dims[2];
    if let Some(voxels) = inflate_single_member::<T>(bytes, data_offset, count) {
        return Ok(voxels);
    }
    let mut voxels: Vec<T> = crate::memory::large_zeroed_vec(count);
    let mut source = source_reader(bytes);
    std::io::copy(&mut (&mut source).take(data_offset), &mut std::io::sink())
        .map_err(|e| NiftiDecodeError::Corrupt(e.to_string()))?;
    source.read_exact(bytemuck::cast_slice_mut(&mut voxels)).map_err(|e| {
        NiftiDecodeError::Corrupt(format!("the file holds less voxel data than its header promises ({e})"))
    })?;
    check_rest_of_stream(bytes, &mut source)?;
    Ok(voxels)
}

/// An int16 NIfTI without scaling, stored little-endian (the common CT file), read plane by plane
/// from the start of its voxel data to the end of its stream: the volume is never held.
pub struct Int16PlaneReader<'a> {
    pub dims: [usize; 3],
    pub geometry: NiftiGeometry,
    /// The affine the standard says to use (as [`DecodedNifti::affine`]).
    pub affine: Affine,
    pub affine_source: AffineSource,
    pub datatype: String,
    bytes: &'a [u8],
    source: Box<dyn Read + Send + 'a>,
}

/// Opens `bytes` for reading plane by plane when it is an int16 NIfTI without scaling stored
/// little-endian; `Ok(None)` for anything else (decode those with [`decode_nifti_hounsfield`]).
/// Header problems are the errors [`decode_nifti_hounsfield`] gives.
pub fn open_int16_planes<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
) -> Result<Option<Int16PlaneReader<'a>>, NiftiDecodeError> {
    let (header, dims, data_offset) = read_header(bytes, limits)?;
    let identity = (header.scl_slope == 0.0 || header.scl_slope == 1.0) && header.scl_inter == 0.0;
    if !identity
        || header.datatype != nifti::NiftiType::Int16 as i16
        || header.endianness != nifti::Endianness::Little
        || cfg!(target_endian = "big")
    {
        return Ok(None);
    }
    let (affine, affine_source) = header_affine(&header)?;
    let mut source = source_reader(bytes);
    std::io::copy(&mut (&mut source).take(data_offset), &mut std::io::sink())
        .map_err(|e| NiftiDecodeError::Corrupt(e.to_string()))?;
    Ok(Some(Int16PlaneReader {
        dims,
        geometry: geometry_of(&header, dims),
        affine,
        affine_source,
        datatype: header.data_type().map(|t| format!("{t:?}")).unwrap_or_default(),
        bytes,
        source,
    }))
}

impl Int16PlaneReader<'_> {
    /// Reads the next `out.len()` voxels (whole planes, in file order).
    pub fn read_next(&mut self, out: &mut [i16]) -> Result<(), NiftiDecodeError> {
        self.source.read_exact(bytemuck::cast_slice_mut(out)).map_err(|e| {
            NiftiDecodeError::Corrupt(format!("the file holds less voxel data than its header promises ({e})"))
        })
    }

    /// Reads the stream to its end after the last voxel: a damaged end (a wrong CRC) or too much
    /// trailing data is an error, as when the file is decoded whole.
    pub fn finish(mut self) -> Result<(), NiftiDecodeError> {
        check_rest_of_stream(self.bytes, &mut self.source)
    }
}

/// Decodes a label map stored as uint8 without scaling straight into bytes (no floating-point copy:
/// a quarter of [`decode_nifti`]'s memory). `Ok(None)` when the file stores anything else; the
/// caller then decodes it with [`decode_nifti`] and checks its values.
pub fn decode_nifti_uint8(bytes: &[u8], limits: &DecodeLimits) -> Result<Option<DecodedNifti<u8>>, NiftiDecodeError> {
    let (header, dims, data_offset) = read_header(bytes, limits)?;
    let identity = (header.scl_slope == 0.0 || header.scl_slope == 1.0) && header.scl_inter == 0.0;
    if !identity || header.datatype != nifti::NiftiType::Uint8 as i16 {
        return Ok(None);
    }
    let voxels = read_raw_voxels::<u8>(bytes, data_offset, dims)?;
    Ok(Some(finish(header, dims, voxels)?))
}

/// Header checks, then the voxel data (read exactly as the header sizes it).
fn read_object(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(NiftiHeader, [usize; 3], nifti::volume::InMemNiftiVolume), NiftiDecodeError> {
    let (header, dims, data_offset) = read_header(bytes, limits)?;
    let volume = read_volume(bytes, &header, data_offset)?;
    Ok((header, dims, volume))
}

/// The header (NIfTI-1, or NIfTI-2 translated), checked: dimensions, caps, geometry, data type.
/// Returns it with the dimensions and the offset of the voxel data.
fn read_header(bytes: &[u8], limits: &DecodeLimits) -> Result<(NiftiHeader, [usize; 3], u64), NiftiDecodeError> {
    let header_bytes = read_header_bytes(bytes, NIFTI2_HEADER_SIZE)?;
    let (header, data_offset) = if nifti2::is_nifti2(&header_bytes) {
        nifti2::header(&header_bytes)?
    } else {
        let header =
            NiftiHeader::from_reader(&header_bytes[..]).map_err(|e| NiftiDecodeError::NotNifti(e.to_string()))?;
        let offset = header.vox_offset.max(352.0) as u64;
        (header, offset)
    };
    let dims = check_dimensions(&header, limits)?;
    check_pixdim(&header)?;
    let (affine, _) = header_affine(&header)?;
    if !affine.is_usable() {
        return Err(NiftiDecodeError::BadGeometry("the voxel-to-world transform is singular or not finite".into()));
    }
    let datatype = header.data_type().map_err(|e| NiftiDecodeError::UnsupportedDataType(e.to_string()))?;
    if matches!(
        datatype,
        nifti::NiftiType::Rgb24
            | nifti::NiftiType::Rgba32
            | nifti::NiftiType::Complex64
            | nifti::NiftiType::Complex128
            | nifti::NiftiType::Complex256
            | nifti::NiftiType::Float128
    ) {
        return Err(NiftiDecodeError::UnsupportedDataType(format!("{datatype:?}")));
    }
    Ok((header, dims, data_offset))
}

/// The voxel data, read by the nifti crate after skipping header and extensions.
fn read_volume(
    bytes: &[u8],
    header: &NiftiHeader,
    data_offset: u64,
) -> Result<nifti::volume::InMemNiftiVolume, NiftiDecodeError> {
    let mut source = source_reader(bytes);
    std::io::copy(&mut (&mut source).take(data_offset), &mut std::io::sink())
        .map_err(|e| NiftiDecodeError::Corrupt(e.to_string()))?;
    let volume = nifti::volume::InMemNiftiVolume::from_reader(&mut source, header).map_err(|e| match e {
        nifti::NiftiError::Io(io) => NiftiDecodeError::Corrupt(io.to_string()),
        nifti::NiftiError::IncompatibleLength(got, expected) => NiftiDecodeError::Corrupt(format!(
            "the file holds {got} bytes of voxel data, the header promises {expected}"
        )),
        other => NiftiDecodeError::NotNifti(other.to_string()),
    })?;
    check_rest_of_stream(bytes, &mut source)?;
    Ok(volume)
}

fn finish<T>(header: NiftiHeader, dims: [usize; 3], voxels: Vec<T>) -> Result<DecodedNifti<T>, NiftiDecodeError> {
    let expected = dims[0] * dims[1] * dims[2];
    if voxels.len() != expected {
        return Err(NiftiDecodeError::Corrupt(format!("{} voxels decoded, {expected} expected", voxels.len())));
    }
    let (affine, affine_source) = header_affine(&header)?;
    let datatype = header.data_type().map(|t| format!("{t:?}")).unwrap_or_default();
    let volume =
        Volume::new(dims, affine, voxels).map_err(|e: VolumeError| NiftiDecodeError::NotAVolume(e.to_string()))?;
    Ok(DecodedNifti { geometry: geometry_of(&header, dims), affine, affine_source, datatype, volume })
}

fn check_dimensions(header: &NiftiHeader, limits: &DecodeLimits) -> Result<[usize; 3], NiftiDecodeError> {
    let rank = header.dim[0] as usize;
    if !(1..=7).contains(&rank) {
        return Err(NiftiDecodeError::NotAVolume(format!(
            "dim[0] = {} is not a valid number of dimensions",
            header.dim[0]
        )));
    }
    let extent: Vec<u64> = (1..=7).map(|i| if i <= rank { u64::from(header.dim[i]) } else { 1 }).collect();
    if extent.contains(&0) {
        return Err(NiftiDecodeError::NotAVolume("a dimension has size 0".into()));
    }
    if rank < 3 || extent[2] == 1 {
        return Err(NiftiDecodeError::NotAVolume(format!(
            "it has a single slice ({}x{}x{})",
            extent[0], extent[1], extent[2]
        )));
    }
    if extent[3..].iter().any(|n| *n > 1) {
        return Err(NiftiDecodeError::NotAVolume(format!(
            "it is a {}-D series ({} volumes); only single 3-D volumes are accepted",
            rank,
            extent[3..].iter().product::<u64>()
        )));
    }
    let voxels = extent[0] * extent[1] * extent[2];
    if voxels > limits.max_voxels {
        return Err(NiftiDecodeError::TooLarge { voxels, limit: limits.max_voxels });
    }
    Ok([extent[0] as usize, extent[1] as usize, extent[2] as usize])
}

fn check_pixdim(header: &NiftiHeader) -> Result<(), NiftiDecodeError> {
    for (axis, spacing) in header.pixdim[1..4].iter().enumerate() {
        if !spacing.is_finite() || (header.sform_code == 0 && *spacing <= 0.0) {
            return Err(NiftiDecodeError::BadGeometry(format!("voxel size along axis {} is {spacing}", axis + 1)));
        }
    }
    Ok(())
}

fn header_affine(header: &NiftiHeader) -> Result<(Affine, AffineSource), NiftiDecodeError> {
    let to_affine = |m: nalgebra::Matrix4<f64>| {
        let mut rows = [[0.0; 4]; 4];
        for (r, row) in rows.iter_mut().enumerate() {
            for (c, value) in row.iter_mut().enumerate() {
                *value = m[(r, c)];
            }
        }
        Affine(rows)
    };
    if header.sform_code > 0 {
        return Ok((to_affine(header.sform_affine::<f64>()), AffineSource::Sform));
    }
    // The qform path of the nifti crate asserts on pixdim; give it a header whose pixdim it accepts.
    let mut checked = header.clone();
    checked.fix();
    for spacing in &mut checked.pixdim[1..4] {
        *spacing = spacing.abs();
    }
    if header.qform_code > 0 {
        let quaternion = [header.quatern_b, header.quatern_c, header.quatern_d];
        if quaternion.iter().any(|q| !q.is_finite()) || quaternion.iter().map(|q| q * q).sum::<f32>() > 1.0 + 1e-5 {
            return Err(NiftiDecodeError::BadGeometry("the qform quaternion is not a rotation".into()));
        }
        return Ok((to_affine(checked.qform_affine::<f64>()), AffineSource::Qform));
    }
    let spacing = [checked.pixdim[1], checked.pixdim[2], checked.pixdim[3]].map(f64::from);
    let affine = Affine([
        [spacing[0], 0.0, 0.0, 0.0],
        [0.0, spacing[1], 0.0, 0.0],
        [0.0, 0.0, spacing[2], 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    Ok((affine, AffineSource::PixdimOnly))
}

fn geometry_of(header: &NiftiHeader, dims: [usize; 3]) -> NiftiGeometry {
    NiftiGeometry {
        dims,
        pixdim: header.pixdim,
        xyzt_units: header.xyzt_units,
        qform_code: header.qform_code,
        sform_code: header.sform_code,
        quatern_b: header.quatern_b,
        quatern_c: header.quatern_c,
        quatern_d: header.quatern_d,
        quatern_x: header.quatern_x,
        quatern_y: header.quatern_y,
        quatern_z: header.quatern_z,
        srow_x: header.srow_x,
        srow_y: header.srow_y,
        srow_z: header.srow_z,
    }
}

impl NiftiGeometry {
    /// Geometry for a volume written by the pipeline: sform and qform both set to `affine`
    /// (scanner-anatomical), millimetres.
    pub fn from_affine(dims: [usize; 3], affine: &Affine) -> NiftiGeometry {
        let mut header = NiftiHeader::default();
        let matrix = nalgebra::Matrix4::<f64>::from_fn(|r, c| affine.0[r][c]);
        header.set_sform(&matrix, nifti::XForm::ScannerAnat);
        header.set_qform(&matrix, nifti::XForm::ScannerAnat);
        let spacing = affine.spacing();
        header.pixdim[1] = spacing[0] as f32;
        header.pixdim[2] = spacing[1] as f32;
        header.pixdim[3] = spacing[2] as f32;
        header.xyzt_units = 2 | 8; // millimetres, seconds
        geometry_of(&header, dims)
    }

    fn to_header(&self) -> NiftiHeader {
        NiftiHeader {
            pixdim: self.pixdim,
            xyzt_units: self.xyzt_units,
            qform_code: self.qform_code,
            sform_code: self.sform_code,
            quatern_b: self.quatern_b,
            quatern_c: self.quatern_c,
            quatern_d: self.quatern_d,
            quatern_x: self.quatern_x,
            quatern_y: self.quatern_y,
            quatern_z: self.quatern_z,
            srow_x: self.srow_x,
            srow_y: self.srow_y,
            srow_z: self.srow_z,
            ..NiftiHeader::default()
        }
    }
}

/// Writes `volume` as gzip-compressed NIfTI-1 with `geometry`'s header fields: the in-memory
/// form of [`write_nifti_gz`], whose bytes it returns.
pub fn encode_nifti_gz<T>(volume: &Volume<T>, geometry: &NiftiGeometry) -> Result<Vec<u8>, NiftiEncodeError>
where
    T: nifti::DataElement + bytemuck::Pod + Send + Sync,
{
    let mut out = Vec::with_capacity(volume.voxel_count() * std::mem::size_of::<T>() / 2);
    write_nifti_gz(volume, geometry, &mut out)?;
    Ok(out)
}

/// Writes `volume` to `sink` as gzip-compressed NIfTI-1 with `geometry`'s header fields:
/// [`write_nifti_gz_by_planes`] over a volume in memory (see there for the format).
pub fn write_nifti_gz<T>(
    volume: &Volume<T>,
    geometry: &NiftiGeometry,
    sink: &mut dyn std::io::Write,
) -> Result<(), NiftiEncodeError>
where
    T: nifti::DataElement + bytemuck::Pod + Send + Sync,
{
    if geometry.dims != volume.dims() {
        return Err(NiftiEncodeError::Write(format!(
            "geometry {:?} does not match volume {:?}",
            geometry.dims,
            volume.dims()
        )));
    }
    let plane = geometry.dims[0] * geometry.dims[1];
    write_nifti_gz_by_planes(geometry, sink, |planes: std::ops::Range<usize>, values: &mut [T]| {
        values.copy_from_slice(&volume.voxels()[planes.start * plane..planes.end * plane]);
        Ok::<(), NiftiEncodeError>(())
    })
}

/// Largest uncompressed size of one gzip member of a written volume (at least one whole plane).
pub const GZIP_MEMBER_TARGET_BYTES: usize = 1 << 20;

/// Writes a gzip-compressed NIfTI-1 volume to `sink` without ever holding the volume: `fill` is
/// asked for the voxels of a run of whole z-planes (`planes`, in NIfTI order: x fastest) and
/// writes them into `values` (exactly `planes.len()` planes long).
///
/// The file is a multi-member gzip (as pigz writes; every gzip reader reads it): one member for
/// the 352 header bytes (from the nifti crate, see [`nifti1_header_bytes`]), then one per run of
/// whole planes, as many planes as fit in [`GZIP_MEMBER_TARGET_BYTES`] (at least one). Members
/// are filled and compressed by libdeflate at level 1 (its fastest level above "store": on CT
/// about twice zlib's level-1 speed and 30 % smaller) as many at a time as there are threads,
/// and appended in order, so besides the sink only one batch of members is in memory (about
/// 2 MiB a thread). Member boundaries depend only on the dims, and libdeflate writes no
/// timestamp: the bytes are the same on any number of threads, whoever calls it.
pub fn write_nifti_gz_by_planes<T, E>(
    geometry: &NiftiGeometry,
    sink: &mut dyn std::io::Write,
    fill: impl Fn(std::ops::Range<usize>, &mut [T]) -> Result<(), E> + Sync,
) -> Result<(), E>
where
    T: nifti::DataElement + bytemuck::Pod + Send + Sync,
    E: From<NiftiEncodeError> + Send,
{
    write_header_member::<T>(geometry, sink)?;
    let plane = geometry.dims[0] * geometry.dims[1];
    for batch in member_planes::<T>(geometry.dims).chunks(rayon::current_num_threads().max(1)) {
        let compressed: Vec<Result<Vec<u8>, E>> = batch
            .par_iter()
            .map(|planes| {
                let mut values = vec![T::zeroed(); planes.len() * plane];
                fill(planes.clone(), &mut values)?;
                Ok(compress_member(&mut values)?)
            })
            .collect();
        for member in compressed {
            write_member(sink, &member?)?;
        }
    }
    Ok(())
}

/// [`write_nifti_gz_by_planes`] for a source read in order (a decompressing reader): `next` is
/// called for every member's planes in turn, on one thread, while the members before are
/// compressed on the others. The same bytes as [`write_nifti_gz_by_planes`].
pub fn write_nifti_gz_in_order<T, E>(
    geometry: &NiftiGeometry,
    sink: &mut dyn std::io::Write,
    mut next: impl FnMut(std::ops::Range<usize>, &mut [T]) -> Result<(), E> + Send,
) -> Result<(), E>
where
    T: nifti::DataElement + bytemuck::Pod + Send + Sync,
    E: From<NiftiEncodeError> + Send,
{
    write_header_member::<T>(geometry, sink)?;
    let plane = geometry.dims[0] * geometry.dims[1];
    // Two sets of member buffers take turns (one is read into while the other is compressed), so
    // no fresh memory is touched after the first two batches.
    let (mut filled, mut spare): (Vec<Vec<T>>, Vec<Vec<T>>) = (Vec::new(), Vec::new());
    for batch in member_planes::<T>(geometry.dims).chunks(rayon::current_num_threads().max(1)) {
        let mut buffers = std::mem::take(&mut spare);
        buffers.resize_with(batch.len(), Vec::new);
        let (read, compressed) = rayon::join(
            || -> Result<Vec<Vec<T>>, E> {
                for (planes, values) in batch.iter().zip(buffers.iter_mut()) {
                    values.resize(planes.len() * plane, T::zeroed());
                    next(planes.clone(), values)?;
                }
                Ok(buffers)
            },
            || filled.par_iter_mut().map(|values| compress_member(values)).collect::<Vec<_>>(),
        );
        for member in compressed {
            write_member(sink, &member?)?;
        }
        spare = std::mem::replace(&mut filled, read?);
    }
    for member in filled.par_iter_mut().map(|values| compress_member(values)).collect::<Vec<_>>() {
        write_member(sink, &member?)?;
    }
    Ok(())
}

/// The runs of z-planes each gzip member holds: as many whole planes as fit in
/// [`GZIP_MEMBER_TARGET_BYTES`], at least one.
fn member_planes<T>(dims: [usize; 3]) -> Vec<std::ops::Range<usize>> {
    let plane_bytes = dims[0] * dims[1] * std::mem::size_of::<T>();
    let planes_per_member = (GZIP_MEMBER_TARGET_BYTES / plane_bytes.max(1)).max(1);
    (0..dims[2]).step_by(planes_per_member).map(|start| start..(start + planes_per_member).min(dims[2])).collect()
}

fn write_header_member<T>(geometry: &NiftiGeometry, sink: &mut dyn std::io::Write) -> Result<(), NiftiEncodeError>
where
    T: nifti::DataElement + bytemuck::Pod,
{
    let header = nifti1_header_bytes::<T>(geometry)?;
    write_member(sink, &gzip_member(&header).map_err(|e| NiftiEncodeError::Write(e.to_string()))?)
}

fn write_member(sink: &mut dyn std::io::Write, member: &[u8]) -> Result<(), NiftiEncodeError> {
    sink.write_all(member).map_err(|e| NiftiEncodeError::Write(e.to_string()))
}

/// One member of voxel values: NIfTI files are little-endian, so on a big-endian host the values
/// are swapped first (in place).
fn compress_member<T: bytemuck::Pod>(values: &mut [T]) -> Result<Vec<u8>, NiftiEncodeError> {
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(values);
    if cfg!(target_endian = "big") {
        bytes.chunks_exact_mut(std::mem::size_of::<T>()).for_each(<[u8]>::reverse);
    }
    gzip_member(bytes).map_err(|e| NiftiEncodeError::Write(e.to_string()))
}

/// The 352 bytes before the voxels of a single-file NIfTI-1 (the 348-byte header and the
/// extension flag) for `geometry` and voxel type `T`, little-endian. The nifti crate writes them:
/// it writes whole files only, so it writes a one-voxel file with the same header fields to a
/// private temporary file, and the three spatial `dim` entries (the only fields that depend on the
/// data's shape) are then set to the volume's.
pub fn nifti1_header_bytes<T>(geometry: &NiftiGeometry) -> Result<Vec<u8>, NiftiEncodeError>
where
    T: nifti::DataElement + bytemuck::Pod,
{
    let write_error = |e: &dyn std::fmt::Display| NiftiEncodeError::Write(e.to_string());
    let mut dims_field = [0u8; 8];
    for (index, value) in [3usize, geometry.dims[0], geometry.dims[1], geometry.dims[2]].into_iter().enumerate() {
        let value = i16::try_from(value)
            .map_err(|_| NiftiEncodeError::Write(format!("dimension {value} does not fit NIfTI-1's 16 bits")))?;
        dims_field[index * 2..index * 2 + 2].copy_from_slice(&value.to_le_bytes());
    }
    let header = geometry.to_header();
    let one = [T::zeroed()];
    let array = ndarray::ArrayView3::from_shape((1, 1, 1), &one[..]).map_err(|e| write_error(&e))?;
    let directory = tempfile::tempdir().map_err(|e| write_error(&e))?;
    let path = directory.path().join("header.nii");
    nifti::writer::WriterOptions::new(&path)
        .reference_header(&header)
        .write_nifti(&array)
        .map_err(|e| write_error(&e))?;
    let mut bytes = std::fs::read(&path).map_err(|e| write_error(&e))?;
    if bytes.len() < NIFTI1_VOX_OFFSET + std::mem::size_of::<T>() || bytes[..4] != 348i32.to_le_bytes() {
        return Err(NiftiEncodeError::Write("the nifti crate wrote an unexpected header".to_owned()));
    }
    bytes.truncate(NIFTI1_VOX_OFFSET);
    // `dim` is short[8] at byte 40: dim[0] (rank) and dim[1..=3]; dim[4..] stay 1.
    bytes[40..48].copy_from_slice(&dims_field);
    Ok(bytes)
}

/// Where a single-file NIfTI-1's voxels start: after the header and the 4-byte extension flag.
const NIFTI1_VOX_OFFSET: usize = 352;

fn gzip_member(chunk: &[u8]) -> std::io::Result<Vec<u8>> {
    let level = libdeflater::CompressionLvl::new(1).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut compressor = libdeflater::Compressor::new(level);
    let mut member = vec![0u8; compressor.gzip_compress_bound(chunk.len())];
    let written = compressor.gzip_compress(chunk, &mut member).map_err(std::io::Error::other)?;
    member.truncate(written);
    Ok(member)
}

/// NIfTI-2 headers (540 bytes, 64-bit dims and offsets, double precision geometry), which the
/// nifti crate does not read. They are translated into the crate's NIfTI-1 header type, which is
/// what reading the voxel data needs; volumes beyond NIfTI-1's 32767 voxels per axis are refused.
mod nifti2 {
    use super::{NIFTI1_HEADER_SIZE, NiftiDecodeError, NiftiHeader};

    pub fn is_nifti2(header: &[u8]) -> bool {
        header.len() >= 4 && (header[..4] == 540i32.to_le_bytes() || header[..4] == 540i32.to_be_bytes())
    }

    struct Fields<'a> {
        bytes: &'a [u8],
        little_endian: bool,
    }

    impl Fields<'_> {
        fn take<const N: usize>(&self, offset: usize) -> [u8; N] {
            let mut out = [0u8; N];
            out.copy_from_slice(&self.bytes[offset..offset + N]);
            if !self.little_endian {
                out.reverse();
            }
            out
        }
        fn i16(&self, offset: usize) -> i16 {
            i16::from_le_bytes(self.take(offset))
        }
        fn i32(&self, offset: usize) -> i32 {
            i32::from_le_bytes(self.take(offset))
        }
        fn i64(&self, offset: usize) -> i64 {
            i64::from_le_bytes(self.take(offset))
        }
        fn f64(&self, offset: usize) -> f64 {
            f64::from_le_bytes(self.take(offset))
        }
    }

    /// The equivalent NIfTI-1 header and the offset of the voxel data.
    pub fn header(bytes: &[u8]) -> Result<(NiftiHeader, u64), NiftiDecodeError> {
        if bytes.len() < 540 {
            return Err(NiftiDecodeError::Corrupt("the NIfTI-2 header is incomplete".into()));
        }
        let little_endian = bytes[..4] == 540i32.to_le_bytes();
        let fields = Fields { bytes, little_endian };
        if &bytes[4..8] != b"n+2\0" && &bytes[4..8] != b"ni2\0" {
            return Err(NiftiDecodeError::NotNifti("NIfTI-2 magic is missing".into()));
        }
        if &bytes[4..8] == b"ni2\0" {
            return Err(NiftiDecodeError::NotNifti("a NIfTI-2 header without data (.hdr/.img pair)".into()));
        }
        let mut header = NiftiHeader { sizeof_hdr: NIFTI1_HEADER_SIZE as i32, ..NiftiHeader::default() };
        header.datatype = fields.i16(12);
        header.bitpix = fields.i16(14);
        for axis in 0..8 {
            let extent = fields.i64(16 + 8 * axis);
            header.dim[axis] = u16::try_from(extent)
                .ok()
                .filter(|e| *e <= i16::MAX as u16)
                .ok_or_else(|| NiftiDecodeError::TooLarge { voxels: extent.max(0) as u64, limit: i16::MAX as u64 })?;
        }
        for axis in 0..8 {
            header.pixdim[axis] = fields.f64(104 + 8 * axis) as f32;
        }
        let offset = fields.i64(168);
        header.scl_slope = fields.f64(176) as f32;
        header.scl_inter = fields.f64(184) as f32;
        header.qform_code = fields.i32(344) as i16;
        header.sform_code = fields.i32(348) as i16;
        header.quatern_b = fields.f64(352) as f32;
        header.quatern_c = fields.f64(360) as f32;
        header.quatern_d = fields.f64(368) as f32;
        header.quatern_x = fields.f64(376) as f32;
        header.quatern_y = fields.f64(384) as f32;
        header.quatern_z = fields.f64(392) as f32;
        for column in 0..4 {
            header.srow_x[column] = fields.f64(400 + 8 * column) as f32;
            header.srow_y[column] = fields.f64(432 + 8 * column) as f32;
            header.srow_z[column] = fields.f64(464 + 8 * column) as f32;
        }
        header.xyzt_units = fields.i32(500) as u8;
        header.endianness = if little_endian { nifti::Endianness::Little } else { nifti::Endianness::Big };
        header.vox_offset = offset as f32;
        header.magic = *b"n+1\0";
        if offset < 540 {
            return Err(NiftiDecodeError::Corrupt(format!("voxel data offset {offset} lies inside the header")));
        }
        Ok((header, offset as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_member_gzip_decode_to_the_same_voxels() {
        // 160 × 160 × 90 int16 is more than one 1 MiB member: the writer makes several, so
        // decoding takes the streaming path; one flate2 member takes libdeflate's one-call path.
        let dims = [160, 160, 90];
        let voxels: Vec<i16> = (0..dims.iter().product::<usize>()).map(|i| ((i * 7919) % 4000) as i16 - 1000).collect();
        let volume = Volume::new(dims, *lps_volume().affine(), voxels).unwrap();
        let geometry = NiftiGeometry::from_affine(dims, volume.affine());
        let multi = encode_nifti_gz(&volume, &geometry).unwrap();
        let header = nifti1_header_bytes::<i16>(&geometry).unwrap();
        let raw: Vec<u8> =
            header.iter().copied().chain(bytemuck::cast_slice(volume.voxels()).iter().copied()).collect();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &raw).unwrap();
        let single = encoder.finish().unwrap();
        let count = volume.voxel_count();
        assert!(inflate_single_member::<i16>(&multi, 352, count).is_none(), "several members: streamed");
        assert_eq!(inflate_single_member::<i16>(&single, 352, count).as_deref(), Some(volume.voxels()));
        let limits = DecodeLimits { max_voxels: u64::MAX };
        for bytes in [&multi, &single] {
            let (decoded, clipped) = decode_nifti_hounsfield(bytes, &limits).unwrap();
            assert_eq!(clipped, 0);
            assert_eq!(decoded.volume.voxels(), volume.voxels());
            assert_eq!(decoded.volume.affine(), volume.affine());
        }
        // A truncated single member is refused, not half-read.
        assert!(decode_nifti_hounsfield(&single[..single.len() - 1000], &limits).is_err());
        // A wrong CRC-32 in the last member (found by the bad-input corpus: the streaming path
        // stopped reading at the last voxel and never reached it) is refused, in both shapes.
        for bytes in [&multi, &single] {
            let mut damaged = bytes.clone();
            let crc_at = damaged.len() - 8;
            damaged[crc_at] ^= 0xff;
            let error = decode_nifti_hounsfield(&damaged, &limits).unwrap_err();
            assert_eq!(error.code(), "corrupt_file", "{error}");
        }
        // A small header on a long run of zeros (a gzip bomb) is refused once it passes the limit.
        let mut bomb = raw.clone();
        bomb.resize(raw.len() + MAX_TRAILING_BYTES as usize + 1, 0);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &bomb).unwrap();
        let error = decode_nifti_hounsfield(&encoder.finish().unwrap(), &limits).unwrap_err();
        assert!(matches!(error, NiftiDecodeError::TrailingData { .. }), "{error}");
        assert_eq!(error.code(), "too_large");
    }

    #[test]
    fn uint8_label_maps_are_read_as_stored_and_other_types_are_left_to_the_general_path() {
        // 300 × 200 × 80 bytes is more than one 1 MiB member: several members (streamed); one
        // flate2 member takes libdeflate's one-call path.
        let dims = [300, 200, 80];
        let labels: Vec<u8> = (0..dims.iter().product::<usize>()).map(|i| ((i / 97) % 118) as u8).collect();
        let volume = Volume::new(dims, *lps_volume().affine(), labels).unwrap();
        let geometry = NiftiGeometry::from_affine(dims, volume.affine());
        let multi = encode_nifti_gz(&volume, &geometry).unwrap();
        let header = nifti1_header_bytes::<u8>(&geometry).unwrap();
        let raw: Vec<u8> = header.iter().chain(volume.voxels()).copied().collect();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &raw).unwrap();
        let single = encoder.finish().unwrap();
        let limits = DecodeLimits { max_voxels: u64::MAX };
        for bytes in [&multi, &single, &raw] {
            let decoded = decode_nifti_uint8(bytes, &limits).unwrap().expect("uint8 without scaling");
            assert_eq!(decoded.volume.voxels(), volume.voxels());
            assert_eq!(decoded.volume.affine(), volume.affine());
            // The same values as the general (float) decoder.
            let general = decode_nifti(bytes, &limits).unwrap();
            assert!(general.volume.voxels().iter().zip(volume.voxels()).all(|(f, u)| *f == f32::from(*u)));
        }
        assert!(decode_nifti_uint8(&single[..single.len() - 1000], &limits).is_err(), "truncated");
        assert!(decode_nifti_uint8(&raw[..raw.len() - 10], &limits).is_err(), "truncated, uncompressed");
        let int16 =
            encode_nifti_gz(&lps_volume(), &NiftiGeometry::from_affine(lps_volume().dims(), lps_volume().affine()))
                .unwrap();
        assert!(decode_nifti_uint8(&int16, &limits).unwrap().is_none(), "int16 is not read as bytes");
        let over_cap = DecodeLimits { max_voxels: 1000 };
        assert_eq!(decode_nifti_uint8(&single, &over_cap).unwrap_err().code(), "too_large");
    }

    fn lps_volume() -> Volume<i16> {
        let affine =
            Affine([[-1.5, 0.0, 0.0, 90.0], [0.0, -1.5, 0.0, 120.0], [0.0, 0.0, 2.5, -40.0], [0.0, 0.0, 0.0, 1.0]]);
        Volume::new([4, 3, 2], affine, (0..24).map(|v| v * 10 - 100).collect()).unwrap()
    }

    #[test]
    fn writes_and_reads_back_values_and_affine() {
        let volume = lps_volume();
        let geometry = NiftiGeometry::from_affine(volume.dims(), volume.affine());
        let bytes = encode_nifti_gz(&volume, &geometry).unwrap();
        assert_eq!(&bytes[..2], &GZIP_MAGIC);
        assert_eq!(encode_nifti_gz(&volume, &geometry).unwrap(), bytes, "encoding is deterministic");
        let decoded = decode_nifti(&bytes, &DecodeLimits { max_voxels: 1000 }).unwrap();
        assert_eq!(decoded.volume.dims(), [4, 3, 2]);
        assert_eq!(decoded.affine_source, AffineSource::Sform);
        assert_eq!(decoded.volume.voxels(), &volume.voxels().iter().map(|v| f32::from(*v)).collect::<Vec<_>>()[..]);
        for r in 0..3 {
            for c in 0..4 {
                assert!((decoded.affine.0[r][c] - volume.affine().0[r][c]).abs() < 1e-5);
            }
        }
        assert_eq!(decoded.geometry, geometry);
    }

    #[test]
    fn multi_member_gzip_is_read_to_the_end_and_chunked_writing_is_deterministic() {
        // Big enough for several gzip members.
        let dims = [256, 256, 40];
        let voxels: Vec<i16> = (0..dims.iter().product::<usize>()).map(|n| (n % 2000) as i16 - 1000).collect();
        let volume = Volume::new(dims, Affine::identity(), voxels).unwrap();
        let geometry = NiftiGeometry::from_affine(dims, volume.affine());
        let bytes = encode_nifti_gz(&volume, &geometry).unwrap();
        let members = bytes.windows(3).filter(|w| w == &[0x1f, 0x8b, 0x08]).count();
        assert!(members >= 2, "{members} gzip members");
        let decoded = decode_nifti(&bytes, &DecodeLimits { max_voxels: 1 << 30 }).unwrap();
        assert_eq!(decoded.volume.voxels().len(), volume.voxel_count());
        assert_eq!(
            decoded.volume.voxels()[volume.voxel_count() - 1],
            f32::from(volume.voxels()[volume.voxel_count() - 1])
        );
        let single_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(single_thread.install(|| encode_nifti_gz(&volume, &geometry).unwrap()), bytes);
    }

    /// The uncompressed length of each member of a multi-member gzip file, in order.
    fn member_lengths(mut bytes: &[u8]) -> Vec<usize> {
        let mut lengths = Vec::new();
        while !bytes.is_empty() {
            let mut decoder = flate2::bufread::GzDecoder::new(bytes);
            let mut member = Vec::new();
            decoder.read_to_end(&mut member).unwrap();
            lengths.push(member.len());
            bytes = decoder.into_inner();
        }
        lengths
    }

    #[test]
    fn members_hold_the_header_then_runs_of_whole_planes_and_a_failed_fill_stops_the_write() {
        // u8, 300 × 200 × 80: 17 planes of 60,000 bytes fit in 1 MiB, so 4 members of 17 and one of 12.
        let dims = [300, 200, 80];
        let plane = 300 * 200;
        let volume = Volume::new(dims, Affine::identity(), vec![7u8; dims.iter().product()]).unwrap();
        let geometry = NiftiGeometry::from_affine(dims, volume.affine());
        let lengths = member_lengths(&encode_nifti_gz(&volume, &geometry).unwrap());
        assert_eq!(lengths, [352, 17 * plane, 17 * plane, 17 * plane, 17 * plane, 12 * plane]);
        // i16, 1024 × 600 × 3: a plane of 1.2 MB is more than 1 MiB, so it is a member on its own.
        let dims = [1024, 600, 3];
        let plane = 1024 * 600;
        let geometry = NiftiGeometry::from_affine(dims, &Affine::identity());
        let mut written = Vec::new();
        write_nifti_gz_by_planes(&geometry, &mut written, |planes, values: &mut [i16]| {
            assert_eq!(values.len(), planes.len() * plane, "whole planes");
            values.iter_mut().enumerate().for_each(|(n, v)| *v = ((planes.start * plane + n) % 3000) as i16);
            Ok::<_, NiftiEncodeError>(())
        })
        .unwrap();
        assert_eq!(member_lengths(&written), [352, 2 * plane, 2 * plane, 2 * plane]);
        // Filled in order, one member after the other while the ones before are compressed: the same bytes.
        let mut in_order = Vec::new();
        let mut next_plane = 0;
        write_nifti_gz_in_order(&geometry, &mut in_order, |planes, values: &mut [i16]| {
            assert_eq!(planes.start, next_plane, "in order");
            next_plane = planes.end;
            values.iter_mut().enumerate().for_each(|(n, v)| *v = ((planes.start * plane + n) % 3000) as i16);
            Ok::<_, NiftiEncodeError>(())
        })
        .unwrap();
        assert!(in_order == written, "the in-order writer wrote other bytes");
        let decoded = decode_nifti(&written, &DecodeLimits { max_voxels: 1 << 30 }).unwrap();
        let values = decoded.volume.voxels();
        assert!(values.iter().enumerate().all(|(n, v)| *v == (n % 3000) as f32), "every plane in its place");
        // An error from `fill` is returned as it is, and no member after the failing batch is written.
        let geometry = NiftiGeometry::from_affine([1024, 600, 8], &Affine::identity());
        let mut written = Vec::new();
        let error = write_nifti_gz_by_planes(&geometry, &mut written, |planes, _: &mut [i16]| {
            if planes.contains(&0) { Err(NiftiEncodeError::Write("plane 0 is damaged".into())) } else { Ok(()) }
        })
        .unwrap_err();
        assert_eq!(error.to_string(), "could not write NIfTI: plane 0 is damaged");
        assert_eq!(member_lengths(&written), [352], "only the header, written before the first batch");
    }

    /// Expected values of the nibabel fixtures: stored 7n - 50, scaled by 2 and -1024.
    fn fixture_value(i: usize, j: usize, k: usize) -> f32 {
        let n = (i + 4 * j + 12 * k) as f32;
        2.0 * (7.0 * n - 50.0) - 1024.0
    }

    fn assert_fixture(decoded: &DecodedNifti) {
        assert_eq!(decoded.volume.dims(), [4, 3, 2]);
        for (i, j, k) in [(0, 0, 0), (3, 2, 1), (1, 2, 0)] {
            assert_eq!(*decoded.volume.get(i, j, k), fixture_value(i, j, k), "voxel ({i},{j},{k})");
        }
        let expected = [[-1.5, 0.0, 0.0, 90.25], [0.0, 1.25, 0.0, -120.5], [0.0, 0.0, 2.5, -40.0]];
        for (row, values) in expected.iter().enumerate() {
            for (column, value) in values.iter().enumerate() {
                assert!((decoded.affine.0[row][column] - value).abs() < 1e-6, "affine[{row}][{column}]");
            }
        }
        assert_eq!(decoded.affine.orientation_code().unwrap(), "LAS");
    }

    #[test]
    fn reads_nifti2_written_by_nibabel_with_scaling_and_sform() {
        let decoded =
            decode_nifti(include_bytes!("../tests/fixtures/nifti2_las_4x3x2.nii"), &DecodeLimits { max_voxels: 100 })
                .expect("NIfTI-2");
        assert_eq!(decoded.affine_source, AffineSource::Sform);
        assert_fixture(&decoded);
        let (hounsfield, clipped) = decode_nifti_hounsfield(
            include_bytes!("../tests/fixtures/nifti2_las_4x3x2.nii"),
            &DecodeLimits { max_voxels: 100 },
        )
        .unwrap();
        assert_eq!((*hounsfield.volume.get(3, 2, 1), clipped), (fixture_value(3, 2, 1) as i16, 0));
    }

    #[test]
    fn falls_back_to_the_qform_when_the_sform_is_unset() {
        let decoded = decode_nifti(
            include_bytes!("../tests/fixtures/nifti1_qform_only_4x3x2.nii.gz"),
            &DecodeLimits { max_voxels: 100 },
        )
        .expect("NIfTI-1");
        assert_eq!(decoded.affine_source, AffineSource::Qform);
        assert_fixture(&decoded);
    }

    #[test]
    fn reads_every_common_voxel_type() {
        let dims = [3, 2, 2];
        let affine = Affine::identity();
        let geometry = NiftiGeometry::from_affine(dims, &affine);
        let limits = DecodeLimits { max_voxels: 100 };
        let u8_bytes = encode_nifti_gz(&Volume::new(dims, affine, (0..12u8).collect()).unwrap(), &geometry).unwrap();
        let f32_bytes = encode_nifti_gz(
            &Volume::new(dims, affine, (0..12).map(|v| v as f32 * 0.5 - 3.0).collect()).unwrap(),
            &geometry,
        )
        .unwrap();
        assert_eq!(decode_nifti(&u8_bytes, &limits).unwrap().volume.voxels()[11], 11.0);
        assert_eq!(decode_nifti(&f32_bytes, &limits).unwrap().volume.voxels()[11], 2.5);
        let (rounded, clipped) = decode_nifti_hounsfield(&f32_bytes, &limits).unwrap();
        assert_eq!((rounded.volume.voxels()[1], clipped), (-3, 0), "-2.5 rounds away from zero");
        let huge = encode_nifti_gz(&Volume::new(dims, affine, vec![1.0e6f32; 12]).unwrap(), &geometry).unwrap();
        let (clamped, clipped) = decode_nifti_hounsfield(&huge, &limits).unwrap();
        assert_eq!((clamped.volume.voxels()[0], clipped), (i16::MAX, 12));
    }

    #[test]
    fn refuses_bad_input_with_codes() {
        let limits = DecodeLimits { max_voxels: 1000 };
        let volume = lps_volume();
        let bytes = encode_nifti_gz(&volume, &NiftiGeometry::from_affine(volume.dims(), volume.affine())).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "unsupported_format"),
            ("text", b"hello, this is not an image".repeat(20), "unsupported_format"),
            ("truncated gzip", bytes[..bytes.len() / 2].to_vec(), "corrupt_file"),
        ];
        for (name, input, code) in cases {
            let error = decode_nifti(&input, &limits).expect_err(name);
            assert_eq!(error.code(), code, "{name}: {error}");
        }
        let error = decode_nifti(&bytes, &DecodeLimits { max_voxels: 10 }).unwrap_err();
        assert_eq!(error.code(), "too_large");
        let flat = Volume::new([4, 3, 1], *volume.affine(), vec![0i16; 12]).unwrap();
        let flat_bytes = encode_nifti_gz(&flat, &NiftiGeometry::from_affine(flat.dims(), flat.affine())).unwrap();
        assert_eq!(decode_nifti(&flat_bytes, &limits).unwrap_err().code(), "not_a_volume");
    }
}
