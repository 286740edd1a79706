//! The compile cache: compiled plugin code on disk, keyed by the component's SHA-256 and the
//! engine's compatibility hash, so a restart or a swap back to a known version skips the
//! compilation (tens of milliseconds to seconds) and only maps the code (well under one).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmtime::Engine;
use wasmtime::component::Component;

/// How many compiled plugin versions are kept; older ones are deleted when a new one is written.
const KEEP: usize = 8;

/// Where compiled code is kept.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    keep: usize,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now.
    Compiled,
    /// Mapped from the cache.
    Cached,
}

impl CompileCache {
    /// A cache in `dir`, created when first written; `None` turns caching off.
    pub fn new(dir: Option<PathBuf>) -> Self {
        CompileCache { dir, keep: KEEP }
    }

    /// The same cache keeping the `keep` most recently used components instead.
    pub fn keeping(self, keep: usize) -> Self {
        CompileCache { keep, ..self }
    }

    /// The component for `bytes` (whose SHA-256 is `sha256`): from the cache when it holds
    /// code compiled by an engine like `engine`, else compiled now.
    pub fn component(&self, engine: &Engine, bytes: &[u8], sha256: &str) -> wasmtime::Result<(Component, Origin)> {
        if let Some(path) = self.path(engine, sha256)
            && path.exists()
        {
            // SAFETY: the file was written by `store` below from code this engine compiled,
            // into a directory only the operator controls; the name carries the engine's
            // compatibility hash, and wasmtime checks its own header besides.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    // Mark it recently used, so pruning keeps it.
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(&path)
                        .and_then(|file| file.set_modified(SystemTime::now()));
                    return Ok((component, Origin::Cached));
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "unusable compiled plugin in the cache; compiling again");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok((Component::new(engine, bytes)?, Origin::Compiled))
    }

    /// Keeps `component`'s compiled code for the next start; failures are logged, never fatal.
    pub fn store(&self, engine: &Engine, component: &Component, sha256: &str) {
        let Some(path) = self.path(engine, sha256) else {
            return;
        };
        if let Err(error) = write(&path, component) {
            tracing::warn!(path = %path.display(), %error, "cannot write the compiled plugin to the cache");
            return;
        }
        if let Some(dir) = &self.dir {
            prune(dir, self.keep);
        }
    }

    fn path(&self, engine: &Engine, sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish())))
    }
}

fn write(path: &Path, component: &Component) -> anyhow::Result<()> {
    let code = component.serialize()?;
    let dir = path.parent().expect("cache paths have a folder");
    std::fs::create_dir_all(dir)?;
    // Written aside and renamed, so a reader never maps a half-written file.
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, code)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// Deletes all but the `keep` most recently used compiled plugins in `dir`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .collect();
    files.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, path) in files.into_iter().skip(keep) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_most_recent() {
        let dir = std::env::temp_dir().join(format!("webhooks-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..5u64 {
            let path = dir.join(format!("{i}.cwasm"));
            std::fs::write(&path, b"x").unwrap();
            let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        std::fs::write(dir.join("other.txt"), b"x").unwrap();
        prune(&dir, 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["3.cwasm", "4.cwasm", "other.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
