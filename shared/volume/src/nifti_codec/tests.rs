//! Tests of the NIfTI codec: decoding, the writers' byte equality, geometry round trips.

use std::io::Read;

use iris_core::ErrorCode;

use super::read::{GZIP_MAGIC, MAX_EXTENSION_BYTES, MAX_TRAILING_BYTES, inflate_single_member};
use super::*;

#[test]
fn single_and_multi_member_gzip_decode_to_the_same_voxels() {
    // 160 × 160 × 90 int16 is more than one 1 MiB member: the writer makes several, so
    // decoding takes the streaming path; one flate2 member takes libdeflate's one-call path.
    let dims = [160, 160, 90];
    let voxels: Vec<i16> = (0..dims.iter().product::<usize>()).map(|i| ((i * 7919) % 4000) as i16 - 1000).collect();
    let volume = Volume::new(dims, *lps_volume().affine(), voxels).unwrap();
    let geometry = NiftiGeometry::from_affine(dims, volume.affine());
    let multi = encode_nifti_gz(&volume, &geometry).unwrap();
    let header = nifti1_header_bytes::<i16>(&geometry).unwrap();
    let raw: Vec<u8> = header.iter().copied().chain(bytemuck::cast_slice(volume.voxels()).iter().copied()).collect();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &raw).unwrap();
    let single = encoder.finish().unwrap();
    let count = volume.voxel_count();
    assert!(inflate_single_member::<i16>(&multi, 352, count).is_none(), "several members: streamed");
    assert_eq!(inflate_single_member::<i16>(&single, 352, count).as_deref(), Some(volume.voxels()));
    let limits = DecodeLimits { max_voxels: u64::MAX };
    for bytes in [&multi, &single] {
        let (decoded, clipped) = decode_nifti_hounsfield(bytes, &limits).unwrap();
        assert_eq!(clipped, 0);
        assert_eq!(decoded.volume.voxels(), volume.voxels());
        assert_eq!(decoded.volume.affine(), volume.affine());
    }
    // A truncated single member is refused, not half-read.
    assert!(decode_nifti_hounsfield(&single[..single.len() - 1000], &limits).is_err());
    // A wrong CRC-32 in the last member (found by the bad-input corpus: the streaming path
    // stopped reading at the last voxel and never reached it) is refused, in both shapes.
    for bytes in [&multi, &single] {
        let mut damaged = bytes.clone();
        let crc_at = damaged.len() - 8;
        damaged[crc_at] ^= 0xff;
        let error = decode_nifti_hounsfield(&damaged, &limits).unwrap_err();
        assert_eq!(error.code(), ErrorCode::CorruptFile, "{error}");
    }
    // A small header on a long run of zeros (a gzip bomb) is refused once it passes the limit.
    let mut bomb = raw.clone();
    bomb.resize(raw.len() + MAX_TRAILING_BYTES as usize + 1, 0);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &bomb).unwrap();
    let error = decode_nifti_hounsfield(&encoder.finish().unwrap(), &limits).unwrap_err();
    assert!(matches!(error, NiftiDecodeError::TrailingData { .. }), "{error}");
    assert_eq!(error.code(), ErrorCode::TooLarge);
}

#[test]
fn uint8_label_maps_are_read_as_stored_and_other_types_are_left_to_the_general_path() {
    // 300 × 200 × 80 bytes is more than one 1 MiB member: several members (streamed); one
    // flate2 member takes libdeflate's one-call path.
    let dims = [300, 200, 80];
    let labels: Vec<u8> = (0..dims.iter().product::<usize>()).map(|i| ((i / 97) % 118) as u8).collect();
    let volume = Volume::new(dims, *lps_volume().affine(), labels).unwrap();
    let geometry = NiftiGeometry::from_affine(dims, volume.affine());
    let multi = encode_nifti_gz(&volume, &geometry).unwrap();
    let header = nifti1_header_bytes::<u8>(&geometry).unwrap();
    let raw: Vec<u8> = header.iter().chain(volume.voxels()).copied().collect();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &raw).unwrap();
    let single = encoder.finish().unwrap();
    let limits = DecodeLimits { max_voxels: u64::MAX };
    for bytes in [&multi, &single, &raw] {
        let decoded = decode_nifti_uint8(bytes, &limits).unwrap().expect("uint8 without scaling");
        assert_eq!(decoded.volume.voxels(), volume.voxels());
        assert_eq!(decoded.volume.affine(), volume.affine());
        // The same values as the general (float) decoder.
        let general = decode_nifti(bytes, &limits).unwrap();
        assert!(general.volume.voxels().iter().zip(volume.voxels()).all(|(f, u)| *f == f32::from(*u)));
    }
    assert!(decode_nifti_uint8(&single[..single.len() - 1000], &limits).is_err(), "truncated");
    assert!(decode_nifti_uint8(&raw[..raw.len() - 10], &limits).is_err(), "truncated, uncompressed");
    let int16 = encode_nifti_gz(&lps_volume(), &NiftiGeometry::from_affine(lps_volume().dims(), lps_volume().affine()))
        .unwrap();
    assert!(decode_nifti_uint8(&int16, &limits).unwrap().is_none(), "int16 is not read as bytes");
    let over_cap = DecodeLimits { max_voxels: 1000 };
    assert_eq!(decode_nifti_uint8(&single, &over_cap).unwrap_err().code(), ErrorCode::TooLarge);
}

fn lps_volume() -> Volume<i16> {
    let affine =
        Affine([[-1.5, 0.0, 0.0, 90.0], [0.0, -1.5, 0.0, 120.0], [0.0, 0.0, 2.5, -40.0], [0.0, 0.0, 0.0, 1.0]]);
    Volume::new([4, 3, 2], affine, (0..24).map(|v| v * 10 - 100).collect()).unwrap()
}

#[test]
fn writes_and_reads_back_values_and_affine() {
    let volume = lps_volume();
    let geometry = NiftiGeometry::from_affine(volume.dims(), volume.affine());
    let bytes = encode_nifti_gz(&volume, &geometry).unwrap();
    assert_eq!(&bytes[..2], &GZIP_MAGIC);
    assert_eq!(encode_nifti_gz(&volume, &geometry).unwrap(), bytes, "encoding is deterministic");
    let decoded = decode_nifti(&bytes, &DecodeLimits { max_voxels: 1000 }).unwrap();
    assert_eq!(decoded.volume.dims(), [4, 3, 2]);
    assert_eq!(decoded.affine_source, AffineSource::Sform);
    assert_eq!(decoded.volume.voxels(), &volume.voxels().iter().map(|v| f32::from(*v)).collect::<Vec<_>>()[..]);
    for r in 0..3 {
        for c in 0..4 {
            assert!((decoded.affine.0[r][c] - volume.affine().0[r][c]).abs() < 1e-5);
        }
    }
    assert_eq!(decoded.geometry, geometry);
}

#[test]
fn multi_member_gzip_is_read_to_the_end_and_chunked_writing_is_deterministic() {
    // Big enough for several gzip members.
    let dims = [256, 256, 40];
    let voxels: Vec<i16> = (0..dims.iter().product::<usize>()).map(|n| (n % 2000) as i16 - 1000).collect();
    let volume = Volume::new(dims, Affine::identity(), voxels).unwrap();
    let geometry = NiftiGeometry::from_affine(dims, volume.affine());
    let bytes = encode_nifti_gz(&volume, &geometry).unwrap();
    let members = bytes.windows(3).filter(|w| w == &[0x1f, 0x8b, 0x08]).count();
    assert!(members >= 2, "{members} gzip members");
    let decoded = decode_nifti(&bytes, &DecodeLimits { max_voxels: 1 << 30 }).unwrap();
    assert_eq!(decoded.volume.voxels().len(), volume.voxel_count());
    assert_eq!(decoded.volume.voxels()[volume.voxel_count() - 1], f32::from(volume.voxels()[volume.voxel_count() - 1]));
    let single_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    assert_eq!(single_thread.install(|| encode_nifti_gz(&volume, &geometry).unwrap()), bytes);
}

/// The uncompressed length of each member of a multi-member gzip file, in order.
fn member_lengths(mut bytes: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    while !bytes.is_empty() {
        let mut decoder = flate2::bufread::GzDecoder::new(bytes);
        let mut member = Vec::new();
        decoder.read_to_end(&mut member).unwrap();
        lengths.push(member.len());
        bytes = decoder.into_inner();
    }
    lengths
}

#[test]
fn members_hold_the_header_then_runs_of_whole_planes_and_a_failed_fill_stops_the_write() {
    // u8, 300 × 200 × 80: 17 planes of 60,000 bytes fit in 1 MiB, so 4 members of 17 and one of 12.
    let dims = [300, 200, 80];
    let plane = 300 * 200;
    let volume = Volume::new(dims, Affine::identity(), vec![7u8; dims.iter().product()]).unwrap();
    let geometry = NiftiGeometry::from_affine(dims, volume.affine());
    let lengths = member_lengths(&encode_nifti_gz(&volume, &geometry).unwrap());
    assert_eq!(lengths, [352, 17 * plane, 17 * plane, 17 * plane, 17 * plane, 12 * plane]);
    // i16, 1024 × 600 × 3: a plane of 1.2 MB is more than 1 MiB, so it is a member on its own.
    let dims = [1024, 600, 3];
    let plane = 1024 * 600;
    let geometry = NiftiGeometry::from_affine(dims, &Affine::identity());
    let mut written = Vec::new();
    write_nifti_gz_by_planes(&geometry, &mut written, |planes, values: &mut [i16]| {
        assert_eq!(values.len(), planes.len() * plane, "whole planes");
        values.iter_mut().enumerate().for_each(|(n, v)| *v = ((planes.start * plane + n) % 3000) as i16);
        Ok::<_, NiftiEncodeError>(())
    })
    .unwrap();
    assert_eq!(member_lengths(&written), [352, 2 * plane, 2 * plane, 2 * plane]);
    // Filled in order, one member after the other while the ones before are compressed: the same bytes.
    let mut in_order = Vec::new();
    let mut next_plane = 0;
    write_nifti_gz_in_order(&geometry, &mut in_order, |planes, values: &mut [i16]| {
        assert_eq!(planes.start, next_plane, "in order");
        next_plane = planes.end;
        values.iter_mut().enumerate().for_each(|(n, v)| *v = ((planes.start * plane + n) % 3000) as i16);
        Ok::<_, NiftiEncodeError>(())
    })
    .unwrap();
    assert!(in_order == written, "the in-order writer wrote other bytes");
    let decoded = decode_nifti(&written, &DecodeLimits { max_voxels: 1 << 30 }).unwrap();
    let values = decoded.volume.voxels();
    assert!(values.iter().enumerate().all(|(n, v)| *v == (n % 3000) as f32), "every plane in its place");
    // An error from `fill` is returned as it is, and no member after the failing batch is written.
    let geometry = NiftiGeometry::from_affine([1024, 600, 8], &Affine::identity());
    let mut written = Vec::new();
    let error = write_nifti_gz_by_planes(&geometry, &mut written, |planes, _: &mut [i16]| {
        if planes.contains(&0) { Err(NiftiEncodeError::Write("plane 0 is damaged".into())) } else { Ok(()) }
    })
    .unwrap_err();
    assert_eq!(error.to_string(), "could not write NIfTI: plane 0 is damaged");
    assert_eq!(member_lengths(&written), [352], "only the header, written before the first batch");
}

/// Expected values of the nibabel fixtures: stored 7n - 50, scaled by 2 and -1024.
fn fixture_value(i: usize, j: usize, k: usize) -> f32 {
    let n = (i + 4 * j + 12 * k) as f32;
    2.0 * (7.0 * n - 50.0) - 1024.0
}

fn assert_fixture(decoded: &DecodedNifti) {
    assert_eq!(decoded.volume.dims(), [4, 3, 2]);
    for (i, j, k) in [(0, 0, 0), (3, 2, 1), (1, 2, 0)] {
        assert_eq!(*decoded.volume.get(i, j, k), fixture_value(i, j, k), "voxel ({i},{j},{k})");
    }
    let expected = [[-1.5, 0.0, 0.0, 90.25], [0.0, 1.25, 0.0, -120.5], [0.0, 0.0, 2.5, -40.0]];
    for (row, values) in expected.iter().enumerate() {
        for (column, value) in values.iter().enumerate() {
            assert!((decoded.affine.0[row][column] - value).abs() < 1e-6, "affine[{row}][{column}]");
        }
    }
    assert_eq!(decoded.affine.orientation_code().unwrap(), "LAS");
}

#[test]
fn reads_nifti2_written_by_nibabel_with_scaling_and_sform() {
    let decoded =
        decode_nifti(include_bytes!("../../tests/fixtures/nifti2_las_4x3x2.nii"), &DecodeLimits { max_voxels: 100 })
            .expect("NIfTI-2");
    assert_eq!(decoded.affine_source, AffineSource::Sform);
    assert_fixture(&decoded);
    let (hounsfield, clipped) = decode_nifti_hounsfield(
        include_bytes!("../../tests/fixtures/nifti2_las_4x3x2.nii"),
        &DecodeLimits { max_voxels: 100 },
    )
    .unwrap();
    assert_eq!((*hounsfield.volume.get(3, 2, 1), clipped), (fixture_value(3, 2, 1) as i16, 0));
}

#[test]
fn falls_back_to_the_qform_when_the_sform_is_unset() {
    let decoded = decode_nifti(
        include_bytes!("../../tests/fixtures/nifti1_qform_only_4x3x2.nii.gz"),
        &DecodeLimits { max_voxels: 100 },
    )
    .expect("NIfTI-1");
    assert_eq!(decoded.affine_source, AffineSource::Qform);
    assert_fixture(&decoded);
}

#[test]
fn reads_every_common_voxel_type() {
    let dims = [3, 2, 2];
    let affine = Affine::identity();
    let geometry = NiftiGeometry::from_affine(dims, &affine);
    let limits = DecodeLimits { max_voxels: 100 };
    let u8_bytes = encode_nifti_gz(&Volume::new(dims, affine, (0..12u8).collect()).unwrap(), &geometry).unwrap();
    let f32_bytes = encode_nifti_gz(
        &Volume::new(dims, affine, (0..12).map(|v| v as f32 * 0.5 - 3.0).collect()).unwrap(),
        &geometry,
    )
    .unwrap();
    assert_eq!(decode_nifti(&u8_bytes, &limits).unwrap().volume.voxels()[11], 11.0);
    assert_eq!(decode_nifti(&f32_bytes, &limits).unwrap().volume.voxels()[11], 2.5);
    let (rounded, clipped) = decode_nifti_hounsfield(&f32_bytes, &limits).unwrap();
    assert_eq!((rounded.volume.voxels()[1], clipped), (-3, 0), "-2.5 rounds away from zero");
    let huge = encode_nifti_gz(&Volume::new(dims, affine, vec![1.0e6f32; 12]).unwrap(), &geometry).unwrap();
    let (clamped, clipped) = decode_nifti_hounsfield(&huge, &limits).unwrap();
    assert_eq!((clamped.volume.voxels()[0], clipped), (i16::MAX, 12));
}

#[test]
fn refuses_bad_input_with_codes() {
    let limits = DecodeLimits { max_voxels: 1000 };
    let volume = lps_volume();
    let bytes = encode_nifti_gz(&volume, &NiftiGeometry::from_affine(volume.dims(), volume.affine())).unwrap();
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("empty", vec![], ErrorCode::UnsupportedFormat),
        ("text", b"hello, this is not an image".repeat(20), ErrorCode::UnsupportedFormat),
        ("truncated gzip", bytes[..bytes.len() / 2].to_vec(), ErrorCode::CorruptFile),
    ];
    for (name, input, code) in cases {
        let error = decode_nifti(&input, &limits).expect_err(name);
        assert_eq!(error.code(), code, "{name}: {error}");
    }
    let error = decode_nifti(&bytes, &DecodeLimits { max_voxels: 10 }).unwrap_err();
    assert_eq!(error.code(), ErrorCode::TooLarge);
    let flat = Volume::new([4, 3, 1], *volume.affine(), vec![0i16; 12]).unwrap();
    let flat_bytes = encode_nifti_gz(&flat, &NiftiGeometry::from_affine(flat.dims(), flat.affine())).unwrap();
    assert_eq!(decode_nifti(&flat_bytes, &limits).unwrap_err().code(), ErrorCode::NotAVolume);
}

/// Issue #24: a header whose `vox_offset` puts gigabytes of padding before the voxels is refused
/// from the header alone, before one byte past it is inflated: a 64 GiB offset in a file of a few
/// hundred bytes fails as `too_large` at once, NIfTI-1 and NIfTI-2 alike. An offset just inside the
/// limit is read (and then fails for the missing data, as `corrupt_file`).
#[test]
fn a_voxel_offset_past_the_extension_limit_is_refused_before_reading() {
    let limits = DecodeLimits { max_voxels: 1000 };
    let volume = lps_volume();
    let bytes = encode_nifti_gz(&volume, &NiftiGeometry::from_affine(volume.dims(), volume.affine())).unwrap();
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut raw).unwrap();
    let with_offset = |offset: f32| {
        let mut edited = raw.clone();
        edited[108..112].copy_from_slice(&offset.to_le_bytes());
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &edited).unwrap();
        encoder.finish().unwrap()
    };
    let started = std::time::Instant::now();
    let error = decode_nifti_hounsfield(&with_offset(64.0 * 1024.0 * 1024.0 * 1024.0), &limits).unwrap_err();
    assert!(matches!(error, NiftiDecodeError::ExtensionsTooLarge { .. }), "{error}");
    assert_eq!(error.code(), ErrorCode::TooLarge);
    assert!(error.to_string().contains("68719476736"), "{error}");
    // Not a timing assertion: a 64 GiB inflate would take minutes, this is printed for the record.
    println!("64 GiB vox_offset refused after {:?}", started.elapsed());
    let inside = (352 + MAX_EXTENSION_BYTES) as f32;
    let error = decode_nifti_hounsfield(&with_offset(inside), &limits).unwrap_err();
    assert_eq!(error.code(), ErrorCode::CorruptFile, "{error}");
    // NIfTI-2: the offset is an int64 at byte 168.
    let mut nifti2 = include_bytes!("../../tests/fixtures/nifti2_las_4x3x2.nii").to_vec();
    nifti2[168..176].copy_from_slice(&(64i64 << 30).to_le_bytes());
    let error = decode_nifti(&nifti2, &limits).unwrap_err();
    assert!(matches!(error, NiftiDecodeError::ExtensionsTooLarge { .. }), "{error}");
}
