//! The directory source (local mode): every YAML file under a directory,
//! in the form `kubectl apply -f` takes, kept in the index as the files
//! change. A file that does not parse is reported with its path and line
//! and left out; the last good version of it stays in effect until it is
//! fixed, and the rest of the directory loads.

use crate::{Index, Resource};
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

pub type SharedIndex = Arc<Mutex<Index>>;

/// How often the directory is rescanned even without a change event (a
/// safety net: inotify can drop events when its queue overflows).
const RESCAN: Duration = Duration::from_secs(2);
/// Events within this window are handled with one rescan (an editor's save
/// is several events).
const SETTLE: Duration = Duration::from_millis(25);

pub struct DirSource {
    dir: PathBuf,
    files: HashMap<PathBuf, Seen>,
    /// Files that did not parse, with the error, as of the last scan.
    errors: BTreeMap<PathBuf, String>,
}

struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot read the store directory {dir}: {source}")]
    Read { dir: PathBuf, source: std::io::Error },
    #[error("cannot watch the store directory {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), files: HashMap::new(), errors: BTreeMap::new() }
    }

    /// The files that failed to parse, with why.
    pub fn errors(&self) -> &BTreeMap<PathBuf, String> {
        &self.errors
    }

    /// Reads the directory and brings the index up to date with it.
    pub fn scan(&mut self, index: &Mutex<Index>) -> Result<(), DirError> {
        let paths =
            yaml_files(&self.dir).map_err(|source| DirError::Read { dir: self.dir.clone(), source })?;
        let mut present = std::collections::HashSet::new();
        for path in paths {
            present.insert(path.clone());
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let (modified, len) = (meta.modified().ok(), meta.len());
            if let Some(seen) = self.files.get(&path) {
                if seen.modified == modified && seen.len == len {
                    continue;
                }
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(error) => {
                    self.report(&path, format!("cannot read it: {error}"), index);
                    continue;
                }
            };
            if self.files.get(&path).is_some_and(|seen| seen.text == text) {
                self.files.insert(path, Seen { modified, len, text });
                continue;
            }
            match Resource::parse_all(&text) {
                Ok(resources) => {
                    tracing::info!(file = %path.display(), resources = resources.len(), "loaded");
                    self.errors.remove(&path);
                    lock(index).replace_source(&source_name(&path), resources);
                }
                Err(error) => self.report(&path, error.to_string(), index),
            }
            self.files.insert(path, Seen { modified, len, text });
        }
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(*p)).cloned().collect();
        for path in gone {
            tracing::info!(file = %path.display(), "removed");
            self.files.remove(&path);
            self.errors.remove(&path);
            lock(index).remove_source(&source_name(&path));
        }
        Ok(())
    }

    fn report(&mut self, path: &Path, error: String, index: &Mutex<Index>) {
        lock(index).record_rejection();
        tracing::error!(
            file = %path.display(),
            %error,
            "not loaded; what it last held (if anything) stays in effect until it is fixed"
        );
        self.errors.insert(path.to_path_buf(), error);
    }

    /// Scans, then rescans whenever the directory changes, for as long as
    /// the returned task runs.
    pub fn watch(mut self, index: SharedIndex) -> Result<tokio::task::JoinHandle<()>, DirError> {
        use notify::Watcher;
        self.scan(&index)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let _ = tx.send(event.is_ok());
        })
        .map_err(|source| DirError::Watch { dir: self.dir.clone(), source })?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::Recursive)
            .map_err(|source| DirError::Watch { dir: self.dir.clone(), source })?;
        Ok(tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    event = rx.recv() => {
                        if event.is_none() {
                            return;
                        }
                        tokio::time::sleep(SETTLE).await;
                        while rx.try_recv().is_ok() {}
                    }
                    () = tokio::time::sleep(RESCAN) => {}
                }
                if let Err(error) = self.scan(&index) {
                    tracing::error!(%error, "rescan failed; the index keeps what it had");
                }
            }
        }))
    }
}

fn lock(index: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn source_name(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// Every `.yaml`, `.yml` and `.json` file under `dir`, skipping hidden
/// files and directories (editors' swap files, `.git`).
fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                pending.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, ServicePort};

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop }\nspec:\n  selector: { app: web }\n  ports: [{ port: 80 }]\n";

    fn pod(ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: web-1, namespace: shop, labels: {{ app: web }} }}\nstatus: {{ podIP: {ip} }}\n"
        )
    }

    fn sp() -> ServicePort {
        ServicePort { namespace: "shop".into(), name: "web".into(), port: 80 }
    }

    #[test]
    fn a_bad_file_is_reported_and_its_last_good_version_stays() {
        let dir = tempdir("bad-file");
        std::fs::write(dir.join("svc.yaml"), SVC).unwrap();
        std::fs::write(dir.join("pod.yaml"), pod("10.0.0.1")).unwrap();
        std::fs::write(dir.join(".swap.yaml"), "not: [valid").unwrap();
        let index = Mutex::new(Index::new(Config::default()));
        let mut source = DirSource::new(&dir);
        source.scan(&index).unwrap();
        assert!(source.errors().is_empty(), "{:?}", source.errors());
        let rx = index.lock().unwrap().watch_endpoints(sp());
        assert_eq!(rx.borrow().endpoints.len(), 1);

        // Broken: reported with path and line; the pod stays.
        std::fs::write(dir.join("pod.yaml"), "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n")
            .unwrap();
        source.scan(&index).unwrap();
        let error = &source.errors()[&dir.join("pod.yaml")];
        assert!(error.starts_with("line "), "{error}");
        assert_eq!(rx.borrow().endpoints.len(), 1);

        // Fixed with a new address: in effect.
        std::fs::write(dir.join("pod.yaml"), pod("10.0.0.2")).unwrap();
        source.scan(&index).unwrap();
        assert!(source.errors().is_empty());
        assert_eq!(rx.borrow().endpoints.keys().next().unwrap().to_string(), "10.0.0.2:80");

        // Deleted: gone.
        std::fs::remove_file(dir.join("pod.yaml")).unwrap();
        source.scan(&index).unwrap();
        assert!(rx.borrow().endpoints.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn changes_are_live_without_a_restart() {
        let dir = tempdir("watch");
        std::fs::create_dir_all(dir.join("shop")).unwrap();
        std::fs::write(dir.join("shop/svc.yaml"), SVC).unwrap();
        let index = Arc::new(Mutex::new(Index::new(Config::default())));
        let task = DirSource::new(&dir).watch(index.clone()).unwrap();
        let mut rx = index.lock().unwrap().watch_endpoints(sp());
        assert!(rx.borrow_and_update().endpoints.is_empty());
        std::fs::write(dir.join("shop/pod.yaml"), pod("10.0.0.7")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("no update within 5s")
            .unwrap();
        assert_eq!(rx.borrow().endpoints.len(), 1);
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
