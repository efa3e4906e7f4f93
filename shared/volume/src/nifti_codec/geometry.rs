//! The header's geometry: the affine the standard says to use, and the fields kept verbatim
//! ([`NiftiGeometry`]) so that outputs are written back on exactly the upload's grid.

use nifti::NiftiHeader;

use super::{AffineSource, NiftiDecodeError, NiftiGeometry};
use crate::volume::Affine;

pub(super) fn header_affine(header: &NiftiHeader) -> Result<(Affine, AffineSource), NiftiDecodeError> {
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

pub(super) fn geometry_of(header: &NiftiHeader, dims: [usize; 3]) -> NiftiGeometry {
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

    pub(super) fn to_header(&self) -> NiftiHeader {
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
