"""A saved recipe: how a model was planned to run, and in which environment.

``Recipe`` is a pure value (model, revision, backend, quantization, dtype, context, batch, optional
bench/compare options) plus what it was recorded with: library versions, Python, platform and the
device. ``Recipe.load`` warns when the current environment differs, and ``check()`` lists how.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from toolkit import capabilities as caps
from toolkit.errors import BackendUnavailable, InvalidSpec
from toolkit.facts.devices import Device
from toolkit.hub.ids import is_hub_id
from toolkit.measuring.environment import environment

RECIPE_DTYPES = (*caps.DTYPES, "auto")
_DEVICE_KEYS = ("kind", "name", "total_bytes", "count", "compute_capability")


class RecipeMismatch(UserWarning):
    """A loaded recipe was recorded with other library versions, another device or model revision."""


def current_environment() -> dict:
    """What a recipe records: toolkit, Python, platform and the installed library versions."""
    return environment(devices=False)


def _fmt_device(d: dict) -> str:
    total = d.get("total_bytes") or 0
    count = d.get("count") or 1
    size = f"{total / 2**30:.0f} GiB" if total else "? GiB"
    return f"{d.get('kind')} {(str(count) + 'x') if count > 1 else ''}{size}" + (
        f" ({d['name']})" if d.get("name") and d.get("kind") != "cpu" else "")


def _is_hub_id(model: str) -> bool:
    return is_hub_id(model) and not os.path.exists(model)


@dataclass
class Recipe:
    """How to run a model, and the environment it was recorded in. Pure value; see ``from_plan``."""

    # what to run
    model: str
    revision: str | None = None
    # how the planner chose to run it
    backend: str | None = None
    quantization: str | None = None
    dtype: str | None = None
    max_context: int | None = None
    batch: int = 1
    # how to measure it
    bench: dict | None = None
    compare: dict | None = None
    # what it was recorded with
    environment: dict = field(default_factory=dict)
    device: dict | None = None

    def __post_init__(self) -> None:
        _validate(self)

    # ----- construction

    @classmethod
    def from_plan(cls, plan: Any, revision: str | None = None, *, bench: dict | None = None,
                  compare: dict | None = None) -> Recipe:
        """Record a ``Plan``'s choices with the current environment.

        Args:
            plan: A ``toolkit.Plan``.
            revision: Hub commit of the model; for a hub id, default the cached ``main`` commit.
            bench: Options for ``toolkit.bench`` to store with the recipe.
            compare: Options for ``toolkit.compare`` to store with the recipe.
        """
        if revision is None and _is_hub_id(plan.model):
            from toolkit.hub.models import cached_commit

            revision = cached_commit(plan.model)
        return cls(model=plan.model, revision=revision, backend=plan.backend, quantization=plan.quantization,
                   dtype=plan.dtype, max_context=plan.max_context, batch=plan.batch, bench=bench, compare=compare,
                   environment=current_environment(), device=dict(plan.device) if plan.device else None)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """Build from a dict (as saved), validating keys and choices.

        Raises:
            InvalidSpec: Unknown keys, a missing model, or a value outside the valid choices (named).
        """
        if not isinstance(d, dict):
            raise InvalidSpec(f"a recipe must be a mapping, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise InvalidSpec(f"unknown recipe key(s) {', '.join(unknown)}: valid keys are {', '.join(names)}")
        if not d.get("model"):
            raise InvalidSpec("a recipe needs a 'model' (folder, .gguf file or hub id)")
        return cls(**d)

    def to_dict(self) -> dict:
        """Return a JSON/YAML-ready dict."""
        return asdict(self)

    # ----- files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the recipe: YAML for ``.yaml``/``.yml`` (needs PyYAML), JSON otherwise.

        Returns:
            The path written.
        """
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() in (".yaml", ".yml"):
            text = _yaml().safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, check: bool = True) -> Recipe:
        """Read a recipe; warn (``RecipeMismatch``) listing what differs from now.

        Args:
            path: A ``.json``, ``.yaml`` or ``.yml`` file.
            check: Compare the recorded environment, device and revision with the current ones.

        Raises:
            InvalidSpec: The file does not parse or holds an invalid recipe.
            BackendUnavailable: A YAML file and PyYAML is not installed.
        """
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            yaml = _yaml()
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise InvalidSpec(f"{path} is not valid YAML ({e})") from None
        else:
            try:
                data = json.loads(text)
            except ValueError as e:
                raise InvalidSpec(f"{path} is not valid JSON ({e})") from None
        recipe = cls.from_dict(data)
        if check:
            diffs = recipe.check()
            if diffs:
                warnings.warn(f"recipe {path.name} was recorded elsewhere: " + "; ".join(diffs), RecipeMismatch,
                              stacklevel=2)
        return recipe

    # ----- use

    def to_plan(self, device: Any = None):
        """Plan again with the recorded wishes.

        Args:
            device: A ``Device`` or spec; default the recorded device (else this machine).

        Returns:
            A ``toolkit.Plan``.
        """
        from toolkit.planning.plan import plan

        if self.backend == "openai":
            raise InvalidSpec("an openai recipe runs against a server: there is nothing to plan locally")
        if device is None and self.device:
            d = {k: v for k, v in self.device.items() if k in {f.name for f in fields(Device)}}
            if d.get("compute_capability") is not None:
                d["compute_capability"] = tuple(d["compute_capability"])
            device = Device(**d)
        return plan(self.model, device, backend=self.backend, quantization=self.quantization,
                    dtype=None if self.dtype in (None, "auto") else self.dtype, context=self.max_context,
                    batch=self.batch)

    def check(self, device: Any = None) -> list[str]:
        """Differences between what was recorded and what is here now.

        Args:
            device: The device to compare with; default this machine's best device (probed).

        Returns:
            One line per difference (versions, Python, platform, device, model revision); empty
            when everything matches.
        """
        out = []
        now = current_environment()
        rec = self.environment or {}
        for key in [k for k in now if k in rec] + [k for k in rec if k not in now]:
            was, cur = rec.get(key), now.get(key)
            if was == cur:
                continue
            if key == "platform":
                out.append(f"platform: recorded {was}, now {cur}")
            elif key == "python":
                out.append(f"python {was} recorded, {cur} running")
            else:
                out.append(f"{key} {was or 'absent'} recorded, {cur + ' installed' if cur else 'not installed'}")
        if self.device:
            from toolkit.facts.probe import device_for

            dev = device if isinstance(device, Device) else device_for(kind=device) if device else device_for()
            cur_d = dev.to_dict()
            if any(_norm(self.device.get(k)) != _norm(cur_d.get(k)) for k in _DEVICE_KEYS if k in self.device):
                out.append(f"device: recorded {_fmt_device(self.device)}, now {_fmt_device(cur_d)}")
        if self.revision and _is_hub_id(self.model):
            from toolkit.hub.models import cached_commit, repo_folder

            if not (repo_folder(self.model) / "snapshots" / self.revision).is_dir():
                cached = cached_commit(self.model)
                out.append(f"model {self.model}: revision {self.revision} recorded, "
                           + (f"cached main is {cached}" if cached else "not in the hub cache")
                           + " (fetch it with revision=...)")
        return out


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _validate(r: Recipe) -> None:
    if not isinstance(r.model, str) or not r.model:
        raise InvalidSpec(f"recipe model must be a non-empty string, got {r.model!r}")
    if r.backend is not None and r.backend not in caps.BACKENDS:
        raise InvalidSpec(f"unknown backend {r.backend!r}: valid backends are {', '.join(caps.BACKENDS)}")
    if r.quantization is not None:
        q = str(r.quantization).lower()
        if not caps.is_quantization(q) or not re.fullmatch(r"[a-z0-9_-]+", q):
            raise InvalidSpec(f"unknown quantization {r.quantization!r}: valid quantizations are "
                              f"{', '.join(caps.QUANTIZATIONS)} or gguf-<type> (e.g. gguf-q4_k_m)")
        r.quantization = q
    if r.dtype is not None and r.dtype not in RECIPE_DTYPES:
        raise InvalidSpec(f"unknown dtype {r.dtype!r}: valid dtypes are {', '.join(RECIPE_DTYPES)}")
    if r.max_context is not None and (isinstance(r.max_context, bool) or not isinstance(r.max_context, int)
                                      or r.max_context < 1):
        raise InvalidSpec(f"max_context must be a positive integer or null, got {r.max_context!r}")
    if isinstance(r.batch, bool) or not isinstance(r.batch, int) or r.batch < 1:
        raise InvalidSpec(f"batch must be a positive integer, got {r.batch!r}")
    for name in ("bench", "compare", "device"):
        v = getattr(r, name)
        if v is not None and not isinstance(v, dict):
            raise InvalidSpec(f"recipe {name} must be a mapping of options or null, got {type(v).__name__}")
    if not isinstance(r.environment, dict):
        raise InvalidSpec(f"recipe environment must be a mapping, got {type(r.environment).__name__}")
    if r.revision is not None and not isinstance(r.revision, str):
        raise InvalidSpec(f"revision must be a string (branch, tag or commit), got {r.revision!r}")


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise BackendUnavailable("YAML recipes need PyYAML: pip install pyyaml (or save to a .json path)") from None
    return yaml
