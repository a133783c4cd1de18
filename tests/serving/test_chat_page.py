"""The chat page at ``/`` in headless Chromium (Debian's, driven by Playwright from ``chat_page.mjs``):
a reply streams in with its policy version, and its thumbs reach Kafka as Feedback events. (A reply from
a live canary's candidate, marked "· canary", is tested in test_canary.py.)"""

import json
import shutil
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from proto import events_pb2
from tests.conftest import ROOT, TopicReader
from tests.serving.conftest import MODEL

CHROMIUM = Path("/usr/bin/chromium")
SCRIPT = Path(__file__).with_name("chat_page.mjs")
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def browser_tools() -> None:
    """Fail, not skip, when the install step did not provide them; before the server starts (listed first)."""
    missing = [what for what, present in [
        (str(CHROMIUM), CHROMIUM.exists()),
        ("node", shutil.which("node") is not None),
        ("node_modules/playwright-core", (ROOT / "node_modules/playwright-core").is_dir()),
    ] if not present]
    if missing:
        pytest.fail(f"browser test tools missing: {', '.join(missing)}; run ./rlhf setup (scripts/install.sh)")


def drive_page(url: str, screenshot_dir: Path) -> dict:
    """Run chat_page.mjs against ``url``; return what it reports."""
    proc = subprocess.run(["node", str(SCRIPT), url, str(screenshot_dir), QUESTION],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"chat_page.mjs failed (screenshots in {screenshot_dir}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_chat_page_streams_a_reply_and_records_votes(browser_tools, server, broker, tmp_path):
    with closing(TopicReader(broker, "interactions")) as interactions, \
         closing(TopicReader(broker, "feedback")) as feedback:
        page = drive_page(server.url, tmp_path)

        assert page["pageErrors"] == [] and page["consoleErrors"] == []
        assert page["modelInfo"] == f"{MODEL} · serving policy v0"
        assert page["userMessage"] == QUESTION
        reply = page["reply"]
        assert reply["state"] == "done", page["errors"]
        assert reply["id"].startswith("chatcmpl-")
        assert (reply["policyVersion"], reply["canary"], reply["versionLabel"]) == ("0", "false", "policy v0")
        assert page["modelInfoAfterReply"] == f"{MODEL} · serving policy v0"
        assert reply["text"].strip()
        assert page["replyRenders"] > 1  # streamed in pieces

        # One browser, one server-issued identity: a signed, HttpOnly cookie, kept across a reload. The page
        # itself names no user.
        cookie = page["cookie"]
        user, _, signature = cookie["value"].partition(".")
        assert page["cookieBefore"] is None and user.startswith("anon-") and signature
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert page["cookieAfterReload"] == cookie["value"]
        first, second = page["chatRequests"]
        assert first == {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": True}
        assert second["messages"][:2] == [{"role": "user", "content": QUESTION},
                                          {"role": "assistant", "content": reply["text"]}]
        assert len(second["messages"]) == 3

        # Thumbs up, then down: the second vote replaces the first, on the page and in Kafka.
        assert page["votes"] == [
            {"vote": "up", "upPressed": "true", "downPressed": "false", "status": "Thanks, vote recorded"},
            {"vote": "down", "upPressed": "false", "downPressed": "true", "status": "Thanks, vote recorded"},
        ]
        up, down = feedback.read(2)
        assert (up.response_id, up.rating, up.user_id, up.policy_version) == (
            reply["id"], events_pb2.RATING_UP, user, 0)
        assert (down.response_id, down.rating, down.user_id) == (reply["id"], events_pb2.RATING_DOWN, user)
        assert up.created_at.ToNanoseconds() < down.created_at.ToNanoseconds()

        # The refused message is shown with the API's status and message, and logged nothing.
        [error] = page["errors"]
        assert error.startswith("Error 400: This model's maximum context length is 1024 tokens.")
        assert page["failedMessages"] == [second["messages"][2]["content"]]
        [event] = interactions.read(1)
        assert (event.response_id, event.user_id, event.policy_version) == (reply["id"], user, 0)
        assert event.response_text == reply["text"]
        assert event.session_id.startswith("session-")
        assert interactions.read(1, timeout_s=2) == []

    assert (tmp_path / "chat.png").stat().st_size > 0
