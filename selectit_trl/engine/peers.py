"""Peer models for model-level reflection, as the user names them in `selection_peer_models`.

Each entry is a model id or path, or a mapping that also sets how that peer loads:

    selection_peer_models:
      - meta-llama/Llama-2-13b-hf                       # 4-bit NF4, compute dtype by hardware
      - {model: ./my-13b, load_in_4bit: false, dtype: bfloat16}
      - {model: org/other, revision: 3f2a1c0}

On the command line a mapping is written as JSON: `--selection_peer_models org/a '{"model": "org/b"}'`.
Peers load in 4-bit by default, whatever the tuned model does, so that a 13B peer fits beside a 7B base on
one consumer GPU: each is loaded, used and released in turn. Their compute dtype, unless the entry names one,
is the one `dtype: auto` picks (`hardware.py`): bf16 where the device runs it natively, else fp16 on a GPU and
fp32 on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import SelectionConfigError

PEER_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class PeerSpec:
    model: str  # hub id or local path
    revision: str | None = None  # hub branch, tag or commit
    dtype: str | None = None  # weights' dtype, or the 4-bit compute dtype; default by hardware in 4-bit, else the tuned model's
    load_in_4bit: bool = True  # NF4 through bitsandbytes

    @property
    def model_id(self) -> str:
        """How the peer is named in the selection files; the revision is part of it, since it is another model."""
        return f"{self.model}@{self.revision}" if self.revision else self.model


def parse_peer(entry, key: str = "selection_peer_models") -> PeerSpec:
    """One `selection_peer_models` entry (or the `key` entry naming another model, such as the teacher) as a
    `PeerSpec`; a malformed entry raises `SelectionConfigError`."""
    if isinstance(entry, str) and entry.lstrip().startswith("{"):
        try:
            entry = json.loads(entry)
        except json.JSONDecodeError as error:
            raise SelectionConfigError(f"{key} entry {entry!r} is not valid JSON: {error}.") from None
    if isinstance(entry, str):
        if not entry.strip():
            raise SelectionConfigError(f"{key} holds an empty model name.")
        return PeerSpec(entry)
    if not isinstance(entry, dict):
        raise SelectionConfigError(f"{key} entries are model ids or mappings, got {entry!r}.")
    unknown = set(entry) - {"model", "revision", "dtype", "load_in_4bit"}
    problems = [f"unknown key(s) {sorted(unknown)}"] if unknown else []
    if not isinstance(entry.get("model"), str) or not entry["model"].strip():
        problems.append("'model' must name a model id or path")
    if entry.get("revision") is not None and not isinstance(entry["revision"], str):
        problems.append("'revision' must be a string")
    if entry.get("dtype") is not None and entry["dtype"] not in PEER_DTYPES:
        problems.append(f"'dtype' must be one of {PEER_DTYPES}")
    if not isinstance(entry.get("load_in_4bit", True), bool):
        problems.append("'load_in_4bit' must be true or false")
    if problems:
        raise SelectionConfigError(f"{key} entry {entry!r}: {'; '.join(problems)}.")
    return PeerSpec(entry["model"], entry.get("revision"), entry.get("dtype"), entry.get("load_in_4bit", True))
