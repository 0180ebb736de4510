"""Every repository path the README and docs/ name exists, and the README's Layout lists every module.

A path is named in backticks (`src/lvm/training.py`, `metrics/evaluate.json`, also inside a command
such as `python bench/throughput.py --device cuda`) or as a relative link. Backticked paths are read
from the repository root, links from the doc's folder. Not checked: outputs that are not in git
(data/, models/, logs/, dvc_plots/, *.pt, *.npz: a fresh clone has them only after `make pipeline`) and
placeholders (<exp>, ${windows}, NAME, ...).
"""
from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# written by the pipeline, a run or DVC, never committed
GENERATED_DIRS = ("data", "models", "logs", "dvc_plots", ".venv", ".dvc/cache", ".dvc/tmp")
# local inputs a command records and git ignores (one clone's `dvc exp show --json`, several MB)
LOCAL_FILES = ("metrics/crossval_runs.json",)
GENERATED_SUFFIXES = (".pt", ".npz", ".jsonl")
PLACEHOLDER = re.compile(r"[<>$]|\bNAME\b|\.\.\.")


def tracked(root: Path = REPO) -> set[str]:
    """The files git tracks and the folders that hold them (what a fresh clone has)."""
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    folders = {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parts) - 1)}
    return set(files) | folders


def expand(path: str) -> list[str]:
    """`metrics/{a,b}.json` -> the paths it stands for (`{best,final}.pt` style alternatives)."""
    parts = re.split(r"\{([^{}]*,[^{}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def named_paths(text: str, top_level: set[str]) -> set[str]:
    """The repository paths named in backticks in `text`: tokens whose first part is one of the
    repository's top-level entries (`top_level`), generated outputs and placeholders left out."""
    out = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for token in re.split(r"[\s=:;()\"']+", span):  # (not at commas: `metrics/{a,b}.json`)
            token = token.rstrip(".,")
            first = token.split("/", 1)[0]
            if first not in top_level or ("/" not in token and "." not in token):
                continue
            if any(token == g or token.startswith(g + "/") for g in GENERATED_DIRS) or token in LOCAL_FILES or PLACEHOLDER.search(token):
                continue
            for path in expand(token):
                if not path.rstrip("/").endswith(GENERATED_SUFFIXES):
                    out.add(path.rstrip("/"))
    return out


def relative_links(text: str) -> set[str]:
    """Relative link targets (file part) outside code blocks and inline code."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return {t.partition("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)
            if not re.match(r"[a-z]+:", t) and t.partition("#")[0]}


def missing_paths(text: str, doc_dir: Path, root: Path = REPO, files: set[str] | None = None) -> list[str]:
    """The paths `text` (a doc in `doc_dir`) names that the repository does not hold, sorted."""
    files = tracked(root) if files is None else files
    top_level = {f.split("/", 1)[0] for f in files} | {g.split("/", 1)[0] for g in GENERATED_DIRS}
    missing = []
    for path in named_paths(text, top_level):
        if "*" in path:  # a glob: something must match it
            if not any(Path(f).match(path) for f in files):
                missing.append(path)
        elif path not in files:
            missing.append(path)
    for link in relative_links(text):
        path = Path(doc_dir, link).resolve()
        try:
            rel = str(path.relative_to(root.resolve()))
        except ValueError:
            missing.append(link)
            continue
        if rel not in files and rel != ".":
            missing.append(link)
    return sorted(missing)


@pytest.fixture(scope="module")
def files() -> set[str]:
    return tracked()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_path_a_doc_names_exists(doc, files):
    assert missing_paths(doc.read_text(), doc.parent, files=files) == [], \
        f"{doc.relative_to(REPO)} names paths the repository does not have"


def test_the_checker_catches_a_planted_missing_path(files):
    text = ("Run `python bench/throughput.py --device cuda`, read `src/lvm/training.py` and "
            "`metrics/{evaluate,headline}.json`; see [models](models.md) and `plots/*.png`.\n"
            "Planted: `src/lvm/train.py`, `docs/nowhere.md`, `metrics/{evaluate,gone}.json`, "
            "`bench/results/*.nothing`, [gone](gone.md).\n"
            "Not checked: `models/<exp>/best.pt`, `data/ctx100/train.npz`, `${windows}/val.npz`, "
            "`logs/train_baseline.jsonl`, `lvm.models`, `train/loss`, `/proc/self/status`.\n")
    assert missing_paths(text, REPO / "docs", files=files) == [
        "bench/results/*.nothing", "docs/nowhere.md", "gone.md", "metrics/gone.json", "src/lvm/train.py"]


# --- the README's Layout block --------------------------------------------------------------------

def layout_block(readme: str) -> str:
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```\n(.*?)```", section, flags=re.S).group(1)


def layout_modules(block: str) -> set[str]:
    """The src/lvm modules the Layout block lists, as paths: `name.py` on the `src/lvm/` rows, and on
    the `  models/` and `  stages/` rows (each with its indented continuation lines) under those."""
    folder, out = None, set()
    for line in block.splitlines():
        if line.startswith("src/lvm/"):
            folder = "src/lvm"
        elif line.startswith(("  models/", "  stages/")):
            folder = "src/lvm/" + line.split("/", 1)[0].strip()
        elif not line.startswith(" "):
            folder = None  # another top-level entry: data/, models/ (checkpoints), ...
        if folder:
            out |= {f"{folder}/{name}" for name in re.findall(r"\b\w+\.py\b", line)}
    return out


def test_readme_layout_lists_every_module_and_only_modules_that_exist():
    block = layout_block((REPO / "README.md").read_text())
    listed = layout_modules(block)
    # (an empty __init__.py only marks a package)
    modules = {str(p.relative_to(REPO)) for p in (REPO / "src" / "lvm").rglob("*.py") if p.stat().st_size}
    assert sorted(modules - listed) == [], "modules the README's Layout does not list"
    assert sorted(listed - modules) == [], "the README's Layout lists modules that do not exist"
    for folder in ("src/lvm/", "models/", "stages/", "bench/", "tests/", "docs/"):
        assert folder in block, folder


def test_layout_check_catches_a_module_that_moved():
    old = ("```\nsrc/lvm/  config.py train.py\n  models/ gru.py\n          lstm.py\n"
           "  stages/ evaluate.py\nmodels/   checkpoints.py\n```")
    assert layout_modules(old) == {"src/lvm/config.py", "src/lvm/train.py", "src/lvm/models/gru.py",
                                   "src/lvm/models/lstm.py", "src/lvm/stages/evaluate.py"}
    assert "src/lvm/train.py" not in {str(p.relative_to(REPO)) for p in (REPO / "src" / "lvm").rglob("*.py")}
