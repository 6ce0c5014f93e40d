"""Run toolkit code in another process: one launcher, one result protocol.

Two shapes, for the two reasons toolkit starts processes:

* :func:`run` — a one-shot call in a fresh interpreter: honest memory figures (nothing the caller
  imported or allocated counts), isolation from libraries that patch global state, and a crash or
  an out-of-memory kill that becomes an :class:`Outcome` instead of ending the caller. Used by
  compare (one variant per process), the variant builders and the benchmarks.
* :class:`Worker` — a long-lived child that serves calls until it is told to stop, so that ending
  it gives all of its memory back. Used by the vLLM proxy.

The protocol of :func:`run`: the function is named ``"package.module:function"`` (or
``"path/to/file.py:function"``); it is called with JSON keyword arguments, plus ``arrays=`` (a
dict of numpy arrays) when the caller sent any. It returns a JSON-ready dict; numpy arrays it
puts under the key ``"arrays"`` (a dict) travel in an ``.npz`` file beside the JSON. Nothing is
pickled between processes in this shape.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import queue as queue_mod
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from toolkit.errors import ToolkitError

RESULT = "result.json"


@dataclass
class Outcome:
    """What a :func:`run` gave back.

    Attributes:
        ok: The function returned (``value`` holds its dict).
        value: The returned dict without its arrays, or None.
        arrays: The arrays it returned under ``"arrays"``.
        returncode: The process's exit code (negative: the signal that ended it).
        output: The last lines the process printed (stdout and stderr), for error messages.
        error: Why there is no value: the function's exception, or how the process ended.
    """

    ok: bool
    value: dict[str, Any] | None = None
    arrays: dict[str, Any] = field(default_factory=dict)
    returncode: int = 0
    output: str = ""
    error: str | None = None


def json_default(value: Any) -> Any:
    """JSON for the numpy scalars and paths that results carry."""
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def resolve(reference: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` or ``"file.py:function"`` reference names."""
    where, _, name = reference.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        hint = " (out of memory?)" if returncode == -9 else ""
        return f"killed by signal {-returncode}{hint}"
    hint = " (out of memory?)" if returncode == 137 else ""
    return f"exit code {returncode}{hint}"


def run(function: str, kwargs: dict[str, Any] | None = None, *, arrays: dict[str, Any] | None = None,
        log: str | os.PathLike | None = None, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
        timeout: float | None = None, python: str | None = None) -> Outcome:
    """Call ``function(**kwargs)`` in a fresh Python process and return its :class:`Outcome`.

    Args:
        function: ``"package.module:function"`` or ``"path/to/file.py:function"``.
        kwargs: JSON-ready keyword arguments.
        arrays: numpy arrays, passed to the function as ``arrays=``.
        log: A file that receives everything the process prints (else it is kept in memory and
            its tail goes into ``Outcome.output``).
        env: Environment variables added to this process's.
        cwd: The process's working folder.
        timeout: Seconds before the process is killed (the outcome then says so).
        python: The interpreter (default: this one).
    """
    with tempfile.TemporaryDirectory(prefix="toolkit-run-") as tmp:
        folder = Path(tmp)
        (folder / "call.json").write_text(json.dumps({"function": function, "kwargs": kwargs or {},
                                                      "arrays": bool(arrays)}, default=json_default))
        if arrays:
            import numpy as np

            np.savez(folder / "in.npz", **arrays)
        cmd = [python or sys.executable, "-m", "toolkit.launcher", str(folder)]
        environment = {**os.environ, **(env or {})}
        out = open(log, "w") if log else None  # noqa: SIM115 - closed below
        try:
            proc = subprocess.run(cmd, stdout=out or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=environment, cwd=cwd, timeout=timeout)
            returncode, printed = proc.returncode, proc.stdout or ""
        except subprocess.TimeoutExpired as exc:
            printed = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return Outcome(False, returncode=-9, output=_tail(printed, log),
                           error=f"the process ran past its {timeout:.0f} s limit and was killed")
        finally:
            if out is not None:
                out.close()
        output = _tail(printed, log)
        result = folder / RESULT
        if not result.exists():
            return Outcome(False, returncode=returncode, output=output,
                           error=f"the process ended with {_how_it_ended(returncode)}: {output}")
        data = json.loads(result.read_text())
        if "error" in data:
            return Outcome(False, returncode=returncode, output=output, error=data["error"])
        loaded: dict[str, Any] = {}
        if (folder / "out.npz").exists():
            import numpy as np

            with np.load(folder / "out.npz") as npz:
                loaded = {k: npz[k] for k in npz.files}
        return Outcome(True, data["value"], loaded, returncode, output)


def _tail(printed: str, log: str | os.PathLike | None, lines: int = 15) -> str:
    if log and Path(log).exists():
        printed = Path(log).read_text(errors="replace")
    return "\n".join(printed.strip().splitlines()[-lines:])


def _child(folder: str) -> int:
    """The child's side of :func:`run`."""
    d = Path(folder)
    call = json.loads((d / "call.json").read_text())
    kwargs = dict(call["kwargs"])
    try:
        if call["arrays"]:
            import numpy as np

            with np.load(d / "in.npz") as npz:
                kwargs["arrays"] = {k: npz[k] for k in npz.files}
        value = resolve(call["function"])(**kwargs)
        value = dict(value or {})
        arrays = value.pop("arrays", None)
        if arrays:
            import numpy as np

            np.savez(d / "out.npz", **arrays)
        (d / RESULT).write_text(json.dumps({"value": value}, default=json_default))
        return 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        text = f"{type(exc).__name__}: {exc}".strip()
        (d / RESULT).write_text(json.dumps({"error": text, "traceback": traceback.format_exc(limit=8)}))
        traceback.print_exc()
        return 1


# --- long-lived workers ----------------------------------------------------------------------------


class Worker:
    """A spawned child process that runs ``serve(requests, replies, *args)`` and answers calls.

    ``call(kind, name, *args)`` puts a request and waits for its reply: ``("ok", value)`` returns
    the value, ``("err", exception)`` raises it. The child is ended (asked, then terminated, then
    killed) by :meth:`close`, at interpreter exit, or when the object is collected. Requests and
    replies are pickled by multiprocessing, so they must be plain data or toolkit's own classes.
    """

    def __init__(self, serve: Callable[..., None], *args: Any, name: str = "toolkit-worker",
                 timeout_s: float = 600.0) -> None:
        import atexit
        import multiprocessing as mp
        import weakref

        ctx = mp.get_context("spawn")
        self.requests = ctx.Queue()
        self.replies = ctx.Queue()
        self.timeout_s = timeout_s
        self.process = ctx.Process(target=serve, args=(self.requests, self.replies, *args), name=name, daemon=False)
        self.process.start()
        self._finalizer = weakref.finalize(self, _end_process, self.process)
        atexit.register(self._finalizer)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def reply(self) -> Any:
        """Wait for the next reply; raise the child's exception, or ToolkitError if it died or hung."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                status, value = self.replies.get(timeout=0.5)
                break
            except queue_mod.Empty:
                if not self.process.is_alive():
                    raise ToolkitError(f"the {self.process.name} process exited (code {self.process.exitcode}) "
                                       "without answering; see its output above") from None
                if time.monotonic() > deadline:
                    raise ToolkitError(f"the {self.process.name} process did not answer within "
                                       f"{self.timeout_s:.0f} s") from None
        if status == "err":
            raise value
        return value

    def call(self, kind: str, name: str = "", *args: Any) -> Any:
        self.requests.put((kind, name, args))
        return self.reply()

    def close(self, goodbye: tuple[str, str, tuple] | None = ("exit", "", ())) -> None:
        """Ask the child to stop (``goodbye``), then end it whatever it answers."""
        try:
            if goodbye is not None and self.process.is_alive():
                self.requests.put(goodbye)
                try:
                    self.reply()
                except Exception:  # noqa: BLE001 - it is ended below either way
                    pass
        finally:
            _end_process(self.process)
            for q in (self.requests, self.replies):
                q.close()
                q.join_thread()


def portable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles, else a ToolkitError carrying its text and traceback."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-2000:]
        return ToolkitError(f"{type(exc).__name__}: {exc}\n(in a worker process)\n{tb}")


def _end_process(process: Any, timeout: float = 20.0) -> None:
    if process.pid is None:
        return
    process.join(timeout)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m toolkit.launcher FOLDER (internal: see toolkit.launcher.run)")
    raise SystemExit(_child(sys.argv[1]))
