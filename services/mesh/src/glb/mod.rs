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
mod tests;
