"""What the machine computes fast: whether this CPU runs bf16 natively, and the compute dtype that follows.

A bf16 matmul on a CPU without AMX or AVX512-BF16 is emulated, and slow: 2,681 ms against 53 ms in fp32 on an
AVX2-only EPYC, so a recipe that asks for bf16 there runs for tens of minutes instead of seconds. `dtype: auto`
therefore means, on a CPU, bf16 where the CPU has it natively and fp32 elsewhere; on a GPU it keeps its
meaning in transformers (the checkpoint's dtype), with a 4-bit compute dtype of bf16 where the GPU has it and
fp16 on older ones.

Native bf16 needs the instructions in the CPU *and* oneDNN, which runs PyTorch's CPU matmuls, allowed to use
them: `ONEDNN_MAX_CPU_ISA=AVX2` makes an AMX machine emulate bf16 matmuls as an AVX2 one does (measured: 2,455
ms against 10 ms for fp32 at 1024x1024, where `ATEN_CPU_CAPABILITY=avx2` alone left bf16 fast). The detection
honours that variable, so the tests, and anyone trying an AVX2 machine on an AMX one with
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`, drive the real code path.
"""

from __future__ import annotations

import logging
import os
import statistics
import time

import torch

logger = logging.getLogger(__name__)

# oneDNN ISA names, lowest to highest, as `ONEDNN_MAX_CPU_ISA` takes them. bf16 matmuls run natively from
# AVX512_CORE_BF16 on (the VNNI-era bf16 instructions), and on AMX.
_ONEDNN_ISAS = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
    "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
)
_FIRST_NATIVE_BF16_ISA = _ONEDNN_ISAS.index("AVX512_CORE_BF16")

# The dtypes a recipe's `dtype` may name, as TRL's ModelConfig lists them.
DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")


def _onednn_cap() -> str:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()


def _onednn_allows_bf16() -> bool:
    cap = _onednn_cap()
    if cap in ("", "ALL", "DEFAULT"):
        return True
    return cap in _ONEDNN_ISAS and _ONEDNN_ISAS.index(cap) >= _FIRST_NATIVE_BF16_ISA


def cpu_bf16_instructions() -> bool:
    """Whether the CPU itself has bf16 matmul instructions: AVX512-BF16, or AMX tiles."""
    cpu = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def native_cpu_bf16() -> bool:
    """Whether bf16 matmuls on this CPU run natively: the CPU has the instructions and oneDNN may use them."""
    return cpu_bf16_instructions() and _onednn_allows_bf16()


def cpu_kind() -> str:
    """A short name for the kind of CPU, as the docs use it: AMX, AVX512-BF16, or PyTorch's vector level (AVX512,
    AVX2, ...) for a CPU without native bf16."""
    if native_cpu_bf16():
        return "AMX" if torch.cpu._is_amx_tile_supported() and _onednn_allows_amx() else "AVX512-BF16"
    if not cpu_bf16_instructions():
        return torch.backends.cpu.get_cpu_capability()
    # An AMX or AVX512-BF16 CPU with oneDNN held back (ONEDNN_MAX_CPU_ISA): name the level it was held to.
    return "AVX2" if _onednn_cap() in _ONEDNN_ISAS[:5] else "AVX512"


def _onednn_allows_amx() -> bool:
    cap = _onednn_cap()
    return cap in ("", "ALL", "DEFAULT") or (cap in _ONEDNN_ISAS and "AMX" in cap)


def device_type(args) -> str:
    """The device type a `TrainingArguments` trains on ("cpu", "cuda", ...), as its accelerator will set it up."""
    return args.device.type


def native_cuda_bf16() -> bool:
    """Whether a CUDA GPU is present and computes bf16 natively (Ampere and later)."""
    # Without including_emulation=False, torch reports bf16 on T4 and V100 too, where it is emulated.
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def auto_compute_dtype(device_type: str) -> torch.dtype:
    """The compute dtype `auto` means: bf16 where the device runs it natively, else fp16 on a GPU, else fp32."""
    if device_type == "cuda":
        return torch.bfloat16 if native_cuda_bf16() else torch.float16
    if device_type == "cpu":
        return torch.bfloat16 if native_cpu_bf16() else torch.float32
    return torch.bfloat16  # xpu, mps and others: bf16 is their usual low-precision type


def as_dtype(value) -> torch.dtype | str | None:
    """A dtype as a recipe or a caller gives it (a name, "auto", a torch.dtype or None), as a torch.dtype, or
    "auto" / None unchanged."""
    if value is None or isinstance(value, torch.dtype) or value == "auto":
        return value
    if isinstance(value, str) and value in DTYPE_NAMES:
        return getattr(torch, value)
    raise ValueError(f"dtype must be one of {DTYPE_NAMES} or a torch.dtype, got {value!r}.")


def resolve_dtype(value, device_type: str, checkpoint_dtype: torch.dtype | None = None) -> torch.dtype | str | None:
    """What a requested weights dtype loads as on this device.

    `auto` on a CPU is the checkpoint's dtype where the CPU computes it natively, and fp32 where that dtype is a
    16-bit one the CPU would only emulate; anything else (a GPU, an explicit dtype, None) is left as asked.
    """
    value = as_dtype(value)
    if value != "auto" or device_type != "cpu":
        return value
    if checkpoint_dtype is None or checkpoint_dtype == torch.float32:
        return torch.float32
    if checkpoint_dtype == torch.bfloat16 and native_cpu_bf16():
        return torch.bfloat16
    return torch.float32  # fp16 has no fast CPU path either, and bf16 without native support is emulated


def resolve_compute_dtype(value, device_type: str) -> torch.dtype:
    """The 4-bit compute dtype for a requested one: `auto` (or None) picks by hardware, a dtype is kept."""
    value = as_dtype(value)
    return auto_compute_dtype(device_type) if value in (None, "auto") else value


_warned: set[str] = set()


def emulation_slowdown(dtype: torch.dtype = torch.bfloat16, size: int = 256, repeats: int = 3) -> float:
    """How many times slower a matmul runs in `dtype` than in fp32 here: medians of `repeats` timings each."""

    def median_ms(dtype) -> float:
        a = torch.ones(size, size, dtype=dtype)
        a @ a  # the first call sets up kernels
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            a @ a
            timings.append(time.perf_counter() - started)
        return statistics.median(timings)

    return median_ms(dtype) / max(median_ms(torch.float32), 1e-9)


def warn_if_emulated(dtype, device_type: str, what: str) -> bool:
    """Warn once per `what` when `dtype` is a 16-bit type that this CPU only emulates; True when it warned.

    The warning measures the slowdown on the spot (a few tens of milliseconds) rather than quoting a figure
    from another machine.
    """
    if device_type != "cpu" or dtype not in (torch.bfloat16, torch.float16) or native_cpu_bf16():
        return False
    if what in _warned:
        return False
    _warned.add(what)
    slowdown = emulation_slowdown(dtype)
    logger.warning(
        "%s computes in %s, which this CPU (%s, no AMX or AVX512-BF16) only emulates: a matmul here runs %.0fx slower "
        "than in float32. Set dtype: auto (or float32) to compute in float32 on this machine.",
        what, str(dtype).removeprefix("torch."), cpu_kind(), slowdown,
    )
    return True


def compile_cache_per_capability() -> None:
    """Give torch.compile's kernel cache a folder of its own where ATen's CPU capability is forced.

    Inductor does not key its cached CPU kernels on `ATEN_CPU_CAPABILITY`: kernels it built without the override
    and reused under `ATEN_CPU_CAPABILITY=avx2` gave NaN rating probabilities (`tests/test_compile.py`'s compiled
    scoring, run natively and then under the AVX2 emulation with one cache; each alone passes). Inductor looks
    the folder up in `TORCHINDUCTOR_CACHE_DIR` whenever it reads or writes a kernel, and writes its default there
    the first time (importing bitsandbytes does), so that value is inductor's choice and is replaced; a folder
    the user chose is left alone.
    """
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if not capability:
        return
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch that keeps it elsewhere: leave the cache as it is
        return
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default_cache_dir()}_{capability}"


# What makes an AMX machine run as an AVX2-only one (docs/benchmarks.md): ATen's own kernels, oneDNN's (bf16
# matmuls) and MKL's (fp32 matmuls), each held back to AVX2.
EMULATION_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def emulation_overrides() -> dict[str, str]:
    """The variables of the AVX2 emulation set in this process, for benchmarks to record beside their figures."""
    return {name: os.environ[name] for name in EMULATION_VARIABLES if name in os.environ}
