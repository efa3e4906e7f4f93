//! Series geometry: which series of the upload is taken, its planes sorted along the slice normal
//! and checked (sizes, orientation, spacing, duplicates, gaps, gantry tilt), the slice grid's
//! affine, and dicom2nifti's output grid (the nearest LAS orientation: permutation and flips of
//! the slice grid, no resampling) with where each slice-grid voxel lands on it.

use std::collections::BTreeMap;

use iris_volume::ingest_report::DicomSeries;
use iris_volume::volume::{Affine, Reorientation};

use super::archive::{ArchiveReader, DicomFiles};
use super::headers::{FileSummary, Plane};
use super::{DicomError, DicomLimits, DicomSeriesReader};

/// Largest tilt (between the slice normal and the direction the slices advance) taken as none.
const TILT_TOLERANCE_DEGREES: f64 = 0.1;
/// JPEG baseline and extended, JPEG-LS near-lossless, JPEG 2000 (irreversible), HTJ2K lossy.
const LOSSY_TRANSFER_SYNTAXES: [&str; 6] = [
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.203",
];
/// Slice distances may differ from the median by this share and still count as even.
const SPACING_TOLERANCE: f64 = 0.01;

/// Where slice-grid voxel (column i, row j, slice k) lands in the output volume:
/// `offset + i·strides[0] + j·strides[1] + k·strides[2]` (a permutation with flips: exact).
pub(super) struct Placement {
    pub(super) offset: isize,
    pub(super) strides: [isize; 3],
}

/// The image plane shared by every slice: its directions and pixel spacing.
struct SlicePlane {
    row_direction: [f64; 3],
    column_direction: [f64; 3],
    normal: [f64; 3],
    /// (between rows, between columns), as PixelSpacing gives it.
    pixel_spacing: [f64; 2],
}

/// Builds the reader of the series the upload's files make, or fails with the code that says
/// what is wrong with it. The steps, in the order their errors are reported: choose the series,
/// collect its planes, check the image size and the voxel cap, check the common plane, sort the
/// planes along the normal and check their spacing, check the tilt, then place the grid.
pub(super) fn assemble<'a, R: ArchiveReader>(
    upload: DicomFiles<'a, R>,
    summaries: Vec<FileSummary>,
    not_dicom: usize,
    without_pixels: usize,
    limits: &DicomLimits,
    mut notes: Vec<String>,
) -> Result<DicomSeriesReader<'a, R>, DicomError> {
    let (mut files, series_in_upload) = choose_series(summaries, not_dicom, without_pixels, &mut notes)?;
    // Pixels that may show a name would reach the volume, the labels and the meshes.
    if files.iter().any(|file| file.burned_in_annotation) {
        return Err(DicomError::BurnedInAnnotation);
    }
    let mut planes = collect_planes(&mut files)?;
    let (rows, columns) = image_size(&files, planes.len(), limits)?;
    let plane = common_plane(&planes)?;
    let slice_spacing = sort_along_normal(&mut planes, plane.normal)?;
    check_tilt(&planes, plane.normal)?;
    let slice_affine = slice_affine(&planes, &plane);
    let slice_dims = [columns, rows, planes.len()];
    let acquisition_orientation =
        slice_affine.orientation_code().map_err(|e| DicomError::InconsistentSeries(e.to_string()))?;
    let (dims, affine, placement) = dicom2nifti_grid(slice_dims, &slice_affine)?;
    let slice_to_canonical = Reorientation::to_canonical(slice_dims, &slice_affine)
        .map_err(|e| DicomError::InconsistentSeries(e.to_string()))?;
    let mut frames_of_file: Vec<Vec<(u32, usize)>> = vec![Vec::new(); files.len()];
    for (slice, plane) in planes.iter().enumerate() {
        frames_of_file[plane.file].push((plane.frame, slice));
    }
    if files
        .iter()
        .any(|file| file.lossy_compressed_before || LOSSY_TRANSFER_SYNTAXES.contains(&file.transfer_syntax.as_str()))
    {
        notes.push(
            "the images were stored with lossy compression (LossyImageCompression or a lossy transfer syntax): \
             intensities differ slightly from the scanner's"
                .into(),
        );
    }
    let metadata = DicomSeries {
        modality: "CT".into(),
        transfer_syntax: files[0].transfer_syntax.clone(),
        rows,
        columns,
        slices: planes.len(),
        pixel_spacing_mm: plane.pixel_spacing,
        slice_spacing_mm: slice_spacing,
        slice_thickness_mm: files[0].slice_thickness,
        kvp: files[0].kvp,
        acquisition_orientation,
        series_in_upload,
        files_read: files.len(),
    };
    Ok(DicomSeriesReader {
        upload,
        file_of_slice: planes.iter().map(|plane| plane.file).collect(),
        files,
        frames_of_file,
        dims,
        affine,
        placement,
        slice_dims,
        slice_to_canonical,
        metadata,
        notes,
        limits: *limits,
    })
}

/// The files of the CT series with the most images, and how many series the upload holds.
fn choose_series(
    summaries: Vec<FileSummary>,
    not_dicom: usize,
    without_pixels: usize,
    notes: &mut Vec<String>,
) -> Result<(Vec<FileSummary>, usize), DicomError> {
    if summaries.is_empty() {
        if without_pixels > 0 && not_dicom == 0 {
            return Err(DicomError::NoPixelData);
        }
        return Err(DicomError::NoImages(format!(
            "{} files: {not_dicom} not DICOM, {without_pixels} DICOM without pixel data",
            not_dicom + without_pixels
        )));
    }
    if not_dicom + without_pixels > 0 {
        notes.push(format!("ignored {not_dicom} non-DICOM files and {without_pixels} DICOM files without pixel data"));
    }
    let mut series: BTreeMap<&str, (String, usize)> = BTreeMap::new();
    for file in &summaries {
        let entry = series.entry(file.series.as_str()).or_insert((file.modality.clone(), 0));
        entry.1 += 1;
    }
    let series_count = series.len();
    let Some((chosen, _)) =
        series.iter().filter(|(_, (m, _))| m == "CT").max_by_key(|(_, (_, n))| *n).map(|(k, v)| (k.to_string(), v))
    else {
        let found: Vec<String> =
            series.values().map(|(m, n)| format!("{} ({n} images)", if m.is_empty() { "?" } else { m })).collect();
        return Err(DicomError::NoCtSeries(found.join(", ")));
    };
    if series_count > 1 {
        let others: Vec<String> =
            series.iter().filter(|(k, _)| **k != chosen).map(|(_, (m, n))| format!("{m} with {n} images")).collect();
        notes.push(format!("took the CT series with the most images; also present: {}", others.join(", ")));
    }
    Ok((summaries.into_iter().filter(|f| f.series == chosen).collect(), series_count))
}

/// Every plane of the series' files (each marked with its file), at least two of them.
fn collect_planes(files: &mut [FileSummary]) -> Result<Vec<Plane>, DicomError> {
    let mut planes = Vec::new();
    for (index, file) in files.iter_mut().enumerate() {
        let file_planes = std::mem::replace(&mut file.planes, Ok(Vec::new()))?;
        planes.extend(file_planes.into_iter().map(|plane| Plane { file: index, ..plane }));
    }
    if planes.len() < 2 {
        return Err(DicomError::SingleSlice);
    }
    Ok(planes)
}

/// (rows, columns), the same for every image, and within the voxel cap for `slices` slices.
fn image_size(files: &[FileSummary], slices: usize, limits: &DicomLimits) -> Result<(usize, usize), DicomError> {
    let first = &files[0];
    let (Some(rows), Some(columns)) = (first.rows.filter(|r| *r > 0), first.columns.filter(|c| *c > 0)) else {
        return Err(DicomError::InconsistentSeries("Rows or Columns is missing".into()));
    };
    if files.iter().any(|file| file.rows != Some(rows) || file.columns != Some(columns)) {
        return Err(DicomError::InconsistentSeries("images of different sizes".into()));
    }
    let voxels = (rows as u64).saturating_mul(columns as u64).saturating_mul(slices as u64);
    if voxels > limits.max_voxels {
        return Err(DicomError::TooLarge(format!(
            "the series has {voxels} voxels, more than the limit of {}",
            limits.max_voxels
        )));
    }
    Ok((rows, columns))
}

/// The orientation and pixel spacing every plane shares, its directions orthonormal.
fn common_plane(planes: &[Plane]) -> Result<SlicePlane, DicomError> {
    let orientation = planes[0].orientation;
    let pixel_spacing = planes[0].pixel_spacing;
    for plane in planes {
        if plane.orientation.iter().zip(orientation).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(DicomError::InconsistentSeries("images with different orientations".into()));
        }
        if plane.pixel_spacing.iter().zip(pixel_spacing).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(DicomError::InconsistentSeries("images with different pixel spacing".into()));
        }
    }
    let row_direction = [orientation[0], orientation[1], orientation[2]];
    let column_direction = [orientation[3], orientation[4], orientation[5]];
    let normal = cross(row_direction, column_direction);
    if (norm(row_direction) - 1.0).abs() > 1e-3
        || (norm(column_direction) - 1.0).abs() > 1e-3
        || (norm(normal) - 1.0).abs() > 1e-3
    {
        return Err(DicomError::InconsistentSeries(
            "ImageOrientationPatient is not two orthogonal unit vectors".into(),
        ));
    }
    Ok(SlicePlane { row_direction, column_direction, normal, pixel_spacing })
}

/// Sorts the planes along the normal and returns their (median) spacing: no two at one position,
/// none further from the median than [`SPACING_TOLERANCE`] (a missing slice).
fn sort_along_normal(planes: &mut [Plane], normal: [f64; 3]) -> Result<f64, DicomError> {
    planes.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    let distances: Vec<f64> =
        planes.windows(2).map(|pair| dot(pair[1].position, normal) - dot(pair[0].position, normal)).collect();
    if distances.iter().any(|d| *d < 1e-3) {
        return Err(DicomError::InconsistentSeries(
            "two images at the same position (duplicates or several acquisitions)".into(),
        ));
    }
    let mut sorted = distances.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if let Some(worst) = distances.iter().find(|d| (*d - median).abs() > SPACING_TOLERANCE * median + 1e-3) {
        let missing = (worst / median).round() as i64 - 1;
        let detail = if missing >= 1 {
            format!("a gap of {worst:.3} mm where slices are {median:.3} mm apart ({missing} slice(s) missing?)")
        } else {
            format!("distances from {:.3} to {:.3} mm", sorted[0], sorted[sorted.len() - 1])
        };
        return Err(DicomError::UnevenSpacing(detail));
    }
    Ok(median)
}

/// The direction the slices advance is the normal (within [`TILT_TOLERANCE_DEGREES`]).
fn check_tilt(planes: &[Plane], normal: [f64; 3]) -> Result<(), DicomError> {
    let span = span_of(planes);
    let cosine = (dot(span, normal) / norm(span)).clamp(-1.0, 1.0);
    let tilt = cosine.acos().to_degrees();
    if tilt > TILT_TOLERANCE_DEGREES {
        return Err(DicomError::GantryTilt(tilt));
    }
    Ok(())
}

/// From the first sorted plane's position to the last's.
fn span_of(planes: &[Plane]) -> [f64; 3] {
    let last = planes.len() - 1;
    [0, 1, 2].map(|a| planes[last].position[a] - planes[0].position[a])
}

/// The slice grid's affine in RAS millimetres: i along a row (column index), j down the columns
/// (row index), k the sorted slices, from DICOM's LPS.
fn slice_affine(planes: &[Plane], plane: &SlicePlane) -> Affine {
    let step = span_of(planes).map(|v| v / (planes.len() - 1) as f64);
    let mut lps = [[0.0; 4]; 4];
    for axis in 0..3 {
        lps[axis][0] = plane.row_direction[axis] * plane.pixel_spacing[1];
        lps[axis][1] = plane.column_direction[axis] * plane.pixel_spacing[0];
        lps[axis][2] = step[axis];
        lps[axis][3] = planes[0].position[axis];
    }
    lps[3][3] = 1.0;
    let mut ras = lps;
    for row in &mut ras[..2] {
        for value in row.iter_mut() {
            *value = -*value;
        }
    }
    Affine(ras)
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// dicom2nifti's output grid for a slice grid: the nearest LAS orientation (permutation and flips
/// only, no resampling): its dims, its affine and where each slice-grid voxel lands on it.
fn dicom2nifti_grid(
    slice_dims: [usize; 3],
    slice_affine: &Affine,
) -> Result<([usize; 3], Affine, Placement), DicomError> {
    let to_ras = Reorientation::to_canonical(slice_dims, slice_affine)
        .map_err(|e| DicomError::InconsistentSeries(e.to_string()))?;
    let dims = to_ras.canonical_dims();
    let output_strides = [1, dims[0] as isize, (dims[0] * dims[1]) as isize];
    // `to_output` takes an output index to the slice-grid index it shows.
    let mut to_output = [[0.0; 4]; 4];
    to_output[3][3] = 1.0;
    let mut placement = Placement { offset: 0, strides: [0; 3] };
    for (voxel, axis) in to_ras.axes.iter().enumerate() {
        let world = axis.world_axis;
        // LAS: the first world axis runs right to left, the other two as in RAS.
        let reversed = axis.flipped != (world == 0);
        if reversed {
            placement.strides[voxel] = -output_strides[world];
            placement.offset += (dims[world] as isize - 1) * output_strides[world];
            to_output[voxel][world] = -1.0;
            to_output[voxel][3] = (slice_dims[voxel] - 1) as f64;
        } else {
            placement.strides[voxel] = output_strides[world];
            to_output[voxel][world] = 1.0;
        }
    }
    Ok((dims, slice_affine.compose(&Affine(to_output)), placement))
}

impl Placement {
    /// Copies one decoded frame (row-major: `columns` values per row) to slice `slice`.
    pub(super) fn place_frame(&self, output: &mut [i16], frame: &[i16], columns: usize, slice: usize) {
        let [along_row, along_column, along_slices] = self.strides;
        let base = self.offset + slice as isize * along_slices;
        for (row, values) in frame.chunks_exact(columns).enumerate() {
            let start = base + row as isize * along_column;
            match along_row {
                1 => output[start as usize..start as usize + columns].copy_from_slice(values),
                -1 => {
                    let end = start as usize + 1;
                    output[end - columns..end].iter_mut().zip(values.iter().rev()).for_each(|(o, v)| *o = *v);
                }
                step => {
                    for (column, value) in values.iter().enumerate() {
                        output[(start + column as isize * step) as usize] = *value;
                    }
                }
            }
        }
    }
}
