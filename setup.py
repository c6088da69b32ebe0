"""Build glae._C: the CPU engine always, the CUDA backend when nvcc and cuDNN are found.

Environment switches:
  GLAE_CUDA=0|1   force the CUDA backend off / on (on: fail if nvcc or cuDNN is missing)
  CUDA_HOME       CUDA toolkit root (else the directory holding `nvcc` on PATH)
  CUDNN_HOME      cuDNN root (else CUDA_HOME, /usr, or a pip `nvidia/cudnn` folder)
  GLAE_NATIVE=0   do not pass -march=native (for wheels meant for other machines)
  GLAE_DEBUG=1    -O0 -g, no -march
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy
import scipy_openblas32
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

VERSION = "0.1.0"
HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"glae setup: {msg}", file=sys.stderr)


def find_cuda():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home:
        nvcc = shutil.which("nvcc")
        if nvcc:
            home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    return None


def find_cudnn(cuda_home):
    roots = [os.environ.get("CUDNN_HOME"), cuda_home, "/usr", "/usr/local"]
    # pip-installed CUDA libraries: site-packages/nvidia/cudnn/{include,lib}
    for sp in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        roots.append(os.path.join(sp, "nvidia", "cudnn"))
    for root in filter(None, roots):
        for inc in ("include", "include/x86_64-linux-gnu", "targets/x86_64-linux/include"):
            header = os.path.join(root, inc, "cudnn.h")
            if not os.path.exists(header):
                continue
            for lib in ("lib64", "lib", "lib/x86_64-linux-gnu", "targets/x86_64-linux/lib"):
                libdir = os.path.join(root, lib)
                if glob.glob(os.path.join(libdir, "libcudnn.so*")):
                    return os.path.join(root, inc), libdir
    return None


def cuda_config():
    want = os.environ.get("GLAE_CUDA", "").strip()
    if want == "0":
        log("CUDA backend off (GLAE_CUDA=0)")
        return None
    home = find_cuda()
    cudnn = find_cudnn(home) if home else None
    if home and cudnn:
        log(f"CUDA backend on: CUDA {home}, cuDNN {cudnn[0]}")
        return {"home": home, "cudnn_inc": cudnn[0], "cudnn_lib": cudnn[1]}
    why = "nvcc not found" if not home else "cuDNN not found"
    if want == "1":
        raise SystemExit(f"glae setup: GLAE_CUDA=1 but {why} (set CUDA_HOME / CUDNN_HOME)")
    log(f"CUDA backend off ({why}); CPU only")
    return None


class BuildExt(build_ext):
    """Sends .cu files to nvcc, everything else to the C compiler."""

    def build_extensions(self):
        for ext in self.extensions:
            cu = [s for s in ext.sources if s.endswith(".cu")]
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            cfg = getattr(ext, "glae_cuda", None)
            if cu and cfg:
                ext.extra_objects = list(ext.extra_objects or []) + self.nvcc(cu, ext, cfg)
        super().build_extensions()

    def nvcc(self, sources, ext, cfg):
        nvcc = os.path.join(cfg["home"], "bin", "nvcc")
        out_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(out_dir, exist_ok=True)
        incs = [f"-I{d}" for d in ext.include_dirs]
        arch = os.environ.get("GLAE_CUDA_ARCH", "80;90").split(";")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in arch]
        objs = []
        for src in sources:
            obj = os.path.join(out_dir, os.path.relpath(src, HERE).replace(os.sep, "_") + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "--use_fast_math",
                   "-Xcompiler", "-fPIC", "-DGLAE_WITH_CUDA", *gencode, *incs]
            log(" ".join(cmd))
            subprocess.check_call(cmd)
            objs.append(obj)
        return objs


def extension():
    c_sources = sorted(glob.glob("csrc/**/*.c", recursive=True))
    cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    debug = os.environ.get("GLAE_DEBUG") == "1"
    cflags = ["-std=c11", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter",
              "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
    cflags += ["-O0", "-g"] if debug else ["-O3", "-fno-math-errno"]
    if not debug and os.environ.get("GLAE_NATIVE", "1") != "0":
        cflags.append("-march=native")
    ob_lib = scipy_openblas32.get_lib_dir()
    ext = Extension(
        "glae._C",
        sources=c_sources + cu_sources,
        include_dirs=[numpy.get_include(), scipy_openblas32.get_include_dir(), "csrc"],
        library_dirs=[ob_lib],
        libraries=[scipy_openblas32.get_library(), "m"],
        # the wheel's directory relative to site-packages/glae/; glae/__init__.py also
        # preloads the library so editable installs and other layouts work
        runtime_library_dirs=["$ORIGIN/../scipy_openblas32/lib"],
        define_macros=[("GLAE_VERSION", f'"{VERSION}"')],
        extra_compile_args=cflags,
        extra_link_args=["-fopenmp"],
    )
    cfg = cuda_config() if cu_sources else None
    if cfg:
        lib64 = os.path.join(cfg["home"], "lib64")
        ext.define_macros.append(("GLAE_WITH_CUDA", "1"))
        ext.include_dirs += [os.path.join(cfg["home"], "include"), cfg["cudnn_inc"]]
        ext.library_dirs += [lib64, cfg["cudnn_lib"]]
        ext.runtime_library_dirs += [lib64, cfg["cudnn_lib"]]
        ext.libraries += ["cudart", "cublas", "cublasLt", "cudnn"]
        ext.glae_cuda = cfg
    else:
        ext.sources = c_sources
    return ext


setup(version=VERSION, ext_modules=[extension()], cmdclass={"build_ext": BuildExt})
