//! Guards against decoder bugs that fuzzing found in dicom-rs 0.10: before the parser sees a file,
//! its declared value lengths are checked against its size (deflated data sets inflated first);
//! before the RLE decoder sees a frame, its header and segments are checked.

use std::io::Read;

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

use super::DicomError;

/// Whether the bytes carry DICOM's "DICM" marker (after the 128-byte preamble, or at the start).
pub(super) fn has_dicom_magic(bytes: &[u8]) -> bool {
    (bytes.len() >= 132 && &bytes[128..132] == b"DICM") || bytes.starts_with(b"DICM")
}

pub(super) fn parse(bytes: &[u8], max_inflated_bytes: u64) -> Option<DefaultDicomObject> {
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

/// RLE Lossless (PS3.5 annex G): dicom-transfer-syntax-registry 0.10.1 trusts a frame's RLE
/// header and segments. It allocates 4 bytes per segment the header claims before checking that the
/// fragment holds them (asking for up to 16 GiB, then panicking on the slice), and it indexes each
/// decoded segment up to Rows × Columns without checking that it decoded that many bytes (a
/// panic). Both found by fuzzing: such a frame is refused here, before the decoder sees it.
/// Anything else wrong with the frame is left to the decoder, which reports it as an error.
pub(super) fn check_rle_frame(object: &DefaultDicomObject, frame: u32) -> Result<(), DicomError> {
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
