//! The NIfTI reader: `.nii` / `.nii.gz` bytes through the three decoders (f32, uint8 labels, and the
//! ingest path's int16 Hounsfield decode + reorientation to RAS), then the ingest outputs' encoder.
//! An `Err` is a normal outcome; a panic, abort, timeout or an allocation past the RSS limit is a bug.
#![no_main]

use iris_fuzz::{SMALL_LIMITS, ingest_and_encode, show};
use iris_volume::nifti_codec::{DecodeLimits, decode_nifti, decode_nifti_uint8};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits { max_voxels: SMALL_LIMITS.max_voxels };
    let decoded = decode_nifti(data, &limits);
    show(|| format!("decode_nifti: {:?}", decoded.as_ref().map(|d| d.volume.dims()).map_err(|e| e.to_string())));
    let labels = decode_nifti_uint8(data, &limits);
    show(|| {
        let outcome = labels.as_ref().map(|d| d.as_ref().map(|d| d.volume.dims())).map_err(|e| e.to_string());
        format!("decode_nifti_uint8: {outcome:?}")
    });
    ingest_and_encode(data, "upload.nii.gz", &SMALL_LIMITS);
});
