"""bench/pipeline_time.py --set: a params.yaml value for one run, as `dvc exp run -S` sets it; a key
that is not there fails by name."""
from __future__ import annotations

import sys

import pytest
import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import pipeline_time  # noqa: E402


def test_set_params_changes_only_the_named_values():
    text = (REPO / "params.yaml").read_text()
    out = yaml.safe_load(pipeline_time.set_params(text, ["data.vectors=data/scale/vectors.npz",
                                                         "train.max_train_windows=500", "export.split.val=0.2"]))
    base = yaml.safe_load(text)
    assert out["data"]["vectors"] == "data/scale/vectors.npz"
    assert out["train"]["max_train_windows"] == 500 and out["export"]["split"]["val"] == 0.2
    for section in ("data", "train", "export"):
        for key in ("vectors", "max_train_windows", "split"):
            out[section].pop(key, None), base[section].pop(key, None)
    assert out == base


@pytest.mark.parametrize("item, needle", [("data.vectros=x", "'data.vectros'"), ("nope.key=1", "'nope'"),
                                          ("data.vectors", "KEY=VALUE")])
def test_set_params_refuses_a_key_params_yaml_does_not_have(item, needle):
    with pytest.raises(SystemExit) as e:
        pipeline_time.set_params((REPO / "params.yaml").read_text(), [item])
    assert str(e.value).startswith("error:") and needle in str(e.value)
