"""bench/original_interleaved.py: the references have the original's layer sizes, and a tiny run writes
the table it promises."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, repository_params

sys.path.insert(0, str(REPO / "bench"))
import original_interleaved as oi  # noqa: E402


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_references_have_the_same_layers_as_ours_where_the_original_matches_them(name):
    from lvm.models import count_parameters, create_model

    ref = oi.REFERENCES[name](768)
    ours = create_model(name, input_dim=768, context_length=100, normalize="none", **repository_params()["model"])
    # the original's figures (5.1M, 7.1M at D=768), which these two architectures share with ours
    assert count_parameters(ref) == count_parameters(ours)
    assert abs(count_parameters(ref) - oi.ORIGINAL_PARAMS[name]) / oi.ORIGINAL_PARAMS[name] < 0.01


def test_a_tiny_interleaved_run_writes_its_ratios(tmp_path):
    import torch

    out, threads = tmp_path / "o.json", torch.get_num_threads()
    try:
        code = oi.main(["--models", "gru", "amn", "--dim", "16", "--context", "10", "--batch", "4", "--rounds", "2",
                        "--steps", "1", "--warmup", "1", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the benchmark sets the process's threads; later tests keep theirs
    assert code == 0
    rows = json.loads(out.read_text())["models"]
    assert set(rows) == {"gru", "amn"}
    for r in rows.values():
        lo, hi = r["speedup_best_min_max"]
        assert 0 < lo <= r["speedup_best"] <= hi and r["seq_per_s"]["reference fp32"] > 0
    assert "| gru |" in out.with_suffix(".md").read_text()
