"""Which models are already on this machine, whether each fits a device, and deleting them.

``models()`` lists the Hugging Face hub cache (``huggingface_hub.scan_cache_dir``) and any folders
the user names (a safetensors folder, a ``.gguf`` file, an MLX folder, or a folder holding such
models one level down). Each row is read with ``toolkit.inspect`` and, when a device is given,
planned with ``toolkit.plan``. Nothing here imports pandas, torch or huggingface_hub at import time.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from toolkit.errors import BackendUnavailable, InvalidSpec, ModelNotFound, NothingFits, ToolkitError
from toolkit.facts.devices import Device

COLUMNS = ["name", "path", "source", "format", "quantization", "params", "size_on_disk_bytes", "revision"]
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.gguf$")


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The hub cache folder, resolved like huggingface_hub does but at call time.

    huggingface_hub reads ``HF_HUB_CACHE``/``HF_HOME`` once at import; reading them here too means
    a notebook that changes them after importing huggingface_hub still gets the folder it asked for.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(os.path.expandvars(env)).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(home)).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def repo_folder(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/models--org--name`` for a model repo id."""
    return hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def cached_commit(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The commit a branch/tag points to in the local cache (``refs/<revision>``), or None."""
    ref = repo_folder(repo_id, cache_dir) / "refs" / (revision or "main")
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def _import_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise BackendUnavailable("listing the Hugging Face cache needs huggingface_hub: pip install 'toolkit[hub]'") from None
    return huggingface_hub


def _scan(cache_dir: str | os.PathLike | None) -> Any | None:
    """``HFCacheInfo`` of the cache, or None when there is no cache folder yet."""
    path = hub_cache_dir(cache_dir)
    if not path.is_dir():
        return None
    return _import_hub().scan_cache_dir(path)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size  # follows the snapshot symlink to its blob
    except OSError:
        return 0


def _folder_size(path: Path) -> int:
    if path.is_file():
        return _file_size(path)
    return sum(_file_size(p) for p in path.rglob("*") if p.is_file())


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or any(path.glob("*.safetensors")) or any(path.glob("*.gguf"))


def _ggufs(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.gguf") if p.is_file())


def _entries_in_dir(path: Path) -> list[tuple[str, Path]]:
    """(name, path) of each model a folder is or holds: GGUF files each count as one model."""
    if (path / "config.json").is_file() or any(path.glob("*.safetensors")):
        return [(path.name, path)]
    ggufs = _ggufs(path)
    if ggufs:
        # A folder of GGUF files usually holds one model in several quantizations: one row each.
        firsts = [g for g in ggufs if not _SHARD.search(g.name) or "-00001-of-" in g.name]
        return [(g.name, g) for g in firsts]
    return []


def _local_entries(path: Path) -> list[tuple[str, Path]]:
    if not path.exists():
        raise ModelNotFound(f"{path} does not exist: pass a model folder, a .gguf file or a folder of models")
    if path.is_file():
        return [(path.name, path)]
    found = _entries_in_dir(path)
    if found and found[0][1] == path:
        return found  # the folder is one model
    for child in sorted(path.iterdir()):  # a folder of models, one level down
        if child.is_dir() and _is_model_dir(child):
            found += [(f"{child.name}/{n}" if p != child else child.name, p) for n, p in _entries_in_dir(child)]
    return found or [(path.name, path)]  # listed with the inspect error, not dropped


def _resolve_device(device: Any) -> Any:
    from toolkit.facts.probe import device_for

    if device is None or isinstance(device, Device):
        return device
    if isinstance(device, str):
        return device_for() if device.lower() == "auto" else device_for(kind=device)
    raise InvalidSpec(f"device must be a Device, a spec like '24GiB' or 'T4', or 'auto'; got {device!r}")


def plan_summary(p: Any) -> str:
    """One line for a table cell: ``"hf none float32 ctx=2048"``."""
    return f"{p.backend} {p.quantization} {p.dtype} ctx={p.max_context}" + (f" batch={p.batch}" if p.batch > 1 else "")


def _row(name: str, path: Path, source: str, revision: str | None, size: int, device: Any) -> dict:
    from toolkit.facts.model_info import inspect
    from toolkit.planning.plan import plan

    row: dict[str, Any] = {"name": name, "path": str(path), "source": source, "format": None, "quantization": None,
                           "params": None, "size_on_disk_bytes": size, "revision": revision}
    if device is not None:
        row.update(fits=None, plan=None)
    row["error"] = None
    try:
        info = inspect(path)
    except Exception as e:  # a listing never stops at one broken model: the row says what is wrong
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    row.update(format=info.format, quantization=info.quantization, params=info.params)
    if device is not None:
        try:
            p = plan(info, device)
            row.update(fits=True, plan=plan_summary(p))
        except (NothingFits, InvalidSpec) as e:
            # the first sentence holds the verdict ("needs X but the budget is Y"); the rest is advice
            row.update(fits=False, plan=str(e).split(". Fix:")[0])
        except ToolkitError as e:
            row.update(fits=False, plan=f"{type(e).__name__}: {e}")
    return row


def _cache_rows(cache_dir: str | os.PathLike | None, device: Any) -> list[dict]:
    info = _scan(cache_dir)
    if info is None:
        return []
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            snap = Path(rev.snapshot_path)
            ggufs = _ggufs(snap) if not (snap / "config.json").is_file() else []
            if ggufs:
                for name, g in _entries_in_dir(snap):
                    parts = [g] if not _SHARD.search(g.name) else sorted(snap.glob(_SHARD.sub("", g.name) + "-*-of-*.gguf"))
                    rows.append(_row(repo.repo_id, g, "hf-cache", rev.commit_hash, sum(map(_file_size, parts)), device))
            else:
                rows.append(_row(repo.repo_id, snap, "hf-cache", rev.commit_hash, rev.size_on_disk, device))
    return rows


def models(paths: list[str | os.PathLike] | str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
           device: Any = None, include_cache: bool = True):
    """List the models on this machine.

    Args:
        paths: Folders or files to list besides the hub cache: a model folder, a ``.gguf`` file, an
            MLX folder, or a folder holding such models one level down.
        cache_dir: Hub cache folder (default: ``HF_HUB_CACHE``, else ``HF_HOME/hub``).
        device: A ``Device``, a spec (``"24GiB"``, ``"T4"``, ``"cpu:16GiB"``) or ``"auto"`` to probe
            this machine; adds the ``fits`` and ``plan`` columns.
        include_cache: List the hub cache too (default True).

    Returns:
        A pandas DataFrame with columns ``name, path, source ("hf-cache"|"local"), format,
        quantization, params, size_on_disk_bytes, revision`` (+ ``fits, plan``) and ``error``
        (None unless the model could not be inspected).

    Raises:
        ModelNotFound: A named path does not exist.
        BackendUnavailable: huggingface_hub is missing and the cache folder exists.
    """
    import pandas as pd

    dev = _resolve_device(device)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rows = _cache_rows(cache_dir, dev) if include_cache else []
    for p in paths or []:
        path = Path(os.path.expanduser(os.fspath(p)))
        for name, entry in _local_entries(path):
            rows.append(_row(name, entry, "local", None, _folder_size(entry), dev))
    cols = COLUMNS + (["fits", "plan"] if dev is not None else []) + ["error"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("params", "size_on_disk_bytes"):
        df[c] = df[c].astype("Int64")
    return df


def delete_model(name_or_path: str | os.PathLike, *, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None, dry_run: bool = False) -> int:
    """Delete a cached hub model (one revision or all) or a local model folder/file.

    Args:
        name_or_path: A repo id in the hub cache (``org/name``), a snapshot path from the
            listing, or a local model folder or ``.gguf`` file.
        revision: Commit (or a unique prefix of one) of a cached repo; default: every revision.
        cache_dir: Hub cache folder (default: ``HF_HUB_CACHE``, else ``HF_HOME/hub``).
        dry_run: Only report the bytes that would be freed.

    Returns:
        Bytes freed (or that would be freed).

    Raises:
        ModelNotFound: Nothing in the cache or on disk matches; the message lists what does.
        InvalidSpec: A local path that is not a model folder or file (refused, to protect the disk).
    """
    target = os.fspath(name_or_path)
    info = _scan(cache_dir)
    if info is not None:
        hashes = _cache_revisions(info, target, revision)
        if hashes:
            strategy = info.delete_revisions(*hashes)
            freed = int(strategy.expected_freed_size)
            if not dry_run:
                strategy.execute()
            return freed
    path = Path(os.path.expanduser(target))
    if path.exists():
        if not (path.suffix == ".gguf" and path.is_file()) and not (path.is_dir() and _is_model_dir(path)):
            raise InvalidSpec(f"{path} is not a model folder (config.json, *.safetensors or *.gguf) or a .gguf file: "
                              "refusing to delete it")
        size = _folder_size(path)
        if not dry_run:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return size
    cached = sorted({r.repo_id for r in info.repos}) if info is not None else []
    raise ModelNotFound(f"{target!r} is neither a cached model nor a local path"
                        + (f"; cached models: {', '.join(cached)}" if cached else "")
                        + ". See `toolkit models` for what is on disk")


def _cache_revisions(info: Any, target: str, revision: str | None) -> list[str]:
    resolved = None
    if os.path.exists(target):
        # resolve the folders only: a snapshot file is a symlink to a blob outside the snapshot
        p = os.path.abspath(target)
        resolved = os.path.realpath(p) if os.path.isdir(p) else os.path.join(os.path.realpath(os.path.dirname(p)),
                                                                             os.path.basename(p))
    for repo in info.repos:
        for rev in repo.revisions:
            # a snapshot path (or a file inside it) from the listing names one revision
            snap = os.path.realpath(rev.snapshot_path)
            if resolved and (resolved == snap or resolved.startswith(snap + os.sep)):
                return [rev.commit_hash]
        if repo.repo_id != target:
            continue
        revs = list(repo.revisions)
        if revision is None:
            return [r.commit_hash for r in revs]
        hit = [r.commit_hash for r in revs if r.commit_hash.startswith(revision) or revision in r.refs]
        if len(hit) != 1:
            have = ", ".join(f"{r.commit_hash[:12]} ({','.join(sorted(r.refs)) or 'detached'})" for r in revs)
            raise ModelNotFound(f"{target} has {'no' if not hit else 'several'} cached revision matching "
                                f"{revision!r}; cached: {have}")
        return hit
    return []
