//! Binary glTF 2.0 (GLB) export of finished label surfaces: one node, one mesh and one material per
//! label, all geometry in the GLB's binary chunk.
//!
//! # Coordinate frame
//!
//! The meshes are in world RAS millimetres (+x towards the patient's right, +y anterior,
//! +z superior). glTF is in metres with +Y up, so the scene has a single root node,
//! [`ROOT_NODE_NAME`], whose `matrix` ([`RAS_MILLIMETRES_TO_GLTF_METRES`]) maps RAS millimetres to
//! glTF metres:
//!
//! ```text
//! x_gltf = -0.001 · x_ras     (+X is the patient's left)
//! y_gltf =  0.001 · z_ras     (+Y is superior: up)
//! z_gltf =  0.001 · y_ras     (+Z is anterior: the patient faces a default glTF camera)
//! ```
//!
//! The linear part is 0.001 times a proper rotation (determinant +1), so triangles that are
//! counter-clockwise seen from outside in RAS stay counter-clockwise seen from outside in glTF and
//! normals stay outward. Every label is a child node of the root; vertex data stays in RAS
//! millimetres (or, quantized, in a per-label integer grid whose dequantisation is the child
//! node's transform), so the root matrix is the only place the frame change happens.
//!
//! # Geometry encodings ([`GlbGeometry`])
//!
//! * `Float`: core glTF 2.0. `POSITION` and `NORMAL` are `FLOAT` `VEC3` (positions with the
//!   `min`/`max` the specification requires); indices are `UNSIGNED_SHORT` when the label has
//!   fewer than 65 536 vertices, else `UNSIGNED_INT`.
//! * `Quantized`: `KHR_mesh_quantization` (used and required). `POSITION` is `SHORT` `VEC3`, not
//!   normalized, on a uniform per-label grid: the stored integer `q` stands for
//!   `translation + step · q` millimetres, and the child node carries that `translation` and a
//!   uniform `scale` of `[step; 3]` (uniform, so the node transform does not bend normals). The
//!   grid is centred on the label's bounding box and its step is the smallest one that keeps every
//!   vertex within ±32 767, so a position is off by at most half a step (about 1/65 534 of the
//!   label's largest extent). Elements are padded to 8 bytes (`byteStride` 8) because glTF
//!   requires vertex attributes to be 4-byte aligned; the accessor `min`/`max` are the integers
//!   actually stored. `NORMAL` is normalized `BYTE` `VEC3` (`round(127 · n)`), padded to
//!   `byteStride` 4.
//! * `MeshoptCompressed`: `EXT_meshopt_compression` over the quantized layout (both extensions
//!   used and required). Every buffer view of the quantized layout is declared in a fallback
//!   buffer (buffer 1: `byteLength` only, no `uri`, marked
//!   `extensions.EXT_meshopt_compression.fallback = true`); its extension object points at the
//!   compressed bytes in the GLB binary chunk (buffer 0). Vertex streams use mode `ATTRIBUTES`
//!   (meshoptimizer vertex codec version 0, header byte `0xa0`, the one the extension specifies)
//!   and indices mode `TRIANGLES` (index codec version 1, header `0xe1`), no filters. Vertices are
//!   compressed in the order given; the mesh pipeline's vertex cache / fetch optimisation is what
//!   makes them compress well. The triangle codec keeps the order and winding of triangles but may
//!   rotate the three indices within one, so a decoder's index buffer can differ from the
//!   quantized layout's by such rotations (the same surface).
//!
//! Labels without triangles get no node. Names (node, mesh and material) are the label names as
//! given; node and mesh carry `extras` `{"label": <id>}`. Each material is metallic-roughness
//! with the label colour converted from sRGB to linear, metallic 0, roughness
//! [`MATERIAL_ROUGHNESS`], single-sided. Every buffer view starts on a 4-byte boundary, the JSON
//! chunk is padded with spaces and the binary chunk with zeros. The output is deterministic: the
//! same meshes, encoding and generator give the same bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use gltf_json::accessor::{ComponentType, GenericComponentType, Type as AccessorType};
use gltf_json::buffer::{Stride, Target, View};
use gltf_json::material::{PbrBaseColorFactor, PbrMetallicRoughness, StrengthFactor};
use gltf_json::mesh::{Mode, Primitive, Semantic};
use gltf_json::validation::{Checked, USize64};
use gltf_json::{Accessor, Asset, Buffer, Index, Material, Mesh, Node, Root, Scene, extensions};
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Map, Value, json};

use crate::label_mesh::LabelMesh;

/// Name of the scene's single root node, the one that carries the RAS-millimetre → glTF-metre matrix.
pub const ROOT_NODE_NAME: &str = "iris_ras_mm";

/// The root node's `matrix` (column-major, as glTF stores it): RAS millimetres to glTF metres,
/// `(x, y, z)` ↦ `(-0.001·x, 0.001·z, 0.001·y)`.
#[rustfmt::skip]
pub const RAS_MILLIMETRES_TO_GLTF_METRES: [f32; 16] = [
    -0.001, 0.0,   0.0,   0.0, // column 0: image of RAS +x (right) is glTF -X
    0.0,    0.0,   0.001, 0.0, // column 1: image of RAS +y (anterior) is glTF +Z
    0.0,    0.001, 0.0,   0.0, // column 2: image of RAS +z (superior) is glTF +Y
    0.0,    0.0,   0.0,   1.0,
];

/// Roughness factor of every label material (metallic is 0).
pub const MATERIAL_ROUGHNESS: f32 = 0.6;

/// Name of the glTF extension for integer vertex attributes.
pub const KHR_MESH_QUANTIZATION: &str = "KHR_mesh_quantization";

/// Name of the glTF extension for meshoptimizer-compressed buffer views.
pub const EXT_MESHOPT_COMPRESSION: &str = "EXT_meshopt_compression";

/// How vertex and index data are stored in the GLB (a per-job option; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GlbGeometry {
    /// 32-bit float positions and normals: core glTF 2.0, read by every loader.
    Float,
    /// `KHR_mesh_quantization`: 16-bit integer positions on a per-label grid, 8-bit normals.
    Quantized,
    /// `EXT_meshopt_compression` on top of the quantized layout: smallest, needs a loader with a
    /// meshoptimizer decoder.
    MeshoptCompressed,
}

/// A GLB geometry option that is not one of `"float"`, `"quantized"` or `"meshopt"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown GLB geometry {given:?}: expected \"float\", \"quantized\" or \"meshopt\"")]
pub struct GlbGeometryParseError {
    /// The text that was given.
    pub given: String,
}

/// Why a GLB could not be written. Each is a property of the input meshes, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum GlbError {
    /// A label's `normals` and `positions` differ in length.
    #[error("label {label} has {positions} positions but {normals} normals")]
    NormalCountMismatch {
        /// The label value.
        label: u16,
        /// Number of positions.
        positions: usize,
        /// Number of normals.
        normals: usize,
    },
    /// A triangle refers to a vertex that does not exist.
    #[error("label {label}: triangle index {index} is out of range for {vertex_count} vertices")]
    IndexOutOfRange {
        /// The label value.
        label: u16,
        /// The offending index.
        index: u32,
        /// Number of vertices of the label.
        vertex_count: usize,
    },
    /// A position or normal component is NaN or infinite.
    #[error("label {label}: vertex {vertex} has a non-finite position or normal")]
    NonFiniteVertex {
        /// The label value.
        label: u16,
        /// Index of the vertex.
        vertex: usize,
    },
    /// The meshoptimizer encoder reported an error.
    #[error("label {label}: meshopt encoding failed")]
    MeshoptEncoding {
        /// The label value.
        label: u16,
        /// The encoder's error.
        #[source]
        source: meshopt::Error,
    },
    /// The glTF JSON could not be serialised.
    #[error("the glTF JSON could not be serialised: {0}")]
    Json(#[from] serde_json::Error),
    /// The GLB would not fit the format's 32-bit length field.
    #[error("the GLB would be {bytes} bytes, over the format's 4 GiB limit")]
    TooLarge {
        /// The length the GLB would have.
        bytes: u64,
    },
}

/// Writes `meshes` as one binary glTF 2.0 file: one child node, mesh and material per label with
/// triangles (labels without triangles are left out), under the RAS → glTF root node.
/// `generator` goes into `asset.generator`.
pub fn write_glb<'a>(
    meshes: impl IntoIterator<Item = &'a LabelMesh>,
    geometry: GlbGeometry,
    generator: &str,
) -> Result<Vec<u8>, GlbError> {
    let mut document = DocumentBuilder::new(geometry, generator);
    for mesh in meshes.into_iter().filter(|mesh| !mesh.triangles.is_empty()) {
        check_label_mesh(mesh)?;
        document.add_label(mesh)?;
    }
    document.finish()
}

impl GlbGeometry {
    /// Every encoding, in the order of the module docs.
    pub const ALL: [GlbGeometry; 3] = [GlbGeometry::Float, GlbGeometry::Quantized, GlbGeometry::MeshoptCompressed];

    /// Parses the per-job option: `"float"`, `"quantized"` or `"meshopt"` (exactly, lower case).
    pub fn parse(text: &str) -> Result<GlbGeometry, GlbGeometryParseError> {
        match text {
            "float" => Ok(GlbGeometry::Float),
            "quantized" => Ok(GlbGeometry::Quantized),
            "meshopt" => Ok(GlbGeometry::MeshoptCompressed),
            _ => Err(GlbGeometryParseError { given: text.to_owned() }),
        }
    }

    /// The option's text, the inverse of [`GlbGeometry::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            GlbGeometry::Float => "float",
            GlbGeometry::Quantized => "quantized",
            GlbGeometry::MeshoptCompressed => "meshopt",
        }
    }

    /// The glTF extensions this encoding uses; all of them are also required.
    fn extensions(self) -> &'static [&'static str] {
        match self {
            GlbGeometry::Float => &[],
            GlbGeometry::Quantized => &[KHR_MESH_QUANTIZATION],
            GlbGeometry::MeshoptCompressed => &[EXT_MESHOPT_COMPRESSION, KHR_MESH_QUANTIZATION],
        }
    }
}

impl FromStr for GlbGeometry {
    type Err = GlbGeometryParseError;

    fn from_str(text: &str) -> Result<GlbGeometry, GlbGeometryParseError> {
        GlbGeometry::parse(text)
    }
}

impl fmt::Display for GlbGeometry {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Index of the buffer that is the GLB binary chunk.
const BINARY_CHUNK_BUFFER: u32 = 0;
/// Index of the meshopt fallback buffer (declared, no data).
const MESHOPT_FALLBACK_BUFFER: u32 = 1;
/// The GLB magic, "glTF" read as a little-endian u32.
const GLB_MAGIC: u32 = 0x4654_6C67;
/// The GLB container version.
const GLB_VERSION: u32 = 2;
/// Chunk type of the JSON chunk, "JSON".
const GLB_CHUNK_JSON: u32 = 0x4E4F_534A;
/// Chunk type of the binary chunk, "BIN\0".
const GLB_CHUNK_BIN: u32 = 0x004E_4942;
/// Length of the GLB header.
const GLB_HEADER_BYTES: usize = 12;
/// Length of a chunk header (length and type).
const GLB_CHUNK_HEADER_BYTES: usize = 8;
/// Largest magnitude of a quantized position component (symmetric, so -32 768 is never used).
const QUANTIZED_POSITION_LIMIT: f64 = 32_767.0;
/// Relative margin added to the quantisation step so that rounding it to f32 never shrinks it.
const QUANTIZATION_STEP_MARGIN: f64 = 1.0e-6;
/// Largest magnitude of a normalized byte normal component.
const QUANTIZED_NORMAL_LIMIT: f32 = 127.0;
/// Vertex codec format version the EXT_meshopt_compression bitstream specifies (header 0xa0).
const MESHOPT_VERTEX_CODEC_VERSION: i32 = 0;
/// meshoptimizer's default vertex compression level (ignored by codec version 0).
const MESHOPT_VERTEX_CODEC_LEVEL: i32 = 2;

/// The glTF document under construction and the bytes of its binary chunk.
struct DocumentBuilder {
    root: Root,
    geometry: GlbGeometry,
    root_node: Index<Node>,
    label_nodes: Vec<Index<Node>>,
    /// Contents of the GLB binary chunk (buffer 0).
    binary: Vec<u8>,
    /// Bytes declared in the meshopt fallback buffer (buffer 1); 0 when there is none.
    fallback_length: usize,
}

/// Element type of an index accessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexWidth {
    U16,
    U32,
}

/// A uniform integer grid for one label's positions: `q` stands for `translation + step · q` mm.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PositionGrid {
    translation: [f32; 3],
    step: f32,
}

/// One vertex attribute as the accessor describes it.
struct AttributeLayout {
    component_type: ComponentType,
    normalized: bool,
    min: Option<Value>,
    max: Option<Value>,
}

impl DocumentBuilder {
    fn new(geometry: GlbGeometry, generator: &str) -> DocumentBuilder {
        let mut root = Root {
            asset: Asset {
                copyright: None,
                extensions: None,
                extras: None,
                generator: Some(generator.to_owned()),
                min_version: None,
                version: "2.0".to_owned(),
            },
            ..Root::default()
        };
        let root_node = root.push(Node {
            name: Some(ROOT_NODE_NAME.to_owned()),
            matrix: Some(RAS_MILLIMETRES_TO_GLTF_METRES),
            ..Node::default()
        });
        let scene = root.push(Scene { extensions: None, extras: None, name: None, nodes: vec![root_node] });
        root.scene = Some(scene);
        DocumentBuilder { root, geometry, root_node, label_nodes: Vec::new(), binary: Vec::new(), fallback_length: 0 }
    }

    /// Adds one label's material, accessors, mesh and node. `mesh` has passed [`check_label_mesh`].
    fn add_label(&mut self, mesh: &LabelMesh) -> Result<(), GlbError> {
        let material = self.root.push(label_material(mesh));
        let (attributes, grid) = match self.geometry {
            GlbGeometry::Float => (self.push_float_attributes(mesh)?, None),
            GlbGeometry::Quantized | GlbGeometry::MeshoptCompressed => {
                let grid = PositionGrid::covering(&mesh.positions);
                (self.push_quantized_attributes(mesh, &grid)?, Some(grid))
            }
        };
        let indices = self.push_indices(mesh)?;
        let primitive = Primitive {
            attributes,
            extensions: None,
            extras: None,
            indices: Some(indices),
            material: Some(material),
            mode: Checked::Valid(Mode::Triangles),
            targets: None,
        };
        let gltf_mesh = self.root.push(Mesh {
            extensions: None,
            extras: label_extras(mesh.label)?,
            name: Some(mesh.name.clone()),
            primitives: vec![primitive],
            weights: None,
        });
        let node = self.root.push(Node {
            mesh: Some(gltf_mesh),
            name: Some(mesh.name.clone()),
            extras: label_extras(mesh.label)?,
            translation: grid.map(|grid| grid.translation),
            scale: grid.map(|grid| [grid.step; 3]),
            ..Node::default()
        });
        self.label_nodes.push(node);
        Ok(())
    }

    fn push_float_attributes(
        &mut self,
        mesh: &LabelMesh,
    ) -> Result<BTreeMap<Checked<Semantic>, Index<Accessor>>, GlbError> {
        let positions: Vec<[u8; 12]> = mesh.positions.iter().map(|position| float_vec3_bytes(*position)).collect();
        let normals: Vec<[u8; 12]> = mesh.normals.iter().map(|normal| float_vec3_bytes(*normal)).collect();
        let (minimum, maximum) = float_bounds(&mesh.positions);
        let position_view = self.push_vertex_view(mesh.label, &positions)?;
        let position_layout = AttributeLayout {
            component_type: ComponentType::F32,
            normalized: false,
            min: Some(json!(minimum)),
            max: Some(json!(maximum)),
        };
        let position_accessor = self.push_vec3_accessor(position_view, positions.len(), position_layout);
        let normal_view = self.push_vertex_view(mesh.label, &normals)?;
        let normal_layout =
            AttributeLayout { component_type: ComponentType::F32, normalized: false, min: None, max: None };
        let normal_accessor = self.push_vec3_accessor(normal_view, normals.len(), normal_layout);
        Ok(BTreeMap::from([
            (Checked::Valid(Semantic::Positions), position_accessor),
            (Checked::Valid(Semantic::Normals), normal_accessor),
        ]))
    }

    fn push_quantized_attributes(
        &mut self,
        mesh: &LabelMesh,
        grid: &PositionGrid,
    ) -> Result<BTreeMap<Checked<Semantic>, Index<Accessor>>, GlbError> {
        let quantized_positions: Vec<[i16; 3]> =
            mesh.positions.iter().map(|position| grid.quantize(*position)).collect();
        let (minimum, maximum) = integer_bounds(&quantized_positions);
        let positions: Vec<[u8; 8]> =
            quantized_positions.iter().map(|position| short_vec3_padded_bytes(*position)).collect();
        let normals: Vec<[u8; 4]> = mesh.normals.iter().map(|normal| byte_normal_padded_bytes(*normal)).collect();
        let position_view = self.push_vertex_view(mesh.label, &positions)?;
        let position_layout = AttributeLayout {
            component_type: ComponentType::I16,
            normalized: false,
            min: Some(json!(minimum)),
            max: Some(json!(maximum)),
        };
        let position_accessor = self.push_vec3_accessor(position_view, positions.len(), position_layout);
        let normal_view = self.push_vertex_view(mesh.label, &normals)?;
        let normal_layout =
            AttributeLayout { component_type: ComponentType::I8, normalized: true, min: None, max: None };
        let normal_accessor = self.push_vec3_accessor(normal_view, normals.len(), normal_layout);
        Ok(BTreeMap::from([
            (Checked::Valid(Semantic::Positions), position_accessor),
            (Checked::Valid(Semantic::Normals), normal_accessor),
        ]))
    }

    fn push_vec3_accessor(&mut self, view: Index<View>, count: usize, layout: AttributeLayout) -> Index<Accessor> {
        self.root.push(Accessor {
            buffer_view: Some(view),
            byte_offset: None,
            count: USize64::from(count),
            component_type: Checked::Valid(GenericComponentType(layout.component_type)),
            extensions: None,
            extras: None,
            type_: Checked::Valid(AccessorType::Vec3),
            min: layout.min,
            max: layout.max,
            name: None,
            normalized: layout.normalized,
            sparse: None,
        })
    }

    /// One vertex attribute stream of `STRIDE`-byte elements. Float elements are tightly packed
    /// (no `byteStride`); padded quantized elements declare theirs.
    fn push_vertex_view<const STRIDE: usize>(
        &mut self,
        label: u16,
        elements: &[[u8; STRIDE]],
    ) -> Result<Index<View>, GlbError> {
        let raw = elements.as_flattened();
        let view = match self.geometry {
            GlbGeometry::Float => View {
                byte_offset: Some(USize64::from(self.append_to_binary(raw))),
                ..array_view(BINARY_CHUNK_BUFFER, raw.len(), None, Target::ArrayBuffer)
            },
            GlbGeometry::Quantized => View {
                byte_offset: Some(USize64::from(self.append_to_binary(raw))),
                ..array_view(BINARY_CHUNK_BUFFER, raw.len(), Some(STRIDE), Target::ArrayBuffer)
            },
            GlbGeometry::MeshoptCompressed => {
                let compressed = meshopt::encode_vertex_buffer_level(
                    elements,
                    MESHOPT_VERTEX_CODEC_LEVEL,
                    Some(MESHOPT_VERTEX_CODEC_VERSION),
                )
                .map_err(|source| GlbError::MeshoptEncoding { label, source })?;
                let compressed_offset = self.append_to_binary(&compressed);
                let extension = json!({
                    "buffer": BINARY_CHUNK_BUFFER,
                    "byteOffset": compressed_offset,
                    "byteLength": compressed.len(),
                    "byteStride": STRIDE,
                    "count": elements.len(),
                    "mode": "ATTRIBUTES",
                });
                View {
                    byte_offset: Some(USize64::from(self.reserve_in_fallback(raw.len()))),
                    extensions: Some(meshopt_view_extension(extension)),
                    ..array_view(MESHOPT_FALLBACK_BUFFER, raw.len(), Some(STRIDE), Target::ArrayBuffer)
                }
            }
        };
        Ok(self.root.push(view))
    }

    /// The label's triangle indices: a buffer view and a `SCALAR` accessor of the narrowest width.
    fn push_indices(&mut self, mesh: &LabelMesh) -> Result<Index<Accessor>, GlbError> {
        let indices: Vec<u32> = mesh.triangles.iter().flatten().copied().collect();
        let width = IndexWidth::for_vertex_count(mesh.positions.len());
        let raw: Vec<u8> = match width {
            // Every index is below the vertex count, itself below 65 536, so nothing is truncated.
            IndexWidth::U16 => indices.iter().flat_map(|index| (*index as u16).to_le_bytes()).collect(),
            IndexWidth::U32 => indices.iter().flat_map(|index| index.to_le_bytes()).collect(),
        };
        let view = match self.geometry {
            GlbGeometry::Float | GlbGeometry::Quantized => View {
                byte_offset: Some(USize64::from(self.append_to_binary(&raw))),
                ..array_view(BINARY_CHUNK_BUFFER, raw.len(), None, Target::ElementArrayBuffer)
            },
            GlbGeometry::MeshoptCompressed => {
                let compressed = meshopt::encode_index_buffer(&indices, mesh.positions.len())
                    .map_err(|source| GlbError::MeshoptEncoding { label: mesh.label, source })?;
                let compressed_offset = self.append_to_binary(&compressed);
                let extension = json!({
                    "buffer": BINARY_CHUNK_BUFFER,
                    "byteOffset": compressed_offset,
                    "byteLength": compressed.len(),
                    "byteStride": width.bytes(),
                    "count": indices.len(),
                    "mode": "TRIANGLES",
                });
                View {
                    byte_offset: Some(USize64::from(self.reserve_in_fallback(raw.len()))),
                    extensions: Some(meshopt_view_extension(extension)),
                    ..array_view(MESHOPT_FALLBACK_BUFFER, raw.len(), None, Target::ElementArrayBuffer)
                }
            }
        };
        let view = self.root.push(view);
        Ok(self.root.push(Accessor {
            buffer_view: Some(view),
            byte_offset: None,
            count: USize64::from(indices.len()),
            component_type: Checked::Valid(GenericComponentType(width.component_type())),
            extensions: None,
            extras: None,
            type_: Checked::Valid(AccessorType::Scalar),
            min: None,
            max: None,
            name: None,
            normalized: false,
            sparse: None,
        }))
    }

    /// Appends `bytes` to the binary chunk at the next 4-byte boundary; returns their offset.
    fn append_to_binary(&mut self, bytes: &[u8]) -> usize {
        pad_to_four(&mut self.binary, 0);
        let offset = self.binary.len();
        self.binary.extend_from_slice(bytes);
        offset
    }

    /// Declares `length` bytes in the meshopt fallback buffer at the next 4-byte boundary.
    fn reserve_in_fallback(&mut self, length: usize) -> usize {
        let offset = self.fallback_length.next_multiple_of(4);
        self.fallback_length = offset + length;
        offset
    }

    /// Declares the buffers, links the label nodes under the root and writes the GLB container.
    fn finish(mut self) -> Result<Vec<u8>, GlbError> {
        pad_to_four(&mut self.binary, 0);
        if !self.binary.is_empty() {
            self.root.push(Buffer {
                byte_length: USize64::from(self.binary.len()),
                name: None,
                uri: None,
                extensions: None,
                extras: None,
            });
        }
        if self.fallback_length > 0 {
            let mut others = Map::new();
            others.insert(EXT_MESHOPT_COMPRESSION.to_owned(), json!({ "fallback": true }));
            self.root.push(Buffer {
                byte_length: USize64::from(self.fallback_length.next_multiple_of(4)),
                name: None,
                uri: None,
                extensions: Some(extensions::buffer::Buffer { others }),
                extras: None,
            });
        }
        if !self.label_nodes.is_empty() {
            let used: Vec<String> = self.geometry.extensions().iter().map(|name| (*name).to_owned()).collect();
            self.root.extensions_required = used.clone();
            self.root.extensions_used = used;
            if let Some(root_node) = self.root.nodes.get_mut(self.root_node.value()) {
                root_node.children = Some(self.label_nodes);
            }
        }
        let json = gltf_json::serialize::to_vec(&self.root)?;
        glb_container(json, self.binary)
    }
}

impl IndexWidth {
    /// `U16` when every index fits below 65 535 (the value glTF reserves for primitive restart).
    fn for_vertex_count(vertex_count: usize) -> IndexWidth {
        if vertex_count < 65_536 { IndexWidth::U16 } else { IndexWidth::U32 }
    }

    fn bytes(self) -> usize {
        match self {
            IndexWidth::U16 => 2,
            IndexWidth::U32 => 4,
        }
    }

    fn component_type(self) -> ComponentType {
        match self {
            IndexWidth::U16 => ComponentType::U16,
            IndexWidth::U32 => ComponentType::U32,
        }
    }
}

impl PositionGrid {
    /// The grid centred on the bounding box of `positions` with the smallest step that keeps every
    /// quantized component within ±32 767 (step 1 mm for a single point).
    fn covering(positions: &[[f32; 3]]) -> PositionGrid {
        let (minimum, maximum) = float_bounds(positions);
        let translation: [f32; 3] =
            std::array::from_fn(|axis| ((f64::from(minimum[axis]) + f64::from(maximum[axis])) / 2.0) as f32);
        let half_range = (0..3)
            .map(|axis| {
                let centre = f64::from(translation[axis]);
                (f64::from(maximum[axis]) - centre).max(centre - f64::from(minimum[axis]))
            })
            .fold(0.0_f64, f64::max);
        let step = (half_range / QUANTIZED_POSITION_LIMIT * (1.0 + QUANTIZATION_STEP_MARGIN)) as f32;
        PositionGrid { translation, step: if step.is_normal() { step } else { 1.0 } }
    }

    fn quantize(&self, position: [f32; 3]) -> [i16; 3] {
        std::array::from_fn(|axis| {
            let steps = (f64::from(position[axis]) - f64::from(self.translation[axis])) / f64::from(self.step);
            steps.round().clamp(-QUANTIZED_POSITION_LIMIT, QUANTIZED_POSITION_LIMIT) as i16
        })
    }
}

/// Checks the [`LabelMesh`] invariants the writer relies on.
fn check_label_mesh(mesh: &LabelMesh) -> Result<(), GlbError> {
    let vertex_count = mesh.positions.len();
    if mesh.normals.len() != vertex_count {
        return Err(GlbError::NormalCountMismatch {
            label: mesh.label,
            positions: vertex_count,
            normals: mesh.normals.len(),
        });
    }
    let finite = |vector: &[f32; 3]| vector.iter().all(|component| component.is_finite());
    if let Some(vertex) =
        mesh.positions.iter().zip(&mesh.normals).position(|(position, normal)| !finite(position) || !finite(normal))
    {
        return Err(GlbError::NonFiniteVertex { label: mesh.label, vertex });
    }
    // u32::MAX is also glTF's primitive-restart value, never a valid index.
    let in_range = |index: u32| index != u32::MAX && usize::try_from(index).is_ok_and(|index| index < vertex_count);
    if let Some(index) = mesh.triangles.iter().flatten().copied().find(|index| !in_range(*index)) {
        return Err(GlbError::IndexOutOfRange { label: mesh.label, index, vertex_count });
    }
    Ok(())
}

/// The label's metallic-roughness material: linear base colour, metallic 0, single-sided.
fn label_material(mesh: &LabelMesh) -> Material {
    let [red, green, blue] = mesh.color_srgb.map(srgb_to_linear);
    Material {
        name: Some(mesh.name.clone()),
        double_sided: false,
        pbr_metallic_roughness: PbrMetallicRoughness {
            base_color_factor: PbrBaseColorFactor([red, green, blue, 1.0]),
            metallic_factor: StrengthFactor(0.0),
            roughness_factor: StrengthFactor(MATERIAL_ROUGHNESS),
            ..PbrMetallicRoughness::default()
        },
        ..Material::default()
    }
}

/// An 8-bit sRGB channel as a linear value in [0, 1] (IEC 61966-2-1).
fn srgb_to_linear(value: u8) -> f32 {
    let encoded = f64::from(value) / 255.0;
    let linear = if encoded <= 0.04045 { encoded / 12.92 } else { ((encoded + 0.055) / 1.055).powf(2.4) };
    linear as f32
}

/// `{"label": <id>}` as glTF `extras`.
fn label_extras(label: u16) -> Result<Option<Box<RawValue>>, GlbError> {
    Ok(Some(to_raw_value(&json!({ "label": label }))?))
}

/// A buffer view with no offset or extensions yet.
fn array_view(buffer: u32, byte_length: usize, byte_stride: Option<usize>, target: Target) -> View {
    View {
        buffer: Index::new(buffer),
        byte_length: USize64::from(byte_length),
        byte_offset: None,
        byte_stride: byte_stride.map(Stride),
        name: None,
        target: Some(Checked::Valid(target)),
        extensions: None,
        extras: None,
    }
}

/// A buffer view's `extensions` holding one `EXT_meshopt_compression` object.
fn meshopt_view_extension(extension: Value) -> extensions::buffer::View {
    let mut others = Map::new();
    others.insert(EXT_MESHOPT_COMPRESSION.to_owned(), extension);
    extensions::buffer::View { others }
}

/// Per-component minimum and maximum (zeros for no positions).
fn float_bounds(positions: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
    let Some(first) = positions.first() else {
        return ([0.0; 3], [0.0; 3]);
    };
    positions.iter().fold((*first, *first), |(minimum, maximum), position| {
        (
            std::array::from_fn(|axis| minimum[axis].min(position[axis])),
            std::array::from_fn(|axis| maximum[axis].max(position[axis])),
        )
    })
}

/// Per-component minimum and maximum of quantized positions (zeros for none).
fn integer_bounds(positions: &[[i16; 3]]) -> ([i16; 3], [i16; 3]) {
    let Some(first) = positions.first() else {
        return ([0; 3], [0; 3]);
    };
    positions.iter().fold((*first, *first), |(minimum, maximum), position| {
        (
            std::array::from_fn(|axis| minimum[axis].min(position[axis])),
            std::array::from_fn(|axis| maximum[axis].max(position[axis])),
        )
    })
}

fn float_vec3_bytes(vector: [f32; 3]) -> [u8; 12] {
    let mut bytes = [0; 12];
    for (chunk, component) in bytes.chunks_exact_mut(4).zip(vector) {
        chunk.copy_from_slice(&component.to_le_bytes());
    }
    bytes
}

/// Three little-endian i16 and two zero bytes of padding.
fn short_vec3_padded_bytes(vector: [i16; 3]) -> [u8; 8] {
    let mut bytes = [0; 8];
    for (chunk, component) in bytes.chunks_exact_mut(2).zip(vector) {
        chunk.copy_from_slice(&component.to_le_bytes());
    }
    bytes
}

/// A unit normal as three normalized i8 (`round(127 · n)`) and one zero byte of padding.
fn byte_normal_padded_bytes(normal: [f32; 3]) -> [u8; 4] {
    let [x, y, z] = normal.map(|component| {
        let quantized =
            (component * QUANTIZED_NORMAL_LIMIT).round().clamp(-QUANTIZED_NORMAL_LIMIT, QUANTIZED_NORMAL_LIMIT);
        (quantized as i8).to_le_bytes()[0]
    });
    [x, y, z, 0]
}

/// Pads `bytes` with `fill` to a multiple of four.
fn pad_to_four(bytes: &mut Vec<u8>, fill: u8) {
    bytes.resize(bytes.len().next_multiple_of(4), fill);
}

/// The GLB container: header, JSON chunk (padded with spaces), binary chunk (when not empty).
fn glb_container(mut json: Vec<u8>, mut binary: Vec<u8>) -> Result<Vec<u8>, GlbError> {
    pad_to_four(&mut json, b' ');
    pad_to_four(&mut binary, 0);
    let binary_chunk_bytes = if binary.is_empty() { 0 } else { GLB_CHUNK_HEADER_BYTES + binary.len() };
    let total_bytes = GLB_HEADER_BYTES + GLB_CHUNK_HEADER_BYTES + json.len() + binary_chunk_bytes;
    let too_large = || GlbError::TooLarge { bytes: total_bytes as u64 };
    let total_length = u32::try_from(total_bytes).map_err(|_| too_large())?;
    let json_length = u32::try_from(json.len()).map_err(|_| too_large())?;
    let binary_length = u32::try_from(binary.len()).map_err(|_| too_large())?;
    let mut glb = Vec::with_capacity(total_bytes);
    for word in [GLB_MAGIC, GLB_VERSION, total_length, json_length, GLB_CHUNK_JSON] {
        glb.extend_from_slice(&word.to_le_bytes());
    }
    glb.extend_from_slice(&json);
    if !binary.is_empty() {
        glb.extend_from_slice(&binary_length.to_le_bytes());
        glb.extend_from_slice(&GLB_CHUNK_BIN.to_le_bytes());
        glb.extend_from_slice(&binary);
    }
    Ok(glb)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two closed labels (one with a name full of spaces and non-ASCII) and one without triangles.
    fn sample_meshes() -> Vec<LabelMesh> {
        let centre = [12.5, -40.0, 95.25];
        let tetrahedron_corners = [[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]
            .map(|corner: [f32; 3]| std::array::from_fn(|axis| centre[axis] + 20.0 * corner[axis]));
        let tetrahedron = convex_mesh(
            3,
            "Vena cava inferior – 下大静脈 ✓",
            [200, 120, 80],
            tetrahedron_corners.to_vec(),
            &[[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]],
        );
        let cube_corners: Vec<[f32; 3]> = (0..8)
            .map(|corner| {
                let sign = |bit: u32| if corner & (1 << bit) == 0 { -1.0 } else { 1.0 };
                [-30.0 + 15.5 * sign(0), 22.25 + 15.5 * sign(1), 130.0 + 15.5 * sign(2)]
            })
            .collect();
        let cube_faces = [
            [0, 1, 3],
            [0, 3, 2],
            [4, 5, 7],
            [4, 7, 6],
            [0, 1, 5],
            [0, 5, 4],
            [2, 3, 7],
            [2, 7, 6],
            [0, 2, 6],
            [0, 6, 4],
            [1, 3, 7],
            [1, 7, 5],
        ];
        let cube = convex_mesh(7, "Aorta", [255, 0, 10], cube_corners, &cube_faces);
        let empty = LabelMesh {
            label: 9,
            name: "Empty label".to_owned(),
            color_srgb: [1, 2, 3],
            positions: vec![[0.0; 3]],
            normals: vec![[0.0, 0.0, 1.0]],
            triangles: Vec::new(),
        };
        vec![tetrahedron, empty, cube]
    }

    /// A convex mesh with every face turned to wind counter-clockwise seen from outside and vertex
    /// normals pointing away from the centroid.
    fn convex_mesh(
        label: u16,
        name: &str,
        color_srgb: [u8; 3],
        positions: Vec<[f32; 3]>,
        faces: &[[u32; 3]],
    ) -> LabelMesh {
        let centroid: [f64; 3] = std::array::from_fn(|axis| {
            positions.iter().map(|position| f64::from(position[axis])).sum::<f64>() / positions.len() as f64
        });
        let point = |index: u32| positions[index as usize].map(f64::from);
        let triangles = faces
            .iter()
            .map(|&[a, b, c]| {
                let normal = cross(subtract(point(b), point(a)), subtract(point(c), point(a)));
                let outward = subtract(point(a), centroid);
                if dot(normal, outward) > 0.0 { [a, b, c] } else { [a, c, b] }
            })
            .collect();
        let normals = positions
            .iter()
            .map(|position| {
                let direction = subtract(position.map(f64::from), centroid);
                let length = dot(direction, direction).sqrt();
                direction.map(|component| (component / length) as f32)
            })
            .collect();
        LabelMesh { label, name: name.to_owned(), color_srgb, positions, normals, triangles }
    }

    fn subtract(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|axis| a[axis] - b[axis])
    }

    fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
        (0..3).map(|axis| a[axis] * b[axis]).sum()
    }

    fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
        [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    }

    /// The meshes that get a node: those with triangles, in input order.
    fn written(meshes: &[LabelMesh]) -> Vec<&LabelMesh> {
        meshes.iter().filter(|mesh| !mesh.triangles.is_empty()).collect()
    }

    /// Applies a column-major 4×4 matrix (as `gltf` returns it, `matrix[column][row]`) to a point.
    fn transform_point(matrix: [[f32; 4]; 4], point: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|row| {
            (0..3).map(|column| f64::from(matrix[column][row]) * point[column]).sum::<f64>() + f64::from(matrix[3][row])
        })
    }

    /// The documented RAS millimetre → glTF metre mapping, written out independently of the matrix.
    fn ras_millimetres_to_gltf_metres(point: [f64; 3]) -> [f64; 3] {
        [-0.001 * point[0], 0.001 * point[2], 0.001 * point[1]]
    }

    fn assert_close(actual: [f64; 3], expected: [f64; 3], tolerance: f64, what: &str) {
        for axis in 0..3 {
            assert!(
                (actual[axis] - expected[axis]).abs() <= tolerance,
                "{what}: {actual:?} vs {expected:?} (tolerance {tolerance})"
            );
        }
    }

    fn little_endian_u32(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
    }

    /// The JSON and BIN chunks of a GLB, after checking the container: header, lengths, chunk
    /// types, 4-byte alignment and padding.
    fn glb_chunks(glb: &[u8]) -> (&[u8], Option<&[u8]>) {
        assert_eq!(&glb[0..4], b"glTF", "magic");
        assert_eq!(little_endian_u32(glb, 4), 2, "version");
        assert_eq!(little_endian_u32(glb, 8) as usize, glb.len(), "total length");
        let json_length = little_endian_u32(glb, 12) as usize;
        assert_eq!(little_endian_u32(glb, 16), GLB_CHUNK_JSON);
        assert_eq!(json_length % 4, 0, "JSON chunk length is a multiple of 4");
        let json = &glb[20..20 + json_length];
        let unpadded = json.trim_ascii_end();
        assert!(json[unpadded.len()..].iter().all(|byte| *byte == b' '), "JSON padded with spaces");
        assert!(serde_json::from_slice::<Value>(unpadded).is_ok(), "JSON chunk parses");
        let binary_start = 20 + json_length;
        if binary_start == glb.len() {
            return (json, None);
        }
        assert_eq!(binary_start % 4, 0, "BIN chunk aligned");
        let binary_length = little_endian_u32(glb, binary_start) as usize;
        assert_eq!(little_endian_u32(glb, binary_start + 4), GLB_CHUNK_BIN);
        assert_eq!(binary_length % 4, 0, "BIN chunk length is a multiple of 4");
        assert_eq!(binary_start + 8 + binary_length, glb.len(), "BIN chunk is the last chunk");
        (json, Some(&glb[binary_start + 8..]))
    }

    fn json_root(glb: &[u8]) -> Root {
        Root::from_slice(glb_chunks(glb).0).expect("the JSON chunk is a glTF root")
    }

    fn write(meshes: &[LabelMesh], geometry: GlbGeometry) -> Vec<u8> {
        write_glb(meshes, geometry, "iris-mesh test").expect("the sample meshes are valid")
    }

    /// Reads a document without validation, checking that the only validation findings are the
    /// extensions `gltf` does not implement (it rejects any required extension it lacks).
    fn unvalidated_document(glb: &[u8], geometry: GlbGeometry) -> gltf::Gltf {
        match gltf::Gltf::from_slice(glb) {
            Ok(_) => assert_eq!(geometry, GlbGeometry::Float, "{geometry}: only float geometry needs no extension"),
            Err(gltf::Error::Validation(errors)) => {
                assert!(!errors.is_empty());
                for (path, error) in &errors {
                    assert!(
                        path.as_str().starts_with("extensionsRequired[")
                            && *error == gltf_json::validation::Error::Unsupported,
                        "{geometry}: unexpected validation error {path:?}: {error:?}"
                    );
                }
            }
            Err(error) => panic!("{geometry}: not a readable GLB: {error}"),
        }
        gltf::Gltf::from_slice_without_validation(glb).expect("readable GLB")
    }

    fn label_of(extras: &gltf_json::Extras) -> Value {
        let raw = extras.as_ref().expect("extras present");
        serde_json::from_str(raw.get()).expect("extras are JSON")
    }

    /// The bytes of element `index` of an accessor: view offset + accessor offset + index × stride.
    fn element_bytes<'a>(binary: &'a [u8], accessor: &gltf::Accessor, index: usize) -> &'a [u8] {
        let view = accessor.view().expect("accessor has a view");
        assert_eq!(view.buffer().index(), 0, "data lives in the BIN chunk");
        let stride = view.stride().unwrap_or(accessor.size());
        let start = view.offset() + accessor.offset() + index * stride;
        &binary[start..start + accessor.size()]
    }

    fn expected_linear(value: u8) -> f64 {
        let encoded = f64::from(value) / 255.0;
        if encoded <= 0.04045 { encoded / 12.92 } else { ((encoded + 0.055) / 1.055).powf(2.4) }
    }

    #[test]
    fn geometry_option_parses_and_prints() {
        let cases = [
            ("float", Some(GlbGeometry::Float)),
            ("quantized", Some(GlbGeometry::Quantized)),
            ("meshopt", Some(GlbGeometry::MeshoptCompressed)),
            ("Float", None),
            ("draco", None),
            ("", None),
        ];
        for (text, expected) in cases {
            match expected {
                Some(geometry) => {
                    assert_eq!(GlbGeometry::parse(text), Ok(geometry));
                    assert_eq!(text.parse::<GlbGeometry>(), Ok(geometry));
                    assert_eq!(geometry.as_str(), text);
                    assert_eq!(geometry.to_string(), text);
                }
                None => {
                    let error = GlbGeometry::parse(text).expect_err(text);
                    assert_eq!(error.given, text);
                    assert!(error.to_string().contains("\"meshopt\""));
                }
            }
        }
        for geometry in GlbGeometry::ALL {
            assert_eq!(GlbGeometry::parse(geometry.as_str()), Ok(geometry));
        }
    }

    #[test]
    fn container_is_well_formed_for_every_geometry() {
        let meshes = sample_meshes();
        for geometry in GlbGeometry::ALL {
            let glb = write(&meshes, geometry);
            let (_, binary) = glb_chunks(&glb);
            let binary = binary.expect("geometry goes into a BIN chunk");
            let root = json_root(&glb);
            assert_eq!(root.buffers[0].byte_length.0 as usize, binary.len(), "{geometry}: buffer 0 is the BIN chunk");
            assert!(root.buffers[0].uri.is_none());
            for view in &root.buffer_views {
                assert_eq!(view.byte_offset.unwrap_or_default().0 % 4, 0, "{geometry}: view aligned");
                let buffer = &root.buffers[view.buffer.value()];
                assert!(view.byte_offset.unwrap_or_default().0 + view.byte_length.0 <= buffer.byte_length.0);
            }
            assert_eq!(root.asset.version, "2.0");
            assert_eq!(root.asset.generator.as_deref(), Some("iris-mesh test"));
        }
    }

    #[test]
    fn nodes_meshes_and_materials_are_named_and_labelled_for_every_geometry() {
        let meshes = sample_meshes();
        let expected = written(&meshes);
        for geometry in GlbGeometry::ALL {
            let glb = write(&meshes, geometry);
            let document = unvalidated_document(&glb, geometry);
            let scene = document.default_scene().expect("default scene");
            let roots: Vec<_> = scene.nodes().collect();
            assert_eq!(roots.len(), 1, "{geometry}: one root node");
            assert_eq!(roots[0].name(), Some(ROOT_NODE_NAME));
            assert!(roots[0].mesh().is_none());
            let children: Vec<_> = roots[0].children().collect();
            assert_eq!(children.len(), expected.len(), "{geometry}: one node per label with triangles");
            assert_eq!(document.meshes().count(), expected.len());
            assert_eq!(document.materials().count(), expected.len());
            for (node, mesh) in children.iter().zip(&expected) {
                assert_eq!(node.name(), Some(mesh.name.as_str()), "{geometry}: node name");
                assert_eq!(label_of(node.extras()), json!({ "label": mesh.label }));
                let gltf_mesh = node.mesh().expect("label node has a mesh");
                assert_eq!(gltf_mesh.name(), Some(mesh.name.as_str()), "{geometry}: mesh name");
                assert_eq!(label_of(gltf_mesh.extras()), json!({ "label": mesh.label }));
                let primitives: Vec<_> = gltf_mesh.primitives().collect();
                assert_eq!(primitives.len(), 1);
                let primitive = &primitives[0];
                assert_eq!(primitive.mode(), gltf::mesh::Mode::Triangles);
                let positions = primitive.get(&gltf::Semantic::Positions).expect("POSITION");
                let normals = primitive.get(&gltf::Semantic::Normals).expect("NORMAL");
                let indices = primitive.indices().expect("indices");
                assert_eq!(positions.count(), mesh.positions.len(), "{geometry}: POSITION count");
                assert_eq!(normals.count(), mesh.normals.len(), "{geometry}: NORMAL count");
                assert_eq!(indices.count(), 3 * mesh.triangles.len(), "{geometry}: index count");
                assert_eq!(indices.data_type(), gltf::accessor::DataType::U16, "{geometry}: small labels use u16");
                let material = primitive.material();
                assert_eq!(material.name(), Some(mesh.name.as_str()), "{geometry}: material name");
                assert!(!material.double_sided());
                assert_eq!(material.alpha_mode(), gltf::material::AlphaMode::Opaque);
                let pbr = material.pbr_metallic_roughness();
                let base_colour = pbr.base_color_factor();
                for (actual, srgb) in base_colour.iter().zip(mesh.color_srgb) {
                    let expected_value = expected_linear(srgb);
                    assert!(
                        (f64::from(*actual) - expected_value).abs() <= 1e-6,
                        "{geometry}: sRGB {srgb} of {:?} became {actual}, not {expected_value}",
                        mesh.color_srgb,
                    );
                }
                assert_eq!(base_colour[3], 1.0);
                assert_eq!(pbr.metallic_factor(), 0.0);
                assert_eq!(pbr.roughness_factor(), MATERIAL_ROUGHNESS);
            }
        }
    }

    #[test]
    fn linear_colour_covers_both_branches_of_the_srgb_curve() {
        // 10/255 ≈ 0.0392 is on the linear segment, 200/255 on the power segment.
        assert_eq!(srgb_to_linear(0), 0.0);
        assert_eq!(srgb_to_linear(255), 1.0);
        assert!((f64::from(srgb_to_linear(10)) - 10.0 / 255.0 / 12.92).abs() < 1e-7);
        assert!((f64::from(srgb_to_linear(200)) - 0.577_580_4).abs() < 1e-6);
    }

    #[test]
    fn root_matrix_maps_ras_millimetres_to_gltf_metres() {
        let glb = write(&sample_meshes(), GlbGeometry::Float);
        let document = gltf::Gltf::from_slice(&glb).expect("float GLB validates");
        let root = document.default_scene().and_then(|scene| scene.nodes().next()).expect("root node");
        let matrix = root.transform().matrix();
        // The f32 matrix entries are 0.001 to within 5e-8 relative.
        assert_close(transform_point(matrix, [10.0, 20.0, 30.0]), [-0.01, 0.03, 0.02], 1e-8, "(10, 20, 30) mm");
        for point in [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-3.5, 250.0, -1200.0]] {
            assert_close(transform_point(matrix, point), ras_millimetres_to_gltf_metres(point), 1e-7, "root matrix");
        }
        let linear: [[f64; 3]; 3] =
            std::array::from_fn(|row| std::array::from_fn(|column| f64::from(matrix[column][row])));
        let determinant = dot(linear[0], cross(linear[1], linear[2]));
        assert!((determinant - 1e-9).abs() < 1e-15, "proper rotation × 0.001³, got {determinant}");
    }

    #[test]
    fn float_geometry_reads_back_exactly_through_gltf() {
        let meshes = sample_meshes();
        let glb = write(&meshes, GlbGeometry::Float);
        let document = gltf::Gltf::from_slice(&glb).expect("float GLB passes gltf validation");
        assert_eq!(document.extensions_required().count(), 0);
        let binary = document.blob.as_deref().expect("BIN chunk");
        let root = document.default_scene().and_then(|scene| scene.nodes().next()).expect("root node");
        let root_matrix = root.transform().matrix();
        for (node, mesh) in root.children().zip(written(&meshes)) {
            let node_matrix = node.transform().matrix();
            assert_eq!(
                node_matrix,
                gltf::scene::Transform::Decomposed {
                    translation: [0.0; 3],
                    rotation: [0.0, 0.0, 0.0, 1.0],
                    scale: [1.0; 3]
                }
                .matrix()
            );
            let primitive = node.mesh().and_then(|gltf_mesh| gltf_mesh.primitives().next()).expect("primitive");
            let position_accessor = primitive.get(&gltf::Semantic::Positions).expect("POSITION");
            assert_eq!(position_accessor.data_type(), gltf::accessor::DataType::F32);
            assert_eq!(position_accessor.dimensions(), gltf::accessor::Dimensions::Vec3);
            let (minimum, maximum) = float_bounds(&mesh.positions);
            assert_eq!(position_accessor.min(), Some(json!(minimum)));
            assert_eq!(position_accessor.max(), Some(json!(maximum)));
            let reader = primitive.reader(|buffer| (buffer.index() == 0).then_some(binary));
            let positions: Vec<[f32; 3]> = reader.read_positions().expect("positions").collect();
            let normals: Vec<[f32; 3]> = reader.read_normals().expect("normals").collect();
            let indices: Vec<u32> = reader.read_indices().expect("indices").into_u32().collect();
            assert_eq!(positions, mesh.positions);
            assert_eq!(normals, mesh.normals);
            assert_eq!(indices, mesh.triangles.iter().flatten().copied().collect::<Vec<_>>());
            for position in &positions {
                let world = transform_point(root_matrix, transform_point(node_matrix, position.map(f64::from)));
                let expected = ras_millimetres_to_gltf_metres(position.map(f64::from));
                assert_close(world, expected, 2e-8, "float position in glTF metres");
            }
        }
    }

    #[test]
    fn quantized_geometry_dequantises_within_half_a_step() {
        let meshes = sample_meshes();
        let glb = write(&meshes, GlbGeometry::Quantized);
        let document = unvalidated_document(&glb, GlbGeometry::Quantized);
        assert_eq!(document.extensions_used().collect::<Vec<_>>(), [KHR_MESH_QUANTIZATION]);
        assert_eq!(document.extensions_required().collect::<Vec<_>>(), [KHR_MESH_QUANTIZATION]);
        let binary = document.blob.as_deref().expect("BIN chunk");
        let root = document.default_scene().and_then(|scene| scene.nodes().next()).expect("root node");
        let root_matrix = root.transform().matrix();
        for (node, mesh) in root.children().zip(written(&meshes)) {
            let gltf::scene::Transform::Decomposed { translation, rotation, scale } = node.transform() else {
                panic!("label nodes carry translation / scale, not a matrix");
            };
            assert_eq!(rotation, [0.0, 0.0, 0.0, 1.0]);
            assert!(scale[0] > 0.0 && scale[0] == scale[1] && scale[1] == scale[2], "uniform scale {scale:?}");
            let step = f64::from(scale[0]);
            let node_matrix = node.transform().matrix();
            let primitive = node.mesh().and_then(|gltf_mesh| gltf_mesh.primitives().next()).expect("primitive");

            let positions = primitive.get(&gltf::Semantic::Positions).expect("POSITION");
            assert_eq!(positions.data_type(), gltf::accessor::DataType::I16);
            assert_eq!(positions.dimensions(), gltf::accessor::Dimensions::Vec3);
            assert!(!positions.normalized());
            assert_eq!(positions.view().and_then(|view| view.stride()), Some(8));
            let stored: Vec<[i16; 3]> = (0..positions.count())
                .map(|index| {
                    let bytes = element_bytes(binary, &positions, index);
                    std::array::from_fn(|axis| i16::from_le_bytes([bytes[2 * axis], bytes[2 * axis + 1]]))
                })
                .collect();
            let (minimum, maximum) = integer_bounds(&stored);
            assert_eq!(positions.min(), Some(json!(minimum)), "min is the stored integers");
            assert_eq!(positions.max(), Some(json!(maximum)), "max is the stored integers");
            for (quantized, original) in stored.iter().zip(&mesh.positions) {
                let dequantized: [f64; 3] =
                    std::array::from_fn(|axis| f64::from(translation[axis]) + step * f64::from(quantized[axis]));
                assert_close(dequantized, original.map(f64::from), step * 0.5 * (1.0 + 1e-9), "dequantized mm");
                let through_node = transform_point(node_matrix, quantized.map(f64::from));
                assert_close(through_node, dequantized, 1e-4 * step, "node TRS is the dequantisation");
                let world = transform_point(root_matrix, through_node);
                let expected = ras_millimetres_to_gltf_metres(original.map(f64::from));
                assert_close(world, expected, 0.001 * step * (0.5 + 1e-3) + 2e-8, "quantized position in glTF metres");
            }
            // The grid spans the label: the extreme integers are near ±32 767, never beyond.
            assert!(minimum.iter().chain(&maximum).all(|value| value.unsigned_abs() <= 32_767));
            assert!(minimum.iter().chain(&maximum).any(|value| value.unsigned_abs() >= 32_700));

            let normals = primitive.get(&gltf::Semantic::Normals).expect("NORMAL");
            assert_eq!(normals.data_type(), gltf::accessor::DataType::I8);
            assert!(normals.normalized());
            assert_eq!(normals.view().and_then(|view| view.stride()), Some(4));
            for (index, original) in mesh.normals.iter().enumerate() {
                let bytes = element_bytes(binary, &normals, index);
                let decoded: [f64; 3] = std::array::from_fn(|axis| (f64::from(bytes[axis] as i8) / 127.0).max(-1.0));
                assert_close(decoded, original.map(f64::from), 0.5 / 127.0 + 1e-6, "normal");
            }

            let reader = primitive.reader(|buffer| (buffer.index() == 0).then_some(binary));
            let indices: Vec<u32> = reader.read_indices().expect("indices").into_u32().collect();
            assert_eq!(indices, mesh.triangles.iter().flatten().copied().collect::<Vec<_>>());
        }
    }

    /// Each triangle rotated (winding kept) so that its smallest index comes first.
    fn rotated_to_smallest_first(indices: &[u32]) -> Vec<[u32; 3]> {
        indices
            .chunks_exact(3)
            .map(|triangle| {
                let first = (0..3).min_by_key(|corner| triangle[*corner]).unwrap_or(0);
                std::array::from_fn(|corner| triangle[(first + corner) % 3])
            })
            .collect()
    }

    #[test]
    fn meshopt_geometry_decodes_to_the_quantized_layout() {
        let meshes = sample_meshes();
        let quantized_glb = write(&meshes, GlbGeometry::Quantized);
        let compressed_glb = write(&meshes, GlbGeometry::MeshoptCompressed);
        let quantized = json_root(&quantized_glb);
        let quantized_binary = glb_chunks(&quantized_glb).1.expect("BIN chunk");
        let compressed = json_root(&compressed_glb);
        let compressed_binary = glb_chunks(&compressed_glb).1.expect("BIN chunk");

        assert_eq!(compressed.extensions_used, [EXT_MESHOPT_COMPRESSION, KHR_MESH_QUANTIZATION]);
        assert_eq!(compressed.extensions_required, [EXT_MESHOPT_COMPRESSION, KHR_MESH_QUANTIZATION]);
        // Same scene, accessors, meshes and materials as the quantized layout; only views and buffers differ.
        for (what, left, right) in [
            ("nodes", serde_json::to_value(&compressed.nodes), serde_json::to_value(&quantized.nodes)),
            ("meshes", serde_json::to_value(&compressed.meshes), serde_json::to_value(&quantized.meshes)),
            ("materials", serde_json::to_value(&compressed.materials), serde_json::to_value(&quantized.materials)),
            ("accessors", serde_json::to_value(&compressed.accessors), serde_json::to_value(&quantized.accessors)),
        ] {
            assert_eq!(left.expect("serialises"), right.expect("serialises"), "{what}");
        }

        assert_eq!(compressed.buffers.len(), 2);
        assert_eq!(compressed.buffers[0].byte_length.0 as usize, compressed_binary.len());
        let fallback = &compressed.buffers[1];
        assert!(fallback.uri.is_none(), "the fallback buffer has no data");
        let fallback_extension =
            fallback.extensions.as_ref().and_then(|extension| extension.others.get(EXT_MESHOPT_COMPRESSION));
        assert_eq!(fallback_extension, Some(&json!({ "fallback": true })));

        assert_eq!(compressed.buffer_views.len(), quantized.buffer_views.len());
        for (index, (view, plain_view)) in compressed.buffer_views.iter().zip(&quantized.buffer_views).enumerate() {
            assert_eq!(view.buffer.value(), 1, "view {index} declares its data in the fallback buffer");
            assert!(view.byte_offset.unwrap_or_default().0 + view.byte_length.0 <= fallback.byte_length.0);
            assert_eq!(view.byte_length, plain_view.byte_length);
            assert_eq!(view.byte_stride, plain_view.byte_stride);
            assert_eq!(view.target, plain_view.target);
            let extension = view
                .extensions
                .as_ref()
                .and_then(|extension| extension.others.get(EXT_MESHOPT_COMPRESSION))
                .expect("view has an EXT_meshopt_compression object");
            let field =
                |name: &str| extension[name].as_u64().unwrap_or_else(|| panic!("view {index}: {name}")) as usize;
            assert_eq!(field("buffer"), 0, "compressed bytes live in the BIN chunk");
            let (offset, length, stride, count) =
                (field("byteOffset"), field("byteLength"), field("byteStride"), field("count"));
            assert_eq!(offset % 4, 0);
            assert_eq!(stride * count, view.byte_length.0 as usize, "byteLength = byteStride × count");
            if let Some(parent_stride) = view.byte_stride {
                assert_eq!(parent_stride.0, stride);
            }
            let encoded = &compressed_binary[offset..offset + length];
            let plain_start = plain_view.byte_offset.unwrap_or_default().0 as usize;
            let plain = &quantized_binary[plain_start..plain_start + plain_view.byte_length.0 as usize];
            match extension["mode"].as_str() {
                Some("ATTRIBUTES") => {
                    assert_eq!(encoded[0], 0xa0, "vertex codec version 0");
                    let decoded = match stride {
                        4 => meshopt::decode_vertex_buffer::<[u8; 4]>(encoded, count).expect("decodes").concat(),
                        8 => meshopt::decode_vertex_buffer::<[u8; 8]>(encoded, count).expect("decodes").concat(),
                        other => panic!("unexpected attribute stride {other}"),
                    };
                    assert_eq!(decoded, plain, "view {index} decodes to the quantized bytes");
                }
                Some("TRIANGLES") => {
                    assert_eq!(encoded[0], 0xe1, "index codec version 1");
                    assert_eq!(count % 3, 0);
                    let decoded: Vec<u32> = match stride {
                        2 => meshopt::decode_index_buffer::<u16>(encoded, count)
                            .expect("decodes")
                            .into_iter()
                            .map(u32::from)
                            .collect(),
                        4 => meshopt::decode_index_buffer::<u32>(encoded, count).expect("decodes"),
                        other => panic!("unexpected index stride {other}"),
                    };
                    let plain: Vec<u32> = plain
                        .chunks_exact(stride)
                        .map(|bytes| bytes.iter().rev().fold(0, |value, byte| value << 8 | u32::from(*byte)))
                        .collect();
                    // The triangle codec keeps the triangle order and winding but may rotate the
                    // three indices of a triangle.
                    assert_eq!(rotated_to_smallest_first(&decoded), rotated_to_smallest_first(&plain), "view {index}");
                }
                other => panic!("unexpected mode {other:?}"),
            }
        }
    }

    #[test]
    fn index_width_follows_vertex_count() {
        for (vertex_count, expected) in [(65_535_usize, ComponentType::U16), (65_536, ComponentType::U32)] {
            let last = u32::try_from(vertex_count - 1).expect("fits");
            let mesh = LabelMesh {
                label: 1,
                name: "strip".to_owned(),
                color_srgb: [10, 20, 30],
                positions: (0..vertex_count).map(|index| [index as f32 * 0.01, (index % 7) as f32, 0.0]).collect(),
                normals: vec![[0.0, 0.0, 1.0]; vertex_count],
                triangles: vec![[0, 1, last], [last - 2, last - 1, last]],
            };
            for geometry in GlbGeometry::ALL {
                let root = json_root(&write(std::slice::from_ref(&mesh), geometry));
                let indices = root.meshes[0].primitives[0].indices.expect("indexed");
                let accessor = &root.accessors[indices.value()];
                let Checked::Valid(GenericComponentType(actual)) = accessor.component_type else {
                    panic!("{geometry}: invalid index component type");
                };
                assert_eq!(actual, expected, "{geometry}");
                assert_eq!(accessor.count.0, 6);
            }
        }
    }

    #[test]
    fn labels_without_triangles_get_no_node_and_no_labels_give_an_empty_scene() {
        let meshes = sample_meshes();
        for geometry in GlbGeometry::ALL {
            let root = json_root(&write(&meshes, geometry));
            assert!(root.nodes.iter().all(|node| node.name.as_deref() != Some("Empty label")), "{geometry}");
            assert_eq!(root.nodes.len(), 3);

            let glb = write(&meshes[1..2], geometry);
            let (_, binary) = glb_chunks(&glb);
            assert!(binary.is_none(), "{geometry}: no geometry, no BIN chunk");
            let document = gltf::Gltf::from_slice(&glb).expect("an empty scene is valid glTF");
            assert_eq!(document.extensions_used().count(), 0);
            assert_eq!(document.buffers().count(), 0);
            let root_node = document.default_scene().and_then(|scene| scene.nodes().next()).expect("root node");
            assert_eq!(root_node.name(), Some(ROOT_NODE_NAME));
            assert_eq!(root_node.children().count(), 0);
        }
    }

    #[test]
    fn output_is_deterministic() {
        let meshes = sample_meshes();
        for geometry in GlbGeometry::ALL {
            assert_eq!(write(&meshes, geometry), write(&meshes.clone(), geometry), "{geometry}");
        }
    }

    #[test]
    fn invalid_meshes_are_errors() {
        let valid = sample_meshes().swap_remove(0);
        let mut out_of_range = valid.clone();
        out_of_range.triangles[1][2] = 4;
        let mut missing_normal = valid.clone();
        missing_normal.normals.pop();
        let mut not_a_number = valid.clone();
        not_a_number.positions[2][1] = f32::NAN;
        let mut infinite_normal = valid.clone();
        infinite_normal.normals[3][0] = f32::INFINITY;
        for geometry in GlbGeometry::ALL {
            assert!(matches!(
                write_glb(std::slice::from_ref(&out_of_range), geometry, "test"),
                Err(GlbError::IndexOutOfRange { label: 3, index: 4, vertex_count: 4 })
            ));
            assert!(matches!(
                write_glb(std::slice::from_ref(&missing_normal), geometry, "test"),
                Err(GlbError::NormalCountMismatch { label: 3, positions: 4, normals: 3 })
            ));
            assert!(matches!(
                write_glb(std::slice::from_ref(&not_a_number), geometry, "test"),
                Err(GlbError::NonFiniteVertex { label: 3, vertex: 2 })
            ));
            assert!(matches!(
                write_glb(std::slice::from_ref(&infinite_normal), geometry, "test"),
                Err(GlbError::NonFiniteVertex { label: 3, vertex: 3 })
            ));
        }
    }

    #[test]
    fn position_grid_handles_a_single_point() {
        let grid = PositionGrid::covering(&[[5.0, -6.0, 7.5]]);
        assert_eq!(grid, PositionGrid { translation: [5.0, -6.0, 7.5], step: 1.0 });
        assert_eq!(grid.quantize([5.0, -6.0, 7.5]), [0, 0, 0]);
    }
}
