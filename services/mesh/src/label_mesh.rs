//! The finished surface of one label: what every writer (GLB, OBJ/MTL, STL) and the manifest read.

/// One label's finished surface: smoothed, simplified, with normals, in world RAS millimetres.
///
/// Invariants (established by the mesh pipeline, relied on by the writers): every index in
/// `triangles` is `< positions.len()`; `normals.len() == positions.len()`; triangles are wound
/// counter-clockwise seen from outside the label in RAS world space; normals are unit length
/// and point outwards.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMesh {
    /// The label value in the label map.
    pub label: u16,
    /// The label's name from the label table, as given (not made safe for any file format).
    pub name: String,
    /// Display colour, sRGB 0–255 (writers that need linear colour convert it).
    pub color_srgb: [u8; 3],
    /// Vertex positions in world millimetres (RAS).
    pub positions: Vec<[f32; 3]>,
    /// Unit outward vertex normals in RAS.
    pub normals: Vec<[f32; 3]>,
    /// Triangles as indices into `positions`.
    pub triangles: Vec<[u32; 3]>,
}
