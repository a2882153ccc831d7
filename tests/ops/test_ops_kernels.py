"""The kernels themselves, without a GPU: every .cu compiles with NVRTC for sm_75/80/90 and every
dtype instantiation; the g++ emulation harness builds, strides and refuses barriers."""

import re
import sys
import types

import numpy as np
import pytest
import torch

from ops_cuda import emulate, launch, registry, toolkit

SOURCES = sorted(registry.SOURCES)
_NVRTC_MISSING = toolkit.nvrtc_available()


def test_registry_lists_every_kernel_and_source():
    on_disk = sorted(p.name for p in registry.KERNEL_DIR.glob("*.cu"))
    assert on_disk == SOURCES
    for src in SOURCES:
        kernels = set(re.findall(r"__global__\s+void\s+(\w+)\s*\(", registry.read_source(src)))
        assert kernels == set(registry.SOURCES[src]), src


@pytest.mark.skipif(_NVRTC_MISSING is not None, reason=str(_NVRTC_MISSING))
@pytest.mark.parametrize("arch", toolkit.ARCHES)
@pytest.mark.parametrize("source", SOURCES)
def test_nvrtc_compiles(source, arch):
    out = toolkit.nvrtc_compile(source, arch)  # raises NvrtcError with the log on failure
    ptx = out["ptx"].decode() if isinstance(out["ptx"], bytes) else out["ptx"]
    assert f".target {arch}" in ptx
    exprs = registry.name_expressions(source)
    for kernel, ctypes_ in registry.SOURCES[source].items():  # each dtype instantiation
        for t in ctypes_ or [None]:
            assert registry.expression(kernel, t) in exprs
    for expr in exprs:
        mangled = out["lowered"][expr]
        assert mangled and f".entry {mangled}(" in ptx, expr


@pytest.mark.skipif(_NVRTC_MISSING is not None, reason=str(_NVRTC_MISSING))
def test_nvrtc_error_carries_the_log():
    code = '#include "common.cuh"\ntemplate <typename T> __global__ void k(T* x) { x[0] = y; }\n'
    with pytest.raises(toolkit.NvrtcError, match='identifier "y" is undefined'):
        toolkit.nvrtc_compile_code(code, "bad.cu", ["k<float>"], "sm_80")


def test_cuda_headers_come_from_the_wheels_when_present():
    inc = toolkit.cuda_include_dir()
    if inc is None:
        pytest.skip("no CUDA headers on this machine (no nvidia-cuda-runtime wheel)")
    assert "-I" + inc in toolkit.compile_options("sm_80")
    assert "--gpu-architecture=sm_80" in toolkit.compile_options("sm_80")


@pytest.mark.skipif(emulate.compiler() is None, reason="no g++ for the kernel emulation")
def test_emulation_rejects_barriers():
    code = (
        '#define CV_OPS_EMULATION 1\n#include "emu_shim.h"\n#include "common.cuh"\n'
        "__global__ void k(float* x) { x[threadIdx.x] = 1; __syncthreads(); }\n"
    )
    with pytest.raises(RuntimeError, match="no barriers"):
        emulate.build_code(code, "barrier_test")


@pytest.mark.skipif(emulate.compiler() is None, reason="no g++ for the kernel emulation")
@pytest.mark.parametrize("grid,block", [(1, 1), (1, 7), (3, 32), (50, 32)])
def test_emulated_grid_stride_covers_every_element(grid, block):
    cpu = torch.device("cpu")
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    t = torch.zeros_like(x)
    sigma = torch.ones(1, dtype=torch.float64)
    out = torch.full_like(x, float("nan"))
    args = launch.pack_ctypes((x, t, sigma, np.int64(0), np.int64(x.numel()), out), cpu)
    emulate.launch("elementwise_losses.cu", "smooth_l1_fwd", "double", grid, block, args)
    want = torch.where(x.abs() < 1, 0.5 * x * x, x.abs() - 0.5)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_launch_checks_its_arguments():
    x = torch.zeros(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="contiguous"):
        launch.pack_ctypes((x.t(),), torch.device("cpu"))
    with pytest.raises(TypeError, match="numpy scalar"):
        launch.pack_ctypes((3,), torch.device("cpu"))  # a bare int has no declared C type
    with pytest.raises(TypeError, match="emulation supports"):
        emulate.launch("focal_loss.cu", "sigmoid_focal_fwd", "__half", 1, 1, [])


def test_cupy_loader_compiles_once_per_device_with_all_name_expressions(monkeypatch):
    """The CUDA branch's Python side, with a stand-in for CuPy (no GPU here)."""
    made = []

    class FakeModule:
        def __init__(self, code, options, name_expressions):
            made.append((code, options, name_expressions))

        def get_function(self, expr):
            assert expr in made[-1][2]
            return ("function", expr)

    class FakeDevice:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cuda = types.SimpleNamespace(Device=FakeDevice)
    fake = types.SimpleNamespace(RawModule=FakeModule, cuda=cuda)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(launch, "_modules", {})
    monkeypatch.setattr(launch, "_functions", {})
    f1 = launch._cupy_function("focal_loss.cu", "sigmoid_focal_fwd<__half>", 1)
    f2 = launch._cupy_function("focal_loss.cu", "sigmoid_focal_bwd<float>", 1)
    launch._cupy_function("focal_loss.cu", "sigmoid_focal_fwd<__half>", 1)  # cached
    launch._cupy_function("focal_loss.cu", "sigmoid_focal_fwd<__half>", 2)  # another device
    assert f1 == ("function", "sigmoid_focal_fwd<__half>") and f2[1] == "sigmoid_focal_bwd<float>"
    assert len(made) == 2  # one module per (source, device)
    code, options, exprs = made[0]
    assert code == registry.read_source("focal_loss.cu")
    assert set(exprs) == set(registry.name_expressions("focal_loss.cu"))
    assert any(o.startswith("-I") and o.endswith("ops_cuda") for o in options)
    packed = launch.pack_cupy((torch.zeros(3), None, np.int32(2)), torch.device("cpu"))
    assert [type(p) for p in packed] == [np.uint64, np.uint64, np.int32]
    assert packed[1] == 0


def test_upstream_gradient_broadcast_without_materialising():
    g = torch.tensor(2.5).expand(3, 4)  # what .sum() hands to backward
    t, stride = launch.upstream(g)
    assert stride == 0 and t.numel() == 1 and t.item() == 2.5
    full = torch.arange(12.0).reshape(3, 4).t()
    t, stride = launch.upstream(full)
    assert stride == 1 and t.is_contiguous() and torch.equal(t, full)
