// Starting `phive serve` on a tiny fixture and Debian's chromium, for the browser tests.

import { spawn } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const FIXTURES = join(ROOT, "tests", "fixtures");
export const SCREENSHOTS = join(ROOT, "tests", "ui", "screenshots");
const PHIVE = process.env.PHIVE_BIN || join(ROOT, "target", "release", "phive");

/** The greedy golden answer of a fixture case (`phi3v` or `phi4mm`). */
export function golden(model, name) {
  const goldens = JSON.parse(readFileSync(join(FIXTURES, "goldens", model, "generation.json"), "utf8"));
  return goldens.cases.find((c) => c.name === name);
}

/** Starts `phive serve` on a free port; resolves with its base URL once it listens. */
export function startServer(fixture, extraArgs = []) {
  const args = ["serve", "vision", "-p", "0", "-m", join(FIXTURES, fixture), ...extraArgs];
  const child = spawn(PHIVE, args, { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`phive serve did not start in 60 s:\n${log}`)), 60_000);
    const fail = (e) => {
      clearTimeout(timer);
      child.kill();
      reject(e);
    };
    child.on("exit", (code) => fail(new Error(`phive serve exited with ${code}:\n${log}`)));
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (text) => {
      log += text;
      const match = /listening on (http:\/\/[\d.:]+) /.exec(log);
      if (match) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        resolve({ url: match[1], stop: () => child.kill("SIGTERM"), log: () => log });
      }
    });
  });
}

/** A number from the server's Prometheus text. */
export async function metric(server, name) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no metric ${name}`);
  return Number(line.split(" ")[1]);
}

/** Headless Debian chromium, with a fake microphone for the recording test. */
export function launchBrowser() {
  mkdirSync(SCREENSHOTS, { recursive: true });
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
    ],
  });
}

/**
 * A new page on `server` that records every request it makes, and the page's console errors,
 * so each test can assert that nothing left for another host.
 */
export async function openPage(browser, server, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const requests = [];
  const errors = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${server.url}/`);
  await page.waitForSelector("body[data-ready=true]");
  return { page, context, requests, errors };
}

/** Fails unless every request went to `server` (data: and blob: URLs stay in the page). */
export function assertOnlyServer(requests, server, assert) {
  const origin = new URL(server.url).origin;
  const elsewhere = requests.filter((u) => !u.startsWith("data:") && !u.startsWith("blob:") && new URL(u).origin !== origin);
  assert.deepEqual(elsewhere, [], "the page requested another host");
  assert.ok(requests.length > 0);
}

/** Opens the settings and sets one. */
export async function setting(page, id, value) {
  if (!(await page.isVisible(`#${id}`))) await page.click("#settings summary");
  await page.fill(`#${id}`, value);
}

/** Types a message and sends it with Enter; resolves with the new answer's locator. */
export async function ask(page, text) {
  const before = await page.locator(".message.assistant").count();
  await page.fill("#prompt", text);
  await page.press("#prompt", "Enter");
  const answer = page.locator(".message.assistant").nth(before);
  await answer.waitFor();
  return answer;
}

/** Waits for an answer's figures line (the stream's usage chunk) and returns its numbers. */
export async function figuresOf(answer) {
  const line = answer.locator(".figures");
  await line.waitFor({ timeout: 120_000 });
  const data = await line.evaluate((node) => ({ ...node.dataset, text: node.textContent }));
  return {
    text: data.text,
    promptTokens: Number(data.promptTokens),
    completionTokens: Number(data.completionTokens),
    imageTokens: Number(data.imageTokens),
    audioTokens: Number(data.audioTokens),
  };
}
