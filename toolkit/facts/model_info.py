"""What a model is, read from its files without loading (or downloading) its weights.

``inspect(model)`` accepts a local folder (config.json + safetensors headers or index), a single
``.gguf`` file, an MLX folder, or a hub id ``org/name`` (config, index and safetensors headers
only, via huggingface_hub). Pickle weights (``*.bin``, ``*.pt``, ``*.pth``) are never opened, and
code named by ``auto_map`` is never imported.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import BackendUnavailable, InvalidModel, ModelNotFound
from toolkit.facts.config import arch_facts, params_from_config, quantization_from_config, text_config
from toolkit.formats.gguf import GGUF_FILE_TYPES, read_gguf
from toolkit.formats.safetensors import DTYPE_BYTES, PICKLE_SUFFIXES, count_tensors, read_safetensors_header
from toolkit.hub.ids import is_hub_id


@dataclass
class ModelInfo:
    """Facts about a model, read from its metadata. Pure value; see ``inspect()``."""

    # what and where
    source: str
    architecture: str | None = None
    model_type: str | None = None
    format: str = "config-only"
    params: int = 0
    params_source: str = "config"
    checkpoint_bytes: int = 0
    checkpoint_dtype: str | None = None
    quantization: str = "none"
    quantization_config: dict | None = None
    # shape
    num_layers: int = 0
    hidden_size: int = 0
    intermediate_size: int | None = None
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    max_positions: int = 0
    # attention: kind, sliding windows, MLA's compressed latent
    attention: str = "MHA"
    sliding_window: int | None = None
    num_sliding_layers: int = 0
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    # mixture of experts
    num_experts: int | None = None
    experts_per_token: int | None = None
    moe_intermediate_size: int | None = None  # one routed expert's MLP width
    moe_layers: int = 0  # decoder layers with experts (DeepSeek's first dense layers are not)
    tied_embeddings: bool = False
    requires_remote_code: bool = False
    # llama.cpp's view of a GGUF (see _gguf_facts): per-layer heads, K/V widths, FFN widths, experts,
    # sliding-window keys and the tensor table; None for other formats
    gguf: dict | None = None
    # the weights: their format, and the parameter counts quantization cares about
    weights_format: str | None = None
    embedding_params: int = 0
    lm_head_params: int = 0
    linear_params: int = 0
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in self.to_dict().items() if k not in ("files", "quantization_config", "gguf") and v not in (None, [])
        )
        return f"<table>{rows}</table>"


def _inspect_gguf(path: Path) -> ModelInfo:
    g = read_gguf(path)
    meta, tensors = g["metadata"], g["tensors"]
    arch = meta.get("general.architecture")
    if not arch:
        raise InvalidModel(f"{path.name} has no general.architecture key: re-convert it with llama.cpp")

    def m(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    layers = m("block_count")
    hidden = m("embedding_length")
    heads = m("attention.head_count")
    if layers is None or hidden is None or heads is None:
        raise InvalidModel(f"{path.name} lacks {arch}.block_count/embedding_length/attention.head_count: "
                           "re-convert it with a recent llama.cpp")
    if isinstance(heads, list):
        heads = max(heads)
    kv = m("attention.head_count_kv", heads)
    kv = max(kv) if isinstance(kv, list) else kv
    head_dim = m("attention.key_length", hidden // heads)
    tok = meta.get("tokenizer.ggml.tokens")
    vocab = m("vocab_size") or (tok["array_length"] if isinstance(tok, dict) else len(tok or []))
    kv_lora = m("attention.kv_lora_rank")
    attention = "MLA" if kv_lora else ("MQA" if kv == 1 and heads > 1 else "GQA" if kv < heads else "MHA")
    names = {t["name"] for t in tensors}
    by_type: Counter[str] = Counter()
    for t in tensors:
        by_type[t["type"]] += t["bytes"]
    ftype = meta.get("general.file_type")
    qname = GGUF_FILE_TYPES.get(ftype) if ftype is not None else None
    if qname is None:
        qname = by_type.most_common(1)[0][0] if by_type else "f32"
    emb = sum(t["numel"] for t in tensors if t["name"] == "token_embd.weight")
    out = sum(t["numel"] for t in tensors if t["name"] == "output.weight")
    window = m("attention.sliding_window")
    info = ModelInfo(
        source=str(path), architecture=arch, model_type=arch, format="gguf",
        params=sum(t["numel"] for t in tensors), params_source="headers",
        checkpoint_bytes=sum(t["bytes"] for t in tensors), checkpoint_dtype=qname,
        quantization=f"gguf-{qname}", quantization_config={"file_type": ftype, "tensor_types": dict(by_type)},
        num_layers=int(layers), hidden_size=int(hidden), intermediate_size=m("feed_forward_length"),
        num_heads=int(heads), num_kv_heads=int(kv), head_dim=int(head_dim), vocab_size=int(vocab or 0),
        attention=attention, sliding_window=int(window) if window else None,
        num_sliding_layers=int(layers) if window else 0,
        num_experts=m("expert_count"), experts_per_token=m("expert_used_count"),
        moe_intermediate_size=m("expert_feed_forward_length"),
        moe_layers=sum(1 for n in names if n.endswith("ffn_up_exps.weight")),  # every MoE layer has up experts
        kv_lora_rank=kv_lora, qk_rope_head_dim=m("rope.dimension_count") if kv_lora else None,
        max_positions=int(m("context_length", 2048)), tied_embeddings="output.weight" not in names,
        weights_format="gguf", embedding_params=emb, lm_head_params=out, files=[path.name],
    )
    info.linear_params = info.params - emb - out
    info.gguf = _gguf_facts(meta, arch, int(layers), tensors, int(vocab or 0))
    return info


def _gguf_facts(meta: dict, arch: str, layers: int, tensors: list[dict], vocab: int) -> dict:
    """What llama.cpp reads from a GGUF to size its buffers (per-layer lists where the file has them)."""
    def m(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    def per_layer(value: Any) -> list[int]:
        return [int(v) for v in value] if isinstance(value, list) else [int(value or 0)] * layers

    heads = per_layer(m("attention.head_count"))
    embd = int(m("embedding_length"))
    head_k = int(m("attention.key_length", embd // max(heads[0], 1)))
    return {
        "arch": arch, "n_layer": layers, "n_embd": embd, "n_vocab": vocab,
        "n_head": heads, "n_head_kv": per_layer(m("attention.head_count_kv", heads)),
        "head_k": head_k, "head_v": int(m("attention.value_length", head_k)),
        # MLA (DeepSeek-V2/V3 converted with the MLA keys): llama.cpp caches only the compressed K rows, V is a view
        "mla": m("attention.key_length_mla") is not None and m("attention.value_length_mla") is not None,
        "n_ff": per_layer(m("feed_forward_length", 0)),
        "n_expert": int(m("expert_count", 0) or 0), "n_expert_used": int(m("expert_used_count", 0) or 0),
        "n_ff_exp": int(m("expert_feed_forward_length", 0) or 0),
        "sliding_window": m("attention.sliding_window"),
        "sliding_window_pattern": m("attention.sliding_window_pattern"),
        "tensors": [{"name": t["name"], "type": t["type"], "shape": t["shape"], "offset": t["offset"],
                     "bytes": t["bytes"]} for t in tensors],
    }


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidModel(f"{path.name} is not valid JSON ({e}): fix or re-download it") from None
    if not isinstance(data, dict):
        raise InvalidModel(f"{path.name} is not a JSON object: fix or re-download it")
    return data


def _info_from_config(source: str, cfg: dict) -> ModelInfo:
    facts = arch_facts(cfg)
    counts = params_from_config(cfg)
    quant, qcfg = quantization_from_config(text_config(cfg) if "quantization_config" not in cfg else cfg)
    dtype = str(text_config(cfg).get("torch_dtype") or cfg.get("dtype") or "float32")
    info = ModelInfo(source=source, **facts, params=counts["total"], params_source="config",
                     checkpoint_dtype=dtype, quantization=quant, quantization_config=qcfg,
                     embedding_params=counts["embedding"], lm_head_params=counts["lm_head"],
                     linear_params=counts["linear"])
    info.checkpoint_bytes = info.params * DTYPE_BYTES.get(dtype, 2)
    if info.requires_remote_code:
        info.notes.append("config.json names custom code (auto_map); toolkit never imports it")
    return info


def _apply_tensors(info: ModelInfo, tensors: dict[str, dict]) -> None:
    bits = None
    if info.quantization_config:
        bits = info.quantization_config.get("bits") or info.quantization_config.get("w_bit")
        groups = info.quantization_config.get("config_groups")
        if isinstance(groups, dict) and groups:
            bits = next(iter(groups.values())).get("weights", {}).get("num_bits", bits)
    c = count_tensors(tensors, int(bits) if bits else None)
    config_params = info.params
    info.params, info.params_source, info.checkpoint_bytes = c["params"], "headers", c["bytes"]
    if c["dtype"]:
        info.checkpoint_dtype = c["dtype"]
    if c["embedding"]:
        info.embedding_params = c["embedding"]
    info.lm_head_params = c["lm_head"]
    info.tied_embeddings = info.tied_embeddings and not c["lm_head"]
    if config_params and abs(config_params - info.params) > 0.005 * info.params:
        info.notes.append(f"config-derived count {config_params} differs from headers {info.params}")


def _inspect_folder(path: Path) -> ModelInfo:
    cfg_path = path / "config.json"
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    ggufs = [f for f in files if f.endswith(".gguf")]
    if not cfg_path.exists():
        if len(ggufs) == 1:
            return _inspect_gguf(path / ggufs[0])
        raise InvalidModel(f"{path} has no config.json: point at a Hugging Face model folder, an MLX folder "
                           "or a single .gguf file")
    cfg = _load_json(cfg_path)
    info = _info_from_config(str(path), cfg)
    info.files = files
    shards = [f for f in files if f.endswith(".safetensors")]
    index_path = path / "model.safetensors.index.json"
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES) and not f.startswith("training_args")]
    if info.quantization.startswith("mlx-"):
        info.format = "mlx"
    if shards:
        tensors: dict[str, dict] = {}
        for s in shards:
            tensors.update(read_safetensors_header(path / s))
        expected = None
        if index_path.exists():
            idx = _load_json(index_path)
            expected = set((idx.get("weight_map") or {}).values())
        if expected and not expected <= set(shards):
            info.notes.append(f"missing shards: {sorted(expected - set(shards))}; counts from the index")
            _apply_index(info, _load_json(index_path))
        else:
            _apply_tensors(info, tensors)
        info.format = "mlx" if info.quantization.startswith("mlx-") else "safetensors"
        info.weights_format = "safetensors"
    elif index_path.exists():
        _apply_index(info, _load_json(index_path))
        info.format = "safetensors"
        info.weights_format = "safetensors"
        info.notes.append("shards not present locally; params derived from the index total_size")
    elif pickles:
        # Never unpickle: loading a pickle runs arbitrary code. Sizes come from the config.
        info.format = info.weights_format = "pickle"
        bin_index = path / "pytorch_model.bin.index.json"
        if bin_index.exists():
            total = (_load_json(bin_index).get("metadata") or {}).get("total_size")
            if total:
                info.checkpoint_bytes = int(total)
        info.notes.append(f"pickle weights ({', '.join(pickles)}) were not opened; params computed from config."
                          " Convert to safetensors to load them safely")
    elif ggufs:
        return _inspect_gguf(path / ggufs[0])
    elif not info.quantization.startswith("mlx-"):
        info.format = "config-only"
    return info


def _apply_index(info: ModelInfo, idx: dict) -> None:
    total = (idx.get("metadata") or {}).get("total_size")
    if not total:
        raise InvalidModel("model.safetensors.index.json has no metadata.total_size: re-download it")
    info.checkpoint_bytes = int(total)
    if info.quantization == "none":
        per = DTYPE_BYTES.get(info.checkpoint_dtype or "", 2)
        info.params = int(total) // per
        info.params_source = "index"


def _inspect_hub(repo_id: str, revision: str | None) -> ModelInfo:
    try:
        import huggingface_hub as hub
    except ImportError:
        raise BackendUnavailable(
            f"{repo_id!r} is not a local path, and reading hub models needs huggingface_hub: "
            "pip install 'toolkit[hub]' (or pass a local folder)"
        ) from None
    try:
        cfg_file = hub.hf_hub_download(repo_id, "config.json", revision=revision)
    except Exception as e:  # RepositoryNotFoundError, EntryNotFoundError, offline with empty cache...
        from huggingface_hub import constants

        offline = ("; HF_HUB_OFFLINE is set, so only the local hub cache was searched: unset it, or run "
                   f"`toolkit fetch {repo_id}` on a connected machine" if constants.HF_HUB_OFFLINE else "")
        raise ModelNotFound(
            f"cannot read config.json of {repo_id!r} from the Hugging Face hub ({type(e).__name__}): check "
            f"the id and revision, log in with `hf auth login` for gated models, or pass a local folder{offline}"
        ) from None
    info = _info_from_config(repo_id, _load_json(Path(cfg_file)))
    try:
        meta = hub.get_safetensors_metadata(repo_id, revision=revision)
        tensors = {}
        for fmeta in meta.files_metadata.values():
            for name, t in fmeta.tensors.items():
                tensors[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.data_offsets)}
        _apply_tensors(info, tensors)
        info.format = info.weights_format = "safetensors"
    except Exception:
        try:
            idx = hub.hf_hub_download(repo_id, "model.safetensors.index.json", revision=revision)
            _apply_index(info, _load_json(Path(idx)))
            info.format = info.weights_format = "safetensors"
        except Exception:
            info.notes.append("no safetensors metadata found on the hub; params computed from config")
    if info.quantization.startswith("mlx-"):
        info.format = "mlx"
    return info


def inspect(model: str | os.PathLike, *, revision: str | None = None, trust_remote_code: bool = False) -> ModelInfo:
    """Describe a model from its metadata, without loading its weights.

    Args:
        model: A local folder, a ``.gguf`` file, or a hub id ``org/name``.
        revision: Hub revision (branch, tag or commit) for hub ids.
        trust_remote_code: Recorded only; toolkit never imports code from a model folder.

    Returns:
        The model's ``ModelInfo``.

    Raises:
        ModelNotFound: The path does not exist and is not a hub id.
        InvalidModel: A config, index or header is corrupt or lacks required keys.
        BackendUnavailable: A hub id was given and huggingface_hub is not installed.
    """
    path = Path(os.path.expanduser(os.fspath(model)))
    if path.is_dir():
        info = _inspect_folder(path)
    elif path.is_file():
        if path.suffix == ".gguf":
            info = _inspect_gguf(path)
        elif path.suffix in PICKLE_SUFFIXES:
            raise InvalidModel(f"{path.name} is a pickle checkpoint, which toolkit never opens: "
                               "pass its folder (config.json) or convert it to safetensors")
        elif path.name == "config.json":
            info = _inspect_folder(path.parent)
        else:
            raise InvalidModel(f"{path.name} is not a model toolkit reads: pass a model folder or a .gguf file")
    elif is_hub_id(os.fspath(model)):
        info = _inspect_hub(os.fspath(model), revision)
    else:
        raise ModelNotFound(f"{os.fspath(model)!r} does not exist: pass a model folder, a .gguf file or a hub "
                            "id like 'Qwen/Qwen2.5-0.5B'")
    if info.requires_remote_code and not trust_remote_code:
        from toolkit.facts.libraries import transformers_implements

        if transformers_implements(info.model_type):
            info.notes.append(f"transformers loads it with its built-in {info.model_type} implementation, without "
                              "the shipped code")
        else:
            info.notes.append("loading it will need trust_remote_code=True")
    return info
