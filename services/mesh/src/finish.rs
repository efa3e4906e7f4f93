//! From a label's surface topology and the smoothed corners to the mesh the writers export:
//! world positions, triangles, simplification (meshoptimizer), vertex cache and fetch order,
//! normals.

use iris_shared::volume::Affine;

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
        let spacing = affine.spacing();
        let voxel = spacing.iter().copied().fold(f64::INFINITY, f64::min) as f32;
        let volume_before = indexed_volume_mm3(&positions, &indices);
        let voxel_volume = topology.voxels as f64 * affine.linear_determinant().abs();
        // meshoptimizer promises neither a manifold result (a collapse can fold the surface onto
        // itself) nor a kept volume (a small label cut down to a few triangles loses its
        // rounded parts). A result that is not a closed manifold, or whose enclosed volume is
        // more than MAX_SIMPLIFIED_VOLUME_ERROR off the label's voxel volume (and moved by more
        // than a quarter of that by simplification), is refused. A fold is local: first the
        // vertices around it (two rings in the extracted mesh) are locked and the same reduction
        // is tried again, up to LOCK_ROUNDS times; then simplification is retried with less
        // reduction. The unsimplified mesh always stands.
        let shares = [1.0, 0.85, 0.7, 0.5, 0.25];
        let mut share = 0;
        let mut locks: Vec<bool> = Vec::new();
        let mut lock_rounds = 0;
        while share < shares.len() {
            let attempt_reduction = reduction * shares[share];
            let target_triangles = ((extracted_triangles as f64) * (1.0 - attempt_reduction)).round().max(4.0) as usize;
            let options = meshopt::SimplifyOptions::ErrorAbsolute | meshopt::SimplifyOptions::RegularizeLight;
            let error = settings.max_error_voxels * voxel;
            let simplified = if locks.is_empty() {
                meshopt::simplify_decoder(&indices, &positions, target_triangles * 3, error, options, None)
            } else {
                meshopt::simplify_with_locks_decoder(
                    &indices,
                    &positions,
                    &locks,
                    target_triangles * 3,
                    error,
                    options,
                    None,
                )
            };
            let volume_after = indexed_volume_mm3(&positions, &simplified);
            let volume_kept = (volume_after - voxel_volume).abs() <= MAX_SIMPLIFIED_VOLUME_ERROR * voxel_volume
                || (volume_after - volume_before).abs() <= 0.25 * MAX_SIMPLIFIED_VOLUME_ERROR * volume_before.abs();
            if volume_kept && is_closed_manifold(&simplified) {
                indices = simplified;
                break;
            }
            simplification_retries += 1;
            if volume_kept && lock_rounds < LOCK_ROUNDS {
                if locks.is_empty() {
                    locks = vec![false; positions.len()];
                }
                lock_around(&indices, &non_manifold_vertices(&simplified), &mut locks);
                lock_rounds += 1;
            } else {
                share += 1;
            }
        }
    }
    meshopt::optimize_vertex_cache_in_place(&mut indices, positions.len());
    let positions = meshopt::optimize_vertex_fetch(&mut indices, &positions);
    let triangles: Vec<[u32; 3]> = indices.chunks_exact(3).map(|t| [t[0], t[1], t[2]]).collect();
    let normals = vertex_normals(&positions, &triangles);
    let mesh = LabelMesh { label: topology.label, name, color_srgb, positions, normals, triangles };
    (mesh, FinishFigures { extracted_triangles, simplification_retries })
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

/// Rounds of locking the vertices around a fold before simplifying less (see [`finish_label`]).
const LOCK_ROUNDS: u32 = 2;

/// Vertices of the faults that make `indices` not a closed manifold: degenerate triangles, directed
/// edges used twice, and edges without their reverse.
fn non_manifold_vertices(indices: &[u32]) -> Vec<u32> {
    let mut faults = Vec::new();
    let mut edges: Vec<u64> = Vec::with_capacity(indices.len());
    for triangle in indices.chunks_exact(3) {
        if triangle[0] == triangle[1] || triangle[1] == triangle[2] || triangle[0] == triangle[2] {
            faults.extend_from_slice(triangle);
        }
        for n in 0..3 {
            edges.push((u64::from(triangle[n]) << 32) | u64::from(triangle[(n + 1) % 3]));
        }
    }
    edges.sort_unstable();
    for (n, &edge) in edges.iter().enumerate() {
        let repeated = n > 0 && edges[n - 1] == edge;
        if repeated || edges.binary_search(&edge.rotate_left(32)).is_err() {
            faults.extend_from_slice(&[(edge >> 32) as u32, edge as u32]);
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
    let mut edges: Vec<u64> = Vec::with_capacity(indices.len());
    for triangle in indices.chunks_exact(3) {
        for n in 0..3 {
            let (a, b) = (triangle[n], triangle[(n + 1) % 3]);
            if a == b {
                return false;
            }
            edges.push((u64::from(a) << 32) | u64::from(b));
        }
    }
    edges.sort_unstable();
    if edges.windows(2).any(|pair| pair[0] == pair[1]) {
        return false;
    }
    edges.iter().all(|&edge| edges.binary_search(&(edge.rotate_left(32))).is_ok())
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
}
