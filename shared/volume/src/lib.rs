//! IRIS Oculus volumes: the volume type and its voxel-to-world geometry (`volume`), NIfTI-1/2
//! reading and NIfTI-1 writing (`nifti_codec`), the document that carries an upload's grid between
//! stages (`ingest_report`), large buffers on huge pages (`memory`) and the synthetic CT phantom
//! (`phantom`). Depends on `iris-core` for error codes only; no I/O beyond what it is handed.

pub mod ingest_report;
pub mod memory;
pub mod nifti_codec;
pub mod phantom;
pub mod volume;

pub use volume::{Affine, Reorientation, Volume, VolumeError};
