"""Build glae._C: the CPU engine always, the CUDA backend when nvcc and cuDNN are found.

Environment switches:
  GLAE_CUDA=0|1   force the CUDA backend off / on (on: fail if nvcc or cuDNN is missing)
  CUDA_HOME       CUDA toolkit root (else the directory holding `nvcc` on PATH)
  CUDNN_HOME      cuDNN root (else CUDA_HOME, /usr, or a pip `nvidia/cudnn` folder)
  GLAE_CUDA_ARCH  SASS targets, ';'-separated (default 80;90); PTX of the highest is added
  GLAE_NATIVE=0   do not pass -march=native (for wheels meant for other machines)
  GLAE_DEBUG=1    -O0 -g, no -march
  GLAE_SANITIZE=1 AddressSanitizer + UndefinedBehaviorSanitizer (-O1 -g; CPU only: set
                  GLAE_CUDA=0); bench/sanitize.sh builds it in a copy and runs the tests
  GLAE_BUILD_JOBS compilers run at once (default: the CPUs this process may use, at most 8)
  GLAE_ONEDNN=0|1 force the oneDNN CPU backend off / on (on: fail if oneDNN is missing)
  ONEDNN_HOME     oneDNN root (else the Python prefix, where the onednn-*-cpu-gomp wheels go)
  GLAE_MPI=0|1    MPI (data-parallel training on CPUs) off / mandatory; MPI_HOME its root
  GLAE_NCCL=0     no NCCL with the CUDA backend; NCCL_HOME its root (build_dist.py)
"""
import glob
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy
import scipy_openblas32
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

VERSION = "0.1.0"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import build_cuda  # noqa: E402  (the detection shared with tests/test_build.py)
import build_onednn  # noqa: E402  (likewise, for the oneDNN CPU backend)
import build_dist  # noqa: E402  (MPI and NCCL, shared with tests/test_distributed.py)


def log(msg):
    print(f"glae setup: {msg}", file=sys.stderr)


def cuda_config():
    """The CUDA build configuration, or None; the reason is kept for _C.BUILD_INFO."""
    cfg, why = build_cuda.detect()
    if cfg:
        log(f"CUDA backend on: CUDA {cfg['home']}, cuDNN {cfg['cudnn_inc']} "
            f"(-l{cfg['cudnn_link']} from {cfg['cudnn_lib']})")
        cfg["reason"] = why
        return cfg, why
    if os.environ.get("GLAE_CUDA", "").strip() == "1":
        raise SystemExit(f"glae setup: GLAE_CUDA=1 but {why} (set CUDA_HOME / CUDNN_HOME)")
    log(f"CUDA backend off ({why}); CPU only")
    return None, why


def add_onednn(ext, info):
    """The oneDNN CPU backend (csrc/ops/onednn.c) when oneDNN is found: GLAE_WITH_ONEDNN,
    its headers, -ldnnl with an rpath to its folder and to the prefix's lib folder as seen
    from site-packages/glae/ (where the onednn-cpu-gomp wheel puts libdnnl.so.3)."""
    cfg, why = build_onednn.detect()
    if not cfg and os.environ.get("GLAE_ONEDNN", "").strip() == "1":
        raise SystemExit(f"glae setup: GLAE_ONEDNN=1 but {why} (set ONEDNN_HOME)")
    info.update({"onednn": "1" if cfg else "0", "onednn_reason": why})
    if not cfg:
        log(f"oneDNN backend off ({why})")
        return
    log(f"oneDNN backend on: {why}")
    ext.define_macros.append(("GLAE_WITH_ONEDNN", "1"))
    ext.include_dirs.append(cfg["inc"])
    ext.library_dirs.append(cfg["lib"])
    ext.libraries.append(cfg["link"])
    ext.runtime_library_dirs += [cfg["lib"], "$ORIGIN/../../.."]
    info.update({"onednn_version": cfg["version"], "onednn_include": cfg["inc"],
                 "onednn_lib": cfg["lib"]})


def build_jobs():
    """GLAE_BUILD_JOBS, else the CPUs this process may use (at most 8): each source is its
    own compiler process (nvcc takes 4-8 s a file), so the build scales with cores."""
    n = os.environ.get("GLAE_BUILD_JOBS")
    if n:
        if not n.isdigit() or int(n) < 1:
            raise SystemExit(f"GLAE_BUILD_JOBS must be a positive integer, got {n!r}")
        return int(n)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # at most 8: a container's memory limit does not show in the CPU count, and an nvcc
    # process takes up to a GiB or two
    return min(cpus, 8)


def compile_in_parallel(compiler, jobs):
    """The C compiler's compile(), one source per call, `jobs` calls at once (setuptools
    only builds whole extensions in parallel, and glae is one). Objects keep their order."""
    serial = compiler.compile

    def compile(sources, *args, **kw):
        with ThreadPoolExecutor(jobs) as pool:
            return [o for objs in pool.map(lambda s: serial([s], *args, **kw), sources) for o in objs]

    compiler.compile = compile


def c_string(s):
    """A C string literal holding s (paths may contain quotes, backslashes, '??')."""
    out = []
    for ch in str(s):
        if ch in '\\"?':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32:
            continue
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class BuildExt(build_ext):
    """Sends .cu files to nvcc, everything else to the C compiler."""

    def build_extensions(self):
        self.jobs = build_jobs()
        if self.jobs > 1:
            compile_in_parallel(self.compiler, self.jobs)
        for ext in self.extensions:
            info = getattr(ext, "glae_build_info", None)
            if info is not None:
                ext.include_dirs = list(ext.include_dirs) + [self.write_build_info(info)]
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
        gencode = build_cuda.gencode_flags(build_cuda.cuda_arch())
        # the optional libraries' switches reach the .cu files too (comm_nccl.cu)
        defs = [f"-D{n}" if v is None or v == "1" else f"-D{n}={v}" for n, v in ext.define_macros
                if n in ("GLAE_WITH_NCCL", "GLAE_WITH_MPI", "GLAE_NCCL_DIR")]

        def one(src):
            obj = os.path.join(out_dir, os.path.relpath(src, HERE).replace(os.sep, "_") + ".o")
            # no --use_fast_math and -fmad=false: the kernels' float arithmetic is the C
            # twins' (-ffp-contract=off), IEEE division and sqrt, no flush to zero
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-fmad=false",
                   "-Xcompiler", "-fPIC", "-DGLAE_WITH_CUDA", *defs, *gencode, *incs]
            log(" ".join(cmd))
            subprocess.check_call(cmd)
            return obj

        with ThreadPoolExecutor(self.jobs) as pool:
            return list(pool.map(one, sources))

    def write_build_info(self, info):
        """csrc/python/module.c includes glae_build_info.h: _C.BUILD_INFO, for diagnostics."""
        out_dir = os.path.join(self.build_temp, "glae_generated")
        os.makedirs(out_dir, exist_ok=True)
        lines = ["/* generated by setup.py: how this glae._C was built */",
                 "#define GLAE_BUILD_INFO_ITEMS \\"]
        lines += [f"    X({c_string(k)}, {c_string(v)}) \\" for k, v in info.items()]
        lines += ["", ""]
        text = "\n".join(lines)
        path = os.path.join(out_dir, "glae_build_info.h")
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            with open(path, "w") as f:
                f.write(text)
        return out_dir


def add_dist(ext, info, cuda_cfg):
    """MPI (CPU data parallelism, and the launcher's channel) and, beside CUDA, NCCL."""
    mpi, why = build_dist.detect_mpi()
    if mpi:
        log(f"MPI on: {why}")
        ext.define_macros.append(("GLAE_WITH_MPI", "1"))
        ext.include_dirs += mpi["include"]
        ext.library_dirs += mpi["libdirs"]
        ext.runtime_library_dirs += mpi["rpath"]
        ext.libraries += mpi["libs"]
    elif os.environ.get("GLAE_MPI", "").strip() == "1":
        raise SystemExit(f"glae setup: GLAE_MPI=1 but {why}")
    else:
        log(f"MPI off ({why}): distributed training on CPUs unavailable")
    info.update({"mpi": "1" if mpi else "0", "mpi_reason": why})
    if not cuda_cfg:
        info.update({"nccl": "0", "nccl_reason": "no CUDA backend"})
        return
    nccl, why = build_dist.detect_nccl(cuda_cfg["home"])
    if nccl:
        inc, libdir, name = nccl
        log(f"NCCL on: {why}")
        ext.define_macros.append(("GLAE_WITH_NCCL", "1"))
        # opened on first use (comm_nccl.cu says why), not linked: only its folder is kept
        ext.define_macros.append(("GLAE_NCCL_DIR", '"' + libdir + '"'))
        ext.include_dirs.append(inc)
        if "dl" not in ext.libraries:
            ext.libraries.append("dl")
    info.update({"nccl": "1" if nccl else "0", "nccl_reason": why})


def extension():
    c_sources = sorted(glob.glob("csrc/**/*.c", recursive=True))
    cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    debug = os.environ.get("GLAE_DEBUG") == "1"
    # -ffp-contract=off: no a*b+c fused into an FMA (gcc's C11 mode already says so,
    # clang's default does not), so e.g. the input normalisation is the CUDA twin's bit
    # for bit (docs/data-pipeline.md)
    cflags = ["-std=c11", "-fopenmp", "-ffp-contract=off", "-Wall", "-Wextra",
              "-Wno-unused-parameter", "-Wno-missing-field-initializers",
              "-Wno-cast-function-type"]
    # -fno-trapping-math: glae never reads floating-point exception flags; without it GCC
    # will not if-convert float clamps (x < 0 ? 0 : x), so loops such as the uint8
    # rounding of the resampler stay scalar on AVX2 machines. Values are unchanged (no
    # reassociation, unlike -ffast-math).
    cflags += ["-O0", "-g"] if debug else ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    if not debug and os.environ.get("GLAE_NATIVE", "1") != "0":
        cflags.append("-march=native")
    sanitize = os.environ.get("GLAE_SANITIZE") == "1"
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
           "-fno-omit-frame-pointer"] if sanitize else []
    if sanitize:  # -O1 -g: readable reports; the sanitizers themselves cost ~2-3x
        cflags = [f for f in cflags if not f.startswith(("-O", "-march"))] + ["-O1", "-g"] + san
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
        extra_link_args=["-fopenmp"] + san,
    )
    cfg, why = cuda_config() if cu_sources else (None, "no .cu sources")
    info = {"cuda": "1" if cfg else "0", "reason": why}
    if sanitize:
        info["sanitize"] = "address,undefined"
    if cfg:
        home = cfg["home"]
        lib64 = os.path.join(home, "lib64")
        ext.define_macros.append(("GLAE_WITH_CUDA", "1"))
        # the cuDNN found first, so a pip cuDNN's header and library win over a toolkit copy
        ext.include_dirs += [cfg["cudnn_inc"], os.path.join(home, "include")]
        ext.library_dirs += [cfg["cudnn_lib"], lib64]
        # rpath to both folders: a pip cuDNN is found at run time without LD_LIBRARY_PATH
        ext.runtime_library_dirs += [cfg["cudnn_lib"], lib64]
        # versioned-only libraries (pip wheels) are linked as -l:libX.so.N
        ext.libraries += [build_cuda.link_name(lib64, n) or n for n in ("cudart", "cublas", "cublasLt")]
        ext.libraries.append(cfg["cudnn_link"])
        ext.glae_cuda = cfg
        info.update({
            "cuda_home": home,
            "nvcc_version": build_cuda.nvcc_version(home),
            "cuda_arch": build_cuda.arch_summary(build_cuda.cuda_arch()),
            # "GLAE_CUDA_ARCH" when the list was overridden (e.g. sm_90 only on an H100)
            "cuda_arch_source": "GLAE_CUDA_ARCH" if os.environ.get("GLAE_CUDA_ARCH") else "default",
            "cudnn_include": cfg["cudnn_inc"],
            "cudnn_lib": cfg["cudnn_lib"],
            "cudnn_link": "-l" + cfg["cudnn_link"],
            "cudnn_header_version": build_cuda.cudnn_header_version(cfg["cudnn_inc"]),
        })
    else:
        ext.sources = c_sources
    add_onednn(ext, info)
    add_dist(ext, info, cfg)
    ext.glae_build_info = info
    return ext


setup(version=VERSION, ext_modules=[extension()], cmdclass={"build_ext": BuildExt})
