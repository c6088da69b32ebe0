"""The two-stage trainer (LAE section 2.4, GLAE Algorithm 1).

Stage 1 trains the whole network with instance-balanced sampling; stage 2 freezes the
backbone (BN statistics included), copies the head into the balanced head and retrains it
with class-balanced sampling. Every step is a few calls into the C engine: augment the
batch, forward + backward, fused SGD. This file only orders those calls, keeps the log
and writes checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import checkpoint as ckpt
from . import distributed as dist
from . import metrics as M
from ._lib import _C
from .config import Config

G_BACKBONE, G_HEAD, G_BALANCED = 0, 1, 2


@dataclass
class Dataset:
    """Aligned uint8 crops (N, S, S, 3) (an array or a memmap), ages, optional sigmas;
    align: {"size", "margin"} that prepare aligned the faces with (None: unknown), kept in
    the checkpoints so raw photos are later aligned the same way. verify: None, or a
    callable(indices) that checks those images' bytes (a packed file opened with
    verify="lazy": PackedDataset.verify_images); the Trainer and predict_dataset call it on
    every batch before using it, so damaged pixels never reach a step unnoticed."""

    images: np.ndarray
    ages: np.ndarray
    sigmas: np.ndarray | None = None
    align: dict | None = None
    verify: object = None

    def __post_init__(self):
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 \
                or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError("images must be a uint8 array (N, S, S, 3)")
        if not self.images.flags.c_contiguous:  # a strided view; memmaps are contiguous
            self.images = np.ascontiguousarray(self.images)
        if self.images.shape[1] != self.images.shape[2]:
            # evaluation resizes without cropping: a non-square set would be stretched
            raise ValueError(f"images must be square crops (N, S, S, 3); got {self.images.shape}")
        self.ages = np.ascontiguousarray(self.ages, dtype=np.float32)
        if self.ages.shape != (len(self.images),):
            raise ValueError(f"ages must have shape ({len(self.images)},); got {self.ages.shape}")
        if not np.all(np.isfinite(self.ages)) or self.ages.min(initial=0) < 0:
            raise ValueError("ages must be finite and >= 0")
        if self.sigmas is not None:
            # NaN = no sigma for that image (packed files store NaN where the data set gives
            # none): all NaN -> None; some NaN -> Config.sigma for those in training
            self.sigmas = np.ascontiguousarray(self.sigmas, dtype=np.float32)
            if self.sigmas.shape != self.ages.shape:
                raise ValueError(f"sigmas must have shape {self.ages.shape}; got {self.sigmas.shape}")
            given = ~np.isnan(self.sigmas)
            if not given.any():
                self.sigmas = None
            elif not np.all(np.isfinite(self.sigmas[given]) & (self.sigmas[given] > 0)):
                raise ValueError("sigmas must be positive and finite (NaN: none for that image)")

    def __len__(self):
        return len(self.images)

    @classmethod
    def from_packed(cls, packed):
        """A whole packed file stays memory-mapped; a PackedDataset.subset(...) is gathered
        into memory (the C loader indexes one contiguous array), so for very large data
        sets prepare one packed file per split instead."""
        images = packed.images
        verify = getattr(packed, "verify_images", None)
        if not isinstance(images, np.ndarray):
            if verify is not None:  # a subset is gathered now: check what is gathered
                verify(np.arange(len(packed)))
                verify = None
            images = np.ascontiguousarray(np.asarray(images), dtype=np.uint8)
        size, margin = getattr(packed, "align_size", None), getattr(packed, "align_margin", None)
        align = None if size is None else {"size": int(size), "margin": float(margin)}
        n_lm = (getattr(packed, "meta", None) or {}).get("n_aligned_with_landmarks")
        if align is not None and n_lm is not None:
            # the share prepare aligned with landmarks (the rest were centre-cropped): a
            # model trained on centre crops frames faces unlike predict_faces' alignment
            n_file = len(getattr(packed, "base_images", images))
            align["landmarks"] = min(1.0, float(n_lm) / max(n_file, 1))
        return cls(images, packed.ages, packed.sigmas, align, verify)


def as_dataset(data):
    """A Dataset from a Dataset, a PackedDataset, a packed-file path or (images, ages[, sigmas])."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        from .data import PackedDataset

        data = PackedDataset(data)
    if hasattr(data, "images") and hasattr(data, "ages"):
        return Dataset.from_packed(data)
    if isinstance(data, tuple) and len(data) in (2, 3):
        return Dataset(*data)
    raise TypeError("data must be a glae.train.Dataset, a PackedDataset, a packed-file path "
                    "or an (images, ages[, sigmas]) tuple")


def predict_dataset(model, dataset, batch_size=64, world=None):
    """The vanilla, balanced and routed ages and the routing choice for every image of a
    Dataset: the deterministic evaluation resize and normalisation (no augmentation), the
    model's route and flip_test. Shared by the Trainer's evaluation and `glae eval`.
    world: a distributed.World of several ranks: each predicts its contiguous share of
    the set and every rank gets all the answers (the model must be the same on all)."""
    from .model import eval_augment

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    cfg = model.config
    aug = eval_augment(cfg)
    outs = {"vanilla": [], "balanced": [], "routed": [], "choice": []}
    first, last = world.shard(len(dataset)) if world is not None and world.size > 1 \
        else (0, len(dataset))
    for start in range(first, last, batch_size):
        idx = np.arange(start, min(start + batch_size, last), dtype=np.int64)
        if getattr(dataset, "verify", None) is not None:
            dataset.verify(idx)
        x = _C.augment_batch(dataset.images, idx, cfg.image_size, cfg.seed, 0, dtype="uint8",
                             threads=model.core.threads, **aug)
        r = model.evaluate_batch(x, route=cfg.route, flip=cfg.flip_test, norm=cfg.normalization)
        outs["vanilla"].append(r["vanilla_age"])
        outs["balanced"].append(r["balanced_age"])
        outs["routed"].append(r["age"])
        outs["choice"].append(r["head"])
    types = {"vanilla": np.float32, "balanced": np.float32, "routed": np.float32,
             "choice": np.int32}
    outs = {k: np.concatenate(v) if v else np.zeros(0, types[k]) for k, v in outs.items()}
    if first == 0 and last == len(dataset):
        return outs
    whole = world.gather_slices(len(dataset), first, outs)
    return {k: whole[k].astype(outs[k].dtype) for k in outs}


def report_dataset(dataset, pred, both_heads, train_ages=None):
    """glae.metrics.report of predict_dataset's answers: the vanilla head, and with
    both_heads (after stage 2) the balanced head and the routed answer. train_ages: the
    histogram MAE by shot needs (None: left out)."""
    # epsilon-error only where every image has its sigma (Chalearn)
    sigma = dataset.sigmas if dataset.sigmas is not None and \
        not np.isnan(dataset.sigmas).any() else None
    kw = {"sigma": sigma, "train_ages": train_ages}
    rep = {"vanilla": M.report(dataset.ages, pred["vanilla"], **kw)}
    if both_heads:
        rep["balanced"] = M.report(dataset.ages, pred["balanced"], **kw)
        rep["routed"] = M.report(dataset.ages, pred["routed"], choice=pred["choice"], **kw)
    return rep


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        return iterable
    if not _bar_wanted(tqdm, sys.stderr):
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _bar_wanted(tqdm_class, stream):
    """Jupyter's widget bar always; a terminal bar only on a terminal: on a stderr that is
    a file or a pipe (a log, CI) it would write a carriage-returned update per step."""
    try:
        from tqdm.notebook import tqdm as notebook_tqdm
        if issubclass(tqdm_class, notebook_tqdm):  # what tqdm.auto picks in Jupyter
            return True
    except ImportError:
        pass
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class Trainer:
    """Runs stage 1 then stage 2 of one Config on a training and a validation Dataset.

    State (stage, epoch, batch within the epoch, optimizer step) is enough to resume
    exactly: the samplers and augmentations are pure functions of (seed, epoch, sample).
    """

    def __init__(self, model, config: Config, train: Dataset, val: Dataset | None = None,
                 out_dir: str | None = None, progress: bool = True, log=print, world=None):
        config.validate()
        # data parallelism (docs/distributed.md): the launcher's ranks unless given
        self.world = world if world is not None else dist.world()
        W = self.world.size
        if W > 1:
            if config.batch_size % W:
                raise ValueError(f"batch_size {config.batch_size} (the global batch) must be a "
                                 f"multiple of the {W} ranks")
            per = config.batch_size // W
            if per < 2 and config.stage1_epochs + config.stage2_epochs > 0:
                raise ValueError(f"batch_size {config.batch_size} over {W} ranks leaves {per} "
                                 "image per rank: batch norm needs at least 2")
            if config.bn_batch and config.bn_batch < per and per % config.bn_batch == 1:
                raise ValueError(f"bn_batch {config.bn_batch} splits each rank's {per} images "
                                 "into groups with a last group of 1 image")
        if len(train) == 0:
            raise ValueError("the training set is empty")
        if config.batch_size > len(train):
            raise ValueError(f"batch_size {config.batch_size} is larger than the training set "
                             f"({len(train)} images): no full batch to train on")
        if config.batch_size < 2 and config.stage1_epochs + config.stage2_epochs > 0:
            raise ValueError("batch_size must be >= 2 to train (batch normalisation needs "
                             "more than one value per channel)")
        top = config.num_classes - 1  # label_distribution's last age
        for name, d in (("training", train), ("validation", val)):
            if d is not None and len(d) and d.ages.max() > top:
                i = int(np.argmax(d.ages > top))
                raise ValueError(f"{name} set: ages[{i}] = {d.ages[i]:g} is above {top}, the "
                                 f"oldest age of a model with num_classes={config.num_classes}")
        if (config.stage2_loss == "lae" and config.stage2_epochs > 0
                and (val is None or len(val) == 0)):
            raise ValueError("stage2_loss='lae' needs a validation set (its loss uses the "
                             "stage-1 validation MAE)")
        self.model = model  # the public glae.Model; the engine is model.core
        self.core = model.core
        self.cfg = config
        self.train = train
        self.val = val if val is not None and len(val) else None  # empty: none
        # rank 0 alone writes files, logs and progress
        self.out_dir = out_dir if self.world.is_main else None
        self.progress = progress and self.world.is_main
        self.log = (log if self.world.is_main else None) or (lambda *a, **k: None)
        crop = train.images.shape[1]
        if crop < config.image_size:
            self.log(f"note: the training crops are {crop} px and are upsampled to image_size "
                     f"{config.image_size} (prepare them at that size, or set image_size={crop})")
        self._pending = None  # (stage, step, lr) of the queued step whose losses are unread
        self._skipped = False  # the last step() left its batch out (on_nonfinite="skip")
        # everything besides the model's tensors and momentum that an exact resume needs;
        # loss_sums/loss_count: the running sums of the current epoch (for its log line)
        # stage1_val_epoch: the stage-1 epoch whose model gave stage1_val_mae
        self.state = {"stage": 1, "epoch": 0, "batch": 0, "step": 0, "stage1_val_mae": None,
                      "stage1_val_epoch": None, "best": None, "loss_sums": {}, "loss_count": 0,
                      "n_train": len(train)}
        self.labels = M.age_class(train.ages, config.num_classes)  # the metrics' rule
        # what inference needs to know of the training data, saved with every checkpoint:
        # the age histogram (MAE by shot) and the alignment of the crops (raw photos)
        model.data_info = {"train_age_hist": np.bincount(self.labels).tolist(),
                           "align": train.align}
        self.sigmas = np.full(len(train), config.sigma, np.float32)
        if config.sigma_from_data and train.sigmas is not None:
            self.sigmas = np.where(np.isnan(train.sigmas), self.sigmas, train.sigmas)
        self._no_decay = self._no_decay_mask() if config.wd_exclude_bn_bias else None
        self._check_schedules()
        if self.out_dir:
            os.makedirs(self.out_dir, exist_ok=True)
        if config.threads:  # the model's own count: other threads' work keeps theirs
            self.core.threads = config.threads

    def _check_schedules(self):
        """Evaluate the lr schedule at every step of both stages now, so that a schedule
        the run cannot follow (e.g. a OneCycle phase of zero length) fails before any
        work, not hours into it."""
        for stage in (1, 2):
            total = self.total_steps(stage)
            try:
                if self.cfg.schedule == "onecycle" and total > 0:
                    _C.onecycle_steps(np.arange(total, dtype=np.int64), total, self.cfg.lr(stage),
                                      self.cfg.pct_start, self.cfg.div_factor,
                                      self.cfg.final_div_factor)
                elif total > 0:
                    self.lr_momentum(stage, 0)
            except ValueError as e:
                raise ValueError(f"stage {stage}: the {self.cfg.schedule} schedule cannot run "
                                 f"{total} steps with this config: {e}") from None

    # -- bookkeeping -----------------------------------------------------------------
    def _no_decay_mask(self):
        mask = np.zeros(self.core.params.size, dtype=np.uint8)
        for name, shape, offset, numel, is_buffer, group, no_decay in self.core.param_table():
            if not is_buffer and no_decay:
                mask[offset:offset + numel] = 1
        return mask

    def rank_batch(self):
        """The images of a global batch that this rank trains on."""
        return self.cfg.batch_size // self.world.size

    def batches_per_epoch(self):
        return max(1, len(self.train) // self.cfg.batch_size)

    def total_steps(self, stage):
        epochs = self.cfg.stage1_epochs if stage == 1 else self.cfg.stage2_epochs
        return epochs * self.batches_per_epoch()

    def epoch_indices(self, stage, epoch):
        seed = self.cfg.seed * 2 + (stage - 1)
        sampler = self.cfg.stage2_sampler
        if stage == 1 or sampler == "instance":
            return _C.sample_instance_balanced(len(self.train), seed, epoch)
        if sampler == "sqrt":
            return _C.sample_class_power(self.labels, seed, epoch, len(self.train), power=0.5)
        if sampler == "progressive":  # Kang et al.: instance-balanced -> class-balanced
            alpha = epoch / max(self.cfg.stage2_epochs - 1, 1)
            return _C.sample_class_power(self.labels, seed, epoch, len(self.train), power=0.0,
                                         alpha=min(alpha, 1.0))
        return _C.sample_class_balanced(self.labels, seed, epoch, len(self.train))

    def lr_momentum(self, stage, step):
        cfg = self.cfg
        max_lr = cfg.lr(stage)
        if cfg.schedule == "onecycle":
            lr, mom = _C.onecycle(step, max(self.total_steps(stage), 1), max_lr, cfg.pct_start,
                                  cfg.div_factor, cfg.final_div_factor, cfg.cycle_momentum,
                                  0.85, 0.95)
            return lr, (mom if cfg.cycle_momentum else cfg.momentum)
        epoch = step // self.batches_per_epoch()
        return _C.multistep(epoch, max_lr, list(cfg.milestones), cfg.gamma), cfg.momentum

    def augment_config(self, train=True):
        """Config.augment in the loader's vocabulary (see docs/data-pipeline.md)."""
        from .model import eval_augment

        if not train:
            return eval_augment(self.cfg)
        a = self.cfg.augment
        out = {"crop": bool(a.get("crop", True)), "flip": 0.5 if a.get("flip", True) else 0.0,
               "jitter": bool(a.get("color_jitter", True)),
               "randaugment": bool(a.get("randaugment", True)), "norm": self.cfg.normalization}
        if "crop_scale" in a:
            out["scale"] = tuple(a["crop_scale"])
        if "randaugment_n" in a:
            out["ra_n"] = int(a["randaugment_n"])
        if "randaugment_m" in a:
            out["ra_m"] = int(a["randaugment_m"])
        return out

    def augment(self, dataset, indices, epoch, train=True):
        return _C.augment_batch(dataset.images, np.ascontiguousarray(indices, np.int64),
                                self.cfg.image_size, self.cfg.seed, epoch,
                                threads=self.core.threads, **self.augment_config(train))

    def loader(self, order, stage, epoch):
        """The epoch's batches, augmented ahead by C worker threads. Always the whole
        epoch (augmentations are keyed by position in it), so a resumed epoch skips the
        batches already done rather than starting a shorter sequence. The batches are the
        augmented uint8 pixels: the model normalises them on its device (step()), to the
        same float32 values the loader would have made, with a quarter of the bytes to copy."""
        nb = self.batches_per_epoch()
        order = np.ascontiguousarray(order[:nb * self.cfg.batch_size], np.int64)
        # several ranks: each takes its consecutive share of every global batch, augmented
        # as in a one-process run (the same global batches for any number of ranks)
        shard = (self.world.rank, self.world.size) if self.world.size > 1 else None
        return _C.Loader(self.train.images, self.train.ages, self.sigmas, order,
                         self.rank_batch(), self.cfg.image_size, shard=shard,
                         seed=self.cfg.seed * 2 + stage - 1, epoch=epoch,
                         threads=self.loader_threads(), drop_last=True, dtype="uint8",
                         **self.augment_config(True))

    def loader_threads(self):
        """Config.loader_threads, 0 meaning min(cores, 8). Only speed depends on it: every
        augmentation is keyed by (seed, epoch, sample), so the batches are bitwise the same."""
        return self.cfg.loader_threads or min(os.cpu_count() or 1, 8)

    # -- one step --------------------------------------------------------------------
    def step(self, x, ages, sigma, stage):
        """Queue one optimizer step and return the losses of the step before it (None for
        the first). On a GPU the step runs while the caller fetches the next batch: the
        batch goes through pinned memory on a copy stream and nothing waits for the GPU
        but the previous step's losses (Model.train_step_async). flush() returns the last
        step's losses. x: float32 images already normalised, or the loader's uint8 pixels
        (normalised by the model with Config.normalization)."""
        cfg, m = self.cfg, self.core
        if stage == 1:
            loss_mode, mae = cfg.loss, 0.0
        elif cfg.stage2_loss == "lae":
            loss_mode, mae = "lae_cls", float(self.state["stage1_val_mae"] or 0.0)
        else:
            loss_mode, mae = cfg.loss, 0.0
        m.zero_grad()
        norm = cfg.normalization if x.dtype == np.uint8 else None
        m.train_step_async(x, ages, sigma, stage=stage, loss=loss_mode, mae=mae, norm=norm)
        step = self.state["step"]
        lr, mom = self.lr_momentum(stage, step)
        begin, end = m.group_range(G_BALANCED) if stage == 2 else (0, m.group_range(G_HEAD)[1])
        # several ranks: the mean of their gradients, one all-reduce of the trained part of
        # the flat buffer (NCCL queues it on the GPU's stream), then the same step on all
        self.world.average_grads(m, begin, end)
        if cfg.on_nonfinite == "skip":
            # checked before the update (so the step waits for its losses): a batch whose
            # loss or gradient is not finite is left out, the schedule moves on (the
            # gradients are the ranks' mean by now, so every rank decides alike)
            losses = self.world.mean_of(m.async_losses(0))  # the global batch's losses
            bad = _nonfinite_parts(losses)
            if not bad and not np.isfinite(m.grads[begin:end]).all():
                bad = ["gradient"]
            self.state["step"] = step + 1
            if bad:
                self._skipped = True
                self.state.setdefault("skipped", []).append(
                    [stage, self.state["epoch"], self.state["batch"], step])
                self.log(f"note: skipped the batch of stage {stage}, epoch "
                         f"{self.state['epoch'] + 1}, step {step}: non-finite {', '.join(bad)} "
                         "(on_nonfinite='skip')")
                return None
            m.sgd_step(lr, mom, 0.0, cfg.weight_decay, cfg.nesterov, step == 0, begin, end,
                       cfg.wd_exclude_bn_bias)
            losses["lr"] = lr
            return losses
        # on the model's own buffers and device (its no-decay mask is _no_decay_mask's)
        m.sgd_step(lr, mom, 0.0, cfg.weight_decay, cfg.nesterov, step == 0, begin, end,
                   cfg.wd_exclude_bn_bias)
        self.state["step"] = step + 1
        prev, self._pending = self._pending, (stage, step, lr)
        return self._losses_of(prev, back=1) if prev else None

    def flush(self):
        """The losses of the last queued step (waits for it), or None."""
        prev, self._pending = self._pending, None
        return self._losses_of(prev, back=0) if prev else None

    def _losses_of(self, pending, back):
        stage, step, lr = pending
        losses = self.world.mean_of(self.core.async_losses(back))  # the global batch's, every rank
        bad = _nonfinite_parts(losses)
        if bad:
            # before a checkpoint records it (the optimizer has taken at most one more step)
            self._pending = None
            parts = ", ".join(f"{k} = {losses[k]}" for k in bad)
            raise FloatingPointError(
                f"training diverged in stage {stage}, epoch {self.state['epoch'] + 1}, step "
                f"{step} (loss {losses['total']}; non-finite loss part: {parts}). "
                f"The last good checkpoint: {self._last_good()}. To go on, resume from it "
                "with a lower peak learning rate (in this stage: "
                f"{self.cfg.lr(stage):g}), or set on_nonfinite='skip' to leave such batches "
                "out. "
                + ("In stage 2 the backbone's BN runs on its running statistics; after a short "
                   "stage 1 they are far from the batch statistics and the head sees much "
                   "larger features, so stage 2 needs a longer stage 1 or a smaller rate."
                   if stage == 2 else "The L1 term's gradient scales with ages (up to 100), "
                   "so from-scratch training needs rates around 0.005 or less."))
        losses["lr"] = lr
        return losses

    def _add_losses(self, losses):
        if losses is None:
            return
        sums = self.state["loss_sums"]
        for key, v in losses.items():
            sums[key] = sums.get(key, 0.0) + float(v)

    # -- evaluation ------------------------------------------------------------------
    def predict(self, dataset, batch_size=None):
        """{"vanilla", "balanced", "routed": ages (N,), "choice": the answering head (N,)}
        for every image of a data set (anything `fit` takes: a Dataset, a packed file, an
        (images, ages) tuple), with the evaluation resize, the Config's route and flip
        averaging. Model.predict takes bare images."""
        # several ranks: each predicts its share with rank 0's BN statistics, all get all
        self.world.broadcast_model(self.core, ("buffers",))
        return predict_dataset(self.model, as_dataset(dataset),
                               batch_size or min(self.cfg.batch_size, 64), world=self.world)

    def evaluate(self, dataset=None, stage=None):
        """glae.metrics.report of the validation set (or of `dataset`) for each head:
        {"vanilla"[, "balanced", "routed"]} (both heads once stage 2 has begun)."""
        if dataset is None:
            if self.val is None:
                raise ValueError("evaluate: this Trainer has no validation set; pass a data set")
            dataset = self.val
        dataset = as_dataset(dataset)
        if len(dataset) == 0:
            raise ValueError("evaluate: the data set is empty")
        stage = stage or self.state["stage"]
        return report_dataset(dataset, self.predict(dataset), both_heads=stage == 2,
                              train_ages=self.train.ages)

    # -- the run ---------------------------------------------------------------------
    def fit(self, max_steps: int | None = None):
        """Train (or continue) both stages. max_steps stops early after that many
        optimizer steps in this call (a checkpoint is written), for exact-resume tests."""
        if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) != max_steps
                                      or max_steps < 1):
            raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}")
        done = 0
        cfg = self.cfg
        st = self.state
        self._pending = None  # a step queued by an interrupted call is not this run's
        # several ranks start from rank 0's tensors (same seed gives the same, a file
        # read on each rank too; this makes it so whatever happened before)
        self.world.broadcast_model(self.core)
        if (self.out_dir and st["stage"] == 1 and st["epoch"] == 0 and st["batch"] == 0
                and st["step"] == 0):  # a fresh run: no lines of an earlier run in the log
            log_path = os.path.join(self.out_dir, "log.jsonl")
            if os.path.exists(log_path):
                os.remove(log_path)
        for stage in (1, 2):
            if self.state["stage"] > stage:
                continue
            epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
            if stage == 2 and self.state["epoch"] == 0 and self.state["batch"] == 0 \
                    and not self.state.get("stage2_started"):
                self._start_stage2()
            nb = self.batches_per_epoch()
            while self.state["epoch"] < epochs:
                epoch = self.state["epoch"]
                order = self.epoch_indices(stage, epoch)
                t0 = time.perf_counter()
                skip = self.state["batch"]
                if skip == 0:
                    self.state["loss_sums"], self.state["loss_count"] = {}, 0
                # the loader always runs the whole epoch (augmentations are keyed by the
                # position in it); a resumed epoch draws and drops the batches already done
                batches = iter(self.loader(order, stage, epoch))
                for _ in range(skip):
                    next(batches)
                stop = False
                for b, (x, ages, sigma) in _progress(enumerate(batches, skip), nb - skip,
                                                      f"stage {stage} epoch {epoch + 1}/{epochs}",
                                                      self.progress):
                    if self.train.verify is not None:  # a lazily checked packed file
                        bs = self.cfg.batch_size
                        self.train.verify(order[b * bs:(b + 1) * bs])
                    self._skipped = False
                    self._add_losses(self.step(x, ages, sigma, stage))
                    self.state["loss_count"] += not self._skipped
                    self.state["batch"] = b + 1
                    done += 1
                    if max_steps is not None and done >= max_steps:
                        stop = True
                        break
                    every = cfg.checkpoint_every
                    if every and self.state["step"] % every == 0 and b + 1 < nb:
                        # mid-epoch (the epoch's end saves anyway): what max_steps writes
                        self._add_losses(self.flush())
                        self.save("last")
                self._add_losses(self.flush())
                if stop and self.state["batch"] < nb:
                    self.save("last")
                    return self
                self.state["epoch"] = epoch + 1
                self.state["batch"] = 0
                self._end_epoch(stage, epoch, nb - skip, time.perf_counter() - t0)
                if stop:  # stopped on an epoch's last batch: the epoch is logged and saved
                    return self
            if stage == 1:
                self.state.update(stage=2, epoch=0, batch=0, step=0)
        if cfg.stage2_epochs > 0:
            self.model.stage2_trained = True
        return self

    def _start_stage2(self):
        # LAE's stage-2 loss needs the MAE of the *final* stage-1 model; the last evaluation
        # may be epochs old (eval_every not dividing stage1_epochs), so evaluate again
        # unless it was on stage 1's last epoch (nothing else reads this MAE)
        lae = self.cfg.stage2_loss == "lae" and self.cfg.stage2_epochs > 0
        if lae and self.val is not None and \
                self.state.get("stage1_val_epoch") != self.cfg.stage1_epochs:
            rep = self.evaluate(stage=1)
            self.state["stage1_val_mae"] = rep["vanilla"]["mae"]
            self.state["stage1_val_epoch"] = self.cfg.stage1_epochs
        if lae and self.state["stage1_val_mae"] is None:
            raise ValueError("stage2_loss='lae' needs a validation set for the stage-1 MAE")
        # stage 2 runs the frozen backbone on its running BN statistics: rank 0's, which the
        # checkpoints save, on every rank (docs/distributed.md)
        self.world.broadcast_model(self.core, ("buffers",))
        # the balanced head as built (stage 1 never touches it) is its fresh initialisation;
        # its classifier is its last layer (weight, bias): cls (fr+pa), fc (gap), fr (fr)
        init = self.cfg.stage2_head_init
        names = [name for name, *_ in self.core.param_table() if name.startswith("balanced.")]
        keep = names if init == "reinit" else names[-2:] if init == "reinit_classifier" else []
        fresh = {name: self.core.get(name) for name in keep}
        self.core.copy_head_to_balanced()
        for name, value in fresh.items():
            self.core.set(name, value)
        b, e = self.core.group_range(G_BALANCED)
        self.core.write_flat("momentum", np.zeros(e - b, np.float32), b)
        self.state["stage2_started"] = True

    def _end_epoch(self, stage, epoch, batches_here, seconds):
        n = self.state["loss_count"]
        mean = {k: v / n for k, v in self.state["loss_sums"].items()} if n else {}
        # seconds / images_per_s: this process's part of the epoch (all of it unless resumed)
        is_best = False
        entry = {"stage": stage, "epoch": epoch + 1, "seconds": round(seconds, 3),
                 "images_per_s": round(batches_here * self.cfg.batch_size / max(seconds, 1e-9), 1),
                 "train": mean}
        if self.val is not None and ((epoch + 1) % self.cfg.eval_every == 0):
            entry["val"] = self.evaluate(stage=stage)
            if stage == 1:
                self.state["stage1_val_mae"] = entry["val"]["vanilla"]["mae"]
                self.state["stage1_val_epoch"] = epoch + 1
            key = "routed" if stage == 2 else "vanilla"
            score = entry["val"][key]["mae"]
            best = self.state["best"]
            if best is None or stage > best[0] or score <= best[1]:
                self.state["best"] = (stage, score)
                is_best = True
        last = self.save("last")
        if is_best and last:
            _same_file(last, os.path.join(self.out_dir, "best.safetensors"))
        if self.out_dir:
            with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(entry, default=_json_default) + "\n")
        self.log(_summary_line(entry))
        last_epoch = epoch + 1 == (self.cfg.stage1_epochs if stage == 1 else self.cfg.stage2_epochs)
        if "val" in entry and last_epoch:  # early epochs of a run that learns may not yet
            self._note_if_no_better_than_the_median(entry["val"][key]["mae"])
        return entry

    def _note_if_no_better_than_the_median(self, mae):
        """A run that has not learnt (a constant answer) is otherwise easy to miss: say so
        when the validation MAE does not beat answering the training median for all."""
        med = float(np.median(self.train.ages))
        base = float(np.mean(np.abs(self.val.ages - med)))
        if mae >= base:
            self.log(f"note: validation MAE {mae:.2f} is no better than answering the training "
                     f"set's median age ({med:g}) for every face ({base:.2f}): the model has "
                     "not learnt yet (too few epochs, a learning rate, strong augmentation?)")

    # -- checkpoints -----------------------------------------------------------------
    def save(self, which="last", path=None):
        path = path or (os.path.join(self.out_dir, f"{which}.safetensors") if self.out_dir else None)
        if path is None:
            return None
        # a checkpoint never holds non-finite weights (a NaN gradient whose loss was finite
        # shows here at the latest): the previous one stays the last good one
        for role in ("params", "buffers"):
            if not np.isfinite(getattr(self.core, role)).all():
                st = self.state
                raise FloatingPointError(
                    f"training diverged: the model's {role} are not finite after stage "
                    f"{st['stage']}, epoch {st['epoch'] + 1}, step {st['step']} (a NaN or Inf "
                    f"gradient); {path} was not written. The last good checkpoint: "
                    f"{self._last_good()}. Resume from it with a lower rate, or set "
                    "on_nonfinite='skip'")
        save_checkpoint(path, self.model, self.cfg,
                        {**self.state, "stage2_trained": self.state["stage"] == 2 and
                         self.state["epoch"] > 0, "world_size": self.world.size})
        st = self.state
        self._good = f"{path} (stage {st['stage']}, epoch {st['epoch']}, batch {st['batch']}, step {st['step']})"
        return path

    def _last_good(self):
        good = getattr(self, "_good", None)
        if good is None and self.out_dir and os.path.exists(os.path.join(self.out_dir, "last.safetensors")):
            good = os.path.join(self.out_dir, "last.safetensors") + " (written before this run)"
        return good or "none written yet"

    @classmethod
    def resume(cls, path, train, val=None, out_dir=None, device=None, **kw):
        """A Trainer that continues the run saved in `path` (a last/best checkpoint)
        exactly: model tensors, BN buffers, momentum, stage/epoch/batch/step, the running
        epoch losses. `train` must be the same training set (its size is checked).
        device: continue on another device ("cpu", "cuda", "cuda:N"; default the run's
        own); the steps are then the same equations, not the same bits."""
        from .model import _Restore

        # every tensor comes from the file: config.pretrained is not read again
        model, cfg, state = load_checkpoint(path, _Restore, device=device)
        missing = [k for k in ("stage", "epoch", "batch", "step") if k not in state]
        if missing:
            raise ckpt.CheckpointError(
                f"{path}: no trainer state ({', '.join(missing)} missing): written by "
                "Model.save? Train from it with a new Trainer instead of resuming")
        if state.get("stage") not in (1, 2) or any(
                isinstance(state[k], bool) or not isinstance(state[k], int) or state[k] < 0
                for k in ("epoch", "batch", "step")):
            raise ckpt.CheckpointError(f"{path}: corrupt trainer state {state!r}")
        train = as_dataset(train)
        if val is not None:
            val = as_dataset(val)
        if "n_train" in state and state["n_train"] != len(train):
            raise ValueError(f"{path} was trained on {state['n_train']} images; the training set "
                             f"given has {len(train)}: resume needs the same training set")
        state.pop("stage2_trained", None)
        saved_world = state.pop("world_size", 1)
        w = kw.get("world") or dist.world()
        if saved_world != w.size and not cfg.bn_batch:
            raise ValueError(
                f"{path} was trained on {saved_world} rank(s) and this run has {w.size}: with "
                f"bn_batch = 0 the batch-norm statistics are over each rank's "
                f"{cfg.batch_size // saved_world} images, which {w.size} rank(s) would change; "
                f"resume with {saved_world} rank(s) (a run started with bn_batch set, e.g. "
                f"bn_batch={cfg.batch_size // saved_world}, resumes on any number of ranks)")
        if cfg.batch_size % w.size:
            raise ValueError(f"{path}: batch_size {cfg.batch_size} is not a multiple of the "
                             f"{w.size} ranks of this run")
        t = cls(model, cfg, train, val, out_dir=out_dir, **kw)
        t.state.update(state)
        return t


def save_checkpoint(path, model, cfg, state):
    """model: a glae.Model. Tensors in torchvision layout under their torchvision names
    (so `safetensors`/PyTorch users can load the backbone), plus the flat momentum."""
    core = model.core
    tensors = {name: core.get(name) for name, *_ in core.param_table()}
    # packed in table order, without the padding between tensors in the model's flat
    # buffer (its layout may change; the tensors' order and sizes are the format)
    mom = core.momentum
    tensors["optimizer.momentum"] = np.concatenate(
        [mom[off:off + n] for _, _, off, n, buf, *_ in core.param_table() if not buf])
    if cfg.backbone.startswith("efficientnet"):
        # the stochastic-depth masks' counter: a resumed run draws the masks it would have
        state = {**state, "drop_step": int(core.drop_step)}
    meta = {"format": "glae-checkpoint-1", "config": json.loads(cfg.to_json()),
            "state": json.loads(json.dumps(state, default=_json_default))}
    if getattr(model, "data_info", None) is not None:
        meta["data"] = model.data_info
    ckpt.save(path, tensors, meta)


class DeviceUnavailableError(RuntimeError):
    """A checkpoint's model is on a CUDA device this machine cannot use."""


def placed_config(cfg, device=None, gpu_math=None):
    """cfg with its model on another device and/or math. On the CPU the CUDA-only switches
    (cuda_graph, cudnn_benchmark) go off and the math becomes fp32 unless gpu_math says
    otherwise (bf16 runs there only as the GPU's slow reference)."""
    changes = {}
    if device is not None:
        changes["device"] = device
        if device == "cpu":
            changes.update(cuda_graph=False, cudnn_benchmark=False, gpu_math="fp32")
    if gpu_math is not None:
        changes["gpu_math"] = gpu_math
    return cfg.replace(**changes) if changes else cfg


def cuda_unusable():
    """None when a CUDA device can hold a model, else why not (one line)."""
    if not _C.HAS_CUDA:
        return "glae was built without CUDA"
    try:
        if _C.cuda_devices():
            return None
    except RuntimeError as e:
        return str(e)
    return _C.cuda_device_status()["message"] or "no CUDA device"


def load_checkpoint(path, model_factory, device=None, gpu_math=None):
    """(model, config, trainer state) from a file of save_checkpoint. Every problem is a
    CheckpointError (a ValueError) naming the file; a missing file is FileNotFoundError.
    device / gpu_math: place the model elsewhere than it was trained (placed_config); a
    model saved on a GPU needs device='cpu' on a machine without one (else
    DeviceUnavailableError, a RuntimeError)."""
    tensors, meta = ckpt.load(path)
    if not isinstance(meta, dict) or meta.get("format") != "glae-checkpoint-1" \
            or "config" not in meta:
        raise ckpt.CheckpointError(f"{path}: not a glae checkpoint (no glae metadata; "
                                   "a plain state_dict loads with Model.load_state_dict)")
    cfg = meta["config"]
    try:
        cfg = Config.from_dict(cfg) if isinstance(cfg, dict) else Config.from_json(cfg)
    except (ValueError, TypeError) as e:
        raise ckpt.CheckpointError(f"{path}: unusable config in the checkpoint: {e}") from None
    cfg = placed_config(cfg, device, gpu_math)  # a bad device or math: ValueError, as given
    why = cfg.device != "cpu" and cuda_unusable()
    if why:
        if device is not None:
            raise DeviceUnavailableError(f"{path}: device={device!r} was asked for, but this "
                                         f"machine cannot run CUDA ({why})")
        raise DeviceUnavailableError(
            f"{path}: the model was trained on {cfg.device!r}, but this machine cannot run CUDA "
            f"({why}); load it with glae.load(path, device='cpu') (Trainer.resume and the "
            "command line's train, eval and predict take device='cpu' / --device cpu)")
    try:
        model = model_factory.from_config(cfg)
    except (ValueError, TypeError) as e:
        raise ckpt.CheckpointError(f"{path}: unusable config in the checkpoint: {e}") from None
    core = model.core
    for name, *_ in core.param_table():
        if name not in tensors:
            raise ckpt.CheckpointError(f"{path}: tensor {name!r} missing")
        try:
            core.set(name, tensors[name])
        except (ValueError, TypeError) as e:
            raise ckpt.CheckpointError(f"{path}: tensor {name!r}: {e}") from None
    mom = tensors.get("optimizer.momentum")
    rows = [(off, n) for _, _, off, n, buf, *_ in core.param_table() if not buf]
    if mom is None or mom.shape != (sum(n for _, n in rows),) or mom.dtype != np.float32:
        raise ckpt.CheckpointError(f"{path}: optimizer.momentum missing or of the wrong size")
    flat, pos = np.zeros(core.momentum.size, np.float32), 0
    for off, n in rows:
        flat[off:off + n] = mom[pos:pos + n]
        pos += n
    core.write_flat("momentum", flat)
    drop_step = meta.get("state", {}).get("drop_step") if isinstance(meta.get("state"), dict) else None
    if isinstance(drop_step, int) and not isinstance(drop_step, bool) and drop_step >= 0:
        core.drop_step = drop_step
    model.data_info = _data_info(meta.get("data"), path)
    return model, cfg, _trainer_state(meta.get("state", {}), path)


def _trainer_state(state, path):
    """The checkpoint's "state" entry as a dict: a JSON object, or (as some writers stored
    it) a string holding one; anything else is a CheckpointError naming the entry."""
    what = None
    if isinstance(state, str):
        try:
            state = json.loads(state)
        except ValueError:
            what = "a string that is not JSON"
    if not isinstance(state, dict):
        kinds = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
                 str: "a string", list: "an array"}
        raise ckpt.CheckpointError(
            f"{path}: metadata entry 'state' (the trainer state) must be a JSON object, got "
            f"{what or kinds.get(type(state), type(state).__name__)}")
    state = dict(state)
    if isinstance(state.get("best"), list):
        state["best"] = tuple(state["best"])
    return state


def _data_info(info, path):
    """The checkpoint's "data" entry (written by a Trainer), checked; None when absent."""
    if info is None:
        return None
    hist, align = (info.get("train_age_hist"), info.get("align")) if isinstance(info, dict) \
        else (None, None)
    ok = isinstance(info, dict) and isinstance(hist, list) and all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in hist)
    ok = ok and (align is None or (isinstance(align, dict) and isinstance(align.get("size"), int)
                                   and align["size"] > 0
                                   and isinstance(align.get("margin"), (int, float))
                                   and (align.get("landmarks") is None
                                        or isinstance(align["landmarks"], (int, float))
                                        and 0 <= align["landmarks"] <= 1)))
    if not ok:
        raise ckpt.CheckpointError(f"{path}: corrupt training-data metadata {info!r}")
    return {"train_age_hist": hist, "align": align}


def _nonfinite_parts(losses):
    """The loss parts (local, holistic, total) that are NaN or infinite."""
    bad = [k for k in ("local", "holistic") if k in losses and not math.isfinite(losses[k])]
    return bad or ([] if math.isfinite(losses["total"]) else ["total"])


def _same_file(src, dst):
    """dst becomes a file with src's content: a hard link when the filesystem allows it
    (no second write of ~90 MB; src is later replaced by a new file, never rewritten in
    place, so dst keeps this content), else a copy. Atomic: built aside, then renamed."""
    import shutil

    from ._atomic import write_atomically

    def write(tmp):
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    write_atomically(dst, write)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _summary_line(entry):
    parts = [f"stage {entry['stage']} epoch {entry['epoch']}",
             f"loss {entry['train'].get('total', math.nan):.3f}",
             f"{entry['images_per_s']:.0f} img/s"]
    for head, rep in (entry.get("val") or {}).items():
        parts.append(f"{head} MAE {rep['mae']:.2f} CMAE {rep['cmae']:.2f}")
    return " | ".join(parts)
