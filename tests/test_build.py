"""The build matches the machine: where setup.py's own detection finds nvcc and cuDNN, the
CUDA backend must have been built (a CI machine whose detection silently fell back to a
CPU-only build would otherwise pass). The detection is build_cuda.py, the file setup.py
imports; _C.BUILD_INFO records what the build decided and why."""
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from glae import _C

HELPER = Path(__file__).resolve().parents[1] / "build_cuda.py"


def load_helper():
    if not HELPER.exists():
        pytest.skip(f"{HELPER} not found (tests run outside the source tree)")
    spec = importlib.util.spec_from_file_location("glae_build_cuda", HELPER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_info_says_what_was_built():
    info = _C.BUILD_INFO
    assert isinstance(info, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in info.items())
    assert info["cuda"] == str(_C.HAS_CUDA), info
    assert info["reason"]
    if _C.HAS_CUDA:
        for key in ("cuda_home", "nvcc_version", "cuda_arch", "cudnn_include", "cudnn_lib",
                    "cudnn_link", "cudnn_header_version"):
            assert info.get(key), f"BUILD_INFO[{key!r}] is empty: {info}"
        arch = info["cuda_arch"].split()
        assert any(a.startswith("compute_") for a in arch), arch  # PTX for newer GPUs
        if info.get("cuda_arch_source") == "default":
            assert "sm_80" in arch and "sm_90" in arch, arch


def test_cuda_is_built_where_nvcc_and_cudnn_are_found():
    if os.environ.get("GLAE_CUDA", "").strip() == "0" or _C.BUILD_INFO["reason"] == "GLAE_CUDA=0":
        pytest.skip("CUDA backend turned off with GLAE_CUDA=0")
    nvcc = shutil.which("nvcc")
    if not nvcc:
        pytest.skip("nvcc is not on PATH")
    build_cuda = load_helper()
    cfg, why = build_cuda.detect()
    if cfg is None:
        pytest.skip(f"setup.py's detection builds no CUDA backend here: {why}")
    assert _C.HAS_CUDA == 1, (
        f"nvcc ({nvcc}) and cuDNN ({cfg['cudnn_inc']}, {cfg['cudnn_lib']}) are found by setup.py's "
        f"detection, but glae._C was built without CUDA; the build said: "
        f"{_C.BUILD_INFO['reason']!r}. Rebuild with GLAE_CUDA=1 pip install -e . to see the error.")


def test_link_name_handles_versioned_only_libraries(tmp_path):
    build_cuda = load_helper()
    assert build_cuda.link_name(str(tmp_path), "cudnn") is None
    (tmp_path / "libcudnn.so.9.19.0").write_bytes(b"")
    assert build_cuda.link_name(str(tmp_path), "cudnn") == ":libcudnn.so.9.19.0"
    (tmp_path / "libcudnn.so.9").write_bytes(b"")  # the soname file wins (what wheels ship)
    (tmp_path / "libcudnn.so.8").write_bytes(b"")
    assert build_cuda.link_name(str(tmp_path), "cudnn") == ":libcudnn.so.9"
    (tmp_path / "libcudnn.so").write_bytes(b"")
    assert build_cuda.link_name(str(tmp_path), "cudnn") == "cudnn"


def test_pip_layout_cudnn_is_found(tmp_path, monkeypatch):
    """site-packages/nvidia/cudnn/{include,lib} with only libcudnn.so.9 (a pip wheel)"""
    build_cuda = load_helper()
    root = tmp_path / "nvidia" / "cudnn"
    (root / "include").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "include" / "cudnn.h").write_text("")
    (root / "include" / "cudnn_version.h").write_text(
        "#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 5\n#define CUDNN_PATCHLEVEL 1\n")
    (root / "lib" / "libcudnn.so.9").write_bytes(b"")
    monkeypatch.setattr(build_cuda, "site_package_dirs", lambda: [str(tmp_path)])
    assert str(root) in build_cuda.cudnn_roots(None, {})
    inc, lib, name = build_cuda.find_cudnn_in([str(tmp_path / "nowhere"), str(root)])
    assert (inc, lib, name) == (str(root / "include"), str(root / "lib"), ":libcudnn.so.9")
    assert build_cuda.cudnn_header_version(inc) == "9.5.1"


def test_gencode_embeds_ptx_of_the_highest_arch():
    build_cuda = load_helper()
    flags = build_cuda.gencode_flags(["80", "90"])
    assert "-gencode=arch=compute_80,code=sm_80" in flags
    assert "-gencode=arch=compute_90,code=sm_90" in flags
    assert "-gencode=arch=compute_90,code=compute_90" in flags
    assert build_cuda.arch_summary(["80", "90"]) == "sm_80 sm_90 compute_90"
