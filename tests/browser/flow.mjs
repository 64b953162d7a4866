// The browser flow of the pages issue, in Debian's headless Chromium:
// log in, see the dashboard, log in from a second browser context, revoke it from the first,
// reload the second and find it logged out, change password, log out.
// Usage: node flow.mjs <base url> <username> <password> <new password> <screenshot dir>
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const [base, username, password, newPassword, shots] = process.argv.slice(2);
if (!shots) {
  console.error('usage: node flow.mjs <base url> <username> <password> <new password> <screenshot dir>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

let checks = 0;
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  checks++;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-quic'],
});
const problems = [];
function watch(page, name) {
  page.on('console', (m) => {
    // A wrong password is answered with a 401 page on purpose; Chromium logs that as an error.
    const expected = /status of (401|403|429)/.test(m.text());
    if (m.type() === 'error' && !expected) problems.push(`${name}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${name}: ${e.message}`));
  page.on('requestfailed', (r) => {
    // Navigating away aborts in-flight loads (the favicon); that is not a broken resource.
    if (r.failure()?.errorText !== 'net::ERR_ABORTED') problems.push(`${name}: failed ${r.url()}`);
  });
}

async function signIn(page, pw) {
  await page.goto(`${base}/login`);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(pw);
  await page.keyboard.press('Enter');
  await page.waitForURL(`${base}/dashboard`);
}

try {
  // Device 1: a desktop.
  const desktop = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const one = await desktop.newPage();
  watch(one, 'desktop');
  await one.goto(`${base}/`);
  check((await one.title()).includes('Sign in'), 'the login page title');
  // Keyboard: username has focus, Tab moves to password, then to the button.
  check(await one.evaluate(() => document.activeElement?.id) === 'username', 'username is focused first');
  await one.keyboard.press('Tab');
  check(await one.evaluate(() => document.activeElement?.id) === 'password', 'Tab reaches the password');
  await one.keyboard.press('Tab');
  check(await one.evaluate(() => document.activeElement?.tagName) === 'BUTTON', 'then the submit button');
  await one.screenshot({ path: `${shots}/01-login.png`, fullPage: true });

  await one.getByLabel('Username').fill(username);
  await one.getByLabel('Password').fill('definitely not it');
  await one.getByRole('button', { name: 'Sign in' }).click();
  check(await one.getByRole('alert').textContent().then((t) => t.includes('Invalid username or password')), 'a wrong password says so');
  await one.screenshot({ path: `${shots}/02-login-error.png`, fullPage: true });

  await signIn(one, password);
  check(await one.getByRole('heading', { level: 1 }).textContent() === `Welcome ${username}`, 'the dashboard welcomes the user');
  const cookies = await desktop.cookies();
  const session = cookies.find((c) => c.name.endsWith('tessera_session'));
  check(session && session.httpOnly && session.sameSite === 'Lax', 'the session cookie is HttpOnly and SameSite=Lax');
  check(await one.evaluate(() => document.cookie.includes('tessera_session')) === false, 'scripts cannot read the session cookie');

  // Device 2: a phone.
  const phone = await browser.newContext({
    viewport: { width: 390, height: 844 },
    userAgent: 'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36',
  });
  const two = await phone.newPage();
  watch(two, 'phone');
  await two.goto(`${base}/login`);
  await two.screenshot({ path: `${shots}/03-login-mobile.png`, fullPage: true });
  await signIn(two, password);
  await two.screenshot({ path: `${shots}/04-dashboard-mobile.png`, fullPage: true });

  await one.reload();
  const rows = one.locator('li.session');
  check(await rows.count() === 2, 'the dashboard lists both devices');
  check(await one.locator('li.session.current').count() === 1, 'one of them is this device');
  check((await one.locator('li.session:not(.current)').textContent()).includes('Chrome on Android'), 'the phone is described');
  await one.screenshot({ path: `${shots}/05-dashboard-two-devices.png`, fullPage: true });

  await one.locator('li.session:not(.current)').getByRole('button').click();
  await one.waitForURL(/\/dashboard/);
  check(await one.locator('li.session').count() === 1, 'the revoked device is gone from the list');
  check((await one.getByRole('status').textContent()).includes('revoked'), 'a notice confirms the revocation');

  await two.reload();
  check(two.url().startsWith(`${base}/login`), 'the revoked phone is back on the login page');

  await one.getByRole('link', { name: 'Change password' }).click();
  await one.waitForURL(`${base}/account/password`);
  await one.getByLabel('Current password').fill(password);
  await one.getByLabel('New password').fill(newPassword);
  await one.screenshot({ path: `${shots}/06-change-password.png`, fullPage: true });
  await one.getByRole('button', { name: 'Change password' }).click();
  await one.waitForURL(/\/dashboard/);
  check((await one.getByRole('status').textContent()).includes('password was changed'), 'the change is confirmed');
  await one.screenshot({ path: `${shots}/07-password-changed.png`, fullPage: true });

  await one.getByRole('button', { name: 'Log out' }).first().click();
  await one.waitForURL(`${base}/login`);
  await one.goto(`${base}/dashboard`);
  check(one.url().startsWith(`${base}/login`), 'after logout the dashboard sends us to the login page');
  await signIn(one, newPassword);
  check(true, 'the new password works');
  await one.screenshot({ path: `${shots}/08-signed-in-again.png`, fullPage: true });

  check(problems.length === 0, `no console errors, CSP violations or failed requests: ${problems.join('; ')}`);
  console.log(`browser flow: ${checks} checks passed`);
} catch (e) {
  console.error(String(e?.stack || e));
  if (problems.length) console.error(`page problems: ${problems.join('; ')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
