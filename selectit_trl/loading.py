"""Loading the training dataset a recipe names: a local file, a hub dataset, or translation directions.

Loading stops at a `datasets.Dataset` of raw rows; turning rows into what is rated and trained on is the job
of `formats`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from datasets import (
    Dataset,
    Features,
    Value,
    concatenate_datasets,
    get_dataset_config_names,
    load_dataset,
)

from .errors import DatasetError
from .formats import LANGUAGE_NAMES

logger = logging.getLogger(__name__)


@dataclass
class DataArguments:
    """Dataset keys of a recipe beyond TRL's `ScriptArguments`."""

    dataset_directions: list[str] | None = field(
        default=None,
        metadata={
            "help": "Translation directions to train on, such as [de-en, en-de]. dataset_name is then a folder of "
            "ALMA-style files (train.de-en.json, found in any subfolder) or a hub dataset with one configuration per "
            "language pair ('de-en'). A pair's rows serve both of its directions."
        },
    )


def demo_dataset_path() -> str:
    """The bundled demo dataset: 150 instruction/response pairs of mixed quality."""
    return str(files("selectit_trl") / "data" / "quickstart.jsonl")


def load_train_dataset(script_args, data_args: DataArguments | None = None) -> Dataset:
    """The training rows a recipe names: `dataset_name` as a local file (read by extension, `LOCAL_FILE_BUILDERS`)
    or a hub id, the bundled demo dataset when it is left out, or translation directions when
    `dataset_directions` is set."""
    name = script_args.dataset_name
    directions = data_args.dataset_directions if data_args else None
    if directions:
        if name is None or _names_a_file(name):
            raise DatasetError(
                "dataset_directions needs dataset_name to be a folder of ALMA-style files (train.de-en.json, ...) or a "
                f"hub dataset with one configuration per language pair, not {name!r}. For a single file of one "
                "direction, leave dataset_directions out."
            )
        if script_args.dataset_config is not None:
            raise DatasetError("dataset_config is not used with dataset_directions: each direction reads the configuration "
                             "named after its language pair. Remove dataset_config.")
        return load_translation_directions(name, directions, split=script_args.dataset_train_split)
    if name is None:
        logger.warning("No dataset_name given: using the bundled demo dataset.")
        name = demo_dataset_path()
    if _names_a_file(name):
        if not os.path.isfile(name):
            raise DatasetError(f"dataset_name {name!r} looks like a local file, but it does not exist.")
        builder, options = local_file_builder(name)
        return load_dataset(builder, data_files=name, split="train", **options)
    return load_dataset(name, name=script_args.dataset_config, split=script_args.dataset_train_split)


def load_eval_dataset(script_args, data_args: DataArguments | None = None) -> Dataset:
    """The eval rows of a recipe whose `eval_strategy` is not `no`, as `trl sft` takes them: the split
    `dataset_test_split` of the same hub dataset, or of each translation direction. A local file holds one
    split only, so it is refused with what to do instead."""
    name, split = script_args.dataset_name, script_args.dataset_test_split
    if name is None or _names_a_file(name):
        raise DatasetError(
            f"eval_strategy asks for an eval set, but dataset_name is {'left out' if name is None else 'a local file'}, "
            f"which has no {split!r} split (dataset_test_split). Use a hub dataset with that split, or set "
            "eval_strategy: no; from Python, pass eval_dataset to SelectiveSFTTrainer."
        )
    directions = data_args.dataset_directions if data_args else None
    if directions:
        return load_translation_directions(name, directions, split=split)
    return load_dataset(name, name=script_args.dataset_config, split=split)


# The `datasets` builder that reads a local file of each extension: the formats instruction data comes in.
# `datasets` itself picks builders by extension only inside folders and hub repositories, not for one file.
LOCAL_FILE_BUILDERS = {
    ".json": ("json", {}), ".jsonl": ("json", {}), ".ndjson": ("json", {}),
    ".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}),
    ".parquet": ("parquet", {}), ".arrow": ("arrow", {}),
    ".txt": ("text", {}),
}
# Compressed files are read by the extension beneath (data.jsonl.gz as JSON lines); `datasets` decompresses them.
_COMPRESSION_EXTENSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def _file_extension(name: str) -> str:
    suffixes = [s.lower() for s in Path(name).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_EXTENSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def local_file_builder(name: str) -> tuple[str, dict]:
    """The builder and its options for a local data file, by extension. A file with no extension is read as JSON,
    as before extensions were looked at; any other extension is refused, naming those that are read."""
    extension = _file_extension(name)
    if extension in LOCAL_FILE_BUILDERS:
        return LOCAL_FILE_BUILDERS[extension]
    if not extension:
        return LOCAL_FILE_BUILDERS[".json"]
    raise DatasetError(
        f"dataset_name {name!r} is a local file of a type that is not read ({extension}). Local files are read by "
        f"extension: {', '.join(LOCAL_FILE_BUILDERS)}, each possibly compressed ({', '.join(_COMPRESSION_EXTENSIONS)})."
    )


def _names_a_file(name: str) -> bool:
    return _file_extension(name) in LOCAL_FILE_BUILDERS or os.path.isfile(name)


def parse_direction(direction: str) -> tuple[str, str]:
    """'de-en' -> ('de', 'en'), with an error that says what a direction looks like."""
    parts = direction.split("-")
    if len(parts) != 2 or parts[0] == parts[1]:
        raise DatasetError(f"Translation direction {direction!r} should be two different language codes, like 'de-en'.")
    for lang in parts:
        if lang not in LANGUAGE_NAMES:
            raise DatasetError(f"Unknown language code {lang!r} in direction {direction!r}; known: {', '.join(sorted(LANGUAGE_NAMES))}.")
    return parts[0], parts[1]


def _pair_names(source: str, target: str) -> list[str]:
    # ALMA files and hub configurations name a pair with English second ("de-en") and serve both directions.
    if target == "en":
        return [f"{source}-{target}"]
    if source == "en":
        return [f"{target}-{source}"]
    return [f"{source}-{target}", f"{target}-{source}"]


def _load_pair(location: str, pair_names: list[str], split: str) -> Dataset:
    """One language pair's rows: from a folder of ALMA-style files, else from the configuration named after the pair
    in a hub dataset (or a local dataset repository)."""
    root = Path(location)
    if root.is_dir():
        candidates = [
            path
            for pair in pair_names
            for pattern in (f"{split}.{pair}.json", f"{split}.{pair}.jsonl")
            for path in sorted(root.rglob(pattern))
        ]
        if len(candidates) > 1:
            listed = ", ".join(str(path.relative_to(root)) for path in candidates)
            raise DatasetError(f"Several files under {location!r} could hold the {pair_names[0]} rows: {listed}. "
                             "Point dataset_name at a folder that holds one.")
        if candidates:
            return load_dataset("json", data_files=str(candidates[0]), split="train")
        if not (root / "README.md").is_file():
            # Not a dataset repository either (those declare their configurations in README.md).
            wanted = " or ".join(f"{split}.{pair}.json[l]" for pair in pair_names)
            raise DatasetError(f"No file {wanted} under {location!r}, as ALMA's human_written_data folder has them.")
    configurations = get_dataset_config_names(location)
    for pair in pair_names:
        if pair in configurations:
            return load_dataset(location, name=pair, split=split)
    raise DatasetError(
        f"Dataset {location!r} has no configuration {' or '.join(pair_names)}; it has {', '.join(configurations)}."
    )


def load_translation_directions(location: str, directions: list[str], split: str = "train") -> Dataset:
    """Rows of every direction, in the order given, as `{"translation": {...}, "direction": "de-en"}`.

    A language pair's rows are read once and serve each of its directions that is asked for, as in ALMA's
    training. Every row carries the languages of all the directions (those it does not use set to None), so
    that the directions concatenate into one dataset.
    """
    parsed = [parse_direction(d) for d in directions]
    if len(set(parsed)) != len(parsed):
        raise DatasetError(f"dataset_directions lists a direction twice: {directions}.")
    languages = sorted({lang for pair in parsed for lang in pair})
    features = Features({"translation": {lang: Value("string") for lang in languages}, "direction": Value("string")})
    pairs: dict[str, Dataset] = {}
    parts = []
    for source, target in parsed:
        names = _pair_names(source, target)
        key = "-".join(sorted((source, target)))  # both directions of a pair share its rows
        if key not in pairs:
            pairs[key] = _load_pair(location, names, split)
        rows = pairs[key]
        if "translation" not in rows.column_names:
            raise DatasetError(f"The {key} rows of {location!r} have no 'translation' column: {rows.column_names}.")

        def to_direction(row, source=source, target=target):
            pair = row["translation"] or {}
            return {
                "translation": {lang: pair.get(lang) if lang in (source, target) else None for lang in languages},
                "direction": f"{source}-{target}",
            }

        parts.append(rows.map(to_direction, remove_columns=rows.column_names, features=features,
                              desc=f"Reading {source}-{target}"))
    return concatenate_datasets(parts)
