"""How the model being tuned and the peers load: the dtype `auto` means on this hardware, the 4-bit compute
dtype, and the `Rater` that describes each model to the selection (its fingerprint, size and context)."""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from ..engine import hardware
from ..engine.models import model_fingerprint, parameter_count
from ..engine.peers import PeerSpec
from ..errors import SelectionConfigError
from ..measures.base import Rater


def context_length(config) -> int | None:
    return getattr(config.get_text_config(), "max_position_embeddings", None)


# What from_pretrained's keyword arguments say about where a configuration is found, for reading it alone.
CONFIG_LOCATION_KEYS = ("revision", "trust_remote_code", "token", "cache_dir", "subfolder", "local_files_only",
                         "gguf_file")


def four_bit_compute(quantization) -> torch.dtype | None:
    """The compute dtype of a 4-bit quantisation config (an object or its dict form), None when not 4-bit."""
    if isinstance(quantization, dict):  # another method's dict (GPTQ, AWQ) has no load_in_4bit
        if not quantization.get("load_in_4bit"):
            return None
        quantization = BitsAndBytesConfig.from_dict(quantization)
    if not getattr(quantization, "load_in_4bit", False):
        return None
    return hardware.as_dtype(getattr(quantization, "bnb_4bit_compute_dtype", None)) or torch.float32


def load_dtype(model: str, init_kwargs: dict, quantization, args) -> torch.dtype | str | None:
    """The dtype the model being tuned loads in, with `auto` resolved for the hardware (`hardware.py`).

    In 4-bit, `auto` loads the layers left out of the quantisation in the compute dtype, as TRL's recipes do with
    one `dtype` for both. A dtype given as None means `auto`, as it does in transformers; with no dtype at all,
    TRL's own default (float32) applies. A 16-bit dtype that this CPU only emulates still loads, after one
    warning with the measured slowdown.
    """
    device = hardware.device_type(args)
    if "dtype" in init_kwargs or "torch_dtype" in init_kwargs:  # torch_dtype: the legacy name
        requested = hardware.as_dtype(init_kwargs.get("dtype", init_kwargs.get("torch_dtype"))) or "auto"
    else:
        requested = None
    compute = four_bit_compute(quantization)
    if requested == "auto":
        if compute is not None:
            requested = compute
        else:
            location = {k: init_kwargs[k] for k in CONFIG_LOCATION_KEYS if k in init_kwargs}
            config = AutoConfig.from_pretrained(model, **location)
            requested = hardware.resolve_dtype("auto", device, getattr(config, "dtype", None))
    hardware.warn_if_emulated(compute or requested, device, "The model being tuned")
    return requested


def check_quantized_model_has_adapters(model, quantization, peft_config) -> None:
    """A quantized model trains only through adapters: transformers refuses it otherwise, after it has loaded."""
    if peft_config is not None or isinstance(model, PeftModel):
        return
    if isinstance(model, str):
        quantized = quantization is not None and bool(
            getattr(quantization, "load_in_4bit", False) or getattr(quantization, "load_in_8bit", False)
            or (isinstance(quantization, dict) and (quantization.get("load_in_4bit") or quantization.get("load_in_8bit"))))
    else:
        quantized = bool(getattr(model, "is_quantized", False))
    if quantized:
        raise SelectionConfigError(
            "The model is quantized (load_in_4bit or load_in_8bit), and a quantized model trains only through LoRA "
            "adapters: set use_peft: true (from Python, pass peft_config=LoraConfig(...)), or load it unquantized. "
            "`selectit-trl score` alone needs neither."
        )


def tuned_rater(model, model_id: str, source: str | None, tokenizer) -> Rater:
    """The model being tuned as a rater: already loaded, never released."""
    config = model.config
    fingerprint = model_fingerprint(config, source, model.dtype)
    return Rater(model_id, tokenizer, fingerprint, parameter_count(config), load=lambda: model,
                 max_positions=context_length(config))


def peer_rater(args, tuned_model, peer: PeerSpec) -> Rater:
    """A peer (or the teacher), loaded only when its turn comes, onto the tuned model's device: in 4-bit NF4
    unless its entry says otherwise."""
    remote = args.trust_remote_code
    init_kwargs = {"use_safetensors": True, **(args.model_init_kwargs or {})}
    for tuned_only in ("revision", "dtype", "torch_dtype", "quantization_config", "device_map", "attn_implementation"):
        init_kwargs.pop(tuned_only, None)  # the tuned model's settings mean nothing for another repository
    init_kwargs["trust_remote_code"] = remote
    if peer.revision:
        init_kwargs["revision"] = peer.revision
    device = tuned_model.get_input_embeddings().weight.device
    # Loaded straight onto the scoring device (quantised as it loads, for 4-bit), not through host memory.
    init_kwargs["device_map"] = {"": str(device)}
    config = AutoConfig.from_pretrained(peer.model, revision=peer.revision, trust_remote_code=remote)
    if peer.load_in_4bit:
        # By default bf16 where the device runs it natively, else fp16 on a GPU and fp32 on a CPU (hardware.py).
        compute = hardware.resolve_compute_dtype(peer.dtype, device.type)
        init_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
        )
        init_kwargs["dtype"] = compute
    elif peer.dtype is None:
        init_kwargs["dtype"] = tuned_model.dtype  # the tuned model's, already chosen for this hardware
    else:
        # A torch.dtype either way, so that the same load always gives the same fingerprint.
        init_kwargs["dtype"] = hardware.resolve_dtype(peer.dtype, device.type, getattr(config, "dtype", None))
        if init_kwargs["dtype"] == "auto":  # on a GPU: the checkpoint's dtype, as transformers reads it
            init_kwargs["dtype"] = getattr(config, "dtype", None) or torch.float32
    hardware.warn_if_emulated(init_kwargs["dtype"], device.type, f"Peer {peer.model_id}")

    def load():
        return AutoModelForCausalLM.from_pretrained(peer.model, **init_kwargs).eval()

    fingerprint = model_fingerprint(config, peer.model, init_kwargs["dtype"], init_kwargs.get("quantization_config"))
    tokenizer = AutoTokenizer.from_pretrained(peer.model, revision=peer.revision, trust_remote_code=remote)
    return Rater(peer.model_id, tokenizer, fingerprint, parameter_count(config), load=load, release_after_use=True,
                 max_positions=context_length(config))
