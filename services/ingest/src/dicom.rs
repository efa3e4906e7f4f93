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

use std::collections::BTreeMap;
use std::io::{Cursor, Read};

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use iris_shared::ingest_report::DicomSeries;
use iris_shared::volume::{Affine, Reorientation, Volume};

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
    /// Modality values (HU for CT) on the LAS grid, affine in RAS millimetres.
    pub volume: Volume<f32>,
    pub metadata: DicomSeries,
    /// Choices made and things ignored, for the ingest report (never identifiers).
    pub notes: Vec<String>,
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
}

impl DicomError {
    pub fn code(&self) -> &'static str {
        match self {
            DicomError::CorruptArchive(_) | DicomError::Corrupt(_) => "corrupt_file",
            DicomError::TooLarge(_) => "too_large",
            DicomError::NoImages(_) => "no_dicom_images",
            DicomError::NoPixelData => "no_pixel_data",
            DicomError::NoCtSeries(_) => "no_ct_series",
            DicomError::InconsistentSeries(_) => "inconsistent_series",
            DicomError::UnevenSpacing(_) => "uneven_slice_spacing",
            DicomError::GantryTilt(_) => "gantry_tilt",
            DicomError::SingleSlice => "not_a_volume",
            DicomError::UnsupportedTransferSyntax(..) => "unsupported_transfer_syntax",
        }
    }
}

/// Largest tilt (between the slice normal and the direction the slices advance) taken as none.
const TILT_TOLERANCE_DEGREES: f64 = 0.1;
/// Slice distances may differ from the median by this share and still count as even.
const SPACING_TOLERANCE: f64 = 0.01;

/// One image plane of the upload.
struct Plane {
    object: usize,
    frame: u32,
    position: [f64; 3],
    orientation: [f64; 6],
    pixel_spacing: [f64; 2],
}

/// A parsed file and what it is.
struct ParsedFile {
    object: DefaultDicomObject,
    series: String,
    modality: String,
}

/// Reads a zip of DICOM files.
pub fn read_dicom_zip(bytes: &[u8], limits: &DicomLimits) -> Result<DicomVolume, DicomError> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| DicomError::CorruptArchive(e.to_string()))?;
    if archive.len() > limits.max_files {
        return Err(DicomError::TooLarge(format!(
            "the archive has {} entries, more than {}",
            archive.len(),
            limits.max_files
        )));
    }
    let mut notes = Vec::new();
    let mut files = Vec::new();
    let mut unpacked = 0u64;
    let mut skipped_unsafe = 0;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| DicomError::CorruptArchive(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let unsafe_name = entry.name().map(|name| is_absolute_or_escaping(&name)).unwrap_or(true);
        if entry.enclosed_name().is_none() || unsafe_name {
            skipped_unsafe += 1;
            continue;
        }
        let declared = entry.size();
        let compressed = entry.compressed_size().max(1);
        if declared / compressed > limits.max_compression_ratio && declared > 1 << 20 {
            return Err(DicomError::TooLarge(format!(
                "an archive entry expands {}-fold (a zip bomb?); the limit is {}",
                declared / compressed,
                limits.max_compression_ratio
            )));
        }
        if unpacked + declared > limits.max_decompressed_bytes {
            return Err(DicomError::TooLarge(format!(
                "the archive unpacks to more than {} bytes",
                limits.max_decompressed_bytes
            )));
        }
        let mut content = Vec::with_capacity(declared as usize);
        // Never trust the declared size: read at most one byte more than it.
        (&mut entry)
            .take(declared + 1)
            .read_to_end(&mut content)
            .map_err(|e| DicomError::CorruptArchive(e.to_string()))?;
        if content.len() as u64 > declared {
            return Err(DicomError::CorruptArchive("an entry holds more bytes than its header declares".into()));
        }
        unpacked += content.len() as u64;
        files.push(content);
    }
    if skipped_unsafe > 0 {
        notes.push(format!("ignored {skipped_unsafe} archive entries with absolute or '..' paths"));
    }
    assemble(files, limits, notes)
}

/// An entry name that is absolute (`/x`, `\\x`, `C:x`) or climbs out with `..`. (The zip crate's
/// `enclosed_name` accepts `/x` by stripping the slash; such entries are ignored here instead.)
fn is_absolute_or_escaping(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.starts_with('/')
        || name.starts_with('\\')
        || (bytes.len() >= 2 && bytes[1] == b':')
        || name.split(['/', '\\']).any(|segment| segment == "..")
}

/// Reads one DICOM file (a multi-frame image, e.g. enhanced CT).
pub fn read_dicom_file(bytes: &[u8], limits: &DicomLimits) -> Result<DicomVolume, DicomError> {
    assemble(vec![bytes.to_vec()], limits, Vec::new())
}

fn parse(bytes: &[u8]) -> Option<DefaultDicomObject> {
    let preamble = if bytes.len() > 132 && &bytes[128..132] == b"DICM" {
        ReadPreamble::Always
    } else if bytes.starts_with(b"DICM") {
        ReadPreamble::Never
    } else {
        return None;
    };
    OpenFileOptions::new().read_preamble(preamble).from_reader(bytes).ok()
}

fn text(object: &InMemDicomObject, tag: dicom_object::Tag) -> Option<String> {
    object.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_owned())
}

fn floats(object: &InMemDicomObject, tag: dicom_object::Tag) -> Option<Vec<f64>> {
    object.element_opt(tag).ok().flatten().and_then(|e| e.to_multi_float64().ok())
}

fn float(object: &InMemDicomObject, tag: dicom_object::Tag) -> Option<f64> {
    floats(object, tag).and_then(|v| v.first().copied())
}

fn items(object: &InMemDicomObject, tag: dicom_object::Tag) -> Option<&[InMemDicomObject]> {
    object.element_opt(tag).ok().flatten().and_then(|e| e.items())
}

/// The first item of a sequence in a functional group, e.g. PlanePositionSequence.
fn group_item(group: &InMemDicomObject, sequence: dicom_object::Tag) -> Option<&InMemDicomObject> {
    items(group, sequence).and_then(|items| items.first())
}

/// The planes of one file: its own position for a classic image, or one per frame from the
/// functional groups of an enhanced multi-frame image.
fn planes_of(index: usize, object: &InMemDicomObject) -> Result<Vec<Plane>, DicomError> {
    let frames = text(object, tags::NUMBER_OF_FRAMES).and_then(|t| t.parse::<u32>().ok()).unwrap_or(1).max(1);
    let shared = items(object, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|i| i.first());
    let per_frame = items(object, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let from_groups = |frame: usize, sequence, tag| {
        per_frame
            .and_then(|groups| groups.get(frame))
            .and_then(|group| group_item(group, sequence))
            .and_then(|item| floats(item, tag))
            .or_else(|| shared.and_then(|group| group_item(group, sequence)).and_then(|item| floats(item, tag)))
    };
    let mut planes = Vec::new();
    for frame in 0..frames as usize {
        let position = floats(object, tags::IMAGE_POSITION_PATIENT)
            .filter(|_| frames == 1)
            .or_else(|| from_groups(frame, tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT));
        let orientation = floats(object, tags::IMAGE_ORIENTATION_PATIENT)
            .or_else(|| from_groups(frame, tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT));
        let spacing = floats(object, tags::PIXEL_SPACING)
            .or_else(|| from_groups(frame, tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING));
        let (Some(position), Some(orientation), Some(spacing)) = (position, orientation, spacing) else {
            return Err(DicomError::InconsistentSeries(
                "an image lacks its position, orientation or pixel spacing (ImagePositionPatient, ImageOrientationPatient, PixelSpacing)"
                    .into(),
            ));
        };
        if position.len() < 3
            || orientation.len() < 6
            || spacing.len() < 2
            || spacing[..2].iter().any(|s| s.is_nan() || *s <= 0.0)
        {
            return Err(DicomError::InconsistentSeries("an image has malformed geometry attributes".into()));
        }
        planes.push(Plane {
            object: index,
            frame: frame as u32,
            position: [position[0], position[1], position[2]],
            orientation: [
                orientation[0],
                orientation[1],
                orientation[2],
                orientation[3],
                orientation[4],
                orientation[5],
            ],
            pixel_spacing: [spacing[0], spacing[1]],
        });
    }
    Ok(planes)
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

fn assemble(files: Vec<Vec<u8>>, limits: &DicomLimits, mut notes: Vec<String>) -> Result<DicomVolume, DicomError> {
    let total = files.len();
    let mut parsed = Vec::new();
    let mut not_dicom = 0;
    let mut without_pixels = 0;
    for bytes in files {
        let Some(object) = parse(&bytes) else {
            not_dicom += 1;
            continue;
        };
        if object.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
            without_pixels += 1;
            continue;
        }
        let series = text(&object, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        let modality = text(&object, tags::MODALITY).unwrap_or_default().to_ascii_uppercase();
        parsed.push(ParsedFile { object, series, modality });
    }
    if parsed.is_empty() {
        if without_pixels > 0 && not_dicom == 0 {
            return Err(DicomError::NoPixelData);
        }
        return Err(DicomError::NoImages(format!(
            "{total} files: {not_dicom} not DICOM, {without_pixels} DICOM without pixel data"
        )));
    }
    if not_dicom + without_pixels > 0 {
        notes.push(format!("ignored {not_dicom} non-DICOM files and {without_pixels} DICOM files without pixel data"));
    }
    // Series: the CT series with the most images.
    let mut series: BTreeMap<&str, (String, usize)> = BTreeMap::new();
    for file in &parsed {
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
    let files: Vec<&ParsedFile> = parsed.iter().filter(|f| f.series == chosen).collect();
    let mut planes = Vec::new();
    for (index, file) in files.iter().enumerate() {
        planes.extend(planes_of(index, &file.object)?);
    }
    if planes.len() < 2 {
        return Err(DicomError::SingleSlice);
    }
    let first = &files[0].object;
    let rows = text(first, tags::ROWS).and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
    let columns = text(first, tags::COLUMNS).and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
    if rows == 0 || columns == 0 {
        return Err(DicomError::InconsistentSeries("Rows or Columns is missing".into()));
    }
    for file in &files {
        let same = text(&file.object, tags::ROWS).and_then(|t| t.parse::<usize>().ok()) == Some(rows)
            && text(&file.object, tags::COLUMNS).and_then(|t| t.parse::<usize>().ok()) == Some(columns);
        if !same {
            return Err(DicomError::InconsistentSeries("images of different sizes".into()));
        }
    }
    let voxels = (rows * columns * planes.len()) as u64;
    if voxels > limits.max_voxels {
        return Err(DicomError::TooLarge(format!(
            "the series has {voxels} voxels, more than the limit of {}",
            limits.max_voxels
        )));
    }
    let orientation = planes[0].orientation;
    let pixel_spacing = planes[0].pixel_spacing;
    for plane in &planes {
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
    let last = planes.len() - 1;
    let span = [0, 1, 2].map(|a| planes[last].position[a] - planes[0].position[a]);
    let cosine = (dot(span, normal) / norm(span)).clamp(-1.0, 1.0);
    let tilt = cosine.acos().to_degrees();
    if tilt > TILT_TOLERANCE_DEGREES {
        return Err(DicomError::GantryTilt(tilt));
    }
    // The slice grid in LPS: i along a row (column index), j down the columns (row index), k slices.
    let step = span.map(|v| v / last as f64);
    let mut lps = [[0.0; 4]; 4];
    for axis in 0..3 {
        lps[axis][0] = row_direction[axis] * pixel_spacing[1];
        lps[axis][1] = column_direction[axis] * pixel_spacing[0];
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
    let slice_affine = Affine(ras);
    let acquisition_orientation =
        slice_affine.orientation_code().map_err(|e| DicomError::InconsistentSeries(e.to_string()))?;
    // Decode every plane, in sorted order.
    let transfer_syntax = files[0].object.meta().transfer_syntax().trim_end_matches('\0').to_owned();
    // Objects are decoded once and freed after their last frame is placed (one-frame slices at once).
    let mut frames_left: BTreeMap<usize, usize> = BTreeMap::new();
    for plane in &planes {
        *frames_left.entry(plane.object).or_default() += 1;
    }
    let mut decoded_objects: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    let frame_size = rows * columns;
    let mut voxels_out = Vec::with_capacity(frame_size * planes.len());
    for plane in &planes {
        let values = match decoded_objects.entry(plane.object) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let decoded =
                    files[plane.object].object.decode_pixel_data().map_err(|e| decode_error(&transfer_syntax, e))?;
                if decoded.samples_per_pixel() != 1 {
                    return Err(DicomError::InconsistentSeries("colour images are not CT".into()));
                }
                entry.insert(decoded.to_vec().map_err(|e| decode_error(&transfer_syntax, e))?)
            }
        };
        let start = plane.frame as usize * frame_size;
        let frame = values
            .get(start..start + frame_size)
            .ok_or_else(|| DicomError::Corrupt("pixel data is shorter than Rows × Columns × frames".into()))?;
        voxels_out.extend_from_slice(frame);
        let left = frames_left.entry(plane.object).or_default();
        *left = left.saturating_sub(1);
        if *left == 0 {
            decoded_objects.remove(&plane.object);
        }
    }
    let slice_volume = Volume::new([columns, rows, planes.len()], slice_affine, voxels_out)
        .map_err(|e| DicomError::InconsistentSeries(e.to_string()))?;
    let volume = to_dicom2nifti_grid(&slice_volume)?;
    let kvp = float(first, tags::KVP);
    let slice_thickness = float(first, tags::SLICE_THICKNESS);
    Ok(DicomVolume {
        volume,
        metadata: DicomSeries {
            modality: "CT".into(),
            transfer_syntax,
            rows,
            columns,
            slices: planes.len(),
            pixel_spacing_mm: pixel_spacing,
            slice_spacing_mm: median,
            slice_thickness_mm: slice_thickness,
            kvp,
            acquisition_orientation,
            series_in_upload: series_count,
            files_read: files.len(),
        },
        notes,
    })
}

fn decode_error(transfer_syntax: &str, error: dicom_pixeldata::Error) -> DicomError {
    let text = error.to_string();
    if text.contains("nsupported") || text.contains("not supported") || text.contains("codec") {
        DicomError::UnsupportedTransferSyntax(transfer_syntax.to_owned(), text)
    } else {
        DicomError::Corrupt(text)
    }
}

/// dicom2nifti's output grid: the nearest LAS orientation (permutation and flips only).
fn to_dicom2nifti_grid(slices: &Volume<f32>) -> Result<Volume<f32>, DicomError> {
    let geometry_error = |e: iris_shared::volume::VolumeError| DicomError::InconsistentSeries(e.to_string());
    let to_ras = Reorientation::to_canonical(slices.dims(), slices.affine()).map_err(geometry_error)?;
    let ras = to_ras.apply(slices).map_err(geometry_error)?;
    let [nx, ny, nz] = ras.dims();
    let mut voxels = Vec::with_capacity(ras.voxel_count());
    let source = ras.voxels();
    for k in 0..nz {
        for j in 0..ny {
            let row = nx * (j + ny * k);
            voxels.extend((0..nx).rev().map(|i| source[row + i]));
        }
    }
    let mut affine = ras.affine().0;
    for row in &mut affine[..3] {
        row[3] += row[0] * (nx - 1) as f64;
        row[0] = -row[0];
    }
    Volume::new(ras.dims(), Affine(affine), voxels).map_err(geometry_error)
}
