// Usage: node screenshot.mjs BASE_URL USER PASSWORD OUT_DIR PAGE[:word,word]...
// Logs in with basic auth, opens each page, waits until its text shows every word,
// saves OUT_DIR/<page>.png and prints {texts: {page: visible text}, problems: {page: [...]}}
// as JSON for the test: problems lists the words still missing and every GraphQL request
// that failed or answered an error, so a failure says why the page stayed empty.
import { chromium } from "playwright-core";

const [base, username, password, outDir, ...pages] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const context = await browser.newContext({
  httpCredentials: { username, password },
  ignoreHTTPSErrors: true,
  viewport: { width: 1440, height: 900 },
});
const texts = {};
const problems = {};
const shows = (words) => words.every((word) => document.body.innerText.includes(word));
try {
  for (const spec of pages) {
    const [name, words = ""] = spec.split(":");
    const expected = words.split(",").filter(Boolean);
    const seen = (problems[name] = []);
    const page = await context.newPage();
    page.on("requestfailed", (request) => seen.push(`failed ${request.url()}: ${request.failure()?.errorText}`));
    page.on("response", (response) => {
      if (response.status() >= 400) seen.push(`HTTP ${response.status()} ${response.url()}`);
    });
    // "load", not "networkidle": the UI polls GraphQL for as long as it is open, so on a
    // busy host the network may never stay quiet for the 500 ms networkidle needs.
    await page.goto(`${base}/${name}`, { waitUntil: "load", timeout: 60000 });
    let shown = await page.waitForFunction(shows, expected, { timeout: 45000 }).then(() => true, () => false);
    if (!shown) {
      // A first query can be lost while the host is busy; a user would reload once too.
      seen.push("reloaded: the words were missing after 45 s");
      try {
        await page.reload({ waitUntil: "load", timeout: 60000 });
        shown = await page.waitForFunction(shows, expected, { timeout: 45000 }).then(() => true, () => false);
      } catch (error) {
        seen.push(`the reload failed: ${error.message.split("\n")[0]}`);
      }
    }
    if (!shown) {
      const text = await page.innerText("body");
      seen.push(`still missing after the reload: ${expected.filter((word) => !text.includes(word)).join(", ")}`);
    }
    await page.screenshot({ path: `${outDir}/${name}.png`, fullPage: true });
    texts[name] = await page.innerText("body");
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify({ texts, problems }));
