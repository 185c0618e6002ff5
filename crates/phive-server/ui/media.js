// Pictures and audio clips attached to a message, turned into the content parts the server
// takes: `image_url` (a data: URL, or the URL the user typed) and `input_audio` (base64).

const AUDIO_FORMATS = ["wav", "mp3", "flac", "ogg"];

/** A readable error for a file the page cannot send. */
export class MediaError extends Error {}

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new MediaError(`cannot read ${blob.name || "the file"}`));
    reader.readAsDataURL(blob);
  });
}

/** A picture file as an attachment. The server checks that it decodes. */
export async function imageFromFile(file) {
  if (file.type && !file.type.startsWith("image/")) {
    throw new MediaError(`${file.name} is not a picture (${file.type})`);
  }
  const url = await readAsDataUrl(file);
  return { kind: "image", name: file.name || "pasted picture", url, preview: url };
}

/** A picture given by URL; the server fetches it (the page shows no preview, to load nothing from other hosts). */
export function imageFromUrl(text) {
  let url;
  try {
    url = new URL(text.trim());
  } catch {
    throw new MediaError(`not a URL: ${text}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new MediaError("picture URLs must start with http:// or https://");
  }
  return { kind: "image", name: url.href, url: url.href, preview: null };
}

/** An audio file as an attachment, in one of the encodings the server decodes. */
export async function audioFromFile(file) {
  const extension = (file.name.split(".").pop() || "").toLowerCase();
  const format = AUDIO_FORMATS.find((f) => f === extension || file.type === `audio/${f}`) ??
    (file.type === "audio/mpeg" ? "mp3" : null);
  if (!format) throw new MediaError(`${file.name}: send wav, mp3, flac or ogg audio`);
  const url = await readAsDataUrl(file);
  return { kind: "audio", name: file.name, format, data: url.slice(url.indexOf(",") + 1), preview: url };
}

/** The content part of an attachment. */
export function contentPart(item) {
  return item.kind === "image"
    ? { type: "image_url", image_url: { url: item.url } }
    : { type: "input_audio", input_audio: { data: item.data, format: item.format } };
}

/**
 * Records from the microphone. Browsers record Opus in WebM, which the server does not decode,
 * so the recording is decoded here and sent as 16-bit mono WAV.
 */
export class Recorder {
  async start() {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this.chunks = [];
    this.recorder = new MediaRecorder(stream);
    this.recorder.ondataavailable = (e) => this.chunks.push(e.data);
    this.stopped = new Promise((resolve) => (this.recorder.onstop = resolve));
    this.recorder.start();
    this.stream = stream;
  }

  /** Stops and returns the recording as an attachment. */
  async stop() {
    this.recorder.stop();
    await this.stopped;
    this.stream.getTracks().forEach((t) => t.stop());
    const recorded = new Blob(this.chunks, { type: this.recorder.mimeType });
    const context = new AudioContext();
    try {
      const audio = await context.decodeAudioData(await recorded.arrayBuffer());
      const wav = new Blob([encodeWav(audio)], { type: "audio/wav" });
      const url = await readAsDataUrl(wav);
      const seconds = audio.duration.toFixed(1);
      return { kind: "audio", name: `recording (${seconds} s)`, format: "wav", data: url.slice(url.indexOf(",") + 1), preview: url };
    } finally {
      context.close();
    }
  }
}

/** 16-bit PCM WAV of the channels' average. */
function encodeWav(audio) {
  const frames = audio.length;
  const view = new DataView(new ArrayBuffer(44 + frames * 2));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + frames * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, audio.sampleRate, true);
  view.setUint32(28, audio.sampleRate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, frames * 2, true);
  const channels = Array.from({ length: audio.numberOfChannels }, (_, c) => audio.getChannelData(c));
  for (let i = 0; i < frames; i++) {
    const sample = channels.reduce((sum, ch) => sum + ch[i], 0) / channels.length;
    view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, sample)) * 0x7fff, true);
  }
  return view.buffer;
}
