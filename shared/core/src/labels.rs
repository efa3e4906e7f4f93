//! Label tables and the segmentation statistics document (`stats.json`), the contract between
//! the segment stage (which writes it) and the mesh stage (which names and colours surfaces from it).

use serde::{Deserialize, Serialize};

/// One class of a label map. `id` 0 is background and never appears in a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelDescription {
    pub id: u16,
    pub name: String,
    /// Display colour, sRGB 0–255.
    pub color: [u8; 3],
}

/// The model that produced a label map and its classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelTable {
    pub model: String,
    /// False for models whose output must not be used for diagnosis (the built-in classical model).
    pub diagnostic: bool,
    pub labels: Vec<LabelDescription>,
}

/// `stats.json`: per-label statistics of a label map, on the upload's grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentationStats {
    pub model: String,
    pub diagnostic: bool,
    pub dims: [usize; 3],
    pub voxel_volume_ml: f64,
    /// Every class of the model's table, including those with no voxels.
    pub labels: Vec<LabelStatistics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelStatistics {
    pub id: u16,
    pub name: String,
    pub color: [u8; 3],
    pub voxels: u64,
    pub volume_ml: f64,
    /// Mean and standard deviation of the CT intensity (HU) inside the label; absent when empty.
    pub mean_hu: Option<f64>,
    pub std_hu: Option<f64>,
    /// Mean world position (RAS mm) of the label's voxel centres; absent when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centroid_mm: Option<[f64; 3]>,
    /// Smallest box in world RAS mm holding every voxel centre of the label; absent when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounding_box_mm: Option<BoundingBox>,
    /// The label reaches the edge of the volume, so the structure may continue outside the scan
    /// and its volume and centroid describe only the part that was imaged.
    #[serde(default)]
    pub touches_border: bool,
}

/// An axis-aligned box in world RAS millimetres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox {
    pub min: [f64; 3],
    pub max: [f64; 3],
}

impl LabelTable {
    pub fn find(&self, id: u16) -> Option<&LabelDescription> {
        self.labels.iter().find(|l| l.id == id)
    }
}

impl SegmentationStats {
    /// The label table these statistics describe.
    pub fn label_table(&self) -> LabelTable {
        LabelTable {
            model: self.model.clone(),
            diagnostic: self.diagnostic,
            labels: self
                .labels
                .iter()
                .map(|l| LabelDescription { id: l.id, name: l.name.clone(), color: l.color })
                .collect(),
        }
    }
}

/// Name and colour for a label id that no table describes (e.g. a label map given to
/// `iris mesh` without its stats.json): `label_<id>` and a colour from a fixed palette.
pub fn fallback_label(id: u16) -> LabelDescription {
    const PALETTE: [[u8; 3]; 8] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ];
    LabelDescription { id, name: format!("label_{id}"), color: PALETTE[usize::from(id) % PALETTE.len()] }
}
