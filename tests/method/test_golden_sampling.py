"""The samplers reproduce the reference implementation's recorded samples (tests/golden)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import GOLDEN
from tests.golden_models import golden_model
from vosr.method.flow import guided_velocity, sample_euler, sample_one_step, sample_student

W_SAMPLER = 0.15  # the reference sampler's weak anchor: the midpoint of the training range [0.05, 0.25]


@pytest.fixture(scope="module")
def recorded() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "vosr_reference_sampling.safetensors"))


@pytest.mark.parametrize("s", ["-0.5", "+0.5", "+2.0"])
def test_golden_guided_euler(golden_dir: Path, recorded: dict[str, torch.Tensor], s: str) -> None:
    """8 guided Euler steps of the teacher, v = v_weak + s (v_cond - v_weak), and the guided v of step 0."""
    teacher = golden_model(golden_dir, "teacher")
    lq, sem, eps = (recorded[f"euler.in.{k}"] for k in ("lq", "sem", "eps"))
    x0 = sample_euler(teacher, lq, sem, eps, steps=8, guidance=float(s), weak_anchor=W_SAMPLER)
    torch.testing.assert_close(x0, recorded[f"euler.s{s}.x0"], atol=1e-5, rtol=1e-5)
    t1 = torch.ones(lq.shape[0])
    v0 = guided_velocity(teacher, eps, t1, lq, sem, guidance=float(s), weak_anchor=W_SAMPLER)
    torch.testing.assert_close(v0, recorded[f"euler.s{s}.v_step0"], atol=1e-5, rtol=1e-5)


def test_golden_guidance_branches(golden_dir: Path, recorded: dict[str, torch.Tensor]) -> None:
    """s = 1 is the conditioned branch alone (clean lq, tokens) and s = 0 the weak one (w lq, zero tokens)."""
    teacher = golden_model(golden_dir, "teacher")
    lq, sem, eps = (recorded[f"euler.in.{k}"] for k in ("lq", "sem", "eps"))
    t1 = torch.ones(lq.shape[0])
    for s, key in ((1.0, "v_cond"), (0.0, "v_weak")):
        v = guided_velocity(teacher, eps, t1, lq, sem, guidance=s, weak_anchor=W_SAMPLER)
        torch.testing.assert_close(v, recorded[f"euler.step0.{key}"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_golden_student_chain(golden_dir: Path, recorded: dict[str, torch.Tensor], steps: int) -> None:
    """The student's one-step sample and its few-step chain of u(x, t_k, t_{k+1}), without guidance."""
    student = golden_model(golden_dir, "student")
    lq, sem, eps = (recorded[f"student_sample.in.{k}"] for k in ("lq", "sem", "eps"))
    x0 = sample_student(student, lq, sem, eps, steps=steps)
    torch.testing.assert_close(x0, recorded[f"student_sample.steps{steps}.x0"], atol=1e-5, rtol=1e-5)
    if steps == 1:
        torch.testing.assert_close(sample_one_step(student, lq, sem, eps), x0, atol=0, rtol=0)
        torch.testing.assert_close(eps - x0, recorded["student_sample.steps1.u"], atol=1e-5, rtol=1e-5)
