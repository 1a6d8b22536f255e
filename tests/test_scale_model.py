"""benchmarks/scale_model.py: the scaling model's arithmetic (pure functions) and its table."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REPO


def _module():
    spec = importlib.util.spec_from_file_location("scale_model", REPO / "benchmarks" / "scale_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["scale_model"] = mod
    spec.loader.exec_module(mod)
    return mod


sm = _module()
NET = sm.Network()
WORK = sm.Workload(params=5e8, step_s=0.2, micro_batch=16, global_batch=512)


def test_one_gpu_is_the_measurement():
    pred = sm.predict(WORK, NET, 1, 2)
    assert pred.comm_gb == 0 and pred.accum == 32 and pred.efficiency == pytest.approx(1.0)
    assert pred.samples_per_s == pytest.approx(16 / 0.2)


def test_comm_volume_by_stage():
    w = 64
    z1, z2, z3 = (sm.predict(WORK, NET, w, z) for z in (1, 2, 3))
    full = 5e8 * 2 * (w - 1) / w / 1e9  # one set of bf16 gradients, ring factor
    assert z1.comm_gb == pytest.approx(2 * full)  # reduce-scatter + all-gather once per step
    assert z2.comm_gb == pytest.approx((z2.accum + 1) * full)  # reduce-scatter every micro-batch
    assert z3.comm_gb == pytest.approx(3 * z3.accum * full)  # gather twice + reduce-scatter per micro-batch
    fp32 = sm.predict(sm.Workload(**{**WORK.__dict__, "grad_bytes": 4}), NET, w, 2)
    assert fp32.comm_gb == pytest.approx(2 * z2.comm_gb)


def test_efficiency_falls_with_slower_fabric_and_never_exceeds_one():
    fast = sm.predict(WORK, NET, 128, 2)
    slow = sm.predict(WORK, sm.Network(ib_gbps=50.0), 128, 2)
    assert slow.step_s > fast.step_s and slow.efficiency < fast.efficiency
    for w in (1, 8, 64, 512):
        for z in (1, 2, 3):
            assert 0 < sm.predict(WORK, NET, w, z).efficiency <= 1.0 + 1e-9
    assert sm.predict(WORK, NET, 1024, 2) is None  # a global batch of 512 cannot feed 1024 GPUs


def test_table_prints(capsys):
    assert sm.main(["--worlds", "8", "512"]) == 0
    out = capsys.readouterr().out
    assert "teacher H100-h" in out and "cores whole/tiled" in out and len(out.splitlines()) == 4 + 6
