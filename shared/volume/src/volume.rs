//! Volumes on a voxel grid with a voxel-to-world affine (RAS, millimetres), and the
//! axis permutations and flips that bring a volume to canonical RAS orientation and back.
//!
//! Voxels are stored in NIfTI order: the first axis varies fastest (`index = i + nx*(j + ny*k)`).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A 3-D scalar volume. Invariant: `voxels.len() == dims[0] * dims[1] * dims[2]`, every dim ≥ 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T> {
    dims: [usize; 3],
    affine: Affine,
    voxels: Vec<T>,
}

/// Voxel index (i, j, k) → world RAS millimetres, as a 4×4 row-major matrix whose last row is 0 0 0 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Affine(pub [[f64; 4]; 4]);

/// For each voxel axis of a volume: which world axis (0 = R, 1 = A, 2 = S) it runs along, and
/// whether increasing the voxel index moves towards the negative end of that world axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AxisOrientation {
    pub world_axis: usize,
    pub flipped: bool,
}

/// The permutation and flips that take a volume on its original grid to canonical RAS
/// (voxel axis i runs along world axis i, increasing index = increasing R, A, S).
/// Applying it and then [`Reorientation::restore`] gives back the original voxels exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reorientation {
    pub original_dims: [usize; 3],
    pub axes: [AxisOrientation; 3],
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VolumeError {
    #[error("volume has {actual} voxels but its dimensions {dims:?} need {expected}")]
    LengthMismatch { dims: [usize; 3], expected: usize, actual: usize },
    #[error("volume dimensions {dims:?} must all be at least 1")]
    EmptyDimension { dims: [usize; 3] },
    #[error("voxel-to-world affine is singular or not finite; the voxel axes do not span 3-D space")]
    DegenerateAffine,
}

impl<T> Volume<T> {
    pub fn new(dims: [usize; 3], affine: Affine, voxels: Vec<T>) -> Result<Self, VolumeError> {
        if dims.contains(&0) {
            return Err(VolumeError::EmptyDimension { dims });
        }
        let expected = dims[0] * dims[1] * dims[2];
        if voxels.len() != expected {
            return Err(VolumeError::LengthMismatch { dims, expected, actual: voxels.len() });
        }
        Ok(Volume { dims, affine, voxels })
    }

    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    pub fn voxels(&self) -> &[T] {
        &self.voxels
    }

    pub fn into_voxels(self) -> Vec<T> {
        self.voxels
    }

    pub fn voxel_count(&self) -> usize {
        self.voxels.len()
    }

    /// Linear index of voxel (i, j, k). Precondition: each index is inside `dims`.
    #[inline]
    pub fn linear_index(&self, i: usize, j: usize, k: usize) -> usize {
        i + self.dims[0] * (j + self.dims[1] * k)
    }

    #[inline]
    pub fn get(&self, i: usize, j: usize, k: usize) -> &T {
        &self.voxels[self.linear_index(i, j, k)]
    }

    /// Spacing of each voxel axis in millimetres (the norms of the affine's columns).
    pub fn spacing(&self) -> [f64; 3] {
        self.affine.spacing()
    }

    /// Volume of one voxel in millilitres.
    pub fn voxel_volume_ml(&self) -> f64 {
        self.affine.linear_determinant().abs() / 1000.0
    }

    /// A volume of the same grid holding other values.
    pub fn with_voxels<U>(&self, voxels: Vec<U>) -> Result<Volume<U>, VolumeError> {
        Volume::new(self.dims, self.affine, voxels)
    }

    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> Volume<U> {
        Volume { dims: self.dims, affine: self.affine, voxels: self.voxels.iter().map(f).collect() }
    }
}

impl Affine {
    pub fn identity() -> Self {
        Affine([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    }

    /// World position of a (possibly fractional) voxel coordinate.
    #[inline]
    pub fn apply(&self, point: [f64; 3]) -> [f64; 3] {
        let m = &self.0;
        [
            m[0][0] * point[0] + m[0][1] * point[1] + m[0][2] * point[2] + m[0][3],
            m[1][0] * point[0] + m[1][1] * point[1] + m[1][2] * point[2] + m[1][3],
            m[2][0] * point[0] + m[2][1] * point[1] + m[2][2] * point[2] + m[2][3],
        ]
    }

    pub fn spacing(&self) -> [f64; 3] {
        let m = &self.0;
        [0, 1, 2].map(|c| (m[0][c] * m[0][c] + m[1][c] * m[1][c] + m[2][c] * m[2][c]).sqrt())
    }

    /// Determinant of the 3×3 linear part; negative for a left-handed voxel grid (e.g. LAS).
    pub fn linear_determinant(&self) -> f64 {
        let m = &self.0;
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    }

    /// Matrix product `self · other`.
    pub fn compose(&self, other: &Affine) -> Affine {
        let mut out = [[0.0; 4]; 4];
        for (r, row) in out.iter_mut().enumerate() {
            for (c, value) in row.iter_mut().enumerate() {
                *value = (0..4).map(|k| self.0[r][k] * other.0[k][c]).sum();
            }
        }
        Affine(out)
    }

    pub fn is_usable(&self) -> bool {
        self.0.iter().flatten().all(|v| v.is_finite()) && self.linear_determinant().abs() > 1e-12
    }

    /// The orientation of each voxel axis: the world axis it is closest to and its direction.
    /// Axes are assigned greedily by the largest absolute direction cosine, so oblique grids get
    /// the nearest orthogonal orientation (as nibabel's `io_orientation` does for near-axial data).
    pub fn axis_orientations(&self) -> Result<[AxisOrientation; 3], VolumeError> {
        if !self.is_usable() {
            return Err(VolumeError::DegenerateAffine);
        }
        let spacing = self.spacing();
        let cosine = |world: usize, voxel: usize| self.0[world][voxel] / spacing[voxel];
        let mut taken_world = [false; 3];
        let mut taken_voxel = [false; 3];
        let mut result = [AxisOrientation { world_axis: 0, flipped: false }; 3];
        for _ in 0..3 {
            let mut best: Option<(usize, usize, f64)> = None;
            for voxel in (0..3).filter(|v| !taken_voxel[*v]) {
                for world in (0..3).filter(|w| !taken_world[*w]) {
                    let value = cosine(world, voxel);
                    if best.is_none_or(|(_, _, b)| value.abs() > b.abs()) {
                        best = Some((voxel, world, value));
                    }
                }
            }
            let (voxel, world, value) = best.ok_or(VolumeError::DegenerateAffine)?;
            taken_voxel[voxel] = true;
            taken_world[world] = true;
            result[voxel] = AxisOrientation { world_axis: world, flipped: value < 0.0 };
        }
        Ok(result)
    }

    /// Three-letter orientation code such as "RAS", "LPS" or "LAS" (the direction each voxel
    /// axis points to, as nibabel's `aff2axcodes`).
    pub fn orientation_code(&self) -> Result<String, VolumeError> {
        const POSITIVE: [char; 3] = ['R', 'A', 'S'];
        const NEGATIVE: [char; 3] = ['L', 'P', 'I'];
        Ok(self
            .axis_orientations()?
            .iter()
            .map(|a| if a.flipped { NEGATIVE[a.world_axis] } else { POSITIVE[a.world_axis] })
            .collect())
    }
}

impl Reorientation {
    /// The reorientation that brings a volume with this grid to canonical RAS.
    pub fn to_canonical(dims: [usize; 3], affine: &Affine) -> Result<Self, VolumeError> {
        Ok(Reorientation { original_dims: dims, axes: affine.axis_orientations()? })
    }

    pub fn is_identity(&self) -> bool {
        self.axes.iter().enumerate().all(|(voxel, a)| a.world_axis == voxel && !a.flipped)
    }

    pub fn canonical_dims(&self) -> [usize; 3] {
        let mut dims = [0; 3];
        for (voxel, axis) in self.axes.iter().enumerate() {
            dims[axis.world_axis] = self.original_dims[voxel];
        }
        dims
    }

    /// The canonical grid's affine, for a volume on the original grid with `original` as its affine.
    pub fn canonical_affine(&self, original: &Affine) -> Affine {
        original.compose(&self.canonical_to_original_index())
    }

    /// Matrix taking a canonical voxel index to the original voxel index.
    fn canonical_to_original_index(&self) -> Affine {
        let mut m = [[0.0; 4]; 4];
        m[3][3] = 1.0;
        for (voxel, axis) in self.axes.iter().enumerate() {
            if axis.flipped {
                m[voxel][axis.world_axis] = -1.0;
                m[voxel][3] = (self.original_dims[voxel] - 1) as f64;
            } else {
                m[voxel][axis.world_axis] = 1.0;
            }
        }
        Affine(m)
    }

    /// For each canonical linear index, the original linear index it takes its voxel from.
    fn source_index_steps(&self) -> ([isize; 3], isize) {
        // original linear index = base + sum over canonical axes c of step[c] * canonical_index[c]
        let original_strides =
            [1isize, self.original_dims[0] as isize, (self.original_dims[0] * self.original_dims[1]) as isize];
        let mut steps = [0isize; 3];
        let mut base = 0isize;
        for (voxel, axis) in self.axes.iter().enumerate() {
            if axis.flipped {
                steps[axis.world_axis] = -original_strides[voxel];
                base += (self.original_dims[voxel] as isize - 1) * original_strides[voxel];
            } else {
                steps[axis.world_axis] = original_strides[voxel];
            }
        }
        (steps, base)
    }

    /// Canonical RAS copy of a volume on the original grid (permutation and flips only: exact).
    pub fn apply<T: Copy>(&self, original: &Volume<T>) -> Result<Volume<T>, VolumeError> {
        debug_assert_eq!(original.dims, self.original_dims);
        let dims = self.canonical_dims();
        let (steps, base) = self.source_index_steps();
        let source = original.voxels();
        let mut voxels = Vec::with_capacity(original.voxel_count());
        let length = dims[0] as isize;
        for k in 0..dims[2] as isize {
            for j in 0..dims[1] as isize {
                let row = base + j * steps[1] + k * steps[2];
                // Rows along the original first axis are contiguous: copied (or reversed) whole.
                match steps[0] {
                    1 => voxels.extend_from_slice(&source[row as usize..(row + length) as usize]),
                    -1 => voxels.extend(source[(row - length + 1) as usize..=row as usize].iter().rev()),
                    step => voxels.extend((0..length).map(|i| source[(row + i * step) as usize])),
                }
            }
        }
        let affine = self.canonical_affine(&original.affine);
        Volume::new(dims, affine, voxels)
    }

    /// [`Reorientation::apply`] that reuses `original`'s memory when no axes are swapped (only
    /// flipped, the common case: LPS, LAS, …), flipping in place; otherwise it copies.
    pub fn apply_owned<T: Copy + Send>(&self, mut original: Volume<T>) -> Result<Volume<T>, VolumeError> {
        debug_assert_eq!(original.dims, self.original_dims);
        if self.axes.iter().enumerate().any(|(voxel, axis)| axis.world_axis != voxel) {
            return self.apply(&original);
        }
        let [nx, ny, nz] = original.dims;
        let voxels = &mut original.voxels;
        let (flip_x, flip_y) = (self.axes[0].flipped, self.axes[1].flipped);
        if flip_x || flip_y {
            // Each axial slice flips on its own: slices in parallel.
            voxels.par_chunks_exact_mut(nx * ny).for_each(|slice| {
                if flip_x {
                    slice.chunks_exact_mut(nx).for_each(<[T]>::reverse);
                }
                if flip_y {
                    for j in 0..ny / 2 {
                        let (front, back) = slice.split_at_mut((ny - 1 - j) * nx);
                        front[j * nx..(j + 1) * nx].swap_with_slice(&mut back[..nx]);
                    }
                }
            });
        }
        if self.axes[2].flipped {
            let slice = nx * ny;
            for k in 0..nz / 2 {
                let (front, back) = voxels.split_at_mut((nz - 1 - k) * slice);
                front[k * slice..(k + 1) * slice].swap_with_slice(&mut back[..slice]);
            }
        }
        original.affine = self.canonical_affine(&original.affine);
        Ok(original)
    }

    /// Values on the original grid from a volume on the canonical grid (the exact inverse of `apply`).
    pub fn restore<T: Copy + Default>(
        &self,
        canonical: &Volume<T>,
        original_affine: Affine,
    ) -> Result<Volume<T>, VolumeError> {
        let dims = self.canonical_dims();
        if canonical.dims != dims {
            return Err(VolumeError::LengthMismatch {
                dims,
                expected: dims.iter().product(),
                actual: canonical.voxel_count(),
            });
        }
        let (steps, base) = self.source_index_steps();
        let mut voxels = vec![T::default(); canonical.voxel_count()];
        let source = canonical.voxels();
        let mut n = 0;
        for k in 0..dims[2] as isize {
            for j in 0..dims[1] as isize {
                let row = base + j * steps[1] + k * steps[2];
                for i in 0..dims[0] as isize {
                    voxels[(row + i * steps[0]) as usize] = source[n];
                    n += 1;
                }
            }
        }
        Volume::new(self.original_dims, original_affine, voxels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagonal(spacing: [f64; 3], signs: [f64; 3]) -> Affine {
        Affine([
            [spacing[0] * signs[0], 0.0, 0.0, 10.0],
            [0.0, spacing[1] * signs[1], 0.0, -20.0],
            [0.0, 0.0, spacing[2] * signs[2], 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ])
    }

    #[test]
    fn orientation_codes_of_common_grids() {
        let cases = [([1.0, 1.0, 1.0], "RAS"), ([-1.0, -1.0, 1.0], "LPS"), ([-1.0, 1.0, 1.0], "LAS")];
        for (signs, code) in cases {
            assert_eq!(diagonal([1.0, 2.0, 3.0], signs).orientation_code().unwrap(), code);
        }
    }

    #[test]
    fn canonical_copy_keeps_every_voxel_at_its_world_position() {
        // A permuted, flipped grid: voxel axis 0 runs P, axis 1 runs S, axis 2 runs L.
        let affine =
            Affine([[0.0, 0.0, -2.0, 5.0], [-1.0, 0.0, 0.0, 7.0], [0.0, 3.0, 0.0, -9.0], [0.0, 0.0, 0.0, 1.0]]);
        let dims = [4, 3, 2];
        let voxels: Vec<u32> = (0..24).collect();
        let original = Volume::new(dims, affine, voxels).unwrap();
        let reorientation = Reorientation::to_canonical(dims, &affine).unwrap();
        let canonical = reorientation.apply(&original).unwrap();
        assert_eq!(canonical.affine().orientation_code().unwrap(), "RAS");
        assert_eq!(canonical.dims(), [2, 4, 3]);
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let world = affine.apply([i as f64, j as f64, k as f64]);
                    let value = *original.get(i, j, k);
                    let found = (0..canonical.voxel_count()).find(|n| canonical.voxels()[*n] == value).unwrap();
                    let (ci, cj, ck) = (found % 2, (found / 2) % 4, found / 8);
                    let canonical_world = canonical.affine().apply([ci as f64, cj as f64, ck as f64]);
                    for axis in 0..3 {
                        assert!((world[axis] - canonical_world[axis]).abs() < 1e-9, "voxel {value} moved");
                    }
                }
            }
        }
        let restored = reorientation.restore(&canonical, affine).unwrap();
        assert_eq!(restored, original);
    }

    /// Every orthogonal orientation a grid can have: 6 axis permutations × 8 sign combinations.
    fn all_48_orientations() -> Vec<([usize; 3], [f64; 3])> {
        let permutations = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let mut all = Vec::new();
        for permutation in permutations {
            for signs in 0..8 {
                all.push((permutation, [0, 1, 2].map(|b| if signs & (1 << b) == 0 { 1.0 } else { -1.0 })));
            }
        }
        all
    }

    #[test]
    fn all_48_orientations_round_trip_exactly_and_keep_world_positions() {
        let dims = [5, 4, 3];
        let spacing = [0.7, 1.3, 2.9];
        let orientations = all_48_orientations();
        assert_eq!(orientations.len(), 48);
        let mut codes = std::collections::BTreeSet::new();
        for (permutation, signs) in orientations {
            // Voxel axis v runs along world axis permutation[v], in direction signs[v].
            let mut m = [[0.0; 4]; 4];
            for voxel in 0..3 {
                m[permutation[voxel]][voxel] = signs[voxel] * spacing[voxel];
            }
            m[0][3] = 11.5;
            m[1][3] = -7.25;
            m[2][3] = 3.0;
            m[3][3] = 1.0;
            let affine = Affine(m);
            codes.insert(affine.orientation_code().unwrap());
            let original = Volume::new(dims, affine, (0..60u32).collect()).unwrap();
            let reorientation = Reorientation::to_canonical(dims, &affine).unwrap();
            let canonical = reorientation.apply(&original).unwrap();
            assert_eq!(canonical.affine().orientation_code().unwrap(), "RAS");
            for row in 0..3 {
                for column in 0..3 {
                    let value = canonical.affine().0[row][column];
                    assert!(if row == column { value > 0.0 } else { value == 0.0 }, "canonical affine is diagonal");
                }
            }
            // Each voxel keeps its world position.
            let [cx, cy, _] = canonical.dims();
            for (n, value) in canonical.voxels().iter().enumerate() {
                let (ci, cj, ck) = (n % cx, (n / cx) % cy, n / (cx * cy));
                let v = *value as usize;
                let (i, j, k) = (v % 5, (v / 5) % 4, v / 20);
                let before = affine.apply([i as f64, j as f64, k as f64]);
                let after = canonical.affine().apply([ci as f64, cj as f64, ck as f64]);
                for axis in 0..3 {
                    assert!((before[axis] - after[axis]).abs() < 1e-9);
                }
            }
            assert_eq!(reorientation.restore(&canonical, affine).unwrap(), original, "exact round trip");
            assert_eq!(reorientation.apply_owned(original.clone()).unwrap(), canonical, "in place = copy");
        }
        assert_eq!(codes.len(), 48, "48 distinct orientation codes");
    }

    #[test]
    fn singular_affine_is_refused() {
        let mut affine = Affine::identity();
        affine.0[2][2] = 0.0;
        assert_eq!(affine.axis_orientations(), Err(VolumeError::DegenerateAffine));
    }

    #[test]
    fn volume_rejects_wrong_length() {
        assert!(matches!(
            Volume::new([2, 2, 2], Affine::identity(), vec![0u8; 7]),
            Err(VolumeError::LengthMismatch { expected: 8, actual: 7, .. })
        ));
    }
}
