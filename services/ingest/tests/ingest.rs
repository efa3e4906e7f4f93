//! Ingest on real and crafted DICOM: geometry equal to dicom2nifti's on the shared series,
//! series selection, every DICOM error code, zip safety, no identifier in the outputs, and the
//! inputs fuzzing found (`fuzz/regressions/`).

use std::path::PathBuf;

use iris_core::ErrorCode;
use iris_ingest::synthetic_dicom::{
    PHI_CANARY, SyntheticSlice, axial_series, oriented_series, small_axial_series, write_multiframe, write_slice,
    zip_series,
};
use iris_ingest::{IngestLimits, Upload, VolumeAssembly, encode_outputs, ingest_upload, ingest_upload_to};

/// Records, per thread, the largest single allocation asked for, so that a test can prove that a
/// few bytes declaring a huge value do not make ingest ask for that memory (the allocation would
/// succeed here, untouched pages cost nothing, so only the request shows the bug).
struct RecordsLargestAllocation;

thread_local! {
    static LARGEST_ALLOCATION: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note_allocation(size: usize) {
    let _ = LARGEST_ALLOCATION.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl std::alloc::GlobalAlloc for RecordsLargestAllocation {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        unsafe { std::alloc::System.realloc(pointer, layout, new_size) }
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: RecordsLargestAllocation = RecordsLargestAllocation;

const LIMITS: IngestLimits = IngestLimits { max_upload_bytes: 1 << 31, max_voxels: 512 * 512 * 2000 };

fn shared_series(test: &str) -> Option<PathBuf> {
    iris_core::testing::shared_data(test, env!("CARGO_MANIFEST_DIR"), "example_ct_dicom")
}

fn zip_directory(directory: &std::path::Path) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut entries: Vec<_> = std::fs::read_dir(directory).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    // Reverse order on purpose: slices are sorted by position, never by file name.
    entries.reverse();
    for path in entries {
        writer
            .start_file(path.file_name().unwrap().to_string_lossy(), zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(&std::fs::read(&path).unwrap()).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[derive(serde::Deserialize)]
struct Reference {
    shape: [usize; 3],
    affine: [[f64; 4]; 4],
    orientation: String,
    samples: Vec<Sample>,
}

#[derive(serde::Deserialize)]
struct Sample {
    index: [usize; 3],
    value: f64,
}

#[test]
fn the_shared_jpeg2000_series_matches_dicom2nifti_voxel_for_voxel_and_in_world_space() {
    let Some(directory) =
        shared_series("the_shared_jpeg2000_series_matches_dicom2nifti_voxel_for_voxel_and_in_world_space")
    else {
        return;
    };
    let reference: Reference =
        serde_json::from_str(include_str!("fixtures/dicom2nifti_example_ct_dicom.json")).expect("fixture");
    let zipped = zip_directory(&directory);
    assert_eq!(written_as_decoded(&zipped, "series.zip"), Ok(VolumeAssembly::PlaneByPlane), "axial: by plane");
    let ingested = ingest_upload(zipped, "series.zip", &LIMITS).expect("ingest the series");
    let report = &ingested.report;
    assert_eq!(report.source_format, "dicom");
    assert_eq!(report.original.dims, reference.shape);
    assert_eq!(report.original.orientation, reference.orientation);
    let dicom = report.dicom.as_ref().expect("DICOM metadata");
    assert_eq!(dicom.transfer_syntax, "1.2.840.10008.1.2.4.90", "JPEG 2000 lossless");
    assert_eq!((dicom.rows, dicom.columns, dicom.slices), (512, 512, 20));
    assert!((dicom.slice_spacing_mm - 2.0).abs() < 1e-6);
    // Every voxel centre at the same world position as dicom2nifti's (the grid is affine, so the
    // eight corners bound every voxel's error).
    let [nx, ny, nz] = reference.shape;
    for corner in 0..8 {
        let index = [
            if corner & 1 == 0 { 0.0 } else { (nx - 1) as f64 },
            if corner & 2 == 0 { 0.0 } else { (ny - 1) as f64 },
            if corner & 4 == 0 { 0.0 } else { (nz - 1) as f64 },
        ];
        let ours = report.original.affine.apply(index);
        for (axis, (ours, row)) in ours.iter().zip(&reference.affine).enumerate() {
            let theirs: f64 = (0..3).map(|c| row[c] * index[c]).sum::<f64>() + row[3];
            assert!((ours - theirs).abs() < 1e-3, "voxel {index:?} axis {axis}: {ours} vs {theirs}");
        }
    }
    // The same values at the same indices (decoding, rescale and slice order).
    let original = report.reorientation.restore(&ingested.canonical, report.original.affine).expect("restore");
    for sample in &reference.samples {
        let [i, j, k] = sample.index;
        assert_eq!(f64::from(*original.get(i, j, k)), sample.value, "voxel {:?}", sample.index);
    }
}

/// Ingests `bytes` through [`ingest_upload_to`], from memory and from a file, and checks that both
/// write exactly the `volume.nii.gz` that [`ingest_upload`] and [`encode_outputs`] give, with the
/// same report, or fail with the same code. Returns how the volume was built, or the error code.
fn written_as_decoded(bytes: &[u8], file_name: &str) -> Result<VolumeAssembly, ErrorCode> {
    let whole = ingest_upload(bytes.to_vec(), file_name, &LIMITS).map(|ingested| {
        let outputs = encode_outputs(&ingested).expect("encode");
        (ingested.report, outputs.volume_nii_gz)
    });
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(file_name);
    std::fs::write(&path, bytes).unwrap();
    let mut assemblies = Vec::new();
    for upload in [Upload::Bytes(bytes.to_vec()), Upload::File(path)] {
        let from = format!("{file_name} from {}", if matches!(upload, Upload::Bytes(_)) { "memory" } else { "a file" });
        let mut written = Vec::new();
        match (ingest_upload_to(upload, file_name, &LIMITS, &mut written), &whole) {
            (Ok((report, assembly)), Ok((whole_report, whole_volume))) => {
                assert_eq!(&report, whole_report, "{from}: report");
                assert!(written == *whole_volume, "{from}: volume.nii.gz differs ({assembly:?})");
                assemblies.push(assembly);
            }
            (Err(error), Err(whole_error)) => {
                assert_eq!(error.code(), whole_error.code(), "{from}: {error} / {whole_error}");
                assert_eq!(error.to_string(), whole_error.to_string(), "{from}");
            }
            (written, whole) => panic!("{from}: {:?} vs {:?}", written.err(), whole.as_ref().err()),
        }
    }
    match whole {
        Ok(_) => {
            assert_eq!(assemblies[0], assemblies[1], "{file_name}: memory and file built it alike");
            Ok(assemblies[0])
        }
        Err(error) => Err(error.code()),
    }
}

fn ingest_zip(
    slices: &[SyntheticSlice],
    extra: &[(&str, Vec<u8>)],
) -> Result<iris_ingest::convert::IngestedVolume, iris_ingest::IngestError> {
    ingest_upload(zip_series(slices, extra).expect("zip"), "upload.zip", &LIMITS)
}

#[test]
fn a_synthetic_series_has_the_geometry_and_values_written() {
    let ingested = ingest_zip(&small_axial_series(|_, _| {}), &[]).expect("ingest");
    let report = &ingested.report;
    assert_eq!(report.original.dims, [10, 8, 6]);
    assert_eq!(report.original.orientation, "LAS", "dicom2nifti's grid");
    assert_eq!(report.dicom.as_ref().unwrap().acquisition_orientation, "LPS");
    let original = report.reorientation.restore(&ingested.canonical, report.original.affine).unwrap();
    // LAS index (i, j, k) is DICOM column i, row 7 - j (posterior→anterior flipped), slice k.
    for (i, j, k) in [(0, 0, 0), (9, 7, 5), (3, 2, 4)] {
        let expected = (i * 10 + (7 - j) * 3 + k) as i16 - 1000;
        assert_eq!(*original.get(i, j, k), expected, "voxel ({i},{j},{k})");
        // World position of that voxel from the DICOM attributes (LPS → RAS).
        let lps = [-30.0 + i as f64 * 0.7, -40.0 + (7 - j) as f64 * 0.8, 100.0 + k as f64 * 2.5];
        let world = report.original.affine.apply([i as f64, j as f64, k as f64]);
        let expected_world = [-lps[0], -lps[1], lps[2]];
        for axis in 0..3 {
            assert!((world[axis] - expected_world[axis]).abs() < 1e-9, "{world:?} vs {expected_world:?}");
        }
    }
}

#[test]
fn the_ct_series_with_the_most_slices_is_taken_and_the_choice_recorded() {
    let mut slices = small_axial_series(|_, _| {});
    slices.extend(axial_series(8, 10, 3, [0.8, 0.7], 2.5, [0.0, 0.0, 0.0], |_, _, _| 0).into_iter().map(|mut s| {
        s.series_number = 2;
        s
    }));
    slices.extend(axial_series(8, 10, 9, [0.8, 0.7], 2.5, [0.0, 0.0, 0.0], |_, _, _| 0).into_iter().map(|mut s| {
        s.series_number = 3;
        s.modality = "MR";
        s
    }));
    let ingested = ingest_zip(&slices, &[("README.txt", b"not dicom".to_vec())]).expect("ingest");
    let dicom = ingested.report.dicom.as_ref().unwrap();
    assert_eq!((dicom.slices, dicom.series_in_upload), (6, 3));
    let notes = ingested.report.notes.join(" | ");
    assert!(notes.contains("CT with 3 images") && notes.contains("MR with 9 images"), "{notes}");
    assert!(notes.contains("1 non-DICOM"), "{notes}");
}

#[test]
fn each_bad_series_fails_with_its_code() {
    let tilted = small_axial_series(|k, s| s.position[1] += k as f64 * 1.0);
    let gap = small_axial_series(|k, s| {
        if k >= 3 {
            s.position[2] += 2.5;
        }
    });
    let mixed = small_axial_series(|k, s| {
        if k == 2 {
            s.orientation = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];
        }
    });
    let duplicate = small_axial_series(|k, s| {
        if k == 1 {
            s.position[2] -= 2.5;
        }
    });
    let mr = small_axial_series(|_, s| s.modality = "MR");
    let no_pixels = small_axial_series(|_, s| s.with_pixels = false);
    let single = small_axial_series(|_, _| {}).into_iter().take(1).collect::<Vec<_>>();
    let cases: Vec<(&str, Vec<SyntheticSlice>, ErrorCode)> = vec![
        ("gantry tilt", tilted, ErrorCode::GantryTilt),
        ("a missing slice", gap, ErrorCode::UnevenSliceSpacing),
        ("mixed orientations", mixed, ErrorCode::InconsistentSeries),
        ("two slices at one position", duplicate, ErrorCode::InconsistentSeries),
        ("MR only", mr, ErrorCode::NoCtSeries),
        ("no pixel data", no_pixels, ErrorCode::NoPixelData),
        ("one slice", single, ErrorCode::NotAVolume),
    ];
    for (name, slices, code) in cases {
        let error = ingest_zip(&slices, &[]).err().unwrap_or_else(|| panic!("{name} was accepted"));
        assert_eq!(error.code(), code, "{name}: {error}");
        assert!(!error.to_string().is_empty());
        assert_eq!(written_as_decoded(&zip_series(&slices, &[]).unwrap(), "series.zip"), Err(code), "{name}");
    }
    let not_a_zip = ingest_upload(b"PK\x03\x04 broken".to_vec(), "broken.zip", &LIMITS).unwrap_err();
    assert_eq!(not_a_zip.code(), ErrorCode::CorruptFile);
    let empty_zip = ingest_zip(&[], &[("notes.txt", b"hello".to_vec())]).unwrap_err();
    assert_eq!(empty_zip.code(), ErrorCode::NoDicomImages);
}

#[test]
fn archive_entries_that_escape_and_zip_bombs_are_refused() {
    let slices = small_axial_series(|_, _| {});
    let escaping = write_slice(&slices[0], 99).unwrap();
    let ingested =
        ingest_zip(&slices, &[("../../etc/evil.dcm", escaping.clone()), ("/abs/evil.dcm", escaping)]).expect("ingest");
    assert_eq!(ingested.report.dicom.as_ref().unwrap().slices, 6, "the escaping entries were not read");
    assert!(
        ingested.report.notes.iter().any(|n| n.contains("ignored 2 archive entries")),
        "{:?}",
        ingested.report.notes
    );

    let bomb = ingest_zip(&slices, &[("zeros.dcm", vec![0u8; 16 << 20])]).unwrap_err();
    assert_eq!(bomb.code(), ErrorCode::TooLarge, "{bomb}");
    let small = IngestLimits { max_upload_bytes: 1 << 31, max_voxels: 100 };
    let too_many_voxels = ingest_upload(zip_series(&slices, &[]).unwrap(), "series.zip", &small).unwrap_err();
    assert_eq!(too_many_voxels.code(), ErrorCode::TooLarge);
}

#[test]
fn no_patient_identifier_reaches_the_ingest_report() {
    let slices = small_axial_series(|_, _| {});
    let raw = write_slice(&slices[0], 1).unwrap();
    assert!(raw.windows(PHI_CANARY.len()).any(|w| w == PHI_CANARY.as_bytes()), "the DICOM files carry the canary");
    let upload = zip_series(&slices, &[]).unwrap();
    let ingested = ingest_upload(upload, "canary.zip", &LIMITS).expect("ingest");
    let outputs = encode_outputs(&ingested).expect("encode");
    let report = String::from_utf8(outputs.report_json).unwrap();
    assert!(!report.contains(PHI_CANARY), "canary in ingest.json: {report}");
    assert!(!report.contains("1.2.826.0.1.3680043.10.999"), "a UID in ingest.json");
    let volume = outputs.volume_nii_gz;
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&volume[..]), &mut decoded).unwrap();
    assert!(!decoded.windows(PHI_CANARY.len()).any(|w| w == PHI_CANARY.as_bytes()), "canary in volume.nii.gz");
}

/// Series encoded by pydicom in other transfer syntaxes (fixtures/transfer-syntaxes/README.md).
#[test]
fn series_in_each_transfer_syntax_decode_to_the_same_values_or_fail_with_a_code() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transfer-syntaxes");
    let expected_hu = |i: usize, j: usize, k: usize| (-1000 + 37 * i as i32 + 101 * j as i32 + 503 * k as i32) as i16;
    // (folder, transfer syntax, largest error in HU allowed: 0 for lossless)
    for (folder, uid, tolerance) in [
        ("implicit-little-endian", "1.2.840.10008.1.2", 0),
        ("deflated-explicit-little-endian", "1.2.840.10008.1.2.1.99", 0),
        ("rle-lossless", "1.2.840.10008.1.2.5", 0),
        ("jpeg-ls-lossless", "1.2.840.10008.1.2.4.80", 0),
        ("jpeg-lossless", "1.2.840.10008.1.2.4.57", 0),
        ("jpeg-lossless-sv1", "1.2.840.10008.1.2.4.70", 0),
        ("jpeg2000-lossless", "1.2.840.10008.1.2.4.90", 0),
        // 8-bit JPEG stores (HU + 1024) / 10 (RescaleSlope 10): rounding to 10 HU plus JPEG's loss.
        ("jpeg-baseline", "1.2.840.10008.1.2.4.50", 25),
        ("jpeg2000", "1.2.840.10008.1.2.4.91", 25),
    ] {
        let zipped = zip_directory(&root.join(folder));
        assert_eq!(written_as_decoded(&zipped, "series.zip"), Ok(VolumeAssembly::PlaneByPlane), "{folder}");
        let ingested = ingest_upload(zipped, "series.zip", &LIMITS).unwrap_or_else(|e| panic!("{folder}: {e}"));
        let report = &ingested.report;
        assert_eq!(report.dicom.as_ref().unwrap().transfer_syntax, uid, "{folder}");
        assert_eq!(report.original.dims, [10, 12, 3], "{folder}");
        let lossy_noted = report.notes.iter().any(|note| note.contains("lossy"));
        assert_eq!(lossy_noted, tolerance > 0, "{folder}: notes {:?}", report.notes);
        let original = report.reorientation.restore(&ingested.canonical, report.original.affine).unwrap();
        // dicom2nifti's LAS grid flips DICOM rows: LAS (i, j, k) is column i, row 11 - j.
        let mut worst = 0;
        for (i, j, k) in (0..10).flat_map(|i| (0..12).flat_map(move |j| (0..3).map(move |k| (i, j, k)))) {
            let error = (i32::from(*original.get(i, j, k)) - i32::from(expected_hu(i, 11 - j, k))).abs();
            worst = worst.max(error);
        }
        assert!(worst <= tolerance, "{folder}: largest error {worst} HU, allowed {tolerance}");
    }
    // MPEG-2 video is not an image codec the pipeline decodes.
    let mpeg2_zip = zip_directory(&root.join("mpeg2-unsupported"));
    // Found while decoding the planes, after the header is written: the same code either way.
    assert_eq!(written_as_decoded(&mpeg2_zip, "series.zip"), Err(ErrorCode::UnsupportedTransferSyntax));
    let mpeg2 = ingest_upload(mpeg2_zip, "series.zip", &LIMITS).unwrap_err();
    assert_eq!(mpeg2.code(), ErrorCode::UnsupportedTransferSyntax, "{mpeg2}");
    assert!(mpeg2.to_string().contains("1.2.840.10008.1.2.4.100"), "{mpeg2}");
}

/// Every voxel of the result, traced back to the DICOM pixel it came from (values are unique
/// per pixel), sits at that pixel's world position from ImagePositionPatient,
/// ImageOrientationPatient and PixelSpacing (LPS → RAS), for axial, coronal, sagittal and flipped
/// orientations, from a zip of slices (in shuffled order) and from one multi-frame file.
#[test]
fn every_voxel_lands_at_its_dicom_world_position_for_any_orientation_zip_or_multiframe() {
    let (rows, columns, slices) = (5usize, 7usize, 4usize);
    let value = |i: usize, j: usize, k: usize| (i + 10 * j + 100 * k) as i16 - 1000;
    let orientations: [(&str, [f64; 6]); 6] = [
        ("axial", [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        ("axial, rows flipped", [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        ("axial, columns flipped", [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]),
        ("coronal", [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]),
        ("sagittal", [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]),
        ("sagittal, transposed", [0.0, 0.0, -1.0, 0.0, 1.0, 0.0]),
    ];
    for (name, orientation) in orientations {
        let series = oriented_series(orientation, rows, columns, slices, [0.9, 0.6], 2.0, [10.0, -20.0, 30.0], value);
        let mut shuffled = series.clone();
        shuffled.swap(0, 2);
        shuffled.reverse();
        let zipped = zip_series(&shuffled, &[]).unwrap();
        let multiframe = write_multiframe(&shuffled).unwrap();
        // Axial series are written plane by plane; coronal, sagittal and multi-frame ones whole.
        let by_plane =
            if name.starts_with("axial") { VolumeAssembly::PlaneByPlane } else { VolumeAssembly::WholeVolume };
        assert_eq!(written_as_decoded(&zipped, "series.zip"), Ok(by_plane), "{name}");
        assert_eq!(written_as_decoded(&multiframe, "enhanced.dcm"), Ok(VolumeAssembly::WholeVolume), "{name}");
        let from_zip = ingest_upload(zipped, "series.zip", &LIMITS).unwrap_or_else(|e| panic!("{name}: {e}"));
        let from_file =
            ingest_upload(multiframe, "enhanced.dcm", &LIMITS).unwrap_or_else(|e| panic!("{name} (multi-frame): {e}"));
        assert_eq!(from_zip.canonical, from_file.canonical, "{name}: zip and multi-frame differ");
        assert_eq!(from_zip.report.original, from_file.report.original, "{name}");
        assert_eq!(from_zip.report.original.orientation.as_bytes()[0], b'L', "{name}: dicom2nifti's grid is L..");
        let canonical = &from_zip.canonical;
        let [nx, ny, nz] = canonical.dims();
        assert_eq!(nx * ny * nz, rows * columns * slices, "{name}");
        let mut seen = std::collections::HashSet::new();
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let v = i32::from(*canonical.get(x, y, z)) + 1000;
                    let (i, j, k) = ((v % 10) as usize, (v / 10 % 10) as usize, (v / 100) as usize);
                    assert!(i < columns && j < rows && k < slices && seen.insert(v), "{name}: value {v}");
                    let row = [orientation[0], orientation[1], orientation[2]];
                    let column = [orientation[3], orientation[4], orientation[5]];
                    let position = series[k].position;
                    let lps = [0, 1, 2].map(|a| position[a] + i as f64 * 0.6 * row[a] + j as f64 * 0.9 * column[a]);
                    let world = canonical.affine().apply([x as f64, y as f64, z as f64]);
                    let expected = [-lps[0], -lps[1], lps[2]];
                    for axis in 0..3 {
                        assert!(
                            (world[axis] - expected[axis]).abs() < 1e-6,
                            "{name}: voxel ({x},{y},{z}) at {world:?}, pixel ({i},{j},{k}) at {expected:?}"
                        );
                    }
                }
            }
        }
    }
}

/// Every input kept under `fuzz/regressions/dicom_file/` (see its README: each once crashed the
/// `dicom_file` fuzz target, by a panic or by asking for gigabytes) is refused as `corrupt_file`,
/// without a panic and without asking for more than 64 MiB at once on this thread.
#[test]
fn inputs_that_crashed_the_fuzzer_are_refused_as_corrupt_without_large_allocations() {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/dicom_file");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .expect("fuzz/regressions/dicom_file")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "dcm"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "expected the committed regressions in {}", directory.display());
    let mut problems = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        LARGEST_ALLOCATION.with(|largest| largest.set(0));
        let outcome = std::panic::catch_unwind(|| ingest_upload(bytes, "upload.dcm", &LIMITS));
        let largest = LARGEST_ALLOCATION.with(|largest| largest.get());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        match outcome {
            Ok(Err(error)) if error.code() != ErrorCode::CorruptFile => {
                problems.push(format!("{name}: {}: {error}", error.code()))
            }
            Ok(Err(_)) => {}
            Ok(Ok(ingested)) => problems.push(format!("{name}: accepted as a {:?} volume", ingested.canonical.dims())),
            Err(_) => problems.push(format!("{name}: ingest panicked")),
        }
        if largest >= 64 << 20 {
            problems.push(format!("{name}: asked for {largest} bytes at once"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A series long enough for several gzip members (64 × 64 planes: 128 to a member), so for
/// batches of them on two threads, in shuffled order, is written plane by plane with the bytes and
/// the report of the whole-volume path; its NIfTI output (int16, RAS), ingested again, is read in
/// file order, also over several batches of members.
#[test]
fn a_long_series_is_written_plane_by_plane_with_the_bytes_of_the_whole_volume_path() {
    let mut slices = axial_series(64, 64, 300, [0.7, 0.7], 1.0, [5.0, -3.0, -80.0], |i, j, k| {
        ((i * 31 + j * 17 + k * 7) % 2500) as i16 - 1024
    });
    slices.swap(10, 250);
    let zipped = zip_series(&slices, &[]).unwrap();
    assert_eq!(written_as_decoded(&zipped, "long.zip"), Ok(VolumeAssembly::PlaneByPlane));
    let nifti = encode_outputs(&ingest_upload(zipped, "long.zip", &LIMITS).unwrap()).unwrap().volume_nii_gz;
    assert_eq!(written_as_decoded(&nifti, "volume.nii.gz"), Ok(VolumeAssembly::InFileOrder));
}

/// An int16 NIfTI in each of the 48 axis orientations, and in other encodings, is written by
/// [`ingest_upload_to`] with the bytes and report of the whole-volume path: in file order when
/// its planes stay the canonical z-planes unflipped (the 8 orientations with the third voxel axis
/// running superior, any in-plane flips or swap), whole otherwise; damaged files fail with the
/// same code either way.
#[test]
fn nifti_in_any_orientation_is_written_in_file_order_or_whole_with_the_same_bytes() {
    use iris_volume::nifti_codec::{NiftiGeometry, encode_nifti_gz};
    use iris_volume::volume::{Affine, Volume};
    let dims = [6, 5, 40];
    let values: Vec<i16> = (0..dims.iter().product::<usize>()).map(|n| (n % 3001) as i16 - 1024).collect();
    let permutations = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    let mut in_file_order = 0;
    for permutation in permutations {
        for signs in 0..8 {
            // Voxel axis v runs along world axis permutation[v], backwards where its sign bit is set.
            let mut m = [[0.0; 4]; 4];
            for voxel in 0..3 {
                let sign = if signs & (1 << voxel) == 0 { 1.0 } else { -1.0 };
                m[permutation[voxel]][voxel] = sign * [0.7, 0.9, 2.5][voxel];
            }
            m[3] = [0.0, 0.0, 0.0, 1.0];
            (m[0][3], m[1][3], m[2][3]) = (12.5, -30.25, 7.0);
            let volume = Volume::new(dims, Affine(m), values.clone()).unwrap();
            let nifti = encode_nifti_gz(&volume, &NiftiGeometry::from_affine(dims, volume.affine())).unwrap();
            let name = format!("{permutation:?} signs {signs:03b}");
            let assembly = written_as_decoded(&nifti, "ct.nii.gz").unwrap_or_else(|code| panic!("{name}: {code}"));
            let keeps_planes = permutation[2] == 2 && signs & 4 == 0;
            let expected = if keeps_planes { VolumeAssembly::InFileOrder } else { VolumeAssembly::WholeVolume };
            assert_eq!(assembly, expected, "{name}");
            in_file_order += usize::from(keeps_planes);
        }
    }
    assert_eq!(in_file_order, 8);
    // float32 and scaled files are decoded whole; damaged ones fail alike.
    let lps = Affine([[-0.7, 0.0, 0.0, 10.0], [0.0, -0.9, 0.0, 20.0], [0.0, 0.0, 2.5, -5.0], [0.0, 0.0, 0.0, 1.0]]);
    let floats = Volume::new(dims, lps, values.iter().map(|v| f32::from(*v) + 0.25).collect::<Vec<f32>>()).unwrap();
    let float_nifti = encode_nifti_gz(&floats, &NiftiGeometry::from_affine(dims, &lps)).unwrap();
    assert_eq!(written_as_decoded(&float_nifti, "ct.nii.gz"), Ok(VolumeAssembly::WholeVolume));
    let good =
        encode_nifti_gz(&Volume::new(dims, lps, values.clone()).unwrap(), &NiftiGeometry::from_affine(dims, &lps))
            .unwrap();
    assert_eq!(written_as_decoded(&good, "ct.nii.gz"), Ok(VolumeAssembly::InFileOrder));
    // A negative dim, read as 65,482, over too little data: found truncated, as by the whole
    // path, not as a header that cannot be written (found by the bad-input corpus).
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&good[..]), &mut raw).unwrap();
    raw[44..46].copy_from_slice(&(-54i16).to_le_bytes());
    assert_eq!(written_as_decoded(&raw, "ct.nii"), Err(ErrorCode::CorruptFile), "negative dim");
    let truncated = &good[..good.len() / 2];
    assert_eq!(written_as_decoded(truncated, "ct.nii.gz"), Err(ErrorCode::CorruptFile), "truncated");
    let mut wrong_crc = good.clone();
    let crc_at = wrong_crc.len() - 8;
    wrong_crc[crc_at] ^= 0xff;
    assert_eq!(written_as_decoded(&wrong_crc, "ct.nii.gz"), Err(ErrorCode::CorruptFile), "wrong CRC");
}

/// Work past the processing limit stops: once the message's token is cancelled, ingest's readers
/// of the upload (the NIfTI inflater, the zip archive) fail at their next read, so a decode on a
/// blocking thread does not run on after its job failed `timed_out` (iris_core::cancel).
#[test]
fn a_cancelled_ingest_stops_at_its_next_read_of_the_upload() {
    use iris_core::cancel::{CancellationToken, run_cancellable};
    use iris_volume::nifti_codec::{NiftiGeometry, encode_nifti_gz};
    use iris_volume::volume::{Affine, Volume};
    let dims = [32, 32, 24];
    let ras = Affine([[0.8, 0.0, 0.0, 0.0], [0.0, 0.8, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]]);
    let values: Vec<i16> = (0..dims.iter().product::<usize>()).map(|n| (n % 2000) as i16 - 1000).collect();
    let nifti = encode_nifti_gz(&Volume::new(dims, ras, values).unwrap(), &NiftiGeometry::from_affine(dims, &ras))
        .expect("encode");
    let zip = zip_series(&small_axial_series(|_, _| {}), &[]).expect("zip");
    for (bytes, name) in [(nifti, "ct.nii.gz"), (zip, "series.zip")] {
        let token = CancellationToken::new();
        let ingest = |token: CancellationToken| {
            run_cancellable(token, || ingest_upload_to(Upload::Bytes(bytes.clone()), name, &LIMITS, &mut Vec::new()))
        };
        assert!(ingest(token.clone()).is_ok(), "{name}: not cancelled, it ingests");
        token.cancel();
        let error = ingest(token).expect_err("cancelled, it stops");
        assert!(error.to_string().contains("cancelled"), "{name}: {error}");
    }
}
