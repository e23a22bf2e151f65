// Drives OHIF, served by Pictor at /viewer, in Debian's headless Chromium through
// playwright-core, as a person would: study list, filter, open studies, upload, an IHE
// Invoke Image Display link; and, from a page of another origin, cross-origin fetches.
// With `login` in the scenario, the person signs in at Pictor's form first, is sent back
// to it when the session ends, and signs out at the end (issue #21).
//
// Usage: node ohif.mjs <scenario.json>. The scenario names the server, the studies to
// expect, the file to upload, the artifacts directory and the CORS pages. The script
// takes screenshots, records what it saw (texts, requests, statuses) and prints one
// JSON object on its last line; tests/e2e/browser/test_ohif.py asserts on it (and on the
// screenshots' pixels). Steps fail fast with a screenshot of where they stopped.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const scenario = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const artifacts = scenario.artifacts;
fs.mkdirSync(artifacts, { recursive: true });
const result = { steps: {}, requests: [], console: [], missing: [] };

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pictor-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: scenario.chromium || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  viewport: { width: 1280, height: 800 },
});
context.setDefaultTimeout(30000);
// OHIF's first-visit notices cover part of the viewport: hide them as a returning user
// would have (the investigational-use notice once per session; the guided tours)
await context.addInitScript(() => {
  try { sessionStorage.setItem('investigationalUseDialog', 'hidden'); } catch (e) { /* opaque origins */ }
});

const page = context.pages()[0] || (await context.newPage());
page.on('console', (m) => {
  if (m.type() === 'error' || m.type() === 'warning') result.console.push(m.text().slice(0, 300));
});
page.on('pageerror', (e) => result.console.push(`pageerror: ${String(e).slice(0, 300)}`));
page.on('response', (r) => {
  const req = r.request();
  if (r.status() >= 400 && !r.url().includes('/dicom-web/')) result.missing.push(`${r.status()} ${r.url()} (page ${page.url()})`);
  if (!r.url().includes('/dicom-web/')) return;
  result.requests.push({
    method: req.method(),
    url: r.url(),
    status: r.status(),
    accept: req.headers()['accept'] || '',
    contentType: req.headers()['content-type'] || '',
  });
});

async function shot(name, locator) {
  const file = path.join(artifacts, `${name}.png`);
  await (locator || page).screenshot({ path: file });
  return file;
}

async function dismissNotices() {
  for (const name of ['Skip all', 'Confirm and hide']) {
    const button = page.getByRole('button', { name, exact: true });
    if (await button.isVisible().catch(() => false)) await button.click().catch(() => {});
    const text = page.getByText(name, { exact: true });
    if (await text.isVisible().catch(() => false)) await text.click().catch(() => {});
  }
}

async function step(name, fn) {
  const started = Date.now();
  try {
    result.steps[name] = { ok: true, ...(await fn()) };
  } catch (error) {
    result.steps[name] = { ok: false, error: String(error && error.stack || error).slice(0, 2000) };
    await shot(`failed-${name}`).catch(() => {});
  }
  result.steps[name].seconds = (Date.now() - started) / 1000;
}

async function rowText(name) {
  const row = page.locator('tr', { hasText: name }).first();
  await row.waitFor();
  return (await row.innerText()).replace(/\s+/g, ' ');
}

// The share of clearly lit pixels in the middle of a screenshot (the corners hold OHIF's
// text overlays), computed by the browser's own PNG decoder
async function litFraction(png) {
  return page.evaluate(async (b64) => {
    const bitmap = await createImageBitmap(await (await fetch(`data:image/png;base64,${b64}`)).blob());
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext('2d');
    context.drawImage(bitmap, 0, 0);
    const [x, y, w, h] = [bitmap.width / 5, bitmap.height / 5, (bitmap.width * 3) / 5, (bitmap.height * 3) / 5];
    const data = context.getImageData(x, y, w, h).data;
    let lit = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 120) lit++;
    return lit / (data.length / 4);
  }, png.toString('base64'));
}

// The frames of a study drawn in the viewport: wait for OHIF to ask for frames, for all
// of them to be answered, then for the canvas to settle.
async function openStudy(name, url, { omitQuotation = true } = {}) {
  if (!omitQuotation) {
    await page.route('**/viewer/app-config.js', async (route) => {
      const response = await route.fetch();
      const body = (await response.text()).replace(
        '"omitQuotationForMultipartRequest": true', '"omitQuotationForMultipartRequest": false');
      await route.fulfill({ response, body });
    });
  }
  const before = result.requests.length;
  await page.goto(url);
  await page.waitForURL(/\/viewer\/viewer\?/);
  const canvas = page.locator('canvas.cornerstone-canvas').first();
  await canvas.waitFor();
  // (the first frames may be answered before the canvas appears)
  await page.waitForFunction(() => performance.getEntriesByType('resource')
    .some((e) => e.name.includes('/frames/') && e.responseEnd > 0), null, { timeout: 45000 });
  await page.waitForLoadState('networkidle').catch(() => {});
  await dismissNotices();
  // decoding runs in web workers: wait (a while) for the picture to appear
  let lit = 0;
  for (let i = 0; i < 40 && lit < 0.02; i++) {
    await page.waitForTimeout(500);
    lit = await litFraction(await canvas.screenshot());
  }
  if (!omitQuotation) await page.unroute('**/viewer/app-config.js');
  const requests = result.requests.slice(before);
  return {
    url: page.url(),
    lit,
    screenshot: await shot(`${name}-viewport`, canvas),
    page: await shot(`${name}-page`),
    text: (await page.locator('body').innerText()).replace(/\s+/g, ' ').slice(0, 3000),
    frames: requests.filter((r) => r.url.includes('/frames/')),
    thumbnails: requests.filter((r) => r.url.includes('/thumbnail')),
    metadata: requests.filter((r) => r.url.endsWith('/metadata')),
  };
}

const base = scenario.base; // http://127.0.0.1:PORT

// Sign in through Pictor's own form (issue #21), as a person who opens the viewer first
async function signIn(name, password) {
  await page.waitForURL(/\/login\?next=/);
  const form = page.locator('form[action="login"]');
  await form.locator('input[name=username]').fill(name);
  await form.locator('input[name=password]').fill(password);
  await form.getByRole('button', { name: 'Sign in' }).click();
}

if (scenario.login) {
  await step('wrong_password', async () => {
    await page.goto(`${base}/viewer/`);
    const redirected = page.url();
    await signIn(scenario.login.user, 'not the password');
    await page.getByText('Wrong user name or password').waitFor();
    return { redirected, url: page.url(), screenshot: await shot('login-wrong') };
  });
  await step('sign_in', async () => {
    await page.goto(`${base}/viewer/`);
    const form = await shot('login-form');
    await signIn(scenario.login.user, scenario.login.password);
    await page.waitForURL(/\/viewer\/(\?.*)?$/);
    const cookie = (await context.cookies()).find((c) => c.name === 'pictor_session') || null;
    return { url: page.url(), cookie, form };
  });
}

// Sign in at the identity provider (oidc-provider's own development pages), sent there
// by Pictor's /login and OHIF's OIDC client, and brought back
async function signInAtProvider(name) {
  await page.waitForURL((url) => url.href.startsWith(scenario.oidc.issuer), { timeout: 30000 });
  await page.locator('input[name=login]').fill(name);
  await page.locator('input[name=password]').fill('any password');
  await page.locator('button[type=submit]').click();
}

function storedToken() {
  return page.evaluate(() => {
    for (const store of [sessionStorage, localStorage]) {
      for (const key of Object.keys(store)) {
        if (key.startsWith('oidc.user:')) return { key, user: JSON.parse(store.getItem(key)) };
      }
    }
    return null;
  });
}

if (scenario.oidc) {
  await step('oidc_sign_in', async () => {
    await page.goto(`${base}/login?next=viewer%2F`);
    await page.waitForURL((url) => url.href.startsWith(scenario.oidc.issuer), { timeout: 30000 });
    const provider = page.url();
    const form = await shot('oidc-provider-form');
    await signInAtProvider(scenario.oidc.user);
    await page.waitForURL((url) => url.href.startsWith(`${base}/viewer`) && !url.pathname.endsWith('/callback'), { timeout: 30000 });
    await page.locator('tr').nth(1).waitFor();
    const stored = await storedToken();
    return { provider, url: page.url(), form, token: stored && stored.user.access_token };
  });
}

await step('study_list', async () => {
  await page.goto(`${base}/viewer/`);
  const rows = {};
  for (const study of scenario.studies) rows[study.name] = await rowText(study.name);
  await dismissNotices();
  return { rows, screenshot: await shot('study-list') };
});

if (scenario.filter) await step('filter', async () => {
  const qidoBefore = result.requests.length;
  // the patient name filter is the first text box of the list; OHIF adds its wildcards
  const box = page.locator('thead input, input').first();
  await box.fill(scenario.filter.text);
  await page.waitForResponse((r) => r.url().includes('/dicom-web/studies?') && r.url().includes('PatientName'));
  await page.locator('tr', { hasText: scenario.filter.hidden }).first().waitFor({ state: 'detached' });
  await page.locator('tr', { hasText: scenario.filter.shown }).first().waitFor();
  const queries = result.requests.slice(qidoBefore).filter((r) => r.url.includes('PatientName'));
  const rows = await page.locator('tr').evaluateAll((els) => els.map((e) => e.innerText.replace(/\s+/g, ' ')));
  return { queries, rows, screenshot: await shot('study-list-filtered') };
});

for (const study of scenario.studies) {
  await step(`open_${study.key}`, async () =>
    openStudy(study.key, `${base}/viewer?StudyInstanceUIDs=${study.uid}`, {
      omitQuotation: study.omitQuotation !== false,
    }));
}

if (scenario.upload) await step('upload', async () => {
  await page.goto(`${base}/viewer/`);
  await page.locator('tr').nth(1).waitFor();
  await dismissNotices();
  await page.getByText('Upload', { exact: true }).first().click();
  const dialog = page.locator('[role=dialog]');
  await dialog.waitFor();
  const stored = page.waitForResponse(
    (r) => r.request().method() === 'POST' && r.url().includes('/dicom-web/studies'), { timeout: 60000 });
  await dialog.locator('input[type=file]:not([webkitdirectory])').setInputFiles(scenario.upload);
  const response = await stored;
  await page.waitForTimeout(1000);
  return {
    status: response.status(),
    contentType: response.request().headers()['content-type'] || '',
    dialog: (await dialog.innerText()).replace(/\s+/g, ' ').slice(0, 500),
    screenshot: await shot('upload'),
  };
});

if (scenario.iid) await step('iid', async () =>
  openStudy('iid', `${base}/IHEInvokeImageDisplay?requestType=STUDY&accessionNumber=${encodeURIComponent(scenario.iid.accessionNumber)}`));

// CORS: the same little page served under two origins, one allowed, one not
for (const [key, origin] of Object.entries(scenario.cors || {})) {
  await step(`cors_${key}`, async () => {
    await page.goto(`${origin}/`);
    return await page.evaluate(async (dicomweb) => {
      const attempt = async (url, init) => {
        try {
          const r = await fetch(url, init);
          return { ok: true, status: r.status, warning: r.headers.get('warning'), body: (await r.text()).slice(0, 200) };
        } catch (error) {
          return { ok: false, error: String(error) };
        }
      };
      return {
        origin: location.origin,
        // a simple request (no preflight)
        simple: await attempt(`${dicomweb}/studies`),
        // preflighted: a bearer token is not CORS-safelisted
        preflighted: await attempt(`${dicomweb}/studies`, {
          headers: { Accept: 'application/dicom+json', Authorization: 'Bearer x' },
        }),
        // an error answer: its status and Warning header are readable when allowed
        error: await attempt(`${dicomweb}/studies?limit=nope`, { headers: { Accept: 'application/dicom+json' } }),
      };
    }, `${base}/dicom-web`);
  });
}

if (scenario.login) {
  // the session ends while the viewer is open (a timeout, a sign-out elsewhere): the
  // next search answers 401 and the viewer sends the person to sign in again
  await step('session_ended', async () => {
    await page.goto(`${base}/viewer/`);
    await page.locator('tr').nth(1).waitFor();
    await dismissNotices();
    const ended = (await context.cookies()).find((c) => c.name === 'pictor_session');
    await page.request.post(`${base}/logout`, { headers: { Origin: base } });
    await context.addCookies([ended]); // the browser still holds the ended session
    const box = page.locator('thead input, input').first();
    await box.fill('ZZ');
    await page.waitForURL(/\/login\?next=viewer/, { timeout: 30000 });
    const url = page.url();
    await signIn(scenario.login.user, scenario.login.password);
    await page.waitForURL(/\/viewer\//);
    await page.locator('tr').nth(1).waitFor();
    return { url, back: page.url(), screenshot: await shot('signed-in-again') };
  });
  await step('sign_out', async () => {
    await page.goto(`${base}/viewer/`);
    await page.locator('tr').nth(1).waitFor();
    await dismissNotices();
    await page.locator('#pictor-sign-out button').click();
    await page.waitForURL(/\/login\?next=/);
    const form = await page.locator('input[name=password]').count();
    const cookie = (await context.cookies()).find((c) => c.name === 'pictor_session') || null;
    // the viewer is closed again
    await page.goto(`${base}/viewer/`);
    await page.waitForURL(/\/login\?next=/);
    return { url: page.url(), form, cookie, screenshot: await shot('signed-out') };
  });
}

if (scenario.oidc) {
  // the provider's token is no longer accepted (expired, revoked): the next search
  // answers 401; the viewer drops the token and OHIF goes back to the provider, which
  // still knows the person and brings them straight back with a new one
  await step('oidc_token_refused', async () => {
    await page.goto(`${base}/viewer/`);
    await page.locator('tr').nth(1).waitFor();
    await dismissNotices();
    const before = await storedToken();
    // Pictor is sent the token altered: it refuses it (a real 401 of Pictor's)
    let altered = 0;
    await page.route('**/dicom-web/studies?**', async (route) => {
      const headers = { ...route.request().headers() };
      if (altered++ === 0 && headers.authorization) headers.authorization = headers.authorization.slice(0, -8) + 'AAAAAAAA';
      await route.continue({ headers });
    });
    const refused = page.waitForResponse((r) => r.url().includes('/dicom-web/studies') && r.status() === 401, { timeout: 30000 });
    await page.locator('thead input, input').first().fill('DO');
    const status = (await refused).status();
    await page.unroute('**/dicom-web/studies?**');
    await page.waitForURL((url) => url.href.startsWith(scenario.oidc.issuer), { timeout: 30000 }).catch(() => {});
    await page.waitForURL((url) => url.href.startsWith(`${base}/viewer`) && !url.pathname.endsWith('/callback'), { timeout: 30000 });
    await page.locator('tr').nth(1).waitFor();
    const after = await storedToken();
    return { status, changed: !!after && after.user.access_token !== before.user.access_token, url: page.url() };
  });
  await step('oidc_sign_out', async () => {
    await page.goto(`${base}/viewer/`);
    await page.locator('tr').nth(1).waitFor();
    await dismissNotices();
    // Pictor's button (OHIF 3.13's own Logout item does not reach the provider)
    await page.locator('#pictor-sign-out button').click();
    await page.waitForURL((url) => url.href.startsWith(scenario.oidc.issuer), { timeout: 30000 });
    const confirm = await shot('oidc-sign-out');
    await page.locator('button[autofocus], button[name=logout], button[type=submit]').first().click();
    // back in the viewer without a token, OHIF sends the person to sign in again
    await page.waitForURL((url) => url.href.startsWith(scenario.oidc.issuer) && url.pathname.includes('interaction'), { timeout: 30000 });
    await page.locator('input[name=login]').waitFor();
    return { url: page.url(), confirm, screenshot: await shot('oidc-signed-out') };
  });
}

await context.close();
fs.rmSync(userDataDir, { recursive: true, force: true });
console.log(JSON.stringify(result));
