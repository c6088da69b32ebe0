"""glae: facial age estimation (LAE and GLAE) on a C/CUDA engine.

All numerics live in the extension ``glae._C``; this package validates arguments, arranges
calls into it and presents the results.
"""
from ._lib import _C

__version__ = _C.__version__
HAS_CUDA = bool(_C.HAS_CUDA)

set_num_threads = _C.set_num_threads
get_num_threads = _C.get_num_threads

__all__ = ["HAS_CUDA", "__version__", "get_num_threads", "set_num_threads"]
