"""Shared fixtures: small synthetic vector files, tiny params files, stage subprocesses, real wiki pages."""
from __future__ import annotations

import bz2
import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests; its python must run the stages too



def merge(base: dict, over: dict) -> dict:
    """`base` with the nested mapping `over` in place, section by section, key by key (copies)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in over.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# The repository's params.yaml as written. A params file sets every key (lvm.config), so each params
# dict below is this one with a few keys changed.
REPO_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def repository_params() -> dict:
    """The repository's params.yaml as the stages see it (validated: ints of number keys as floats)."""
    from lvm.config import load_params

    return load_params(REPO / "params.yaml")

# How the tests train where they say nothing else: the simplest setup (the original's loss and
# targets; no anchor, normalisation, sampling or early stopping), not params.yaml's, so that a test's
# run stays small and its numbers easy to reason about.
SIMPLE_TRAINING = {
    "export": {"val_stride": 0},
    "model": {"anchor": "none"},
    "train": {"epochs": 20, "lr": 5e-4, "loss": "mse", "window_stride": 0, "max_train_windows": 0,
              "targets": "last", "normalize": "none", "patience": 0,
              # validation on the exported val windows, after the whole context (what evaluate scores):
              # the tests compare best_val_cosine with scores computed from those windows
              "val_min_context_share": 0.0},
}

# Small, valid settings for stage runs on tiny inputs (L=10 keeps model.chunk_size and
# evaluate.ridge_k defaults valid).
TINY_PARAMS = merge(REPO_PARAMS, {
    "data": {"context_length": 10},
    "export": {"overlap": 5, "seed": 7, "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "val_stride": 0},
    "model": SIMPLE_TRAINING["model"],
    "train": SIMPLE_TRAINING["train"],
})

# Short real articles of the gensim Wikipedia shard (tens of chunks each), so the real encoder runs fast.
SHORT_ARTICLES = ("Aa River", "Answer", "Abstract (law)", "Affirming the consequent", "Adventure")


def stage_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", DVC_STUDIO_OFFLINE="true", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def unit_rows(rng, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_vectors(path, lengths, dim: int = 8, seed: int = 0, article_ids=None, interleave: bool = False,
                  with_articles: bool = True, with_chunks: bool = True, **extra) -> dict:
    """Write a vectors npz with one article per entry of `lengths` and return the arrays written.

    Article ids default to non-dense values (10, 13, 16, ...) so code that confuses ids with positions
    fails. `interleave` mixes the articles' rows in the file while keeping each article's rows in chunk
    order (the file order the loader must respect). `extra` arrays are stored as given.
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    ids = np.asarray(article_ids if article_ids is not None else 10 + 3 * np.arange(lengths.size))
    article = np.repeat(ids, lengths)
    if interleave:
        article = article[rng.permutation(article.size)]
    chunk = np.zeros(article.size, dtype=np.int64)
    for a in ids:
        rows = np.flatnonzero(article == a)
        chunk[rows] = np.arange(rows.size)
    arrays = {"vectors": unit_rows(rng, article.size, dim)}
    if with_articles:
        arrays["article_indices"] = article.astype(np.int32)
    if with_chunks:
        arrays["chunk_indices"] = chunk.astype(np.int32)
    arrays.update(extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def write_params(path, overrides: dict | None = None, base: dict = TINY_PARAMS) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(merge(base, overrides or {}), sort_keys=False))
    return path


def stage_args(stage: str) -> list[str]:
    """The arguments dvc.yaml's `stage` passes to its module (after `python -m lvm.stages.X`), its
    ${vars} filled: tests run a stage with the very paths the pipeline gives it."""
    from lvm.pipeline import command

    argv = command(stage, REPO / "dvc.yaml")
    return argv[argv.index("-m") + 2:]


def module_args(module: str) -> list[str]:
    """stage_args of the first dvc.yaml stage that runs `module`."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stage = next(name for name, s in stages.items() if f"-m {module} " in s["cmd"] + " ")
    return stage_args(stage)


def run_stage(module: str, params: Path, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "--params", str(params), *module_args(module)], cwd=cwd,
                          env=stage_env(), capture_output=True, text=True, timeout=timeout)


def write_small_wiki(path, titles=SHORT_ARTICLES, with_redirect: bool = True) -> Path:
    """A MediaWiki XML dump (bz2) holding the named real pages of the gensim shard (plus a redirect)."""
    from lvm.corpus import default_source

    wanted, kept, redirect = set(titles), {}, None
    with bz2.open(default_source(), "rb") as f:
        for _, el in ET.iterparse(f):
            if el.tag.rsplit("}", 1)[-1] != "page":
                continue
            title = el.findtext("{*}title")
            if title in wanted:
                kept[title] = ET.tostring(el, encoding="unicode")
            elif with_redirect and redirect is None and el.find("{*}redirect") is not None:
                redirect = ET.tostring(el, encoding="unicode")
            el.clear()
    missing = wanted - set(kept)
    assert not missing, f"pages not in the gensim shard: {missing}"
    pages = ([redirect] if redirect else []) + [kept[t] for t in titles]
    xml = '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">\n' + "\n".join(pages) + "\n</mediawiki>\n"
    path = Path(path)
    with bz2.open(path, "wt", encoding="utf-8") as f:
        f.write(xml)
    return path


@pytest.fixture(autouse=True, scope="session")
def run_logs(tmp_path_factory):
    """Stage timings (lvm.io.log_run) of the tests go to a scratch folder, not the checkout's logs/;
    subprocesses inherit it through stage_env()."""
    path = tmp_path_factory.mktemp("logs")
    old = os.environ.get("LVM_LOG_DIR")
    os.environ["LVM_LOG_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("LVM_LOG_DIR", None)
    else:
        os.environ["LVM_LOG_DIR"] = old


@pytest.fixture
def make_npz(tmp_path):
    """make_npz(lengths, name='vectors.npz', **kw) -> (path, arrays); see write_vectors."""

    def make(lengths, name: str = "vectors.npz", **kw):
        path = tmp_path / name
        return path, write_vectors(path, lengths, **kw)

    return make


@pytest.fixture(scope="session")
def small_wiki(tmp_path_factory) -> Path:
    return write_small_wiki(tmp_path_factory.mktemp("wiki") / "small.xml.bz2")
