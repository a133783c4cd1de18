// Drives serving's chat page in headless Chromium for tests/serving/test_chat_page.py and prints what the
// page showed and sent as one JSON object; the test checks it against the events in Kafka.
// Usage: node chat_page.mjs <base-url> <screenshot-dir> <message>
import { chromium } from "playwright-core";

const [baseUrl, screenshotDir, message] = process.argv.slice(2);
const REPLY_TIMEOUT_MS = 180_000; // a whole reply on CPU, with other work on the machine
const TOO_LONG = "word ".repeat(3000); // over the test server's 1024-token context: a real API error

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium", // Debian's: Playwright's own browser download fails here
  // launch() starts from a fresh empty profile. Without the network flags Chromium keeps calling
  // Google's services, which this closed network refuses.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const result = { pageErrors: [], consoleErrors: [], chatRequests: [], votes: [] };
const page = await browser.newPage({ viewport: { width: 900, height: 720 } });
try {
  page.setDefaultTimeout(REPLY_TIMEOUT_MS);
  let expectingError = false; // Chromium logs a failed request's status as a console error
  page.on("console", (msg) => msg.type() === "error" && !expectingError && result.consoleErrors.push(msg.text()));
  page.on("pageerror", (error) => result.pageErrors.push(String(error)));
  page.on("request", (req) => {
    if (req.url().endsWith("/v1/chat/completions")) result.chatRequests.push(req.postDataJSON());
  });

  await page.goto(`${baseUrl}/`);
  const modelInfo = page.locator("#model-info");
  await modelInfo.filter({ hasText: "serving policy" }).waitFor();
  result.modelInfo = await modelInfo.textContent();
  const identity = async () => (await page.context().cookies()).find((c) => c.name === "rlhf_identity");
  result.cookieBefore = (await identity())?.value ?? null; // issued with the first API call, not the page

  // Count the reply's renders, to see it arrive in pieces rather than whole.
  await page.evaluate(() => {
    window.replyRenders = 0;
    new MutationObserver((records) => {
      window.replyRenders += records.filter((r) => r.target.matches?.(".assistant .bubble")).length;
    }).observe(document.getElementById("messages"), { childList: true, subtree: true });
  });
  const input = page.getByRole("textbox", { name: "Message" });
  await input.fill(message);
  await input.press("Enter");
  result.userMessage = await page.locator(".message.user .bubble").last().textContent();
  const reply = page.locator(".message.assistant").last();
  // The reply finishes or fails (then with an error shown).
  await page.locator('.message.assistant:not([data-state="streaming"]), p.error').first().waitFor();
  result.reply = await reply.evaluate((el) => ({
    state: el.dataset.state,
    id: el.dataset.responseId,
    policyVersion: el.dataset.policyVersion,
    canary: el.dataset.canary,
    versionLabel: el.querySelector(".version").textContent,
    text: el.querySelector(".bubble").textContent,
  }));
  result.errors = await page.locator("p.error").allTextContents();
  result.modelInfoAfterReply = await modelInfo.textContent();
  result.replyRenders = await page.evaluate(() => window.replyRenders);

  if (result.reply.state === "done") {
    const replyHandle = await reply.elementHandle();
    for (const [rating, name] of [["up", "Thumbs up: good reply"], ["down", "Thumbs down: bad reply"]]) {
      await reply.getByRole("button", { name }).click();
      await page.waitForFunction(
        ([el, rating]) => el.dataset.vote === rating || el.querySelector(".vote-status.error"),
        [replyHandle, rating],
      );
      result.votes.push(await reply.evaluate((el) => ({
        vote: el.dataset.vote,
        upPressed: el.querySelector('[data-rating="up"]').getAttribute("aria-pressed"),
        downPressed: el.querySelector('[data-rating="down"]').getAttribute("aria-pressed"),
        status: el.querySelector(".vote-status").textContent,
      })));
    }
    await page.screenshot({ path: `${screenshotDir}/chat.png` });

    // A second message, refused by the API: the page shows the error, and the request carried the history.
    expectingError = true;
    await input.fill(TOO_LONG);
    await page.getByRole("button", { name: "Send message" }).click();
    await page.locator("p.error").first().waitFor();
    expectingError = false;
    result.errors = await page.locator("p.error").allTextContents();
    result.failedMessages = await page.locator(".message.user.failed .bubble").allTextContents();
    await page.screenshot({ path: `${screenshotDir}/chat-error.png` });

    result.cookie = await identity();
    await page.reload();
    await modelInfo.filter({ hasText: "serving policy" }).waitFor();
    result.cookieAfterReload = (await identity())?.value;
  }
} catch (error) {
  result.failure = error.stack;
  process.exitCode = 1;
  await page.screenshot({ path: `${screenshotDir}/failure.png` });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
