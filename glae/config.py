"""Training configuration: the papers' defaults, every one overridable, validated before
any work starts (a bad value raises ValueError naming the field)."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is the same parser (pyproject's marker)
    import tomli as tomllib

from ._lib import _C

# the C engine's stage tables: resnet18, resnet50, efficientnet_v2_s, efficientnet_v2_m
BACKBONES = tuple(_C.RESNET_STAGES) + tuple(_C.EFFNET_STAGES)
HEADS = ("gap", "fr", "fr+pa")
LOSSES = ("base", "kl")
STAGE2_LOSSES = ("glae", "lae")
# stage 2's start: "copy" the vanilla head (the papers), "reinit" the whole balanced head
# (as built, untouched by stage 1: Kang et al.'s cRT), "reinit_classifier" (copy, then the
# last linear layer as built)
STAGE2_HEAD_INITS = ("copy", "reinit", "reinit_classifier")
# stage 2's sampler: "class_balanced" (the papers), "sqrt" (class ~ sqrt(count)),
# "progressive" (instance -> class-balanced over the epochs), "instance" (no re-balancing)
STAGE2_SAMPLERS = ("class_balanced", "sqrt", "progressive", "instance")
SCHEDULES = ("onecycle", "multistep")
NORMALIZATIONS = ("glae", "imagenet")
# answers after stage 2: GLAE's Adaptive Routing ("smaller", eq. 11; "bigger", Table IX),
# one head, or a routing criterion of ops/route.h with route_threshold / route_ages
ROUTES = ("smaller", "bigger", "vanilla", "balanced", "kl_margin", "confidence", "entropy",
          "age", "blend")
TOML_TABLES = ("model", "data", "optim", "eval", "run")


def is_device(d) -> bool:
    """True for the device strings glae takes: "cpu", "cuda", "cuda:N"."""
    return isinstance(d, str) and (d in ("cpu", "cuda") or (
        d.startswith("cuda:") and d[5:].isascii() and d[5:].isdigit()))



def check_fields(cls, keys, what):
    """ValueError naming every key that is not a field of the dataclass `cls`, each with the
    closest field name (`what` names the kind of config in the message)."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(keys) - set(names))
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.7)
            hints.append(f"{k} (did you mean {close[0]}?)" if close else str(k))
        raise ValueError(f"unknown {what} key(s): {', '.join(hints)}")

@dataclass
class Config:
    """One object for a whole two-stage run (LAE section 2.4 / 3.3, GLAE Algorithm 1, V-A).

    Defaults are the papers': OneCycle, 24 + 8 epochs, base lr 0.005 / 0.001 scaled by
    batch / 256, batch 256, weight decay 5e-4, SGD with Nesterov momentum 0.9, images 224;
    except stage 2's sampler, square-root rather than class-balanced (docs/training.md,
    "Long-tail study"; stage2_sampler="class_balanced" is the papers').
    """

    # model
    backbone: str = "resnet18"
    head: str = "fr+pa"
    r: int = 16
    k: int = 16
    s: int = 16
    proj_depth: int = 0
    proj_width: int = 0  # 0: the model's default (docs/model.md)
    num_classes: int = 101
    # EfficientNetV2: torchvision's stochastic_depth_prob (block i of B drops its residual
    # branch per sample with probability stochastic_depth * i / B in training; 0: off)
    stochastic_depth: float = 0.2
    lam: float = 1.0  # lambda of l_base = l_kl + lambda * l_er
    loss: str = "base"  # stage-1 loss: "base" (l_base) or "kl" (GLAE Table II row 1)
    sigma: float = 1.0  # label-distribution sigma (GLAE eq. 1, LAE 2.1: 1)
    # True: each image's own sigma where the data has one (Chalearn's vote spread), `sigma`
    # for the others; False: `sigma` for every image, as eq. 1 is written
    sigma_from_data: bool = False
    # data
    image_size: int = 224
    normalization: str = "glae"  # (x - 127.5) / 128 (GLAE) or ImageNet mean/std (LAE)
    augment: dict = field(default_factory=lambda: {
        "crop": True, "flip": True, "color_jitter": True, "randaugment": True})
    # optimisation
    batch_size: int = 256
    # ghost batch norm: the backbone's BN statistics over consecutive groups of bn_batch
    # images of each training batch, the papers' 8 GPUs x 32 (LAE 2.3) on one device; 0:
    # the whole batch (of each rank in a distributed run: docs/distributed.md)
    bn_batch: int = 0
    stage1_epochs: int = 24
    stage2_epochs: int = 8
    base_lr1: float = 0.005
    base_lr2: float = 0.001
    linear_scaling: bool = True  # lr = base * batch / 256
    schedule: str = "onecycle"
    milestones: tuple = (20, 40, 60)  # multistep (LAE standard baseline)
    gamma: float = 0.1
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    cycle_momentum: bool = False
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    wd_exclude_bn_bias: bool = False
    stage2_loss: str = "glae"  # "glae": the stage-1 loss on the head; "lae": KL + (L1 - mae)^2
    stage2_head_init: str = "copy"  # STAGE2_HEAD_INITS (docs/training.md)
    # STAGE2_SAMPLERS; "sqrt", not the papers' "class_balanced": docs/training.md, "Long-tail
    # study" (the routed answer's MAE and 18-65 better, its CMAE the same, over 3 seeds)
    stage2_sampler: str = "sqrt"
    # evaluation
    route: str = "smaller"
    # kl_margin: vanilla iff Upsilon_1 < Upsilon_2 + t; confidence: balanced when the vanilla
    # head's top probability < t; entropy: when its entropy > t nats; blend: (1 - t) p_van +
    # t p_bal (t in [0, 1])
    route_threshold: float = 0.0
    route_ages: tuple = (18.0, 65.0)  # age: the vanilla head answers when its age is inside
    flip_test: bool = True
    # bookkeeping
    seed: int = 0
    pretrained: str = ""  # ImageNet backbone weights (.pth / .safetensors), glae.weights
    threads: int = 0  # the model's own CPU threads (docs/model.md); 0: glae.set_num_threads's
    loader_threads: int = 0  # augmentation workers, 0: min(cores, 8); batches never depend on it
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N": where the model's buffers and activations live
    # "fp32" (FMA), "tf32" (CUDA tensor cores on float32) or "bf16" (mixed precision: bf16
    # backbone activations on tensor cores; on the CPU the same rounding, slowly, for checks)
    gpu_math: str = "fp32"
    # CPU models: "reference" (the readable kernels, the definition of right), "onednn"
    # (oneDNN primitives for the convolutions, where they are faster; needs a glae built
    # with oneDNN, glae._C.HAS_ONEDNN) or "auto": oneDNN where built, else the reference
    cpu_backend: str = "auto"
    cuda_graph: bool = False  # CUDA models: each training step as one CUDA graph launch
    # CUDA models: choose each convolution's algorithm by timing the candidates (cudnnFind,
    # as PyTorch's cudnn.benchmark) rather than by cuDNN's heuristics: faster steps for the
    # fixed training shapes; the choice, and so the last bits of the results, may differ
    # between runs
    cudnn_benchmark: bool = False
    eval_every: int = 1
    # fault tolerance (docs/reliability.md): also write last.safetensors every this many
    # optimizer steps (0: at the end of each epoch only), so a killed run loses at most
    # that many steps; on_nonfinite: a NaN/Inf loss or gradient "stop"s training (naming
    # the step, the loss part and the last good checkpoint) or "skip"s that batch
    checkpoint_every: int = 0
    on_nonfinite: str = "stop"

    def __post_init__(self):
        self.validate()

    def validate(self) -> "Config":
        def choice(name, options):
            v = getattr(self, name)
            if v not in options:
                raise ValueError(f"{name} must be one of {', '.join(options)}; got {v!r}")

        def positive(name, allow_zero=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v!r}")
            if v < 0 or (v == 0 and not allow_zero):
                raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {v!r}")

        choice("backbone", BACKBONES)
        positive("stochastic_depth", allow_zero=True)
        if self.stochastic_depth >= 1:
            raise ValueError(f"stochastic_depth must be < 1; got {self.stochastic_depth!r}")
        if self.gpu_math == "bf16" and self.backbone.startswith("efficientnet"):
            raise ValueError(f"gpu_math='bf16' is not available for {self.backbone} yet; "
                             "use 'fp32' or 'tf32'")
        choice("head", HEADS)
        choice("loss", LOSSES)
        choice("stage2_loss", STAGE2_LOSSES)
        choice("stage2_head_init", STAGE2_HEAD_INITS)
        choice("stage2_sampler", STAGE2_SAMPLERS)
        choice("schedule", SCHEDULES)
        choice("normalization", NORMALIZATIONS)
        choice("route", ROUTES)
        choice("gpu_math", ("fp32", "tf32", "bf16"))
        choice("cpu_backend", ("auto", "reference", "onednn"))
        if not isinstance(self.cuda_graph, bool):
            raise ValueError(f"cuda_graph must be true or false; got {self.cuda_graph!r}")
        if self.cuda_graph and self.device == "cpu":
            raise ValueError("cuda_graph needs a CUDA device (device='cuda'); the CPU has no graphs")
        if not isinstance(self.cudnn_benchmark, bool):
            raise ValueError(f"cudnn_benchmark must be true or false; got {self.cudnn_benchmark!r}")
        if self.cudnn_benchmark and self.device == "cpu":
            raise ValueError("cudnn_benchmark needs a CUDA device (device='cuda'); the CPU has no cuDNN")
        if not is_device(self.device):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}")
        for name in ("r", "k", "s", "num_classes", "image_size", "batch_size", "eval_every"):
            positive(name)
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"{name} must be an integer; got {getattr(self, name)!r}")
        choice("on_nonfinite", ("stop", "skip"))
        for name in ("stage1_epochs", "stage2_epochs", "proj_depth", "proj_width", "threads",
                     "loader_threads", "seed", "checkpoint_every",
                     "bn_batch"):
            positive(name, allow_zero=True)
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"{name} must be an integer; got {getattr(self, name)!r}")
        if self.seed >= 2**64:  # the engine's Philox key is 64 bits
            raise ValueError(f"seed must be below 2**64; got {self.seed}")
        if self.bn_batch == 1:
            raise ValueError("bn_batch must be 0 (the whole batch) or >= 2: batch norm needs more "
                             "than one image per group")
        if self.bn_batch and self.backbone.startswith("efficientnet"):
            raise ValueError(f"bn_batch (ghost batch norm) is implemented for the ResNet backbones "
                             f"only; {self.backbone} takes its BN statistics over the whole batch "
                             "(bn_batch = 0)")
        if self.threads > 1024:
            raise ValueError(f"threads must be at most 1024; got {self.threads}")
        if self.image_size > 4096:  # the papers use 224; a 4096 px batch of 256 needs ~150 GiB
            raise ValueError(f"image_size must be at most 4096; got {self.image_size}")
        for name in ("linear_scaling", "cycle_momentum", "nesterov", "wd_exclude_bn_bias",
                     "sigma_from_data", "flip_test"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        if not isinstance(self.pretrained, str):
            raise ValueError(f"pretrained must be a file path (str); got {self.pretrained!r}")
        if self.proj_depth > 2:
            raise ValueError(f"proj_depth must be 0, 1 or 2; got {self.proj_depth}")
        if isinstance(self.route_threshold, bool) or not isinstance(
                self.route_threshold, (int, float)) or not math.isfinite(self.route_threshold):
            raise ValueError(f"route_threshold must be a finite number; got {self.route_threshold!r}")
        if self.route == "blend" and not 0 <= self.route_threshold <= 1:
            raise ValueError(f"route_threshold (the blend weight) must be in [0, 1]; got "
                             f"{self.route_threshold!r}")
        ra = self.route_ages
        if not isinstance(ra, (tuple, list)) or len(ra) != 2 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                for v in ra) or ra[0] > ra[1]:
            raise ValueError(f"route_ages must be [low, high] ages with low <= high; got {ra!r}")
        for name in ("base_lr1", "base_lr2", "sigma", "div_factor", "final_div_factor"):
            positive(name)
        for name in ("lam", "weight_decay", "momentum", "gamma"):
            positive(name, allow_zero=True)
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1); got {self.pct_start}")
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1; got {self.momentum}")
        if self.nesterov and self.momentum == 0 and not self.cycle_momentum:
            raise ValueError("nesterov needs momentum > 0 (set nesterov = false for plain SGD)")
        if self.num_classes != 101 and self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2; got {self.num_classes}")
        if not isinstance(self.milestones, (tuple, list)) or any(
                isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in self.milestones):
            raise ValueError(f"milestones must be a list of epochs (integers >= 0); "
                             f"got {self.milestones!r}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing; got {self.milestones}")
        if not isinstance(self.augment, dict):
            raise ValueError(f"augment must be a table of options; got {self.augment!r}")
        unknown = set(self.augment) - {"crop", "flip", "color_jitter", "randaugment",
                                       "crop_scale", "randaugment_n", "randaugment_m"}
        if unknown:
            raise ValueError(f"augment: unknown option(s) {sorted(unknown)}")
        for name in ("crop", "flip", "color_jitter", "randaugment"):
            if name in self.augment and not isinstance(self.augment[name], bool):
                raise ValueError(f"augment.{name} must be true or false; got {self.augment[name]!r}")
        for name in ("randaugment_n", "randaugment_m"):
            v = self.augment.get(name, 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"augment.{name} must be an integer >= 0; got {v!r}")
        if "crop_scale" in self.augment:
            cs = self.augment["crop_scale"]
            ok = isinstance(cs, (list, tuple)) and len(cs) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in cs)
            if not ok or not 0 < cs[0] <= cs[1] <= 1:
                raise ValueError(f"augment.crop_scale must be [low, high] with "
                                 f"0 < low <= high <= 1; got {cs!r}")
        return self

    def lr(self, stage: int) -> float:
        base = self.base_lr1 if stage == 1 else self.base_lr2
        return base * self.batch_size / 256 if self.linear_scaling else base

    def replace(self, **changes) -> "Config":
        self.check_keys(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def check_keys(cls, keys):
        """ValueError naming every key that is not a field, with the closest field names."""
        check_fields(cls, keys, "config")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a table of fields; got {type(d).__name__}")
        cls.check_keys(d)
        d = dict(d)
        for key in ("milestones", "route_ages"):  # JSON / TOML give lists
            if key in d and isinstance(d[key], list):
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "Config":
        return cls.from_dict(json.loads(s))

    @classmethod
    def from_toml(cls, path) -> "Config":
        """A TOML file whose keys are Config fields, flat or under [model], [data],
        [optim], [eval] tables (the tables are only for readability)."""
        with open(path, "rb") as f:
            try:
                raw = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: not valid TOML: {e}") from None
        flat = {}
        for key, value in raw.items():
            items = value.items() if isinstance(value, dict) and key in TOML_TABLES else \
                [(key, value)]
            for k, v in items:
                if k in flat:
                    raise ValueError(f"{path}: {k!r} is given twice")
                flat[k] = v
        try:
            return cls.from_dict(flat)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
