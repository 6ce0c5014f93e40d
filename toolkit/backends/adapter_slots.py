"""The LoRA adapter slots of a loaded model: the public API (:meth:`load_adapter`, :meth:`set_adapter`,
:meth:`adapters`, :meth:`remove_adapter`) once, over the three hooks a backend that runs adapters
implements (``_load_adapter``, ``_set_adapter``, ``_remove_adapter``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from toolkit import capabilities as caps
from toolkit.errors import InvalidSpec


class AdapterSlots:
    """Mixed into :class:`toolkit.backends.base.Loaded`, which sets ``_lock``, ``_adapters`` and
    ``_active_adapter`` and provides ``backend``, ``target``, ``_check_open`` and ``unload``."""

    backend: str
    _lock: threading.RLock
    _adapters: dict[str, str]
    _active_adapter: str | None
    def _load_adapter(self, path: Path, name: str) -> None:
        """Load a LoRA adapter and check it fits the model, leaving the active adapter as it is."""
        raise InvalidSpec(f"the {self.backend} backend does not support LoRA adapters; "
                          f"{', '.join(caps.adapter_backends())} do")

    def _set_adapter(self, name: str | None) -> None:
        """Make ``name`` (a loaded adapter) the one applied, or none; nothing cached may outlive it."""
        raise NotImplementedError

    def _remove_adapter(self, name: str) -> None:
        """Free an adapter that is loaded and not active."""
        raise NotImplementedError

    # -- LoRA adapters --------------------------------------------------------------------------
    def load_adapter(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Load a LoRA adapter made for this model. It is not applied until :meth:`set_adapter`.

        Formats: a peft folder (``adapter_config.json`` + ``adapter_model.safetensors``) on hf, vllm
        and mlx; an mlx-lm adapter folder (``adapters.safetensors``) on mlx; a GGUF LoRA file (from
        llama.cpp's ``convert_lora_to_gguf.py``) on llamacpp; on openai, a path the vLLM server reads.

        Args:
            path: The adapter folder or file.
            name: What to call it; default: the folder's name, or the file's without its suffix.

        Returns:
            The adapter's name, for :meth:`set_adapter` and :meth:`remove_adapter`.

        Raises:
            ModelNotFound: nothing is at ``path``.
            InvalidModel: not an adapter this backend reads, or made for a model of other shapes.
            InvalidSpec: the name is taken, or this backend does not support adapters.
        """
        path = Path(path).expanduser()
        name = name or (path.stem if path.suffix in (".gguf", ".safetensors") else path.name)
        with self._lock:
            self._check_open()
            if name in self._adapters:
                raise InvalidSpec(f"an adapter named {name!r} is already loaded: pass another name= or "
                                  f"remove_adapter({name!r}) first")
            self._load_adapter(path, name)
            self._adapters[name] = str(path)
        return name

    def set_adapter(self, name: str | None) -> None:
        """Apply the loaded adapter ``name`` to every later stream, generate, generate_batch and
        logprobs call, in place of the one active before; ``None`` returns to the base model."""
        with self._lock:
            self._check_open()
            self._known_adapter(name)
            if name != self._active_adapter:
                self._set_adapter(name)
                self._active_adapter = name

    def adapters(self) -> list[str]:
        """Names of the loaded adapters, in load order."""
        return list(self._adapters)

    @property
    def active_adapter(self) -> str | None:
        """The adapter applied now, or ``None`` for the base model."""
        return self._active_adapter

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter (first returning to the base model if it is the active one)."""
        with self._lock:
            self._check_open()
            self._known_adapter(name)
            if name == self._active_adapter:
                self.set_adapter(None)
            self._remove_adapter(name)
            del self._adapters[name]

    def _activate_load_option(self, path: str | os.PathLike | None = None) -> None:
        """Load and apply the adapter the ``adapter`` load option names (default: this target's). An
        adapter that fails fails the load: the model is unloaded again."""
        path = path if path is not None else getattr(self.target.options, "adapter", None)
        if not path:
            return
        try:
            self.set_adapter(self.load_adapter(path))
        except BaseException:
            self.unload()
            raise

    def _known_adapter(self, name: str | None) -> None:
        if name is not None and name not in self._adapters:
            loaded = ", ".join(self._adapters) or "none"
            raise InvalidSpec(f"no adapter named {name!r} is loaded (loaded: {loaded}): load it with "
                              "load_adapter(path, name) first")
