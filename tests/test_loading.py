"""Local data files named by `dataset_name` are read by their extension, row for row."""

import gzip
import json
from types import SimpleNamespace

import pytest
from datasets import Dataset

from selectit_trl.data.loading import load_train_dataset
from selectit_trl.errors import DatasetError


def script_args(name) -> SimpleNamespace:
    return SimpleNamespace(dataset_name=str(name), dataset_config=None, dataset_train_split="train")


@pytest.fixture
def rows(demo_rows):
    return [{k: r[k] for k in ("instruction", "input", "output")} for r in demo_rows[:12]]


def write(path, rows):
    """The rows in the file type that `path`'s extension names, written with tools other than the loader's."""
    name = path.name
    if name.endswith(".parquet"):
        Dataset.from_list(rows).to_parquet(str(path))
    elif name.endswith(".arrow"):
        table = Dataset.from_list(rows).data.table
        import pyarrow as pa

        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    elif name.endswith((".csv", ".tsv")):
        import csv

        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t" if name.endswith(".tsv") else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:  # JSON lines, plain, named .ndjson, without an extension, or gzip-compressed
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode("utf-8")))
        else:
            path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["data.parquet", "data.csv", "data.tsv", "data.json", "data.jsonl", "data.ndjson",
                                  "data.jsonl.gz", "data.arrow", "data"])
def test_a_local_file_is_read_by_its_extension_row_for_row(rows, tmp_path, name):
    # The demo rows have empty and non-empty inputs; CSV cannot tell an empty field from a missing one, and
    # `datasets` reads it as None, so None stands for "" here.
    assert any(r["input"] == "" for r in rows) and any(r["input"] for r in rows)
    loaded = load_train_dataset(script_args(write(tmp_path / name, rows)))
    as_read = [{k: ("" if v is None else v) for k, v in row.items()} for row in loaded]
    assert as_read == rows


def test_a_local_file_of_another_type_is_refused_naming_the_types_that_are_read(rows, tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"not read")
    with pytest.raises(DatasetError, match=r"not read \(\.xlsx\)\. Local files are read by extension: .*\.csv.*\.parquet"):
        load_train_dataset(script_args(path))


def test_a_missing_parquet_file_is_said_to_be_missing(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_train_dataset(script_args(tmp_path / "nope.parquet"))
