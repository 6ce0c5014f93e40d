"""Third-party noise: quiet by default, all of it shown with ``TOOLKIT_LOG=debug`` (the CLI's ``-v``).

Loading a model makes the engine libraries log, warn and draw progress bars that say nothing
about the user's model. Each line is silenced where it comes from, never by editing installed files:

* ``Failed to load …/torchao/_C_mxfp8….so``: logger ``torchao``, when transformers' quantizers
  import torchao; a logging filter on that message.
* ``<enum …> is an Enum subclass … register_constant() … deprecated``: logger
  ``torch.utils._pytree``, torchao registering its enums; a logging filter.
* ``Failed to load CPU gemm_4bit_forward …`` and ``MatMul8bitLt: inputs will be cast …``:
  bitsandbytes' loggers; logging filters.
* transformers' warnings (``loss_type=None`` …): ``transformers.utils.logging.set_verbosity_error``.
* ``Loading weights`` (transformers' tqdm): ``transformers.utils.logging.set_tqdm_hook``.
* compressed-tensors' bars (``Compressing model``, ``Decompressing model`` …): plain tqdm with no
  switch, so :func:`no_library_bars` drops bar lines written to stderr during the load and the
  first forward (where it decompresses).
* gptqmodel's ``INFO``/``WARN`` lines and banner, on stdout from its import on: its LogBar logger,
  created first at ERROR level (:func:`quiet_gptqmodel`).
* mlx-lm's ``[INFO] Quantized model with … bits per weight``: a ``print``; :func:`library_output`
  around the call.
* ``torch.jit.script_method`` is deprecated (DeprecationWarning, torch.utils.mkldnn's import):
  ``warnings.filterwarnings`` on its message and module.
* llama.cpp's own log: off unless its ``verbose`` option or ``TOOLKIT_LOG=debug``.

toolkit's own progress bars (compare, variant builds) and huggingface_hub's download bars stay.
:func:`quiet` is applied when a backend module is imported (``toolkit.backends.backend_module``)
and again at each load, so the CLI, notebooks and compare's child processes all get it. This module
imports no engine: each library is configured only once it is imported.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from typing import Any, Iterator

ENV = "TOOLKIT_LOG"

# logger -> the start of (or a phrase in) the messages it drops
_FILTERS = {
    "torchao": ("Failed to load",),
    "torch.utils._pytree": ("register_constant() on Enum subclasses is deprecated",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
    "bitsandbytes.autograd._functions": ("MatMul8bitLt: inputs will be cast",),
}
# Python warnings: (message regex, category, module regex of the warning's origin)
_WARNINGS = (
    # torch.utils.mkldnn decorates with it on import (torch's inductor imports it, e.g. for bitsandbytes)
    (r"`torch\.jit\.script_method` is deprecated", DeprecationWarning, r"torch\.jit"),
)
_done: set[str] = set()


def verbose() -> bool:
    """Whether third-party logs are shown: ``TOOLKIT_LOG=debug`` (set by the CLI's ``-v``)."""
    return os.environ.get(ENV, "").strip().lower() == "debug"


class _Drop(logging.Filter):
    def __init__(self, phrases: tuple[str, ...]) -> None:
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not any(p in text for p in self.phrases)


def quiet() -> None:
    """Silence the known noise of the libraries imported so far (and, through logger filters, of
    those imported later). Idempotent; does nothing under ``TOOLKIT_LOG=debug``."""
    if verbose():
        return
    if "filters" not in _done:
        _done.add("filters")
        for name, phrases in _FILTERS.items():
            logging.getLogger(name).addFilter(_Drop(phrases))
        for message, category, module in _WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if "transformers" not in _done and "transformers" in sys.modules:
        _done.add("transformers")
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        if hasattr(tlog, "set_tqdm_hook"):  # transformers' own bars only; huggingface_hub's downloads keep theirs
            tlog.set_tqdm_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))


def quiet_gptqmodel() -> None:
    """Make gptqmodel silent before it is imported: it logs through LogBar's shared logger, to
    stdout, from its first import on (banner, environment, kernel choices). Creating that logger
    first and raising its level is logbar's own API; creating it prints one empty line, dropped."""
    if verbose() or "gptqmodel" in _done:
        return
    _done.add("gptqmodel")
    try:
        from logbar import LogBar
    except ImportError:
        return
    with contextlib.redirect_stdout(io.StringIO()):
        LogBar.shared().setLevel(logging.ERROR)


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """``print()`` output of a library call: dropped, or on stderr under ``TOOLKIT_LOG=debug``
    (stdout is for the command's result)."""
    with contextlib.redirect_stdout(sys.stderr if verbose() else io.StringIO()):
        yield


# a tqdm line: "desc:  40%|████      | 4/10 [00:01<00:02, 3.1it/s]"
_BAR = re.compile(r"\d+%\||\| *[\d.]+[kMG]?/[\d.?]+[kMG]? \[")


class _NoBars:
    """stderr without tqdm's bar lines (and the newline a closing bar writes)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._in_bar = False

    def write(self, text: str) -> int:
        if _BAR.search(text) or (self._in_bar and not text.strip()):
            self._in_bar = bool(_BAR.search(text))
            return len(text)
        self._in_bar = False
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding...
        return getattr(self._stream, name)


@contextlib.contextmanager
def no_library_bars() -> Iterator[None]:
    """While a library loads a model: its tqdm bars that have no switch of their own
    (compressed-tensors') are not drawn; everything else written to stderr is."""
    if verbose():
        yield
        return
    saved = sys.stderr
    sys.stderr = _NoBars(saved)
    try:
        yield
    finally:
        sys.stderr = saved
