//! From a label's surface topology and the smoothed corners to the mesh the writers export:
//! world positions, triangles, simplification (meshoptimizer), vertex cache and fetch order,
//! normals.

use iris_volume::volume::Affine;

use crate::label_mesh::LabelMesh;
use crate::surface::LabelTopology;

/// How much to simplify.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimplificationSettings {
    /// Share of the extracted triangles to remove, 0–99 (the seed's `reduction_percent`).
    pub reduction_percent: u8,
    /// Largest deviation simplification may introduce, in voxels (of the smallest spacing);
    /// it stops short of the reduction asked for rather than go further.
    pub max_error_voxels: f32,
}

/// The seed's default: remove 90 % of the triangles, never moving the surface by more than half a voxel.
pub const DEFAULT_SIMPLIFICATION: SimplificationSettings =
    SimplificationSettings { reduction_percent: 90, max_error_voxels: 0.5 };

/// Largest relative difference between a simplified surface's enclosed volume and its label's
/// voxel volume that simplification may leave (see [`finish_label`]).
pub const MAX_SIMPLIFIED_VOLUME_ERROR: f64 = 0.04;

/// Figures of one label's mesh before simplification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishFigures {
    pub extracted_triangles: usize,
    /// Simplifications refused (not a closed manifold, or volume off) and redone (see [`finish_label`]).
    pub simplification_retries: u32,
}

/// Builds one label's finished mesh: vertices at `corner_positions` (voxel coordinates, per
/// corner-graph node) mapped to world millimetres by `affine`, each quad split along its shorter
/// diagonal, simplified, reordered for the vertex cache and fetch, with area-weighted normals.
/// Triangles are wound counter-clockwise seen from outside in world space whatever the
/// handedness of `affine`.
pub fn finish_label(
    topology: &LabelTopology,
    corner_positions: &[[f32; 3]],
    affine: &Affine,
    name: String,
    color_srgb: [u8; 3],
    settings: &SimplificationSettings,
) -> (LabelMesh, FinishFigures) {
    let mut voxel_positions: Vec<[f32; 3]> =
        topology.vertex_nodes.iter().map(|&node| corner_positions[node as usize]).collect();
    if settings.reduction_percent > 0 {
        separate_split_vertices(topology, &mut voxel_positions);
    }
    let positions: Vec<[f32; 3]> =
        voxel_positions.iter().map(|voxel| affine.apply(voxel.map(f64::from)).map(|value| value as f32)).collect();
    let reverse = affine.linear_determinant() < 0.0;
    let mut indices = Vec::with_capacity(topology.quads.len() * 6);
    for &[a, b, c, d] in &topology.quads {
        let (pa, pb, pc, pd) =
            (positions[a as usize], positions[b as usize], positions[c as usize], positions[d as usize]);
        let triangles = if distance_squared(pa, pc) <= distance_squared(pb, pd) {
            [[a, b, c], [a, c, d]]
        } else {
            [[a, b, d], [b, c, d]]
        };
        for [x, y, z] in triangles {
            if reverse {
                indices.extend_from_slice(&[x, z, y]);
            } else {
                indices.extend_from_slice(&[x, y, z]);
            }
        }
    }
    let extracted_triangles = indices.len() / 3;

    let reduction = f64::from(settings.reduction_percent.min(99)) / 100.0;
    let mut simplification_retries = 0;
    if reduction > 0.0 && !indices.is_empty() {
        let voxel = affine.spacing().iter().copied().fold(f64::INFINITY, f64::min) as f32;
        let goal = SimplificationGoal {
            reduction,
            max_error: settings.max_error_voxels * voxel,
            voxel_volume: topology.voxels as f64 * affine.linear_determinant().abs(),
        };
        (indices, simplification_retries) = simplify_in_parts(indices, &positions, &goal, TRIANGLES_PER_PART);
    }
    // The FIFO-cache variant: about three times faster than the default, and a viewer loading a
    // few meshes once gains nothing from the last percent of cache hits.
    meshopt::optimize_vertex_cache_fifo_in_place(&mut indices, positions.len(), VERTEX_CACHE_SIZE);
    let positions = meshopt::optimize_vertex_fetch(&mut indices, &positions);
    let triangles: Vec<[u32; 3]> = indices.chunks_exact(3).map(|t| [t[0], t[1], t[2]]).collect();
    let normals = vertex_normals(&positions, &triangles);
    let mesh = LabelMesh { label: topology.label, name, color_srgb, positions, normals, triangles };
    (mesh, FinishFigures { extracted_triangles, simplification_retries })
}

/// What simplification of one label aims at, and the figures its result is checked against.
struct SimplificationGoal {
    /// Share of the triangles to remove.
    reduction: f64,
    /// Largest deviation, in millimetres.
    max_error: f32,
    /// The label's voxel volume, mm³.
    voxel_volume: f64,
}

/// The FIFO vertex cache size the triangle order is optimised for: small, since meshoptimizer
/// advises a size under the real cache's, so the order suits any GPU.
const VERTEX_CACHE_SIZE: u32 = 16;

/// Labels of more triangles than this are simplified in parts of about this many triangles.
const TRIANGLES_PER_PART: usize = 125_000;

/// Shares of the reduction asked for that simplification tries in turn (see [`simplify_in_parts`]).
const REDUCTION_SHARES: [f64; 5] = [1.0, 0.85, 0.7, 0.5, 0.25];

/// Rounds of locking the vertices around a fold before simplifying less (see [`simplify_in_parts`]).
const LOCK_ROUNDS: u32 = 2;

/// One part of a label's surface under simplification.
struct Part {
    /// The part's vertices, as indices in the label's mesh; the part's own index of each is its place here.
    vertices: Vec<u32>,
    /// Their positions.
    positions: Vec<[f32; 3]>,
    /// The part's triangles (flat list of the part's own vertex indices).
    indices: Vec<u32>,
    /// Vertices simplification must keep: those shared with other parts, and those around folds.
    locks: Vec<bool>,
    lock_rounds: u32,
    /// Index in [`REDUCTION_SHARES`]; past its end the part is left unsimplified.
    share: usize,
    /// The simplified triangles of the last attempt (vertex indices of the label's mesh).
    simplified: Vec<u32>,
}

/// Simplifies a closed surface (flat index list) with meshoptimizer; returns the triangles and the
/// number of attempts refused.
///
/// meshoptimizer promises neither a manifold result (a collapse can fold the surface onto itself)
/// nor a kept volume (a small label cut down to a few triangles loses its rounded parts). A result
/// that is not a closed manifold, or whose enclosed volume is more than
/// [`MAX_SIMPLIFIED_VOLUME_ERROR`] off the label's voxel volume (and moved by more than a quarter of
/// that by simplification), is refused. A fold is local: first the vertices around it (two rings in
/// the extracted mesh) are locked and the same reduction is tried again, up to [`LOCK_ROUNDS`]
/// times; then simplification is retried with less reduction. The unsimplified surface always stands.
///
/// A large surface is cut into slabs of about `triangles_per_part` triangles along its longest
/// axis, each simplified on its own (in parallel) with the vertices it shares with another slab
/// locked, so the slabs still meet edge to edge; a refused attempt is redone only in the slabs
/// that hold its faults (all of them when the volume is off). This keeps one large organ from
/// being the tail of the stage, and a fold from costing a second simplification of the whole organ.
fn simplify_in_parts(
    indices: Vec<u32>,
    positions: &[[f32; 3]],
    goal: &SimplificationGoal,
    triangles_per_part: usize,
) -> (Vec<u32>, u32) {
    use rayon::prelude::*;
    let (mut parts, shared) = cut_into_parts(&indices, positions, triangles_per_part);
    let mut part_of_vertex = vec![u32::MAX; positions.len()];
    for (number, part) in parts.iter().enumerate() {
        for &vertex in &part.vertices {
            part_of_vertex[vertex as usize] = number as u32;
        }
    }
    let exhausted = |part: &Part| part.share >= REDUCTION_SHARES.len();
    let mut redo: Vec<bool> = vec![true; parts.len()];
    let mut retries = 0;
    let mut volume_before: Option<f64> = None;
    loop {
        parts.par_iter_mut().zip(redo.par_iter()).filter(|(_, redo)| **redo).for_each(|(part, _)| {
            part.simplified = simplify_part(part, goal);
        });
        let simplified: Vec<u32> = parts.iter().flat_map(|part| part.simplified.iter().copied()).collect();
        let volume_after = indexed_volume_mm3(positions, &simplified);
        // The unsimplified surface's volume is only needed (and only computed) when the
        // simplified one is off the voxel volume.
        let volume_kept = (volume_after - goal.voxel_volume).abs() <= MAX_SIMPLIFIED_VOLUME_ERROR * goal.voxel_volume
            || {
                let volume_before = *volume_before.get_or_insert_with(|| indexed_volume_mm3(positions, &indices));
                (volume_after - volume_before).abs() <= 0.25 * MAX_SIMPLIFIED_VOLUME_ERROR * volume_before.abs()
            };
        let faults = if volume_kept { non_manifold_vertices(&simplified) } else { Vec::new() };
        if volume_kept && faults.is_empty() {
            return (simplified, retries);
        }
        if parts.iter().all(exhausted) {
            return (indices, retries);
        }
        retries += 1;
        // The parts that hold a fault (every part, for a fault on a vertex they share, or for the
        // volume); when those are all left unsimplified already, every part that is not.
        redo.fill(!volume_kept);
        for &vertex in &faults {
            if shared[vertex as usize] {
                redo.fill(true);
            } else if let Some(redo) = redo.get_mut(part_of_vertex[vertex as usize] as usize) {
                *redo = true;
            }
        }
        if !parts.iter().zip(&redo).any(|(part, redo)| *redo && !exhausted(part)) {
            redo = parts.iter().map(|part| !exhausted(part)).collect();
        }
        for (part, _) in parts.iter_mut().zip(&redo).filter(|(_, redo)| **redo) {
            if volume_kept && part.lock_rounds < LOCK_ROUNDS {
                let local: std::collections::HashMap<u32, u32> =
                    part.vertices.iter().enumerate().map(|(local, &vertex)| (vertex, local as u32)).collect();
                let faults: Vec<u32> = faults.iter().filter_map(|vertex| local.get(vertex).copied()).collect();
                lock_around(&part.indices, &faults, &mut part.locks);
                part.lock_rounds += 1;
            } else {
                part.share += 1;
            }
        }
    }
}

/// The surface as one part, or, when large, as slabs of consecutive triangle centroids along its
/// longest axis, with the vertices shared between slabs locked in each; and which vertices those are.
fn cut_into_parts(indices: &[u32], positions: &[[f32; 3]], triangles_per_part: usize) -> (Vec<Part>, Vec<bool>) {
    let triangles = indices.len() / 3;
    let count = triangles.div_ceil(triangles_per_part.max(1)).max(1);
    if count == 1 {
        let part = Part {
            vertices: (0..positions.len() as u32).collect(),
            positions: positions.to_vec(),
            indices: indices.to_vec(),
            locks: vec![false; positions.len()],
            lock_rounds: 0,
            share: 0,
            simplified: Vec::new(),
        };
        return (vec![part], vec![false; positions.len()]);
    }
    let mut minimum = [f32::INFINITY; 3];
    let mut maximum = [f32::NEG_INFINITY; 3];
    for &vertex in indices {
        for axis in 0..3 {
            minimum[axis] = minimum[axis].min(positions[vertex as usize][axis]);
            maximum[axis] = maximum[axis].max(positions[vertex as usize][axis]);
        }
    }
    let axis = (0..3).max_by(|&a, &b| (maximum[a] - minimum[a]).total_cmp(&(maximum[b] - minimum[b]))).unwrap_or(0);
    // Twice the centroid (the sum of the three corners): the order is the same.
    let mut order: Vec<(f32, u32)> = indices
        .chunks_exact(3)
        .enumerate()
        .map(|(triangle, corners)| (corners.iter().map(|&v| positions[v as usize][axis]).sum(), triangle as u32))
        .collect();
    // Slab s holds the triangles of rank r (in that order) with r · count / triangles = s: ranks
    // from ⌈s · triangles / count⌉. Selecting each boundary in what is left of the order finds
    // them without sorting everything.
    let mut slab_of_triangle = vec![0u32; triangles];
    let mut rest: &mut [(f32, u32)] = &mut order;
    let mut slab_start = 0;
    for slab in 0..count {
        let next_start = ((slab + 1) * triangles).div_ceil(count);
        let (this, after) = if slab + 1 < count {
            rest.select_nth_unstable_by(next_start - slab_start, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            rest.split_at_mut(next_start - slab_start)
        } else {
            (rest, <&mut [(f32, u32)]>::default())
        };
        for &(_, triangle) in this.iter() {
            slab_of_triangle[triangle as usize] = slab as u32;
        }
        rest = after;
        slab_start = next_start;
    }
    let mut slab_of_vertex = vec![u32::MAX; positions.len()];
    let mut shared = vec![false; positions.len()];
    let mut slabs: Vec<Vec<u32>> = vec![Vec::with_capacity(3 * triangles_per_part); count];
    for (triangle, corners) in indices.chunks_exact(3).enumerate() {
        let slab = slab_of_triangle[triangle];
        slabs[slab as usize].extend_from_slice(corners);
        for &vertex in corners {
            let seen = &mut slab_of_vertex[vertex as usize];
            if *seen != u32::MAX && *seen != slab {
                shared[vertex as usize] = true;
            }
            *seen = slab;
        }
    }
    let mut local_of_vertex = vec![u32::MAX; positions.len()];
    let parts = slabs
        .into_iter()
        .map(|slab| {
            let mut vertices = Vec::new();
            let indices = slab
                .iter()
                .map(|&vertex| {
                    let local = &mut local_of_vertex[vertex as usize];
                    if *local == u32::MAX || vertices.get(*local as usize) != Some(&vertex) {
                        *local = vertices.len() as u32;
                        vertices.push(vertex);
                    }
                    *local
                })
                .collect();
            Part {
                positions: vertices.iter().map(|&vertex| positions[vertex as usize]).collect(),
                locks: vertices.iter().map(|&vertex| shared[vertex as usize]).collect(),
                vertices,
                indices,
                lock_rounds: 0,
                share: 0,
                simplified: Vec::new(),
            }
        })
        .collect();
    (parts, shared)
}

/// One attempt at a part: meshoptimizer's simplification with the part's locks at its current
/// share of the reduction, or the part's triangles as they are once the shares are used up; as
/// vertex indices of the label's mesh.
fn simplify_part(part: &Part, goal: &SimplificationGoal) -> Vec<u32> {
    let local = match REDUCTION_SHARES.get(part.share) {
        None => part.indices.clone(),
        Some(share) => {
            let triangles = part.indices.len() / 3;
            let target_triangles = ((triangles as f64) * (1.0 - goal.reduction * share)).round().max(4.0) as usize;
            let options = meshopt::SimplifyOptions::ErrorAbsolute | meshopt::SimplifyOptions::RegularizeLight;
            let (indices, positions, locks) = (&part.indices, &part.positions, &part.locks);
            if locks.iter().any(|&locked| locked) {
                meshopt::simplify_with_locks_decoder(
                    indices,
                    positions,
                    locks,
                    target_triangles * 3,
                    goal.max_error,
                    options,
                    None,
                )
            } else {
                meshopt::simplify_decoder(indices, positions, target_triangles * 3, goal.max_error, options, None)
            }
        }
    };
    local.into_iter().map(|vertex| part.vertices[vertex as usize]).collect()
}

/// Share of the way from its corner to the centre of its own faces that a split vertex moves.
const SPLIT_VERTEX_SEPARATION: f32 = 0.1;

/// Moves the vertices of a corner split into several sheets (consecutive vertices on one node)
/// a little towards the centre of their own quads, so the sheets do not meet in one point: a
/// simplifier that joins vertices of equal position (meshoptimizer does) would otherwise fold
/// them together.
fn separate_split_vertices(topology: &LabelTopology, positions: &mut [[f32; 3]]) {
    let nodes = &topology.vertex_nodes;
    let is_split = |v: usize| (v > 0 && nodes[v - 1] == nodes[v]) || (v + 1 < nodes.len() && nodes[v + 1] == nodes[v]);
    if !(0..nodes.len()).any(is_split) {
        return;
    }
    let mut sums: std::collections::HashMap<u32, ([f32; 3], f32)> = std::collections::HashMap::new();
    for quad in &topology.quads {
        let centre: [f32; 3] =
            std::array::from_fn(|axis| quad.iter().map(|&v| positions[v as usize][axis]).sum::<f32>() / 4.0);
        for &vertex in quad {
            if is_split(vertex as usize) {
                let entry = sums.entry(vertex).or_insert(([0.0; 3], 0.0));
                for (sum, value) in entry.0.iter_mut().zip(centre) {
                    *sum += value;
                }
                entry.1 += 1.0;
            }
        }
    }
    for (vertex, (sum, count)) in sums {
        let position = &mut positions[vertex as usize];
        for axis in 0..3 {
            position[axis] += SPLIT_VERTEX_SEPARATION * (sum[axis] / count - position[axis]);
        }
    }
}

/// Vertices of the faults that make `indices` not a closed manifold: degenerate triangles, directed
/// edges used twice, and edges without their reverse.
///
/// The directed edges are grouped by their first vertex (a counting sort: linear, where sorting
/// them all cost a tenth of the stage), so each check reads two short lists, a vertex's edges
/// and its neighbour's.
fn non_manifold_vertices(indices: &[u32]) -> Vec<u32> {
    let mut faults = Vec::new();
    let vertex_count = indices.iter().max().map_or(0, |&last| last as usize + 1);
    // The edges leaving vertex v end at targets[start[v]..start[v + 1]] (each corner of a
    // triangle starts one edge).
    let mut start = vec![0u32; vertex_count + 1];
    for &vertex in indices {
        start[vertex as usize + 1] += 1;
    }
    for vertex in 0..vertex_count {
        start[vertex + 1] += start[vertex];
    }
    let mut filled = start[..vertex_count].to_vec();
    let mut targets = vec![0u32; indices.len()];
    for triangle in indices.chunks_exact(3) {
        if triangle[0] == triangle[1] || triangle[1] == triangle[2] || triangle[0] == triangle[2] {
            faults.extend_from_slice(triangle);
        }
        for n in 0..3 {
            let from = triangle[n] as usize;
            targets[filled[from] as usize] = triangle[(n + 1) % 3];
            filled[from] += 1;
        }
    }
    let leaving = |vertex: usize| &targets[start[vertex] as usize..start[vertex + 1] as usize];
    for from in 0..vertex_count {
        let ends = leaving(from);
        for (n, &to) in ends.iter().enumerate() {
            let repeated = ends[..n].contains(&to);
            let has_reverse = leaving(to as usize).contains(&(from as u32));
            if repeated || !has_reverse {
                faults.extend_from_slice(&[from as u32, to]);
            }
        }
    }
    faults
}

/// Locks `faults` and two rings of their neighbours in the mesh `indices`.
fn lock_around(indices: &[u32], faults: &[u32], locks: &mut [bool]) {
    for &vertex in faults {
        locks[vertex as usize] = true;
    }
    for _ in 0..2 {
        let ring: Vec<u32> = indices
            .chunks_exact(3)
            .filter(|triangle| triangle.iter().any(|&v| locks[v as usize]))
            .flatten()
            .copied()
            .collect();
        for vertex in ring {
            locks[vertex as usize] = true;
        }
    }
}

/// True when every directed edge of the triangles (flat index list) is used exactly once and its
/// reverse exactly once: a closed, edge-manifold, consistently wound surface without degenerate triangles.
pub fn is_closed_manifold(indices: &[u32]) -> bool {
    non_manifold_vertices(indices).is_empty()
}

/// Area-weighted vertex normals (unit; +z for a vertex whose triangles cancel out).
pub fn vertex_normals(positions: &[[f32; 3]], triangles: &[[u32; 3]]) -> Vec<[f32; 3]> {
    let mut sums = vec![[0f64; 3]; positions.len()];
    for triangle in triangles {
        let [a, b, c] = triangle.map(|v| positions[v as usize].map(f64::from));
        let normal = cross(subtract(b, a), subtract(c, a));
        for &vertex in triangle {
            for axis in 0..3 {
                sums[vertex as usize][axis] += normal[axis];
            }
        }
    }
    sums.into_iter()
        .map(|sum| {
            let length = dot(sum, sum).sqrt();
            if length > 0.0 && length.is_finite() { sum.map(|v| (v / length) as f32) } else { [0.0, 0.0, 1.0] }
        })
        .collect()
}

/// Total area of the triangles in mm².
pub fn surface_area_mm2(mesh: &LabelMesh) -> f64 {
    triangle_corners(mesh)
        .map(|[a, b, c]| {
            let normal = cross(subtract(b, a), subtract(c, a));
            0.5 * dot(normal, normal).sqrt()
        })
        .sum()
}

/// Signed volume enclosed by the triangles in mm³: positive for a closed surface wound
/// counter-clockwise seen from outside. (Computed about the first vertex rather than the world
/// origin, which gives the same value for a closed surface with less rounding.)
pub fn signed_volume_mm3(mesh: &LabelMesh) -> f64 {
    let Some(reference) = mesh.positions.first().map(|p| p.map(f64::from)) else {
        return 0.0;
    };
    triangle_corners(mesh)
        .map(|[a, b, c]| {
            let (a, b, c) = (subtract(a, reference), subtract(b, reference), subtract(c, reference));
            dot(a, cross(b, c)) / 6.0
        })
        .sum()
}

/// Signed volume enclosed by indexed triangles (flat index list), about the first vertex.
fn indexed_volume_mm3(positions: &[[f32; 3]], indices: &[u32]) -> f64 {
    let Some(reference) = positions.first().map(|p| p.map(f64::from)) else {
        return 0.0;
    };
    indices
        .chunks_exact(3)
        .map(|t| {
            let [a, b, c] = [t[0], t[1], t[2]].map(|v| subtract(positions[v as usize].map(f64::from), reference));
            dot(a, cross(b, c)) / 6.0
        })
        .sum()
}

/// Smallest and largest world coordinate of the vertices on each axis, or `None` without vertices.
pub fn bounding_box_mm(mesh: &LabelMesh) -> Option<([f64; 3], [f64; 3])> {
    let first = mesh.positions.first()?.map(f64::from);
    let mut minimum = first;
    let mut maximum = first;
    for position in &mesh.positions {
        for axis in 0..3 {
            let value = f64::from(position[axis]);
            minimum[axis] = minimum[axis].min(value);
            maximum[axis] = maximum[axis].max(value);
        }
    }
    Some((minimum, maximum))
}

/// The corner positions of each triangle whose indices are all in range, as f64.
fn triangle_corners(mesh: &LabelMesh) -> impl Iterator<Item = [[f64; 3]; 3]> + '_ {
    mesh.triangles.iter().filter_map(|triangle| {
        let corner = |n: usize| mesh.positions.get(triangle[n] as usize).map(|p| p.map(f64::from));
        Some([corner(0)?, corner(1)?, corner(2)?])
    })
}

fn distance_squared(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|axis| (a[axis] - b[axis]) * (a[axis] - b[axis])).sum()
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
    use super::*;

    /// A closed tetrahedron (outward winding) and a strip of two more triangles hanging off vertex 3.
    const TETRAHEDRON: [u32; 12] = [0, 2, 1, 0, 1, 3, 1, 2, 3, 2, 0, 3];

    #[test]
    fn folds_are_found_and_locked_with_their_neighbourhood() {
        assert!(is_closed_manifold(&TETRAHEDRON));
        assert!(non_manifold_vertices(&TETRAHEDRON).is_empty());

        let mut doubled = TETRAHEDRON.to_vec();
        doubled.extend_from_slice(&[0, 2, 1]);
        assert!(!is_closed_manifold(&doubled));
        let mut faults = non_manifold_vertices(&doubled);
        faults.sort_unstable();
        faults.dedup();
        assert_eq!(faults, [0, 1, 2], "the repeated triangle's vertices");

        let open = &TETRAHEDRON[..9];
        let mut faults = non_manifold_vertices(open);
        faults.sort_unstable();
        faults.dedup();
        assert_eq!(faults, [0, 2, 3], "the border of the missing face");
        assert_eq!(non_manifold_vertices(&[4, 4, 5]), [4, 4, 5], "a degenerate triangle (its edges pair up)");

        // Locking spreads two rings through the mesh, and no further.
        let strip = [0, 1, 2, 2, 1, 3, 3, 1, 4, 4, 1, 5, 5, 6, 7, 7, 6, 8];
        let mut locks = vec![false; 9];
        lock_around(&strip, &[0], &mut locks);
        assert_eq!(locks, [true, true, true, true, true, true, false, false, false]);
    }

    #[test]
    fn manifold_faults_match_counting_every_directed_edge() {
        // Random triangle soups over few vertices (many repeated and unpaired edges), against the
        // definition: each use of a directed edge after its first, and each use of an edge whose
        // reverse is never used, is a fault; so is each degenerate triangle.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |bound: u32| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % u64::from(bound)) as u32
        };
        for case in 0..300 {
            let vertices = 3 + case % 9;
            let indices: Vec<u32> = (0..3 * (1 + case % 17)).map(|_| next(vertices)).collect();
            let mut uses = std::collections::HashMap::new();
            let mut expected = Vec::new();
            for triangle in indices.chunks_exact(3) {
                if triangle[0] == triangle[1] || triangle[1] == triangle[2] || triangle[0] == triangle[2] {
                    expected.extend_from_slice(&[
                        [triangle[0], u32::MAX],
                        [triangle[1], u32::MAX],
                        [triangle[2], u32::MAX],
                    ]);
                }
                for n in 0..3 {
                    *uses.entry((triangle[n], triangle[(n + 1) % 3])).or_insert(0) += 1;
                }
            }
            for (&(from, to), &count) in &uses {
                let faulty = if uses.contains_key(&(to, from)) { count - 1 } else { count };
                expected.extend(std::iter::repeat_n([from, to], faulty));
            }
            let faults = non_manifold_vertices(&indices);
            // Degenerate triangles come first, three vertices each, in triangle order.
            let degenerate = indices.chunks_exact(3).filter(|t| t[0] == t[1] || t[1] == t[2] || t[0] == t[2]).count();
            let mut found: Vec<[u32; 2]> = faults[..3 * degenerate].iter().map(|&v| [v, u32::MAX]).collect();
            found.extend(faults[3 * degenerate..].chunks_exact(2).map(|pair| [pair[0], pair[1]]));
            found.sort_unstable();
            expected.sort_unstable();
            assert_eq!(found, expected, "case {case}: {indices:?}");
            assert_eq!(is_closed_manifold(&indices), expected.is_empty());
        }
    }

    /// A closed surface: a cube of `n` × `n` quads a face, pushed out onto a sphere of radius 10
    /// with a ripple, wound outward. Returns positions and the flat triangle list.
    fn rippled_sphere(n: i32) -> (Vec<[f32; 3]>, Vec<u32>) {
        let mut positions = Vec::new();
        let mut index_of = std::collections::HashMap::new();
        let mut vertex = |point: [i32; 3]| {
            *index_of.entry(point).or_insert_with(|| {
                let p = point.map(|c| c as f32 / n as f32 * 2.0 - 1.0);
                let length = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
                let radius = 10.0 + 0.8 * (3.0 * p[0]).sin() * (2.0 * p[1]).cos();
                positions.push(p.map(|c| c / length * radius));
                positions.len() as u32 - 1
            })
        };
        let mut indices = Vec::new();
        for axis in 0..3 {
            for side in [0, n] {
                for i in 0..n {
                    for j in 0..n {
                        let corner = |di: i32, dj: i32| {
                            let mut point = [0; 3];
                            point[axis] = side;
                            point[(axis + 1) % 3] = i + di;
                            point[(axis + 2) % 3] = j + dj;
                            point
                        };
                        let quad = [corner(0, 0), corner(1, 0), corner(1, 1), corner(0, 1)].map(&mut vertex);
                        let [a, b, c, d] = if side == n { quad } else { [quad[0], quad[3], quad[2], quad[1]] };
                        indices.extend_from_slice(&[a, b, c, a, c, d]);
                    }
                }
            }
        }
        (positions, indices)
    }

    #[test]
    fn a_surface_simplified_in_parts_is_closed_keeps_its_volume_and_meets_the_reduction() {
        let (positions, indices) = rippled_sphere(48);
        assert!(is_closed_manifold(&indices), "the test surface itself");
        let volume = indexed_volume_mm3(&positions, &indices);
        assert!(volume > 3000.0, "outward winding: {volume}");
        let goal = SimplificationGoal { reduction: 0.75, max_error: 0.2, voxel_volume: volume };
        let triangles = indices.len() / 3;
        let (whole, _) = simplify_in_parts(indices.clone(), &positions, &goal, usize::MAX);
        for part_size in [triangles / 4, triangles / 7] {
            let (parts, shared) = cut_into_parts(&indices, &positions, part_size);
            assert!(parts.len() >= 4, "{} parts of {part_size} triangles", parts.len());
            assert!(shared.iter().any(|&s| s), "slabs share vertices");
            let (simplified, retries) = simplify_in_parts(indices.clone(), &positions, &goal, part_size);
            assert!(is_closed_manifold(&simplified), "slabs of {part_size}: not closed ({retries} retries)");
            let kept = simplified.len() / 3;
            assert!(kept < triangles / 2, "slabs of {part_size}: {kept} of {triangles} triangles kept");
            // Locked seams keep a few more triangles than simplifying the whole at once.
            assert!(kept <= whole.len() / 3 * 3 / 2, "{kept} triangles against {} whole", whole.len() / 3);
            let volume_after = indexed_volume_mm3(&positions, &simplified);
            assert!((volume_after - volume).abs() < 0.01 * volume, "volume {volume_after} of {volume}");
            // Deterministic: the same input gives the same triangles.
            assert_eq!(simplify_in_parts(indices.clone(), &positions, &goal, part_size).0, simplified);
        }
    }
}
