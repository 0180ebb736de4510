"""Copy the generated markdown (metrics/*.md, bench/results/*.md, the model table) into the docs.

    python -m lvm.docs            # make docs: rewrite every generated section of README.md and docs/*.md
    python -m lvm.docs --check    # exit 1 naming each section that is out of date (make test runs this)

Stages write only what dvc.yaml declares (their markdown under metrics/); they never touch the README.
This is the one step that shows those files in the docs, between `<!-- NAME:start -->` and
`<!-- NAME:end -->` markers, so a doc can go stale but never silently: tests/test_readme.py fails then.
"""
from __future__ import annotations

import argparse
import functools
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lvm import LvmError

REPO = Path(__file__).resolve().parents[2]



@dataclass(frozen=True)
class StageOutput:
    """The file a dvc.yaml stage writes where its cmd's `flag` says (dvc.yaml names it, not this module)."""
    stage: str
    flag: str

    def path(self, root: Path) -> str:
        from lvm.pipeline import stage_option

        return stage_option(self.stage, self.flag, root / "dvc.yaml")


# doc -> [(marker name, source, how to regenerate the source)]. A source is a file under the repo, a
# stage's output (StageOutput), or a command (a tuple) whose stdout is the section: the model table is
# generated from the code itself.
SECTIONS: dict[str, list[tuple[str, str | StageOutput | tuple[str, ...], str]]] = {
    "README.md": [
        ("results", StageOutput("evaluate", "--report"), "dvc repro evaluate"),
    ],
    "docs/models.md": [
        ("models", ("-m", "lvm.models", "--dim", "768", "--context", "100"), "the model code"),
    ],
    "docs/experiments.md": [
        ("crossval", "metrics/crossval.md", "python -m lvm.crossval"),
        ("ablation", "metrics/ablation_section.md", "python -m lvm.ablation"),
        ("analysis", StageOutput("analyze", "--report"), "dvc repro analyze"),
        ("sweep", "metrics/context_sweep.md", "python -m lvm.sweep"),
    ],
    "docs/performance.md": [
        ("perf", "bench/results/throughput.md", "bench/throughput.py"),
        ("orig", "bench/results/original_interleaved.md", "bench/original_interleaved.py"),
        ("gpu", "bench/results/throughput_cuda.md", "bench/throughput.py --device cuda --out bench/results/throughput_cuda.json"),
        ("pipeline_time_before", "bench/results/pipeline_time_before.md",
         "bench/pipeline_time.py --out bench/results/pipeline_time_before"),
        ("pipeline_time", "bench/results/pipeline_time.md", "bench/pipeline_time.py"),
        ("pipeline_time_avx512_bf16", "bench/results/pipeline_time_avx512_bf16.md",
         "bench/pipeline_time.py --stages ingest export_ctx100 ... analyze --out bench/results/pipeline_time_avx512_bf16"),
        ("pipeline_time_avx512_fp32", "bench/results/pipeline_time_avx512_fp32.md",
         "bench/pipeline_time.py --stages ingest export_ctx100 ... analyze --out bench/results/pipeline_time_avx512_fp32"),
    ],
    "docs/scaling.md": [
        ("ooc", "bench/results/out_of_core.md", "bench/out_of_core.py"),
        ("scale", "bench/results/pipeline_time_scale.md",
         "bench/pipeline_time.py --set data.vectors=data/scale/vectors.npz --stages export_ctx100 ... analyze"),
    ],
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def splice(text: str, start: str, end: str, body: str, where: str = "text") -> str:
    """`text` with everything between the `start` and `end` lines replaced by `body`.

    A doc without the markers is an error, not a no-op: a section renamed by hand would otherwise stop
    being updated without anyone noticing."""
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise LvmError(f"{where}: needs exactly one '{start}' ... '{end}' pair")
    return pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", text)


def section(text: str, name: str, where: str = "text") -> str:
    """The body between NAME's markers (stripped)."""
    start, end = markers(name)
    m = re.search(re.escape(start) + "\n(.*?)\n" + re.escape(end), text, re.S)
    if not m:
        raise LvmError(f"{where}: has no '{start}' ... '{end}' section")
    return m.group(1).strip()


@functools.lru_cache(maxsize=None)
def _command_output(command: tuple[str, ...]) -> str:
    # the model table depends only on the code, which does not change while this process runs
    out = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise LvmError(f"python {' '.join(command)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout


def generated(source: str | tuple[str, ...], hint: str, root: Path = REPO) -> str:
    """The text a section must show. A missing generated file is an error naming how to make it."""
    if isinstance(source, tuple):
        return _command_output(source)
    if isinstance(source, StageOutput):
        source = source.path(root)
    path = root / source
    if not path.is_file():
        raise LvmError(f"{source}: missing; it is generated by `{hint}` and committed")
    return path.read_text()


def render(root: Path = REPO) -> dict[str, tuple[str, str]]:
    """{doc: (current text, text with every section up to date)}."""
    docs = {}
    for doc, sections in SECTIONS.items():
        path = root / doc
        if not path.is_file():
            raise LvmError(f"{doc}: missing")
        text = new = path.read_text()
        for name, source, hint in sections:
            new = splice(new, *markers(name), generated(source, hint, root), where=doc)
        docs[doc] = (text, new)
    return docs


def stale(root: Path = REPO) -> list[str]:
    """'doc: section NAME differs from SOURCE' for every out-of-date section."""
    out = []
    for doc, (text, new) in render(root).items():
        for name, source, _ in SECTIONS[doc]:
            if section(text, name, doc) != section(new, name, doc):
                src = (source if isinstance(source, str) else source.path(root) if isinstance(source, StageOutput)
                       else "python " + " ".join(source))
                out.append(f"{doc}: section '{name}' differs from {src}")
    return out


def main(argv=None) -> int:
    from lvm.cli import stage

    @stage
    def run():
        parser = argparse.ArgumentParser(prog="python -m lvm.docs", description=__doc__.splitlines()[0])
        parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a section is stale")
        parser.add_argument("--root", default=str(REPO), help=argparse.SUPPRESS)
        args = parser.parse_args(argv)
        root = Path(args.root)
        if args.check:
            bad = stale(root)
            for line in bad:
                print(f"stale: {line}", file=sys.stderr)
            if bad:
                print("run `make docs` and commit the result", file=sys.stderr)
            return 1 if bad else 0
        from lvm.io import write_text

        for doc, (text, new) in render(root).items():
            if new != text:
                write_text(root / doc, new)
                print(f"updated {doc}")
        return 0

    return run()


if __name__ == "__main__":
    sys.exit(main())
