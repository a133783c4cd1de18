"""Start the project's services and a local Kafka broker as subprocesses, wait until they answer, stop them.

Used by the main job (loop/run.py) and by the end-to-end tests.
"""

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port(consecutive: int = 1) -> int:
    """A port on 127.0.0.1 such that it and the next ``consecutive - 1`` ports are free now."""
    while True:
        port = random.randint(20000, 60000)
        try:
            for p in range(port, port + consecutive):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed main job leaves no orphan (Linux)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Service:
    """A service subprocess ``python -m <module> [args] <port_flag> <port>``, ready when an HTTP path answers 200.

    It runs in its own session, so a Ctrl-C meant for the caller does not reach it: the caller decides the
    order of shutdown. Its output goes to ``log_path``.
    """

    def __init__(self, module: str, port: int, env: dict[str, str], log_path: Path, args: list[str] = (),
                 port_flag: str = "--port"):
        self.module, self.port, self.log_path = module, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **env}
        self.argv = [sys.executable, "-m", module, *args, port_flag, str(port)]
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def launch(self) -> "Service":
        """Start the process without waiting for it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        return self

    def wait_ready(self, ready_path: str = "/healthz", timeout_s: float = 240.0) -> "Service":
        """Wait until ``ready_path`` answers 200. Raises RuntimeError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"{self.module} not ready after {timeout_s}s; see {self.log_path}")

    def start(self, ready_path: str = "/healthz", timeout_s: float = 240.0) -> "Service":
        """Launch and wait until ready (see :meth:`wait_ready`)."""
        return self.launch().wait_ready(ready_path, timeout_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> None:
        """Send ``sig`` and wait for the process to exit (SIGKILL after ``timeout_s``); then kill what is
        left of its process group (vLLM's engine-core processes outlive a killed serving otherwise)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_group()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the group id is its pid
        except ProcessLookupError:
            pass

    def exit_code(self) -> int | None:
        """The process's exit status once it has exited (negative: killed by that signal), else None."""
        return None if self.proc is None else self.proc.poll()

    def restart(self) -> "Service":
        """After the process died: clear what is left of its process group and launch it again."""
        self._kill_group()
        self.restarts += 1
        return self.launch()


def kafka_ctl(action: str, port: int, data_dir: Path) -> None:
    """``deploy/kafka/kafka.sh <action>`` for the broker on ``port`` keeping its data in ``data_dir``."""
    env = {**os.environ, "RLHF_KAFKA_PORT": str(port), "RLHF_KAFKA_DATA_DIR": str(data_dir)}
    subprocess.run(["bash", str(ROOT / "deploy/kafka/kafka.sh"), action], env=env, check=True, timeout=180)
