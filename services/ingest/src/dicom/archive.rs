//! The upload's DICOM files: the entries of a zip (held in memory, or a local file read by
//! position) or one file. Each entry is read once for its headers, with the zip-bomb, size and
//! path checks, before the series is assembled; its pixels are read again later.

use std::io::{Cursor, Read, Seek};
use std::sync::Arc;

use super::geometry::assemble;
use super::guards::has_dicom_magic;
use super::headers::{NoPixels, summarize};
use super::{DicomError, DicomLimits, DicomSeriesReader};

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

/// The upload's DICOM files: entries of a zip, or one file.
pub(super) enum DicomFiles<'a, R> {
    Zip(zip::ZipArchive<R>),
    Single(&'a [u8]),
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
pub(super) fn read_zip_entry<R: ArchiveReader>(
    archive: &zip::ZipArchive<R>,
    index: usize,
) -> Result<Vec<u8>, DicomError> {
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
