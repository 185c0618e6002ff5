use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use image::DynamicImage;

use super::budget::{MediaBudget, MediaReservation};
use crate::audio::{decode_audio, DecodedAudio};
use crate::{Error, Result};

/// What a media reference may point at, and how large it may get.
#[derive(Debug, Clone)]
pub struct MediaPolicy {
    /// Largest accepted encoded size in bytes (downloads, files and base64 payloads).
    pub max_bytes: usize,
    /// Largest accepted decoded image, in pixels; checked from the header before decoding.
    pub max_pixels: u64,
    /// Directories local paths must lie inside (after resolving symlinks and `..`); `None`
    /// allows any readable path, an empty list refuses every path.
    pub local_dirs: Option<Vec<PathBuf>>,
    /// Whether http(s) URLs may be fetched at all.
    pub allow_urls: bool,
    /// Whether URLs may resolve to loopback, private, link-local, CGNAT, multicast, unspecified
    /// or metadata addresses (checked on every redirect hop, on the address actually used).
    pub allow_private_urls: bool,
    /// Total time allowed for one download.
    pub fetch_timeout: Duration,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Most redirects followed per download.
    pub max_redirects: u32,
    /// Decoded bytes all requests may hold at once (shared by clones of the policy).
    pub budget: MediaBudget,
}

impl MediaPolicy {
    /// For a local user (CLI, SDKs): any local path and any URL.
    pub fn trusted() -> Self {
        MediaPolicy {
            max_bytes: 64 * 1024 * 1024,
            max_pixels: 100_000_000,
            local_dirs: None,
            allow_urls: true,
            allow_private_urls: true,
            fetch_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
            budget: MediaBudget::default(),
        }
    }

    /// For requests from the network (the HTTP server): public URLs only, no local files,
    /// 20 MB per image (OpenAI's limit) and a 50-megapixel budget. Operators widen it with
    /// flags, which every refusal names.
    pub fn server() -> Self {
        MediaPolicy {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 50_000_000,
            local_dirs: Some(Vec::new()),
            allow_urls: true,
            allow_private_urls: false,
            fetch_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 3,
            budget: MediaBudget::default(),
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
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
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

    /// Classifies `reference` for a server: like [`MediaSource::parse`], but when local paths
    /// are restricted the answer never depends on whether a file exists (that would let a
    /// client probe the server's file system): inline base64 is recognised by its content,
    /// everything else that is not a URL is treated as a path and checked by [`fetch`](Self::fetch).
    pub fn parse_with(reference: &str, policy: &MediaPolicy) -> Result<Self> {
        if policy.local_dirs.is_none() {
            return Self::parse(reference);
        }
        let trimmed = reference.trim();
        let lower = trimmed.get(..8).unwrap_or(trimmed).to_ascii_lowercase();
        if trimmed.is_empty()
            || lower.starts_with("data:")
            || lower.starts_with("http://")
            || lower.starts_with("https://")
            || lower.starts_with("file://")
            || trimmed.contains("://")
        {
            return Self::parse(trimmed);
        }
        if trimmed.len() >= 16 {
            if let Ok(bytes) = decode_base64(trimmed) {
                if image::guess_format(&bytes).is_ok() || looks_like_audio(&bytes) {
                    return Ok(MediaSource::Inline(bytes));
                }
            }
        }
        Ok(MediaSource::Path(PathBuf::from(trimmed)))
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
    load_image_held(reference, policy).map(|(image, _)| image)
}

/// [`load_image`], with the image's share of `policy.budget`, to hold while the image is.
pub fn load_image_held(reference: &str, policy: &MediaPolicy) -> Result<(DynamicImage, MediaReservation)> {
    let bytes = MediaSource::parse_with(reference, policy)?.fetch(policy)?;
    decode_image_held(&bytes, policy)
}

/// Fetches and decodes the audio clip `reference` names (a path, URL, `data:` URL or raw
/// base64), classified as [`MediaSource::parse_with`] does for images.
pub fn load_audio(reference: &str, policy: &MediaPolicy) -> Result<DecodedAudio> {
    load_audio_held(reference, policy).map(|(audio, _)| audio)
}

/// [`load_audio`], with the clip's share of `policy.budget`. The decoded length is known only
/// after decoding (bounded by the audio limits), so the clip is counted once decoded.
pub fn load_audio_held(reference: &str, policy: &MediaPolicy) -> Result<(DecodedAudio, MediaReservation)> {
    let bytes = MediaSource::parse_with(reference, policy)?.fetch(policy)?;
    let audio = decode_audio(&bytes, None)?;
    let reservation = policy.budget.reserve(4 * audio.samples.len() as u64, "the audio clip")?;
    Ok((audio, reservation))
}

/// Whether `bytes` start with the magic of a container phive decodes audio from (WAV, FLAC,
/// Ogg, MP3 with an ID3 tag), so raw base64 audio is told from a path by its content. A bare
/// MP3 frame sync is not taken: paths starting `//` decode to it. Use a `data:` URL for those.
fn looks_like_audio(bytes: &[u8]) -> bool {
    let wav = bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE";
    wav || [&b"fLaC"[..], b"OggS", b"ID3"].iter().any(|magic| bytes.starts_with(magic))
}

/// Decodes an image after checking its header-declared size against the pixel budget, so a
/// decompression bomb is refused before any large allocation.
pub fn decode_image(bytes: &[u8], policy: &MediaPolicy) -> Result<DynamicImage> {
    decode_image_held(bytes, policy).map(|(image, _)| image)
}

/// [`decode_image`], reserving the decoded size (4 bytes per pixel) in `policy.budget` before
/// decoding.
fn decode_image_held(bytes: &[u8], policy: &MediaPolicy) -> Result<(DynamicImage, MediaReservation)> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::Media(format!("cannot read image: {e}")))
    };
    let format = reader()?
        .format()
        .ok_or_else(|| Error::Media("unrecognised image format; send PNG, JPEG, WebP, GIF or BMP".into()))?;
    let (w, h) =
        reader()?.into_dimensions().map_err(|e| Error::Media(format!("corrupt {format:?} image: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > policy.max_pixels {
        return Err(Error::Media(format!(
            "image is {w}x{h} = {pixels} pixels, over the limit of {} pixels (the server's --max-image-pixels)",
            policy.max_pixels
        )));
    }
    if w == 0 || h == 0 {
        return Err(Error::Media(format!("image has zero size ({w}x{h})")));
    }
    let reservation = policy.budget.reserve(pixels * 4, &format!("the {w}x{h} image"))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    let mut reader = reader()?;
    reader.limits(limits);
    let image = reader.decode().map_err(|e| Error::Media(format!("cannot decode {format:?} image: {e}")))?;
    Ok((image, reservation))
}

fn parse_data_url(url: &str) -> Result<Vec<u8>> {
    let (header, data) = url
        .split_once(',')
        .ok_or_else(|| Error::Media("malformed data: URL (no comma before the data)".into()))?;
    if !header.to_ascii_lowercase().ends_with(";base64") {
        return Err(Error::Media("data: URLs must be base64-encoded (data:<mime>;base64,<data>)".into()));
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

/// Makes `path` absolute and removes `.` and `..` without touching the file system, so a path
/// that does not exist can still be placed inside or outside the allowed directories.
fn lexical_absolute(path: &Path) -> PathBuf {
    let base = if path.is_absolute() { PathBuf::new() } else { std::env::current_dir().unwrap_or_default() };
    let mut out = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn read_local(path: &Path, policy: &MediaPolicy) -> Result<Vec<u8>> {
    let canonical = match &policy.local_dirs {
        None => path
            .canonicalize()
            .map_err(|e| Error::Media(format!("cannot open local file {}: {e}", path.display())))?,
        Some(dirs) if dirs.is_empty() => {
            return Err(Error::Media(format!(
                "local file paths are not allowed on this server ({}); the operator can allow a directory with --allow-local-media DIR",
                shorten(&path.display().to_string())
            )))
        }
        Some(dirs) => {
            let allowed: Vec<PathBuf> = dirs.iter().filter_map(|d| d.canonicalize().ok()).collect();
            let outside = || {
                Error::Media(format!(
                    "local file {} is outside the directories allowed for media (--allow-local-media)",
                    shorten(&path.display().to_string())
                ))
            };
            match path.canonicalize() {
                // Symlinks and `..` are resolved before the check, so neither escapes.
                Ok(canonical) if allowed.iter().any(|d| canonical.starts_with(d)) => canonical,
                Ok(_) => return Err(outside()),
                Err(e) => {
                    // Only say "not found" for paths that would have been allowed, so the
                    // answer reveals nothing about files elsewhere.
                    let lexical = lexical_absolute(path);
                    if allowed.iter().any(|d| lexical.starts_with(d)) {
                        return Err(Error::Media(format!("cannot open local file {}: {e}", path.display())));
                    }
                    return Err(outside());
                }
            }
        }
    };
    let metadata = std::fs::metadata(&canonical)
        .map_err(|e| Error::Media(format!("cannot open local file {}: {e}", path.display())))?;
    if !metadata.is_file() {
        return Err(Error::Media(format!("{} is not a regular file", path.display())));
    }
    if metadata.len() > policy.max_bytes as u64 {
        return Err(too_large(metadata.len() as usize, policy.max_bytes));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&canonical)
        .and_then(|f| f.take(policy.max_bytes as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| Error::Media(format!("cannot read {}: {e}", path.display())))?;
    Ok(bytes)
}

/// A DNS resolver for ureq that only returns addresses the policy allows; ureq calls it for
/// every connection, redirects included, and connects to exactly these addresses.
struct CheckedResolver {
    allow_private: bool,
}

impl ureq::Resolver for CheckedResolver {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
        super::net::resolve_checked(netloc, self.allow_private)
    }
}

/// The innermost explanation of a ureq failure (our resolver's refusal, a timeout...).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn download(url: &str, policy: &MediaPolicy) -> Result<Vec<u8>> {
    if !policy.allow_urls {
        return Err(Error::Media("fetching media from URLs is disabled".into()));
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(policy.connect_timeout.min(policy.fetch_timeout))
        .timeout(policy.fetch_timeout)
        .redirects(policy.max_redirects)
        .try_proxy_from_env(false)
        .resolver(CheckedResolver { allow_private: policy.allow_private_urls })
        .build();
    let shown = shorten(url);
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => {
            Error::Media(format!("fetching {shown} failed with HTTP status {code}"))
        }
        ureq::Error::Transport(t) => {
            let cause = root_cause(&t);
            match t.kind() {
                ureq::ErrorKind::TooManyRedirects => Error::Media(format!(
                    "fetching {shown} followed more than {} redirects (the server's limit)",
                    policy.max_redirects
                )),
                ureq::ErrorKind::Dns if cause.contains("--allow-private-urls") => {
                    Error::Media(format!("refusing to fetch {shown}: {cause}"))
                }
                _ if cause.contains("timed out") || cause.contains("timeout") => Error::Media(format!(
                    "fetching {shown} took longer than the {}s limit (--fetch-timeout): {cause}",
                    policy.fetch_timeout.as_secs_f64()
                )),
                _ => Error::Media(format!("cannot fetch {shown}: {t}")),
            }
        }
    })?;
    if let Some(len) = response.header("content-length").and_then(|v| v.trim().parse::<u64>().ok()) {
        if len > policy.max_bytes as u64 {
            return Err(too_large(len as usize, policy.max_bytes));
        }
    }
    let mut bytes = Vec::new();
    response.into_reader().take(policy.max_bytes as u64 + 1).read_to_end(&mut bytes).map_err(|e| {
        if e.to_string().contains("timed out") {
            Error::Media(format!(
                "downloading {shown} took longer than the {}s limit (--fetch-timeout)",
                policy.fetch_timeout.as_secs_f64()
            ))
        } else {
            Error::Media(format!("error while downloading {shown}: {e}"))
        }
    })?;
    if bytes.len() > policy.max_bytes {
        return Err(too_large(bytes.len(), policy.max_bytes));
    }
    Ok(bytes)
}

fn too_large(size: usize, max: usize) -> Error {
    Error::Media(format!(
        "media is larger than the limit of {max} bytes (got at least {size}; the server's --max-image-bytes)"
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

    /// A 0.1 s 16 kHz mono 16-bit PCM WAV of silence.
    fn wav_bytes() -> Vec<u8> {
        let data = vec![0u8; 3200];
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&1u16.to_le_bytes()); // mono
        out.extend_from_slice(&16000u32.to_le_bytes());
        out.extend_from_slice(&32000u32.to_le_bytes()); // bytes per second
        out.extend_from_slice(&2u16.to_le_bytes()); // block align
        out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
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
        assert!(matches!(MediaSource::parse("https://example.com/a.png").unwrap(), MediaSource::Url(_)));
        assert_eq!(MediaSource::parse("file:///tmp/x.png").unwrap(), MediaSource::Path("/tmp/x.png".into()));
        assert!(MediaSource::parse("ftp://host/x.png").unwrap_err().to_string().contains("scheme"));
        assert!(MediaSource::parse("no-such-file.png").is_err());
        assert!(MediaSource::parse("data:image/png,abc").is_err());
    }

    #[test]
    fn decodes_and_enforces_pixel_budget() {
        let png = png_bytes(40, 30);
        let img = decode_image(&png, &MediaPolicy::trusted()).unwrap();
        assert_eq!((img.width(), img.height()), (40, 30));
        let tight = MediaPolicy { max_pixels: 1000, ..MediaPolicy::trusted() };
        assert!(decode_image(&png, &tight).unwrap_err().to_string().contains("over the limit"));
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
        let policy =
            MediaPolicy { local_dirs: Some(vec![other.path().to_path_buf()]), ..MediaPolicy::trusted() };
        let err = load_image(inside.to_str().unwrap(), &policy).unwrap_err().to_string();
        assert!(err.contains("--allow-local-media"), "{err}");
        let policy =
            MediaPolicy { local_dirs: Some(vec![dir.path().to_path_buf()]), ..MediaPolicy::trusted() };
        assert!(load_image(inside.to_str().unwrap(), &policy).is_ok());
    }

    #[test]
    fn server_policy_refusals_name_their_flag_and_reveal_nothing() {
        let allowed = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let secret = elsewhere.path().join("secret.png");
        std::fs::write(&secret, png_bytes(2, 2)).unwrap();
        // No directories allowed: every path is refused the same way.
        let closed = MediaPolicy::server();
        let err = load_image(secret.to_str().unwrap(), &closed).unwrap_err().to_string();
        assert!(err.contains("--allow-local-media"), "{err}");
        let policy =
            MediaPolicy { local_dirs: Some(vec![allowed.path().to_path_buf()]), ..MediaPolicy::server() };
        // An existing and a missing file outside the allowed dir get the same answer.
        let missing = elsewhere.path().join("missing.png");
        let a = load_image(secret.to_str().unwrap(), &policy).unwrap_err().to_string();
        let b = load_image(missing.to_str().unwrap(), &policy).unwrap_err().to_string();
        assert_eq!(a.replace("secret", "X"), b.replace("missing", "X"));
        // `..` and symlinks cannot escape.
        let dotdot = allowed.path().join("..").join(elsewhere.path().file_name().unwrap()).join("secret.png");
        assert!(load_image(dotdot.to_str().unwrap(), &policy).unwrap_err().to_string().contains("outside"));
        #[cfg(unix)]
        {
            let link = allowed.path().join("link.png");
            std::os::unix::fs::symlink(&secret, &link).unwrap();
            let err = load_image(link.to_str().unwrap(), &policy).unwrap_err().to_string();
            assert!(err.contains("outside"), "{err}");
        }
        // Inside the allowed dir it works, and raw base64 is recognised without touching files.
        let inside = allowed.path().join("ok.png");
        std::fs::write(&inside, png_bytes(3, 3)).unwrap();
        assert!(load_image(inside.to_str().unwrap(), &policy).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode(png_bytes(3, 3));
        assert!(load_image(&b64, &policy).is_ok());
        // Audio follows the same rules: no existence oracle, raw base64 recognised by content.
        let secret_wav = elsewhere.path().join("secret.wav");
        std::fs::write(&secret_wav, wav_bytes()).unwrap();
        let missing_wav = elsewhere.path().join("missing.wav");
        let a = load_audio(secret_wav.to_str().unwrap(), &policy).unwrap_err().to_string();
        let b = load_audio(missing_wav.to_str().unwrap(), &policy).unwrap_err().to_string();
        assert_eq!(a.replace("secret", "X"), b.replace("missing", "X"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(wav_bytes());
        assert_eq!(load_audio(&b64, &policy).unwrap().sample_rate, 16000);
        // URLs to private addresses are refused before connecting.
        let err = load_image("http://127.0.0.1:9/x.png", &policy).unwrap_err().to_string();
        assert!(err.contains("--allow-private-urls"), "{err}");
    }
}
