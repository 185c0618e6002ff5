//! Resolving a model id to files: a local folder, the Hugging Face cache, or a Hub download.
//!
//! The cache layout is shared with Python tools (`huggingface_hub`): `HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. With `HF_HUB_OFFLINE=1` nothing is
//! downloaded and a file that is not cached is a clear error naming the cache path.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where a model's files come from.
#[derive(Debug, Clone)]
pub enum ModelLocation {
    /// A local checkpoint folder.
    Local(PathBuf),
    /// A Hugging Face Hub repository at a revision (branch, tag or commit).
    Hub { repo_id: String, revision: String },
}

impl ModelLocation {
    /// Interprets `model` as a local folder when one exists at that path, else as a Hub id.
    pub fn parse(model: &str, revision: Option<&str>) -> Result<Self> {
        let path = Path::new(model);
        if path.is_dir() {
            return Ok(ModelLocation::Local(path.to_path_buf()));
        }
        if path.exists() {
            return Err(Error::ModelNotFound(format!(
                "{model} is a file, not a checkpoint folder; pass the folder that holds config.json"
            )));
        }
        let looks_like_path = model.starts_with('.') || model.starts_with('/') || model.starts_with('~');
        let parts: Vec<&str> = model.split('/').collect();
        let valid_id = parts.len() == 2
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        if looks_like_path || !valid_id {
            return Err(Error::ModelNotFound(format!(
                "model {model:?} is neither an existing local folder nor a Hugging Face model id of the form org/name"
            )));
        }
        Ok(ModelLocation::Hub {
            repo_id: model.to_string(),
            revision: revision.unwrap_or("main").to_string(),
        })
    }
}

/// The Hugging Face hub cache directory, honouring `HF_HUB_CACHE` and `HF_HOME`.
pub fn hub_cache_dir() -> PathBuf {
    cache_dir_from(non_empty_env("HF_HUB_CACHE"), non_empty_env("HF_HOME"), non_empty_env("HOME"))
}

/// `huggingface_hub`'s precedence: `HF_HUB_CACHE`, then `$HF_HOME/hub`, then
/// `~/.cache/huggingface/hub`.
fn cache_dir_from(hub_cache: Option<String>, hf_home: Option<String>, home: Option<String>) -> PathBuf {
    if let Some(dir) = hub_cache {
        return PathBuf::from(dir);
    }
    if let Some(hf_home) = hf_home {
        return PathBuf::from(hf_home).join("hub");
    }
    PathBuf::from(home.unwrap_or_else(|| ".".into())).join(".cache").join("huggingface").join("hub")
}

/// True when `HF_HUB_OFFLINE` asks for offline mode (as `huggingface_hub` reads it).
pub fn offline_mode() -> bool {
    non_empty_env("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Fetches files of one model, from its folder, the cache, or the Hub.
pub struct FileFetcher {
    location: ModelLocation,
    cache_dir: PathBuf,
    offline: bool,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl FileFetcher {
    /// A fetcher for `location` using the cache and offline setting from the environment.
    pub fn new(location: ModelLocation) -> Self {
        Self::with_cache(location, hub_cache_dir(), offline_mode())
    }

    /// A fetcher with an explicit hub cache directory and offline setting. Hub access is set
    /// up lazily on the first download.
    pub fn with_cache(location: ModelLocation, cache_dir: PathBuf, offline: bool) -> Self {
        FileFetcher { location, cache_dir, offline, api: None }
    }

    /// A short description of where files come from, for messages and logs.
    pub fn describe(&self) -> String {
        match &self.location {
            ModelLocation::Local(dir) => dir.display().to_string(),
            ModelLocation::Hub { repo_id, revision } => format!("{repo_id}@{revision}"),
        }
    }

    /// The path of `filename`; `Ok(None)` when the model does not have that file.
    pub fn get_optional(&mut self, filename: &str) -> Result<Option<PathBuf>> {
        match &self.location {
            ModelLocation::Local(dir) => {
                let path = dir.join(filename);
                Ok(path.is_file().then_some(path))
            }
            ModelLocation::Hub { repo_id, revision } => {
                let (repo_id, revision) = (repo_id.clone(), revision.clone());
                if let Some(path) = self.cached(&repo_id, &revision, filename) {
                    return Ok(Some(path));
                }
                if self.no_exist_marker(&repo_id, &revision, filename) {
                    return Ok(None);
                }
                if self.offline {
                    if self.snapshot_dir(&repo_id, &revision).is_some() {
                        // The snapshot exists but lacks this file: treat it as absent.
                        return Ok(None);
                    }
                    return Err(self.not_cached_error(&repo_id, &revision));
                }
                self.download(&repo_id, &revision, filename)
            }
        }
    }

    /// The path of `filename`, which the model must have.
    pub fn get(&mut self, filename: &str) -> Result<PathBuf> {
        self.get_optional(filename)?.ok_or_else(|| match &self.location {
            ModelLocation::Local(dir) => Error::checkpoint(dir.join(filename), "required file is missing"),
            ModelLocation::Hub { .. } => {
                Error::ModelNotFound(format!("{} has no file {filename}", self.describe()))
            }
        })
    }

    fn snapshot_dir(&self, repo_id: &str, revision: &str) -> Option<PathBuf> {
        let repo_dir = self.cache_dir.join(format!("models--{}", repo_id.replace('/', "--")));
        let commit = if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
            revision.to_string()
        } else {
            std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?.trim().to_string()
        };
        let dir = repo_dir.join("snapshots").join(commit);
        dir.is_dir().then_some(dir)
    }

    fn cached(&self, repo_id: &str, revision: &str, filename: &str) -> Option<PathBuf> {
        let path = self.snapshot_dir(repo_id, revision)?.join(filename);
        path.is_file().then_some(path)
    }

    /// `huggingface_hub` records files known to be absent under `.no_exist/<commit>/`.
    fn no_exist_marker(&self, repo_id: &str, revision: &str, filename: &str) -> bool {
        let Some(snapshot) = self.snapshot_dir(repo_id, revision) else {
            return false;
        };
        let commit = snapshot.file_name().map(|c| c.to_owned()).unwrap_or_default();
        let repo_dir = snapshot.parent().and_then(Path::parent).map(Path::to_path_buf);
        repo_dir.map(|d| d.join(".no_exist").join(commit).join(filename).exists()).unwrap_or(false)
    }

    fn not_cached_error(&self, repo_id: &str, revision: &str) -> Error {
        Error::ModelNotFound(format!(
            "model {repo_id} (revision {revision}) is not in the Hugging Face cache at {} and offline mode is on \
             (HF_HUB_OFFLINE); download it while online, set HF_HUB_CACHE/HF_HOME to the cache that holds it, \
             or pass a local checkpoint folder",
            self.cache_dir.display()
        ))
    }

    fn download(&mut self, repo_id: &str, revision: &str, filename: &str) -> Result<Option<PathBuf>> {
        if self.api.is_none() {
            let cache = hf_hub::Cache::new(self.cache_dir.clone());
            let token = non_empty_env("HF_TOKEN").or_else(|| cache.token());
            let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_token(token);
            if let Some(endpoint) = non_empty_env("HF_ENDPOINT") {
                builder = builder.with_endpoint(endpoint);
            }
            let api = builder.build().map_err(|e| {
                Error::ModelNotFound(format!("cannot set up Hugging Face Hub access for {repo_id}: {e}"))
            })?;
            self.api = Some(api.repo(hf_hub::Repo::with_revision(
                repo_id.to_string(),
                hf_hub::RepoType::Model,
                revision.to_string(),
            )));
        }
        let api = self.api.as_ref().expect("initialised above");
        match api.get(filename) {
            Ok(path) => Ok(Some(path)),
            Err(hf_hub::api::sync::ApiError::RequestError(err)) if is_http_404(&err) => Ok(None),
            Err(err) => Err(Error::ModelNotFound(format!(
                "could not download {filename} of {repo_id} (revision {revision}) into {}: {err}. \
                 If the machine is offline, set HF_HUB_OFFLINE=1 and use a cached model or a local folder; \
                 for gated models set HF_TOKEN",
                self.cache_dir.display()
            ))),
        }
    }
}

fn is_http_404(err: &ureq::Error) -> bool {
    matches!(err, ureq::Error::Status(404, _))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_precedence() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(cache_dir_from(s("/c"), s("/h"), s("/home")), PathBuf::from("/c"));
        assert_eq!(cache_dir_from(None, s("/h"), s("/home")), PathBuf::from("/h/hub"));
        assert_eq!(cache_dir_from(None, None, s("/home")), PathBuf::from("/home/.cache/huggingface/hub"));
    }

    #[test]
    fn parses_locations() {
        assert!(matches!(ModelLocation::parse(".", None).unwrap(), ModelLocation::Local(_)));
        match ModelLocation::parse("microsoft/Phi-3.5-vision-instruct", Some("abc")).unwrap() {
            ModelLocation::Hub { repo_id, revision } => {
                assert_eq!(repo_id, "microsoft/Phi-3.5-vision-instruct");
                assert_eq!(revision, "abc");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(ModelLocation::parse("./does/not/exist", None).is_err());
        assert!(ModelLocation::parse("not an id", None).is_err());
    }
}
