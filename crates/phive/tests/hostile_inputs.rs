//! Hostile inputs never panic: a deterministic mutation test (stable Rust, not coverage-guided
//! like cargo-fuzz) of everything that parses bytes from the network. Each seed (the fixture
//! images in every decoded format, the audio fixtures, chat requests, media references) is
//! mutated a few hundred times (bit flips, overwritten and duplicated runs, truncations) and fed
//! to the parser, which must return `Ok` or `Err`, never panic or allocate past its budget.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use phive::api::{ChatCompletionRequest, RequestLimits};
use phive::audio::{decode_audio_with_limits, AudioLimits};
use phive::media::{decode_image, MediaPolicy, MediaSource};
use phive::prompt::{place_media_tags, MediaKind};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// xorshift64*: reproducible mutations without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutant of `seed`.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(5) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let (i, n) = (rng.below(len), 1 + rng.below(16));
                for b in data.iter_mut().skip(i).take(n) {
                    *b = [0x00, 0xff, 0x7f, 0x80][rng.below(4)];
                }
            }
            2 => data.truncate(rng.below(len + 1)),
            3 if len > 0 => {
                let i = rng.below(len);
                let run: Vec<u8> = data[i..(i + 1 + rng.below(64)).min(len)].to_vec();
                let at = rng.below(len);
                data.splice(at..at, run);
            }
            _ => {
                let i = rng.below(len + 1);
                data.insert(i, rng.next() as u8);
            }
        }
    }
    data
}

/// Feeds `rounds` mutants of every seed to `parse`, with a per-target stream of mutations.
fn hammer(target: u64, seeds: &[Vec<u8>], rounds: usize, parse: impl Fn(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target);
    for seed in seeds {
        parse(seed);
        for _ in 0..rounds {
            parse(&mutate(seed, &mut rng));
        }
    }
}

/// The fixture images re-encoded in every format the server decodes.
fn image_seeds() -> Vec<Vec<u8>> {
    let source = image::open(fixtures().join("images/tiny_50x50.png")).unwrap();
    let mut seeds = vec![std::fs::read(fixtures().join("images/rgba_300x200.png")).unwrap()];
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::WebP,
        image::ImageFormat::Gif,
        image::ImageFormat::Bmp,
    ] {
        let mut bytes = Cursor::new(Vec::new());
        source.to_rgb8().write_to(&mut bytes, format).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        seeds.push(bytes.into_inner());
    }
    seeds
}

#[test]
fn image_decoders_behind_the_pixel_budget() {
    let policy = MediaPolicy { max_pixels: 1_000_000, ..MediaPolicy::server() };
    let seeds = image_seeds();
    assert!(seeds.iter().all(|s| decode_image(s, &policy).is_ok()), "every seed decodes");
    hammer(1, &seeds, 1500, |bytes| {
        let _ = decode_image(bytes, &policy);
    });
}

#[test]
fn audio_decoders() {
    let limits = AudioLimits { max_seconds: 10.0, ..AudioLimits::default() };
    let seeds: Vec<Vec<u8>> = ["tone_16k", "speechlike_8k"]
        .iter()
        .flat_map(|name| ["wav", "mp3", "flac", "ogg"].map(|ext| format!("audio/{name}.{ext}")))
        .map(|path| std::fs::read(fixtures().join(path)).unwrap())
        .collect();
    hammer(2, &seeds, 300, |bytes| {
        let _ = decode_audio_with_limits(bytes, None, &limits);
    });
}

#[test]
fn media_references_and_base64() {
    let png = std::fs::read(fixtures().join("images/tiny_50x50.png")).unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png);
    let seeds: Vec<Vec<u8>> = [
        format!("data:image/png;base64,{b64}"),
        b64.clone(),
        "https://example.com/a.png?x=1#y".to_string(),
        "file:///tmp/../etc/passwd".to_string(),
        "data:audio/wav;base64,UklGRg==".to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let policy =
        MediaPolicy { local_dirs: Some(vec![fixtures()]), allow_urls: false, ..MediaPolicy::server() };
    hammer(3, &seeds, 1500, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(MediaSource::Inline(data)) = MediaSource::parse_with(&text, &policy) {
            let _ = decode_image(&data, &policy);
        }
    });
}

#[test]
fn chat_requests_and_media_tags() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"high"}},{"type":"text","text":"<|image_1|>\nWhat is this?"}]}],"max_tokens":16,"temperature":0.7,"top_p":0.9,"stop":["\n"],"n":2,"logprobs":true,"top_logprobs":3,"stream":true,"stream_options":{"include_usage":true}}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"UklGRg==","format":"wav"}},{"type":"audio_url","audio_url":{"url":"x.wav"}},{"type":"text","text":"<|audio_1|><|audio_2|> and <|image_3|>"}]},{"role":"assistant","content":null}],"seed":-1,"top_k":-1,"repetition_penalty":1.1}"#,
    ]
    .into_iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let limits = RequestLimits::default();
    hammer(4, &seeds, 8000, |bytes| {
        let Ok(request) = serde_json::from_slice::<ChatCompletionRequest>(bytes) else { return };
        if let Ok(input) = request.into_chat(&limits) {
            let _ = place_media_tags(&input.messages, &[MediaKind::Image, MediaKind::Audio], "\n");
        }
    });
}
