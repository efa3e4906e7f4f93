//! Encoding: gzip-compressed NIfTI-1, one gzip member per run of whole z-planes, so that a writer
//! never needs the whole volume and every writer gives the same bytes.

use rayon::prelude::*;

use super::{NiftiEncodeError, NiftiGeometry};
use crate::volume::Volume;

/// Writes `volume` as gzip-compressed NIfTI-1 with `geometry`'s header fields: the in-memory
/// form of [`write_nifti_gz`], whose bytes it returns.
pub fn encode_nifti_gz<T>(volume: &Volume<T>, geometry: &NiftiGeometry) -> Result<Vec<u8>, NiftiEncodeError>
where
    T: nifti::DataElement + bytemuck::Pod + Send + Sync,
{
    let mut out = Vec::with_capacity(volume.voxel_count() * std::mem::size_of::<T>() / 2);
    write_nifti_gz(volume, geometry, &mut out)?;
    Ok(out)
}

/// Writes `volume` to `sink` as gzip-compressed NIfTI-1 with `geometry`'s header fields:
/// [`write_nifti_gz_by_planes`] over a volume in memory (see there for the format).
pub fn write_nifti_gz<T>(
    volume: &Volume<T>,
    geometry: &NiftiGeometry,
    sink: &mut dyn std::io::Write,
) -> Result<(), NiftiEncodeError>
where
    T: nifti::DataElement + bytemuck::Pod + Send + Sync,
{
    if geometry.dims != volume.dims() {
        return Err(NiftiEncodeError::Write(format!(
            "geometry {:?} does not match volume {:?}",
            geometry.dims,
            volume.dims()
        )));
    }
    let plane = geometry.dims[0] * geometry.dims[1];
    write_nifti_gz_by_planes(geometry, sink, |planes: std::ops::Range<usize>, values: &mut [T]| {
        values.copy_from_slice(&volume.voxels()[planes.start * plane..planes.end * plane]);
        Ok::<(), NiftiEncodeError>(())
    })
}

/// Largest uncompressed size of one gzip member of a written volume (at least one whole plane).
pub const GZIP_MEMBER_TARGET_BYTES: usize = 1 << 20;

/// Writes a gzip-compressed NIfTI-1 volume to `sink` without ever holding the volume: `fill` is
/// asked for the voxels of a run of whole z-planes (`planes`, in NIfTI order: x fastest) and
/// writes them into `values` (exactly `planes.len()` planes long).
///
/// The file is a multi-member gzip (as pigz writes; every gzip reader reads it): one member for
/// the 352 header bytes (from the nifti crate, see [`nifti1_header_bytes`]), then one per run of
/// whole planes, as many planes as fit in [`GZIP_MEMBER_TARGET_BYTES`] (at least one). Members
/// are filled and compressed by libdeflate at level 1 (its fastest level above "store": on CT
/// about twice zlib's level-1 speed and 30 % smaller) as many at a time as there are threads,
/// and appended in order, so besides the sink only one batch of members is in memory (about
/// 2 MiB a thread). Member boundaries depend only on the dims, and libdeflate writes no
/// timestamp: the bytes are the same on any number of threads, whoever calls it.
pub fn write_nifti_gz_by_planes<T, E>(
    geometry: &NiftiGeometry,
    sink: &mut dyn std::io::Write,
    fill: impl Fn(std::ops::Range<usize>, &mut [T]) -> Result<(), E> + Sync,
) -> Result<(), E>
where
    T: nifti::DataElement + bytemuck::Pod + Send + Sync,
    E: From<NiftiEncodeError> + Send,
{
    write_header_member::<T>(geometry, sink)?;
    let plane = geometry.dims[0] * geometry.dims[1];
    for batch in member_planes::<T>(geometry.dims).chunks(rayon::current_num_threads().max(1)) {
        let compressed: Vec<Result<Vec<u8>, E>> = batch
            .par_iter()
            .map(|planes| {
                let mut values = vec![T::zeroed(); planes.len() * plane];
                fill(planes.clone(), &mut values)?;
                Ok(compress_member(&mut values)?)
            })
            .collect();
        for member in compressed {
            write_member(sink, &member?)?;
        }
    }
    Ok(())
}

/// [`write_nifti_gz_by_planes`] for a source read in order (a decompressing reader): `next` is
/// called for every member's planes in turn, on one thread, while the members before are
/// compressed on the others. The same bytes as [`write_nifti_gz_by_planes`].
pub fn write_nifti_gz_in_order<T, E>(
    geometry: &NiftiGeometry,
    sink: &mut dyn std::io::Write,
    mut next: impl FnMut(std::ops::Range<usize>, &mut [T]) -> Result<(), E> + Send,
) -> Result<(), E>
where
    T: nifti::DataElement + bytemuck::Pod + Send + Sync,
    E: From<NiftiEncodeError> + Send,
{
    write_header_member::<T>(geometry, sink)?;
    let plane = geometry.dims[0] * geometry.dims[1];
    // Two sets of member buffers take turns (one is read into while the other is compressed), so
    // no fresh memory is touched after the first two batches.
    let (mut filled, mut spare): (Vec<Vec<T>>, Vec<Vec<T>>) = (Vec::new(), Vec::new());
    for batch in member_planes::<T>(geometry.dims).chunks(rayon::current_num_threads().max(1)) {
        let mut buffers = std::mem::take(&mut spare);
        buffers.resize_with(batch.len(), Vec::new);
        let (read, compressed) = rayon::join(
            || -> Result<Vec<Vec<T>>, E> {
                for (planes, values) in batch.iter().zip(buffers.iter_mut()) {
                    values.resize(planes.len() * plane, T::zeroed());
                    next(planes.clone(), values)?;
                }
                Ok(buffers)
            },
            || filled.par_iter_mut().map(|values| compress_member(values)).collect::<Vec<_>>(),
        );
        for member in compressed {
            write_member(sink, &member?)?;
        }
        spare = std::mem::replace(&mut filled, read?);
    }
    for member in filled.par_iter_mut().map(|values| compress_member(values)).collect::<Vec<_>>() {
        write_member(sink, &member?)?;
    }
    Ok(())
}

/// The runs of z-planes each gzip member holds: as many whole planes as fit in
/// [`GZIP_MEMBER_TARGET_BYTES`], at least one.
fn member_planes<T>(dims: [usize; 3]) -> Vec<std::ops::Range<usize>> {
    let plane_bytes = dims[0] * dims[1] * std::mem::size_of::<T>();
    let planes_per_member = (GZIP_MEMBER_TARGET_BYTES / plane_bytes.max(1)).max(1);
    (0..dims[2]).step_by(planes_per_member).map(|start| start..(start + planes_per_member).min(dims[2])).collect()
}

fn write_header_member<T>(geometry: &NiftiGeometry, sink: &mut dyn std::io::Write) -> Result<(), NiftiEncodeError>
where
    T: nifti::DataElement + bytemuck::Pod,
{
    let header = nifti1_header_bytes::<T>(geometry)?;
    write_member(sink, &gzip_member(&header).map_err(|e| NiftiEncodeError::Write(e.to_string()))?)
}

fn write_member(sink: &mut dyn std::io::Write, member: &[u8]) -> Result<(), NiftiEncodeError> {
    sink.write_all(member).map_err(|e| NiftiEncodeError::Write(e.to_string()))
}

/// One member of voxel values: NIfTI files are little-endian, so on a big-endian host the values
/// are swapped first (in place).
fn compress_member<T: bytemuck::Pod>(values: &mut [T]) -> Result<Vec<u8>, NiftiEncodeError> {
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(values);
    if cfg!(target_endian = "big") {
        bytes.chunks_exact_mut(std::mem::size_of::<T>()).for_each(<[u8]>::reverse);
    }
    gzip_member(bytes).map_err(|e| NiftiEncodeError::Write(e.to_string()))
}

/// The 352 bytes before the voxels of a single-file NIfTI-1 (the 348-byte header and the
/// extension flag) for `geometry` and voxel type `T`, little-endian. The nifti crate writes them:
/// it writes whole files only, so it writes a one-voxel file with the same header fields to a
/// private temporary file, and the three spatial `dim` entries (the only fields that depend on the
/// data's shape) are then set to the volume's.
pub fn nifti1_header_bytes<T>(geometry: &NiftiGeometry) -> Result<Vec<u8>, NiftiEncodeError>
where
    T: nifti::DataElement + bytemuck::Pod,
{
    let write_error = |e: &dyn std::fmt::Display| NiftiEncodeError::Write(e.to_string());
    let mut dims_field = [0u8; 8];
    for (index, value) in [3usize, geometry.dims[0], geometry.dims[1], geometry.dims[2]].into_iter().enumerate() {
        let value = i16::try_from(value)
            .map_err(|_| NiftiEncodeError::Write(format!("dimension {value} does not fit NIfTI-1's 16 bits")))?;
        dims_field[index * 2..index * 2 + 2].copy_from_slice(&value.to_le_bytes());
    }
    let header = geometry.to_header();
    let one = [T::zeroed()];
    let array = ndarray::ArrayView3::from_shape((1, 1, 1), &one[..]).map_err(|e| write_error(&e))?;
    let directory = tempfile::tempdir().map_err(|e| write_error(&e))?;
    let path = directory.path().join("header.nii");
    nifti::writer::WriterOptions::new(&path)
        .reference_header(&header)
        .write_nifti(&array)
        .map_err(|e| write_error(&e))?;
    let mut bytes = std::fs::read(&path).map_err(|e| write_error(&e))?;
    if bytes.len() < NIFTI1_VOX_OFFSET + std::mem::size_of::<T>() || bytes[..4] != 348i32.to_le_bytes() {
        return Err(NiftiEncodeError::Write("the nifti crate wrote an unexpected header".to_owned()));
    }
    bytes.truncate(NIFTI1_VOX_OFFSET);
    // `dim` is short[8] at byte 40: dim[0] (rank) and dim[1..=3]; dim[4..] stay 1.
    bytes[40..48].copy_from_slice(&dims_field);
    Ok(bytes)
}

/// Where a single-file NIfTI-1's voxels start: after the header and the 4-byte extension flag.
const NIFTI1_VOX_OFFSET: usize = 352;

fn gzip_member(chunk: &[u8]) -> std::io::Result<Vec<u8>> {
    let level = libdeflater::CompressionLvl::new(1).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut compressor = libdeflater::Compressor::new(level);
    let mut member = vec![0u8; compressor.gzip_compress_bound(chunk.len())];
    let written = compressor.gzip_compress(chunk, &mut member).map_err(std::io::Error::other)?;
    member.truncate(written);
    Ok(member)
}
