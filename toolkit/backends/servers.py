"""Local OpenAI-compatible servers for tests, benchmarks and notebooks: llama-cpp-python's server
on 127.0.0.1, started for a GGUF file and stopped by the caller."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from toolkit.errors import ToolkitError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llama_server(gguf_path: str | os.PathLike, port: int | None = None, *, n_ctx: int = 2048,
                       timeout: float = 30.0, log: str | os.PathLike | None = None) -> tuple[subprocess.Popen, str]:
    """Start llama-cpp-python's OpenAI-compatible server on 127.0.0.1 for a GGUF file.

    Returns:
        ``(process, base_url)``; the model name is the file's stem. Stop it with
        ``process.terminate()``.

    Raises:
        ToolkitError: when the server does not answer ``/v1/models`` within ``timeout`` seconds.
    """
    path = Path(gguf_path)
    port = port or _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--host", "127.0.0.1", "--port", str(port),
           "--model", str(path), "--model_alias", path.stem, "--n_ctx", str(n_ctx), "--n_threads", "1",
           "--logits_all", "true", "--interrupt_requests", "false"]
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ToolkitError(f"the llama.cpp server exited with code {process.returncode} while starting: "
                               f"run `{' '.join(cmd)}` to see why (the server needs llama-cpp-python[server])")
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=1) as response:
                if response.status == 200:
                    return process, base_url
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            time.sleep(0.2)
    process.terminate()
    raise ToolkitError(f"the llama.cpp server on port {port} did not answer within {timeout:.0f} s")

