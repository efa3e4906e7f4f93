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
use std::io::{Cursor, Read, Seek};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use iris_shared::ingest_report::DicomSeries;
use iris_shared::volume::{Affine, Reorientation, Volume};
use rayon::prelude::*;

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
    /// Modality values (HU for CT), rounded to int16, on the LAS grid; affine in RAS millimetres.
    pub volume: Volume<i16>,
    /// Voxels whose value was outside the int16 range, clipped.
    pub clipped: u64,
    pub metadata: DicomSeries,
    /// Choices made and things ignored, for the ingest report (never identifiers).
    pub notes: Vec<String>,
}

/// A series whose files are chosen, sorted and checked, and whose grid is known, before any pixel
/// is decoded: [`DicomSeriesReader::read_volume`] decodes it whole; where every canonical z-plane
/// is one whole image, [`DicomSeriesReader::decode_canonical_planes`] decodes any run of planes
/// on its own, so a caller can write the volume plane by plane without ever holding it.
pub struct DicomSeriesReader<'a, R: ArchiveReader> {
    upload: DicomFiles<'a, R>,
    files: Vec<FileSummary>,
    /// For each file of the series, its frames and the slice (sorted position) each one is.
    frames_of_file: Vec<Vec<(u32, usize)>>,
    /// For each slice, the file that holds it.
    file_of_slice: Vec<usize>,
    /// dicom2nifti's grid.
    dims: [usize; 3],
    affine: Affine,
    /// Where each slice-grid voxel lands on dicom2nifti's grid.
    placement: Placement,
    /// The slice grid (columns, rows, slices) and how it maps onto canonical RAS.
    slice_dims: [usize; 3],
    slice_to_canonical: Reorientation,
    metadata: DicomSeries,
    notes: Vec<String>,
    limits: DicomLimits,
}

/// What a zip is read through: its bytes in memory, or a [`PositionedFile`]. Clones read
/// independently (one per thread).
pub trait ArchiveReader: Read + Seek + Clone + Send + Sync {}

impl<T: Read + Seek + Clone + Send + Sync> ArchiveReader for T {}

/// A file read by position (`pread`), so that its clones share one open file and read it from
/// several threads at once, each at its own position.
#[derive(Debug, Clone)]
pub struct PositionedFile {
    file: Arc<std::fs::File>,
    position: u64,
    length: u64,
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

/// One image plane of the upload.
struct Plane {
    /// Index of the file (in the chosen series) that holds it.
    file: usize,
    frame: u32,
    position: [f64; 3],
    orientation: [f64; 6],
    pixel_spacing: [f64; 2],
}

/// What the first pass learns of one file; the file itself is not kept (its pixel data is read
/// again, decoded and placed in the second pass, so only one file per thread is ever in memory).
struct FileSummary {
    /// Zip entry index (0 for a single-file upload).
    source: usize,
    series: String,
    modality: String,
    rows: Option<usize>,
    columns: Option<usize>,
    /// The file's planes, or why it has none (an error only if its series is chosen).
    planes: Result<Vec<Plane>, DicomError>,
    transfer_syntax: String,
    /// LossyImageCompression is "01" (the pixels were lossy-compressed at some point).
    lossy_compressed_before: bool,
    kvp: Option<f64>,
    slice_thickness: Option<f64>,
}

/// The upload's DICOM files: entries of a zip, or one file.
enum DicomFiles<'a, R> {
    Zip(zip::ZipArchive<R>),
    Single(&'a [u8]),
}

/// Where slice-grid voxel (column i, row j, slice k) lands in the output volume:
/// `offset + i·strides[0] + j·strides[1] + k·strides[2]` (a permutation with flips: exact).
struct Placement {
    offset: isize,
    strides: [isize; 3],
}

/// Reads a zip of DICOM files (in memory) into a volume.
pub fn read_dicom_zip(bytes: &[u8], limits: &DicomLimits) -> Result<DicomVolume, DicomError> {
    open_dicom_zip(Cursor::new(bytes), limits)?.read_volume()
}

/// Reads one DICOM file (a multi-frame image, e.g. enhanced CT) into a volume.
pub fn read_dicom_file(bytes: &[u8], limits: &DicomLimits) -> Result<DicomVolume, DicomError> {
    open_dicom_file(bytes, limits)?.read_volume()
}

/// Reads a zip of DICOM files as far as the chosen series' grid: each entry is read once, one at
/// a time, for its attributes (its pixels are decoded later, by the returned reader).
pub fn open_dicom_zip<R: ArchiveReader>(
    reader: R,
    limits: &DicomLimits,
) -> Result<DicomSeriesReader<'static, R>, DicomError> {
    let archive = zip::ZipArchive::new(reader).map_err(|e| DicomError::CorruptArchive(e.to_string()))?;
    if archive.len() > limits.max_files {
        return Err(DicomError::TooLarge(format!(
            "the archive has {} entries, more than {}",
            archive.len(),
            limits.max_files
        )));
    }
    let mut notes = Vec::new();
    let mut summaries = Vec::new();
    let mut not_dicom = 0;
    let mut damaged = 0;
    let mut without_pixels = 0;
    let mut unpacked = 0u64;
    let mut skipped_unsafe = 0;
    let mut reader = archive.clone();
    for index in 0..archive.len() {
        let mut entry = reader.by_index(index).map_err(|e| DicomError::CorruptArchive(e.to_string()))?;
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
        let content = read_entry(&mut entry)?;
        drop(entry);
        unpacked += content.len() as u64;
        match summarize(index, &content, limits) {
            Some(Ok(summary)) => summaries.push(summary),
            Some(Err(NoPixels)) => without_pixels += 1,
            None if has_dicom_magic(&content) => damaged += 1,
            None => not_dicom += 1,
        }
    }
    if skipped_unsafe > 0 {
        notes.push(format!("ignored {skipped_unsafe} archive entries with absolute or '..' paths"));
    }
    if damaged > 0 {
        if summaries.is_empty() {
            return Err(DicomError::Corrupt(format!(
                "{damaged} DICOM files in the archive cannot be read: they are damaged or truncated"
            )));
        }
        notes.push(format!("ignored {damaged} damaged DICOM files"));
    }
    assemble(DicomFiles::Zip(archive), summaries, not_dicom, without_pixels, limits, notes)
}

/// Reads one DICOM file (a multi-frame image, e.g. enhanced CT) as far as its grid.
pub fn open_dicom_file<'a>(
    bytes: &'a [u8],
    limits: &DicomLimits,
) -> Result<DicomSeriesReader<'a, Cursor<&'static [u8]>>, DicomError> {
    let (summaries, not_dicom, without_pixels) = match summarize(0, bytes, limits) {
        Some(Ok(summary)) => (vec![summary], 0, 0),
        Some(Err(NoPixels)) => (Vec::new(), 0, 1),
        None if has_dicom_magic(bytes) => {
            return Err(DicomError::Corrupt(
                "the file starts as DICOM but cannot be read: it is damaged or truncated".into(),
            ));
        }
        None => (Vec::new(), 1, 0),
    };
    assemble(DicomFiles::Single(bytes), summaries, not_dicom, without_pixels, limits, Vec::new())
}

/// An entry's bytes. Never trusts the declared size: reads at most one byte more than it.
fn read_zip_entry<R: ArchiveReader>(archive: &zip::ZipArchive<R>, index: usize) -> Result<Vec<u8>, DicomError> {
    let mut archive = archive.clone();
    let mut entry = archive.by_index(index).map_err(|e| DicomError::CorruptArchive(e.to_string()))?;
    read_entry(&mut entry)
}

/// The bytes of an open entry, at most its declared size (one byte more is an error).
fn read_entry<R: Read>(entry: &mut zip::read::ZipFile<'_, R>) -> Result<Vec<u8>, DicomError> {
    let declared = entry.size();
    let mut content = Vec::with_capacity(usize::try_from(declared).unwrap_or(0).min(1 << 30));
    entry.take(declared + 1).read_to_end(&mut content).map_err(|e| DicomError::CorruptArchive(e.to_string()))?;
    if content.len() as u64 > declared {
        return Err(DicomError::CorruptArchive("an entry holds more bytes than its header declares".into()));
    }
    Ok(content)
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

/// Whether the bytes carry DICOM's "DICM" marker (after the 128-byte preamble, or at the start).
fn has_dicom_magic(bytes: &[u8]) -> bool {
    (bytes.len() >= 132 && &bytes[128..132] == b"DICM") || bytes.starts_with(b"DICM")
}

fn parse(bytes: &[u8], max_inflated_bytes: u64) -> Option<DefaultDicomObject> {
    let (preamble, file) = if bytes.len() > 132 && &bytes[128..132] == b"DICM" {
        (ReadPreamble::Always, &bytes[128..])
    } else if bytes.starts_with(b"DICM") {
        (ReadPreamble::Never, bytes)
    } else {
        return None;
    };
    if !declared_lengths_fit(file, max_inflated_bytes) {
        return None;
    }
    OpenFileOptions::new().read_preamble(preamble).from_reader(bytes).ok()
}

/// VRs whose explicit-VR element header has a 16-bit length (PS3.5 7.1.2); every other VR, an
/// unknown one included, has a reserved field and a 32-bit length (as dicom-encoding reads them).
const SHORT_LENGTH_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS",
    b"ST", b"TM", b"UI", b"UL", b"US",
];
const UNDEFINED_LENGTH: u32 = u32::MAX;
/// Transfer syntaxes whose data set is deflated (raw deflate, PS3.5 A.5): [`declared_lengths_fit`]
/// inflates it to walk it.
const DEFLATED_TRANSFER_SYNTAXES: [&str; 3] =
    ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"];

/// Whether every value length a DICOM file (from "DICM" on) declares fits in the bytes after it.
/// The DICOM parser reserves, and mostly zero-fills, a value's declared length before reading it,
/// so a few bytes declaring a 4 GiB value would cost 4 GiB of memory (found by fuzzing). Walks the
/// element headers as the parser reads them: flat (the contents of sequences and items are
/// elements in turn), skipping values and the fragments of encapsulated pixel data, through the
/// file meta group and the data set (inflated first when it is deflated; a data set inflating to
/// more than `max_inflated_bytes`, or not inflating, is refused). Where the walk cannot go on, the
/// parser fails there too: the file is accepted and left to it.
fn declared_lengths_fit(file: &[u8], max_inflated_bytes: u64) -> bool {
    let mut walker = HeaderWalker { bytes: file, position: 4, explicit_vr: true, big_endian: false };
    // The file meta group (explicit VR little endian): (0002,0000) gives its length.
    match walker.next_header() {
        Some(ElementHeader { tag: (0x0002, 0x0000), length: 4, .. }) => {}
        _ => return true,
    }
    let Some(group_length) = walker.u32(walker.position) else { return true };
    walker.position += 4;
    let meta_end = walker.position.saturating_add(group_length as usize);
    let mut transfer_syntax = "";
    while walker.position < meta_end {
        let Some(header) = walker.next_header() else { return true };
        if header.length == UNDEFINED_LENGTH {
            return true;
        }
        let value = walker.position;
        if !walker.skip(header.length) {
            return false;
        }
        if header.tag == (0x0002, 0x0010) {
            let uid = std::str::from_utf8(&file[value..walker.position]).unwrap_or_default();
            transfer_syntax = uid.trim_end_matches(['\0', ' ']);
        }
    }
    if DEFLATED_TRANSFER_SYNTAXES.contains(&transfer_syntax) {
        use std::io::Read;
        let mut inflated = Vec::new();
        let mut inflater = flate2::read::DeflateDecoder::new(&file[walker.position.min(file.len())..])
            .take(max_inflated_bytes.saturating_add(1));
        if inflater.read_to_end(&mut inflated).is_err() || inflated.len() as u64 > max_inflated_bytes {
            return false;
        }
        return data_set_lengths_fit(HeaderWalker {
            bytes: &inflated,
            position: 0,
            explicit_vr: true,
            big_endian: false,
        });
    }
    walker.explicit_vr = transfer_syntax != "1.2.840.10008.1.2";
    walker.big_endian = transfer_syntax == "1.2.840.10008.1.2.2";
    data_set_lengths_fit(walker)
}

/// [`declared_lengths_fit`] for a data set, from the walker's position to the end of its bytes.
fn data_set_lengths_fit(mut walker: HeaderWalker) -> bool {
    let mut in_fragments = false;
    while let Some(ElementHeader { tag, vr, length }) = walker.next_header() {
        if in_fragments {
            match tag {
                (0xFFFE, 0xE000) if length != UNDEFINED_LENGTH => {
                    if !walker.skip(length) {
                        return false;
                    }
                }
                (0xFFFE, 0xE0DD) => in_fragments = false,
                _ => return true,
            }
            continue;
        }
        if tag.0 == 0xFFFE {
            continue; // an item or a delimiter: what follows are elements
        }
        if tag == (0x7FE0, 0x0010) && length == UNDEFINED_LENGTH {
            in_fragments = true;
            continue;
        }
        let sequence = match vr {
            Some(vr) => &vr == b"SQ",
            None => {
                use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
                dicom_dictionary_std::StandardDataDictionary
                    .by_tag(dicom_object::Tag(tag.0, tag.1))
                    .is_some_and(|entry| entry.vr().relaxed() == dicom_core::VR::SQ)
            }
        };
        // A sequence's items, and any other undefined-length value, are read as elements.
        if !sequence && length != UNDEFINED_LENGTH && !walker.skip(length) {
            return false;
        }
    }
    true
}

struct ElementHeader {
    tag: (u16, u16),
    /// The VR of an explicit-VR element header (none for item headers and implicit VR).
    vr: Option<[u8; 2]>,
    length: u32,
}

/// Reads DICOM element headers in a file held in memory (for [`declared_lengths_fit`]).
struct HeaderWalker<'a> {
    bytes: &'a [u8],
    position: usize,
    explicit_vr: bool,
    big_endian: bool,
}

impl HeaderWalker<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let bytes = self.bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big_endian { u16::from_be_bytes(bytes) } else { u16::from_le_bytes(bytes) })
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let bytes = self.bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) })
    }

    /// The header at the current position, moving past it; `None` at the end of the bytes.
    fn next_header(&mut self) -> Option<ElementHeader> {
        let at = self.position;
        let tag = (self.u16(at)?, self.u16(at + 2)?);
        let (vr, length, size) = if tag.0 == 0xFFFE || !self.explicit_vr {
            (None, self.u32(at + 4)?, 8)
        } else {
            let vr: [u8; 2] = self.bytes.get(at + 4..at + 6)?.try_into().ok()?;
            if SHORT_LENGTH_VRS.contains(&&vr) {
                (Some(vr), u32::from(self.u16(at + 6)?), 8)
            } else {
                (Some(vr), self.u32(at + 8)?, 12)
            }
        };
        self.position = at + size;
        Some(ElementHeader { tag, vr, length })
    }

    /// Moves past a value of `length` bytes; false when it runs past the end.
    fn skip(&mut self, length: u32) -> bool {
        match self.position.checked_add(length as usize) {
            Some(end) if end <= self.bytes.len() => {
                self.position = end;
                true
            }
            _ => false,
        }
    }
}

/// A DICOM file without pixel data.
struct NoPixels;

/// The first pass over one file: `None` if it is not DICOM.
fn summarize(source: usize, bytes: &[u8], limits: &DicomLimits) -> Option<Result<FileSummary, NoPixels>> {
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

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn assemble<'a, R: ArchiveReader>(
    upload: DicomFiles<'a, R>,
    summaries: Vec<FileSummary>,
    not_dicom: usize,
    without_pixels: usize,
    limits: &DicomLimits,
    mut notes: Vec<String>,
) -> Result<DicomSeriesReader<'a, R>, DicomError> {
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
    // Series: the CT series with the most images.
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
    let mut files: Vec<FileSummary> = summaries.into_iter().filter(|f| f.series == chosen).collect();
    let mut planes = Vec::new();
    for (index, file) in files.iter_mut().enumerate() {
        let file_planes = std::mem::replace(&mut file.planes, Ok(Vec::new()))?;
        planes.extend(file_planes.into_iter().map(|plane| Plane { file: index, ..plane }));
    }
    if planes.len() < 2 {
        return Err(DicomError::SingleSlice);
    }
    let first = &files[0];
    let (Some(rows), Some(columns)) = (first.rows.filter(|r| *r > 0), first.columns.filter(|c| *c > 0)) else {
        return Err(DicomError::InconsistentSeries("Rows or Columns is missing".into()));
    };
    if files.iter().any(|file| file.rows != Some(rows) || file.columns != Some(columns)) {
        return Err(DicomError::InconsistentSeries("images of different sizes".into()));
    }
    let voxels = (rows as u64).saturating_mul(columns as u64).saturating_mul(planes.len() as u64);
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
    let transfer_syntax = files[0].transfer_syntax.clone();
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
        transfer_syntax,
        rows,
        columns,
        slices: planes.len(),
        pixel_spacing_mm: pixel_spacing,
        slice_spacing_mm: median,
        slice_thickness_mm: files[0].slice_thickness,
        kvp: files[0].kvp,
        acquisition_orientation,
        series_in_upload: series_count,
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
    Ok(iris_shared::nifti_codec::round_to_int16(values))
}

impl PositionedFile {
    pub fn open(path: &std::path::Path) -> std::io::Result<PositionedFile> {
        let file = std::fs::File::open(path)?;
        let length = file.metadata()?.len();
        Ok(PositionedFile { file: Arc::new(file), position: 0, length })
    }

    pub fn len(&self) -> u64 {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }
}

impl Read for PositionedFile {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let read = self.file.read_at(buffer, self.position)?;
        self.position += read as u64;
        Ok(read)
    }
}

impl Seek for PositionedFile {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            std::io::SeekFrom::Start(offset) => Some(offset),
            std::io::SeekFrom::End(offset) => self.length.checked_add_signed(offset),
            std::io::SeekFrom::Current(offset) => self.position.checked_add_signed(offset),
        };
        self.position =
            target.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.position)
    }
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
    fn place_frame(&self, output: &mut [i16], frame: &[i16], columns: usize, slice: usize) {
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

/// RLE Lossless (PS3.5 annex G): dicom-transfer-syntax-registry 0.10.1 trusts a frame's RLE
/// header and segments. It allocates 4 bytes per segment the header claims before checking that the
/// fragment holds them (asking for up to 16 GiB, then panicking on the slice), and it indexes each
/// decoded segment up to Rows × Columns without checking that it decoded that many bytes (a
/// panic). Both found by fuzzing: such a frame is refused here, before the decoder sees it.
/// Anything else wrong with the frame is left to the decoder, which reports it as an error.
fn check_rle_frame(object: &DefaultDicomObject, frame: u32) -> Result<(), DicomError> {
    if object.meta().transfer_syntax().trim_end_matches('\0') != "1.2.840.10008.1.2.5" {
        return Ok(());
    }
    let number = |tag| object.element_opt(tag).ok().flatten().and_then(|e| e.uint16().ok()).map(usize::from);
    let (Some(rows), Some(columns), Some(samples), Some(bits)) =
        (number(tags::ROWS), number(tags::COLUMNS), number(tags::SAMPLES_PER_PIXEL), number(tags::BITS_ALLOCATED))
    else {
        return Ok(());
    };
    let fragments = object.element_opt(tags::PIXEL_DATA).ok().flatten().and_then(|e| e.value().fragments());
    let Some(fragment) = fragments.and_then(|fragments| fragments.get(frame as usize)) else { return Ok(()) };
    let damaged = || Err(DicomError::Corrupt("an RLE frame's header or segments are damaged".into()));
    let le_u32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let Some(count) = fragment.get(..4).map(le_u32) else { return damaged() };
    if 4 * (u64::from(count) + 1) > fragment.len() as u64 {
        return damaged();
    }
    if bits != 8 && bits != 16 {
        return Ok(());
    }
    let mut offsets: Vec<usize> =
        fragment[4..4 * (count as usize + 1)].chunks_exact(4).map(|b| le_u32(b) as usize).collect();
    offsets.push(fragment.len());
    for segment in 0..samples * (bits / 8) {
        let (Some(&start), Some(&end)) = (offsets.get(segment), offsets.get(segment + 1)) else { return Ok(()) };
        let Some(bytes) = fragment.get(start..end) else { return Ok(()) };
        if packbits_length(bytes).is_some_and(|length| length < rows * columns) {
            return damaged();
        }
    }
    Ok(())
}

/// How many bytes a PackBits segment decodes to, read as the RLE decoder reads it; `None` where
/// the decoder fails on it (a repeat run without its byte).
fn packbits_length(segment: &[u8]) -> Option<usize> {
    let (mut at, mut length) = (0, 0);
    while at < segment.len() {
        let header = segment[at] as i8;
        at += 1;
        if header >= 0 {
            let run = header as usize + 1;
            length += run.min(segment.len() - at);
            at += run;
        } else if header != -128 {
            segment.get(at)?;
            length += (1 - isize::from(header)) as usize;
            at += 1;
        }
    }
    Some(length)
}

fn decode_error(transfer_syntax: &str, error: dicom_pixeldata::Error) -> DicomError {
    let text = error.to_string();
    if text.contains("nsupported") || text.contains("not supported") || text.contains("codec") {
        DicomError::UnsupportedTransferSyntax(transfer_syntax.to_owned(), text)
    } else {
        DicomError::Corrupt(text)
    }
}
