//! Binary STL of one label's surface, in world RAS millimetres (the mesh's own coordinates).
//!
//! Layout (all little-endian): an 80-byte header (`IRIS Oculus <name> RAS mm`, zero-padded, cut at
//! a character boundary when the name is long; it never starts with `solid`, which readers take
//! for ASCII STL), the triangle count as u32, then 50 bytes per triangle: the facet normal
//! (3 × f32, computed from the triangle's vertices and their counter-clockwise order, unit length,
//! all zero for a degenerate triangle), the three vertices (3 × 3 × f32) and a zero u16 attribute.

use crate::label_mesh::LabelMesh;

/// Length of the binary STL header.
pub const STL_HEADER_BYTES: usize = 80;

/// Bytes per triangle record: normal, three vertices, attribute byte count.
pub const STL_TRIANGLE_BYTES: usize = 50;

/// The label's surface as a binary STL: `84 + 50 · triangles` bytes. Triangles that refer to a
/// vertex the mesh does not have (which the [`LabelMesh`] invariants rule out) are left out, and
/// the count says how many were written.
pub fn write_binary_stl(mesh: &LabelMesh) -> Vec<u8> {
    let triangles: Vec<[[f32; 3]; 3]> = mesh
        .triangles
        .iter()
        .filter_map(|triangle| {
            let vertex = |index: u32| usize::try_from(index).ok().and_then(|index| mesh.positions.get(index)).copied();
            Some([vertex(triangle[0])?, vertex(triangle[1])?, vertex(triangle[2])?])
        })
        .take(u32::MAX as usize)
        .collect();
    let mut stl = Vec::with_capacity(STL_HEADER_BYTES + 4 + STL_TRIANGLE_BYTES * triangles.len());
    stl.extend_from_slice(&stl_header(&mesh.name));
    // At most u32::MAX triangles were taken, so the count fits.
    stl.extend_from_slice(&(triangles.len() as u32).to_le_bytes());
    for vertices in &triangles {
        for vector in std::iter::once(facet_normal(vertices)).chain(vertices.iter().copied()) {
            for component in vector {
                stl.extend_from_slice(&component.to_le_bytes());
            }
        }
        stl.extend_from_slice(&0_u16.to_le_bytes());
    }
    stl
}

/// `IRIS Oculus <name> RAS mm`, cut to 80 bytes at a character boundary and zero-padded.
fn stl_header(name: &str) -> [u8; STL_HEADER_BYTES] {
    let text = format!("IRIS Oculus {name} RAS mm");
    let mut length = text.len().min(STL_HEADER_BYTES);
    while !text.is_char_boundary(length) {
        length -= 1;
    }
    let mut header = [0; STL_HEADER_BYTES];
    header[..length].copy_from_slice(&text.as_bytes()[..length]);
    header
}

/// Unit normal of the counter-clockwise triangle `a, b, c` (right-hand rule); zero when degenerate.
fn facet_normal([a, b, c]: &[[f32; 3]; 3]) -> [f32; 3] {
    let edge = |from: &[f32; 3], to: &[f32; 3]| -> [f64; 3] {
        std::array::from_fn(|axis| f64::from(to[axis]) - f64::from(from[axis]))
    };
    let (first, second) = (edge(a, b), edge(a, c));
    let normal = [
        first[1] * second[2] - first[2] * second[1],
        first[2] * second[0] - first[0] * second[2],
        first[0] * second[1] - first[1] * second[0],
    ];
    let length = normal.iter().map(|component| component * component).sum::<f64>().sqrt();
    if length > 0.0 && length.is_finite() { normal.map(|component| (component / length) as f32) } else { [0.0; 3] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tetrahedron() -> LabelMesh {
        // Corner 0 at the origin, the others on the axes; faces wound counter-clockwise from outside.
        LabelMesh {
            label: 4,
            name: "Vena cava – 下大静脈".to_owned(),
            color_srgb: [0, 0, 255],
            positions: vec![[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]],
            normals: vec![[-0.577_350_3; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            triangles: vec![[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]],
        }
    }

    fn read_f32(bytes: &[u8], offset: usize) -> f32 {
        f32::from_le_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
    }

    fn read_vec3(bytes: &[u8], offset: usize) -> [f32; 3] {
        std::array::from_fn(|axis| read_f32(bytes, offset + 4 * axis))
    }

    /// The record of triangle `index`: (normal, vertices, attribute).
    fn record(stl: &[u8], index: usize) -> ([f32; 3], [[f32; 3]; 3], u16) {
        let start = STL_HEADER_BYTES + 4 + STL_TRIANGLE_BYTES * index;
        let vertices = std::array::from_fn(|vertex| read_vec3(stl, start + 12 + 12 * vertex));
        (read_vec3(stl, start), vertices, u16::from_le_bytes([stl[start + 48], stl[start + 49]]))
    }

    #[test]
    fn length_and_count_match_the_triangles() {
        let full = tetrahedron();
        let mut one_triangle = tetrahedron();
        one_triangle.triangles.truncate(1);
        let mut none = tetrahedron();
        none.triangles.clear();
        for (mesh, expected) in [(&full, 4_usize), (&one_triangle, 1), (&none, 0)] {
            let stl = write_binary_stl(mesh);
            assert_eq!(stl.len(), 84 + 50 * expected);
            assert_eq!(u32::from_le_bytes([stl[80], stl[81], stl[82], stl[83]]) as usize, expected);
        }
    }

    #[test]
    fn header_names_the_label_and_never_reads_as_ascii_stl() {
        let long_name = format!("a{}", "ü".repeat(60)); // 80 bytes would split a "ü"
        let cases = [
            ("Aorta", "IRIS Oculus Aorta RAS mm"),
            ("solid liver", "IRIS Oculus solid liver RAS mm"),
            (long_name.as_str(), ""),
        ];
        for (name, expected) in cases {
            let mesh = LabelMesh { name: name.to_owned(), ..tetrahedron() };
            let header = &write_binary_stl(&mesh)[..STL_HEADER_BYTES];
            assert!(!header.starts_with(b"solid"), "{name}");
            let text_length = header.iter().position(|byte| *byte == 0).unwrap_or(STL_HEADER_BYTES);
            assert!(header[text_length..].iter().all(|byte| *byte == 0), "zero padding");
            let text = std::str::from_utf8(&header[..text_length]).expect("cut at a character boundary");
            assert!(text.starts_with("IRIS Oculus "));
            if expected.is_empty() {
                assert!(text_length > STL_HEADER_BYTES - 2, "a long name fills the header");
            } else {
                assert_eq!(text, expected);
            }
        }
    }

    #[test]
    fn records_hold_unit_facet_normals_and_the_vertices() {
        let mesh = tetrahedron();
        let stl = write_binary_stl(&mesh);
        let expected_normals = [[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.577_350_3; 3]];
        for (index, triangle) in mesh.triangles.iter().enumerate() {
            let (normal, vertices, attribute) = record(&stl, index);
            for axis in 0..3 {
                assert!((normal[axis] - expected_normals[index][axis]).abs() < 1e-6, "triangle {index}: {normal:?}");
            }
            assert_eq!(vertices, triangle.map(|vertex| mesh.positions[vertex as usize]));
            assert_eq!(attribute, 0);
        }
    }

    #[test]
    fn degenerate_and_dangling_triangles() {
        let mesh = LabelMesh {
            triangles: vec![[0, 1, 1], [0, 1, 9], [0, 1, 2]],
            positions: vec![[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [20.0, 0.0, 0.0], [0.0, 0.0, 10.0]],
            ..tetrahedron()
        };
        let stl = write_binary_stl(&mesh);
        assert_eq!(stl.len(), 84 + 50 * 2, "the triangle with a missing vertex is left out");
        assert_eq!(record(&stl, 0).0, [0.0; 3], "repeated vertex");
        assert_eq!(record(&stl, 1).0, [0.0; 3], "collinear vertices");
    }
}
