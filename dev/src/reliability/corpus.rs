//! The studies the reliability suites upload: distinct small good CTs, and a corpus of malformed
//! inputs, each with the error code its job must fail with (docs/errors.md), built in code from
//! valid files so the corpus stays exact and reviewable. Malformed queue messages are separate: they
//! have no job, and must end in their queue's dead-letter queue.

use std::io::{Read, Write};

use iris_core::ErrorCode;
use iris_core::keys::QueueRole;
use iris_ingest::synthetic_dicom::{SyntheticSlice, small_axial_series, write_slice, zip_series};
use iris_volume::nifti_codec::{NiftiGeometry, encode_nifti_gz};
use iris_volume::phantom::{PhantomSpec, synthetic_ct};
use iris_volume::volume::{Affine, Volume};

/// One upload and how its job must end.
#[derive(Debug, Clone)]
pub struct Study {
    /// The upload's file name (`uploads/<user>/<file_name>`); unique within a corpus.
    pub file_name: String,
    pub body: Vec<u8>,
    pub expected: Expected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Completed,
    /// FAILED with this error code.
    Failed(ErrorCode),
}

/// A queue message that no stage can act on: it must be dead-lettered, and nothing else change.
#[derive(Debug, Clone)]
pub struct MalformedMessage {
    pub name: &'static str,
    pub queue: QueueRole,
    pub body: String,
}

/// The upload cap the bad-input suite runs with (`IRIS_MAX_UPLOAD_BYTES`), so the oversized upload
/// stays small enough to build in memory.
pub const BAD_INPUT_UPLOAD_CAP_BYTES: u64 = 8 << 20;

/// `count` different small CTs (64 × 54 × ~40 voxels of 4.5 mm) that segment and mesh quickly:
/// the phantom with its slice count and position varied, so every study has its own bytes and job.
pub fn good_studies(count: usize) -> Vec<Study> {
    (0..count)
        .map(|index| Study {
            file_name: format!("study-{index:03}.nii.gz"),
            body: encode(&shifted_phantom(index)),
            expected: Expected::Completed,
        })
        .collect()
}

/// At least 30 malformed uploads, each with the code its job must fail with.
pub fn bad_inputs() -> Vec<Study> {
    let mut corpus = Vec::new();
    let mut add = |file_name: &str, body: Vec<u8>, code: ErrorCode| {
        corpus.push(Study { file_name: file_name.to_owned(), body, expected: Expected::Failed(code) });
    };
    let good_gz = encode(&shifted_phantom(0));
    let good_nii = gunzip(&good_gz);

    // Not images at all.
    add("empty.nii", Vec::new(), ErrorCode::UnsupportedFormat);
    add("empty.nii.gz", Vec::new(), ErrorCode::UnsupportedFormat);
    add(
        "report.nii.gz",
        b"CT chest: no acute findings. This is a report, not an image.".to_vec(),
        ErrorCode::UnsupportedFormat,
    );
    add("notes.txt", b"hello".to_vec(), ErrorCode::UnsupportedFormat);
    add("picture.png", PNG_SIGNATURE.to_vec(), ErrorCode::UnsupportedFormat);
    add("no-extension", good_gz.clone(), ErrorCode::UnsupportedFormat);
    add(
        "odd name ü #1 (copy) 100%+&=.txt",
        b"an odd S3 key, percent-encoded in the event".to_vec(),
        ErrorCode::UnsupportedFormat,
    );

    // Broken gzip.
    add("truncated.nii.gz", good_gz[..good_gz.len() / 3].to_vec(), ErrorCode::CorruptFile);
    let mut flipped = good_gz.clone();
    let middle = flipped.len() / 2;
    for byte in &mut flipped[middle..middle + 64] {
        *byte ^= 0x5a;
    }
    add("corrupt-deflate.nii.gz", flipped, ErrorCode::CorruptFile);
    let mut bad_crc = good_gz.clone();
    let crc_at = bad_crc.len() - 8;
    bad_crc[crc_at] ^= 0xff;
    add("bad-crc.nii.gz", bad_crc, ErrorCode::CorruptFile);
    add("gzip-header-only.nii.gz", good_gz[..10].to_vec(), ErrorCode::CorruptFile);

    // NIfTI headers that lie.
    add("wrong-magic.nii", edited(&good_nii, |h| h[344..348].copy_from_slice(b"xyz\0")), ErrorCode::UnsupportedFormat);
    add("wrong-header-size.nii", edited(&good_nii, |h| put_i32(h, 0, 540)), ErrorCode::UnsupportedFormat);
    add("truncated-voxels.nii", good_nii[..good_nii.len() - 4096].to_vec(), ErrorCode::CorruptFile);
    add("header-only.nii", good_nii[..352].to_vec(), ErrorCode::CorruptFile);
    add(
        "dims-overflow-voxel-cap.nii",
        edited(&good_nii, |h| put_dims(h, &[3, 32767, 32767, 32767])),
        ErrorCode::TooLarge,
    );
    add("dims-over-cap.nii.gz", gzip(&edited(&good_nii, |h| put_dims(h, &[3, 4096, 4096, 4096]))), ErrorCode::TooLarge);
    add("negative-dim.nii", edited(&good_nii, |h| put_dims(h, &[3, 64, -54, 38])), ErrorCode::CorruptFile);
    add("zero-dim.nii", edited(&good_nii, |h| put_dims(h, &[3, 64, 0, 38])), ErrorCode::NotAVolume);
    add("two-dimensional.nii", edited(&good_nii, |h| put_dims(h, &[2, 64, 54])), ErrorCode::NotAVolume);
    add("four-dimensional.nii", four_dimensional(&good_nii), ErrorCode::NotAVolume);
    add("nan-spacing.nii", edited(&good_nii, |h| put_pixdim_and_clear_sform(h, 1, f32::NAN)), ErrorCode::NotAVolume);
    add("zero-spacing.nii", edited(&good_nii, |h| put_pixdim_and_clear_sform(h, 2, 0.0)), ErrorCode::NotAVolume);
    add("complex-datatype.nii", edited(&good_nii, |h| put_datatype(h, 32, 64)), ErrorCode::UnsupportedFormat);
    add(
        "vox-offset-past-end.nii",
        edited(&good_nii, |h| put_f32(h, 108, 352.0 + 1024.0 * 1024.0)),
        ErrorCode::CorruptFile,
    );
    // A 64 GiB offset (issue #24: gigabytes of gzip padding before the voxels) fails from the header.
    add(
        "vox-offset-64-gib.nii.gz",
        gzip(&edited(&good_nii, |h| put_f32(h, 108, 68_719_476_736.0))),
        ErrorCode::TooLarge,
    );
    let mut bomb = good_nii[..352].to_vec();
    bomb.resize(352 + (64 << 20), 0);
    add("gzip-bomb.nii.gz", gzip(&bomb), ErrorCode::TooLarge);
    add("over-upload-cap.nii.gz", vec![0x1f; BAD_INPUT_UPLOAD_CAP_BYTES as usize + 1], ErrorCode::TooLarge);

    // Valid NIfTI that is not a CT (refused by the CT-only classical model).
    let water = Volume::new([24, 20, 16], Affine::identity(), vec![40i16; 24 * 20 * 16]).expect("dims match");
    add("uniform-water.nii.gz", encode(&water), ErrorCode::NotCtLike);
    let air = Volume::new([24, 20, 16], Affine::identity(), vec![-1000i16; 24 * 20 * 16]).expect("dims match");
    add("all-air.nii.gz", encode(&air), ErrorCode::NotCtLike);

    // DICOM.
    let series = || small_axial_series(|_, _| {});
    add("not-a-zip.zip", b"PK\x03\x04 broken".to_vec(), ErrorCode::CorruptFile);
    add(
        "random.dcm",
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect(),
        ErrorCode::NoDicomImages,
    );
    let slice = write_slice(&series()[0], 1).expect("write slice");
    // Cut inside the pixel data (the last element), whatever the header's length.
    add("truncated.dcm", slice[..slice.len() - 64].to_vec(), ErrorCode::CorruptFile);
    add("only-notes.zip", zip(&[], &[("notes.txt", b"hello".to_vec())]), ErrorCode::NoDicomImages);
    add("escaping-entries-only.zip", zip(&[], &[("../../etc/evil.dcm", slice.clone())]), ErrorCode::NoDicomImages);
    add("no-pixel-data.zip", zip(&small_axial_series(|_, s| s.with_pixels = false), &[]), ErrorCode::NoPixelData);
    add("mr-only.zip", zip(&small_axial_series(|_, s| s.modality = "MR"), &[]), ErrorCode::NoCtSeries);
    add("gantry-tilt.zip", zip(&small_axial_series(|k, s| s.position[1] += k as f64), &[]), ErrorCode::GantryTilt);
    let gap = small_axial_series(|k, s| {
        if k >= 3 {
            s.position[2] += 2.5;
        }
    });
    add("slice-gap.zip", zip(&gap, &[]), ErrorCode::UnevenSliceSpacing);
    let mixed = small_axial_series(|k, s| {
        if k == 2 {
            s.orientation = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];
        }
    });
    add("mixed-orientations.zip", zip(&mixed, &[]), ErrorCode::InconsistentSeries);
    let doubled = small_axial_series(|k, s| {
        if k == 1 {
            s.position[2] -= 2.5;
        }
    });
    add("two-slices-one-position.zip", zip(&doubled, &[]), ErrorCode::InconsistentSeries);
    add("one-slice.zip", zip(&series()[..1], &[]), ErrorCode::NotAVolume);
    add("zip-bomb.zip", zip(&series(), &[("zeros.dcm", vec![0u8; 16 << 20])]), ErrorCode::TooLarge);
    corpus
}

/// Queue messages no stage can act on, one or more per work queue.
pub fn malformed_messages() -> Vec<MalformedMessage> {
    let message = |name, queue, body: &str| MalformedMessage { name, queue, body: body.to_owned() };
    vec![
        message("not JSON", QueueRole::Ingest, "this is not JSON"),
        message("empty body", QueueRole::Ingest, ""),
        message("Records is not a list", QueueRole::Ingest, r#"{"Records": 42}"#),
        message(
            "key with an encoded NUL character",
            QueueRole::Ingest,
            r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"uploads/local/a%00b.nii.gz","size":1,"eTag":"x"}}}]}"#,
        ),
        message(
            "upload of an invalid user",
            QueueRole::Ingest,
            r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"uploads/bad%21user/x.nii.gz","size":1,"eTag":"x"}}}]}"#,
        ),
        message("JSON array", QueueRole::Segment, "[1, 2, 3]"),
        message(
            "volume of a job that does not exist",
            QueueRole::Segment,
            r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"jobs/0000000000000000000000000000dead/volume.nii.gz","size":1,"eTag":"x"}}}]}"#,
        ),
        message(
            "an object that is not a job's labels",
            QueueRole::Mesh,
            r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"jobs/x/notes.txt","size":1,"eTag":"x"}}}]}"#,
        ),
        message("truncated JSON", QueueRole::Mesh, r#"{"Records":[{"eventName":"#),
        message("not an event", QueueRole::Notify, r#"{"hello": "world"}"#),
    ]
}

/// The small phantom, its slice count and origin varied by `index`.
fn shifted_phantom(index: usize) -> Volume<i16> {
    let spec = PhantomSpec { dims: [64, 54, 40 - 2 * (index % 4)], ..PhantomSpec::small() };
    let phantom = synthetic_ct(&spec);
    let mut affine = *phantom.affine();
    affine.0[0][3] += (index / 4) as f64 * 0.75;
    affine.0[2][3] += index as f64 * 1.5;
    let dims = phantom.dims();
    Volume::new(dims, affine, phantom.into_voxels()).expect("same dims")
}

fn encode(volume: &Volume<i16>) -> Vec<u8> {
    encode_nifti_gz(volume, &NiftiGeometry::from_affine(volume.dims(), volume.affine())).expect("encode NIfTI")
}

const PNG_SIGNATURE: [u8; 16] =
    [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13, b'I', b'H', b'D', b'R'];

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).expect("our own gzip decodes");
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip to memory");
    encoder.finish().expect("gzip to memory")
}

/// A copy of an uncompressed NIfTI-1 file with its 348-byte header edited.
fn edited(nii: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut copy = nii.to_vec();
    edit(&mut copy[..348]);
    copy
}

fn put_i16(header: &mut [u8], offset: usize, value: i16) {
    header[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_i32(header: &mut [u8], offset: usize, value: i32) {
    header[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_f32(header: &mut [u8], offset: usize, value: f32) {
    header[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

/// `dim[0..]` (offset 40): the rank, then the sizes; the remaining dims set to 1.
fn put_dims(header: &mut [u8], dims: &[i16]) {
    for index in 0..8 {
        put_i16(header, 40 + 2 * index, dims.get(index).copied().unwrap_or(1));
    }
}

/// `pixdim[axis]` (offset 76) set, and the sform and qform codes cleared (offsets 252, 254) so the
/// spacing is the one the reader must use.
fn put_pixdim_and_clear_sform(header: &mut [u8], axis: usize, value: f32) {
    put_f32(header, 76 + 4 * axis, value);
    put_i16(header, 252, 0);
    put_i16(header, 254, 0);
}

/// `datatype` (offset 70) and `bitpix` (offset 72).
fn put_datatype(header: &mut [u8], datatype: i16, bits: i16) {
    put_i16(header, 70, datatype);
    put_i16(header, 72, bits);
}

/// The volume repeated three times along a fourth dimension.
fn four_dimensional(nii: &[u8]) -> Vec<u8> {
    let vox_offset = f32::from_le_bytes(nii[108..112].try_into().expect("4 bytes")) as usize;
    let mut copy = nii.to_vec();
    let header = &mut copy[..348];
    let dims: Vec<i16> = (0..4).map(|i| i16::from_le_bytes([header[40 + 2 * i], header[41 + 2 * i]])).collect();
    put_dims(header, &[4, dims[1], dims[2], dims[3], 3]);
    let voxels = nii[vox_offset..].to_vec();
    copy.extend_from_slice(&voxels);
    copy.extend_from_slice(&voxels);
    copy
}

fn zip(slices: &[SyntheticSlice], extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    zip_series(slices, extra).expect("write the zip")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use iris_ingest::{IngestLimits, ingest_upload};

    use super::*;

    /// Every upload that ingest itself must refuse is refused with its documented code; the few
    /// that decode (the not-CT volumes) are left to the segment stage. The pipeline suites check
    /// the same codes end to end.
    #[test]
    fn each_bad_input_is_refused_by_ingest_with_its_code() {
        let corpus = bad_inputs();
        assert!(corpus.len() >= 30, "the corpus has {} inputs", corpus.len());
        let names: BTreeSet<&str> = corpus.iter().map(|study| study.file_name.as_str()).collect();
        assert_eq!(names.len(), corpus.len(), "file names are unique");
        let limits = IngestLimits { max_upload_bytes: BAD_INPUT_UPLOAD_CAP_BYTES, max_voxels: 512 * 512 * 2000 };
        let mut wrong = Vec::new();
        for study in &corpus {
            let Expected::Failed(code) = study.expected else { panic!("{} is expected to complete", study.file_name) };
            let outcome = ingest_upload(study.body.clone(), &study.file_name, &limits);
            match (outcome, code) {
                (Ok(_), ErrorCode::NotCtLike) => {}
                (Ok(_), _) => wrong.push(format!("{}: accepted, expected {code}", study.file_name)),
                (Err(error), _) if error.code() == code => {}
                (Err(error), _) => {
                    wrong.push(format!("{}: {} ({error}), expected {code}", study.file_name, error.code()))
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn good_studies_are_distinct_and_decode() {
        let studies = good_studies(6);
        let bodies: BTreeSet<&Vec<u8>> = studies.iter().map(|study| &study.body).collect();
        assert_eq!(bodies.len(), 6);
        let limits = IngestLimits { max_upload_bytes: 1 << 30, max_voxels: 1 << 30 };
        for study in &studies {
            ingest_upload(study.body.clone(), &study.file_name, &limits).expect("a good study ingests");
        }
    }
}
