//! The Python side: nnU-Net's venv (`scripts/nnunet-env.sh`), and the scripts this crate carries,
//! written to a temporary folder and run there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{ImportError, ImportOptions, NnunetFacts};

/// The exporter (`python/nnunet_export.py`).
pub const EXPORT_SCRIPT: &str = include_str!("../python/nnunet_export.py");

/// The Python of nnU-Net's venv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NnunetPython {
    pub python: PathBuf,
}

impl NnunetPython {
    /// `IRIS_NNUNET_PYTHON`, else the venv `scripts/nnunet-env.sh install` makes
    /// (`IRIS_NNUNET_VENV`, default `~/.cache/iris-nnunet-venv`).
    pub fn locate() -> Result<NnunetPython, ImportError> {
        let python = match std::env::var_os("IRIS_NNUNET_PYTHON") {
            Some(python) => PathBuf::from(python),
            None => {
                let venv = std::env::var_os("IRIS_NNUNET_VENV")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/iris-nnunet-venv")));
                venv.ok_or_else(|| ImportError::NoPython("HOME is not set".to_owned()))?.join("bin/python")
            }
        };
        if python.is_file() {
            Ok(NnunetPython { python })
        } else {
            Err(ImportError::NoPython(format!("{} does not exist", python.display())))
        }
    }

    /// Runs the exporter on `model_folder`: `onnx` and `facts` are written, the facts returned.
    pub fn export(
        &self,
        model_folder: &Path,
        onnx: &Path,
        facts: &Path,
        options: &ImportOptions,
    ) -> Result<NnunetFacts, ImportError> {
        let mut arguments = vec![
            model_folder.as_os_str().to_owned(),
            onnx.as_os_str().to_owned(),
            facts.as_os_str().to_owned(),
            "--checkpoint".into(),
            options.checkpoint.clone().into(),
        ];
        if let Some(folds) = &options.folds {
            arguments.push("--folds".into());
            arguments.extend(folds.iter().map(Into::into));
        }
        self.run_script("nnunet_export.py", EXPORT_SCRIPT, &arguments)?;
        let text = std::fs::read(facts).map_err(|error| ImportError::Io {
            what: "cannot read",
            path: facts.to_owned(),
            error,
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| ImportError::Export(format!("the exporter's facts are unreadable: {e}")))
    }

    /// Runs one of this crate's scripts with `arguments`; its stdout on success.
    pub fn run_script(
        &self,
        file_name: &str,
        source: &str,
        arguments: &[std::ffi::OsString],
    ) -> Result<String, ImportError> {
        let folder = tempfile::tempdir().map_err(|error| ImportError::Io {
            what: "cannot create a temporary folder in",
            path: std::env::temp_dir(),
            error,
        })?;
        let script = folder.path().join(file_name);
        std::fs::write(&script, source).map_err(|error| ImportError::Io {
            what: "cannot write",
            path: script.clone(),
            error,
        })?;
        tracing::info!(script = file_name, python = %self.python.display(), "running nnU-Net's Python");
        let output = Command::new(&self.python)
            .arg(&script)
            .args(arguments)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .map_err(|error| ImportError::Io { what: "cannot run", path: self.python.clone(), error })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|line| line.starts_with("error: "))
            .map(|line| line.trim_start_matches("error: ").to_owned())
            .unwrap_or_else(|| stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
        // The scripts exit with 2 when they refuse the model (their message says why).
        if output.status.code() == Some(2) {
            return Err(ImportError::Refused(reason));
        }
        Err(ImportError::Export(format!("{file_name} exited with {}: {reason}", output.status)))
    }
}
