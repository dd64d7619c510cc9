"""Is a shared-prefix row's attention faster in two parts? One layer's attention, timed alone, both ways.

A shared-prefix row (`engine/scoring.py`) attends under one block mask, so SDPA's CPU kernel computes every
query against every key. The prefix's queries could instead run as a plain causal attention over the preamble
and the prefix, which a kernel can compute below the diagonal only, and the suffixes' queries under their rows
of the mask. This times both at the default's shapes on the embedded model (9 query heads, 3 key heads, head
size 64; 8 rows of a 180-token prefix and 70 suffix tokens after a 40-token preamble), in turn, and checks that
they agree. The preamble has no queries of its own here, so the causal part gives it zero queries and drops
their outputs.

    python benchmarks/attention_split.py
    MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/attention_split.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def inputs(rows: int, preamble: int, prefix: int, suffixes: int, heads: int = 9, key_heads: int = 3, size: int = 64):
    torch.manual_seed(0)
    width = prefix + suffixes
    query = torch.randn(rows, heads, width, size)
    key, value = torch.randn(rows, key_heads, preamble + width, size), torch.randn(rows, key_heads, preamble + width, size)
    # The suffixes' block structure does not change the cost of a masked call; a causal mask after the preamble
    # stands in for it, which the causal part computes exactly.
    allowed = torch.ones(width, preamble + width, dtype=torch.bool)
    allowed[:, preamble:] = torch.ones(width, width, dtype=torch.bool).tril()
    mask = torch.zeros(rows, 1, width, preamble + width).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return query, key, value, mask


def masked(query, key, value, mask, preamble, prefix):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)


def split(query, key, value, mask, preamble, prefix):
    rows, heads, _, size = query.shape
    with_preamble = torch.cat([query.new_zeros(rows, heads, preamble, size), query[:, :, :prefix]], dim=2)
    end = preamble + prefix
    head = F.scaled_dot_product_attention(with_preamble, key[:, :, :end], value[:, :, :end], is_causal=True,
                                          enable_gqa=True)[:, :, preamble:]
    tail = F.scaled_dot_product_attention(query[:, :, prefix:], key, value, attn_mask=mask[:, :, prefix:], enable_gqa=True)
    return torch.cat([head, tail], dim=2)


def median_ms(function, arguments, repeats: int) -> float:
    for _ in range(3):
        function(*arguments)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*arguments)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--preamble", type=int, default=40)
    parser.add_argument("--prefix", type=int, default=180)
    parser.add_argument("--suffixes", type=int, default=70)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    query, key, value, mask = inputs(args.rows, args.preamble, args.prefix, args.suffixes)
    arguments = (query, key, value, mask, args.preamble, args.prefix)
    difference = (masked(*arguments) - split(*arguments)).abs().max().item()
    print(f"largest difference between the two: {difference:.1e}")
    for round_index in range(args.rounds):
        times = {f.__name__: median_ms(f, arguments, args.repeats) for f in (masked, split)}
        print(f"round {round_index + 1}: one masked call {times['masked']:.2f} ms, in two parts {times['split']:.2f} ms "
              f"(median of {args.repeats}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
