"""How setup.py finds oneDNN (the CPU backend's library), in one place.

setup.py imports it to decide whether to build the oneDNN CPU backend; tests/test_build.py
imports it to check that a machine where this detection succeeds got that backend
(glae._C.HAS_ONEDNN == 1). Standard library only: it runs before the build's dependencies
are importable.

Where oneDNN comes from: the pip wheels `onednn-devel-cpu-gomp` (headers, a build
requirement in pyproject.toml) and `onednn-cpu-gomp` (libdnnl.so.3, a dependency), which
install into the environment's prefix (<prefix>/include/oneapi/dnnl, <prefix>/lib). They
are oneDNN built with GNU OpenMP, the thread pool glae's own kernels use. The newer
`onednn` / `onednn-devel` wheels are the SYCL build (CPU engine through SYCL, TBB threads,
the DPC++ runtime as dependencies) and are not what a CPU library wants. A system oneDNN
(ONEDNN_HOME, /usr, /usr/local) works too; version 3 or later.
"""
import os
import re
import sys

import build_cuda


def wheel_roots():
    """The prefixes where the onednn wheels' files are, from their installed metadata: a pip
    build with build isolation installs the build requirement into a temporary prefix that
    is not sys.prefix."""
    import importlib.metadata as md

    roots = []
    for dist, tail in (("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.h"),
                       ("onednn-cpu-gomp", "lib/libdnnl.so.3")):
        try:
            files = md.distribution(dist).files or []
        except md.PackageNotFoundError:
            continue
        for f in files:
            if str(f).replace(os.sep, "/").endswith(tail):
                path = str(md.distribution(dist).locate_file(f).resolve())
                roots.append(path[: -len(tail)].rstrip("/"))
                break
    return roots


def onednn_roots(environ=os.environ):
    roots = [environ.get("ONEDNN_HOME") or environ.get("DNNL_HOME")] + wheel_roots()
    roots += [sys.prefix, sys.base_prefix, "/usr/local", "/usr"]
    out = []
    for r in roots:
        if r and r not in out:
            out.append(r)
    return out


def header_version(inc):
    """(major, minor, patch) from dnnl_version.h, or None."""
    try:
        with open(os.path.join(inc, "oneapi", "dnnl", "dnnl_version.h"), encoding="utf-8",
                  errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    parts = [re.search(rf"#define\s+DNNL_VERSION_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    return tuple(int(p.group(1)) for p in parts) if all(parts) else None


def threading(inc):
    """'omp', 'tbb', 'seq', 'threadpool' or '' from dnnl_config.h."""
    try:
        with open(os.path.join(inc, "oneapi", "dnnl", "dnnl_config.h"), encoding="utf-8",
                  errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    m = re.search(r"#define\s+DNNL_CPU_THREADING_RUNTIME\s+DNNL_RUNTIME_(\w+)", text)
    return m.group(1).lower() if m else ""


def find_onednn_in(roots):
    """(include dir, lib dir, -l name, version) of the first oneDNN 3+ found, or None. The
    headers and the library may sit under different roots (two wheels, two prefixes)."""
    libs = [(os.path.join(root, lib), build_cuda.link_name(os.path.join(root, lib), "dnnl"))
            for root in roots for lib in ("lib", "lib64", "lib/x86_64-linux-gnu")]
    for root in roots:
        for inc in ("include", "include/x86_64-linux-gnu"):
            incdir = os.path.join(root, inc)
            v = header_version(incdir)
            if not v or v[0] < 3:
                continue
            # the library beside the headers first, else any root's
            mine = [(d, n) for d, n in libs if n and d.startswith(root + os.sep)]
            other = [(d, n) for d, n in libs if n]
            for libdir, name in mine + other:
                return incdir, libdir, name, v
    return None


def detect(environ=os.environ):
    """(config or None, reason). config: inc, lib, link, version, threading.
    GLAE_ONEDNN=0 turns the backend off; setup.py fails on GLAE_ONEDNN=1 without it."""
    if environ.get("GLAE_ONEDNN", "").strip() == "0":
        return None, "GLAE_ONEDNN=0"
    found = find_onednn_in(onednn_roots(environ))
    if not found:
        return None, ("oneDNN 3+ not found (no include/oneapi/dnnl/dnnl.h with a libdnnl.so* "
                      "under " + ", ".join(onednn_roots(environ)) +
                      "; pip install onednn-devel-cpu-gomp, or set ONEDNN_HOME)")
    inc, lib, link, v = found
    cfg = {"inc": inc, "lib": lib, "link": link, "version": ".".join(map(str, v)),
           "threading": threading(inc)}
    if cfg["threading"] not in ("omp", "seq"):
        # a TBB or SYCL build would run its own thread pool beside OpenMP's
        return None, (f"oneDNN {cfg['version']} in {inc} uses {cfg['threading'] or 'an unknown'} "
                      "threading, not OpenMP (pip install onednn-devel-cpu-gomp)")
    return cfg, f"oneDNN {cfg['version']} ({cfg['threading']}) found ({inc}, {lib})"
