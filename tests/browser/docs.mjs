// Swagger UI at /docs in Debian's headless Chromium: it renders from the binary alone (no
// request leaves the host), breaks no CSP rule, and its Authorize button signs in through
// /token with the OAuth2 password flow.
// Usage: node docs.mjs <base url> <username> <password> <screenshot dir>
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const [base, username, password, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-quic'],
});
const problems = [];
try {
  const page = await (await browser.newContext()).newPage();
  const origin = new URL(base).origin;
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) problems.push(`off-host request ${r.url()}`); });
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  let tokenStatus = null;
  page.on('response', (r) => { if (r.url().endsWith('/token')) tokenStatus = r.status(); });

  await page.goto(`${base}/docs/`);
  await page.locator('.swagger-ui .info .title').filter({ hasText: 'tessera' }).waitFor();
  await page.locator('.opblock-summary-path').filter({ hasText: '/verify' }).first().waitFor();
  await page.screenshot({ path: `${shots}/10-docs.png`, fullPage: false });

  await page.locator('button.authorize').first().click();
  const oauth = page.locator('.auth-container').filter({ hasText: 'oauth2' });
  await oauth.locator('#oauth_username').fill(username);
  await oauth.locator('#oauth_password').fill(password);
  await oauth.locator('button.modal-btn.authorize').click();
  await oauth.locator('button', { hasText: 'Logout' }).waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${shots}/11-docs-authorized.png`, fullPage: false });
  if (tokenStatus !== 200) problems.push(`/token answered ${tokenStatus}`);
  if (problems.length) throw new Error(problems.join('; '));
  console.log('docs: Swagger UI renders offline and authorizes through /token');
} catch (e) {
  console.error(String(e?.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
