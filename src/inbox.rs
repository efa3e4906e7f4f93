//! Drop-in mode: files placed in an inbox directory are uploaded as `uploads/<user>/<name>` once
//! their size has stopped changing, then moved to `<inbox>/submitted/`. A file is moved only
//! after its upload succeeded, so nothing dropped in is lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iris_core::ids::UserId;
use iris_core::ports::ObjectStore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the inbox is scanned; a file is taken once two scans saw the same size and mtime.
pub const INBOX_SCAN_INTERVAL: Duration = Duration::from_millis(500);
pub const SUBMITTED_DIRECTORY: &str = "submitted";

pub async fn watch_inbox(objects: Arc<dyn ObjectStore>, inbox: PathBuf, user: UserId, shutdown: CancellationToken) {
    let submitted = inbox.join(SUBMITTED_DIRECTORY);
    if let Err(error) = tokio::fs::create_dir_all(&submitted).await {
        warn!(%error, inbox = %inbox.display(), "cannot create the inbox");
        return;
    }
    let mut seen: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INBOX_SCAN_INTERVAL) => {}
        }
        let candidates = match stable_files(&inbox, &mut seen).await {
            Ok(files) => files,
            Err(error) => {
                warn!(%error, "cannot read the inbox");
                continue;
            }
        };
        for path in candidates {
            match crate::submit_file(objects.as_ref(), &user, &path, &Default::default()).await {
                Ok(submission) => {
                    let target = unique_target(&submitted, &path);
                    if let Err(error) = tokio::fs::rename(&path, &target).await {
                        warn!(%error, job_id = %submission.job_id, "submitted but could not move out of the inbox");
                    }
                    seen.remove(&path);
                    info!(job_id = %submission.job_id, "inbox file submitted");
                }
                Err(error) => warn!(%error, "an inbox file was not submitted; will retry"),
            }
        }
    }
}

/// Regular, visible files whose size and mtime match the previous scan.
async fn stable_files(inbox: &Path, seen: &mut HashMap<PathBuf, (u64, SystemTime)>) -> std::io::Result<Vec<PathBuf>> {
    let mut stable = Vec::new();
    let mut entries = tokio::fs::read_dir(inbox).await?;
    let mut present = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let metadata = entry.metadata().await?;
        if hidden || !metadata.is_file() {
            continue;
        }
        let signature = (metadata.len(), metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        present.push(path.clone());
        if seen.insert(path.clone(), signature) == Some(signature) {
            stable.push(path);
        }
    }
    seen.retain(|path, _| present.contains(path));
    stable.sort();
    Ok(stable)
}

fn unique_target(directory: &Path, file: &Path) -> PathBuf {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut target = directory.join(&name);
    let mut n = 1;
    while target.exists() {
        target = directory.join(format!("{n}-{name}"));
        n += 1;
    }
    target
}
