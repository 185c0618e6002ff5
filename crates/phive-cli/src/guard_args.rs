//! `phive serve` options that protect a shared server: API keys and the limits on slow clients,
//! open connections and decoded media.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use phive::media::MediaBudget;
use phive_server::{ApiKeys, ServerConfig};

/// Access and resource limits.
#[derive(Args, Debug)]
pub struct GuardArgs {
    /// Require `Authorization: Bearer KEY` on /v1/* (repeatable: any of the keys is accepted).
    /// Prefer PHIVE_API_KEY or --api-key-file: command lines are visible to other users.
    #[arg(
        long = "api-key",
        value_name = "KEY",
        global = true,
        env = "PHIVE_API_KEY",
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Read API keys from FILE, one per line (blank lines and lines starting with # are skipped).
    #[arg(long, value_name = "FILE", global = true, env = "PHIVE_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Serve /metrics without an API key even when keys are set.
    #[arg(long, global = true, env = "PHIVE_PUBLIC_METRICS")]
    public_metrics: bool,
    /// Connections open at once; beyond it new connections get 503 and are closed.
    #[arg(long, global = true, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..), env = "PHIVE_MAX_CONNECTIONS")]
    max_connections: u32,
    /// Seconds a client has to send a request's headers (and to start its next request on an
    /// idle keep-alive connection); then the connection is closed.
    #[arg(
        long,
        global = true,
        default_value_t = 30.0,
        value_name = "SECS",
        env = "PHIVE_HEADER_READ_TIMEOUT"
    )]
    header_read_timeout: f64,
    /// Seconds a client has to send a request's body after its headers; then 408.
    #[arg(long, global = true, default_value_t = 60.0, value_name = "SECS", env = "PHIVE_BODY_READ_TIMEOUT")]
    body_read_timeout: f64,
    /// GiB of decoded images and audio that requests being prepared may hold together (an
    /// image counts 4 bytes per pixel); beyond it requests get 503 and may retry.
    #[arg(long, global = true, default_value_t = 2.0, value_name = "GIB", env = "PHIVE_MAX_MEDIA_MEM")]
    max_media_mem: f64,
}

/// A positive number of seconds given as `name`.
pub fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{name} must be a positive number of seconds, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

impl GuardArgs {
    /// Writes these settings into `config`.
    pub fn apply(&self, config: &mut ServerConfig) -> anyhow::Result<()> {
        let mut keys = self.api_keys.clone();
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--api-key-file {}: cannot read it", path.display()))?;
            let from_file: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_string)
                .collect();
            if from_file.is_empty() {
                bail!("--api-key-file {}: no keys in it", path.display());
            }
            keys.extend(from_file);
        }
        if keys.iter().any(|k| k.trim().is_empty()) {
            bail!("an API key is empty (--api-key / PHIVE_API_KEY)");
        }
        if !(self.max_media_mem.is_finite() && self.max_media_mem > 0.0) {
            bail!("--max-media-mem must be a positive number of GiB, got {}", self.max_media_mem);
        }
        config.api_keys = ApiKeys::new(&keys);
        config.public_metrics = self.public_metrics;
        config.connections.max_connections = self.max_connections as usize;
        config.connections.header_read_timeout = seconds("--header-read-timeout", self.header_read_timeout)?;
        config.body_read_timeout = seconds("--body-read-timeout", self.body_read_timeout)?;
        config.media.budget = MediaBudget::new((self.max_media_mem * (1u64 << 30) as f64) as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        guard: GuardArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<ServerConfig> {
        let cli = Cli::try_parse_from(std::iter::once("phive").chain(args.iter().copied()))?;
        let mut config = ServerConfig::new("m");
        cli.guard.apply(&mut config)?;
        Ok(config)
    }

    #[test]
    fn keys_come_from_flags_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "# team keys\nsk-file-1\n\n  sk-file-2  \n").unwrap();
        let path = file.to_string_lossy().into_owned();
        let config = config(&["--api-key", "sk-flag", "--api-key-file", &path]).unwrap();
        for key in ["sk-flag", "sk-file-1", "sk-file-2"] {
            assert!(config.api_keys.accepts(key), "{key}");
        }
        assert!(!config.api_keys.accepts("# team keys"));
        std::fs::write(&file, "# no keys\n").unwrap();
        assert!(config_err(&["--api-key-file", &path]).contains("no keys"));
        assert!(config_err(&["--api-key", " "]).contains("empty"));
    }

    #[test]
    fn limits_are_validated() {
        let config = config(&["--max-connections", "7", "--body-read-timeout", "2.5"]).unwrap();
        assert_eq!(config.connections.max_connections, 7);
        assert_eq!(config.body_read_timeout, Duration::from_millis(2500));
        assert!(config_err(&["--header-read-timeout", "0"]).contains("--header-read-timeout"));
        assert!(config_err(&["--max-media-mem", "0"]).contains("--max-media-mem"));
    }

    fn config_err(args: &[&str]) -> String {
        config(args).err().map(|e| e.to_string()).unwrap_or_default()
    }
}
