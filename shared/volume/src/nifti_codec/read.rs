//! Decoding: the header checked before anything large is allocated, then the voxels, by the
//! fastest path the file allows (one libdeflate call, a raw read into the destination, or the
//! nifti crate's typed read), or plane by plane ([`Int16PlaneReader`]).

use std::io::Read;

use flate2::read::MultiGzDecoder;
use iris_core::cancel::CancellableRead;
use nifti::{IntoNdArray, NiftiHeader};

use super::geometry::{geometry_of, header_affine};
use super::{
    AffineSource, DecodeLimits, DecodedNifti, NIFTI1_HEADER_SIZE, NIFTI2_HEADER_SIZE, NiftiDecodeError, NiftiGeometry,
    nifti2,
};
use crate::volume::{Affine, Volume, VolumeError};

pub(super) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn source_reader(bytes: &[u8]) -> Box<dyn Read + Send + '_> {
    // Multi-member gzip (pigz, and this codec's own parallel writer) is read to the end. The
    // reader stops at its next read once the stage's work is cancelled (iris_core::cancel).
    if bytes.starts_with(&GZIP_MAGIC) {
        Box::new(CancellableRead::new(MultiGzDecoder::new(bytes)))
    } else {
        Box::new(CancellableRead::new(bytes))
    }
}

/// Decompressed bytes a `.nii.gz` may hold past its voxel data (extensions some writers append).
pub(super) const MAX_TRAILING_BYTES: u64 = 16 << 20;

/// Bytes of header extensions (or padding) a file may declare before its voxel data: the header's
/// `vox_offset` may lie at most this far past the header. Real extensions (DICOM headers, AFNI or
/// CIFTI XML, JSON sidecars) are kilobytes to a few megabytes; a larger offset would make the
/// decoder inflate gigabytes of padding before it could find the file bad.
pub(super) const MAX_EXTENSION_BYTES: u64 = 16 << 20;

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
pub(super) fn inflate_single_member<T: bytemuck::Pod>(bytes: &[u8], data_offset: u64, count: usize) -> Option<Vec<T>> {
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
    let (header, data_offset, header_size) = if nifti2::is_nifti2(&header_bytes) {
        let (header, offset) = nifti2::header(&header_bytes)?;
        (header, offset, NIFTI2_HEADER_SIZE as u64)
    } else {
        let header =
            NiftiHeader::from_reader(&header_bytes[..]).map_err(|e| NiftiDecodeError::NotNifti(e.to_string()))?;
        let offset = header.vox_offset.max(352.0) as u64;
        (header, offset, 352)
    };
    // Checked before anything past the header is read or inflated.
    if data_offset - header_size.min(data_offset) > MAX_EXTENSION_BYTES {
        return Err(NiftiDecodeError::ExtensionsTooLarge { offset: data_offset, limit_mib: MAX_EXTENSION_BYTES >> 20 });
    }
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
