//! The first pass over each file: the attributes a series is assembled from (series, modality,
//! sizes, planes, transfer syntax, a few technical attributes), read by an explicit list of
//! technical tags; the file itself is not kept.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::guards::parse;
use super::{DicomError, DicomLimits};

/// One image plane of the upload.
pub(super) struct Plane {
    /// Index of the file (in the chosen series) that holds it.
    pub(super) file: usize,
    pub(super) frame: u32,
    pub(super) position: [f64; 3],
    pub(super) orientation: [f64; 6],
    pub(super) pixel_spacing: [f64; 2],
}

/// What the first pass learns of one file; the file itself is not kept (its pixel data is read
/// again, decoded and placed in the second pass, so only one file per thread is ever in memory).
pub(super) struct FileSummary {
    /// Zip entry index (0 for a single-file upload).
    pub(super) source: usize,
    pub(super) series: String,
    pub(super) modality: String,
    pub(super) rows: Option<usize>,
    pub(super) columns: Option<usize>,
    /// The file's planes, or why it has none (an error only if its series is chosen).
    pub(super) planes: Result<Vec<Plane>, DicomError>,
    pub(super) transfer_syntax: String,
    /// LossyImageCompression is "01" (the pixels were lossy-compressed at some point).
    pub(super) lossy_compressed_before: bool,
    /// BurnedInAnnotation is "YES": the pixels may show identifying text.
    pub(super) burned_in_annotation: bool,
    pub(super) kvp: Option<f64>,
    pub(super) slice_thickness: Option<f64>,
}

/// A DICOM file without pixel data.
pub(super) struct NoPixels;

/// The first pass over one file: `None` if it is not DICOM.
pub(super) fn summarize(source: usize, bytes: &[u8], limits: &DicomLimits) -> Option<Result<FileSummary, NoPixels>> {
    let object = parse(bytes, limits.max_decompressed_bytes)?;
    if object.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Some(Err(NoPixels));
    }
    let count = |tag| text(&object, tag).and_then(|t| t.parse::<usize>().ok());
    Some(Ok(FileSummary {
        source,
        series: text(&object, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        modality: text(&object, tags::MODALITY).unwrap_or_default().to_ascii_uppercase(),
        rows: count(tags::ROWS),
        columns: count(tags::COLUMNS),
        planes: planes_of(&object),
        transfer_syntax: object.meta().transfer_syntax().trim_end_matches('\0').to_owned(),
        lossy_compressed_before: text(&object, tags::LOSSY_IMAGE_COMPRESSION).as_deref() == Some("01"),
        burned_in_annotation: text(&object, tags::BURNED_IN_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("YES")),
        kvp: float(&object, tags::KVP),
        slice_thickness: float(&object, tags::SLICE_THICKNESS),
    }))
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
/// functional groups of an enhanced multi-frame image. `Plane::file` is set when the series is chosen.
fn planes_of(object: &InMemDicomObject) -> Result<Vec<Plane>, DicomError> {
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
            file: 0,
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
