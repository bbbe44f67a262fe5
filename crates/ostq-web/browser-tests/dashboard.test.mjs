// The dashboard in a real browser: Debian's chromium driven by playwright-core (which never
// downloads a browser), against a private redis-server, real `ostq worker` processes and real
// `ostq dashboard` processes. Run by scripts/test-browser, which builds the binary and sets
// OSTQ_BIN; SCREENSHOTS_DIR (default ./screenshots) receives a PNG of each page.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const OSTQ = process.env.OSTQ_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.SCREENSHOTS_DIR || path.join(import.meta.dirname, "screenshots");
const TOKEN = "browser-test-token-0123456789";

assert.ok(OSTQ, "OSTQ_BIN must name the ostq binary (scripts/test-browser sets it)");

const children = [];
let tmp;
let redisUrl;
let browser;
let open; // the dashboard without a token, on loopback
let guarded; // with a token
let readOnly; // read-only
let videosWorker;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a truthy value (returned), or fails after `ms`. */
async function eventually(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
      last = value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) assert.fail(`${what}: still not true after ${ms} ms (last: ${last})`);
    await sleep(100);
  }
}

function ostq(args, options = {}) {
  return execFileSync(OSTQ, ["--url", redisUrl, ...args], {
    encoding: "utf8",
    env: { ...process.env, OSTQ_URL: "", REDIS_URL: "", OSTQ_DASHBOARD_TOKEN: "" },
    ...options,
  });
}

function counts(queue) {
  const doc = JSON.parse(ostq(["stats", queue, "--json", "--sample", "0"]));
  return doc.queues[queue];
}

function startProcess(args, env = {}) {
  const child = spawn(OSTQ, ["--url", redisUrl, ...args], {
    env: { ...process.env, OSTQ_URL: "", REDIS_URL: "", OSTQ_DASHBOARD_TOKEN: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.output = "";
  child.stdout.on("data", (d) => (child.output += d));
  child.stderr.on("data", (d) => (child.output += d));
  children.push(child);
  return child;
}

async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await Promise.race([exited, sleep(5000)]);
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
}

async function startDashboard(args = [], env = {}) {
  const port = await freePort();
  const child = startProcess(["dashboard", "--listen", `127.0.0.1:${port}`, ...args], env);
  const url = `http://127.0.0.1:${port}`;
  await eventually(`the dashboard on ${url} answers (${child.output})`, async () => {
    const response = await fetch(url + "/assets/app.css");
    return response.ok;
  });
  return { url, child };
}

/** A PNG of what a 1280×800 window shows (small enough for docs/images/). */
async function screenshot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: false });
}

/** A page that fails the test on any dialog (an XSS payload's alert) or script error. */
async function newPage(context) {
  const page = await context.newPage();
  page.on("dialog", (dialog) => {
    page.dialogSeen = dialog.message();
    dialog.dismiss();
  });
  page.on("pageerror", (err) => (page.scriptError = String(err)));
  return page;
}

before(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), "ostq-browser-"));
  const redisPort = await freePort();
  const redis = spawn(
    "redis-server",
    ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
    { stdio: "ignore" }
  );
  children.push(redis);
  redisUrl = `redis://127.0.0.1:${redisPort}`;
  await eventually("redis-server answers PING", () => {
    try {
      return execFileSync("redis-cli", ["-p", String(redisPort), "ping"], { encoding: "utf8" }).includes("PONG");
    } catch {
      return false;
    }
  });

  // videos: 120 jobs for paging (and a live worker later). emails: jobs that die with errors,
  // two of them hostile.
  ostq(["push", "videos", ...Array.from({ length: 120 }, (_, i) => `v-${i}`)]);
  // emails keeps its events in its stream, so job pages list the error of every attempt.
  ostq(["events", "emails", "--enable", "-n", "0"], { stdio: "ignore" });
  ostq([
    "push",
    "emails",
    "ok-1",
    "mail-timeout-1",
    "mail-timeout-2",
    "mail-refused-1",
    "<script>window.__xss = 1; alert(1)</script>",
    '"><img src=x onerror="window.__xss = 2; alert(2)">',
    "--max-attempts",
    "1",
  ]);
  ostq(
    [
      "worker",
      "--queue",
      "emails",
      "--burst",
      "--",
      "sh",
      "-c",
      'case "$1" in ok*) exit 0;; *timeout*) echo "timed out after 5s" >&2; exit 1;; *) echo "refused: $1" >&2; exit 1;; esac',
      "_",
      "{}",
    ],
    { stdio: "ignore" }
  );
  assert.equal(counts("emails").dead, 5);

  open = await startDashboard();
  guarded = await startDashboard([], { OSTQ_DASHBOARD_TOKEN: TOKEN });
  readOnly = await startDashboard(["--read-only"]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const child of children.reverse()) await stop(child);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test("the overview shows every queue, Redis and counts that change while a worker runs", async () => {
  const context = await browser.newContext({ colorScheme: "light" });
  const page = await newPage(context);
  const external = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(open.url)) external.push(request.url());
  });
  await page.goto(open.url + "/");
  const videos = page.locator('#queues tr[data-queue="videos"]');
  await videos.waitFor();
  assert.equal((await videos.locator('[data-field="pending"]').textContent()).trim(), "120");
  assert.equal(
    (await page.locator('#queues tr[data-queue="emails"] [data-field="dead"]').textContent()).trim(),
    "5"
  );
  assert.match(await page.locator("#redis-version").textContent(), /^\d+\.\d+/);
  assert.match(await page.locator("#redis-policy").textContent(), /noeviction/);
  // No worker serves videos: the recommended rules raise a banner.
  await page.getByText("queue 'videos' has 120 pending jobs and no live worker").waitFor();

  // A live worker: the counts and the live chart move without reloading the page.
  await page.selectOption("#live-interval", "1000");
  videosWorker = startProcess(["worker", "--queue", "videos", "--", "sleep", "0.2"]);
  await eventually("the pending count falls on the open page", async () => {
    const text = (await videos.locator('[data-field="pending"]').textContent()).trim();
    return Number(text.replace(/,/g, "")) < 120;
  });
  await eventually("the live chart draws points", async () => {
    const points = await page.locator("#live-chart polyline.processed").getAttribute("points");
    return points && points.trim().split(" ").length >= 2;
  });
  await eventually("the workers column counts the live worker", async () => {
    return (await videos.locator('[data-field="workers"]').textContent()).trim() === "1";
  });
  // The workers card moves with the table (it stayed at the page's first figure).
  await eventually("the workers card counts the live worker", async () => {
    return (await page.locator("#workers-live").textContent()).trim() === "1";
  });
  await screenshot(page, "overview");
  assert.deepEqual(external, [], "no request outside the dashboard's origin");
  assert.equal(page.scriptError, undefined);
  await context.close();
});

test("pause stops the live worker taking jobs, resume lets it go on", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(open.url + "/queues/videos");
  await page.click("#pause-queue");
  await page.locator("#paused-badge").waitFor();
  assert.match(await page.locator("#notice").textContent(), /Paused/);
  await sleep(700); // the jobs it holds finish
  const before = counts("videos").pending;
  await sleep(2000);
  assert.equal(counts("videos").pending, before, "a paused queue gives the worker nothing");
  await page.click("#resume-queue");
  await eventually("the worker takes jobs again", () => counts("videos").pending < before);
  await stop(videosWorker);
  await context.close();
});

test("a queue pages without repeating a job, and jobs are found by id", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(open.url + "/");
  await page.click('#queues tr[data-queue="videos"] a >> nth=0');
  await page.locator("#state-tabs").waitFor();
  const pending = counts("videos").pending;
  assert.match(await page.locator('#state-tabs a[data-state="pending"]').textContent(), new RegExp(`${pending}`));
  const first = await page.locator("#jobs tr[data-id]").evaluateAll((rows) => rows.map((r) => r.dataset.id));
  assert.equal(first.length, 50);
  await page.click("#next-page");
  await page.locator("#first-page").waitFor();
  const second = await page.locator("#jobs tr[data-id]").evaluateAll((rows) => rows.map((r) => r.dataset.id));
  assert.ok(second.length > 0);
  const all = [...first, ...second];
  assert.equal(new Set(all).size, all.length, "no job on two pages");
  await screenshot(page, "queue-pending");

  // Find by id: the job page.
  const id = second[0];
  await page.fill("#find-id", id);
  await page.click("form.find button");
  await page.locator("#job-id").waitFor();
  assert.equal(await page.locator("#job-id").textContent(), id);
  assert.match(await page.locator("#job-payload").textContent(), /^v-\d+$/);
  await context.close();
});

test("dead jobs are filtered by error text and retried by filter with a count", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(open.url + "/queues/emails?state=dead");
  assert.equal(await page.locator("#jobs tr[data-id]").count(), 5);
  await page.fill("#filter-error", "timed out");
  await page.click("#filter-apply");
  await page.locator("#scan-status").waitFor();
  assert.match(await page.locator("#scan-status").textContent(), /Examined 5 dead jobs, 2 matches/);
  const matching = await page.locator("#jobs tr[data-id]").evaluateAll((rows) => rows.map((r) => r.dataset.id));
  assert.equal(matching.length, 2);
  await screenshot(page, "queue-dead-filtered");

  // A dead job found by id shows its error and payload.
  await page.fill("#find-id", matching[0]);
  await page.click("form.find button");
  await page.locator("#job-error").waitFor();
  assert.match(await page.locator("#job-error").textContent(), /timed out after 5s/);
  const attempt = page.locator('#attempt-errors tr[data-attempt="1"]');
  assert.match(await attempt.textContent(), /failed, dead.*timed out after 5s/s);
  assert.match(await page.locator("#job-payload").textContent(), /mail-timeout-\d/);
  await screenshot(page, "job");
  await page.goBack();

  await page.click("#retry-filter");
  await page.locator("#confirm-text").waitFor();
  assert.equal((await page.locator("h1").textContent()).trim(), "Retry 2 jobs?");
  await screenshot(page, "confirm");
  assert.equal(counts("emails").dead, 5, "nothing moved before confirming");
  await page.click("#confirm-button");
  await page.locator("#notice").waitFor();
  assert.match(await page.locator("#notice").textContent(), /Sent 2 jobs to run now/);
  const after = counts("emails");
  assert.equal(after.dead, 3);
  assert.equal(after.pending, 2);
  const pendingPayloads = JSON.parse(ostq(["jobs", "emails", "--state", "pending", "--json"])).map((j) => j.payload);
  assert.deepEqual(pendingPayloads.sort(), ["mail-timeout-1", "mail-timeout-2"]);
  await context.close();
});

test("a selection is deleted after a confirmation that says how many", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(open.url + "/queues/emails?state=dead&error=refused");
  const rows = page.locator("#jobs tr[data-id]");
  assert.equal(await rows.count(), 3);
  const row = rows.filter({ hasText: "mail-refused-1" });
  const id = await row.getAttribute("data-id");
  await row.locator('input[name="id"]').check();
  await page.click("#delete-selected");
  await page.locator("#confirm-text").waitFor();
  assert.equal((await page.locator("h1").textContent()).trim(), "Delete 1 job?");
  await page.click("#confirm-button");
  await page.locator("#notice").waitFor();
  assert.match(await page.locator("#notice").textContent(), /Deleted 1 job/);
  assert.equal(counts("emails").dead, 2);
  const left = JSON.parse(ostq(["jobs", "emails", "--state", "dead", "--json"])).map((j) => j.id);
  assert.ok(!left.includes(id), "the selected job is gone");
  await context.close();
});

test("hostile payloads and errors are shown as text and run nothing", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(open.url + "/queues/emails?state=dead");
  const cells = await page.locator("#jobs td.payload").allTextContents();
  assert.ok(cells.some((c) => c.includes("<script>window.__xss = 1")), cells.join("|"));
  assert.ok(cells.some((c) => c.includes('"><img src=x onerror=')), cells.join("|"));
  const errors = await page.locator("#jobs td.error").allTextContents();
  assert.ok(errors.some((e) => e.includes("refused: <script>")), errors.join("|"));
  for (const row of await page.locator("#jobs tr[data-id] a").all()) {
    const job = await newPage(context);
    await job.goto(new URL(await row.getAttribute("href"), open.url).toString());
    await job.locator("#job-payload").waitFor();
    assert.equal(await job.evaluate(() => window.__xss), undefined);
    assert.equal(job.dialogSeen, undefined);
    await job.close();
  }
  assert.equal(await page.locator("#jobs img").count(), 0, "no element made from a payload");
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(page.dialogSeen, undefined, "no alert ran");
  await context.close();
});

test("a cross-site POST is refused and changes nothing", async () => {
  // The attacker's page lives on another site (localhost, not 127.0.0.1) and posts a form.
  const target = `${open.url}/queues/emails/pause`;
  const attacker = createServer((req, res) => {
    res.setHeader("content-type", "text/html");
    res.end(
      `<form id="f" method="post" action="${target}"><input name="csrf" value="guess"></form>` +
        `<script>document.getElementById("f").submit()</script>`
    );
  });
  await new Promise((r) => attacker.listen(0, "127.0.0.1", r));
  const context = await browser.newContext();
  try {
    const page = await newPage(context);
    await page.goto(open.url + "/"); // a session with the dashboard, as a victim would have
    const response = page.waitForResponse((r) => r.url() === target);
    await page.goto(`http://localhost:${attacker.address().port}/`);
    assert.equal((await response).status(), 403);
    assert.equal(counts("emails").paused, false);
  } finally {
    attacker.close();
    attacker.closeAllConnections();
    await context.close();
  }
});

test("with a token the dashboard asks for it; off loopback it needs one to start", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  const response = await page.goto(guarded.url + "/queues/videos");
  assert.equal(response.status(), 401);
  assert.equal(await page.locator("#queues").count(), 0);
  await page.fill("#token", "not-the-token-0123456789");
  await page.click(".login button");
  await page.getByText("That token is not the dashboard's token.").waitFor();
  await screenshot(page, "login");
  await page.fill("#token", TOKEN);
  await page.click(".login button");
  await page.locator("#queues").waitFor();
  assert.ok((await page.locator("#queues tr[data-queue]").count()) >= 2);
  await context.close();

  // No token on an address other hosts reach: refused before serving anything.
  const port = await freePort();
  const refused = startProcess(["dashboard", "--listen", `0.0.0.0:${port}`]);
  const code = await new Promise((r) => refused.once("exit", r));
  assert.notEqual(code, 0);
  assert.match(refused.output, /without a token/);
});

test("read-only mode shows no action and refuses a direct POST", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(readOnly.url + "/queues/emails?state=dead");
  await page.locator("#read-only").waitFor();
  assert.equal(await page.locator('form[method="post"]').count(), 0);
  assert.equal(await page.locator("#pause-queue").count(), 0);
  const status = await page.evaluate(async () => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const body = new URLSearchParams({ csrf, action: "delete", scope: "state", state: "dead", confirm: "100" });
    const response = await fetch("/queues/emails/bulk", { method: "POST", body });
    return response.status;
  });
  assert.equal(status, 405);
  assert.equal(counts("emails").dead, 2);
  await context.close();
});

test("schedules: ticks fired by a live `ostq scheduler` are shown; Remove asks, then removes", async () => {
  ostq(["cron", "add", "reports", "heartbeat", "--every", "1s", "--payload", '{"check":"disk"}', "--task", "health_check"]);
  ostq(["cron", "add", "reports", "nightly", "--cron", "0 2 * * *", "--tz", "Europe/Paris", "--payload", "full", "--task", "build_report"]);
  const heartbeat = () => JSON.parse(ostq(["cron", "list", "reports", "--json"])).find((s) => s.name === "heartbeat");
  let scheduler = startProcess(["scheduler", "reports"]);
  const context = await browser.newContext();
  try {
    await eventually(`the scheduler fires the 1 s schedule twice (${scheduler.output})`, () => heartbeat()?.fired >= 2);
    const page = await newPage(context);
    await page.goto(open.url + "/");
    await page.click('header nav a:has-text("Schedules")');
    const row = page.locator('#schedules tr[data-schedule="heartbeat"]');
    await row.waitFor();
    const cell = async (r, field) => (await r.locator(`[data-field="${field}"]`).textContent()).trim();
    assert.equal(await cell(row, "when"), "every 1s");
    assert.equal(await cell(row, "task"), "health_check");
    assert.equal(await cell(row, "payload"), '{"check":"disk"}');
    const nightly = page.locator('#schedules tr[data-schedule="nightly"]');
    assert.equal(await cell(nightly, "when"), "cron 0 2 * * * (Europe/Paris)");
    assert.equal(await cell(nightly, "last"), "never");
    assert.equal(await cell(nightly, "fired"), "0");
    await screenshot(page, "schedules");

    // With the scheduler stopped the registry holds still: the page shows exactly what it holds,
    // and flags the next tick as overdue once it has passed.
    await stop(scheduler);
    await sleep(2200);
    await page.reload();
    const info = heartbeat();
    assert.equal(await cell(row, "fired"), String(info.fired));
    assert.match(await cell(row, "next"), /overdue/);
    const lastJob = (await row.locator('[data-field="last-job"] code').textContent()).trim();
    assert.equal(lastJob, info.last_job_id);
    await row.locator('[data-field="last-job"] a').click();
    await page.locator("#job-id").waitFor();
    assert.equal(await page.locator("#job-id").textContent(), lastJob);
    await page.goBack();

    // Remove, with a scheduler running again: a confirmation first (nothing removed yet), then
    // gone, and the running scheduler fires it no more; nightly stays.
    scheduler = startProcess(["scheduler", "reports"]);
    await eventually("the restarted scheduler fires again", () => heartbeat().fired > info.fired);
    await page.locator('#schedules tr[data-schedule="heartbeat"] button:has-text("Remove")').click();
    await page.locator("#confirm-text").waitFor();
    assert.equal((await page.locator("h1").textContent()).trim(), "Remove schedule heartbeat?");
    assert.ok(heartbeat(), "still registered before confirming");
    await page.click("#confirm-button");
    await page.locator("#notice").waitFor();
    assert.match(await page.locator("#notice").textContent(), /Schedule removed/);
    assert.equal(heartbeat(), undefined);
    assert.equal(await page.locator('#schedules tr[data-schedule="heartbeat"]').count(), 0);
    assert.equal(await page.locator('#schedules tr[data-schedule="nightly"]').count(), 1);
    await sleep(300); // a tick being enqueued as Remove ran lands first
    const jobsBefore = counts("reports").pending;
    await sleep(2500);
    assert.equal(counts("reports").pending, jobsBefore, "a removed schedule fires nothing");
    assert.equal(page.scriptError, undefined);
  } finally {
    await stop(scheduler);
    await context.close();
  }
});

test("metrics: a real worker's history per task, failed attempts counted in the run time", async () => {
  // Before the tests, `ostq worker --burst` ran the 6 emails jobs: 1 completed, 5 failed for good.
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(open.url + "/queues/emails");
  await page.click("#queue-metrics");
  const all = page.locator('#metrics-counts tr[data-scope="all"]');
  await all.waitFor();
  const cell = async (row, field) => (await row.locator(`[data-field="${field}"]`).textContent()).trim();
  assert.equal(await cell(all, "processed"), "6");
  assert.equal(await cell(all, "completed"), "1");
  assert.equal(await cell(all, "failed"), "5");
  assert.equal(await cell(all, "dead"), "5");
  const run = page.locator('#metrics-durations tr[data-scope="all"][data-kind="run"]');
  assert.equal(await cell(run, "count"), "6", "the failed attempts are in the run histogram");
  assert.match(await cell(run, "p95"), /^≤ \d/);
  const total = page.locator('#metrics-durations tr[data-scope="all"][data-kind="total"]');
  assert.equal(await cell(total, "count"), "1", "total time counts completed jobs only");
  assert.equal(await run.locator("svg.hist rect.bar").count() >= 1, true);
  await screenshot(page, "metrics");

  // The videos queue, whose live worker ran `sleep 0.2`: runs of at least 200 ms.
  await page.click('#metrics-queues a:has-text("videos")');
  const videosRun = page.locator('#metrics-durations tr[data-scope="all"][data-kind="run"]');
  await videosRun.waitFor();
  assert.ok(Number((await cell(videosRun, "count")).replace(/,/g, "")) > 0);
  assert.match(await cell(videosRun, "p50"), /^≤ (320ms|640ms|1\.\ds|2\.\ds)$/);
  await page.click('#metrics-windows a:has-text("last 7d")');
  await page.locator('#metrics-windows a[aria-current="page"]:has-text("last 7d")').waitFor();
  assert.equal(page.scriptError, undefined);
  await context.close();
});

test("dark mode renders dark", async () => {
  const context = await browser.newContext({ colorScheme: "dark" });
  const page = await newPage(context);
  await page.goto(open.url + "/queues/emails?state=dead");
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const [r, g, b] = background.match(/\d+/g).map(Number);
  assert.ok(r + g + b < 150, `a dark background, got ${background}`);
  await screenshot(page, "queue-dead-dark");
  await page.goto(open.url + "/");
  await screenshot(page, "overview-dark");
  await page.goto(open.url + "/workers");
  await screenshot(page, "workers-dark");
  await context.close();
});
