//! NIfTI-2 headers (540 bytes, 64-bit dims and offsets, double precision geometry), which the
//! nifti crate does not read. They are translated into the crate's NIfTI-1 header type, which is
//! what reading the voxel data needs; volumes beyond NIfTI-1's 32767 voxels per axis are refused.

use nifti::NiftiHeader;

use super::{NIFTI1_HEADER_SIZE, NiftiDecodeError};

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
