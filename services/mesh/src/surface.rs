//! Boundary surfaces of the labels of a label map, built from voxel faces.
//!
//! This is the first, deliberately simple version of the mesh stage's extraction: every face
//! between a voxel of a label and a voxel that is not of that label (or the outside of the
//! volume) becomes two triangles. The result is blocky but exact: each surface is closed, wound
//! counter-clockwise seen from outside in world space, and encloses exactly the label's voxels.
//! (Smoothing and decimation come later.)
//!
//! Vertices are the corners of the voxel grid, at half-integer voxel coordinates, shared between
//! all faces that meet there, so every surface is one connected, closed triangle mesh: each
//! undirected edge is used by an even number of triangles, and each directed edge `(a, b)` is
//! used exactly as often as `(b, a)`. An edge is normally used by two triangles; where two voxels
//! of a label touch only along an edge (diagonal neighbours), that edge is used by four and its
//! vertices are non-manifold. That is accepted in this version.

use iris_shared::volume::{Affine, Volume};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The closed boundary surface of one label, in world coordinates (RAS, millimetres).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSurface {
    /// The label value in the label map.
    pub label: u16,
    /// Vertex positions in world millimetres (RAS).
    pub positions: Vec<[f32; 3]>,
    /// Triangles as indices into `positions`, counter-clockwise seen from outside the label.
    pub triangles: Vec<[u32; 3]>,
    /// Number of voxels of the label.
    pub voxels: u64,
}

/// Settings of [`extract_surfaces`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractionSettings {
    /// Labels with fewer voxels than this are not extracted but listed as skipped.
    pub minimum_voxels: u64,
}

/// The surfaces of every label present in a label map, and the labels that were left out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extraction {
    /// One surface per extracted label, sorted by label id.
    pub surfaces: Vec<LabelSurface>,
    /// Labels present in the label map but not extracted, sorted by label id.
    pub skipped: Vec<SkippedLabel>,
}

/// A label present in the label map that has no surface, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedLabel {
    pub label: u16,
    pub voxels: u64,
    pub reason: String,
}

/// Extracts the boundary surface of every non-background label (every value other than 0) of a
/// label map; see the module documentation for the shape of the surfaces.
///
/// One pass counts each label's voxels and bounding box; the labels are then extracted in
/// parallel, each within its bounding box. The output depends only on the input (not on the
/// number of threads): the same label map gives identical surfaces, vertex order included.
pub fn extract_surfaces(labels: &Volume<u8>, settings: &ExtractionSettings) -> Extraction {
    let census = LabelCensus::of(labels);
    let mut work = Vec::new();
    let mut skipped = Vec::new();
    for label in 1..=u8::MAX {
        let voxels = census.voxels[usize::from(label)];
        if voxels == 0 {
            continue;
        }
        if voxels < settings.minimum_voxels {
            skipped.push(SkippedLabel {
                label: u16::from(label),
                voxels,
                reason: format!(
                    "{voxels} voxel{}, fewer than the minimum of {}",
                    if voxels == 1 { "" } else { "s" },
                    settings.minimum_voxels
                ),
            });
        } else {
            let bounds =
                VoxelBounds { lowest: census.lowest[usize::from(label)], highest: census.highest[usize::from(label)] };
            work.push((label, voxels, bounds));
        }
    }

    let results: Vec<Result<LabelSurface, SkippedLabel>> =
        work.par_iter().map(|&(label, voxels, bounds)| extract_label(labels, label, voxels, bounds)).collect();

    let mut surfaces = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(surface) => surfaces.push(surface),
            Err(skip) => skipped.push(skip),
        }
    }
    skipped.sort_by_key(|skip| skip.label);
    Extraction { surfaces, skipped }
}

impl LabelSurface {
    /// Total area of the triangles in mm².
    pub fn surface_area_mm2(&self) -> f64 {
        self.triangle_corners()
            .map(|[a, b, c]| {
                let normal = cross(subtract(b, a), subtract(c, a));
                0.5 * dot(normal, normal).sqrt()
            })
            .sum()
    }

    /// Signed volume enclosed by the triangles in mm³: positive when the surface is closed and
    /// wound counter-clockwise seen from outside. (Computed about the first vertex rather than the
    /// world origin, which gives the same value for a closed surface with less rounding.)
    pub fn signed_volume_mm3(&self) -> f64 {
        let Some(reference) = self.positions.first().map(|p| p.map(f64::from)) else {
            return 0.0;
        };
        self.triangle_corners()
            .map(|[a, b, c]| {
                let (a, b, c) = (subtract(a, reference), subtract(b, reference), subtract(c, reference));
                dot(a, cross(b, c)) / 6.0
            })
            .sum()
    }

    /// Smallest and largest world coordinate of the vertices on each axis, or `None` without vertices.
    pub fn bounding_box_mm(&self) -> Option<([f64; 3], [f64; 3])> {
        let first = self.positions.first()?.map(f64::from);
        let mut minimum = first;
        let mut maximum = first;
        for position in &self.positions {
            for axis in 0..3 {
                let value = f64::from(position[axis]);
                minimum[axis] = minimum[axis].min(value);
                maximum[axis] = maximum[axis].max(value);
            }
        }
        Some((minimum, maximum))
    }

    /// The corner positions of each triangle whose indices are all in range, as f64.
    fn triangle_corners(&self) -> impl Iterator<Item = [[f64; 3]; 3]> + '_ {
        self.triangles.iter().filter_map(|triangle| {
            let corner = |n: usize| self.positions.get(triangle[n] as usize).map(|p| p.map(f64::from));
            Some([corner(0)?, corner(1)?, corner(2)?])
        })
    }
}

/// Marks a corner of the corner grid that has no vertex yet.
const NO_VERTEX: u32 = u32::MAX;

/// The four corners of each face of a voxel, as offsets (0 or 1 on each axis) from the voxel's
/// lowest corner, in counter-clockwise order seen from outside the voxel in voxel space.
/// Faces in the order −x, +x, −y, +y, −z, +z.
const FACE_CORNERS: [[[usize; 3]; 4]; 6] = [
    [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]],
    [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 1]],
    [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]],
    [[0, 1, 0], [0, 1, 1], [1, 1, 1], [1, 1, 0]],
    [[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]],
    [[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]],
];

/// Inclusive voxel-index bounding box of one label.
#[derive(Debug, Clone, Copy)]
struct VoxelBounds {
    lowest: [usize; 3],
    highest: [usize; 3],
}

/// Voxel count and inclusive bounding box of every label value, from one pass over a label map.
struct LabelCensus {
    voxels: [u64; 256],
    lowest: [[usize; 3]; 256],
    highest: [[usize; 3]; 256],
}

impl LabelCensus {
    fn empty() -> Self {
        LabelCensus { voxels: [0; 256], lowest: [[usize::MAX; 3]; 256], highest: [[0; 3]; 256] }
    }

    /// Counts a label map, slice by slice in parallel (the result does not depend on the order).
    fn of(labels: &Volume<u8>) -> Self {
        let [nx, ny, _] = labels.dims();
        labels
            .voxels()
            .par_chunks(nx * ny)
            .enumerate()
            .fold(LabelCensus::empty, |mut census, (k, slice)| {
                census.count_slice(slice, nx, k);
                census
            })
            .reduce(LabelCensus::empty, LabelCensus::merged)
    }

    fn count_slice(&mut self, slice: &[u8], nx: usize, k: usize) {
        for (j, row) in slice.chunks_exact(nx).enumerate() {
            for (i, &value) in row.iter().enumerate() {
                let value = usize::from(value);
                self.voxels[value] += 1;
                let (lowest, highest) = (&mut self.lowest[value], &mut self.highest[value]);
                lowest[0] = lowest[0].min(i);
                lowest[1] = lowest[1].min(j);
                lowest[2] = lowest[2].min(k);
                highest[0] = highest[0].max(i);
                highest[1] = highest[1].max(j);
                highest[2] = highest[2].max(k);
            }
        }
    }

    fn merged(mut self, other: LabelCensus) -> LabelCensus {
        for value in 0..256 {
            self.voxels[value] += other.voxels[value];
            for axis in 0..3 {
                self.lowest[value][axis] = self.lowest[value][axis].min(other.lowest[value][axis]);
                self.highest[value][axis] = self.highest[value][axis].max(other.highest[value][axis]);
            }
        }
        self
    }
}

/// Builds the surface of one label from the voxels inside its bounding box.
///
/// The corners are indexed densely over the bounding box's corner grid (one more corner than
/// voxels on each axis), two layers of corners at a time: voxel slice `k` only touches corner
/// layers `k` and `k + 1`. Voxels outside the bounding box, and so outside the volume, are never
/// of the label, which closes surfaces at the volume border.
fn extract_label(
    labels: &Volume<u8>,
    label: u8,
    voxels: u64,
    bounds: VoxelBounds,
) -> Result<LabelSurface, SkippedLabel> {
    let size = [0, 1, 2].map(|axis| bounds.highest[axis] - bounds.lowest[axis] + 1);
    let corner_count = (size[0] + 1).checked_mul(size[1] + 1).and_then(|n| n.checked_mul(size[2] + 1));
    if corner_count.is_none_or(|count| count >= NO_VERTEX as usize) {
        return Err(SkippedLabel {
            label: u16::from(label),
            voxels,
            reason: "bounding box too large for 32-bit vertex indices".to_string(),
        });
    }

    let [nx, ny, _] = labels.dims();
    let data = labels.voxels();
    let row_stride = nx;
    let slice_stride = nx * ny;
    let mut builder = SurfaceBuilder::new(labels.affine(), bounds.lowest, size);
    for k in 0..size[2] {
        builder.begin_voxel_slice(k);
        for j in 0..size[1] {
            let row_start = labels.linear_index(bounds.lowest[0], bounds.lowest[1] + j, bounds.lowest[2] + k);
            for i in 0..size[0] {
                let index = row_start + i;
                if data[index] != label {
                    continue;
                }
                let exposed = [
                    i == 0 || data[index - 1] != label,
                    i + 1 == size[0] || data[index + 1] != label,
                    j == 0 || data[index - row_stride] != label,
                    j + 1 == size[1] || data[index + row_stride] != label,
                    k == 0 || data[index - slice_stride] != label,
                    k + 1 == size[2] || data[index + slice_stride] != label,
                ];
                for (face, is_exposed) in exposed.into_iter().enumerate() {
                    if is_exposed {
                        builder.add_face(i, j, face);
                    }
                }
            }
        }
    }
    Ok(builder.finish(u16::from(label), voxels))
}

/// Accumulates the vertices and triangles of one label's surface.
struct SurfaceBuilder<'a> {
    affine: &'a Affine,
    /// Voxel index of the bounding box's lowest voxel; local corner (0, 0, 0) is its lowest corner.
    origin: [usize; 3],
    /// Corners per row of a corner layer (bounding box width + 1).
    corners_per_row: usize,
    /// Vertex of each corner of layer `current_slice` (the lower corners of the current voxel slice).
    lower_layer: Vec<u32>,
    /// Vertex of each corner of layer `current_slice + 1`.
    upper_layer: Vec<u32>,
    current_slice: usize,
    /// World orientation is left-handed: reverse the voxel-space winding.
    reverse_winding: bool,
    positions: Vec<[f32; 3]>,
    triangles: Vec<[u32; 3]>,
}

impl<'a> SurfaceBuilder<'a> {
    fn new(affine: &'a Affine, origin: [usize; 3], size: [usize; 3]) -> Self {
        let layer_corners = (size[0] + 1) * (size[1] + 1);
        SurfaceBuilder {
            affine,
            origin,
            corners_per_row: size[0] + 1,
            lower_layer: vec![NO_VERTEX; layer_corners],
            upper_layer: vec![NO_VERTEX; layer_corners],
            current_slice: 0,
            reverse_winding: affine.linear_determinant() < 0.0,
            positions: Vec::new(),
            triangles: Vec::new(),
        }
    }

    /// Moves on to voxel slice `k` (local): its lower corner layer is the previous slice's upper one.
    fn begin_voxel_slice(&mut self, k: usize) {
        if k > 0 {
            std::mem::swap(&mut self.lower_layer, &mut self.upper_layer);
            self.upper_layer.fill(NO_VERTEX);
        }
        self.current_slice = k;
    }

    /// Adds face `face` (see [`FACE_CORNERS`]) of local voxel (i, j) of the current slice as two triangles.
    fn add_face(&mut self, i: usize, j: usize, face: usize) {
        let [a, b, c, d] = FACE_CORNERS[face].map(|[di, dj, dk]| self.vertex(i + di, j + dj, dk == 1));
        if self.reverse_winding {
            self.triangles.push([a, c, b]);
            self.triangles.push([a, d, c]);
        } else {
            self.triangles.push([a, b, c]);
            self.triangles.push([a, c, d]);
        }
    }

    /// The vertex at local corner (ci, cj) of the lower or upper layer, created on first use.
    fn vertex(&mut self, ci: usize, cj: usize, upper: bool) -> u32 {
        let slot = cj * self.corners_per_row + ci;
        let layer = if upper { &mut self.upper_layer } else { &mut self.lower_layer };
        if layer[slot] != NO_VERTEX {
            return layer[slot];
        }
        // Fits: the bounding box has fewer corners than NO_VERTEX, checked in `extract_label`.
        let vertex = self.positions.len() as u32;
        layer[slot] = vertex;
        let ck = self.current_slice + usize::from(upper);
        let voxel_coordinate = [
            (self.origin[0] + ci) as f64 - 0.5,
            (self.origin[1] + cj) as f64 - 0.5,
            (self.origin[2] + ck) as f64 - 0.5,
        ];
        self.positions.push(self.affine.apply(voxel_coordinate).map(|value| value as f32));
        vertex
    }

    fn finish(self, label: u16, voxels: u64) -> LabelSurface {
        LabelSurface { label, positions: self.positions, triangles: self.triangles, voxels }
    }
}

fn subtract(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ras_affine() -> Affine {
        Affine::identity()
    }

    /// Anisotropic spacing and a non-zero origin, right-handed (RAS).
    fn anisotropic_ras_affine() -> Affine {
        Affine([[0.7, 0.0, 0.0, -112.5], [0.0, 1.3, 0.0, 48.25], [0.0, 0.0, 2.5, 31.0], [0.0, 0.0, 0.0, 1.0]])
    }

    /// Anisotropic spacing and a non-zero origin, left-handed (LAS: x runs towards the left).
    fn anisotropic_las_affine() -> Affine {
        Affine([[-0.7, 0.0, 0.0, 112.5], [0.0, 1.3, 0.0, -48.25], [0.0, 0.0, 2.5, 31.0], [0.0, 0.0, 0.0, 1.0]])
    }

    /// A label map of `dims` where `label_at(i, j, k)` gives each voxel's label.
    fn label_map(dims: [usize; 3], affine: Affine, label_at: impl Fn(usize, usize, usize) -> u8) -> Volume<u8> {
        let mut voxels = Vec::with_capacity(dims.iter().product());
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    voxels.push(label_at(i, j, k));
                }
            }
        }
        Volume::new(dims, affine, voxels).unwrap()
    }

    fn settings(minimum_voxels: u64) -> ExtractionSettings {
        ExtractionSettings { minimum_voxels }
    }

    /// Label 1 in the voxels with `lowest <= (i, j, k) <= highest`, background elsewhere.
    fn box_label_map(dims: [usize; 3], affine: Affine, lowest: [usize; 3], highest: [usize; 3]) -> Volume<u8> {
        label_map(dims, affine, |i, j, k| {
            let inside = [i, j, k].iter().enumerate().all(|(axis, &v)| v >= lowest[axis] && v <= highest[axis]);
            u8::from(inside)
        })
    }

    /// Asserts the surface is closed: each directed edge is used as often as its reverse (which
    /// also makes every undirected edge used an even number of times), no triangle is degenerate,
    /// and every index is in range.
    fn assert_closed(surface: &LabelSurface) {
        let mut directed: HashMap<(u32, u32), i64> = HashMap::new();
        for triangle in &surface.triangles {
            assert!(triangle.iter().all(|&v| (v as usize) < surface.positions.len()), "index out of range");
            assert!(triangle[0] != triangle[1] && triangle[1] != triangle[2] && triangle[0] != triangle[2]);
            for n in 0..3 {
                let (a, b) = (triangle[n], triangle[(n + 1) % 3]);
                *directed.entry((a, b)).or_default() += 1;
            }
        }
        for (&(a, b), &count) in &directed {
            let reverse = directed.get(&(b, a)).copied().unwrap_or(0);
            assert_eq!(count, reverse, "edge ({a}, {b}) used {count} times but ({b}, {a}) {reverse} times");
        }
        let mut referenced = vec![false; surface.positions.len()];
        surface.triangles.iter().flatten().for_each(|&v| referenced[v as usize] = true);
        assert!(referenced.iter().all(|&r| r), "every vertex is used by a triangle");
    }

    fn voxel_volume_mm3(affine: &Affine) -> f64 {
        affine.linear_determinant().abs()
    }

    /// Equality up to the rounding of positions to f32 (about 1e-7 relative to the largest coordinate).
    fn assert_close(actual: f64, expected: f64, what: &str) {
        let tolerance = 1e-5 * expected.abs().max(1.0);
        assert!((actual - expected).abs() <= tolerance, "{what}: {actual} differs from {expected}");
    }

    #[test]
    fn single_voxel_gives_a_closed_cube() {
        for volume in
            [label_map([1, 1, 1], ras_affine(), |_, _, _| 1), box_label_map([3, 3, 3], ras_affine(), [1; 3], [1; 3])]
        {
            let extraction = extract_surfaces(&volume, &settings(1));
            assert_eq!(extraction.surfaces.len(), 1);
            assert!(extraction.skipped.is_empty());
            let surface = &extraction.surfaces[0];
            assert_eq!(surface.label, 1);
            assert_eq!(surface.voxels, 1);
            assert_eq!(surface.positions.len(), 8);
            assert_eq!(surface.triangles.len(), 12);
            assert_closed(surface);
            assert_close(surface.signed_volume_mm3(), 1.0, "volume");
            assert_close(surface.surface_area_mm2(), 6.0, "area");
        }
    }

    #[test]
    fn single_voxel_corners_are_half_a_voxel_from_its_centre() {
        let volume = box_label_map([3, 3, 3], anisotropic_ras_affine(), [1; 3], [1; 3]);
        let surface = &extract_surfaces(&volume, &settings(1)).surfaces[0];
        let centre = anisotropic_ras_affine().apply([1.0, 1.0, 1.0]);
        let (minimum, maximum) = surface.bounding_box_mm().unwrap();
        let half = [0.35, 0.65, 1.25];
        for axis in 0..3 {
            assert!((minimum[axis] - (centre[axis] - half[axis])).abs() < 1e-4);
            assert!((maximum[axis] - (centre[axis] + half[axis])).abs() < 1e-4);
        }
    }

    #[test]
    fn inner_cube_is_closed_with_outward_winding_and_exact_volume() {
        for affine in [ras_affine(), anisotropic_ras_affine(), anisotropic_las_affine()] {
            let volume = box_label_map([5, 5, 5], affine, [1; 3], [3; 3]);
            let surface = &extract_surfaces(&volume, &settings(1)).surfaces[0];
            assert_eq!(surface.voxels, 27);
            // A 3×3×3 block: 6 sides of 9 faces; corners 4³ less the 2³ inside.
            assert_eq!(surface.triangles.len(), 6 * 9 * 2);
            assert_eq!(surface.positions.len(), 64 - 8);
            assert_closed(surface);
            let volume_mm3 = surface.signed_volume_mm3();
            assert!(volume_mm3 > 0.0, "outward winding gives a positive volume, got {volume_mm3}");
            assert_close(volume_mm3, 27.0 * voxel_volume_mm3(&affine), "enclosed volume");
        }
    }

    #[test]
    fn outward_normals_point_away_from_the_label_in_world_space() {
        for affine in [anisotropic_ras_affine(), anisotropic_las_affine()] {
            let volume = box_label_map([5, 5, 5], affine, [1; 3], [3; 3]);
            let surface = &extract_surfaces(&volume, &settings(1)).surfaces[0];
            let centre = affine.apply([2.0, 2.0, 2.0]);
            for [a, b, c] in surface.triangle_corners() {
                let normal = cross(subtract(b, a), subtract(c, a));
                let middle = [0, 1, 2].map(|axis| (a[axis] + b[axis] + c[axis]) / 3.0);
                assert!(dot(normal, subtract(middle, centre)) > 0.0, "triangle faces inwards");
            }
        }
    }

    #[test]
    fn cubes_touching_the_volume_border_are_closed() {
        let cases = [
            ([4, 4, 4], [0, 0, 0], [2, 2, 2]),
            ([4, 5, 6], [1, 2, 3], [3, 4, 5]),
            ([3, 3, 3], [0, 0, 0], [2, 2, 2]),
            ([5, 1, 4], [0, 0, 1], [4, 0, 3]),
        ];
        for affine in [ras_affine(), anisotropic_ras_affine(), anisotropic_las_affine()] {
            for (dims, lowest, highest) in cases {
                let volume = box_label_map(dims, affine, lowest, highest);
                let extraction = extract_surfaces(&volume, &settings(1));
                let surface = &extraction.surfaces[0];
                let count: usize = (0..3).map(|axis| highest[axis] - lowest[axis] + 1).product();
                assert_eq!(surface.voxels, count as u64);
                assert_closed(surface);
                let volume_mm3 = surface.signed_volume_mm3();
                assert!(volume_mm3 > 0.0);
                assert_close(volume_mm3, count as f64 * voxel_volume_mm3(&affine), "enclosed volume");
            }
        }
    }

    #[test]
    fn touching_labels_each_have_a_closed_surface_sharing_the_interface() {
        // Label 1 in x < 2, label 2 in x >= 2, on a 4×2×2 grid.
        let affine = anisotropic_las_affine();
        let volume = label_map([4, 2, 2], affine, |i, _, _| if i < 2 { 1 } else { 2 });
        let extraction = extract_surfaces(&volume, &settings(1));
        assert_eq!(extraction.surfaces.iter().map(|s| s.label).collect::<Vec<_>>(), [1, 2]);
        let interface_x = affine.apply([1.5, 0.0, 0.0])[0];
        let mut interface_vertices = Vec::new();
        for surface in &extraction.surfaces {
            assert_eq!(surface.voxels, 8);
            assert_eq!(surface.triangles.len(), 6 * 4 * 2);
            assert_closed(surface);
            assert_close(surface.signed_volume_mm3(), 8.0 * voxel_volume_mm3(&affine), "enclosed volume");
            let mut on_interface: Vec<[u32; 3]> = surface
                .positions
                .iter()
                .filter(|p| (f64::from(p[0]) - interface_x).abs() < 1e-4)
                .map(|p| p.map(f32::to_bits))
                .collect();
            on_interface.sort_unstable();
            let interface_triangles = surface
                .triangles
                .iter()
                .filter(|t| t.iter().all(|&v| (f64::from(surface.positions[v as usize][0]) - interface_x).abs() < 1e-4))
                .count();
            assert_eq!(interface_triangles, 8, "the 2×2 interface faces, two triangles each");
            interface_vertices.push(on_interface);
        }
        assert_eq!(interface_vertices[0].len(), 9);
        assert_eq!(interface_vertices[0], interface_vertices[1], "both surfaces have the same interface vertices");
    }

    #[test]
    fn voxels_touching_along_an_edge_share_it_between_four_triangles() {
        let volume = label_map([2, 2, 1], ras_affine(), |i, j, _| u8::from(i == j));
        let surface = &extract_surfaces(&volume, &settings(1)).surfaces[0];
        assert_closed(surface);
        assert_eq!(surface.positions.len(), 14, "two cubes sharing the two corners of one edge");
        assert_close(surface.signed_volume_mm3(), 2.0, "enclosed volume");
        let mut undirected: HashMap<(u32, u32), usize> = HashMap::new();
        for triangle in &surface.triangles {
            for n in 0..3 {
                let (a, b) = (triangle[n], triangle[(n + 1) % 3]);
                *undirected.entry((a.min(b), a.max(b))).or_default() += 1;
            }
        }
        assert!(undirected.values().all(|&count| count % 2 == 0));
        assert_eq!(undirected.values().filter(|&&count| count == 4).count(), 1);
    }

    #[test]
    fn every_label_of_a_scattered_label_map_is_closed_with_exact_volume() {
        let dims = [9, 7, 6];
        let mut state = 0x2545_f491_u32;
        let mut voxels = Vec::new();
        for _ in 0..dims.iter().product::<usize>() {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            voxels.push(((state >> 24) % 4) as u8);
        }
        for affine in [anisotropic_ras_affine(), anisotropic_las_affine()] {
            let volume = Volume::new(dims, affine, voxels.clone()).unwrap();
            let extraction = extract_surfaces(&volume, &settings(1));
            assert_eq!(extraction.surfaces.len(), 3);
            for surface in &extraction.surfaces {
                let expected = voxels.iter().filter(|&&v| u16::from(v) == surface.label).count() as u64;
                assert_eq!(surface.voxels, expected);
                assert_closed(surface);
                let expected_mm3 = expected as f64 * voxel_volume_mm3(&affine);
                assert!((surface.signed_volume_mm3() - expected_mm3).abs() < 1e-4 * expected_mm3);
            }
        }
    }

    #[test]
    fn labels_below_the_minimum_are_skipped_and_listed() {
        // Label 3: 2 voxels; label 5: 27 voxels; label 7: 1 voxel.
        let volume = label_map([6, 6, 6], ras_affine(), |i, j, k| match (i, j, k) {
            (0, 0, 0) | (1, 0, 0) => 3,
            (5, 5, 5) => 7,
            (2..=4, 2..=4, 2..=4) => 5,
            _ => 0,
        });
        let extraction = extract_surfaces(&volume, &settings(3));
        assert_eq!(extraction.surfaces.iter().map(|s| s.label).collect::<Vec<_>>(), [5]);
        assert_eq!(extraction.skipped.iter().map(|s| (s.label, s.voxels)).collect::<Vec<_>>(), [(3, 2), (7, 1)]);
        assert!(extraction.skipped.iter().all(|s| s.reason.contains("minimum of 3")));

        let everything = extract_surfaces(&volume, &settings(0));
        assert_eq!(everything.surfaces.iter().map(|s| s.label).collect::<Vec<_>>(), [3, 5, 7]);
        assert!(everything.skipped.is_empty());
    }

    #[test]
    fn background_only_gives_an_empty_extraction() {
        let volume = label_map([4, 3, 2], ras_affine(), |_, _, _| 0);
        assert_eq!(extract_surfaces(&volume, &settings(1)), Extraction::default());
    }

    #[test]
    fn extraction_is_deterministic_whatever_the_thread_count() {
        let volume = label_map([20, 18, 16], anisotropic_las_affine(), |i, j, k| ((i / 3 + j / 4 + k / 5) % 7) as u8);
        // Every bit of the output: labels, positions, triangles.
        let bits = |extraction: &Extraction| -> Vec<u32> {
            let mut out = Vec::new();
            for surface in &extraction.surfaces {
                out.extend([u32::from(surface.label), surface.positions.len() as u32, surface.triangles.len() as u32]);
                out.extend(surface.positions.iter().flatten().map(|v| v.to_bits()));
                out.extend(surface.triangles.iter().flatten());
            }
            out
        };
        let first = extract_surfaces(&volume, &settings(1));
        assert_eq!(first.surfaces.len(), 6);
        let second = extract_surfaces(&volume, &settings(1));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let single_threaded = pool.install(|| extract_surfaces(&volume, &settings(1)));
        assert_eq!(bits(&first), bits(&second));
        assert_eq!(bits(&first), bits(&single_threaded));
    }
}
