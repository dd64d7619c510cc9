"""`selectit-trl export OUTPUT_DIR --to DIR`: a selection's kept rows as a dataset of their own, with its card.

The folder holds `data/train.jsonl` (the kept rows exactly as `selection/subset.jsonl` has them), the report's
figures, and a `README.md` dataset card whose front matter tells `datasets.load_dataset(DIR)` where the data
is. `--push_to_hub REPO_ID` uploads the same folder as a dataset repository.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..errors import HubUnreachable, SelectionFilesError
from ..store import outputs
from ..store.summary import Summary
from ..training.card import card_section
from ..training.model_card import hub_id
from .plots import PLOT_FILES

DATA_FILE = "data/train.jsonl"
FIGURES_DIR = "figures"
# What an export folder holds, and so what exporting again may replace.
_OURS = ("README.md", "data", FIGURES_DIR)


def dataset_card(summary: Summary, figures: list[str], name: str, location: str) -> str:
    """The dataset card: front matter for the Hub and `load_dataset`, then what was kept and how."""
    from huggingface_hub import DatasetCard, DatasetCardData

    counts = summary.counts
    source = summary.selection_config.get("selection_dataset_name")
    data = DatasetCardData(
        pretty_name=name,
        tags=["selectit-trl", "data-selection", *summary.strategy],
        task_categories=["text-generation"],
        source_datasets=[source] if hub_id(source) else None,
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE}]}],
    )
    share = 100 * counts["selected"] / max(counts["total"], 1)
    lines = [
        f"# {name}",
        "",
        f"The {counts['selected']:,} rows ({share:.1f}%) of {f'`{source}`' if source else 'a dataset'} that "
        f"{summary.label} kept, out of {counts['total']:,}, exactly as they were given: every column, in the source's "
        "order. Made with selectit-trl; the scoring models and settings are below.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'rows = load_dataset("{location}", split="train")',
        "```",
        "",
        card_section(summary, about="dataset"),
        f"The dataset's content hash (sha256 of its rows as rated): `{summary.scoring_key.get('dataset_sha256')}`.",
        "",
    ]
    if figures:
        lines += ["## Figures", "", *(f"![{Path(f).stem.replace('_', ' ')}]({FIGURES_DIR}/{f})" for f in figures), ""]
    return DatasetCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines)).content


def export_selection(output_dir, to, push_to_hub: str | None = None, private: bool = False) -> Path:
    """Write the export folder `to`, and upload it when `push_to_hub` names a repository. Returns the folder."""
    selection = outputs.selection_dir(output_dir)
    raw = outputs.read_summary(output_dir)
    if raw is None:
        raise SelectionFilesError(f"{output_dir} holds no finished selection (no readable selection/summary.json): "
                                  "run `selectit-trl score` first.")
    summary = Summary.from_json(raw)
    subset = selection / outputs.SUBSET_FILE
    if not subset.is_file():
        raise SelectionFilesError(f"{subset} is missing: {outputs.REBUILD_SCORES}")
    target = Path(to)
    strangers = sorted(p.name for p in target.iterdir() if p.name not in _OURS) if target.is_dir() else []
    if strangers:
        raise SelectionFilesError(f"{target} already holds other files ({', '.join(strangers[:5])}): export into an "
                                  "empty or new folder.")
    (target / DATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(subset, target / DATA_FILE)
    figures = [name for name in PLOT_FILES if (selection / name).is_file()]
    if figures:
        (target / FIGURES_DIR).mkdir(exist_ok=True)
        for name in figures:
            shutil.copyfile(selection / name, target / FIGURES_DIR / name)
    name = push_to_hub.split("/")[-1] if push_to_hub else target.resolve().name
    card = dataset_card(summary, figures, name, push_to_hub or str(target.resolve()))
    (target / "README.md").write_text(card, encoding="utf-8")
    if push_to_hub:
        upload(target, push_to_hub, private)
    return target


def upload(folder: Path, repo_id: str, private: bool) -> None:
    """Create the dataset repository if needed and upload the folder; one clear error when the Hub is out of reach."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    later = (f"The dataset is written in {folder}; upload it when online with `hf upload {repo_id} {folder} "
             "--repo-type dataset`, or run this command again.")
    try:
        api = HfApi()
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder,
                          commit_message="Upload a selection made with selectit-trl")
    except OfflineModeIsEnabled:
        raise HubUnreachable(f"Cannot push to {repo_id}: HF_HUB_OFFLINE is set. {later}") from None
    except HfHubHTTPError as error:
        raise HubUnreachable(f"The Hub refused the push to {repo_id} ({error}); log in with `hf auth login` and check "
                             f"the repository's name and your rights. {later}") from None
    except Exception as error:
        # No network: huggingface_hub's HTTP client has changed between releases (requests, httpx, httpx2), so its
        # connection errors are told by the library they come from.
        if type(error).__module__.split(".")[0] not in ("requests", "urllib3", "httpx", "httpx2", "httpcore"):
            raise
        raise HubUnreachable(f"Cannot reach the Hugging Face Hub to push {repo_id} ({error}). {later}") from None


USAGE = """usage: selectit-trl export OUTPUT_DIR --to DIR [--push_to_hub REPO_ID] [--private]

Write a finished selection's kept rows (OUTPUT_DIR/selection/subset.jsonl) as a dataset of their own: DIR/data/
train.jsonl, the report's figures, and a README.md dataset card (source, strategy and settings, ratio, counts,
the scoring models). `datasets.load_dataset(DIR)` reads it; --push_to_hub uploads it as a dataset repository.
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="selectit-trl export", usage=USAGE.splitlines()[0][7:], description=USAGE)
    parser.add_argument("output_dir")
    parser.add_argument("--to", required=True, help="the folder to write the dataset into")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="also upload it to this dataset repository")
    parser.add_argument("--private", action="store_true", help="make a new repository private")
    args = parser.parse_args(argv)
    folder = export_selection(args.output_dir, args.to, args.push_to_hub, args.private)
    print(f"Exported {folder}" + (f" and pushed it to https://huggingface.co/datasets/{args.push_to_hub}"
                                  if args.push_to_hub else "") + ".")
    return 0
