// The admin page of `pic-store serve` in headless Chromium, used the way
// an owner would: log in with the token URL, install a web service from
// the store list (its install page asks for a setting) and follow its job
// page to success, install the proxy,
// create a connection and route a peer through the forms, take the
// screenshots, then remove the web service with its data.
//
// tests/browser.rs starts the server and runs this script:
//
//   node tests/browser/run.mjs BASE_URL TOKEN SCREENSHOT.png
//
// (or PIC_BASE_URL, PIC_TOKEN, PIC_SCREENSHOT). The desktop screenshot is
// SCREENSHOT.png, the phone one admin-mobile.png in the same folder.
// PIC_BROWSER_WEB and PIC_BROWSER_PROXY name the store's services
// (default web, proxy); PIC_CHROMIUM the browser (default /usr/bin/chromium).
// Exits 0 when every step passed, 1 with the failing step's name and what
// the page showed otherwise, 2 on bad arguments.

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

const base = (process.argv[2] ?? process.env.PIC_BASE_URL ?? '').replace(/\/+$/, '');
const token = process.argv[3] ?? process.env.PIC_TOKEN ?? '';
const shot = process.argv[4] ?? process.env.PIC_SCREENSHOT ?? '';
const WEB = process.env.PIC_BROWSER_WEB ?? 'web';
const PROXY = process.env.PIC_BROWSER_PROXY ?? 'proxy';
const CHROMIUM = process.env.PIC_CHROMIUM ?? '/usr/bin/chromium';
const CONNECTION = 'home-proxy';
const PEER = '10.8.0.2';
/** How long one job (an install pulls an image) may take. */
const JOB_TIMEOUT_MS = 90_000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

if (!/^https?:\/\/./.test(base) || !token || !shot.endsWith('.png')) {
  console.error('usage: node run.mjs BASE_URL TOKEN SCREENSHOT.png');
  process.exit(2);
}

class StepFailed extends Error {}
const fail = (message) => {
  throw new StepFailed(message);
};
const started = Date.now();
let current = 'start';

/** Runs one named step and prints how long it took. */
async function step(name, fn) {
  current = name;
  const t = Date.now();
  await fn();
  console.log(`ok   ${name} (${Date.now() - t} ms)`);
}

/** `section.card` whose heading is `title`. */
const section = (page, title) =>
  page.locator('section.card', { has: page.locator('h2', { hasText: title }) });

async function expectCount(locator, n, what) {
  const got = await locator.count();
  if (got !== n) fail(`${what}: expected ${n}, found ${got}`);
}

async function expectText(locator, needle, what) {
  const text = (await locator.textContent({ timeout: 5_000 }).catch(() => null)) ?? '';
  if (!text.includes(needle)) fail(`${what}: expected ${JSON.stringify(needle)} in ${JSON.stringify(text.trim().slice(0, 400))}`);
}

async function expectHome(page) {
  await page.waitForURL(`${base}/`, { timeout: 10_000 });
  await expectCount(section(page, 'Store'), 1, 'the Store section');
}

/**
 * Follows a job page (it refreshes itself once a second while the job
 * runs) until it says succeeded; returns the number of page loads seen.
 */
async function followJob(page, what) {
  await page.waitForURL(/\/jobs\/[^/?]+$/, { timeout: 10_000 }).catch(() =>
    fail(`${what}: the form did not lead to a job page (at ${page.url()})`),
  );
  let loads = 0;
  const onLoad = () => loads++;
  page.on('load', onLoad);
  const deadline = Date.now() + JOB_TIMEOUT_MS;
  let state = '(none)';
  try {
    while (Date.now() < deadline) {
      // The page may be between two loads: then there is nothing to read yet.
      const s = await page
        .locator('#job-state')
        .textContent({ timeout: 2_000 })
        .catch(() => null);
      if (s !== null) state = s.trim();
      if (state === 'succeeded') break;
      if (state === 'failed') {
        const text = await page.locator('main').innerText().catch(() => '');
        fail(`${what}: the job failed:\n${text}`);
      }
      await page.waitForTimeout(200);
    }
  } finally {
    page.off('load', onLoad);
  }
  if (state !== 'succeeded') {
    fail(`${what}: the job page did not show success within ${JOB_TIMEOUT_MS / 1000} s (last: ${state}, ${loads} reloads)`);
  }
  await expectCount(page.locator('meta[http-equiv="refresh"]'), 0, `${what}: refresh tag on a finished job`);
  return loads;
}

async function backHome(page) {
  await page.getByRole('link', { name: 'Back to the admin page' }).click();
  await expectHome(page);
}

async function run(page, problems) {
  await step('log in with the token URL', async () => {
    const r = await page.goto(`${base}/login?token=${encodeURIComponent(token)}`);
    if (!r || r.status() !== 200) fail(`login answered ${r?.status()} at ${page.url()}`);
    await expectHome(page);
    // The stylesheet is allowed by the page's CSP and applied.
    const bg = await page.locator('header.top').evaluate((e) => getComputedStyle(e).backgroundColor);
    if (bg !== 'rgb(17, 24, 39)') fail(`the stylesheet is not applied (header background ${bg})`);
  });

  await step('see the store list', async () => {
    const store = section(page, 'Store');
    for (const id of [WEB, PROXY]) {
      await expectCount(store.locator(`#store-${id}`), 1, `store tile ${id}`);
      await expectCount(store.locator(`#store-${id} button`, { hasText: 'Install' }), 1, `Install button of ${id}`);
    }
    await expectText(section(page, 'Installed services'), 'Nothing installed yet', 'the empty installed list');
  });

  await step(`install ${WEB} from the store list, with a setting`, async () => {
    await page.locator(`#store-${WEB} button`, { hasText: 'Install' }).click();
    await expectText(page.locator('main h2'), 'Install Home page', 'the install page');
    const form = page.locator('form.install');
    await expectCount(form, 1, 'the install form');
    const secret = form.locator('input[name="ADMIN_PASSWORD"]');
    if ((await secret.getAttribute('type')) !== 'password') fail('the secret is not a password field');
    if ((await secret.getAttribute('placeholder')) !== 'generated if left empty') fail('the generated secret is not said to be generated');
    const greeting = form.locator('input[name="GREETING"]');
    if ((await greeting.inputValue()) !== 'hello') fail('the install form does not hold the default');
    await greeting.fill('hi from the install page');
    await form.getByRole('button', { name: 'Install' }).click();
    const loads = await followJob(page, `install ${WEB}`);
    console.log(`     (the job page reloaded itself ${loads} times)`);
    await expectText(page.locator('pre.log'), WEB, 'the job log');
  });

  await step(`see ${WEB} under Installed`, async () => {
    await backHome(page);
    await expectCount(section(page, 'Installed services').locator(`#svc-${WEB}`), 1, `${WEB} under Installed`);
    await expectText(page.locator(`#store-${WEB} .badge`), 'Installed', `the store tile of ${WEB}`);
  });

  await step(`see the runtime of ${WEB} and open its logs view`, async () => {
    await expectCount(page.locator(`#svc-${WEB} .runtime`), 1, `the runtime badge of ${WEB}`);
    await page.locator(`#svc-${WEB} a.logs`).click();
    await expectText(page.locator('main h2'), `Logs of ${WEB}`, 'the logs view');
    await backHome(page);
  });

  await step(`see the update badge of ${WEB} and change its settings`, async () => {
    await expectText(page.locator(`#svc-${WEB} .badge.update`), '1.0.1', `the update badge of ${WEB}`);
    const form = page.locator(`#svc-${WEB} form.settings`);
    await expectCount(form, 1, `the settings form of ${WEB}`);
    const secret = form.locator('input[name="ADMIN_PASSWORD"]');
    if ((await secret.getAttribute('type')) !== 'password') fail('the secret is not a password field');
    if ((await secret.inputValue()) !== '') fail('the secret is shown in its field');
    const installed = await form.locator('input[name="GREETING"]').inputValue();
    if (installed !== 'hi from the install page') fail(`the greeting given at install is ${JSON.stringify(installed)}`);
    await form.locator('input[name="GREETING"]').fill('bonjour');
    await form.getByRole('button', { name: 'Save settings' }).click();
    await followJob(page, `configure ${WEB}`);
    await backHome(page);
    const greeting = await page.locator(`#svc-${WEB} form.settings input[name="GREETING"]`).inputValue();
    if (greeting !== 'bonjour') fail(`the greeting after configure is ${JSON.stringify(greeting)}`);
  });

  await step(`install ${PROXY}`, async () => {
    await page.locator(`#store-${PROXY} button`, { hasText: 'Install' }).click();
    await expectText(page.locator('form.install'), 'no settings', `the install page of ${PROXY}`);
    await page.locator('form.install').getByRole('button', { name: 'Install' }).click();
    await followJob(page, `install ${PROXY}`);
    await backHome(page);
    await expectCount(page.locator(`#svc-${PROXY}`), 1, `${PROXY} under Installed`);
  });

  await step(`create connection ${CONNECTION}`, async () => {
    const form = page.locator('form[action="/ui/connections"]');
    await expectCount(form, 1, 'the add-connection form');
    await form.locator('select[name="service"]').selectOption(PROXY);
    await form.locator('input[name="name"]').fill(CONNECTION);
    await form.locator('textarea[name="env"]').fill('UPSTREAM=socks5://10.1.1.1:1080');
    await form.getByRole('button', { name: 'Create connection' }).click();
    await followJob(page, `create ${CONNECTION}`);
    await backHome(page);
    const row = section(page, 'Connections').locator('tbody tr', { hasText: CONNECTION });
    await expectCount(row, 1, `the row of ${CONNECTION}`);
    await expectText(row, PROXY, `the service of ${CONNECTION}`);
    await expectText(row, '0x1', `the mark of ${CONNECTION}`);
  });

  await step(`route peer ${PEER} through ${CONNECTION}`, async () => {
    const form = page.locator('form[action="/ui/peers"]');
    await expectCount(form, 1, 'the route-a-peer form');
    await form.locator('input[name="peer"]').fill(PEER);
    await form.locator('select[name="connection"]').selectOption(CONNECTION);
    await form.getByRole('button', { name: 'Route' }).click();
    await followJob(page, `route ${PEER}`);
    await backHome(page);
    const row = section(page, 'Peer routes').locator('tbody tr', { hasText: PEER });
    await expectCount(row, 1, `the route of ${PEER}`);
    await expectText(row, CONNECTION, `the connection of ${PEER}`);
  });

  // Taken while the page shows a bit of everything: the README's picture.
  await step('take the screenshots', async () => {
    const phone = join(dirname(shot), 'admin-mobile.png');
    await page.setViewportSize(PHONE);
    await page.reload();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 0) fail(`on a ${PHONE.width} px phone the page is ${overflow} px wider than the screen`);
    await page.screenshot({ path: phone, fullPage: true });
    await page.setViewportSize(DESKTOP);
    await page.reload();
    await page.screenshot({ path: shot, fullPage: true });
    for (const p of [shot, phone]) {
      if (statSync(p).size < 10_000) fail(`${p} is suspiciously small`);
    }
  });

  await step(`remove ${WEB} and its data`, async () => {
    const row = page.locator(`#svc-${WEB}`);
    await row.locator('input[name="purge"]').check();
    await row.getByRole('button', { name: 'Remove' }).click();
    await followJob(page, `remove ${WEB}`);
    await expectText(page.locator('details pre'), '"purged": true', 'the removal result');
    await backHome(page);
    await expectCount(page.locator(`#svc-${WEB}`), 0, `${WEB} under Installed after removal`);
    await expectCount(page.locator(`#store-${WEB} button`, { hasText: 'Install' }), 1, `Install button of ${WEB} again`);
    await expectCount(page.locator(`#svc-${PROXY}`), 1, `${PROXY} still installed`);
  });

  if (problems.length) {
    current = 'page problems';
    fail(`the browser reported:\n  ${problems.join('\n  ')}`);
  }
}

async function main() {
  const profile = mkdtempSync(join(tmpdir(), 'pic-chromium-'));
  let context;
  let code = 0;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      // The page needs no script: prove it works without.
      javaScriptEnabled: false,
      viewport: DESKTOP,
      timeout: 60_000,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--no-first-run',
        '--disable-quic',
        '--disable-sync',
      ],
    });
    context.setDefaultTimeout(15_000);
    const page = context.pages()[0] ?? (await context.newPage());
    // Console errors (a CSP violation), error answers and failed requests
    // are failures too.
    const problems = [];
    // Answers >= 400 are counted from the responses (which name the URL);
    // the browser's own guess at /favicon.ico may be a 404.
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
    });
    page.on('response', (r) => {
      if (r.status() >= 400 && new URL(r.url()).pathname !== '/favicon.ico') problems.push(`HTTP ${r.status()}: ${r.url()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => {
      // A meta refresh can cut a load short; that is not a failure.
      if (!/ERR_ABORTED/.test(r.failure()?.errorText ?? '')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
    });
    try {
      await run(page, problems);
      console.log(`browser test passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    } catch (e) {
      code = 1;
      const where = page.url();
      const text = await page.locator('body').innerText({ timeout: 2_000 }).catch(() => '(no page text)');
      const failShot = join(dirname(shot), 'failure.png');
      await page.screenshot({ path: failShot, fullPage: true }).catch(() => {});
      console.error(`browser test FAILED at step "${current}": ${e instanceof StepFailed ? e.message : e.stack ?? e}`);
      console.error(`page: ${where}\n--- page text ---\n${text.slice(0, 3000)}\n--- (screenshot: ${failShot})`);
    }
  } catch (e) {
    code = 1;
    console.error(`browser test FAILED at step "${current}": cannot start ${CHROMIUM}: ${e.message ?? e}`);
  } finally {
    await context?.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
  process.exit(code);
}

await main();
