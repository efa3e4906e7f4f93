//! The named outputs of a job: the only place their names and files are spelled. A job record's
//! and an event's `artifacts` map these names to object keys; every output lives at a
//! deterministic key under `jobs/<jobId>/`, which is what lets a repeated message find its work done.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::job::Stage;
use crate::keys::ObjectKey;

/// Defines [`Artifact`], its list, names, files and stages from one table.
macro_rules! artifacts {
    ($($(#[$doc:meta])* $variant:ident => $name:literal, $file:literal, $stage:ident;)*) => {
        /// One named output of a job.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Artifact {
            $($(#[$doc])* $variant,)*
        }

        impl Artifact {
            /// Every artifact, in pipeline order.
            pub const ALL: &[Artifact] = &[$(Artifact::$variant,)*];

            /// The artifact's name in records and events.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Artifact::$variant => $name,)*
                }
            }

            /// Its path under `jobs/<jobId>/`.
            pub const fn file(self) -> &'static str {
                match self {
                    $(Artifact::$variant => $file,)*
                }
            }

            /// The stage that writes it.
            pub const fn stage(self) -> Stage {
                match self {
                    $(Artifact::$variant => Stage::$stage,)*
                }
            }
        }
    };
}

artifacts! {
    /// `ingest.json`: what ingest found, and the upload's grid.
    IngestReport => "ingest_report", "ingest.json", Ingest;
    /// The canonical RAS CT, int16 HU; its creation starts segment.
    Volume => "volume", "volume.nii.gz", Ingest;
    /// Per-label statistics and the label table.
    Stats => "stats", "stats.json", Segment;
    /// The label map on the upload's grid; its creation starts mesh.
    Labels => "labels", "labels.nii.gz", Segment;
    /// One binary glTF scene of every mesh.
    MeshGlb => "mesh_glb", "mesh/scene.glb", Mesh;
    /// Every mesh as OBJ groups.
    MeshObj => "mesh_obj", "mesh/model.obj", Mesh;
    /// The OBJ's materials.
    MeshMtl => "mesh_mtl", "mesh/model.mtl", Mesh;
    /// What mesh made, per label; written last.
    MeshManifest => "mesh_manifest", "mesh/manifest.json", Mesh;
}

/// The folder of the mesh stage's files under `jobs/<jobId>/`, STL files per label included.
pub const MESH_FOLDER: &str = "mesh";

impl Artifact {
    /// Its object key for `job`.
    pub fn key(self, job: &JobId) -> ObjectKey {
        ObjectKey::for_job(job, self.file())
    }

    /// The last segment of its path (e.g. `scene.glb`), as files beside it refer to it.
    pub const fn file_name(self) -> &'static str {
        let file = self.file();
        let bytes = file.as_bytes();
        let mut start = bytes.len();
        while start > 0 && bytes[start - 1] != b'/' {
            start -= 1;
        }
        file.split_at(start).1
    }

    /// The artifacts `stage` writes, in the order it writes them.
    pub fn of_stage(stage: Stage) -> impl Iterator<Item = Artifact> {
        Artifact::ALL.iter().copied().filter(move |artifact| artifact.stage() == stage)
    }

    pub fn parse(name: &str) -> Option<Artifact> {
        Artifact::ALL.iter().copied().find(|artifact| artifact.name() == name)
    }
}

/// Records order artifacts by name, as JSON objects list them.
impl Ord for Artifact {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialOrd for Artifact {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key of a file the mesh stage names itself (e.g. a label's STL file), under `jobs/<id>/mesh/`.
pub fn mesh_file_key(job: &JobId, file_name: &str) -> ObjectKey {
    ObjectKey::for_job(job, &format!("{MESH_FOLDER}/{file_name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_serialise_as_spelled_and_mesh_files_sit_in_the_mesh_folder() {
        for &artifact in Artifact::ALL {
            assert_eq!(serde_json::to_value(artifact).unwrap(), serde_json::Value::String(artifact.name().into()));
            assert_eq!(Artifact::parse(artifact.name()), Some(artifact));
            if artifact.stage() == Stage::Mesh {
                assert_eq!(artifact.file(), format!("{MESH_FOLDER}/{}", artifact.file_name()));
            }
        }
        let job = JobId::derive("b", "k", "e");
        assert_eq!(Artifact::MeshGlb.key(&job), mesh_file_key(&job, "scene.glb"));
        assert_eq!(Artifact::of_stage(Stage::Segment).collect::<Vec<_>>(), vec![Artifact::Stats, Artifact::Labels]);
    }
}
