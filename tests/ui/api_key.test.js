// The chat page on a server started with --api-key: without a key it says so and points at the
// API key field; with the key it connects and chats, sending the key on every /v1 call.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { ask, assertOnlyServer, figuresOf, golden, launchBrowser, startServer } from "./harness.js";

const KEY = "ui-test-key";
let server;
let browser;

before(async () => {
  server = await startServer("phi3v-tiny", ["--api-key", KEY]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.stop();
});

test("without a key the page asks for it; with it the page connects and chats", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(r));
  await page.goto(`${server.url}/`);

  // No key: the 401 of /v1/phive/info becomes a notice naming the field, which gets the focus.
  const notice = page.locator("#notice");
  await notice.waitFor();
  assert.match(await notice.textContent(), /needs an API key: enter it under Settings → API key/);
  assert.equal(await page.textContent("#model"), "API key needed");
  assert.equal(await page.evaluate(() => document.activeElement.id), "api-key");
  assert.equal(await page.getAttribute("body", "data-ready"), null);

  // A wrong key is refused with the server's reason.
  await page.fill("#api-key", "wrong");
  await page.press("#api-key", "Tab");
  await page.waitForFunction(() => /incorrect API key/.test(document.getElementById("notice").textContent));
  assert.equal(await page.getAttribute("body", "data-ready"), null);

  // The right key: the page connects, the notice goes, and a message is answered.
  await page.fill("#api-key", KEY);
  await page.press("#api-key", "Tab");
  await page.waitForSelector("body[data-ready=true]");
  assert.equal(await notice.isVisible(), false);
  const expected = golden("phi3v", "text");
  await page.fill("#max-tokens", String(expected.greedy_tokens.length));
  const answer = await ask(page, expected.messages[0].content);
  await figuresOf(answer);
  assert.equal((await answer.locator(".body").textContent()).trim(), expected.greedy_text);
  const calls = requests.filter((r) => new URL(r.url()).pathname.startsWith("/v1/"));
  const authorized = calls.filter((r) => r.headers().authorization === `Bearer ${KEY}`).map((r) => new URL(r.url()).pathname);
  assert.deepEqual(authorized, ["/v1/phive/info", "/v1/chat/completions"]);

  // The key lasts as long as the tab (session storage): a reload connects without typing it.
  await page.reload();
  await page.waitForSelector("body[data-ready=true]");
  assertOnlyServer(requests.map((r) => r.url()), server, assert);
  await context.close();
});

test("a key that stops working turns the next message into the 401 message", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server.url}/`);
  await page.fill("#api-key", KEY);
  await page.press("#api-key", "Tab");
  await page.waitForSelector("body[data-ready=true]");
  await page.fill("#api-key", "revoked");
  await page.fill("#prompt", "Hello");
  await page.press("#prompt", "Enter");
  const error = page.locator(".message.error");
  await error.waitFor();
  assert.match(await error.textContent(), /needs an API key: enter it under Settings → API key .*incorrect API key/);
  // The message goes back to the composer, and the key field gets the focus.
  assert.equal(await page.inputValue("#prompt"), "Hello");
  assert.equal(await page.evaluate(() => document.activeElement.id), "api-key");
  await context.close();
});
