// The chat page on the Phi-4-multimodal fixture: audio from a file and from the microphone.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { FIXTURES, ask, assertOnlyServer, figuresOf, golden, launchBrowser, openPage, setting, startServer } from "./harness.js";

let server;
let browser;

before(async () => {
  server = await startServer("phi4mm-tiny");
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.stop();
});

test("an audio file is sent as input_audio and answered", async () => {
  const { page, context, requests, errors } = await openPage(browser, server);
  const expected = golden("phi4mm", "one_audio");
  assert.equal(await page.isVisible("#record"), true, "Phi-4 shows the audio controls");
  await setting(page, "max-tokens", String(expected.greedy_tokens.length));
  await page.setInputFiles("#audio-file", join(FIXTURES, "audio", "tone_16k.wav"));
  await page.locator("#attachments audio").waitFor();
  const answer = await ask(page, expected.messages[0].content.replace("<|audio_1|>", ""));
  const figures = await figuresOf(answer);
  assert.equal((await answer.locator(".body").textContent()).trim(), expected.greedy_text);
  assert.equal(figures.audioTokens, expected.num_audio_tokens[0]);
  assert.equal(figures.promptTokens, expected.num_tokens);
  assert.deepEqual(errors, []);
  assertOnlyServer(requests, server, assert);
  await context.close();
});

test("a recording from the microphone is sent as WAV", async () => {
  const { page, context, requests } = await openPage(browser, server);
  await setting(page, "max-tokens", "4");
  await page.click("#record");
  await page.locator("#record[aria-pressed=true]").waitFor();
  await page.waitForTimeout(1200);
  await page.click("#record");
  const clip = page.locator("#attachments .clip");
  await clip.waitFor();
  assert.match(await clip.textContent(), /recording \([\d.]+ s\)/);
  const answer = await ask(page, "What do you hear?");
  const figures = await figuresOf(answer);
  assert.ok(figures.audioTokens > 0, figures.text);
  assertOnlyServer(requests, server, assert);
  await context.close();
});
