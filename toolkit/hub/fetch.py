"""Download only the files a backend needs from the Hugging Face hub, and check they are whole.

``fetch(model)`` lists the repository, picks files for the backend (configs, tokenizer and
``*.safetensors`` for hf/vllm/mlx; one GGUF of the asked quantization for llamacpp; pickles only
when allowed and nothing else exists), hands them to ``huggingface_hub.snapshot_download``
(its progress bars, its cache, its resume of interrupted transfers) and then checks that every
shard is there and every safetensors/GGUF header parses.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

from toolkit import capabilities as caps
from toolkit.errors import BackendUnavailable, InvalidModel, InvalidSpec, ModelNotFound, UnsafeCheckpoint
from toolkit.formats.gguf import read_gguf
from toolkit.formats.safetensors import PICKLE_SUFFIXES, read_safetensors_header
from toolkit.hub.ids import is_hub_id
from toolkit.hub.models import cached_commit, hub_cache_dir, repo_folder

# Small top-level files a loader reads besides the weights: configs, tokenizers, chat templates.
META_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
# Pickles that are training state, never weights.
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "scaler")
# Words that mark a file as a quantized variant (e.g. model-4bit.safetensors, gptq/...).
_QUANT_TAG = re.compile(r"(?<![a-z0-9])(gptq|awq|int4|int8|[248]bit|nf4|fp8|fp4|w4a16|w8a8|q[2-8](_\w+)?|mlx)(?![a-z0-9])")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
INDEX = "model.safetensors.index.json"


def _env_true(*names: str) -> bool:
    return any(os.environ.get(n, "").strip().upper() in ("1", "ON", "YES", "TRUE") for n in names)


def _top(name: str) -> bool:
    return "/" not in name


def _quant_token(quantization: str) -> str:
    return quantization.lower().removeprefix("gguf-")


def _matches(name: str, token: str) -> bool:
    # bounded so that q4_k does not match q4_k_m, and q4_0 not q4_0_4_4
    return re.search(rf"(?<![a-z0-9_]){re.escape(token)}(?![a-z0-9_])", name.lower()) is not None


def _choose_gguf(files: list[str], quantization: str | None, include_quantized: bool, model: str) -> list[str]:
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    if not ggufs:
        raise InvalidSpec(f"{model} has no GGUF files, which llamacpp needs: use backend hf/vllm, or a GGUF repo")
    if include_quantized:
        return ggufs
    weights = [f for f in ggufs if not Path(f).name.lower().startswith("mmproj")]  # vision projectors
    if quantization:
        hits = [f for f in weights if _matches(f, _quant_token(quantization))]
        if not hits:
            raise InvalidSpec(f"{model} has no GGUF file for {quantization}: its GGUF files are {', '.join(ggufs)}; "
                              "pass quantization='gguf-<type>' naming one of them")
    else:
        hits = weights
    unsharded = [f for f in hits if not _SHARD.search(f)]
    if unsharded:
        if len(unsharded) == 1 or quantization:
            return [min(unsharded, key=len)]
    else:
        first = _SHARD.sub("", hits[0])
        shards = [f for f in hits if _SHARD.sub("", f) == first]
        if quantization or len(shards) == len(hits):
            return shards
    raise InvalidSpec(f"{model} has several GGUF files ({', '.join(ggufs)}): pass quantization='gguf-<type>' "
                      "(e.g. gguf-q4_k_m) to pick one")


def select_files(files: list[str], *, model: str = "model", backend: str | None = None,
                 quantization: str | None = None, include_quantized: bool = False,
                 allow_pickle: bool = False) -> tuple[str, list[str]]:
    """Pick the repo files a backend needs. Pure: works on a file listing.

    Returns:
        ``(backend, files)``; the backend is inferred when None (gguf-* or a GGUF-only repo:
        llamacpp; mlx-*: mlx; else hf).

    Raises:
        InvalidSpec: The backend cannot use this repo, or the GGUF quantization is absent.
        UnsafeCheckpoint: Only pickle weights exist and ``allow_pickle`` is False.
        InvalidModel: The repo has no weights toolkit can use.
    """
    q = quantization.lower() if quantization else None
    safetensors = [f for f in files if f.endswith(".safetensors")]
    has_gguf = any(f.lower().endswith(".gguf") for f in files)
    pickles = [f for f in files if _top(f) and f.endswith(PICKLE_SUFFIXES) and not f.startswith(_NOT_WEIGHTS)]
    if backend is None:
        if has_gguf and not safetensors and not pickles:
            backend = caps.backend_for(caps.GGUF_PREFIX)
        else:
            backend = caps.backend_for(q or "none")
    if backend in caps.BACKENDS and not caps.backend(backend).fetchable:
        raise InvalidSpec(f"the {backend} backend talks to a running server: there is nothing to fetch")
    if backend not in caps.fetch_backends():
        raise InvalidSpec(f"unknown backend {backend!r}: use one of {', '.join(caps.fetch_backends())}")
    if "gguf" in caps.backend(backend).formats:
        return backend, _choose_gguf(files, q, include_quantized, model)
    if q and q.startswith("gguf-"):
        raise InvalidSpec(f"{quantization} files are loaded by llamacpp, not {backend}: pass backend='llamacpp'")

    meta = [f for f in files if _top(f) and f.endswith(META_SUFFIXES)]
    if safetensors:
        chosen = [f for f in safetensors if _top(f)] if not include_quantized else safetensors
        if not include_quantized:
            plain = [f for f in chosen if not _QUANT_TAG.search(Path(f).stem.lower())]
            family = q.split("-")[0] if q and q != "none" else None
            asked = [f for f in chosen if family and family in Path(f).name.lower()]
            # a repo whose only weights carry a tag (model-4bit.safetensors) is that quantization
            chosen = sorted(set(plain + asked)) if plain or asked else chosen
        if not chosen:  # weights only in subfolders (e.g. one variant per folder)
            raise InvalidModel(f"{model} keeps its safetensors in subfolders ({', '.join(safetensors[:6])}): "
                               "pass include_quantized=True to fetch them all, or a repo with top-level weights")
        return backend, sorted(set(meta + chosen))
    if has_gguf and not pickles:
        raise InvalidSpec(f"{model} has only GGUF files: pass backend='llamacpp' (and quantization='gguf-<type>')")
    if pickles:
        if not allow_pickle:
            raise UnsafeCheckpoint(f"{model} has only pickle weights ({', '.join(pickles)}); unpickling runs arbitrary "
                                   "code. Pass allow_pickle=True (--allow-pickle) if you trust the repo, or use a "
                                   "repo with safetensors")
        return backend, sorted(set(meta + pickles))
    raise InvalidModel(f"{model} has no weights toolkit can load (no *.safetensors, *.gguf or pickle files): "
                       f"files are {', '.join(files[:12])}")


def check_complete(path: str | os.PathLike, expected: list[str] | None = None) -> None:
    """Check a downloaded folder: expected files present, index shards present, headers parse.

    Raises:
        InvalidModel: naming every missing or unreadable file.
    """
    path = Path(path)
    missing = [f for f in (expected or []) if not (path / f).is_file()]
    index = path / INDEX
    if index.is_file():
        import json

        try:
            shards = set((json.loads(index.read_text()).get("weight_map") or {}).values())
        except ValueError:
            raise InvalidModel(f"{path / INDEX} is not valid JSON: fetch again with force, or delete it") from None
        missing += sorted(s for s in shards if not (path / s).is_file() and s not in missing)
    if missing:
        raise InvalidModel(f"{path} is incomplete: missing {', '.join(missing)}. Fetch again (downloads resume), "
                           "or check that the repository really has these files")
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix == ".safetensors":
            read_safetensors_header(f)  # raises InvalidModel naming the truncated file
        elif f.is_file() and f.suffix == ".gguf" and (expected is None or str(f.relative_to(path)) in expected):
            read_gguf(f)


def _cached_files(snapshot: Path) -> list[str]:
    return sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())


def _hub() -> Any:
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise BackendUnavailable("fetching from the Hugging Face hub needs huggingface_hub: "
                                 "pip install 'toolkit[hub]'") from None
    return huggingface_hub, constants, errors


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures of whichever HTTP client this huggingface_hub uses (httpx, else requests)."""
    found: list[type[BaseException]] = [OSError]  # HfHubHTTPError (5xx) is an OSError too
    for mod, name in (("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            found.append(getattr(__import__(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def fetch(model: str, *, revision: str | None = None, backend: str | None = None, quantization: str | None = None,
          include_quantized: bool = False, cache_dir: str | os.PathLike | None = None,
          allow_pickle: bool = False) -> Path:
    """Download the files ``backend`` needs for a hub model into the hub cache.

    Args:
        model: Hub id ``org/name`` (a local path is checked and returned as is).
        revision: Branch, tag or commit (default ``main``).
        backend: ``hf``, ``vllm``, ``mlx`` or ``llamacpp``; inferred from the repo when None.
        quantization: For GGUF repos the file to take, e.g. ``gguf-q4_k_m``.
        include_quantized: Also fetch files of other quantizations (all GGUFs, tagged safetensors).
        cache_dir: Hub cache folder (default ``HF_HUB_CACHE`` / ``HF_HOME/hub``).
        allow_pickle: Fetch ``*.bin``/``*.pt`` weights when the repo has no safetensors.

    Returns:
        The local snapshot folder (for llamacpp: the GGUF file, or its first shard).

    Raises:
        ModelNotFound: Unknown repo or revision, or offline (``HF_HUB_OFFLINE=1``) and not cached.
        InvalidSpec: The quantization or backend does not match the repo's files.
        UnsafeCheckpoint: Only pickle weights and ``allow_pickle`` is False.
        InvalidModel: The download is incomplete (missing shards, truncated headers).
        BackendUnavailable: huggingface_hub is not installed.
    """
    local = Path(os.path.expanduser(str(model)))
    if local.exists():
        if local.is_dir():
            check_complete(local)
        return local
    if not is_hub_id(str(model)):
        raise ModelNotFound(f"{model!r} is neither a local path nor a hub id like 'Qwen/Qwen2.5-0.5B'")
    hub, constants, errors = _hub()
    # Read at call time (huggingface_hub reads them once at import) so a notebook can change them.
    endpoint = (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
    offline = _env_true("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)
    cache = hub_cache_dir(cache_dir)
    rev_name = revision or "main"

    if offline:
        commit = revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else cached_commit(model, revision, cache)
        snapshot = repo_folder(model, cache) / "snapshots" / (commit or "-")
        if not commit or not snapshot.is_dir():
            raise ModelNotFound(f"{model}@{rev_name} is not in the hub cache at {cache}, and HF_HUB_OFFLINE=1 forbids "
                                "downloading it: unset HF_HUB_OFFLINE (or set it to 0), or run `toolkit fetch "
                                f"{model}` on a connected machine and copy its cache folder here")
        files = _cached_files(snapshot)
    else:
        try:
            info = hub.HfApi(endpoint=endpoint).model_info(model, revision=revision)
        except errors.RevisionNotFoundError:
            raise ModelNotFound(f"{model} has no revision {rev_name!r}: check the branch, tag or commit") from None
        except errors.GatedRepoError:
            raise ModelNotFound(f"{model} is gated: accept its terms on the hub and log in with `hf auth login`") from None
        except errors.RepositoryNotFoundError:
            raise ModelNotFound(f"{model} is not on the hub (or is private): check the id, or log in with "
                                "`hf auth login`") from None
        except _network_errors() as e:
            raise ModelNotFound(f"cannot reach the hub for {model} ({type(e).__name__}: {e}): check the network, "
                                "or set HF_HUB_OFFLINE=1 to use the cache") from None
        files = [s.rfilename for s in (info.siblings or [])]

    backend, wanted = select_files(files, model=model, backend=backend, quantization=quantization,
                                   include_quantized=include_quantized, allow_pickle=allow_pickle)
    try:
        folder = hub.snapshot_download(model, revision=revision, cache_dir=str(cache), endpoint=endpoint,
                                       allow_patterns=[glob.escape(f) for f in wanted], local_files_only=offline)
    except errors.LocalEntryNotFoundError as e:  # incl. IncompleteSnapshotError
        raise ModelNotFound(f"{model}@{rev_name} is not fully cached and cannot be downloaded now ({e}). Unset "
                            "HF_HUB_OFFLINE or fetch it on a connected machine") from None
    path = Path(folder)
    check_complete(path, wanted)
    if backend == "llamacpp":
        ggufs = [f for f in wanted if f.lower().endswith(".gguf")]
        if len(ggufs) == 1 or all(_SHARD.search(f) for f in ggufs):
            return path / ggufs[0]
    return path
