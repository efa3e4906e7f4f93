//! The vertex-splitting rule: around each grid corner, which boundary faces of the 2×2×2 voxel
//! block pair up along its six half-edges, and so which cycles of faces become one vertex each
//! (see the module docs of [`super`]). Computed once per block configuration.

use super::insert_bit;

/// The other two axes of `axis`, in increasing order.
pub(super) fn other_axes(axis: usize) -> (usize, usize) {
    match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    }
}

/// The vertices of one corner configuration: how many, and which one each block face belongs to.
#[derive(Debug, Clone, Copy)]
pub(super) struct CornerGroups {
    pub(super) count: u8,
    /// Vertex (0-based, within the corner) of each of the 12 block faces; unused for non-boundary faces.
    pub(super) group_of_face: [u8; 12],
}

/// The two voxels (block indices) of block face `face` (`axis * 4 + u + 2v`, u and v the bits of
/// the other two axes in increasing order).
fn face_voxels(face: usize) -> (usize, usize) {
    let axis = face / 4;
    let (a1, a2) = other_axes(axis);
    let low = ((face & 1) << a1) | (((face >> 1) & 1) << a2);
    (low, low | (1 << axis))
}

/// The four block faces around the half-edge towards `side` (0: −, 1: +) of `axis`, in cyclic order.
fn faces_around_half_edge(axis: usize, side: usize) -> [usize; 4] {
    let (a1, a2) = other_axes(axis);
    // Faces of axis a1 and a2 whose voxels have bit `axis` = side; the face index stores the bits of
    // its own two other axes in increasing order.
    let face = |face_axis: usize, other: usize, bit_other: usize| -> usize {
        let (b1, b2) = other_axes(face_axis);
        let bit_of = |a: usize| {
            if a == axis {
                side
            } else if a == other {
                bit_other
            } else {
                0
            }
        };
        face_axis * 4 + bit_of(b1) + 2 * bit_of(b2)
    };
    [face(a1, a2, 0), face(a2, a1, 1), face(a1, a2, 1), face(a2, a1, 0)]
}

/// Bit `axis * 2 + side` set for each half-edge of a block for which [`diagonal_and_joined`] holds,
/// from a table built on first use.
pub(super) fn diagonal_and_joined_half_edges(block: u8) -> u8 {
    static TABLE: std::sync::OnceLock<[u8; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|block| {
            let mut bits = 0u8;
            for axis in 0..3 {
                for side in 0..2 {
                    if diagonal_and_joined(block as u8, axis, side) {
                        bits |= 1 << (axis * 2 + side);
                    }
                }
            }
            bits
        })
    })[usize::from(block)]
}

/// True when the four voxels around the half-edge (axis, side) hold the label in two diagonal
/// voxels that are joined by face-adjacent label voxels within the block.
fn diagonal_and_joined(block: u8, axis: usize, side: usize) -> bool {
    let around: [usize; 4] = std::array::from_fn(|n| insert_bit(n, axis, side));
    let inside: Vec<usize> = around.iter().copied().filter(|&b| block & (1 << b) != 0).collect();
    if inside.len() != 2 || (inside[0] ^ inside[1]).count_ones() != 2 {
        return false;
    }
    // Flood fill from one over face-adjacent label voxels of the block.
    let mut reached = 1u8 << inside[0];
    loop {
        let mut grown = reached;
        for b in 0..8 {
            if reached & (1 << b) != 0 {
                for axis in 0..3 {
                    let neighbour = b ^ (1 << axis);
                    if block & (1 << neighbour) != 0 {
                        grown |= 1 << neighbour;
                    }
                }
            }
        }
        if grown == reached {
            break;
        }
        reached = grown;
    }
    reached & (1 << inside[1]) != 0
}

/// The vertices of a corner configuration (block bits and outside-pairing bits, see
/// [`TopologyBuilder::corner_config`]), from a table built on first use.
pub(super) fn corner_groups(config: u16) -> CornerGroups {
    static TABLE: std::sync::OnceLock<Vec<CornerGroups>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..1u32 << 14).map(|config| compute_corner_groups(config as u16)).collect())
        [usize::from(config)]
}

fn compute_corner_groups(config: u16) -> CornerGroups {
    let block = (config & 0xff) as u8;
    let outside_pairing = config >> 8;
    let inside = |b: usize| block & (1 << b) != 0;
    let is_boundary = |face: usize| {
        let (a, b) = face_voxels(face);
        inside(a) != inside(b)
    };
    let mut parent: [usize; 12] = std::array::from_fn(|n| n);
    fn root(parent: &mut [usize; 12], mut n: usize) -> usize {
        while parent[n] != n {
            parent[n] = parent[parent[n]];
            n = parent[n];
        }
        n
    }
    let mut join = |a: usize, b: usize| {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        parent[ra.max(rb)] = ra.min(rb);
    };
    for axis in 0..3 {
        for side in 0..2 {
            let faces: Vec<usize> =
                faces_around_half_edge(axis, side).into_iter().filter(|&face| is_boundary(face)).collect();
            match faces.len() {
                2 => join(faces[0], faces[1]),
                4 => {
                    // Pair the faces sharing a label voxel, or an outside voxel where the edge says so.
                    let pair_inside = outside_pairing & (1 << (axis * 2 + side)) == 0;
                    let key = |face: usize| {
                        let (a, b) = face_voxels(face);
                        if inside(a) == pair_inside { a } else { b }
                    };
                    for (n, &first) in faces.iter().enumerate() {
                        for &second in &faces[n + 1..] {
                            if key(first) == key(second) {
                                join(first, second);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut group_of_face = [0u8; 12];
    let mut group_of_root = [u8::MAX; 12];
    let mut count = 0u8;
    for (face, group) in group_of_face.iter_mut().enumerate() {
        if !is_boundary(face) {
            continue;
        }
        let r = root(&mut parent, face);
        if group_of_root[r] == u8::MAX {
            group_of_root[r] = count;
            count += 1;
        }
        *group = group_of_root[r];
    }
    CornerGroups { count, group_of_face }
}
