"""Loading the datasets a recipe names, as `trl sft` loads them: a local file, a hub dataset, a mixture
(`datasets:`, through TRL's own `get_dataset`), or translation directions; streamed when the recipe asks.

Loading stops at a `datasets.Dataset` (or `IterableDataset`) of raw rows; turning rows into what is rated and
trained on is the job of `formats`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from datasets import (
    Dataset,
    DatasetDict,
    Features,
    IterableDataset,
    Value,
    concatenate_datasets,
    get_dataset_config_names,
    load_dataset,
)
from datasets.exceptions import DatasetGenerationError
from pyarrow import ArrowException
from trl import DatasetMixtureConfig, get_dataset

from ..errors import DatasetError
from .formats import LANGUAGE_NAMES

logger = logging.getLogger(__name__)


@dataclass
class DataArguments(DatasetMixtureConfig):
    """Dataset keys of a recipe beyond TRL's `ScriptArguments`: TRL's mixture keys (`datasets`, `streaming`,
    `test_split_size`), as `trl sft` reads them, and `dataset_directions`."""

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


def _mixture(script_args, data_args: DataArguments | None, seed: int) -> DatasetDict | None:
    """The recipe's `datasets:` mixture, loaded by TRL's `get_dataset`, or None when it names none.

    `test_split_size` is applied here with `seed` rather than by `get_dataset`, which splits at random: the same
    recipe must give the same training rows on every run, or a resumed run or the score store would meet another
    pool.
    """
    if data_args is None or not data_args.datasets:
        return None
    if data_args.dataset_directions:
        raise DatasetError("dataset_directions and datasets (a mixture) cannot be combined: list the translation files "
                           "under one of them.")
    if script_args.dataset_name is not None:
        logger.warning("Both datasets (a mixture) and dataset_name are set: the mixture is used, as trl sft does.")
    try:
        loaded = get_dataset(dataclasses.replace(data_args, test_split_size=None))
    except ValueError as error:  # TRL's own message (a fraction on some datasets only, fractions when streaming)
        raise DatasetError(f"The datasets mixture cannot be loaded: {error}") from None
    if data_args.test_split_size is None:
        return loaded
    if data_args.streaming:
        raise DatasetError("test_split_size cannot split a streamed mixture: set streaming: false, or leave "
                           "test_split_size out and set eval_strategy: no.")
    return loaded["train"].train_test_split(test_size=data_args.test_split_size, seed=seed)


def _split_of(dataset: DatasetDict, split: str, key: str):
    if split not in dataset:
        hint = " Set test_split_size to split the mixture." if key == "dataset_test_split" else ""
        raise DatasetError(f"The datasets mixture has no {split!r} split ({key}); it has {', '.join(dataset)}.{hint}")
    return dataset[split]


def _streaming(script_args) -> bool:
    return bool(getattr(script_args, "dataset_streaming", False))


def load_datasets(script_args, data_args: DataArguments | None = None, with_eval: bool = False, seed: int = 42):
    """(train rows, eval rows or None) as a recipe names them, as `trl sft` loads them.

    Train rows: the `datasets:` mixture's `dataset_train_split`; else `dataset_name` as a local file (read by
    extension, `LOCAL_FILE_BUILDERS`) or a hub id; the bundled demo dataset when both are left out; translation
    directions when `dataset_directions` is set. With `dataset_streaming` (or the mixture's `streaming`), an
    IterableDataset. Eval rows, only `with_eval`: the `dataset_test_split` of the same source (a mixture's comes
    from `test_split_size`, split with `seed`). A local file holds one split only, so it is refused then.
    """
    mixture = _mixture(script_args, data_args, seed)
    if mixture is not None:
        return (_split_of(mixture, script_args.dataset_train_split, "dataset_train_split"),
                _split_of(mixture, script_args.dataset_test_split, "dataset_test_split") if with_eval else None)
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
        if _streaming(script_args):
            raise DatasetError("dataset_streaming is not supported with dataset_directions, which join the directions "
                               "of each language pair in memory. Set dataset_streaming: false.")

        def load(split):
            return load_translation_directions(name, directions, split=split)
    elif name is None or _names_a_file(name):
        if with_eval:
            raise DatasetError(
                f"eval_strategy asks for an eval set, but dataset_name is {'left out' if name is None else 'a local file'}, "
                f"which has no {script_args.dataset_test_split!r} split (dataset_test_split). Use a hub dataset with that "
                "split, a datasets mixture with test_split_size, or set eval_strategy: no; from Python, pass "
                "eval_dataset to SelectiveSFTTrainer."
            )
        if name is None:
            logger.warning("No dataset_name given: using the bundled demo dataset.")
            name = demo_dataset_path()
        if not os.path.isfile(name):
            raise DatasetError(f"dataset_name {name!r} looks like a local file, but it does not exist.")
        return read_local_file(name, streaming=_streaming(script_args)), None
    else:
        def load(split):
            try:
                return load_dataset(name, name=script_args.dataset_config, split=split, streaming=_streaming(script_args))
            except ValueError as error:
                if _is_empty_split(error):
                    raise DatasetError(f"Dataset {name!r} has no rows in its {split!r} split: the training dataset is "
                                       "empty. Check dataset_name, dataset_config and the split.") from None
                raise
    return load(script_args.dataset_train_split), load(script_args.dataset_test_split) if with_eval else None


def load_train_dataset(script_args, data_args: DataArguments | None = None) -> Dataset | IterableDataset:
    """The training rows alone (`load_datasets`)."""
    return load_datasets(script_args, data_args)[0]


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


def read_local_file(name: str, streaming: bool = False) -> Dataset | IterableDataset:
    """The rows of one local data file, read by `datasets` with the builder its extension names.

    A file that cannot be parsed is one `DatasetError` naming the file and the parser's own reason (which line,
    which field), instead of `datasets`' chained `DatasetGenerationError`. A streamed file is parsed only as it
    is read: its errors come while the rows are rated, and the CLI reports them in one line too.
    """
    builder, options = local_file_builder(name)
    if os.path.getsize(name) == 0:
        raise DatasetError(f"dataset_name {name!r} is an empty file: the training dataset has no rows.")
    try:
        return load_dataset(builder, data_files=name, split="train", streaming=streaming, **options)
    except ValueError as error:
        if _is_empty_split(error):
            raise DatasetError(f"dataset_name {name!r} holds no rows: the training dataset is empty.") from None
        raise unreadable_file_error(name, builder, error) from None
    except (DatasetGenerationError, ArrowException, StopIteration) as error:
        raise unreadable_file_error(name, builder, error) from None


def _is_empty_split(error: ValueError) -> bool:
    """Whether `datasets` refused a split for having no rows ([], blank lines, a CSV header alone)."""
    return "corresponds to no data" in str(error)


def parser_reason(error: BaseException) -> str:
    """The parser's own words for a file it could not read, on one line: under `datasets`' generic
    `DatasetGenerationError`, its cause (pyarrow's or pandas' error, which names the line or field)."""
    reason = error.__cause__ if isinstance(error, DatasetGenerationError) and error.__cause__ else error
    return " ".join(str(reason).split()).rstrip(".") or type(reason).__name__


def unreadable_file_error(name: str, builder: str, error: BaseException) -> DatasetError:
    """`error` from parsing a local data file, as one line: the file, its type, the parser's reason, the fix."""
    detail = parser_reason(error)
    kind = {"json": "JSON or JSON lines", "csv": "CSV", "parquet": "Parquet", "arrow": "Arrow", "text": "text"}[builder]
    return DatasetError(f"dataset_name {name!r} cannot be read as {kind}: {detail}. Fix the file, or convert it to "
                        "JSON lines (one object per line).")


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
            return read_local_file(str(candidates[0]))
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
