"""Reproducible outputs: a rerun with unchanged inputs and params writes byte-identical outputs (timings
go to the untracked logs/, never into a declared output), so `dvc repro -f` leaves `git status` and
`dvc status` clean; after a refused input removed a stage's outputs, the restore command in docs/data.md
brings every one back byte-identical; the bf16 encoder stays within the stated tolerance of fp32."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, merge, run_stage, write_params, write_vectors
from test_dvc_experiments import commit, sh
from test_train import TINY

# The export stage's outputs, from dvc.yaml
EXPORT_OUTS = ["data/ctx100/train.npz", "data/ctx100/val.npz", "data/ctx100/test.npz",
               "data/ctx100/metadata_ctx100.json"]


def declared_outputs(root: Path) -> list[str]:
    """Every path dvc.yaml declares as a stage's outs, metrics or plots (folders expanded to files),
    with dvc.yaml's own vars (`${windows}`) filled in as DVC does."""
    import re

    from lvm.pipeline import variables

    names = variables(root / "dvc.yaml")
    paths = []
    for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                paths.append(re.sub(r"\$\{(\w+)\}", lambda m: str(names[m.group(1)]), path))
    files = []
    for p in paths:
        full = root / p
        files += sorted(str(f.relative_to(root)) for f in full.rglob("*") if f.is_file()) if full.is_dir() else [p]
    return files


def tree(root: Path) -> set[str]:
    """Every file under root but git's and DVC's own folders, relative to root."""
    return {str(f.relative_to(root)) for f in root.rglob("*")
            if f.is_file() and not str(f.relative_to(root)).startswith((".git/", ".dvc/"))}


def digests(root: Path, files) -> dict:
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() if (root / f).is_file() else None
            for f in files}


def test_export_stage_rerun_is_byte_identical_and_logs_its_time(tmp_path, run_logs):
    vectors = tmp_path / "in" / "vectors.npz"
    write_vectors(vectors, [30, 25, 40, 20, 35, 28])
    params = write_params(tmp_path / "params.yaml", {"data": {"vectors": str(vectors)}})
    log = run_logs / "export_ctx100.jsonl"
    before = len(log.read_text().splitlines()) if log.is_file() else 0
    runs = []
    for _ in range(2):
        r = run_stage("lvm.stages.export_ctx100", params, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        runs.append(digests(tmp_path, EXPORT_OUTS))
    assert None not in runs[0].values() and runs[0] == runs[1]
    meta = json.loads((tmp_path / EXPORT_OUTS[-1]).read_text())
    assert not any("second" in k for k in meta)
    lines = log.read_text().splitlines()[before:]  # the timings: one log line per run, and on stderr
    assert len(lines) == 2 and json.loads(lines[-1])["seconds"] >= 0
    assert "export_ctx100: seconds" in r.stderr


@pytest.mark.slow
def test_dvc_repro_force_leaves_git_and_dvc_status_clean(tmp_path, monkeypatch):
    """The real dvc.yaml from the vectors on (tiny synthetic corpus, as test_dvc_experiments):
    rerunning every stage with the same inputs and params changes no byte of any declared output."""
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    write_vectors(root / "vectors.npz", [30] * 14, dim=12, seed=3)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    params["data"]["vectors"] = "vectors.npz"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "/vectors.npz\n")
    monkeypatch.delenv("LVM_LOG_DIR")  # the stages log into the project's own logs/ (gitignored)
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    commit(root, "setup")
    before = tree(root)
    stages = ["evaluate", "analyze"]  # and everything upstream of them: all stages but ingest
    sh(root, "dvc", "repro", *stages)
    files = [f for f in declared_outputs(root) if not f.startswith("data/corpus/")]
    # the stages wrote what dvc.yaml declares and nothing else (besides DVC's own files, the timing
    # logs and the resume checkpoints last.pt, which train.resume reads and DVC must not remove)
    written = {f for f in tree(root) - before
               if f != "dvc.lock" and Path(f).name not in (".gitignore", "last.pt")
               and not f.startswith("logs/") and "__pycache__" not in f}
    assert written == set(files), (sorted(written - set(files)), sorted(set(files) - written))
    commit(root, "pipeline")
    first = digests(root, files)
    assert None not in first.values(), [f for f, d in first.items() if d is None]
    out = sh(root, "dvc", "repro", "-f", *stages)
    ran = [s for s in yaml.safe_load((root / "dvc.yaml").read_text())["stages"] if s != "ingest"]
    for stage in ran:
        assert f"Running stage '{stage}'" in out, stage  # really rerun, not restored from the run cache
    second = digests(root, files)
    assert [f for f in files if first[f] != second[f]] == []
    assert sh(root, "git", "status", "--porcelain", stdout_only=True) == ""
    assert "up to date" in sh(root, "dvc", "status", *stages)
    for stage in ("export_ctx100", "train_baseline", "evaluate"):  # the timings went to the log
        assert len((root / "logs" / f"{stage}.jsonl").read_text().splitlines()) == 2, stage


@pytest.mark.slow
def test_ingest_rerun_is_byte_identical(tmp_path, small_wiki):
    """The real encoder on three short articles, twice: the same vectors.npz and stats.json bytes."""
    params = write_params(tmp_path / "params.yaml", {"ingest": {"source": str(small_wiki), "max_articles": 3}})
    runs = []
    for _ in range(2):
        r = run_stage("lvm.stages.ingest", params, cwd=tmp_path, timeout=600)
        assert r.returncode == 0, r.stderr
        runs.append(digests(tmp_path, ["data/corpus/vectors.npz", "data/corpus/stats.json"]))
    assert None not in runs[0].values() and runs[0] == runs[1]
    # the timings went to the one stderr line of log_run (never into the outputs compared above)
    timing = [line for line in r.stderr.splitlines() if line.startswith("ingest: source ")]
    assert len(timing) == 1 and "seconds_parse " in timing[0] and "seconds_encode " in timing[0], r.stderr[-2000:]


def _export_repo(root: Path) -> Path:
    root.mkdir()
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    write_vectors(root / "vectors.npz", [30, 25, 40, 20, 35, 28], dim=12, seed=3)
    texts = np.array(["x"] * 178, dtype=object)  # the same file with its texts pickled: refused
    with np.load(root / "vectors.npz") as z:
        np.savez(root / "pickled.npz", **{k: z[k] for k in z.files}, concept_texts=texts)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    params["data"]["vectors"] = "vectors.npz"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "/vectors.npz\n/pickled.npz\n")
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    commit(root, "setup")
    sh(root, "dvc", "repro", "export_ctx100")
    commit(root, "export")
    return root


# docs/data.md, "What happens on bad input": the restore command after a refused `dvc exp run -S`
RESTORE = "git show HEAD:params.yaml > params.yaml && dvc repro"


@pytest.mark.slow
@pytest.mark.parametrize("run_cache", [True, False], ids=["run-cache", "fresh-clone-without-run-cache"])
def test_refused_input_outputs_come_back_with_the_documented_command(tmp_path, run_cache):
    root = _export_repo(tmp_path / "repo")
    good = digests(root, EXPORT_OUTS)
    assert None not in good.values()
    assert RESTORE in (REPO / "docs" / "data.md").read_text()
    bad = sh(root, "dvc", "exp", "run", "export_ctx100", "-S", "data.vectors=pickled.npz", check=False)
    assert "concept_texts" in bad and "pickle" in bad, bad
    gone = digests(root, EXPORT_OUTS)
    assert set(gone.values()) == {None}, gone  # DVC removed them all before the command refused the input
    if not run_cache:  # as in a clone that pulled the outputs but not the run cache: the stage reruns
        shutil.rmtree(root / ".dvc" / "cache" / "runs")
        # the run cache also put the cache: false outputs into the cache; `dvc pull` brings only the others
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["export_ctx100"]
        for out in lock["outs"]:
            if out["path"] == "data/ctx100/metadata_ctx100.json":
                (root / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:]).unlink()
    # the documented command (`dvc repro` restricted to the one stage this scratch project can run);
    # vectors.npz and pickled.npz have the same length: `git checkout -- params.yaml` would do nothing
    (root / "params.yaml").write_text(sh(root, "git", "show", "HEAD:params.yaml", stdout_only=True))
    out = sh(root, "dvc", "repro", "export_ctx100")
    if run_cache:
        assert "Stage 'export_ctx100' is cached - skipping run" in out, out
    else:
        assert "Running stage 'export_ctx100'" in out, out
    assert digests(root, EXPORT_OUTS) == good
    assert sh(root, "git", "status", "--porcelain", stdout_only=True) == ""
    assert "up to date" in sh(root, "dvc", "status", "export_ctx100")


@pytest.mark.slow
def test_bf16_encoder_within_the_readme_tolerance_of_fp32(small_wiki):
    """docs/data.md: bf16 ingest vectors are within cosine 0.99 of fp32 (measured min ~0.994), and fp32 is
    unchanged by input order and batch size to 1e-5 (lvm.corpus.encode fixes the batches)."""
    from lvm.corpus import encode, load_encoder
    from lvm.stages.ingest import build_chunks

    _, texts, _, _ = build_chunks(small_wiki, 15, 3, 2)
    texts = texts[:96]
    fp32 = encode(load_encoder("minilm", "fp32"), texts, 32, progress=False)
    bf16 = encode(load_encoder("minilm", "bf16"), texts, 32, progress=False)
    cos = (fp32 * bf16).sum(1)
    assert cos.min() >= 0.99, cos.min()
    model = load_encoder("minilm", "fp32")
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = encode(model, [texts[i] for i in perm], 32, progress=False)[np.argsort(perm)]
    assert np.array_equal(shuffled, fp32)  # same batches whatever the input order
    assert np.abs(encode(model, texts, 16, progress=False) - fp32).max() < 1e-5


class BatchSensitiveEncoder:
    """Stands in for SentenceTransformer: cuts the list it gets into `batch_size` pieces in the order
    given, and each vector depends a little on its batch (as padding and kernel blocking do)."""

    def encode(self, texts, batch_size, convert_to_tensor, normalize_embeddings, show_progress_bar):
        import torch

        rows = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            pad = max(len(t) for t in batch)
            for t in batch:
                g = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
                rows.append(g.standard_normal(8) + 1e-3 * pad)
        return torch.tensor(np.array(rows), dtype=torch.float32)


def test_encode_batches_do_not_depend_on_input_order():
    from lvm.corpus import encode

    rng = np.random.default_rng(0)
    texts = [" ".join(["w"] * int(rng.integers(1, 12)) + [str(i % 40)]) for i in range(300)]
    ref = encode(BatchSensitiveEncoder(), texts, 16, progress=False)
    perm = rng.permutation(len(texts))
    shuffled = encode(BatchSensitiveEncoder(), [texts[i] for i in perm], 16, progress=False)[np.argsort(perm)]
    assert np.array_equal(ref, shuffled)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1, atol=1e-6)


# Denormal flushing must reach every intra-op thread, whatever torch work a process did before
# set_threads (lvm.ablation fitted baselines first, and its gru trained to other last digits).
FLUSH_SCRIPT = r"""
import lvm.runtime                  # what any lvm entry point imports before it works
import torch
torch.set_num_threads(2)
torch.ones(1 << 22).mul(2)          # parallel work before set_threads: the OpenMP pool exists now
lvm.runtime.set_threads(2)
y = torch.full((1 << 22,), 2e-38) * 0.25   # 5e-39, a denormal result: 0 wherever flushing is on
half = y.numel() // 2
print(int((y[:half] != 0).sum()), int((y[half:] != 0).sum()))
"""


def test_denormals_flushed_on_every_thread_after_earlier_parallel_work():
    out = subprocess.run([sys.executable, "-c", FLUSH_SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"], f"denormals left unflushed (first half, second half): {out}"
