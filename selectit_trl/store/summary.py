"""`Summary`: what `summary.json` holds, typed, written and read in one place.

`summary.json` is a public contract: the report, the model card, the checkpoint marker and users' own scripts
read its keys. `to_json` writes them in their documented order (docs/config.md, "Output files"), and
`from_json` reads the files of every version so far: keys added later get the value an older run implies,
and a file from a newer format is refused rather than misread.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import SelectionFilesError
from .outputs import REBUILD_SCORES

FORMAT_VERSION = 1
# Without these a summary cannot say what was kept or how: the report, the card and a resumed run need them.
_REQUIRED = ("selection_config", "counts", "models", "selected_indices_sha256")


def _nothing_listed() -> dict:
    return {"count": 0, "indices": []}


# Keys written only when set: the clusters with selection_diversity, the teacher's versions with recycling, the
# source of a reused selection.
_OPTIONAL = ("clusters", "recycling", "selection_from")


@dataclass(kw_only=True)
class Summary:
    """Every key of `summary.json`, declared in the order the file holds them (docs/config.md describes each)."""

    format_version: int = FORMAT_VERSION
    selection_config: dict[str, Any]
    # Files written before strategies existed are SelectIT's.
    strategy: dict[str, float] = field(default_factory=lambda: {"selectit": 1.0})
    counts: dict[str, int]  # {"total": N, "selected": kept}
    dataset_format: str | None = None
    empty_responses: dict[str, Any] = field(default_factory=_nothing_listed)
    barred: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, Any] = field(default_factory=_nothing_listed)
    duplicates: int = 0
    models: list[dict[str, Any]]  # {"id", "num_parameters", "weight"} of each model whose measurements count
    prompts: list[str] = field(default_factory=list)
    rating_preamble: str | None = None
    scoring_key: dict[str, Any] = field(default_factory=dict)
    scored_this_run: dict[str, int] = field(default_factory=dict)
    scoring_seconds: float = 0.0
    scoring_seconds_by_model: dict[str, float] = field(default_factory=dict)
    score_quantiles: dict[str, float] = field(default_factory=dict)
    selected_indices_sha256: str
    probe: dict[str, Any] | None = None
    examples: dict[str, Any] = field(default_factory=dict)
    clusters: int | None = None
    recycling: dict[str, Any] | None = None
    selection_from: str | None = None  # the output_dir whose selection this run reused (`selection_from`)

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {key: value for key, value in values.items() if value is not None or key not in _OPTIONAL}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "summary.json") -> Summary:
        version = data.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise SelectionFilesError(
                f"{source} has format version {version!r}, written by a newer selectit-trl than this one (which reads "
                f"up to {FORMAT_VERSION}): upgrade selectit-trl to read it.")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise SelectionFilesError(f"{source} lacks {missing}: it was edited or cut short. {REBUILD_SCORES}")
        known = {f.name for f in fields(cls)}
        # A key an older run wrote as null or empty (no strategy yet) takes its default; the probe is None when
        # it did not run.
        given = {key: value for key, value in data.items()
                 if key in known and (value not in (None, {}) or key in ("probe", "barred", "scored_this_run"))}
        return cls(**given)

    @property
    def label(self) -> str:
        """"SelectIT", or the strategy and its weights: "ifd", "selectit 0.50 + ifd 0.50"."""
        if list(self.strategy) == ["selectit"]:
            return "SelectIT"
        if len(self.strategy) == 1:
            return next(iter(self.strategy))
        return " + ".join(f"{name} {weight:.2f}" for name, weight in self.strategy.items())

    @property
    def rating_models(self) -> list[str]:
        """The models whose SelectIT ratings are in the score files (none when the strategy does not use SelectIT)."""
        return [m["id"] for m in self.models] if "selectit" in self.strategy else []
