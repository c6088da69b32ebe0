"""MTCNN face detection and 5-point landmarks on glae's C engine (CPU).

    boxes, scores, landmarks = glae.detect("photo.jpg")    # the module itself is callable
    glae.detect.set_weights("/path/to/mtcnn")              # once, if not found on its own

    det = glae.detect.MTCNN("/path/to/mtcnn")     # folder with pnet.pt, rnet.pt, onet.pt
    boxes, scores, landmarks = det.detect("face.jpg")
    i = largest_face(boxes)                        # or most_confident(scores)

Weights: the three published MTCNN networks (facenet-pytorch's ``pnet.pt``, ``rnet.pt``,
``onet.pt``, legacy ``torch.save`` files read by :mod:`glae.torchfile`). The default
detector used by ``glae.detect(image)`` takes its folder from, in this order: the
``weights=`` argument, :func:`set_weights`, the ``GLAE_MTCNN_WEIGHTS`` environment
variable, the ``data`` folder of an installed ``facenet_pytorch`` package. The whole
pipeline (pyramid, three networks, NMS) runs in C; see docs/mtcnn.md.
"""
import collections
import copy
import importlib.util
import os
import sys
import threading
import types

import numpy as np

from ._lib import _C
from . import torchfile

__all__ = ["Face", "MTCNN", "PICKS", "detect", "get_detector", "largest_face", "most_confident",
           "pick_face", "set_weights", "to_rgb", "weights_dir"]

_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
ENV_VAR = "GLAE_MTCNN_WEIGHTS"
HOW_TO_GIVE_WEIGHTS = (
    "give a folder holding pnet.pt, rnet.pt and onet.pt (facenet-pytorch's MTCNN weights) by "
    f"glae.detect.set_weights(path), the {ENV_VAR} environment variable, a weights= argument "
    "(--mtcnn-weights on the command line), or install facenet-pytorch")


def _default_weights_dir():
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        d = os.path.join(root, "data")
        if all(os.path.isfile(os.path.join(d, f)) for f in _FILES):
            return d
    return None


def to_rgb(image):
    """uint8 (H, W, 3) RGB array from a path, a PIL image or an array.

    A path is decoded by glae.data.load_image, the decoder prepare and predict_faces use
    (EXIF orientation applied, alpha composited onto mid grey; DecodeError for a corrupt
    file), so a face is detected on the same pixels it is aligned and trained on. A PIL
    image is converted as load_image converts (alpha onto mid grey) but taken as it is
    displayed: apply PIL.ImageOps.exif_transpose first if it still carries an EXIF
    orientation. Arrays: (H, W) grayscale and (H, W, 1) are replicated, (H, W, 4) RGBA
    drops alpha; float arrays must already hold 0..255 values and are rounded."""
    if isinstance(image, (str, bytes, os.PathLike)):
        from .data.readers import load_image
        return load_image(image)  # one decoder for every path in glae
    if not isinstance(image, np.ndarray) and hasattr(image, "convert") and hasattr(image, "mode"):
        from .data.readers import _to_rgb
        return _to_rgb(image)  # PIL image: load_image's mode conversion
    a = np.asarray(image)
    if a.dtype == np.bool_ or a.dtype.kind not in "uif":
        raise TypeError(f"image must be numeric, got dtype {a.dtype}")
    if a.dtype != np.uint8:
        if a.size and not np.all(np.isfinite(a)):
            raise ValueError("image holds NaN or infinite values")
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif not (a.ndim == 3 and a.shape[2] == 3):
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    return np.ascontiguousarray(a)


class MTCNN:
    """The three-stage MTCNN detector.

    weights_dir: folder holding pnet.pt, rnet.pt and onet.pt (default: the data folder of
    an installed facenet_pytorch). min_face: smallest face side in pixels; factor: pyramid
    step; thresholds: face-probability cut of P-, R-, O-Net; nms_thresholds: after P-Net
    (all levels, union), R-Net (union), O-Net (min); nms_scale: within one pyramid level.
    num_threads: CPU threads of each detect(), in a context of its own: work in other
    threads (a model training) keeps its own count; None: the process default
    (glae.get_num_threads()). One image is small work: 1 thread is fastest on a busy
    machine, and several images are better spread over threads (prepare) or processes."""

    def __init__(self, weights_dir=None, min_face=20.0, factor=0.709,
                 thresholds=(0.6, 0.7, 0.7), nms_thresholds=(0.7, 0.7, 0.7), nms_scale=0.5,
                 num_threads=1):
        if weights_dir is None:
            weights_dir = _default_weights_dir()
            if weights_dir is None:
                raise FileNotFoundError(
                    "MTCNN weights not found: pass weights_dir= a folder holding pnet.pt, rnet.pt and "
                    "onet.pt (e.g. facenet_pytorch/data), or install facenet-pytorch (glae.detect.MTCNN() "
                    f"does not read set_weights or ${ENV_VAR}: glae.detect.get_detector() does)")
        weights_dir = os.fspath(weights_dir)
        missing = [f for f in _FILES if not os.path.isfile(os.path.join(weights_dir, f))]
        if missing:
            raise FileNotFoundError(f"MTCNN weights folder {weights_dir!r} lacks {', '.join(missing)}")
        self.weights_dir = weights_dir
        sds = [torchfile.load_state_dict(os.path.join(weights_dir, f)) for f in _FILES]
        self._model = _C.mtcnn_new(*sds)
        self.min_face = float(min_face)
        self.factor = float(factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.nms_thresholds = tuple(float(t) for t in nms_thresholds)
        self.nms_scale = float(nms_scale)
        self.num_threads = None if num_threads is None else int(num_threads)
        if len(self.thresholds) != 3 or len(self.nms_thresholds) != 3:
            raise ValueError("thresholds and nms_thresholds need 3 values each")

    def detect(self, image):
        """Faces in one image (path, PIL image or uint8 array; grayscale/RGBA converted).
        Returns boxes (n, 4) float32 x1, y1, x2, y2 in pixels; scores (n,) float32;
        landmarks (n, 5, 2) float32 (x, y) of left eye, right eye, nose, left and right
        mouth corner. Faces come in descending score order; none: n = 0."""
        img = to_rgb(image)
        return _C.mtcnn_detect(self._model, img, self.min_face, self.factor, self.thresholds,
                               self.nms_scale, self.nms_thresholds, self.num_threads or 0)

    __call__ = detect


def largest_face(boxes):
    """Index of the face with the largest box area, or None without faces."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return None
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(np.argmax(area))


def most_confident(scores):
    """Index of the face with the highest score, or None without faces."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) == 0:
        return None
    return int(np.argmax(scores))


# --------------------------------------------------------------------------- one face per image

PICKS = {"most_confident": lambda boxes, scores: most_confident(scores),
         "largest": lambda boxes, scores: largest_face(boxes)}


def pick_face(boxes, scores, pick="most_confident"):
    """Index of the one face to keep: pick "most_confident" (highest score) or "largest"
    (largest box area); None without faces."""
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {sorted(PICKS)}, got {pick!r}")
    return PICKS[pick](boxes, scores)


# A face found and estimated by glae.Model.predict_faces: box (4,) x1, y1, x2, y2 pixels;
# landmarks (5, 2); age (expected age of the answering head); head (0 vanilla, 1 balanced).
Face = collections.namedtuple("Face", ["box", "landmarks", "age", "head"])


# --------------------------------------------------------------------------- default detector

_lock = threading.Lock()
_set_dir = None         # from set_weights()
_cache = {}             # real path of a weights folder -> MTCNN


def _check_dir(path, what):
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"MTCNN weights folder {path!r} (from {what}) does not exist; "
                                f"{HOW_TO_GIVE_WEIGHTS}")
    missing = [f for f in _FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise FileNotFoundError(f"MTCNN weights folder {path!r} (from {what}) lacks {', '.join(missing)}")
    return path


def set_weights(path):
    """Use the MTCNN weights in folder `path` (pnet.pt, rnet.pt, onet.pt) for every later
    glae.detect(...) call, prepare(detect=...) and Model.predict_faces without weights=.
    None forgets the setting. The folder is checked now (FileNotFoundError)."""
    global _set_dir
    with _lock:
        _set_dir = None if path is None else _check_dir(path, "set_weights")


def weights_dir(weights=None):
    """The weights folder the default detector uses: `weights`, else set_weights's folder,
    else $GLAE_MTCNN_WEIGHTS, else an installed facenet_pytorch's data folder. Raises
    FileNotFoundError saying how to provide one when none is found."""
    if weights is not None:
        return _check_dir(weights, "the weights argument")
    if _set_dir is not None:
        return _set_dir
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_dir(env, f"${ENV_VAR}")
    d = _default_weights_dir()
    if d is None:
        raise FileNotFoundError(f"MTCNN weights not found: {HOW_TO_GIVE_WEIGHTS}")
    return d


def get_detector(weights=None):
    """The cached MTCNN (default settings, 1 thread) for a weights folder (resolved by
    weights_dir); an MTCNN instance is returned as is. Loaded once per folder."""
    if isinstance(weights, MTCNN):
        return weights
    d = weights_dir(weights)
    key = os.path.realpath(d)
    with _lock:
        det = _cache.get(key)
        if det is None:
            det = _cache[key] = MTCNN(d)
    return det


def detect(image, weights=None):
    """Faces in one image with the default MTCNN: returns boxes (n, 4) float32 x1, y1, x2,
    y2; scores (n,); landmarks (n, 5, 2) (x, y), most confident first; n = 0 without faces.
    image: a path (decoded by glae.data.load_image: EXIF orientation applied), PIL image
    or array (grayscale / RGBA converted, see to_rgb). weights: a folder or an MTCNN to
    use instead of the default (see weights_dir)."""
    return get_detector(weights).detect(image)


def _with_threads(det, n):
    """A view of `det` sharing its networks whose detections run on n threads each: for
    callers that run several detections at once (prepare's workers)."""
    d = copy.copy(det)
    d.num_threads = n
    return d


class _CallableModule(types.ModuleType):
    """Makes ``glae.detect(image)`` work while ``glae.detect.MTCNN`` etc. stay reachable."""

    def __call__(self, image, weights=None):
        return detect(image, weights)


sys.modules[__name__].__class__ = _CallableModule
