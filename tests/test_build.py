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


def load_onednn_helper():
    path = HELPER.parent / "build_onednn.py"
    if not path.exists():
        pytest.skip(f"{path} not found (tests run outside the source tree)")
    import sys
    sys.path.insert(0, str(HELPER.parent))  # build_onednn imports build_cuda
    try:
        spec = importlib.util.spec_from_file_location("glae_build_onednn", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(HELPER.parent))
    return mod


def test_onednn_is_built_where_found():
    """Where setup.py's detection finds oneDNN (the onednn-devel-cpu-gomp wheel in this
    environment, or a system copy), the oneDNN CPU backend must have been built."""
    info = _C.BUILD_INFO
    assert _C.HAS_ONEDNN in (0, 1)
    assert info.get("onednn", "0") == str(_C.HAS_ONEDNN), info
    if os.environ.get("GLAE_ONEDNN", "").strip() == "0" or info.get("onednn_reason") == "GLAE_ONEDNN=0":
        pytest.skip("oneDNN backend turned off with GLAE_ONEDNN=0")
    cfg, why = load_onednn_helper().detect()
    if cfg is None:
        pytest.skip(f"setup.py's detection builds no oneDNN backend here: {why}")
    assert _C.HAS_ONEDNN == 1, (
        f"oneDNN {cfg['version']} ({cfg['inc']}, {cfg['lib']}) is found by setup.py's detection "
        f"but glae._C was built without it; the build said: {info.get('onednn_reason')!r}")
    assert info["onednn_version"] == cfg["version"]


def test_onednn_detection_wants_openmp_builds(tmp_path):
    """A oneDNN 3 header tree with a library is found; a TBB/SYCL build is refused (its own
    thread pool would fight OpenMP's), and a oneDNN 2 header is skipped."""
    mod = load_onednn_helper()
    inc = tmp_path / "include" / "oneapi" / "dnnl"
    inc.mkdir(parents=True)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libdnnl.so.3").write_text("")
    (inc / "dnnl_version.h").write_text("#define DNNL_VERSION_MAJOR 3\n#define DNNL_VERSION_MINOR 2\n"
                                        "#define DNNL_VERSION_PATCH 0\n")
    (inc / "dnnl_config.h").write_text("#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_OMP\n")
    env = {"ONEDNN_HOME": str(tmp_path)}
    found = mod.find_onednn_in([str(tmp_path)])
    assert found == (str(tmp_path / "include"), str(tmp_path / "lib"), ":libdnnl.so.3", (3, 2, 0))
    assert mod.detect(env)[0]["inc"] == str(tmp_path / "include")
    (inc / "dnnl_config.h").write_text("#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_TBB\n")
    cfg, why = mod.detect(env)
    assert cfg is None and "tbb" in why, why
    (inc / "dnnl_version.h").write_text("#define DNNL_VERSION_MAJOR 2\n#define DNNL_VERSION_MINOR 6\n"
                                        "#define DNNL_VERSION_PATCH 3\n")
    assert mod.find_onednn_in([str(tmp_path)]) is None
    assert mod.detect({"GLAE_ONEDNN": "0"}) == (None, "GLAE_ONEDNN=0")


def test_nccl_is_opened_on_use_not_linked():
    """A linked libnccl.so.2 loads with `import glae` and shadows the newer one a later
    `import torch` needs (torch then fails: undefined symbol ncclCommResume); glae opens
    NCCL only when a multi-GPU run asks for it (core/comm_nccl.cu)."""
    import shutil
    import subprocess

    from glae import _C

    if _C.BUILD_INFO.get("nccl") != "1":
        pytest.skip("built without NCCL")
    if not shutil.which("readelf"):
        pytest.skip("readelf not installed")
    needed = subprocess.run(["readelf", "-d", _C.__file__], capture_output=True, text=True,
                            check=True).stdout
    assert "libnccl" not in needed
    assert len(_C.nccl_unique_id()) == 128  # and it opens: the id needs no GPU
