"""The fast one-step path on the CPU: ``--compile`` plumbing and equality of the compiled code path.

Inductor compiles the tiny student in ~90 s on this 2-core CPU, too slow for CI: the tests trace with
dynamo's ``eager`` backend (the same graph capture, eager kernels), and ``benchmarks/infer_latency.py``
times and checks the inductor-compiled pipeline. The CUDA-graph path needs a GPU and is not tested here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.export_helpers import make_export, photo
from vosr.infer import build_parser, main
from vosr.inference.fast import OneStepGraph, can_use_graph
from vosr.inference.pipeline import load_pipeline


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("ckpt") / "student.safetensors", "model.with_r=true")


def test_compile_flag_parses():
    assert build_parser().parse_args(["-c", "a", "-i", "b", "-o", "c"]).compile is None
    assert build_parser().parse_args(["-c", "a", "-i", "b", "-o", "c", "--compile"]).compile == "inductor"
    assert build_parser().parse_args(["-c", "a", "-i", "b", "-o", "c", "--compile", "eager"]).compile == "eager"


def test_compiled_pipeline_gives_the_eager_output(student):
    lr = torch.from_numpy(photo(1, 24, 24, 60, 90)).permute(2, 0, 1)[None].float() / 255
    eager = load_pipeline(student).upscale(lr, seed=3)
    pipe = load_pipeline(student)
    pipe.compile(backend="eager")
    assert not pipe.cuda_graphs  # the CPU never takes the CUDA-graph path
    torch._dynamo.reset()
    out = pipe.upscale(lr, seed=3)
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-6)
    again = pipe.upscale(lr, seed=3)  # the cached compilation for this shape
    torch.testing.assert_close(again, eager, rtol=0, atol=1e-6)


def test_cli_compile_writes_the_same_image(tmp_path, student):
    src = tmp_path / "in" / "a.png"
    src.parent.mkdir()
    Image.fromarray(photo(2, 24, 24, 80, 120)).save(src)
    base = ["-c", str(student), "-i", str(src), "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "eager")]) == 0
    assert main([*base, "-o", str(tmp_path / "compiled"), "--compile", "eager"]) == 0
    a = np.asarray(Image.open(tmp_path / "eager" / "a.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "compiled" / "a.png")).astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_cuda_graph_path_is_guarded(student):
    pipe = load_pipeline(student)
    padded = torch.zeros(1, 3, 64, 64)
    pipe.cuda_graphs = True  # even when asked for, the CPU does not qualify
    assert not can_use_graph(pipe, padded, student=True, steps=1, single_tile=True)
    with pytest.raises(RuntimeError, match="CUDA"):
        OneStepGraph(pipe, padded, torch.zeros(1, 48, 16, 16))
