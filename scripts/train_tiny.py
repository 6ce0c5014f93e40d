"""Reproduce the built-in tiny model shipped in ``toolkit/data/tiny``.

A Llama-architecture model (GQA, ~6M parameters) with its own byte-level BPE tokenizer, trained on
the CPU on the Python standard library's own source text (present, identical, on every CPython
3.11 install), so that its perplexity is far from random and quantization changes it measurably.

    .venv/bin/python scripts/train_tiny.py [--steps 700] [--out toolkit/data/tiny]

About 15 minutes on 2 CPU cores. Files whose path hashes into the held-out bucket are never
trained on; a slice of them is shipped as ``toolkit/data/heldout.txt`` for perplexity.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HELDOUT_BUCKETS = 40  # 1 file in 40 (by path hash) is held out
CALIBRATION_CHARS = 64_000  # ~16k tokens: 64 calibration sequences of 256 for GPTQ/AWQ


def corpus_files() -> tuple[list[Path], list[Path]]:
    """Standard-library source files, split into (train, held-out) by a hash of the relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, heldout = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/idle_test/", "lib2to3/tests/")):
            continue
        bucket = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % HELDOUT_BUCKETS
        (heldout if bucket == 0 else train).append(path)
    return train, heldout


def read_texts(paths: list[Path], max_chars: int) -> list[str]:
    texts, total = [], 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return texts


def calibration_text(train: list[Path]) -> str:
    """A fixed slice of training files (every 13th), for quantization calibration; never held-out text."""
    return "\n".join(read_texts(train[::13], CALIBRATION_CHARS))[:CALIBRATION_CHARS]


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # GPT-2 style byte-level pre-tokenization (its regex), so llama.cpp's "gpt-2" pre-tokenizer matches.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "toolkit" / "data" / "tiny"))
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-chars", type=int, default=24_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    train_files, heldout_files = corpus_files()
    train_texts = read_texts(train_files, args.train_chars)
    heldout_text = "\n".join(read_texts(heldout_files, 10**9))
    print(f"corpus: {len(train_texts)} train files ({sum(map(len, train_texts))/1e6:.1f} M chars), "
          f"{len(heldout_files)} held-out files ({len(heldout_text)/1e6:.2f} M chars)", flush=True)

    tok = train_tokenizer(train_texts[: len(train_texts) // 3], 4096)
    eot = tok.token_to_id("<|endoftext|>")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token=None, pad_token="<|pad|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    fast.save_pretrained(out)
    print(f"tokenizer: {tok.get_vocab_size()} tokens in {time.time()-t0:.0f}s", flush=True)

    ids: list[int] = []
    for enc in tok.encode_batch(train_texts):
        ids.extend(enc.ids)
        ids.append(eot)
    data = torch.tensor(ids, dtype=torch.long)
    held = torch.tensor(tok.encode(heldout_text).ids, dtype=torch.long)
    print(f"tokens: train {len(data)/1e6:.2f} M, held-out {len(held)/1e3:.0f} k", flush=True)

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=eot, eos_token_id=eot,
        pad_token_id=tok.token_to_id("<|pad|>"),
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())

    @torch.no_grad()
    def heldout_ppl(m, windows: int = 64) -> float:
        m.eval()
        n = min(windows, (len(held) - 1) // args.seq)
        x = held[: n * args.seq].view(n, args.seq)
        losses = [m(input_ids=x[i : i + 8], labels=x[i : i + 8]).loss.item() for i in range(0, n, 8)]
        m.train()
        return math.exp(sum(losses) / len(losses))

    random_ppl = heldout_ppl(model)
    print(f"model: {n_params/1e6:.2f} M params, random-init held-out ppl {random_ppl:.0f}", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    t_train = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=gen)
        x = torch.stack([data[s : s + args.seq] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            rate = (step + 1) * args.batch * args.seq / (time.time() - t_train)
            print(f"step {step:4d} loss {loss.item():.3f} lr {lr_at(step):.2e} {rate:.0f} tok/s", flush=True)

    final_ppl = heldout_ppl(model)
    model.eval()
    model.generation_config.do_sample = False
    model.save_pretrained(out)  # config.json, generation_config.json, model.safetensors
    # Re-save weights with sorted keys and no framework metadata so the file is byte-reproducible.
    state = {k: v.contiguous() for k, v in sorted(model.state_dict().items())}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    heldout_path = out.parent / "heldout.txt"
    heldout_path.write_text(heldout_text, encoding="utf-8")
    (out.parent / "calibration.txt").write_text(calibration_text(train_files), encoding="utf-8")
    stats = {
        "params": n_params, "steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": args.lr,
        "train_tokens_seen": args.steps * args.batch * args.seq, "train_tokens": len(data),
        "final_train_loss": round(loss.item(), 4), "heldout_ppl": round(final_ppl, 3),
        "random_init_heldout_ppl": round(random_ppl, 1), "train_seconds": round(time.time() - t_train),
        "python": sys.version.split()[0], "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
