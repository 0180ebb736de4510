"""precision: auto picks bf16 only where the hardware multiplies bf16 natively and faster than fp32."""
import os

import pytest
import torch

from lvm import hardware


def test_auto_follows_bf16_pays(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "bf16_pays", lambda device: False)
    assert hardware.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(hardware, "bf16_pays", lambda device: True)
    assert hardware.resolve_precision("auto", cpu) == "bf16"
    assert hardware.resolve_precision("fp32", cpu) == "fp32"


@pytest.mark.parametrize("native, amx, vendor, pays", [
    (False, False, "AuthenticAMD", False),   # AVX2 only: emulated, ~90x slower
    (True, True, "GenuineIntel", True),      # AMX
    (True, False, "GenuineIntel", False),    # AVX-512 BF16 without AMX: fp32 1.5-1.7x faster
    (True, False, "AuthenticAMD", True),     # AMD's AVX-512 BF16
    (True, False, "", False),                # unknown vendor without AMX: the safe fp32
])
def test_bf16_pays_on_the_cpu_kinds_measured(monkeypatch, native, amx, vendor, pays):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: native)
    monkeypatch.setattr(hardware.torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(hardware, "cpu_vendor", lambda: vendor)
    assert hardware.bf16_pays(torch.device("cpu")) is pays
    assert hardware.resolve_precision("auto", torch.device("cpu")) == ("bf16" if pays else "fp32")


def test_explicit_bf16_without_hardware_warns_once(monkeypatch, capsys):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)
    monkeypatch.setattr(hardware, "_WARNED", set())
    assert hardware.resolve_precision("bf16", torch.device("cpu"), "ingest.precision") == "bf16"
    assert hardware.resolve_precision("bf16", torch.device("cpu"), "ingest.precision") == "bf16"
    err = capsys.readouterr().err
    assert err.count("warning: ingest.precision: bf16") == 1


def test_native_bf16_matches_this_cpu():
    """oneDNN multiplies bf16 natively with AVX512-BF16 or AMX; with no AVX-512 at all it emulates."""
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("needs /proc/cpuinfo to know the CPU's flags")
    flags = set(open("/proc/cpuinfo").read().split())
    if not any(f.startswith("avx512") for f in flags):
        assert hardware.native_bf16(torch.device("cpu")) is False
        assert hardware.resolve_precision("auto", torch.device("cpu")) == "fp32"
    elif flags & {"amx_bf16", "avx512_bf16"}:
        assert hardware.native_bf16(torch.device("cpu")) is True
        pays = "amx_bf16" in flags or hardware.cpu_vendor() == "AuthenticAMD"
        assert hardware.resolve_precision("auto", torch.device("cpu")) == ("bf16" if pays else "fp32")
    else:
        pytest.skip("AVX-512 without BF16: oneDNN's choice is version dependent")


def test_usable_cpus_follows_the_affinity_mask():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs Linux affinity calls")
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert hardware.usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, before)
    assert hardware.usable_cpus() <= len(before)


def test_queue_workers_are_counted_from_their_command_line():
    import subprocess
    import sys

    before = hardware.queue_workers()
    # what `dvc queue start` runs: `dvc exp queue-worker NAME` (here a sleeping python with those args)
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "exp", "queue-worker", "w1"])
    try:
        import time
        time.sleep(0.3)
        assert hardware.queue_workers() == before + 1
    finally:
        fake.kill()
        fake.wait()
    assert hardware.queue_workers() == before


def test_threads_0_shares_the_cpus_among_queue_workers_only_inside_an_experiment(monkeypatch):
    from lvm import runtime

    monkeypatch.setattr(runtime, "usable_cpus", lambda: 8)
    monkeypatch.setattr(runtime, "queue_workers", lambda: 2)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert runtime.default_threads() == 8 and runtime.default_threads(processes=2) == 4  # dvc repro: all
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-cat")  # a queued (or `dvc exp run`) experiment
    assert runtime.default_threads() == 4 and runtime.default_threads(processes=2) == 2
    monkeypatch.setattr(runtime, "queue_workers", lambda: 0)  # `dvc exp run` in the workspace, no queue
    assert runtime.default_threads() == 8
    monkeypatch.setattr(runtime, "queue_workers", lambda: 16)
    assert runtime.default_threads() == 1
