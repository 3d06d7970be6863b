// Usage: node screenshot.mjs BASE_URL USER PASSWORD OUT_DIR PAGE[:word,word]...
// Logs in with basic auth, opens each page, waits until its text shows every word,
// saves OUT_DIR/<page>.png and prints {page: visible text} as JSON for the test.
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
try {
  for (const spec of pages) {
    const [name, words = ""] = spec.split(":");
    const expected = words.split(",").filter(Boolean);
    const page = await context.newPage();
    // "load", not "networkidle": the UI polls GraphQL for as long as it is open, so on a
    // busy host the network may never stay quiet for the 500 ms networkidle needs.
    await page.goto(`${base}/${name}`, { waitUntil: "load", timeout: 60000 });
    await page.waitForFunction(
      (words) => words.every((word) => document.body.innerText.includes(word)),
      expected, { timeout: 60000 },
    ).catch(() => {});  // the test reports what was missing, with the screenshot
    await page.screenshot({ path: `${outDir}/${name}.png`, fullPage: true });
    texts[name] = await page.innerText("body");
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(texts));
