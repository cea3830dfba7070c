// The dashboard in Debian's chromium, against a real `carapace serve` that tests/cli/dashboard.rs
// started with real agents. Every wait is on a selector or an event with a deadline; every
// step names itself when it fails and leaves a screenshot. Exit 0 only when every step held.
'use strict';

const path = require('node:path');
const { spawn } = require('node:child_process');

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/cli/dashboard.rs sets it)`);
  return value;
};

const { chromium } = require(path.join(env('PLAYWRIGHT_NODE_MODULES'), 'playwright-core'));
const base = new URL(env('DASHBOARD_URL'));
const adminToken = env('ADMIN_TOKEN');
const tenantToken = env('TENANT_TOKEN');
const agent = env('AGENT');
const tenantAgent = env('TENANT_AGENT');
const shots = env('SCREENSHOTS');
const tokens = [adminToken, tenantToken];
const LAPTOP = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };

// Requests the pages made that left the daemon, or carried a token in their address.
const offences = [];

function watch(page) {
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (url.protocol !== 'blob:' && url.origin !== base.origin) offences.push(`external request: ${request.url()}`);
    if (tokens.some((t) => request.url().includes(t))) offences.push(`a token in a URL: ${url.pathname}`);
  });
  page.on('pageerror', (error) => offences.push(`script error: ${error.message}`));
  page.setDefaultTimeout(15000);
}

let page;

async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
  } catch (error) {
    if (page) await page.screenshot({ path: path.join(shots, `failed-${name}.png`), fullPage: true }).catch(() => {});
    throw new Error(`step "${name}": ${error.message}`);
  }
  console.log(`ok ${name} (${Date.now() - started} ms)`);
}

const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

// Waits until the first element matching `selector` reads as `pattern`.
async function expectText(selector, pattern, timeout = 15000) {
  try {
    await page.waitForFunction(([sel, source, flags]) => {
      const el = document.querySelector(sel);
      return el !== null && new RegExp(source, flags).test(el.innerText);
    }, [selector, pattern.source, pattern.flags], { timeout });
  } catch {
    const text = await page.locator(selector).first().innerText({ timeout: 1000 }).catch(() => '(absent)');
    throw new Error(`${selector}: "${text}" does not match ${pattern} within ${timeout} ms`);
  }
}

async function login(token) {
  await page.goto(base.origin + '/');
  await page.locator('#token').fill(token);
  await page.locator('#login button[type=submit]').click();
  await page.locator('#nav').waitFor();
}

// The page must never hold a token: not in its markup, not in its address.
async function expectNoTokenInPage() {
  const html = await page.content();
  for (const token of tokens) {
    if (html.includes(token) || page.url().includes(token)) throw new Error('a token is in the page');
  }
}

// `carapace chaos --fault kill`: kill -9 the agent and measure its recovery.
function chaosKill() {
  const child = spawn(env('CARAPACE_BIN'), ['chaos', '--data', env('DATA_DIR'), '--agent', agent, '--fault', 'kill', '--timeout', '60s'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  return new Promise((resolve, reject) => {
    const deadline = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`chaos did not finish within 90 s: ${output}`)); }, 90000);
    child.on('exit', (code) => {
      clearTimeout(deadline);
      if (code === 0) resolve(output);
      else reject(new Error(`chaos exited ${code}: ${output}`));
    });
  });
}

async function main() {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  try {
    await operator(browser);
    await otherTenant(browser);
  } finally {
    await browser.close();
  }
  if (offences.length) throw new Error(`the pages misbehaved:\n${offences.join('\n')}`);
}

async function operator(browser) {
  const context = await browser.newContext({ viewport: LAPTOP });
  page = await context.newPage();
  watch(page);

  await step('a wrong token is refused', async () => {
    await login('not-a-token-of-this-daemon').catch(() => {});
    await expectText('#login-error', /not valid/);
    await shot('login');
  });

  await step('the admin logs in and sees the fleet', async () => {
    await page.locator('#token').fill(adminToken);
    await page.locator('#login button[type=submit]').click();
    await page.locator(`a.agent[data-agent="${agent}"][data-state="running"]`).waitFor();
    await expectText(`a.agent[data-agent="${agent}"] .state`, /^running$/);
    await page.locator('.node svg.bar').waitFor();
    await expectText('.node .memory .legend', /used .* committed .* cap .* watermarks/);
    await page.locator(`a.agent[data-agent="${tenantAgent}"]`).waitFor();
    await page.locator('#live[data-state="live"]').waitFor();
    await expectNoTokenInPage();
    await shot('fleet');
  });

  await step('filters narrow the fleet by state and tenant', async () => {
    await page.locator('#filter-state').selectOption('parked');
    await page.locator('#no-agents').waitFor();
    if (!page.url().includes('state=parked')) throw new Error(`the filter is not in the address: ${page.url()}`);
    await page.locator('#filter-state').selectOption('');
    await page.locator('#filter-tenant').selectOption('7');
    await page.locator(`a.agent[data-agent="${tenantAgent}"]`).waitFor();
    await page.locator(`a.agent[data-agent="${agent}"]`).waitFor({ state: 'detached' });
    await page.locator('#filter-tenant').selectOption('');
    await page.locator(`a.agent[data-agent="${agent}"]`).waitFor();
  });

  await step('the agent page shows its versions and timeline', async () => {
    await page.locator(`a.agent[data-agent="${agent}"]`).click();
    await page.locator('.badge[data-state="running"]').waitFor();
    await expectText('#fact-desired-version', /config 2/);
    await expectText('#fact-known-good', /config \d/);
    await page.locator('#versions tr[data-version="1"] button[data-restore="1"]').waitFor();
    await page.locator('#timeline tr[data-kind="decision"][data-event="start"]').first().waitFor();
    await page.locator('#memory svg.chart').waitFor({ timeout: 20000 });
    await shot('agent');
  });

  await step('a kill through chaos shows recovering, then running, live', async () => {
    const loadedAt = await page.evaluate(() => window.carapaceLoadedAt);
    const chaos = chaosKill();
    await page.locator('.badge[data-state="recovering"]').waitFor({ timeout: 30000 });
    await shot('agent-recovering');
    await page.locator('.badge[data-state="running"]').waitFor({ timeout: 30000 });
    await page.locator('#timeline tr[data-event="exited"]').first().waitFor();
    const after = await page.evaluate(() => window.carapaceLoadedAt);
    if (after !== loadedAt) throw new Error('the page reloaded instead of updating live');
    await chaos;
  });

  await step('the incident is listed and its post-mortem has the replay command', async () => {
    await page.locator('#nav a[data-nav="incidents"]').click();
    const row = page.locator(`#incidents tr[data-agent="${agent}"]`).first();
    await row.waitFor();
    const text = await row.innerText();
    if (!/exited/.test(text) || !/rung 1/.test(text)) throw new Error(`the incident row reads "${text}"`);
    await shot('incidents');
    await row.locator('a.post-mortem').click();
    await expectText('#replay-command', /^carapace replay \S+carapace\.redb --until \d+$/);
    await expectText('#fact-incident-rung', /rung 1/);
    await page.locator('#timeline tr[data-event="exited"]').first().waitFor();
    await shot('post-mortem');
  });

  await step('a cancelled action does nothing', async () => {
    await page.locator('a', { hasText: `Open ${agent}` }).click();
    await page.locator('#recreate').click();
    await page.locator('#confirm[open]').waitFor();
    await page.locator('#confirm-cancel').click();
    await page.locator('#confirm[open]').waitFor({ state: 'detached' });
    const result = await page.locator('#action-result').innerText();
    if (result.trim()) throw new Error(`a cancelled action reported "${result}"`);
  });

  await step('restoring config version 1 is confirmed and reflected live', async () => {
    await page.locator('button[data-restore="1"]').click();
    await expectText('#confirm-text', /Restore config version 1/);
    await page.locator('#confirm-ok').click();
    await expectText('#action-result', /config version 1 restored as version 3/);
    await page.locator('#fact-running-version', { hasText: 'config 3' }).waitFor({ timeout: 30000 });
    await page.locator('.badge[data-state="running"]').waitFor({ timeout: 30000 });
    await shot('agent-restored');
  });

  await step('draining the only node is refused, saying why', async () => {
    await page.locator('#drain').click();
    await page.locator('#confirm-ok').click();
    await expectText('#action-result', /only node/);
  });

  await step('the pages fit a phone', async () => {
    await page.setViewportSize(PHONE);
    for (const [hash, name] of [['#/fleet', 'fleet-phone'], [`#/agent/0/${agent}`, 'agent-phone'], ['#/incidents', 'incidents-phone']]) {
      await page.goto(`${base.origin}/dashboard/${hash}`);
      await page.locator('main .content > *').first().waitFor();
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      if (overflow > 0) throw new Error(`${hash} is ${overflow} px wider than a phone`);
      await shot(name);
    }
    await page.setViewportSize(LAPTOP);
  });

  await step('two simulation reports open and compare side by side', async () => {
    await page.locator('#nav a[data-nav="simulations"]').click();
    await page.locator('#report-a').setInputFiles(env('REPORT_A'));
    await page.locator('#report-b').setInputFiles(env('REPORT_B'));
    await page.locator('#run-a table.slo tr[data-slo="recovery p90"]').waitFor();
    await page.locator('#run-b table.slo tr[data-slo="recovery p90"]').waitFor();
    await expectText('#comparison tr[data-slo="recovery p90"]', /\d+(\.\d+)? s .*\d+(\.\d+)? s/);
    const plots = await page.locator('#compare .plots img').count();
    if (plots < 2) throw new Error(`${plots} plots shown`);
    await page.waitForFunction(() => [...document.querySelectorAll('#compare .plots img')].every((i) => i.complete && i.naturalWidth > 0));
    await shot('simulations');
  });

  await step('logging out forgets the token', async () => {
    await page.locator('#logout').click();
    await page.locator('#token').waitFor();
    const kept = await page.evaluate(() => Object.keys(sessionStorage).length);
    if (kept) throw new Error(`${kept} keys left in sessionStorage`);
  });
  await context.close();
}

async function otherTenant(browser) {
  const context = await browser.newContext({ viewport: LAPTOP });
  page = await context.newPage();
  watch(page);
  await step("another tenant's token sees its own agent and none of the admin's", async () => {
    await login(tenantToken);
    await page.locator(`a.agent[data-agent="${tenantAgent}"]`).waitFor();
    if (await page.locator(`a.agent[data-agent="${agent}"]`).count()) throw new Error(`${agent} is shown`);
    if (await page.locator('svg.bar').count()) throw new Error("the node's memory bar is shown to a tenant");
    await expectNoTokenInPage();
    await shot('tenant-fleet');
    await page.locator('#nav a[data-nav="incidents"]').click();
    await page.locator('#no-incidents').waitFor();
    await shot('tenant-incidents');
    await page.goto(`${base.origin}/dashboard/#/agent/0/${agent}`);
    await expectText('#not-found', new RegExp(`no agent named \`${agent}\``));
    if (await page.locator('#restart').count()) throw new Error('actions are offered on a foreign agent');
    await shot('tenant-foreign-agent');
  });
  await context.close();
}

main().then(
  () => console.log('dashboard: every step held'),
  (error) => { console.error(error.message); process.exit(1); },
);
