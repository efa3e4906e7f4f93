//! The DICOM series assembler: one DICOM file as uploaded as `.dcm` (a single image, or an enhanced
//! multi-frame CT): parsing, geometry checks, pixel decoding (native, JPEG, JPEG-LS, JPEG 2000, RLE),
//! placement on the dicom2nifti grid, then the ingest outputs' encoder.
//! An `Err` is a normal outcome; a panic, abort, timeout or an allocation past the RSS limit is a bug.
#![no_main]

use iris_fuzz::{SMALL_LIMITS, ingest_and_encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ingest_and_encode(data, "upload.dcm", &SMALL_LIMITS));
