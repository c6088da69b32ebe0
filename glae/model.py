"""Thin wrapper over the C model ``glae._C.Model`` (ResNet-18/50 or EfficientNetV2-S/M +
vanilla and balanced heads). The public ``glae.Model`` is built on this; everything numeric is in C.

Parameters, gradients, momentum and BN buffers are 1-D float32 views of the model's flat
buffers (``params``, ``grads``, ``momentum``, ``buffers``); ``state_dict()`` gives
torchvision-layout copies (conv weights OIHW) keyed by torchvision's names.
"""
import os
import threading

import numpy as np

from ._lib import _C

__all__ = ["CoreModel", "Model", "load"]


class CoreModel(_C.Model):
    """_C.Model plus dictionary import/export. Arguments: see ``_C.Model``."""

    def state_dict(self):
        """{name: array} in torchvision's layout; BN running stats included,
        num_batches_tracked not kept (see docs/model.md)."""
        return {name: self.get(name) for name, *_ in self.param_table()}

    def load_state_dict(self, state, strict=True):
        """Import arrays (numpy float32, torchvision layout). Keys ending in
        num_batches_tracked are ignored. strict: every tensor of the model must be given
        and no unknown key may appear. Returns (missing, unexpected)."""
        import numpy as np

        names = [name for name, *_ in self.param_table()]
        known = set(names)
        unexpected = [k for k in state if k not in known and not k.endswith("num_batches_tracked")]
        missing = [k for k in names if k not in state]
        if strict and (unexpected or missing):
            from .weights import guess_arch

            arch, want = guess_arch(state), self.config["backbone"]
            other = (f"the tensors are for {arch}, the model is {want}; "
                     if arch is not None and arch != want else "")
            raise KeyError(f"load_state_dict: {other}missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        for k in names:
            if k in state:
                self.set(k, np.ascontiguousarray(state[k], dtype=np.float32))
        return missing, unexpected


class Model:
    """An age estimator: a ResNet-18/50 or EfficientNetV2-S/M backbone with a vanilla and a
    balanced head.

    >>> m = glae.Model(backbone="resnet18", head="fr+pa", image_size=112)
    >>> m.fit(train, val)                  # both stages (glae.train.Dataset or packed files)
    >>> ages = m.predict(["a.jpg", "b.jpg"])   # routed answer, test-time flip averaging
    >>> m.save("model.safetensors"); m2 = glae.load("model.safetensors")

    Every keyword is a field of glae.Config (the papers' defaults); pass config=Config(...)
    to give them all at once. The engine object is ``model.core`` (glae._C.Model).
    """

    def __init__(self, config=None, init_pretrained=True, **fields):
        from .config import Config

        if config is None:
            Config.check_keys(fields)
            config = Config(**fields)
        elif fields:
            config = config.replace(**fields)
        config.validate()
        self.config = config
        # the engine refuses a second call while one runs; threads wait their turn here
        self._lock = threading.Lock()
        self.stage2_trained = False
        # set by the Trainer, saved in checkpoints: {"train_age_hist", "align"} (train.py)
        self.data_info = None
        kw = {"proj_width": config.proj_width} if config.proj_width else {}  # 0: C default
        self.core = CoreModel(backbone=config.backbone, head=config.head, r=config.r,
                              k=config.k, s=config.s, proj_depth=config.proj_depth,
                              num_classes=config.num_classes, lam=config.lam, seed=config.seed,
                              input_size=config.image_size, device=_rank_device(config.device),
                              math=config.gpu_math, threads=config.threads,
                              stochastic_depth=config.stochastic_depth,
                              cpu_backend=resolve_cpu_backend(config.cpu_backend), **kw)
        if config.bn_batch:
            self.core.bn_batch = config.bn_batch
        if config.cudnn_benchmark:
            self.core.cudnn_benchmark()
        if config.cuda_graph:
            self.core.use_cuda_graph()
        # pretrained=PATH: ImageNet backbone (glae.weights); a checkpoint restore skips it
        self.pretrained_report = None
        if config.pretrained and init_pretrained:
            from .weights import load_pretrained

            self.pretrained_report = load_pretrained(self.core, config.pretrained)

    @classmethod
    def from_config(cls, config):
        return cls(config=config)

    def __repr__(self):
        c = self.config
        n = sum(numel for _, _, _, numel, buf, *_ in self.core.param_table() if not buf)
        return (f"glae.Model(backbone={c.backbone!r}, head={c.head!r}, image_size={c.image_size}, "
                f"params={n:,}, stage2_trained={self.stage2_trained})")

    # -- training ------------------------------------------------------------------
    def fit(self, train, val=None, out_dir=None, progress=True, log=print, **overrides):
        """Train both stages (LAE/GLAE): `train`/`val` are glae.train.Dataset objects,
        packed-file paths or (images uint8 (N,S,S,3), ages) tuples. Config overrides may
        be given as keywords (e.g. stage1_epochs=4). Returns the Trainer (its log and
        evaluate() are useful in notebooks)."""
        from .train import Trainer, as_dataset

        if overrides:
            self.config = self.config.replace(**overrides)
        t = Trainer(self, self.config, as_dataset(train), as_dataset(val) if val is not None else None,
                    out_dir=out_dir, progress=progress, log=log)
        return t.fit()

    # -- inference -----------------------------------------------------------------
    def preprocess(self, images, dtype=np.float32):
        """Images (paths, PIL images, uint8 arrays (H,W,3) or (N,H,W,3)) -> the network's
        normalised float32 NHWC batch at config.image_size (centre crop + resize; faces
        are expected to be aligned crops like the training data). A 4-D batch of another
        size, square or not, gets the same centre crop as a list of its images would.
        dtype=np.uint8: the resized pixels before the normalisation (what predict sends
        to the model, which normalises them on its device: a quarter of the memory)."""
        from .data.readers import _to_rgb, load_image

        size = self.config.image_size
        if isinstance(images, np.ndarray) and images.ndim == 4:
            batch = images
            if batch.dtype == np.uint8 and batch.shape[3:] == (3,) and batch.shape[1:3] != (size, size):
                # the loader's resize alone would stretch a non-square batch: crop each
                # image exactly as the list path below does
                batch = np.stack([_C.center_crop_resize(np.ascontiguousarray(im), size)
                                  for im in batch]) if len(batch) else batch
        else:
            if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or _is_pil(images):
                images = [images]
            elif not isinstance(images, (list, tuple)) and not hasattr(images, "__iter__"):
                raise TypeError("images must be a path, a PIL image, a uint8 array (H, W, 3) "
                                f"or (N, H, W, 3), or a list of them; got {type(images).__name__}")
            crops = []
            for im in images:
                if isinstance(im, (str, bytes, os.PathLike)):
                    im = load_image(im)
                elif _is_pil(im):
                    im = _to_rgb(im)  # load_image's conversion: a file and its PIL image agree
                im = np.asarray(im)
                if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                    raise ValueError(f"images must be uint8 RGB (H, W, 3); got {im.dtype} {im.shape}")
                crops.append(_C.center_crop_resize(np.ascontiguousarray(im), size))
            batch = np.stack(crops) if crops else np.zeros((0, 1, 1, 3), np.uint8)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise ValueError(f"a batch must be uint8 (N, H, W, 3); got {batch.dtype} {batch.shape}")
        if len(batch) == 0:
            raise ValueError("no images given")
        return _C.augment_batch(np.ascontiguousarray(batch), np.arange(len(batch), dtype=np.int64),
                                self.config.image_size, 0, 0, dtype=dtype, threads=self.core.threads,
                                **eval_augment(self.config))

    def predict(self, images, route=None, flip=None, return_distribution=False,
                return_head=False, batch_size=64):
        """Ages of the given face images (expected age of the answering head).

        route: "smaller" (Adaptive Routing, default), "bigger", "vanilla", "balanced";
        flip: test-time flip averaging (default on, GLAE V-A). With return_distribution /
        return_head, also the (N, 101) distributions and which head answered (0 vanilla,
        1 balanced). Calls from several threads take turns (one model runs one batch at a
        time; for parallel inference give each thread its own model)."""
        route = route or (self.config.route if self.stage2_trained else "vanilla")
        _check_route(route)
        if route != "vanilla" and not self.stage2_trained:
            raise ValueError(f"route={route!r}: this model's balanced head was never trained "
                             "(stage 2 has not run); use route='vanilla' or fit both stages")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        flip = self.config.flip_test if flip is None else flip
        x = self.preprocess(images, dtype=np.uint8)  # normalised by the model
        norm = self.config.normalization
        ages, probs, heads = [], [], []
        with self._lock:
            for s in range(0, len(x), batch_size):
                xb = np.ascontiguousarray(x[s:s + batch_size])
                if route in _SELECT_ROUTES:
                    r = self._select(xb, route, flip, norm)
                    a, p, h = r["age"], r["prob"], r["choice"]
                else:
                    a, p, h = self.core.predict(xb, route=route, flip=flip, norm=norm)
                ages.append(a), probs.append(p), heads.append(h)
        out = [np.concatenate(ages)]
        if return_distribution:
            out.append(np.concatenate(probs))
        if return_head:
            out.append(np.concatenate(heads))
        return out[0] if len(out) == 1 else tuple(out)

    @property
    def train_ages(self):
        """The training set's ages rounded to whole years (from the histogram the Trainer
        stores; for MAE by shot), or None when unknown."""
        hist = (self.data_info or {}).get("train_age_hist")
        if hist is None:
            return None
        return np.repeat(np.arange(len(hist), dtype=np.float32), hist)

    @property
    def align(self):
        """(align_size, margin) the training faces were aligned with by prepare, or None."""
        a = (self.data_info or {}).get("align")
        return None if a is None else (int(a["size"]), float(a["margin"]))

    def predict_faces(self, image, route=None, flip=None, margin=None, align_size=None, weights=None):
        """Every face in a raw photo (path, PIL image or array): MTCNN finds the faces
        (glae.detect), each is aligned with its 5 landmarks by the same kernel and template
        as glae.data.prepare (align_face at align_size with margin: by default those the
        training data was prepared with, recorded in the checkpoint; 224 and 0.0, prepare's
        defaults, when unknown), then estimated like predict (route, flip). weights: MTCNN folder or glae.detect.MTCNN
        (default: glae.detect.weights_dir()). Returns a list of glae.detect.Face(box,
        landmarks, age, head), most confident face first; [] when no face is found."""
        from . import detect as gd
        from .data.readers import load_image

        known = self.align or (224, 0.0)
        align_size = known[0] if align_size is None else align_size
        margin = known[1] if margin is None else margin
        share = ((self.data_info or {}).get("align") or {}).get("landmarks")
        if share is not None and share < 0.5:
            import warnings

            warnings.warn(
                f"predict_faces: only {share:.0%} of this model's training crops were aligned "
                "with landmarks (prepare centre-cropped the rest), so the faces it aligns here "
                "are framed unlike those it learnt on and its ages may be off; for raw photos "
                "train on data prepared with --detect (docs/mtcnn.md)", stacklevel=2)
        if isinstance(image, (str, bytes, os.PathLike)):
            img = load_image(image)  # EXIF orientation and alpha handling as prepare
        else:
            img = gd.to_rgb(image)
        boxes, scores, landmarks = gd.get_detector(weights).detect(img)
        if len(boxes) == 0:
            return []
        crops = [_C.align_face(img, np.ascontiguousarray(lm, dtype=np.float32), int(align_size), float(margin))
                 for lm in landmarks]
        ages, heads = self.predict(crops, route=route, flip=flip, return_head=True)
        return [gd.Face(boxes[i].copy(), landmarks[i].copy(), float(ages[i]), int(heads[i]))
                for i in range(len(boxes))]

    def evaluate_batch(self, x, route="smaller", flip=True, norm=None):
        """One batch through both heads, with its flip in the same backbone pass: the
        vanilla, balanced and routed ages and the routing choice.

        x: float32 already normalised, or uint8 pixels with norm (default: the model's
        Config.normalization), normalised and flipped on the model's device. Same rules as
        ``core.predict`` (docs/losses.md): routing ("smaller"/"bigger") always needs the
        flipped image (Upsilon compares each head's distributions on the image and its
        flip); ``flip`` only decides whether the answers are averaged over the two. With
        flip=False the routed answer is the chosen head's unflipped age."""
        _check_route(route)
        if isinstance(x, np.ndarray) and x.dtype == np.uint8 and norm is None:
            norm = self.config.normalization
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError("x: the batch holds NaN or infinite values")
        with self._lock:
            if route in _SELECT_ROUTES:
                r = self._select(x, route, bool(flip), norm, head_ages=True)
                return {"vanilla_age": r["vanilla_age"], "balanced_age": r["balanced_age"],
                        "age": r["age"], "head": r["choice"]}
            age, _, choice, heads = self.core.predict(x, route=route, flip=bool(flip), norm=norm,
                                                      head_ages=True)
        return {"vanilla_age": heads[0], "balanced_age": heads[1], "age": age, "head": choice}

    def _select(self, x, route, flip, norm, head_ages=False):
        """A routing criterion of ops/route.h (Config.route_threshold / route_ages): both
        heads' distributions on the batch and on its mirror image (two forward passes),
        then _C.route_select. The caller holds the lock."""
        cfg = self.config
        xf = np.ascontiguousarray(x[:, :, ::-1])
        r, rf = (self.core.forward(v, training=False, norm=norm) for v in (x, xf))
        p = (r["vanilla"], rf["vanilla"], r["balanced"], rf["balanced"])
        a, b = (cfg.route_ages if route == "age" else (cfg.route_threshold, 0.0))
        out = _C.route_select(*p, route, float(a), float(b), flip)
        if head_ages:
            out["vanilla_age"] = _C.route_select(*p, "blend", 0.0, 0.0, flip)["age"]
            out["balanced_age"] = _C.route_select(*p, "blend", 1.0, 0.0, flip)["age"]
        return out

    # -- persistence ---------------------------------------------------------------
    def save(self, path):
        """One safetensors file: both heads, BN statistics, momentum, the config."""
        from .train import save_checkpoint

        save_checkpoint(path, self, self.config, {"stage2_trained": self.stage2_trained})
        return path

    def state_dict(self):
        return self.core.state_dict()

    def load_state_dict(self, state, strict=True):
        return self.core.load_state_dict(state, strict=strict)


def resolve_cpu_backend(name):
    """Config.cpu_backend as the engine takes it: "auto" is oneDNN where glae was built with
    it (faster convolutions, docs/benchmarks.md), else the reference kernels."""
    if name == "auto":
        return "onednn" if _C.HAS_ONEDNN else "reference"
    return name


def _rank_device(device):
    """'cuda' is the local rank's GPU when several ranks run (glae.distributed)."""
    if device != "cuda":
        return device
    from .distributed import place_device

    return place_device(device)


def load(path, device=None, gpu_math=None):
    """A Model from a file written by Model.save or by the trainer (best/last).

    device: "cpu", "cuda" or "cuda:N" (default: where it was trained; a GPU-trained model
    needs device="cpu" on a machine without a GPU). On the CPU the model runs in fp32
    unless gpu_math ("fp32", "tf32", "bf16") says otherwise."""
    from .train import load_checkpoint

    model, cfg, state = load_checkpoint(path, _Restore, device=device, gpu_math=gpu_math)
    model.stage2_trained = bool(state.get("stage2_trained", state.get("stage", 1) == 2
                                          and state.get("epoch", 0) > 0))
    return model


class _Restore:
    """Factory for load_checkpoint: the file holds every tensor, so config.pretrained is
    kept for the record but not read again."""

    @staticmethod
    def from_config(config):
        return Model(config=config, init_pretrained=False)


def eval_augment(config):
    """The loader/augment settings for evaluation: no randomness, the run's normalisation."""
    return {"crop": False, "flip": False, "jitter": False, "randaugment": False,
            "norm": config.normalization}


# the routes answered by _C.route_select (the others by the engine's predict)
_SELECT_ROUTES = ("kl_margin", "confidence", "entropy", "age", "blend")


def _check_route(route):
    from .config import ROUTES

    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}; got {route!r}")


def _is_pil(o):
    return type(o).__module__.startswith("PIL.")
