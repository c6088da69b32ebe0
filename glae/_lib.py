"""Loads the C engine. OpenBLAS comes from the scipy-openblas32 wheel; preloading it with
RTLD_GLOBAL lets the extension find it whatever the install layout (editable or not)."""
import ctypes
import os

import scipy_openblas32 as _ob

_lib = os.path.join(_ob.get_lib_dir(), f"lib{_ob.get_library()}.so")
if os.path.exists(_lib):
    ctypes.CDLL(_lib, mode=ctypes.RTLD_GLOBAL)

from . import _C  # noqa: E402

__all__ = ["_C"]
