"""The README's generated sections match what the code produces."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def section(name: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(f"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert m, f"README has no {name} section"
    return m.group(1).strip()


def test_models_table_is_generated_from_the_code():
    out = subprocess.run([sys.executable, "-m", "lvm.models", "--dim", "768", "--context", "100"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert section("models") == out


def test_results_section_is_the_evaluate_stage_output():
    results = REPO / "metrics" / "results.md"
    if results.is_file():
        assert section("results") == results.read_text().strip()


def test_readme_first_screen_gives_the_two_setup_commands():
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:30])
    assert "make pipeline" in head and "make test" in head
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_analysis_and_sweep_sections_are_the_generated_files():
    # every one is committed: a missing file fails here instead of passing unchecked
    for name, path in (("analysis", "metrics/analysis.md"), ("sweep", "metrics/context_sweep.md"),
                       ("ablation", "metrics/ablation_section.md")):
        generated = REPO / path
        assert generated.is_file(), path
        assert section(name) == generated.read_text().strip()


def test_performance_sections_are_the_benchmark_output():
    # bench/throughput.py --readme-section perf|gpu writes them; a hand edit or a stale table fails here
    for name, md in (("perf", "throughput.md"), ("gpu", "throughput_cuda.md")):
        assert section(name) == (REPO / "bench" / "results" / md).read_text().strip()


def test_out_of_core_section_is_the_benchmark_output():
    results = REPO / "bench" / "results" / "out_of_core.md"
    assert results.is_file(), "run bench/out_of_core.py"
    assert section("ooc") == results.read_text().strip()


def test_make_pipeline_runs_stages_with_the_venv_python():
    # dvc resolves each stage's `python` through PATH; without the venv's bin first, `make pipeline`
    # on a fresh machine runs the stages with the system python, which has none of the dependencies
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), "-f", "Makefile",
                          "--eval", "print-path: ; @echo $$PATH", "print-path"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(":")[0] == str(REPO / ".venv" / "bin")
