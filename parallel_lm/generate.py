"""python -m parallel_lm.generate: sample from a trained checkpoint.

    python -m parallel_lm.generate --ckpt runs/quickstart --prompt "def " --max-new-tokens 200

Tokens are bytes, or, for a run on prepared data with a BPE, the tokens of the ``tokenizer.json`` that
``train`` copied beside the checkpoint.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import click
import torch

from .services import checkpoint
from . import environment, tokenizer
from .config import TrainConfig
from .model import GPT


def load_tokenizer(ckpt: str, vocab_size: int):
    """Bytes, or the BPE (trained or tiktoken's) beside the checkpoint (a model of more than 256 tokens needs it)."""
    folder = Path(ckpt) if Path(ckpt).is_dir() else Path(ckpt).parent
    if (folder / tokenizer.FILE).is_file():
        return tokenizer.load(folder, "bpe")
    if vocab_size != 256:
        raise ValueError(f"{ckpt}: the model has {vocab_size} tokens but no {tokenizer.FILE} lies beside the "
                         f"checkpoint: copy the prepared folder's {tokenizer.FILE} there")
    return tokenizer.ByteTokenizer()


def load_model(ckpt: str) -> GPT:
    state = checkpoint.load(ckpt, on_fallback=lambda message: print(message, file=sys.stderr))
    config = TrainConfig.from_dict(state["config"]).model
    checkpoint.check_model(state, config, ckpt)
    model = GPT(config)
    model.load_state_dict(state["model"])
    return model.eval()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--ckpt", required=True, type=click.Path(exists=True), help="A run's --out folder or its checkpoint.pt.")
@click.option("--prompt", default="def ", help="Text to continue.")
@click.option("--max-new-tokens", default=200, type=click.IntRange(min=1), help="Tokens (bytes, or BPE tokens) to sample.")
@click.option("--temperature", default=0.8, type=click.FloatRange(min=0.0),
              help="Divide the logits by this before sampling (>= 0; near 0: always the likeliest byte).")
@click.option("--top-k", default=40, type=click.IntRange(min=1), help="Sample among the k likeliest bytes (>= 1).")
@click.option("--seed", default=0, type=int, help="Seed of the sampling.")
def main(ckpt, prompt, max_new_tokens, temperature, top_k, seed):
    """Continue a prompt with a trained model, byte by byte."""
    if not math.isfinite(temperature):
        raise click.BadParameter(f"{temperature} is not a finite number", param_hint="--temperature")
    try:
        model = load_model(ckpt)
        tok = load_tokenizer(ckpt, model.cfg.vocab_size)
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as e:  # a bad file, or a state of another shape
        raise click.BadParameter(str(e), param_hint="--ckpt") from None
    start = tok.encode(prompt.encode("utf-8")).tolist() or tok.encode(b"\n").tolist()
    idx = torch.tensor([start], dtype=torch.long)  # (1, T)
    out = model.generate(idx, max_new_tokens, temperature, top_k, generator=torch.Generator().manual_seed(seed))
    sys.stdout.write(tok.decode(out[0].tolist()).decode("utf-8", errors="replace") + "\n")


if __name__ == "__main__":
    environment.apply_or_exit()
    main()
