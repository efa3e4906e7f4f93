//! The second pass: the chosen series' pixels, each file read again and its frames decoded,
//! rounded to int16 and placed straight onto the output grid, whole or by canonical plane.

use std::ops::Range;
use std::sync::Mutex;

use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;
use iris_volume::ingest_report::DicomSeries;
use iris_volume::volume::{Affine, Volume};
use rayon::prelude::*;

use super::archive::{ArchiveReader, DicomFiles, read_zip_entry};
use super::geometry::Placement;
use super::guards::{check_rle_frame, parse};
use super::{DicomError, DicomSeriesReader, DicomVolume};

impl<R: ArchiveReader> DicomSeriesReader<'_, R> {
    /// dicom2nifti's grid for the series: its dims and affine (RAS millimetres).
    pub fn grid(&self) -> ([usize; 3], Affine) {
        (self.dims, self.affine)
    }

    pub fn metadata(&self) -> &DicomSeries {
        &self.metadata
    }

    /// Choices made and things ignored so far, for the ingest report (never identifiers).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether [`DicomSeriesReader::decode_canonical_planes`] can be used: the series is a zip of
    /// single-frame images and its slices are the planes of the canonical grid (axial series;
    /// coronal and sagittal series, and multi-frame files, are decoded whole).
    pub fn decodes_by_canonical_plane(&self) -> bool {
        matches!(self.upload, DicomFiles::Zip(_))
            && self.slice_to_canonical.axes[2].world_axis == 2
            && self.frames_of_file.iter().all(|frames| frames.len() == 1 && frames[0].0 == 0)
    }

    /// Decodes canonical z-planes `planes` (canonical RAS grid: the grid of dicom2nifti's, brought
    /// to RAS) into `out`, x fastest, and returns how many values were clipped to int16. Each
    /// plane is one image, read from the archive again and decoded on its own.
    pub fn decode_canonical_planes(&self, planes: Range<usize>, out: &mut [i16]) -> Result<u64, DicomError> {
        let [columns, rows, slices] = self.slice_dims;
        let frame_size = rows * columns;
        let DicomFiles::Zip(archive) = &self.upload else {
            return Err(DicomError::Corrupt("a single multi-frame file is decoded whole".into()));
        };
        if !self.decodes_by_canonical_plane() || planes.end > slices || out.len() != planes.len() * frame_size {
            return Err(DicomError::Corrupt(format!("canonical planes {planes:?} cannot be decoded on their own")));
        }
        // Where a slice's pixel (column i, row j) lands in its canonical plane.
        let canonical_dims = self.slice_to_canonical.canonical_dims();
        let plane_strides = [1, canonical_dims[0] as isize];
        let mut in_plane = Placement { offset: 0, strides: [0; 3] };
        for (voxel, axis) in self.slice_to_canonical.axes[..2].iter().enumerate() {
            let stride = plane_strides[axis.world_axis];
            if axis.flipped {
                in_plane.strides[voxel] = -stride;
                in_plane.offset += (self.slice_dims[voxel] as isize - 1) * stride;
            } else {
                in_plane.strides[voxel] = stride;
            }
        }
        // The planes in parallel too: a member's planes are shared out with the other members'.
        out.par_chunks_exact_mut(frame_size)
            .zip(planes.into_par_iter())
            .map(|(plane, z)| {
                let slice = if self.slice_to_canonical.axes[2].flipped { slices - 1 - z } else { z };
                let file = &self.files[self.file_of_slice[slice]];
                let object = parse(&read_zip_entry(archive, file.source)?, self.limits.max_decompressed_bytes)
                    .ok_or_else(|| DicomError::Corrupt("a file changed between two readings".into()))?;
                let (hounsfield, clipped) = decode_frame(&object, 0, &self.metadata.transfer_syntax, frame_size)?;
                in_plane.place_frame(plane, &hounsfield, columns, 0);
                Ok(clipped)
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))
    }

    /// Decodes the whole series onto dicom2nifti's grid: each file read again, its frames decoded,
    /// rounded to int16 and placed straight onto the output (files in parallel; one file per
    /// thread in memory at a time).
    pub fn read_volume(self) -> Result<DicomVolume, DicomError> {
        let [columns, rows, slices] = self.slice_dims;
        let frame_size = rows * columns;
        let transfer_syntax = &self.metadata.transfer_syntax;
        let output = Mutex::new(vec![0i16; frame_size * slices]);
        let clipped = self
            .files
            .par_iter()
            .zip(self.frames_of_file.par_iter())
            .map(|(file, frames)| -> Result<u64, DicomError> {
                let object = match &self.upload {
                    DicomFiles::Zip(archive) => {
                        parse(&read_zip_entry(archive, file.source)?, self.limits.max_decompressed_bytes)
                    }
                    DicomFiles::Single(bytes) => parse(bytes, self.limits.max_decompressed_bytes),
                }
                .ok_or_else(|| DicomError::Corrupt("a file changed between two readings".into()))?;
                frames
                    .par_iter()
                    .map(|&(frame, slice)| {
                        let (hounsfield, clipped) = decode_frame(&object, frame, transfer_syntax, frame_size)?;
                        let mut output = output.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        self.placement.place_frame(&mut output, &hounsfield, columns, slice);
                        Ok(clipped)
                    })
                    .try_reduce(|| 0, |a, b| Ok(a + b))
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        let voxels = output.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let volume =
            Volume::new(self.dims, self.affine, voxels).map_err(|e| DicomError::InconsistentSeries(e.to_string()))?;
        Ok(DicomVolume { volume, clipped, metadata: self.metadata, notes: self.notes })
    }
}

/// One frame of a parsed file, as int16 modality values (HU for CT), row-major, and how many
/// values were clipped to the int16 range.
fn decode_frame(
    object: &DefaultDicomObject,
    frame: u32,
    transfer_syntax: &str,
    frame_size: usize,
) -> Result<(Vec<i16>, u64), DicomError> {
    check_rle_frame(object, frame)?;
    let decoded = object.decode_pixel_data_frame(frame).map_err(|e| decode_error(transfer_syntax, e))?;
    if decoded.samples_per_pixel() != 1 {
        return Err(DicomError::InconsistentSeries("colour images are not CT".into()));
    }
    // The decoded frame is frame 0 of `decoded` (with this frame's rescale); `to_vec` would
    // convert it and then copy it into a second buffer.
    let values: Vec<f32> = decoded.to_vec_frame(0).map_err(|e| decode_error(transfer_syntax, e))?;
    let values = values
        .get(..frame_size)
        .ok_or_else(|| DicomError::Corrupt("pixel data is shorter than Rows × Columns × frames".into()))?;
    Ok(iris_volume::nifti_codec::round_to_int16(values))
}

fn decode_error(transfer_syntax: &str, error: dicom_pixeldata::Error) -> DicomError {
    let text = error.to_string();
    if text.contains("nsupported") || text.contains("not supported") || text.contains("codec") {
        DicomError::UnsupportedTransferSyntax(transfer_syntax.to_owned(), text)
    } else {
        DicomError::Corrupt(text)
    }
}
