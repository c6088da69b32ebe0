"""How setup.py finds the CUDA toolkit and cuDNN, in one place.

setup.py imports it to decide whether to build the CUDA backend; tests/test_build.py
imports the same file to check that a machine where this detection succeeds really got a
CUDA build (glae._C.HAS_CUDA == 1). Standard library only: it runs before the build's
dependencies are importable.
"""
import glob
import os
import re
import shutil
import subprocess
import sysconfig

DEFAULT_ARCH = "80;90"


def find_cuda(environ=os.environ):
    """CUDA toolkit root: CUDA_HOME / CUDA_PATH, else the folder above the `nvcc` on PATH."""
    home = environ.get("CUDA_HOME") or environ.get("CUDA_PATH")
    if not home:
        nvcc = shutil.which("nvcc")
        if nvcc:
            home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    return None


def _version_key(path):
    return [int(p) for p in re.findall(r"\d+", path.rsplit(".so", 1)[-1])]


def link_name(libdir, name):
    """What to pass to -l for lib<name> in libdir, or None when it is not there.

    `name` when the unversioned lib<name>.so exists (the toolkit, distro packages).
    pip wheels (site-packages/nvidia/cudnn/lib, nvidia/cublas/lib) often ship only the
    versioned file (libcudnn.so.9), which plain -lcudnn does not find: then
    ':lib<name>.so.<major>' (ld's -l:FILE form), preferring the major-only soname file.
    """
    if os.path.exists(os.path.join(libdir, f"lib{name}.so")):
        return name
    versioned = glob.glob(os.path.join(libdir, f"lib{name}.so.[0-9]*"))
    if not versioned:
        return None
    soname = [p for p in versioned if re.search(r"\.so\.\d+$", p)]
    best = max(soname or versioned, key=_version_key)
    return ":" + os.path.basename(best)


def site_package_dirs():
    return sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})


def cudnn_roots(cuda_home, environ=os.environ):
    roots = [environ.get("CUDNN_HOME"), cuda_home, "/usr", "/usr/local"]
    # pip-installed CUDA libraries: site-packages/nvidia/cudnn/{include,lib}
    roots += [os.path.join(sp, "nvidia", "cudnn") for sp in site_package_dirs()]
    return [r for r in roots if r]


def find_cudnn(cuda_home, environ=os.environ):
    """(include dir, lib dir, -l name) of the first cuDNN found, or None."""
    return find_cudnn_in(cudnn_roots(cuda_home, environ))


def find_cudnn_in(roots):
    for root in roots:
        for inc in ("include", "include/x86_64-linux-gnu", "targets/x86_64-linux/include"):
            if not os.path.exists(os.path.join(root, inc, "cudnn.h")):
                continue
            for lib in ("lib64", "lib", "lib/x86_64-linux-gnu", "targets/x86_64-linux/lib"):
                libdir = os.path.join(root, lib)
                name = link_name(libdir, "cudnn")
                if name:
                    return os.path.join(root, inc), libdir, name
    return None


def cudnn_header_version(inc):
    """'9.19.0' from cudnn_version.h (or cudnn.h), '' when it cannot be read."""
    for header in ("cudnn_version.h", "cudnn.h"):
        try:
            with open(os.path.join(inc, header), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        parts = [re.search(rf"#define\s+CUDNN_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCHLEVEL")]
        if all(parts):
            return ".".join(p.group(1) for p in parts)
    return ""


def nvcc_version(cuda_home):
    """'13.0.88' from `nvcc --version`, '' when it does not run."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(r"release [\d.]+, V([\d.]+)", out) or re.search(r"release ([\d.]+)", out)
    return m.group(1) if m else ""


def cuda_arch(environ=os.environ):
    """Compute capabilities to build SASS for (GLAE_CUDA_ARCH, ';'-separated, default 80;90)."""
    arch = [a.strip() for a in environ.get("GLAE_CUDA_ARCH", DEFAULT_ARCH).split(";") if a.strip()]
    return arch or DEFAULT_ARCH.split(";")


def gencode_flags(arch):
    """SASS for every arch, plus PTX of the highest so newer GPUs can JIT-compile it."""
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in arch]
    top = max(arch, key=lambda a: int(re.sub(r"\D", "", a) or 0))
    flags.append(f"-gencode=arch=compute_{top},code=compute_{top}")
    return flags


def arch_summary(arch):
    top = max(arch, key=lambda a: int(re.sub(r"\D", "", a) or 0))
    return " ".join([f"sm_{a}" for a in arch] + [f"compute_{top}"])


def detect(environ=os.environ):
    """(config or None, reason): what setup.py builds and why.

    config: home, cudnn_inc, cudnn_lib, cudnn_link. GLAE_CUDA=0 turns the backend off; the
    caller decides what GLAE_CUDA=1 with a failed detection means (setup.py: an error).
    """
    if environ.get("GLAE_CUDA", "").strip() == "0":
        return None, "GLAE_CUDA=0"
    home = find_cuda(environ)
    if not home:
        return None, "nvcc not found (not on PATH, no CUDA_HOME)"
    cudnn = find_cudnn(home, environ)
    if not cudnn:
        return None, ("cuDNN not found (no include/cudnn.h with a libcudnn.so* beside it under "
                      + ", ".join(cudnn_roots(home, environ)) + "; set CUDNN_HOME)")
    cfg = {"home": home, "cudnn_inc": cudnn[0], "cudnn_lib": cudnn[1], "cudnn_link": cudnn[2]}
    return cfg, f"nvcc and cuDNN found (CUDA {home}, cuDNN {cudnn[1]})"
