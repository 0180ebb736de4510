"""DVC smoke test: the data stages of the real dvc.yaml run in a scratch project, then are a no-op."""
import json
import shutil
import subprocess

import pytest
import yaml

from conftest import BIN, REPO, stage_env

STAGES = ["ingest", "export_ctx100"]


def dvc(args, cwd, timeout=600):
    return subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=stage_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_dvc_repro_data_stages(tmp_path, small_wiki):
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, proj / name)
    # stage deps are paths under src/; the stages themselves import the installed (editable) package
    shutil.copytree(REPO / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for args in (["init", "--no-scm"], ["config", "core.analytics", "false"],
                 ["config", "core.check_update", "false"]):
        r = dvc(args, proj)
        assert r.returncode == 0, r.stderr

    params = yaml.safe_load((proj / "params.yaml").read_text())
    params.setdefault("ingest", {}).update(source=str(small_wiki), max_articles=4)
    params.setdefault("data", {}).update(context_length=10)
    params.setdefault("export", {}).update(overlap=5)
    params.setdefault("model", {}).update(chunk_size=5)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    r = dvc(["repro", *STAGES], proj)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    for stage in STAGES:
        assert f"Running stage '{stage}'" in r.stdout

    stats = json.loads((proj / "data/corpus/stats.json").read_text())
    assert stats["articles"] == 4 and stats["vector_dim"] == 384
    meta = json.loads((proj / "data/ctx100/metadata_ctx100.json").read_text())
    assert meta["context_length"] == 10 and meta["overlap"] == 5 and meta["stride"] == 5
    assert meta["total_articles"] == 4 and meta["article_ids_present"] is True
    assert all(meta["splits"][s]["windows"] > 0 for s in ("train", "val", "test"))
    assert meta["total_windows"] == sum(meta["splits"][s]["windows"] for s in ("train", "val", "test"))
    import numpy as np

    articles = {}
    for s in ("train", "val", "test"):
        with np.load(proj / f"data/ctx100/{s}.npz", allow_pickle=False) as z:
            articles[s] = set(np.unique(z["article_indices"]).tolist())
            assert z["window_starts"].size == meta["splits"][s]["windows"]
    assert not (articles["train"] & articles["val"] or articles["train"] & articles["test"]
                or articles["val"] & articles["test"])
    assert articles["train"] | articles["val"] | articles["test"] == {0, 1, 2, 3}
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    assert set(STAGES) <= set(lock["stages"])

    outs = [proj / "data/corpus/vectors.npz", *(proj / f"data/ctx100/{s}.npz" for s in ("train", "val", "test"))]
    mtimes = [p.stat().st_mtime_ns for p in outs]
    again = dvc(["repro", *STAGES], proj)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Running stage" not in again.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change" in again.stdout, again.stdout
    assert "up to date" in again.stdout
    assert [p.stat().st_mtime_ns for p in outs] == mtimes
