"""Identity pre-training (LAE sec. 2.3): train the backbone to tell people apart with the
AM-softmax (CosFace) loss, then start age training from it.

    import glae
    run = glae.pretrain("ids.glaepack", out_dir="runs/p1")          # 18 epochs, [7, 14, 16]
    model = glae.Model(pretrained="runs/p1/backbone.safetensors")  # any age config

The numerics are the C engine's (``_C.PretrainModel``: the age model's ResNet backbone,
an embedding layer and the AM-softmax classifier, csrc/nn/pretrain.c); this module picks
the held-out identities, orders the epochs, keeps the log and writes the files:

    out_dir/log.jsonl              one JSON line per epoch (loss, lr, verification)
    out_dir/last.safetensors       the whole model, momentum and state (exact resume)
    out_dir/backbone.safetensors   the backbone alone, torchvision names and layout: what
                                   ``pretrained=`` takes (glae.weights.load_pretrained)

After every epoch the embeddings of held-out identities are compared in pairs (same
person / different people, cosine similarity): the accuracy at the best threshold and,
with at least 1000 different pairs, the true-accept rate at a false-accept rate of 1e-3.
See docs/pretraining.md.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint as ckpt
from ._lib import _C
from .config import BACKBONES, NORMALIZATIONS, TOML_TABLES, is_device

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["IdentityData", "PretrainConfig", "Pretrainer", "pretrain", "verification",
           "verification_pairs"]

BACKBONE_FORMAT = "glae-backbone-1"
CHECKPOINT_FORMAT = "glae-pretrain-1"
FAR = 1e-3  # the false-accept rate of the TAR figure


@dataclass
class PretrainConfig:
    """One identity pre-training run. The defaults are LAE's recipe where the paper gives
    it (SGD, multi-step over 18 epochs, milestones [7, 14, 16], linear lr scaling, weight
    decay 5e-4) and the AM-softmax paper's loss (s = 30, m = 0.35); the rest are common
    face-recognition choices, said in docs/pretraining.md."""

    # model
    backbone: str = "resnet18"
    embed_dim: int = 512
    scale: float = 30.0   # AM-softmax s
    margin: float = 0.35  # AM-softmax m (the additive cosine margin, not prepare's crop margin)
    # data
    image_size: int = 112  # the MS-Celeb derivatives' crop size; the weights fit any size
    normalization: str = "glae"
    augment: dict = field(default_factory=lambda: {
        "crop": True, "flip": True, "color_jitter": False, "randaugment": False})
    # optimisation
    batch_size: int = 256
    epochs: int = 18
    milestones: tuple = (7, 14, 16)
    gamma: float = 0.1
    base_lr: float = 0.1
    linear_scaling: bool = True  # lr = base_lr * batch_size / 256
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    wd_exclude_bn_bias: bool = False
    # verification on held-out identities
    val_identities: float = 0.02  # a fraction (< 1) or a count (>= 1) of the identities
    val_pairs: int = 3000         # at most this many same-person and different-person pairs
    # bookkeeping
    seed: int = 0
    threads: int = 0         # 0: all cores
    loader_threads: int = 0  # 0: min(cores, 8)
    device: str = "cpu"
    gpu_math: str = "fp32"

    def __post_init__(self):
        self.milestones = tuple(self.milestones)
        self.validate()

    def validate(self) -> "PretrainConfig":
        def number(name, lo=0.0, strict=False, integer=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v!r}")
            if v < lo or (strict and v == lo):
                raise ValueError(f"{name} must be {'>' if strict else '>='} {lo:g}; got {v!r}")
            if integer and int(v) != v:
                raise ValueError(f"{name} must be an integer; got {v!r}")

        resnets = tuple(b for b in BACKBONES if b.startswith("resnet"))  # what pretraining builds
        if self.backbone not in resnets:
            raise ValueError(f"backbone must be one of {', '.join(resnets)} (identity pre-training "
                             f"builds ResNets); got {self.backbone!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; "
                             f"got {self.normalization!r}")
        if self.gpu_math not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"gpu_math must be fp32, tf32 or bf16; got {self.gpu_math!r}")
        if not is_device(self.device):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}")
        for name in ("embed_dim", "image_size", "batch_size", "val_pairs"):
            number(name, 1, integer=True)
        for name in ("epochs", "seed", "threads", "loader_threads"):
            number(name, 0, integer=True)
        number("scale", 0.0, strict=True)
        number("margin", 0.0)
        if self.margin >= 1.0:
            # the op refuses m >= 2; below 2 and from 1 up the true class's margined cosine
            # is <= 0, so it cannot beat a class orthogonal to the face: no useful minimum
            raise ValueError(f"margin must be < 1 (the AM-softmax paper uses 0.35; from 1 up "
                             f"the true class's cosine minus the margin cannot beat a class "
                             f"orthogonal to the face and the loss is degenerate); got {self.margin!r}")
        for name in ("base_lr", "momentum", "weight_decay"):
            number(name, 0.0)
        number("gamma", 0.0, strict=True)
        number("val_identities", 0.0)
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (the embedding's batch norm needs more "
                             "than one value per channel)")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        ms = list(self.milestones)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ms) or ms != sorted(ms):
            raise ValueError(f"milestones must be increasing epochs >= 1; got {self.milestones!r}")
        if not isinstance(self.augment, dict) or set(self.augment) - {
                "crop", "flip", "color_jitter", "randaugment", "crop_scale", "randaugment_n",
                "randaugment_m"}:
            raise ValueError(f"augment: unknown options in {self.augment!r}")
        for name in ("linear_scaling", "nesterov", "wd_exclude_bn_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        return self

    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256 if self.linear_scaling else self.base_lr

    def replace(self, **changes) -> "PretrainConfig":
        _check_keys(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a table of fields; got {type(d).__name__}")
        _check_keys(d)
        return cls(**d)

    @classmethod
    def from_toml(cls, path) -> "PretrainConfig":
        """A TOML file of PretrainConfig fields, flat or under the tables [model], [data],
        [optim], [eval], [run] (only for readability), like glae.Config.from_toml."""
        with open(path, "rb") as f:
            try:
                raw = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: not valid TOML: {e}") from None
        flat = {}
        for key, value in raw.items():
            items = value.items() if isinstance(value, dict) and key in TOML_TABLES else [(key, value)]
            for k, v in items:
                if k in flat:
                    raise ValueError(f"{path}: {k!r} is given twice")
                flat[k] = v
        try:
            return cls.from_dict(flat)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None


def _check_keys(keys):
    from .config import check_fields

    check_fields(PretrainConfig, keys, "pre-training config")


# ---- data ---------------------------------------------------------------------------------


class IdentityData:
    """Identity-labelled crops for pre-training: `images` uint8 (M, S, S, 3) (a packed
    file's whole memmap: nothing is gathered), `positions` (N,) int64 into it and
    `identities` (N,) int64 >= 0 of those images. Images whose identity is unknown (-1 in
    the packed file) are left out."""

    def __init__(self, images, identities, positions=None, source=""):
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
            raise ValueError("images must be square uint8 crops (N, S, S, 3)")
        if not images.flags.c_contiguous:
            images = np.ascontiguousarray(images)
        ids = np.asarray(identities)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"identities must be integers; got {ids.dtype}")
        pos = np.arange(len(images), dtype=np.int64) if positions is None else \
            np.asarray(positions, dtype=np.int64)
        ids = ids.astype(np.int64).reshape(-1)
        if ids.shape != pos.shape:
            raise ValueError(f"{len(ids)} identities for {len(pos)} images")
        if pos.size and (pos.min() < 0 or pos.max() >= len(images)):
            raise ValueError("positions outside the images")
        known = ids >= 0
        self.images, self.positions, self.identities = images, pos[known], ids[known]
        self.n_unknown = int((~known).sum())
        self.source = source

    @classmethod
    def from_any(cls, data):
        """From an IdentityData, a packed-file path, a PackedDataset (a subset keeps the
        whole file mapped and indexes into it) or an (images, identities) tuple."""
        if isinstance(data, IdentityData):
            return data
        if isinstance(data, (str, os.PathLike)):
            from .data import PackedDataset

            data = PackedDataset(data)
        if hasattr(data, "base_images") and hasattr(data, "identities"):
            pos = None if data.indices is None else data.indices
            return cls(data.base_images, data.identities, pos, source=getattr(data, "path", ""))
        if isinstance(data, tuple) and len(data) == 2:
            return cls(np.asarray(data[0]), data[1], source="arrays")
        raise TypeError("identity data must be a packed-file path, a PackedDataset, an "
                        "IdentityData or an (images, identities) tuple")

    def __len__(self):
        return len(self.positions)

    def subset(self, mask) -> "IdentityData":
        sub = object.__new__(IdentityData)
        sub.images, sub.source, sub.n_unknown = self.images, self.source, 0
        sub.positions, sub.identities = self.positions[mask], self.identities[mask]
        return sub


def split_identities(data: IdentityData, val_identities, seed):
    """(train mask, held-out mask) over data's images: `val_identities` (a fraction < 1 or
    a count >= 1) of the identities that have at least two images are held out, drawn
    with `seed`; every other image trains."""
    ids, counts = np.unique(data.identities, return_counts=True)
    eligible = ids[counts >= 2]
    k = int(round(val_identities * len(eligible))) if val_identities < 1 else int(val_identities)
    k = min(k, len(eligible))
    rng = np.random.default_rng([int(seed), 0x1D])
    held = rng.choice(eligible, size=k, replace=False) if k else np.zeros(0, np.int64)
    val = np.isin(data.identities, held)
    return ~val, val


def verification_pairs(identities, n_pairs, seed):
    """(i, j, same): up to n_pairs pairs of images of the same identity (uniform over all
    such pairs) and n_pairs pairs of images of different identities (uniform over the
    images), indices into `identities`, drawn with `seed`."""
    ids = np.asarray(identities, np.int64)
    rng = np.random.default_rng([int(seed), 0xFA1])
    uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    members = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    w = counts * (counts - 1) / 2.0
    total_same = int(w.sum())
    same_i, same_j = [], []
    if total_same > 0:
        if total_same <= n_pairs:  # every pair
            for u in np.flatnonzero(counts >= 2):
                m = members[starts[u]:starts[u] + counts[u]]
                a, b = np.triu_indices(len(m), 1)
                same_i.append(m[a])
                same_j.append(m[b])
            si, sj = np.concatenate(same_i), np.concatenate(same_j)
        else:
            seen = set()
            p = w / w.sum()
            while len(seen) < n_pairs:
                u = rng.choice(len(uniq), size=n_pairs, p=p)
                a = rng.integers(0, counts[u])
                b = rng.integers(0, counts[u] - 1)
                b = b + (b >= a)
                for uu, aa, bb in zip(u, a, b):
                    x, y = members[starts[uu] + aa], members[starts[uu] + bb]
                    seen.add((min(x, y), max(x, y)))
                    if len(seen) == n_pairs:
                        break
            pairs = np.array(sorted(seen), np.int64)
            si, sj = pairs[:, 0], pairs[:, 1]
    else:
        si = sj = np.zeros(0, np.int64)
    n_diff = n_pairs if len(uniq) >= 2 else 0
    di, dj = np.zeros(0, np.int64), np.zeros(0, np.int64)
    while len(di) < n_diff:
        a = rng.integers(0, len(ids), size=2 * n_diff)
        b = rng.integers(0, len(ids), size=2 * n_diff)
        keep = ids[a] != ids[b]
        di = np.concatenate([di, a[keep]])[:n_diff]
        dj = np.concatenate([dj, b[keep]])[:n_diff]
    same = np.concatenate([np.ones(len(si), bool), np.zeros(len(di), bool)])
    return np.concatenate([si, di]), np.concatenate([sj, dj]), same


def verification(scores, same, far=FAR):
    """Verification figures of similarity scores (higher: more alike) of pairs whose truth
    is `same` (bool), computed in C (csrc/metrics/verify.c): {"accuracy": at the best
    threshold (pairs above it called the same person), "threshold", "tar_at_far": the
    true-accept rate at false-accept rate `far` (None with fewer than 1/far different
    pairs), "mean_same", "mean_diff", "n_same", "n_diff", "far"}. The accuracy is the mean
    of the accuracies on same and on different pairs (the plain accuracy when there are as
    many of each), so chance is 0.5 whatever the counts. The threshold is chosen on the
    same pairs (an optimistic figure, like a verification benchmark's without its 10 folds;
    it is for watching the training, not a benchmark). None where a figure is undefined."""
    return _C.verification(np.ascontiguousarray(scores, np.float32),
                           np.ascontiguousarray(same, bool), far)


def _augment_options(cfg: PretrainConfig, train=True):
    if not train:
        return {"crop": False, "flip": False, "jitter": False, "randaugment": False,
                "norm": cfg.normalization}
    a = cfg.augment
    out = {"crop": bool(a.get("crop", True)), "flip": 0.5 if a.get("flip", True) else 0.0,
           "jitter": bool(a.get("color_jitter", False)),
           "randaugment": bool(a.get("randaugment", False)), "norm": cfg.normalization}
    if "crop_scale" in a:
        out["scale"] = tuple(a["crop_scale"])
    if "randaugment_n" in a:
        out["ra_n"] = int(a["randaugment_n"])
    if "randaugment_m" in a:
        out["ra_m"] = int(a["randaugment_m"])
    return out


# ---- the run ----------------------------------------------------------------------------


class Pretrainer:
    """Pre-trains a _C.PretrainModel on identity data; `fit` runs the epochs.

    train: identity data (IdentityData.from_any). val: identity data for the verification
    figure; None holds out config.val_identities of the training identities instead (their
    images then never train). State (epoch, batch, step) is enough to resume exactly: the
    order and the augmentations are pure functions of (seed, epoch, position)."""

    def __init__(self, train, config: PretrainConfig | None = None, val=None, out_dir=None,
                 progress=True, log=print):
        cfg = config or PretrainConfig()
        cfg.validate()
        from .distributed import world

        if world().size > 1:  # N copies would each train the whole run into one out_dir
            raise ValueError("identity pre-training is not data-parallel (yet): run it in one "
                             "process, not under mpirun / srun / torchrun "
                             "(docs/distributed.md)")
        self.cfg = cfg
        self.log = log or (lambda *a, **k: None)
        self.progress = progress
        self.out_dir = out_dir
        data = IdentityData.from_any(train)
        if len(data) == 0:
            raise ValueError(f"{data.source or 'the training data'}: no image has an identity "
                             "label (prepare identity data with the identities:FOLDER or "
                             "identities-csv:FILE source)")
        if val is None:
            tr, va = split_identities(data, cfg.val_identities, cfg.seed)
            self.train, self.val = data.subset(tr), data.subset(va)
        else:
            self.train, self.val = data, IdentityData.from_any(val)
        if data.n_unknown:
            self.log(f"note: {data.n_unknown} images without an identity are left out")
        # the classifier's classes: the training identities, numbered 0..K-1
        uniq, self.labels = np.unique(self.train.identities, return_inverse=True)
        self.labels = self.labels.astype(np.int32)
        self.num_ids = len(uniq)
        if self.num_ids < 2:
            raise ValueError(f"pre-training needs at least 2 training identities; got "
                             f"{self.num_ids} ({len(self.train)} images)")
        if cfg.batch_size > len(self.train):
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set "
                             f"({len(self.train)} images): no full batch to train on")
        crop = self.train.images.shape[1]
        if crop < cfg.image_size:
            self.log(f"note: the crops are {crop} px and are upsampled to image_size "
                     f"{cfg.image_size}")
        self.pairs = None
        if len(self.val):
            i, j, same = verification_pairs(self.val.identities, cfg.val_pairs, cfg.seed)
            if same.any() and (~same).any():
                self.pairs = (i, j, same)
        if self.pairs is None:
            self.log("note: no verification pairs (too few held-out identities with two or "
                     "more images): the log has the loss only")
        self._validate_schedule()
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        if cfg.threads:
            _C.set_num_threads(cfg.threads)
        self.model = _C.PretrainModel(
            self.num_ids, backbone=cfg.backbone, embed_dim=cfg.embed_dim, s=cfg.scale,
            m=cfg.margin, seed=cfg.seed, device=cfg.device, math=cfg.gpu_math)
        self.state = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0,
                      "n_train": len(self.train), "num_ids": self.num_ids}
        self.history = []

    def _validate_schedule(self):
        _C.multistep(0, self.cfg.lr(), list(self.cfg.milestones), self.cfg.gamma)

    def batches_per_epoch(self):
        return len(self.train) // self.cfg.batch_size

    def lr(self, epoch):
        return _C.multistep(epoch, self.cfg.lr(), list(self.cfg.milestones), self.cfg.gamma)

    def epoch_order(self, epoch):
        """This epoch's permutation of the training images (a pure function of the seed)."""
        return _C.sample_instance_balanced(len(self.train), self.cfg.seed, epoch)

    # -- embeddings and the verification figure ----------------------------------------
    def embed(self, data: IdentityData | None = None, which=None, batch=64):
        """Embeddings (n, d) of data's images `which` (default: the held-out ones, all):
        the evaluation crop (no augmentation), batch norm in eval mode, not normalised
        (compare them by cosine)."""
        data = self.val if data is None else data
        pos = data.positions if which is None else data.positions[which]
        out = []
        for s in range(0, len(pos), batch):
            x = _C.augment_batch(data.images, np.ascontiguousarray(pos[s:s + batch]),
                                 self.cfg.image_size, self.cfg.seed, 0, dtype="uint8",
                                 **_augment_options(self.cfg, train=False))
            out.append(self.model.embed(x, norm=self.cfg.normalization))
        return np.concatenate(out) if out else np.zeros((0, self.cfg.embed_dim), np.float32)

    def verify(self):
        """The verification figure (verification()) on the held-out pairs, or None."""
        if self.pairs is None:
            return None
        i, j, same = self.pairs
        used, inv = np.unique(np.concatenate([i, j]), return_inverse=True)
        e = self.embed(self.val, used)
        scores = _C.pair_cosines(e, inv[:len(i)].astype(np.int64), inv[len(i):].astype(np.int64))
        return verification(scores, same)

    # -- training --------------------------------------------------------------------
    def fit(self, max_steps=None):
        """Run (or continue) the epochs. max_steps: stop after that many optimizer steps in
        this call (last.safetensors is written), for exact-resume tests."""
        from .train import _progress

        if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) != max_steps
                                      or max_steps < 1):
            raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}")
        cfg, st, m = self.cfg, self.state, self.model
        norm = cfg.normalization
        nb = self.batches_per_epoch()
        B = cfg.batch_size
        if self.out_dir and st["epoch"] == 0 and st["batch"] == 0 and st["step"] == 0:
            log_path = os.path.join(self.out_dir, "log.jsonl")
            if os.path.exists(log_path):
                os.remove(log_path)  # a fresh run: no lines of an earlier one
        if st["epoch"] == 0 and st["batch"] == 0 and st["step"] == 0 and self.pairs is not None:
            entry = {"epoch": 0, "verification": self.verify()}  # the start: near chance
            self.history.append(entry)
            self._write_line(entry)
        done = 0
        while st["epoch"] < cfg.epochs:
            epoch = st["epoch"]
            perm = self.epoch_order(epoch)[:nb * B]
            order = np.ascontiguousarray(self.train.positions[perm])
            labels = self.labels[perm]
            if st["batch"] == 0:
                st["loss_sum"], st["loss_count"] = 0.0, 0
            t0 = time.perf_counter()
            skip = st["batch"]
            loader = _C.Loader(self.train.images, None, None, order, B, cfg.image_size,
                               seed=cfg.seed, epoch=epoch, threads=self._loader_threads(),
                               drop_last=True, dtype="uint8", **_augment_options(cfg))
            batches = iter(loader)
            for _ in range(skip):  # a resumed epoch: the batches already done
                next(batches)
            lr = self.lr(epoch)
            stop = False
            for b, (x, _, _) in _progress(enumerate(batches, skip), nb - skip,
                                          f"pretrain epoch {epoch + 1}/{cfg.epochs}",
                                          self.progress):
                y = np.ascontiguousarray(labels[b * B:(b + 1) * B])
                m.zero_grad()
                loss = m.train_step(x, y, norm=norm)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"pre-training diverged in epoch {epoch + 1}, step {st['step']} (loss "
                        f"{loss}): lower the learning rate (now {lr:g}; base_lr {cfg.base_lr:g})")
                m.sgd_step(lr, cfg.momentum, 0.0, cfg.weight_decay, cfg.nesterov,
                           st["step"] == 0, cfg.wd_exclude_bn_bias)
                st["step"] += 1
                st["batch"] = b + 1
                st["loss_sum"] += loss
                st["loss_count"] += 1
                done += 1
                if max_steps is not None and done >= max_steps:
                    stop = True
                    break
            if stop and st["batch"] < nb:
                self.save()
                return self
            st["epoch"], st["batch"] = epoch + 1, 0
            entry = {"epoch": epoch + 1, "lr": lr,
                     "loss": st["loss_sum"] / max(st["loss_count"], 1),
                     "seconds": round(time.perf_counter() - t0, 3),
                     "images_per_s": round((nb - skip) * B / max(time.perf_counter() - t0, 1e-9), 1)}
            entry["verification"] = self.verify()
            self.history.append(entry)
            self.save()  # backbone.safetensors records this epoch's figure
            self._write_line(entry)
            if stop:
                return self
        return self

    def _loader_threads(self):
        return self.cfg.loader_threads or min(os.cpu_count() or 1, 8)

    def _write_line(self, entry):
        if self.out_dir:
            with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(entry) + "\n")
        self.log(_summary(entry, self.cfg.epochs))

    # -- files ---------------------------------------------------------------------
    def backbone_state(self):
        """{name: array} of the backbone (torchvision names and layout, BN statistics)."""
        return {name: self.model.get(name) for name, _, _, _, _, group, _ in
                self.model.param_table() if group == 0}

    def save_backbone(self, path):
        """The backbone alone, as a safetensors file that `pretrained=` loads."""
        meta = {"format": BACKBONE_FORMAT, "arch": self.cfg.backbone,
                "source": "glae identity pre-training (AM-softmax)",
                "epoch": self.state["epoch"], "config": self.cfg.to_dict(),
                "verification": self.history[-1].get("verification") if self.history else None}
        ckpt.save(path, self.backbone_state(), meta)
        return path

    def save(self):
        """last.safetensors (everything, for resume) and backbone.safetensors in out_dir."""
        if not self.out_dir:
            return None
        m = self.model
        table = m.param_table()
        tensors = {name: m.get(name) for name, *_ in table}
        mom = m.momentum
        tensors["optimizer.momentum"] = np.concatenate(
            [mom[off:off + n] for _, _, off, n, buf, *_ in table if not buf])
        meta = {"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(),
                "state": dict(self.state)}
        last = os.path.join(self.out_dir, "last.safetensors")
        ckpt.save(last, tensors, meta)
        self.save_backbone(os.path.join(self.out_dir, "backbone.safetensors"))
        return last

    @classmethod
    def resume(cls, path, train, val=None, out_dir=None, device=None, **kw):
        """A Pretrainer continuing the run saved in `path` (its last.safetensors) exactly,
        on the same training data (its size and identity count are checked). device: go on
        elsewhere (then the same equations, not the same bits)."""
        tensors, meta = ckpt.load(path)
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
            raise ckpt.CheckpointError(f"{path}: not a glae pre-training checkpoint (a "
                                       "last.safetensors of `glae pretrain`)")
        try:
            cfg = PretrainConfig.from_dict(meta["config"])
            state = dict(meta["state"])
            if device is not None:
                cfg = cfg.replace(device=device)
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"{path}: unusable config or state: {e}") from None
        from .train import DeviceUnavailableError, cuda_unusable

        why = cfg.device != "cpu" and cuda_unusable()
        if why:
            raise DeviceUnavailableError(f"{path}: the run is on {cfg.device!r}, but this machine "
                                         f"cannot run CUDA ({why}); resume with device='cpu' "
                                         "(--device cpu)")
        t = cls(train, cfg, val=val, out_dir=out_dir, **kw)
        if state.get("n_train") != len(t.train) or state.get("num_ids") != t.num_ids:
            raise ValueError(f"{path} was trained on {state.get('n_train')} images of "
                             f"{state.get('num_ids')} identities; the data given has "
                             f"{len(t.train)} of {t.num_ids}: resume needs the same data")
        m = t.model
        table = m.param_table()
        for name, *_ in table:
            if name not in tensors:
                raise ckpt.CheckpointError(f"{path}: tensor {name!r} missing")
            m.set(name, tensors[name])
        rows = [(off, n) for _, _, off, n, buf, *_ in table if not buf]
        mom = tensors.get("optimizer.momentum")
        if mom is None or mom.shape != (sum(n for _, n in rows),):
            raise ckpt.CheckpointError(f"{path}: optimizer.momentum missing or of the wrong size")
        flat, p = np.zeros(m.momentum.size, np.float32), 0
        for off, n in rows:
            flat[off:off + n] = mom[p:p + n]
            p += n
        m.write_flat("momentum", flat)
        t.state.update(state)
        return t


def _summary(entry, epochs):
    parts = [f"pretrain epoch {entry['epoch']}/{epochs}"]
    if "loss" in entry:
        parts.append(f"loss {entry['loss']:.3f}")
        parts.append(f"lr {entry['lr']:.4g}")
        parts.append(f"{entry['images_per_s']:.0f} img/s")
    v = entry.get("verification")
    if v and v["accuracy"] is not None:
        parts.append(f"verification acc {v['accuracy']:.3f} ({v['n_same']}+{v['n_diff']} pairs, "
                     f"cos same {v['mean_same']:.2f} / diff {v['mean_diff']:.2f})")
        if v["tar_at_far"] is not None:
            parts.append(f"TAR@FAR={v['far']:g} {v['tar_at_far']:.3f}")
    return " | ".join(parts)


def pretrain(train, out_dir=None, val=None, config=None, progress=True, log=print, resume=None,
             **fields):
    """Identity pre-training: train the backbone on identity-labelled faces with the
    AM-softmax loss (LAE sec. 2.3). train: a packed file prepared from an "identities:" or
    "identities-csv:" source (or a PackedDataset, or (images, identities)); out_dir gets
    log.jsonl, last.safetensors and backbone.safetensors (the file to give age training
    as pretrained=). val: identity data for the verification figure (default: hold out
    config.val_identities of the training identities). config: a PretrainConfig; keywords
    change its fields. resume: a last.safetensors to continue exactly. Returns the
    Pretrainer (its history holds the log entries)."""
    if resume is not None:
        t = Pretrainer.resume(resume, train, val=val, out_dir=out_dir, progress=progress, log=log)
        return t.fit()
    cfg = config or PretrainConfig()
    if fields:
        cfg = cfg.replace(**fields)
    return Pretrainer(train, cfg, val=val, out_dir=out_dir, progress=progress, log=log).fit()
