"""The main job's supervision on real processes: a service killed with SIGKILL is restarted, and what its
process group left behind (as vLLM's engine core outlives a killed serving) is killed with it."""

import asyncio
import os
import signal
import sys
import time

import httpx

from loop.processes import Service, free_port
from loop.run import services_line, supervise

# A "service" that answers HTTP and, like serving, has a child process in its group.
SCRIPT = """
import http.server, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port=int(sys.argv[-1]), bind="127.0.0.1")
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def _eventually(check, timeout_s: float = 10.0) -> bool:
    """SIGKILL is delivered asynchronously: give the kernel a moment before judging."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_killed_service_is_restarted_and_its_orphans_killed(tmp_path):
    script = tmp_path / "svc.py"
    script.write_text(SCRIPT)
    svc = Service("svc", free_port(), {}, tmp_path / "svc.log")
    svc.argv = [sys.executable, str(script), "--port", str(svc.port)]
    svc.start("/")
    first = svc.proc.pid
    deadline = time.monotonic() + 10
    while len(_group_pids(first)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [p for p in _group_pids(first) if p != first]
    assert orphans, "the service's child did not start"

    async def scenario() -> None:
        stop = asyncio.Event()
        supervisor = asyncio.create_task(supervise([svc], stop))
        os.kill(first, signal.SIGKILL)
        for _ in range(200):  # restart delay 2 s, then readiness
            await asyncio.sleep(0.1)
            if svc.proc.pid != first:
                break
        stop.set()
        await supervisor

    try:
        asyncio.run(scenario())
        assert svc.proc.pid != first and svc.restarts == 1
        assert services_line([svc]) == "services: svc restarted 1×"
        svc.wait_ready("/", timeout_s=30)
        assert httpx.get(svc.url + "/", timeout=5).status_code == 200
        assert _eventually(lambda: not any(_alive(p) for p in orphans)), "the killed service's child outlived it"
    finally:
        svc.stop()
    assert _eventually(lambda: not _group_pids(svc.proc.pid)), "stop() left processes in the group"
