// Talking to the phive server: what is loaded, and one streamed chat completion.

/** An error the server answered with (OpenAI's error body), or a failed connection. */
export class ApiError extends Error {
  constructor(message, status = 0, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Headers carrying `key` as a bearer token (servers started with `--api-key`); none if empty. */
function authorization(key) {
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** The loaded model and its limits (`/v1/phive/info`). */
export async function fetchInfo(key) {
  const response = await fetch("/v1/phive/info", { headers: authorization(key) });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** Reads OpenAI's `{"error": {...}}` body into an ApiError with a sentence a person can read. */
async function errorOf(response) {
  let message = `the server answered ${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      message = body.error.message;
      code = body.error.code || null;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  if (response.status === 503) message = `The server is busy: ${message}. Try again in a moment.`;
  if (response.status === 401) {
    message = `This server needs an API key: enter it under Settings → API key (the server said: ${message}).`;
  }
  return new ApiError(message, response.status, code);
}

/**
 * Streams one chat completion. `onText(text)` gets each new piece of the answer; the promise
 * resolves with `{usage, timings, finishReason}` when the stream ends. Aborting `signal` closes
 * the connection, which makes the server cancel the request. `key` is the API key, if any.
 */
export async function streamChat(body, { key, signal, onText }) {
  let response;
  try {
    response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", ...authorization(key) },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`cannot reach the server (${e.message})`);
  }
  if (!response.ok) throw await errorOf(response);

  const result = { usage: null, timings: null, finishReason: null };
  for await (const data of serverSentEvents(response.body)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError(chunk.error.message, 0, chunk.error.code || null);
    const choice = chunk.choices && chunk.choices[0];
    if (choice && choice.delta && choice.delta.content) onText(choice.delta.content);
    if (choice && choice.finish_reason) result.finishReason = choice.finish_reason;
    if (chunk.usage) result.usage = chunk.usage;
    if (chunk.timings) result.timings = chunk.timings;
  }
  return result;
}

/** The `data:` payloads of an SSE body, one event at a time. */
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
    }
  }
}
