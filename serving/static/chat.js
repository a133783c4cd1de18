// The chat page. It uses only the public API (/v1/models, /v1/chat/completions, /v1/feedback), so what it
// does any other client can do; the conversation lives in the page and is sent whole with each message.
// It sends no API key: it needs serving's anonymous mode, where the server gives each browser a signed
// identity cookie (the browser sends it back by itself), so the page never chooses who it is.

const $ = (id) => document.getElementById(id);
const messagesEl = $("messages");
const prompt = $("prompt");
const sendButton = $("send");
const newChatButton = $("new-chat");

class ApiError extends Error {}

let model = null;
let history = []; // {role, content} of the turns that got a complete reply
let sessionId = randomId("session"); // recorded as the events' session id: one per conversation
let busy = false;

function randomId(prefix) {
  // getRandomValues, unlike randomUUID, also works on plain-http origins other than localhost.
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

// "Error <status>: <message>" from OpenAI's error envelope, or from whatever body came back.
async function apiError(response) {
  const text = await response.text();
  let message = text || response.statusText;
  try {
    message = JSON.parse(text).error.message ?? message;
  } catch {
    // not the envelope: keep the raw text
  }
  return new ApiError(`Error ${response.status}: ${message}`);
}

function describe(error) {
  return error instanceof ApiError ? error.message : `Request failed: ${error.message}`;
}

function scrollToEnd() {
  messagesEl.scrollTop = messagesEl.scrollHeight;
}

function showError(text) {
  const p = document.createElement("p");
  p.className = "error";
  p.setAttribute("role", "alert");
  p.textContent = text;
  messagesEl.append(p);
  scrollToEnd();
}

// "v4", or "v4 · canary" when a live canary's candidate answered (this user is in its share of users).
function versionName(version, canary) {
  return canary ? `v${version} · canary` : `v${version}`;
}

function showServing(version, canary = false) {
  $("model-info").textContent = `${model} · serving policy ${versionName(version, canary)}`;
}

async function loadModel() {
  const response = await fetch("/v1/models");
  if (!response.ok) throw await apiError(response);
  const card = (await response.json()).data[0];
  model = card.id;
  showServing(card.policy_version);
}

function addUserMessage(content) {
  $("hint")?.remove();
  const article = document.createElement("article");
  article.className = "message user";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = content;
  article.append(bubble);
  messagesEl.append(article);
  scrollToEnd();
  return article;
}

function addReply() {
  const reply = $("reply-template").content.firstElementChild.cloneNode(true);
  messagesEl.append(reply);
  scrollToEnd();
  return reply;
}

function setVersion(reply, version, canary = false) {
  reply.dataset.policyVersion = version;
  reply.dataset.canary = String(canary);
  reply.querySelector(".version").textContent = `policy ${versionName(version, canary)}`;
}

// The `data:` payloads of a server-sent event stream, in order (an event ends at a blank line).
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop();
    for (const event of events) {
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}

// Streams the reply to `messages` into a new reply element; returns its text once complete.
async function streamReply(messages) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json", "x-session-id": sessionId },
    body: JSON.stringify({ model, messages, stream: true }),
  });
  if (!response.ok) throw await apiError(response);
  const reply = addReply();
  const bubble = reply.querySelector(".bubble");
  setVersion(reply, response.headers.get("x-policy-version"));
  let text = "";
  let complete = false;
  try {
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") {
        complete = true;
        break;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(`Error during the reply: ${chunk.error.message}`);
      reply.dataset.responseId = chunk.id;
      const token = chunk.choices[0]?.feedback_token; // the first chunk's: this browser's right to vote on it
      if (token) reply.dataset.feedbackToken = token;
      setVersion(reply, chunk.policy_version, chunk.canary === true);
      text += chunk.choices[0]?.delta?.content ?? "";
      bubble.textContent = text;
      scrollToEnd();
    }
    if (!complete) throw new ApiError("Error: the connection closed before the reply was complete.");
  } catch (error) {
    reply.dataset.state = "error"; // no thumbs: the reply may not have been recorded
    throw error;
  } finally {
    bubble.removeAttribute("aria-busy");
  }
  reply.dataset.state = "done";
  showServing(reply.dataset.policyVersion, reply.dataset.canary === "true");
  for (const button of reply.querySelectorAll(".vote")) button.hidden = false;
  return text;
}

function setBusy(value) {
  busy = value;
  sendButton.disabled = value;
  newChatButton.disabled = value;
}

async function send() {
  const content = prompt.value.trim();
  if (!content || busy) return;
  setBusy(true);
  prompt.value = "";
  const message = addUserMessage(content);
  const turn = [...history, { role: "user", content }];
  try {
    if (!model) await loadModel();
    const reply = await streamReply(turn);
    history = [...turn, { role: "assistant", content: reply }];
  } catch (error) {
    message.classList.add("failed"); // it stays out of the history sent next time
    showError(describe(error));
  } finally {
    setBusy(false);
    prompt.focus();
  }
}

async function vote(reply, rating) {
  // The API has no "unvote": clicking the selected thumb again changes nothing.
  if (reply.dataset.vote === rating || reply.dataset.voting) return;
  const buttons = reply.querySelectorAll(".vote");
  const status = reply.querySelector(".vote-status");
  reply.dataset.voting = "true";
  buttons.forEach((button) => (button.disabled = true));
  try {
    const response = await fetch("/v1/feedback", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        response_id: reply.dataset.responseId, feedback_token: reply.dataset.feedbackToken, rating,
      }),
    });
    if (!response.ok) throw await apiError(response);
    reply.dataset.vote = rating; // the server replaced this user's earlier vote, if any
    buttons.forEach((button) => button.setAttribute("aria-pressed", String(button.dataset.rating === rating)));
    status.classList.remove("error");
    status.textContent = "Thanks, vote recorded";
  } catch (error) {
    status.classList.add("error");
    status.textContent = `Vote not recorded. ${describe(error)}`;
  } finally {
    delete reply.dataset.voting;
    buttons.forEach((button) => (button.disabled = false));
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

messagesEl.addEventListener("click", (event) => {
  const button = event.target.closest(".vote");
  if (button) vote(button.closest(".message"), button.dataset.rating);
});

newChatButton.addEventListener("click", () => {
  history = [];
  sessionId = randomId("session");
  messagesEl.replaceChildren();
  prompt.focus();
});

loadModel().catch((error) => {
  $("model-info").textContent = "Model unavailable";
  showError(describe(error));
});
prompt.focus();
