"""Servers on a free localhost port for the serve tests: an app in a uvicorn thread, or ``openglip serve``
as a child process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server(app):
    """Run ``app`` with uvicorn in a thread; yields its base URL; stops it (and its worker) at exit."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120.0) -> dict:
    """Poll ``url/v1/health`` until it answers; fail with the server's output if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"the server exited with code {process.returncode}:\n{out}")
        try:
            return httpx.get(f"{url}/v1/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the server at {url} did not answer within {timeout:.0f} s")


def cli_env() -> dict:
    """The environment for a child ``openglip``: this checkout's sources first, the venv's scripts on PATH."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


@contextlib.contextmanager
def cli_server(args: list[str], cwd: Path | None = None, shell_command: str | None = None):
    """Start ``openglip serve ARGS`` (or ``shell_command``) on a free port; yields (base URL, process)."""
    port = free_port()
    if shell_command is None:
        command = [sys.executable, "-m", "openglip.cli", "serve", *args, "--port", str(port)]
    else:
        command = shell_command.replace("{port}", str(port))
    process = subprocess.Popen(
        command,
        shell=shell_command is not None,
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so that the shell and the server stop together
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, process
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True``: SIGINT (uvicorn's graceful stop), SIGKILL after
    30 s."""
    if process.poll() is None:
        os.killpg(process.pid, 2)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(10)
