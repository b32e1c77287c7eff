"""Generating text one character at a time from a prime string, with top-k and temperature.

Also a tool:  python -m src.sample --checkpoint models/best.pt --prime Far --length 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

from src import checkpoint
from src.config import SampleConfig
from src.errors import KarnnaError
from src.model import CharLSTM
from src.vocab import Vocab


@torch.inference_mode()
def generate(
    model: CharLSTM,
    vocab: Vocab,
    prime: str,
    length: int,
    top_k: int = 5,
    temperature: float = 1.0,
    seed: Optional[int] = None,
    num_samples: int = 1,
) -> list[str]:
    """-> num_samples continuations of `prime`, each prime + `length` new characters.

    top_k=1 is greedy; top_k=0 samples from the whole distribution. The prime is read in one
    call; then one call per character for all samples at once (a batch of num_samples).
    """
    if length < 1:
        raise KarnnaError(f"sample length is {length}; ask for at least 1 character")
    if not prime:
        raise KarnnaError("the prime is empty; give at least one character, e.g. --prime Far")
    if temperature <= 0:
        raise KarnnaError(f"temperature is {temperature}; use a positive number (1.0 leaves the distribution as is)")
    try:
        prime_ids = vocab.encode(prime)
    except KarnnaError as exc:
        raise KarnnaError(f"prime {prime!r}: {exc}") from None
    model.eval()
    device = model.head.weight.device
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    idx = torch.as_tensor(prime_ids, dtype=torch.long, device=device).unsqueeze(0).expand(num_samples, -1)
    logits, hidden = model(idx)
    last = logits[:, -1]  # (N, V)
    out = torch.empty(num_samples, length, dtype=torch.long)
    k = top_k if 0 < top_k < vocab.size else 0
    for i in range(length):
        if k == 1:
            nxt = last.argmax(dim=-1)
        else:
            scores = last.float() / temperature
            if k:
                top_vals, top_idx = scores.topk(k, dim=-1)
                probs = torch.softmax(top_vals, dim=-1).cpu()
                choice = torch.multinomial(probs, 1, generator=gen).to(device)
                nxt = top_idx.gather(-1, choice).squeeze(-1)
            else:
                probs = torch.softmax(scores, dim=-1).cpu()
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(device)
        out[:, i] = nxt.cpu()
        logits, hidden = model(nxt.view(num_samples, 1), hidden)
        last = logits[:, -1]
    return [prime + vocab.decode(row.tolist()) for row in out]


def main(argv: Optional[list[str]] = None) -> int:
    d = SampleConfig()
    p = argparse.ArgumentParser(prog="python -m src.sample", description="Generate text from a karnna checkpoint.")
    p.add_argument("--checkpoint", type=Path, default=Path("models/best.pt"), help="default: %(default)s")
    p.add_argument("--prime", default=d.prime, help="text to start from (default: %(default)r)")
    p.add_argument("--length", type=int, default=d.length, help="new characters to write (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample among the k likeliest; 0: all (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=None, help="fix the random draws (default: a fresh seed)")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest character (top-k 1)")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, generated as one batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        if args.num_samples < 1:
            raise KarnnaError(f"--num-samples is {args.num_samples}; ask for at least 1")
        if args.top_k < 0:
            raise KarnnaError(f"--top-k is {args.top_k}; use 0 (no cut), 1 (greedy) or more")
        model, vocab, _ = checkpoint.load(args.checkpoint, args.device)
        texts = generate(
            model, vocab, args.prime, args.length,
            top_k=1 if args.greedy else args.top_k,
            temperature=args.temperature, seed=args.seed, num_samples=args.num_samples,
        )
    except KarnnaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
