"""Every .cu file of the package compiles for the Jetson architectures and sm_90 (no GPU needed).

pycuda compiles these sources on the device at first use; this test makes a kernel that does not compile
fail CI instead of the first detection on a Jetson. Two compilers:

* nvcc, the way pycuda calls it (``nvcc --cubin -arch sm_XX``, the sources' own extern "C"), warnings as
  errors, for every one of TARGETS that this nvcc lists (``nvcc --list-gpu-arch``). With the CUDA 13.0
  nvcc of the development machine and CI that is sm_87 (Orin), sm_90 (H100) and sm_110 (Thor). sm_72
  (Xavier) is not among them: CUDA 13 removed offline compilation for Volta (its list starts at
  compute_75). sm_101 is Thor's number under CUDA 12.8/12.9, renamed sm_110 in 13.0.
* NVRTC of CUDA 11.8 (the ``nvidia-cuda-nvrtc-cu11`` wheel of the dev extra, with the headers of
  ``nvidia-cuda-runtime-cu11``), the CUDA generation of JetPack 5 (11.4), for sm_72 and sm_87, as C++14.
  This is how sm_72 is checked here; JetPack 5's own nvcc 11.4 itself is only run on a Xavier.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgetile.runtime.cuda import KERNEL_DIR, KERNEL_SOURCES

TARGETS = {
    "72": "Xavier (JetPack 5, CUDA 11.4)",
    "87": "Orin (JetPack 5.1 to 7.2)",
    "90": "H100, the CI GPU class",
    "101": "Thor under CUDA 12.8/12.9",
    "110": "Thor (JetPack 7, CUDA 13)",
}
WHY_MISSING = {
    "72": "CUDA 13 removed offline compilation for Volta; sm_72 is compiled by CUDA 11.8 NVRTC below",
    "101": "CUDA 13 renamed Thor's sm_101 to sm_110, which is compiled instead",
}
REQUIRED = ("87", "90")  # an nvcc without these cannot check the kernels for Orin or the CI GPU
NVCC = shutil.which("nvcc")


def _listed_archs() -> set[str]:
    if NVCC is None:
        return set()
    out = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    return set(re.findall(r"compute_(\d+)", out.stdout))


LISTED = _listed_archs()
NO_NVCC = "needs nvcc (the CUDA toolkit) on PATH to compile the .cu files; not found here"


def test_kernel_sources_are_all_listed():
    on_disk = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
    assert on_disk == sorted(KERNEL_SOURCES)


@pytest.mark.skipif(NVCC is None, reason=NO_NVCC)
def test_this_nvcc_can_check_orin_and_the_ci_gpu():
    assert set(REQUIRED) <= LISTED, f"nvcc {NVCC} lists {sorted(LISTED)}; expected at least {REQUIRED}"


def _cases():
    for source in KERNEL_SOURCES:
        for arch, what in TARGETS.items():
            marks = []
            if NVCC is None:
                marks.append(pytest.mark.skip(reason=NO_NVCC))
            elif arch not in LISTED:
                marks.append(
                    pytest.mark.skip(
                        reason=f"sm_{arch} ({what}) is not supported by this nvcc (it lists compute_"
                        f"{', compute_'.join(sorted(LISTED, key=int))}); {WHY_MISSING.get(arch, '')}"
                    )
                )
            yield pytest.param(source, arch, marks=marks, id=f"{source}-sm_{arch}")


@pytest.mark.parametrize("source,arch", list(_cases()))
def test_kernel_compiles(tmp_path, source, arch):
    cubin = tmp_path / f"{source}.sm_{arch}.cubin"
    cmd = [
        NVCC,
        "--cubin",
        f"-arch=sm_{arch}",
        "-O3",
        "--Werror",
        "all-warnings",
        "-o",
        str(cubin),
        str(KERNEL_DIR / source),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    assert cubin.stat().st_size > 0


@pytest.mark.skipif(NVCC is None, reason=NO_NVCC)
@pytest.mark.parametrize("source", KERNEL_SOURCES)
def test_kernel_compiles_as_cpp14_for_jetpack5(tmp_path, source):
    cmd = [
        NVCC,
        "--cubin",
        "-arch=sm_87",
        "-std=c++14",
        "--Werror",
        "all-warnings",
        "-o",
        str(tmp_path / "k.cubin"),
        str(KERNEL_DIR / source),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"


@pytest.mark.skipif(NVCC is None, reason=NO_NVCC)
def test_the_entry_points_pycuda_looks_up_are_exported(tmp_path):
    """The names the Python wrappers ask pycuda for exist, unmangled, in the compiled code."""
    wanted = {
        "preprocess.cu": ["preprocess_views_f32", "preprocess_views_f16"],
        "filter.cu": ["filter_candidates_f32", "filter_candidates_f16"],
    }
    for source, names in wanted.items():
        ptx = tmp_path / f"{source}.ptx"
        res = subprocess.run(
            [NVCC, "--ptx", "-arch=sm_87", "-o", str(ptx), str(KERNEL_DIR / source)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        text = ptx.read_text()
        for name in names:
            assert re.search(rf"\.entry {name}\(", text), f"{name} missing from {source}"


# --- CUDA 11.8 NVRTC: sm_72 (Xavier, JetPack 5) ------------------------------------------------------


def _nvrtc11() -> tuple[Path, Path] | None:
    """(libnvrtc of CUDA 11, the CUDA 11 runtime headers), from the nvidia-*-cu11 wheels, or None."""
    try:  # find_spec of a submodule imports its parent: no `nvidia` package at all raises
        nvrtc, runtime = (importlib.util.find_spec(m) for m in ("nvidia.cuda_nvrtc", "nvidia.cuda_runtime"))
    except ModuleNotFoundError:
        return None
    if nvrtc is None or runtime is None:
        return None
    libs = sorted(Path(list(nvrtc.submodule_search_locations)[0], "lib").glob("libnvrtc.so.11*"))
    inc = Path(list(runtime.submodule_search_locations)[0], "include")
    return (libs[0], inc) if libs and (inc / "cuda_fp16.h").is_file() else None


NVRTC11 = _nvrtc11()
NO_NVRTC = (
    "needs the CUDA 11 NVRTC wheels of the dev extra (pip install nvidia-cuda-nvrtc-cu11 "
    "nvidia-cuda-runtime-cu11) to compile for sm_72; not installed here"
)


_NVRTC_CHILD = r"""
import ctypes, json, sys
lib_path, include, source, arch = sys.argv[1:5]
lib = ctypes.CDLL(lib_path)
lib.nvrtcGetErrorString.restype = ctypes.c_char_p
prog = ctypes.c_void_p()
src = open(source, "rb").read()
rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src, source.encode(), 0, None, None)
if rc != 0:
    print(json.dumps([rc, lib.nvrtcGetErrorString(rc).decode(), 0]))
    sys.exit(0)
try:
    opts = [f"--gpu-architecture={arch}".encode(), f"-I{include}".encode(), b"-std=c++14"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    cubin = ctypes.c_size_t()
    if rc == 0:
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin))
    print(json.dumps([rc, log.value.decode(errors="replace").strip(), cubin.value]))
finally:
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
"""


def nvrtc_compile(lib_path: Path, include: Path, source: Path, arch: str) -> tuple[int, str, int]:
    """(NVRTC status, compiler log, cubin size) of one source for one architecture.

    NVRTC runs in a child process: loaded in-process it changes the C locale's encoding to ASCII for
    the rest of the test session, which breaks every later test that decodes a subprocess's UTF-8.
    """
    res = subprocess.run(
        [sys.executable, "-c", _NVRTC_CHILD, str(lib_path), str(include), str(source), arch],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    rc, log, cubin = json.loads(res.stdout)
    return int(rc), str(log), int(cubin)


@pytest.mark.skipif(NVRTC11 is None, reason=NO_NVRTC)
@pytest.mark.parametrize("arch", ["sm_72", "sm_87"])
@pytest.mark.parametrize("source", KERNEL_SOURCES)
def test_kernel_compiles_with_cuda11_for_xavier_and_orin(source, arch):
    rc, log, cubin = nvrtc_compile(NVRTC11[0], NVRTC11[1], KERNEL_DIR / source, arch)
    assert rc == 0, f"NVRTC 11 could not compile {source} for {arch}:\n{log}"
    assert cubin > 0
    assert "warning" not in log.lower(), log
