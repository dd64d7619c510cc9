"""Does this CPU run bf16 matmuls natively? The detection's answer, and the timings that back it.

Prints what `selectit_trl.engine.hardware` detects (the kind of CPU, native bf16 or not, the compute dtype `dtype: auto`
picks) and the median time of a square matmul in fp32 and in bf16. Run it under the AVX2 emulation to check that
the emulation really slows bf16 down before trusting figures measured under it:

    python benchmarks/bf16_matmul.py
    MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bf16_matmul.py

The three variables hold back ATen's own kernels, oneDNN's (bf16 matmuls) and MKL's (fp32 matmuls) to AVX2.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from selectit_trl.engine import hardware


def median_ms(dtype: torch.dtype, size: int, repeats: int) -> float:
    a, b = (torch.randn(size, size).to(dtype) for _ in range(2))
    a @ b  # kernel selection and first-call allocations
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    emulation = hardware.emulation_overrides()
    fp32, bf16 = (median_ms(dtype, args.size, args.repeats) for dtype in (torch.float32, torch.bfloat16))
    print(f"CPU kind: {hardware.cpu_kind()}; bf16 instructions in the CPU: {hardware.cpu_bf16_instructions()}; "
          f"native bf16 matmuls: {hardware.native_cpu_bf16()}; overrides: {emulation or 'none'}")
    print(f"dtype: auto computes in {str(hardware.auto_compute_dtype('cpu')).removeprefix('torch.')} here")
    print(f"{args.size}x{args.size} matmul, median of {args.repeats} on {torch.get_num_threads()} threads: "
          f"fp32 {fp32:.1f} ms, bf16 {bf16:.1f} ms (bf16 / fp32 = {bf16 / fp32:.2f})")


if __name__ == "__main__":
    main()
