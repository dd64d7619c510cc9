"""selectit-trl: SelectIT data selection as one step of TRL supervised fine-tuning."""

import importlib
from importlib.metadata import PackageNotFoundError, version

# Imported on first use, so that `selectit-trl report` and other torch-free parts start without loading torch,
# transformers and TRL (several seconds).
_EXPORTS = {
    "SelectiveSFTConfig": ".training.config",
    "SelectITError": ".errors",
    "embedded_model_path": ".engine.models",
    "SelectiveSFTTrainer": ".training.trainer",
}

__all__ = sorted(_EXPORTS)
try:
    __version__ = version("selectit-trl")  # pyproject.toml's, as installed: one place to change it
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
