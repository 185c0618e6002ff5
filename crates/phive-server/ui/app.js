// The chat page: the conversation, the composer and its attachments, settings, and one
// streamed answer at a time. Talks only to the server that served it.

import { ApiError, fetchInfo, streamChat } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { MediaError, Recorder, audioFromFile, contentPart, imageFromFile, imageFromUrl } from "./media.js";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["system", "temperature", "top-p", "max-tokens", "seed"];
/** The API key is a credential: session storage keeps it for this tab only, not on disk for good. */
const KEY_STORAGE = "phive.api-key";

const state = {
  info: null,
  /** The conversation in OpenAI's shape (system prompt excluded: it comes from the settings). */
  history: [],
  /** Attachments of the message being written. */
  attachments: [],
  /** Aborts the answer being streamed. */
  controller: null,
  recorder: null,
};

function el(tag, className = "", children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

function notice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

// ---- settings -------------------------------------------------------------------------------

function loadSettings() {
  for (const id of SETTINGS) {
    const saved = localStorage.getItem(`phive.${id}`);
    if (saved !== null) $(id).value = saved;
    $(id).addEventListener("change", () => localStorage.setItem(`phive.${id}`, $(id).value));
  }
}

function loadKey() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, apiKey()));
  // A page that could not connect (401) tries again with the key just entered.
  $("api-key").addEventListener("change", () => state.info || connect());
}

function apiKey() {
  return $("api-key").value.trim();
}

/** Points the user at the API key field after a 401. */
function askForKey() {
  $("settings").open = true;
  $("api-key").focus();
}

/** Sampling fields of the request; empty boxes are left out so the server's defaults apply. */
function samplingFields() {
  const number = (id) => ($(id).value.trim() === "" ? undefined : Number($(id).value));
  return {
    temperature: number("temperature"),
    top_p: number("top-p"),
    max_tokens: number("max-tokens"),
    seed: number("seed"),
  };
}

// ---- attachments ----------------------------------------------------------------------------

async function attach(makeItems) {
  try {
    const items = await makeItems();
    state.attachments.push(...items);
    notice("");
  } catch (e) {
    notice(e instanceof MediaError ? e.message : `cannot attach: ${e.message}`);
  }
  showAttachments();
}

function attachFiles(files) {
  const audio = state.info && state.info.audio;
  return attach(() =>
    Promise.all(
      [...files].map((file) => {
        if (file.type.startsWith("image/")) return imageFromFile(file);
        if (audio) return audioFromFile(file);
        throw new MediaError(`${file.name}: this model takes pictures only`);
      }),
    ),
  );
}

/** A thumbnail, audio player or URL chip for an attachment. */
function mediaView(item) {
  if (item.kind === "audio") {
    const player = el("audio");
    player.controls = true;
    player.src = item.preview;
    return el("span", "clip", [el("span", "name", [item.name]), player]);
  }
  if (!item.preview) return el("span", "url-chip", [item.name]);
  const img = el("img");
  img.src = item.preview;
  img.alt = item.name;
  return img;
}

function showAttachments() {
  $("attachments").replaceChildren(
    ...state.attachments.map((item, index) => {
      const remove = el("button", "remove", ["×"]);
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${item.name}`);
      remove.addEventListener("click", () => {
        state.attachments.splice(index, 1);
        showAttachments();
      });
      return el("li", item.kind, [mediaView(item), remove]);
    }),
  );
}

async function toggleRecording() {
  const button = $("record");
  if (!state.recorder) {
    try {
      state.recorder = new Recorder();
      await state.recorder.start();
      button.setAttribute("aria-pressed", "true");
      button.textContent = "Stop recording";
    } catch (e) {
      state.recorder = null;
      notice(`cannot record: ${e.message}`);
    }
    return;
  }
  const recorder = state.recorder;
  state.recorder = null;
  button.setAttribute("aria-pressed", "false");
  button.textContent = "Record";
  await attach(async () => [await recorder.stop()]);
}

// ---- the conversation -----------------------------------------------------------------------

function scrollToEnd() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function addMessage(role, children) {
  $("empty").hidden = true;
  const message = el("article", `message ${role}`, children);
  message.setAttribute("aria-label", role === "user" ? "You" : role === "assistant" ? "Answer" : "Error");
  $("messages").append(message);
  scrollToEnd();
  return message;
}

/** The per-answer figures, from the stream's usage chunk. */
function figures(usage, timings) {
  const t = timings || {};
  const parts = [`${usage.prompt_tokens} prompt tokens`];
  if (t.image_tokens || t.audio_tokens) parts[0] += ` (${t.image_tokens || 0} image, ${t.audio_tokens || 0} audio)`;
  parts.push(`${usage.completion_tokens} generated`);
  if (t.time_to_first_token_ms !== undefined) parts.push(`first token ${(t.time_to_first_token_ms / 1000).toFixed(2)} s`);
  parts.push(`${usage.avg_compl_tok_per_sec.toFixed(1)} tok/s`);
  const line = el("p", "figures", [parts.join(" · ")]);
  Object.assign(line.dataset, {
    promptTokens: usage.prompt_tokens,
    completionTokens: usage.completion_tokens,
    imageTokens: t.image_tokens || 0,
    audioTokens: t.audio_tokens || 0,
  });
  return line;
}

function imagesIn(messages) {
  return messages.flatMap((m) => (Array.isArray(m.content) ? m.content : [])).filter((p) => p.type === "image_url").length;
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

async function send() {
  if (state.controller) return;
  const text = $("prompt").value.trim();
  const attachments = state.attachments;
  if (!text && attachments.length === 0) return;
  const content = [...attachments.map(contentPart)];
  if (text) content.push({ type: "text", text });
  const userTurn = { role: "user", content };
  const max = state.info ? state.info.max_images : Infinity;
  if (imagesIn([...state.history, userTurn]) > max) {
    notice(`This server takes at most ${max} pictures per conversation; start a new chat to send more.`);
    return;
  }
  notice("");
  // This conversation (New chat during the answer starts another one; this one is let go).
  const history = state.history;
  history.push(userTurn);
  $("prompt").value = "";
  state.attachments = [];
  showAttachments();

  const userView = addMessage("user", [el("div", "media", attachments.map(mediaView)), el("p", "text", [text])]);
  const body = el("div", "body");
  const answer = addMessage("assistant", [body]);
  answer.classList.add("streaming");
  let reply = "";
  let frame = 0;
  const render = () => {
    frame = 0;
    renderMarkdown(body, reply);
    scrollToEnd();
  };

  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...history] : [...history];
  state.controller = new AbortController();
  setBusy(true);
  let needsKey = false;
  try {
    const result = await streamChat(
      { model: state.info ? state.info.model : "default", messages, ...samplingFields() },
      {
        key: apiKey(),
        signal: state.controller.signal,
        onText: (piece) => {
          reply += piece;
          frame ||= requestAnimationFrame(render);
        },
      },
    );
    render();
    history.push({ role: "assistant", content: reply });
    if (result.usage) answer.append(figures(result.usage, result.timings));
    if (result.finishReason === "length") answer.append(el("p", "status", ["(stopped at the token limit)"]));
  } catch (e) {
    cancelAnimationFrame(frame);
    if (e.name === "AbortError") {
      render();
      answer.append(el("p", "status", ["(stopped)"]));
      // The partial answer stays in the conversation; an empty one leaves the question unanswered.
      if (reply) history.push({ role: "assistant", content: reply });
      else history.pop();
    } else {
      // Nothing was answered: the turn leaves the conversation and goes back to the composer.
      history.pop();
      userView.remove();
      answer.remove();
      $("prompt").value = text;
      state.attachments = attachments;
      showAttachments();
      const message = e instanceof ApiError ? e.message : `unexpected failure: ${e.message}`;
      needsKey = e instanceof ApiError && e.status === 401;
      const error = addMessage("error", [el("p", "", [message])]);
      error.setAttribute("role", "alert");
    }
  } finally {
    answer.classList.remove("streaming");
    state.controller = null;
    setBusy(false);
    $("prompt").focus();
  }
  if (needsKey) askForKey();
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  state.attachments = [];
  showAttachments();
  notice("");
  $("messages").replaceChildren($("empty"));
  $("empty").hidden = false;
  $("prompt").focus();
}

// ---- wiring ---------------------------------------------------------------------------------

function wire() {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("new-chat").addEventListener("click", newChat);
  $("image-file").addEventListener("change", (e) => {
    attachFiles(e.target.files);
    e.target.value = "";
  });
  $("audio-file").addEventListener("change", (e) => {
    attach(() => Promise.all([...e.target.files].map(audioFromFile)));
    e.target.value = "";
  });
  $("image-url").addEventListener("click", () => {
    $("url-row").hidden = !$("url-row").hidden;
    if (!$("url-row").hidden) $("url-input").focus();
  });
  const addUrl = () => {
    const text = $("url-input").value;
    attach(async () => [imageFromUrl(text)]).then(() => {
      if (!$("notice").textContent) {
        $("url-input").value = "";
        $("url-row").hidden = true;
      }
    });
  };
  $("url-add").addEventListener("click", addUrl);
  $("url-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      addUrl();
    }
  });
  $("record").addEventListener("click", toggleRecording);
  $("prompt").addEventListener("paste", (e) => {
    if (e.clipboardData.files.length) {
      e.preventDefault();
      attachFiles(e.clipboardData.files);
    }
  });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) attachFiles(e.dataTransfer.files);
  });
}

/** Reads what the server has loaded; a 401 asks for the API key instead. */
async function connect() {
  try {
    state.info = await fetchInfo(apiKey());
    $("model").textContent = `${state.info.model} · ${state.info.audio ? "pictures and audio" : "pictures"}`;
    document.body.classList.toggle("audio", state.info.audio);
    document.body.dataset.ready = "true";
    notice("");
    $("prompt").focus();
  } catch (e) {
    const unauthorized = e instanceof ApiError && e.status === 401;
    $("model").textContent = unauthorized ? "API key needed" : "not connected";
    notice(unauthorized ? e.message : `cannot read the server's model: ${e.message}`);
    if (unauthorized) askForKey();
    else $("prompt").focus();
  }
}

function start() {
  loadSettings();
  loadKey();
  wire();
  connect();
}

start();
