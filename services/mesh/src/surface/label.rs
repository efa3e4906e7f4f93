//! One label's closed, manifold surface within its bounding box: its boundary faces as quads,
//! and its vertices, split where the label touches itself (see [`super::corner_groups`]).

use iris_volume::volume::Volume;

use super::census::VoxelBounds;
use super::corner_graph::CornerGraph;
use super::corner_groups::{corner_groups, diagonal_and_joined_half_edges, other_axes};
use super::{LabelTopology, end_of_run};

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

/// Voxels inside a run skipped at once when none of them has an exposed face (see [`extract_label`]).
const INTERIOR_BLOCK: usize = 16;

/// Marks a corner slot whose vertices are not made yet.
const NO_VERTEX: u32 = u32::MAX;

/// Builds the surface of one label from the voxels inside its bounding box. Voxels outside the
/// bounding box, and so outside the volume, are never of the label.
pub(super) fn extract_label(
    labels: &Volume<u8>,
    graph: &CornerGraph,
    label: u8,
    voxels: u64,
    bounds: VoxelBounds,
) -> LabelTopology {
    let size = [0, 1, 2].map(|axis| bounds.highest[axis] - bounds.lowest[axis] + 1);
    let [nx, ny, _] = labels.dims();
    let data = labels.voxels();
    let (row_stride, slice_stride) = (nx, nx * ny);
    let mut builder = TopologyBuilder {
        labels,
        graph,
        label,
        origin: bounds.lowest,
        size,
        corners_per_row: size[0] + 1,
        lower: vec![NO_VERTEX; (size[0] + 1) * (size[1] + 1)],
        upper: vec![NO_VERTEX; (size[0] + 1) * (size[1] + 1)],
        lower_configs: vec![0; (size[0] + 1) * (size[1] + 1)],
        upper_configs: vec![0; (size[0] + 1) * (size[1] + 1)],
        slice: 0,
        vertex_nodes: Vec::new(),
        quads: Vec::new(),
    };
    for k in 0..size[2] {
        builder.begin_voxel_slice(k);
        for j in 0..size[1] {
            let row_start = labels.linear_index(bounds.lowest[0], bounds.lowest[1] + j, bounds.lowest[2] + k);
            let row = &data[row_start..row_start + size[0]];
            // Rows away from the box's faces: their y and z neighbours lie inside the box.
            let inner_rows = j > 0 && j + 1 < size[1] && k > 0 && k + 1 < size[2];
            // The label's voxels of the row: memchr skips to the next run of them.
            let mut next = 0;
            while let Some(found) = memchr::memchr(label, &row[next..]) {
                let run_start = next + found;
                let run_end = end_of_run(row, run_start, label);
                next = run_end;
                let mut i = run_start;
                while i < run_end {
                    // Voxels strictly inside the run (their x neighbours are of the label) whose
                    // four y and z neighbours are of the label too have no exposed face: skipped
                    // a block at a time, with one vectorised comparison of the four rows beside.
                    if inner_rows && i > run_start && i + INTERIOR_BLOCK < run_end {
                        let at = row_start + i;
                        let beside = [at - row_stride, at + row_stride, at - slice_stride, at + slice_stride];
                        let differs = beside.iter().fold(0u8, |any, &start| {
                            data[start..start + INTERIOR_BLOCK].iter().fold(any, |any, &value| any | (value ^ label))
                        });
                        if differs == 0 {
                            i += INTERIOR_BLOCK;
                            continue;
                        }
                    }
                    let index = row_start + i;
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
                    i += 1;
                }
            }
        }
    }
    LabelTopology { label: u16::from(label), voxels, vertex_nodes: builder.vertex_nodes, quads: builder.quads }
}

/// Accumulates one label's vertices and quads, two corner layers at a time: voxel slice `k`
/// (local) only touches corner layers `k` and `k + 1`.
struct TopologyBuilder<'a> {
    labels: &'a Volume<u8>,
    graph: &'a CornerGraph,
    label: u8,
    /// Voxel index of the bounding box's lowest voxel; local corner (0, 0, 0) is its lowest corner.
    origin: [usize; 3],
    size: [usize; 3],
    corners_per_row: usize,
    /// First vertex of each corner slot of the lower and upper corner layer, and the corner's
    /// configuration (see [`corner_groups`]) once its vertices exist.
    lower: Vec<u32>,
    upper: Vec<u32>,
    lower_configs: Vec<u16>,
    upper_configs: Vec<u16>,
    slice: usize,
    vertex_nodes: Vec<u32>,
    quads: Vec<[u32; 4]>,
}

impl TopologyBuilder<'_> {
    fn begin_voxel_slice(&mut self, k: usize) {
        if k > 0 {
            std::mem::swap(&mut self.lower, &mut self.upper);
            std::mem::swap(&mut self.lower_configs, &mut self.upper_configs);
            self.upper.fill(NO_VERTEX);
        }
        self.slice = k;
    }

    /// Adds face `face` (see [`FACE_CORNERS`]) of local voxel (i, j) of the current slice.
    fn add_face(&mut self, i: usize, j: usize, face: usize) {
        let axis = face / 2;
        let (a1, a2) = other_axes(axis);
        let quad = FACE_CORNERS[face].map(|offset| {
            // The face, seen from its corner: the block offsets of its voxel are 1 - offset.
            let face_at_corner = axis * 4 + (1 - offset[a1]) + 2 * (1 - offset[a2]);
            self.vertex([i + offset[0], j + offset[1]], offset[2] == 1, face_at_corner)
        });
        self.quads.push(quad);
    }

    /// The vertex of block face `face_at_corner` at local corner `corner` of the lower or upper layer.
    fn vertex(&mut self, corner: [usize; 2], upper: bool, face_at_corner: usize) -> u32 {
        let slot = corner[1] * self.corners_per_row + corner[0];
        let existing = if upper { self.upper[slot] } else { self.lower[slot] };
        let (first, config) = if existing != NO_VERTEX {
            (existing, if upper { self.upper_configs[slot] } else { self.lower_configs[slot] })
        } else {
            let global = [
                self.origin[0] + corner[0],
                self.origin[1] + corner[1],
                self.origin[2] + self.slice + usize::from(upper),
            ];
            let config = self.corner_config(global);
            let groups = corner_groups(config);
            // A corner with a face of the label is on a boundary, so it has a node.
            let node = self.graph.node_at(global).unwrap_or(0);
            let first = self.vertex_nodes.len() as u32;
            self.vertex_nodes.extend(std::iter::repeat_n(node, usize::from(groups.count)));
            if upper {
                self.upper[slot] = first;
                self.upper_configs[slot] = config;
            } else {
                self.lower[slot] = first;
                self.lower_configs[slot] = config;
            }
            (first, config)
        };
        first + u32::from(corner_groups(config).group_of_face[face_at_corner])
    }

    /// Whether the voxel at global voxel coordinates `(i, j, k)` (possibly -1 or past the end:
    /// outside) is of the label.
    fn is_label(&self, voxel: [isize; 3]) -> bool {
        let inside = (0..3).all(|axis| {
            voxel[axis] >= self.origin[axis] as isize && voxel[axis] < (self.origin[axis] + self.size[axis]) as isize
        });
        inside && *self.labels.get(voxel[0] as usize, voxel[1] as usize, voxel[2] as usize) == self.label
    }

    /// The label's 8-bit block configuration at a global corner (bit b = dx + 2dy + 4dz for the
    /// voxel at corner - 1 + (dx, dy, dz)), and in bits 8–13 which half-edges pair faces around
    /// their outside voxels (see the module documentation).
    fn corner_config(&self, corner: [usize; 3]) -> u16 {
        let block = self.block_at(corner);
        let joined = diagonal_and_joined_half_edges(block);
        if joined == 0 {
            return u16::from(block);
        }
        let mut outside_pairing = 0u16;
        for axis in 0..3 {
            for side in 0..2 {
                if joined & (1 << (axis * 2 + side)) == 0 {
                    continue;
                }
                // The same edge seen from its other end: that corner's block, the other side.
                let mut other = corner.map(|c| c as isize);
                other[axis] += if side == 1 { 1 } else { -1 };
                let other_block = self.block_at_signed(other);
                if diagonal_and_joined_half_edges(other_block) & (1 << (axis * 2 + 1 - side)) != 0 {
                    outside_pairing |= 1 << (axis * 2 + side);
                }
            }
        }
        u16::from(block) | (outside_pairing << 8)
    }

    fn block_at(&self, corner: [usize; 3]) -> u8 {
        self.block_at_signed(corner.map(|c| c as isize))
    }

    fn block_at_signed(&self, corner: [isize; 3]) -> u8 {
        // Fast path: all eight voxels inside the bounding box (most corners).
        let inside = (0..3).all(|axis| {
            corner[axis] > self.origin[axis] as isize && corner[axis] < (self.origin[axis] + self.size[axis]) as isize
        });
        if inside {
            let [nx, ny, _] = self.labels.dims();
            let data = self.labels.voxels();
            let lowest =
                self.labels.linear_index(corner[0] as usize - 1, corner[1] as usize - 1, corner[2] as usize - 1);
            let mut block = 0u8;
            for b in 0..8 {
                let index = lowest + (b & 1) + ((b >> 1) & 1) * nx + (b >> 2) * nx * ny;
                block |= u8::from(data[index] == self.label) << b;
            }
            return block;
        }
        let mut block = 0u8;
        for b in 0..8 {
            let voxel = [
                corner[0] - 1 + (b & 1) as isize,
                corner[1] - 1 + ((b >> 1) & 1) as isize,
                corner[2] - 1 + (b >> 2) as isize,
            ];
            if self.is_label(voxel) {
                block |= 1 << b;
            }
        }
        block
    }
}
