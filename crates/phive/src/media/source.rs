use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use image::DynamicImage;

use crate::{Error, Result};

/// What a media reference may point at, and how large it may be.
#[derive(Debug, Clone)]
pub struct MediaPolicy {
    /// Largest accepted encoded size in bytes (downloads and base64 payloads).
    pub max_bytes: usize,
    /// Largest accepted decoded image, in pixels; checked from the header before decoding.
    pub max_pixels: u64,
    /// Directories local paths must lie inside; `None` allows any readable path.
    pub local_dirs: Option<Vec<PathBuf>>,
    /// Whether http(s) URLs may be fetched.
    pub allow_urls: bool,
    /// Total time allowed for one download.
    pub fetch_timeout: Duration,
}

impl MediaPolicy {
    /// For a local user (CLI, SDKs): any local path and any URL.
    pub fn trusted() -> Self {
        MediaPolicy {
            max_bytes: 64 * 1024 * 1024,
            max_pixels: 100_000_000,
            local_dirs: None,
            allow_urls: true,
            fetch_timeout: Duration::from_secs(30),
        }
    }
}

/// A parsed media reference.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaSource {
    /// An http or https URL.
    Url(String),
    /// Bytes given inline (a `data:` URL or raw base64).
    Inline(Vec<u8>),
    /// A file on this machine.
    Path(PathBuf),
}

impl MediaSource {
    /// Classifies `reference`: `data:` URLs and http(s) URLs by scheme, `file://` URLs and
    /// existing paths as files, and anything else that decodes as base64 as inline bytes.
    pub fn parse(reference: &str) -> Result<Self> {
        let trimmed = reference.trim();
        if trimmed.is_empty() {
            return Err(Error::Media("empty media reference".into()));
        }
        let lower = trimmed.get(..8).unwrap_or(trimmed).to_ascii_lowercase();
        if lower.starts_with("data:") {
            return parse_data_url(trimmed).map(MediaSource::Inline);
        }
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(MediaSource::Url(trimmed.to_string()));
        }
        if lower.starts_with("file://") {
            return Ok(MediaSource::Path(PathBuf::from(&trimmed[7..])));
        }
        if let Some(scheme) = trimmed.split_once("://").map(|(s, _)| s) {
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            {
                return Err(Error::Media(format!(
                    "unsupported URL scheme {scheme:?}; use http(s), data: or file:// URLs, a local path, or base64"
                )));
            }
        }
        let path = Path::new(trimmed);
        if path.exists() {
            return Ok(MediaSource::Path(path.to_path_buf()));
        }
        if trimmed.len() >= 16 {
            if let Ok(bytes) = decode_base64(trimmed) {
                return Ok(MediaSource::Inline(bytes));
            }
        }
        Err(Error::Media(format!(
            "media reference {:?} is not an http(s) URL, a data: URL, base64 data, or an existing file",
            shorten(trimmed)
        )))
    }

    /// Reads the bytes behind the source, enforcing `policy`.
    pub fn fetch(&self, policy: &MediaPolicy) -> Result<Vec<u8>> {
        let bytes = match self {
            MediaSource::Inline(bytes) => bytes.clone(),
            MediaSource::Path(path) => read_local(path, policy)?,
            MediaSource::Url(url) => download(url, policy)?,
        };
        if bytes.len() > policy.max_bytes {
            return Err(too_large(bytes.len(), policy.max_bytes));
        }
        Ok(bytes)
    }
}

/// Resolves, fetches and decodes an image reference.
pub fn load_image(reference: &str, policy: &MediaPolicy) -> Result<DynamicImage> {
    let bytes = MediaSource::parse(reference)?.fetch(policy)?;
    decode_image(&bytes, policy)
}

/// Decodes an image after checking its header-declared size against the pixel budget, so a
/// decompression bomb is refused before any large allocation.
pub fn decode_image(bytes: &[u8], policy: &MediaPolicy) -> Result<DynamicImage> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::Media(format!("cannot read image: {e}")))
    };
    let format = reader()?.format().ok_or_else(|| {
        Error::Media("unrecognised image format; send PNG, JPEG, WebP, GIF or BMP".into())
    })?;
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| Error::Media(format!("corrupt {format:?} image: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > policy.max_pixels {
        return Err(Error::Media(format!(
            "image is {w}x{h} = {pixels} pixels, over the limit of {} pixels",
            policy.max_pixels
        )));
    }
    if w == 0 || h == 0 {
        return Err(Error::Media(format!("image has zero size ({w}x{h})")));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    let mut reader = reader()?;
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| Error::Media(format!("cannot decode {format:?} image: {e}")))
}

fn parse_data_url(url: &str) -> Result<Vec<u8>> {
    let (header, data) = url
        .split_once(',')
        .ok_or_else(|| Error::Media("malformed data: URL (no comma before the data)".into()))?;
    if !header.to_ascii_lowercase().ends_with(";base64") {
        return Err(Error::Media(
            "data: URLs must be base64-encoded (data:<mime>;base64,<data>)".into(),
        ));
    }
    decode_base64(data).map_err(|e| Error::Media(format!("invalid base64 in data: URL: {e}")))
}

fn decode_base64(data: &str) -> std::result::Result<Vec<u8>, base64::DecodeError> {
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(compact.as_bytes())
}

fn read_local(path: &Path, policy: &MediaPolicy) -> Result<Vec<u8>> {
    let canonical = path
        .canonicalize()
        .map_err(|e| Error::Media(format!("cannot open local file {}: {e}", path.display())))?;
    if let Some(dirs) = &policy.local_dirs {
        let allowed = dirs
            .iter()
            .filter_map(|d| d.canonicalize().ok())
            .any(|d| canonical.starts_with(&d));
        if !allowed {
            return Err(Error::Media(format!(
                "local file {} is outside the directories allowed for media (--allow-local-media)",
                path.display()
            )));
        }
    }
    let size = std::fs::metadata(&canonical).map(|m| m.len()).unwrap_or(0);
    if size > policy.max_bytes as u64 {
        return Err(too_large(size as usize, policy.max_bytes));
    }
    std::fs::read(&canonical)
        .map_err(|e| Error::Media(format!("cannot read {}: {e}", path.display())))
}

fn download(url: &str, policy: &MediaPolicy) -> Result<Vec<u8>> {
    if !policy.allow_urls {
        return Err(Error::Media("fetching media from URLs is disabled".into()));
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10).min(policy.fetch_timeout))
        .timeout(policy.fetch_timeout)
        .redirects(5)
        .build();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => {
            Error::Media(format!("fetching {url} failed with HTTP status {code}"))
        }
        other => Error::Media(format!("cannot fetch {url}: {other}")),
    })?;
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(policy.max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Media(format!("error while downloading {url}: {e}")))?;
    if bytes.len() > policy.max_bytes {
        return Err(too_large(bytes.len(), policy.max_bytes));
    }
    Ok(bytes)
}

fn too_large(size: usize, max: usize) -> Error {
    Error::Media(format!(
        "media is larger than the limit of {max} bytes (got at least {size})"
    ))
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn parses_each_kind_of_reference() {
        let png = png_bytes(3, 2);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        assert_eq!(
            MediaSource::parse(&format!("data:image/png;base64,{b64}")).unwrap(),
            MediaSource::Inline(png.clone())
        );
        assert_eq!(MediaSource::parse(&b64).unwrap(), MediaSource::Inline(png));
        assert!(matches!(
            MediaSource::parse("https://example.com/a.png").unwrap(),
            MediaSource::Url(_)
        ));
        assert_eq!(
            MediaSource::parse("file:///tmp/x.png").unwrap(),
            MediaSource::Path("/tmp/x.png".into())
        );
        assert!(MediaSource::parse("ftp://host/x.png")
            .unwrap_err()
            .to_string()
            .contains("scheme"));
        assert!(MediaSource::parse("no-such-file.png").is_err());
        assert!(MediaSource::parse("data:image/png,abc").is_err());
    }

    #[test]
    fn decodes_and_enforces_pixel_budget() {
        let png = png_bytes(40, 30);
        let img = decode_image(&png, &MediaPolicy::trusted()).unwrap();
        assert_eq!((img.width(), img.height()), (40, 30));
        let tight = MediaPolicy {
            max_pixels: 1000,
            ..MediaPolicy::trusted()
        };
        assert!(decode_image(&png, &tight)
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
        assert!(decode_image(b"not an image at all", &MediaPolicy::trusted()).is_err());
        let mut truncated = png_bytes(40, 30);
        truncated.truncate(truncated.len() / 2);
        assert!(decode_image(&truncated, &MediaPolicy::trusted()).is_err());
    }

    #[test]
    fn local_paths_must_be_inside_allowed_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a.png");
        std::fs::write(&inside, png_bytes(2, 2)).unwrap();
        let other = tempfile::tempdir().unwrap();
        let policy = MediaPolicy {
            local_dirs: Some(vec![other.path().to_path_buf()]),
            ..MediaPolicy::trusted()
        };
        let err = load_image(inside.to_str().unwrap(), &policy)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--allow-local-media"), "{err}");
        let policy = MediaPolicy {
            local_dirs: Some(vec![dir.path().to_path_buf()]),
            ..MediaPolicy::trusted()
        };
        assert!(load_image(inside.to_str().unwrap(), &policy).is_ok());
    }
}
