// The chat page on the Phi-3.5-vision fixture: streamed answers, pictures, stop, errors,
// safe Markdown, screenshots, and no request to any other host.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import {
  FIXTURES,
  SCREENSHOTS,
  ask,
  assertOnlyServer,
  figuresOf,
  golden,
  launchBrowser,
  metric,
  openPage,
  setting,
  startServer,
} from "./harness.js";

let server;
let browser;

before(async () => {
  server = await startServer("phi3v-tiny");
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.stop();
});

test("the page and its files come with a strict content security policy", async () => {
  for (const path of ["/", "/ui", "/ui/app.js", "/ui/style.css"]) {
    const response = await fetch(`${server.url}${path}`);
    assert.equal(response.status, 200, path);
    const csp = response.headers.get("content-security-policy");
    assert.match(csp, /default-src 'self'/, path);
    assert.match(csp, /script-src 'self';/, path);
    assert.equal(response.headers.get("x-content-type-options"), "nosniff");
  }
  assert.match((await fetch(`${server.url}/`)).headers.get("content-type"), /^text\/html/);
  assert.match((await fetch(`${server.url}/ui/app.js`)).headers.get("content-type"), /^text\/javascript/);
  const missing = await fetch(`${server.url}/ui/nope.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, "unknown_url");
});

test("a text message streams the model's answer, with its figures", async () => {
  const { page, context, requests, errors } = await openPage(browser, server);
  const expected = golden("phi3v", "text");
  // Phi-3.5 takes no audio: its controls are hidden.
  assert.equal(await page.isVisible("#record"), false);
  assert.equal(await page.isVisible("#audio-file + *"), false);
  // Idle: Send shows, Stop and the URL box do not.
  assert.deepEqual(await Promise.all(["#send", "#stop", "#url-row"].map((s) => page.isVisible(s))), [true, false, false]);
  await setting(page, "max-tokens", String(expected.greedy_tokens.length));
  const answer = await ask(page, expected.messages[0].content);
  const figures = await figuresOf(answer);
  assert.equal((await answer.locator(".body").textContent()).trim(), expected.greedy_text);
  assert.equal(figures.promptTokens, expected.num_tokens);
  assert.equal(figures.completionTokens, expected.greedy_tokens.length);
  assert.equal(figures.imageTokens, 0);
  assert.match(figures.text, /first token [\d.]+ s · [\d.]+ tok\/s/);

  // A second turn sends the first one as history: the answer follows the conversation.
  const second = await ask(page, "And of Italy?");
  await figuresOf(second);
  assert.equal(await page.locator(".message.user").count(), 2);
  assert.deepEqual(errors, []);
  assertOnlyServer(requests, server, assert);
  await context.close();
});

test("an attached picture is sent with the message and counted as image tokens", async () => {
  const { page, context, requests } = await openPage(browser, server);
  const expected = golden("phi3v", "one_image");
  await setting(page, "max-tokens", String(expected.greedy_tokens.length));
  await page.setInputFiles("#image-file", join(FIXTURES, "images", expected.images[0]));
  await page.locator("#attachments img").waitFor();
  const answer = await ask(page, "What is in this picture?");
  const figures = await figuresOf(answer);
  assert.equal((await answer.locator(".body").textContent()).trim(), expected.greedy_text);
  assert.equal(figures.imageTokens, expected.num_image_tokens[0]);
  assert.equal(figures.promptTokens, expected.num_tokens);
  assert.equal(await page.locator(".message.user img").count(), 1, "the message shows its thumbnail");
  assert.equal(await page.locator("#attachments li").count(), 0, "the composer is cleared");

  await page.screenshot({ path: join(SCREENSHOTS, "desktop.png"), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(SCREENSHOTS, "phone.png"), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone screen`);
  assertOnlyServer(requests, server, assert);
  await context.close();
});

test("pictures arrive by drag and drop and by paste, and can be removed before sending", async () => {
  const { page, context } = await openPage(browser, server);
  const png = readFileSync(join(FIXTURES, "images", "tiny_50x50.png")).toString("base64");
  await page.evaluate((data) => {
    const file = (name) => new File([Uint8Array.from(atob(data), (c) => c.charCodeAt(0))], name, { type: "image/png" });
    const dropped = new DataTransfer();
    dropped.items.add(file("dropped.png"));
    document.querySelector("#messages").dispatchEvent(new DragEvent("drop", { dataTransfer: dropped, bubbles: true }));
    const pasted = new DataTransfer();
    pasted.items.add(file("pasted.png"));
    document.querySelector("#prompt").dispatchEvent(new ClipboardEvent("paste", { clipboardData: pasted, bubbles: true }));
  }, png);
  await page.locator("#attachments img").nth(1).waitFor();
  assert.deepEqual(await page.locator("#attachments img").evaluateAll((imgs) => imgs.map((i) => i.alt)), ["dropped.png", "pasted.png"]);
  await page.click("#attachments button[aria-label='Remove dropped.png']");
  assert.deepEqual(await page.locator("#attachments img").evaluateAll((imgs) => imgs.map((i) => i.alt)), ["pasted.png"]);
  await context.close();
});

test("stop ends the stream and the server cancels the request", async () => {
  const { page, context, requests } = await openPage(browser, server);
  const cancelled = await metric(server, "phive_requests_cancelled_total");
  await setting(page, "max-tokens", "30000");
  const answer = await ask(page, "Write a very long story about the sea.");
  // Text arrives while the stream is still open: the answer is streamed, not delivered whole.
  await answer.locator(".body").filter({ hasText: /\S/ }).waitFor();
  assert.equal(await page.isVisible("#stop"), true);
  await page.click("#stop");
  await answer.locator(".status", { hasText: "stopped" }).waitFor();
  assert.equal(await answer.locator(".figures").count(), 0);
  assert.equal(await page.isVisible("#send"), true);
  let now = cancelled;
  for (let i = 0; i < 50 && now === cancelled; i++) {
    await new Promise((r) => setTimeout(r, 100));
    now = await metric(server, "phive_requests_cancelled_total");
  }
  assert.equal(now, cancelled + 1, "phive_requests_cancelled_total rises by one");
  assertOnlyServer(requests, server, assert);
  await context.close();
});

test("a corrupt picture gets the server's readable error, and the message returns to the composer", async () => {
  const { page, context } = await openPage(browser, server);
  await page.setInputFiles("#image-file", {
    name: "broken.png",
    mimeType: "image/png",
    buffer: Buffer.from("\x89PNG\r\n\x1a\n this is not a picture"),
  });
  await page.locator("#attachments img").waitFor();
  await page.fill("#prompt", "What is this?");
  await page.press("#prompt", "Enter");
  const error = page.locator(".message.error[role=alert]");
  await error.waitFor();
  assert.match(await error.textContent(), /image/i);
  assert.equal(await page.locator(".message.user").count(), 0);
  assert.equal(await page.inputValue("#prompt"), "What is this?");
  assert.equal(await page.locator("#attachments li").count(), 1);
  await context.close();
});

test("invalid settings come back as the server's 400 message", async () => {
  const { page, context } = await openPage(browser, server);
  await setting(page, "temperature", "7");
  await page.fill("#prompt", "Hello");
  await page.click("#send");
  const error = page.locator(".message.error");
  await error.waitFor();
  assert.match(await error.textContent(), /temperature/);
  await context.close();
});

test("Markdown from the model becomes DOM text, never HTML", async () => {
  const { page, context } = await openPage(browser, server);
  const result = await page.evaluate(async () => {
    const { renderMarkdown } = await import("/ui/markdown.js");
    const box = document.createElement("div");
    renderMarkdown(
      box,
      "# Title\nSome **bold** and `code` <img src=x onerror=alert(1)>\n\n- one\n- two\n\n" +
        "```js\nlet a = '<script>alert(1)</script>';\n```\n[ok](https://example.com) [bad](javascript:alert(1))",
    );
    return {
      html: box.innerHTML,
      text: box.textContent,
      tags: [...box.querySelectorAll("*")].map((n) => n.tagName.toLowerCase()),
      links: [...box.querySelectorAll("a")].map((a) => a.href),
    };
  });
  assert.ok(!result.tags.includes("img") && !result.tags.includes("script"), result.html);
  assert.ok(result.text.includes("<img src=x onerror=alert(1)>"));
  assert.ok(result.text.includes("let a = '<script>alert(1)</script>';"));
  for (const tag of ["h3", "strong", "code", "ul", "li", "pre", "a"]) assert.ok(result.tags.includes(tag), tag);
  assert.deepEqual(result.links, ["https://example.com/"]);
  await context.close();
});

test("--no-ui serves the API without the page", async () => {
  const bare = await startServer("phi3v-tiny", ["--no-ui"]);
  try {
    const response = await fetch(`${bare.url}/`);
    assert.equal(response.status, 404);
    assert.equal((await response.json()).error.type, "invalid_request_error");
    assert.equal((await fetch(`${bare.url}/v1/models`)).status, 200);
  } finally {
    bare.stop();
  }
});
