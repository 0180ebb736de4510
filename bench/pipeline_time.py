"""Where every second of the pipeline goes: each dvc.yaml stage run on its own (`dvc repro -s -f
STAGE`, in dvc.yaml's order), its wall time and peak RSS from the OS, and the phases the stage logged
itself (logs/<stage>.jsonl: train steps, validation, checkpoints, start-up; evaluate's baselines,
scoring, curve).

    python bench/pipeline_time.py                    # every stage but ingest (~18 min on 2-core AVX2, fp32)
    python bench/pipeline_time.py --stages ingest    # one stage
    python bench/pipeline_time.py --set data.vectors=data/scale/vectors.npz --out bench/results/pipeline_time_scale

`--set KEY=VALUE` (repeatable) changes params.yaml for the run as `dvc exp run -S KEY=VALUE` does (the
value parsed as YAML) and puts the file back afterwards, byte for byte, also when a stage fails.

Writes bench/results/pipeline_time.{json,md} (the table docs/performance.md copies). "in DVC" is the
stage's wall time outside its own process: DVC hashing, caching and checking the outputs. Run it
alone on the machine: every figure is one run's, on the CPU the table names.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from common import REPO, cpu_model

OUT = REPO / "bench" / "results" / "pipeline_time"
# the phases each stage logs (lvm.runtime.Clock), in the table's order
TRAIN_PHASES = ("startup", "setup", "train_steps", "validate", "checkpoint", "publish")
EVAL_PHASES = ("startup", "load", "fit_baselines", "score", "compare", "context_curve", "sample", "write")


def auto_precision() -> str:
    """What `precision: auto` resolves to on this CPU (lvm.hardware.bf16_pays)."""
    sys.path.insert(0, str(REPO / "src"))
    import torch
    from lvm.hardware import resolve_precision

    return resolve_precision("auto", torch.device("cpu"))


def last_log(stage: str, after: float) -> dict:
    """The newest line of logs/<stage>.jsonl if this run wrote it (its file changed after `after`)."""
    path = REPO / "logs" / f"{stage}.jsonl"
    if not path.is_file() or path.stat().st_mtime < after:
        return {}
    return json.loads(path.read_text().splitlines()[-1])


def run_stage(stage: str) -> dict:
    """`dvc repro -s -f STAGE` once: wall seconds, the peak RSS of DVC and the stage's process."""
    t0, started = time.perf_counter(), time.time()
    log_file = REPO / "logs" / f"pipeline_time_{stage}.txt"  # the stage's output, kept for a failure
    log_file.parent.mkdir(exist_ok=True)
    with open(log_file, "w") as out:
        proc = subprocess.Popen(["dvc", "repro", "-s", "-f", stage], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"error: dvc repro -s -f {stage} failed (its output: {log_file}):\n"
                         f"{log_file.read_text()[-2000:]}")
    log = last_log(stage, started)  # train_<experiment> stages log under their own name too
    # ru_maxrss: the largest of dvc and the processes it waited for (kB on Linux)
    return {"stage": stage, "wall_seconds": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "log": log}


def process_seconds(log: dict) -> float | None:
    """The stage's own process: start-up plus the run the Clock timed (None where it logs no Clock)."""
    if "seconds_run" in log:
        return log["seconds_run"] + log.get("seconds_startup", 0.0)
    return log.get("seconds_total") or log.get("seconds")


def table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| stage | wall s | peak RSS MB | in DVC s | train steps s | share of wall in train steps | "
             "where the rest went (s) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        log, own = r["log"], process_seconds(r["log"])
        dvc = f"{r['wall_seconds'] - own:.1f}" if own is not None else "–"
        steps = log.get("seconds_train_steps")
        share = f"{steps / r['wall_seconds']:.0%}" if steps else "–"
        phases = TRAIN_PHASES if steps is not None else EVAL_PHASES
        rest = ", ".join(f"{k} {log[f'seconds_{k}']:.1f}" for k in phases
                         if f"seconds_{k}" in log and k != "train_steps")
        if r["stage"] == "ingest" and log:
            rest = f"parse {log['seconds_parse']}, encode {log['seconds_encode']} ({log['chunks']} chunks, {log['precision']})"
        lines.append(f"| {r['stage']} | {r['wall_seconds']:.1f} | {r['peak_rss_mb']:,} | {dvc} | "
                     f"{steps if steps is not None else '–'} | {share} | {rest or '–'} |")
    total = sum(r["wall_seconds"] for r in rows)
    lines += ["", f"Total: {total:.0f} s ({total / 60:.1f} min) for {len(rows)} stages."]
    return "\n".join(lines) + "\n"


def set_params(text: str, assignments: list[str]) -> str:
    """params.yaml's text with each dotted KEY=VALUE set (the key must exist: a typo fails by name)."""
    params = yaml.safe_load(text)
    for item in assignments:
        key, sep, value = item.partition("=")
        node, *path = params, *key.split(".")
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"error: --set {item}: params.yaml has no section {part!r}")
            node = node[part]
        if not sep or path[-1] not in node:
            raise SystemExit(f"error: --set {item}: params.yaml has no key {key!r} (KEY=VALUE)")
        node[path[-1]] = yaml.safe_load(value)
    return yaml.safe_dump(params, sort_keys=False)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    all_stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    ap.add_argument("--stages", nargs="+", default=[s for s in all_stages if s != "ingest"], choices=all_stages)
    ap.add_argument("--out", default=str(OUT), help="writes OUT.json and OUT.md")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml value for this run only, as `dvc exp run -S` (repeatable)")
    args = ap.parse_args(argv)
    params_file = REPO / "params.yaml"
    original = params_file.read_bytes()
    if args.set:
        params_file.write_text(set_params(original.decode(), args.set))
    try:
        measure(args)
    finally:
        params_file.write_bytes(original)


def measure(args) -> None:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    cpu = f"{cpu_model()}, {os.cpu_count()} cores, precision auto = {auto_precision()}"
    rows = []
    for stage in args.stages:
        rows.append(run_stage(stage))
        print(f"{stage}: {rows[-1]['wall_seconds']} s, peak RSS {rows[-1]['peak_rss_mb']} MB", flush=True)
    sets = "".join(f" --set {item}" for item in args.set)
    header = (f"`python bench/pipeline_time.py{sets}` on {cpu}: each stage once with `dvc repro -s -f`, "
              "one run (not a median: a stage takes minutes).")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"cpu": cpu, "set": args.set, "stages": rows}, indent=1) + "\n")
    Path(args.out + ".md").write_text(table(rows, header))
    print(Path(args.out + ".md").read_text())


if __name__ == "__main__":
    main()
