"""`python -m glae <command>`: demo, prepare, pretrain, train, eval, predict, export, info."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from .config import ROUTES
from .train import DeviceUnavailableError

DEMO_HELP = """Train a small GLAE model on built-in synthetic faces, on the CPU, in a few minutes:
stage 1 (whole network, instance-balanced), stage 2 (balanced head on the frozen backbone,
class-balanced), then print MAE, CMAE, AAR (LAE groups) and group MAE for the vanilla head,
the balanced head and Adaptive Routing, and write the log, the checkpoint and a figure. The
synthetic faces are a stand-in that lets the pipeline run anywhere, not a benchmark of real
accuracy."""

EVAL_HELP = """Evaluate a checkpoint on a packed set and print every metric: MAE, CMAE, AAR
(LAE and GLAE groups), group MAE/CMAE, cumulative score, per-age MAE, epsilon-error when
every image has a sigma (Chalearn), MAE by shot (from the training-age histogram the
trainer stores in the checkpoint, or the set --train gives), and routing usage. A stage-2 checkpoint is reported for the vanilla head, the balanced head and
the routed answer (the checkpoint's route and flip_test); a stage-1 one for the vanilla head."""

TRAIN_HELP = """Two-stage training (stage 1: the whole network; stage 2: the balanced head
on the frozen backbone) on a packed training set, with an optional packed validation set.
The settings are the Config defaults, changed by a TOML file (--config, optional) and then
by --set KEY=VALUE. Writes log.jsonl, last.safetensors and best.safetensors to --out.
--resume continues a run exactly from its checkpoint, with the checkpoint's own config."""

PREPARE_HELP = """Decode each image of a data set once, align its face (from the source's
landmarks, or MTCNN with --detect) and write SIZE x SIZE crops with their ages to one packed
file for train, eval and the loader."""

PRETRAIN_HELP = """Identity pre-training (LAE sec. 2.3): train the backbone to tell people apart
with the AM-softmax (CosFace) loss on a packed file of identity-labelled faces (prepare
identities:FOLDER or identities-csv:FILE). Settings: the PretrainConfig defaults (SGD,
18 epochs, milestones 7, 14, 16, lr 0.1 x batch / 256, s 30, m 0.35), changed by a TOML
file (--config, e.g. configs/lae_pretrain.toml) and then by --set KEY=VALUE. Every epoch
prints the loss and a verification figure on held-out identities (pairs of the same /
different people), and writes log.jsonl, last.safetensors (--resume continues from it
exactly) and backbone.safetensors to --out: give that file to age training as
--set pretrained=OUT/backbone.safetensors."""

PREDICT_HELP = """Print the estimated age of each image: one line per file (file, age, the head
that answered) for aligned face crops, or with --detect one line per face found in a raw
photo (file, face index, box, age, head)."""

EXPORT_HELP = """Write an ONNX graph of a checkpoint's inference model (input: float32 images
N x 3 x S x S, normalised as glae's loader does; outputs: age, prob, head). Needs the onnx
package: pip install onnx (or the project's [export] extra). Layout and conventions:
docs/weights.md."""

INFO_HELP = """Print how glae was built (CUDA backend, cuDNN) and which CUDA devices it can use.
With --check, also run one small training step on each usable GPU (or each --device) in each
--math and compare its loss and gradient with the same step on the CPU: exit status 1 on a
mismatch or a failed device."""

HEAD_NAMES = ("vanilla", "balanced")  # the C engine's head index -> name
CHECKPOINT_HELP = "a .safetensors checkpoint (best/last of train, or Model.save)"


def _prog(argv0=None):
    """The program name in usage lines: "glae" when run as the installed console script,
    "python -m glae" otherwise (python -m glae, or main() called from Python)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(argv0 or "")
    return "glae" if os.path.splitext(name)[0] == "glae" else "python -m glae"


def check_device(device, option="--device"):
    """`device` when it is a device string the rest of glae accepts (as Config.device: "cpu",
    "cuda" or "cuda:N"), else ValueError naming the option. Checked before any work."""
    from .config import is_device

    if is_device(device):
        return device
    raise ValueError(f"{option} {device}: expected cpu, cuda or cuda:N (e.g. cuda:0)")


def check_gpu(device, option="--device"):
    """ValueError, before any work, when `device` (a checked device string) is a GPU this
    machine cannot use: why CUDA is unusable, or the devices there are for a cuda:N out of
    range."""
    if device == "cpu":
        return
    from . import info
    from .train import cuda_unusable

    why = cuda_unusable()
    if why:
        raise ValueError(f"{option} {device}: {why}")
    if device.startswith("cuda:"):
        gpus = info.usable_gpus()
        if device not in gpus:
            raise ValueError(f"{option} {device}: this machine has {len(gpus)} usable CUDA "
                             f"device(s): {', '.join(gpus) or 'none'}")


def check_output(path, option):
    """OSError naming `path` (the user's output file, given by `option`) when it cannot be
    written: its folder missing or not a folder, or `path` itself a folder. Called before
    any work, so that a long evaluation is not thrown away for a typo."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise IsADirectoryError(f"{option} {path}: is a folder; give a file name")
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{option} {path}: the folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: the folder {folder} is not writable")


def _table(rows: dict) -> str:
    groups = ("0-17", "18-65", "66-100")
    # AAR over LAE's eight groups (metrics.LAE_GROUPS), as the AAR-LAE column of eval
    head = (f"{'':<10}{'MAE':>7}{'CMAE':>7}{'AAR-LAE':>9}"
            + "".join(f"{'MAE ' + g:>12}" for g in groups))
    lines = [head, "-" * len(head)]
    for name, rep in rows.items():
        g = rep.get("group") or {}
        cells = []
        for key in groups:
            v = (g.get(key) or {}).get("mae")
            cells.append(f"{v:>12.2f}" if v is not None else f"{'-':>12}")
        lines.append(f"{name:<10}{rep['mae']:>7.2f}{rep['cmae']:>7.2f}"
                     f"{_f(rep['aar_lae']['aar'], 9)}" + "".join(cells))
    return "\n".join(lines)


def _f(v, width=7, fmt=".2f"):
    """A number right-aligned in `width`, or '-' for a metric that has no value (None)."""
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{fmt}}"


def format_report(rep: dict) -> str:
    """The whole report of _evaluate ({head: glae.metrics.report(...)}) as text: a summary
    row per head, then every metric of each head."""
    heads = list(rep)
    first = rep[heads[0]]
    has_eps = "epsilon_error" in first
    shots = ("many", "medium", "few")
    cols = f"{'':<10}{'MAE':>7}{'CMAE':>7}{'AAR-LAE':>9}{'AAR-GLAE':>9}"
    if has_eps:
        cols += f"{'eps-err':>9}"
    groups = list(first["group"])  # the head / tail trade-off beside the totals
    cols += "".join(f"{'MAE ' + g:>12}" for g in groups)
    if "shot" in first:
        cols += "".join(f"{'MAE ' + s:>12}" for s in shots)
    lines = [cols, "-" * len(cols)]
    for name in heads:
        r = rep[name]
        row = (f"{name:<10}{_f(r['mae'])}{_f(r['cmae'])}{_f(r['aar_lae']['aar'], 9)}"
               f"{_f(r['aar_glae']['aar'], 9)}")
        if has_eps:
            row += _f(r["epsilon_error"], 9, ".4f")
        row += "".join(_f((r["group"][g] or {}).get("mae"), 12) for g in groups)
        if "shot" in r:
            row += "".join(_f((r["shot"][s] or {}).get("mae"), 12) for s in shots)
        lines.append(row)
    for name in heads:
        lines += [""] + _head_details(name, rep[name])
    return "\n".join(lines)


def _head_details(name, r):
    out = [f"== {name}: {r['n']} images, {r['ages_present']} integer ages present =="]
    out.append(f"MAE {r['mae']:.3f}  CMAE {r['cmae']:.3f}"
               + (f"  epsilon-error {r['epsilon_error']:.4f}" if "epsilon_error" in r else ""))
    for key, title in (("aar_lae", "LAE groups"), ("aar_glae", "GLAE groups")):
        a = r[key]
        out.append(f"AAR ({title}) {a['aar']:.3f}: MAE {a['mae']:.3f}, sigma {a['sigma']:.3f}"
                   f" over {a['groups_present']} groups"
                   + (f" (empty: {', '.join(a['missing'])})" if a["missing"] else ""))
        labels = list(a["group_mae"])
        out.append("  group " + "".join(f"{g:>7}" for g in labels))
        out.append("  MAE   " + "".join(_f(a["group_mae"][g]) for g in labels))
        out.append("  n     " + "".join(f"{a['group_count'][g]:>7d}" for g in labels))
    out.append(f"{'group':<10}{'MAE':>7}{'CMAE':>7}{'n':>7}{'ages':>6}")
    for g, v in r["group"].items():
        v = v or {}
        out.append(f"{g:<10}{_f(v.get('mae'))}{_f(v.get('cmae'))}"
                   f"{v.get('count', 0):>7d}{v.get('n_ages', 0):>6d}")
    if "shot" in r:
        out.append(f"{'shot':<10}{'MAE':>7}{'CMAE':>7}{'n':>7}{'ages':>6}"
                   "   (training images of an age: many > 100, few < 20)")
        for s, v in r["shot"].items():
            v = v or {}
            out.append(f"{s:<10}{_f(v.get('mae'))}{_f(v.get('cmae'))}"
                       f"{v.get('count', 0):>7d}{v.get('n_ages', 0):>6d}")
    theta, cs = r["cs"]["theta"], r["cs"]["cs"]
    out.append("CS theta " + "".join(f"{t:>6g}" for t in theta))
    out.append("CS       " + "".join(f"{c:>6.3f}" for c in cs))
    if "routing" in r:
        out.append(f"{'routing':<10}{'vanilla':>9}{'balanced':>9}{'n':>7}")
        for g, v in r["routing"].items():
            v = v or {}
            out.append(f"{g:<10}{_f(v.get('vanilla'), 9, '.3f')}{_f(v.get('balanced'), 9, '.3f')}"
                       f"{v.get('count', 0):>7d}")
    m, c = r["per_age"]["mae"], r["per_age"]["count"]
    cells = [f"{k}:{float(m[k]):.1f}/{int(c[k])}" for k in range(len(c)) if c[k]]
    out.append("per-age MAE (age:MAE/images):")
    for i in range(0, len(cells), 8):
        out.append("  " + " ".join(f"{x:<14}" for x in cells[i:i + 8]).rstrip())
    return out


def _evaluate(model, data, train_ages=None, batch_size=64):
    """Predictions of both heads and the routed answer on `data` (a glae.train.Dataset),
    and their metric reports, in one pass over the images. The model is evaluated
    directly: no Trainer, so no training-set checks. train_ages (the training set's ages,
    or None): the histogram that MAE by shot needs."""
    from .train import predict_dataset, report_dataset

    if len(data) == 0:
        raise ValueError("the evaluation set is empty")
    from .distributed import world

    # under an MPI launcher each rank predicts its share of the set (distributed.py)
    pred = predict_dataset(model, data, batch_size, world=world())
    # an untrained balanced head would only add noise
    return pred, report_dataset(data, pred, model.stage2_trained, train_ages)


def cmd_demo(args):
    from . import plots
    from .config import Config
    from .data import random_split, synthetic_faces
    from .model import Model
    from .train import Dataset, Trainer

    check_gpu(check_device(args.device))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for stale in ("log.jsonl",):
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    t0 = time.perf_counter()
    print(f"glae demo: writing to {out}")
    images, ages = synthetic_faces(args.n, size=args.size, seed=args.seed)
    tr, va = random_split(len(ages), (0.8, 0.2), seed=args.seed)
    train = Dataset(images[tr], ages[tr])
    val = Dataset(images[va], ages[va])
    print(f"synthetic faces: {len(tr)} training, {len(va)} validation images at {args.size} px "
          f"({time.perf_counter() - t0:.1f} s)")
    cfg = Config(backbone="resnet18", head="fr+pa", image_size=args.size,
                 batch_size=args.batch, stage1_epochs=args.epochs1, stage2_epochs=args.epochs2,
                 base_lr1=args.lr1, base_lr2=args.lr2, linear_scaling=False, seed=args.seed,
                 augment={"crop": True, "flip": True, "color_jitter": False, "randaugment": False},
                 device=args.device, gpu_math=args.math)
    model = Model.from_config(cfg)
    trainer = Trainer(model, cfg, train, val, out_dir=out, progress=not args.no_progress)
    trainer.fit()
    # one pass over the validation set gives both the table and the figure's predictions;
    # they describe the model as it is after the last epoch, i.e. last.safetensors
    p, rep = _evaluate(model, val, train_ages=train.ages)
    print()
    print(_table(rep))
    mean_mae = float(np.mean(np.abs(val.ages - train.ages.mean())))
    print(f"\n(always predicting the training mean: MAE {mean_mae:.2f})")
    fig = os.path.join(out, "per_age_mae.png")
    plots.per_age_mae({k: (val.ages, p[k]) for k in rep}, train_ages=train.ages, path=fig)
    _write_json(os.path.join(out, "report.json"), rep)
    print(f"log {os.path.join(out, 'log.jsonl')}"
          f"\ncheckpoint {os.path.join(out, 'last.safetensors')} (the model above; "
          f"best.safetensors: the epoch with the best validation MAE)"
          f"\nfigure {fig}\nreport {os.path.join(out, 'report.json')}"
          f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


def _write_json(path, obj):
    """Never a half-written report (write_atomically)."""
    from ._atomic import write_atomically

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=_jsonable)

    write_atomically(path, write)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):  # a masked per-age array gives None where masked
        return o.tolist()
    raise TypeError(type(o).__name__)


def cmd_prepare(args):
    from .data import prepare

    check_output(args.out, "out")  # before the images are read
    report = prepare(args.source, args.out, size=args.size, margin=args.margin,
                     workers=args.workers, detect=args.detect, detector_weights=args.mtcnn_weights,
                     pick=args.pick)
    print(report)
    return 0


def cmd_pretrain(args):
    from .pretraining import PretrainConfig, Pretrainer

    device = check_device(args.device) if args.device else None
    if args.resume:
        if args.config or args.set:
            raise ValueError("--resume continues a run with its own settings: leave out "
                             "--config and --set")
        if device:
            check_gpu(device)
        t = Pretrainer.resume(args.resume, args.train, val=args.val, out_dir=args.out,
                              device=device, progress=not args.no_progress)
    else:
        cfg = PretrainConfig.from_toml(args.config) if args.config else PretrainConfig()
        over = parse_overrides(args.set, cfg, fields=PretrainConfig)
        if device:
            over["device"] = device
        cfg = cfg.replace(**over) if over else cfg
        check_gpu(cfg.device)
        os.makedirs(args.out, exist_ok=True)
        t = Pretrainer(args.train, cfg, val=args.val, out_dir=args.out,
                       progress=not args.no_progress)
    if t.state["epoch"] >= t.cfg.epochs:
        print(f"{args.resume}: the run is complete ({t.cfg.epochs} epochs); nothing to do")
        return 0
    print(f"glae pretrain: {len(t.train)} images of {t.num_ids} identities, "
          f"{t.batches_per_epoch()} steps per epoch, {t.cfg.epochs} epochs; "
          f"{len(t.val)} held-out images for verification")
    t.fit()
    print(f"backbone {os.path.join(args.out, 'backbone.safetensors')} "
          f"(age training: --set pretrained={os.path.join(args.out, 'backbone.safetensors')})"
          f"\nlog {os.path.join(args.out, 'log.jsonl')}"
          f"\ncheckpoint {os.path.join(args.out, 'last.safetensors')}")
    return 0


def _load_packed(path):
    from .data import PackedDataset
    from .train import Dataset

    return Dataset.from_packed(PackedDataset(path))


def parse_overrides(items, config=None, fields=None) -> dict:
    """`--set KEY=VALUE` items -> {field: value}. A value is read as JSON when it parses
    (numbers, true/false, lists, tables) and kept as the plain string otherwise, so
    `head=fr+pa` and `pretrained=tv.pth` need no quotes; a text field (head, pretrained,
    ...) always gets the text as given (`pretrained=2024`). `augment.KEY=VALUE` changes one
    augmentation option of `config` (a Config) and keeps the others."""
    from .config import Config

    fields = fields or Config  # the dataclass whose fields are set (PretrainConfig: pretrain)
    text_fields = {f.name for f in dataclasses.fields(fields) if isinstance(f.default, str)}
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set batch_size=64")
        if value == "":
            raise ValueError(f"--set {key}=: no value given (for an empty text write "
                             f"--set {key}='\"\"')")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        if key in text_fields and not isinstance(parsed, str):
            parsed = value
        table, dot, sub = key.partition(".")
        if dot:
            if table != "augment" or not sub:
                raise ValueError(f"--set {key}: only augment.OPTION can be set by a dotted key")
            base = out.get("augment", dict(config.augment if config is not None else
                                           fields().augment))
            out["augment"] = {**base, sub: parsed}
        else:
            out[key] = parsed
    return out


def cmd_train(args):
    from .config import Config
    from .model import Model
    from .train import Trainer, placed_config

    if args.resume and (args.config or args.set):
        raise ValueError("--resume continues with the checkpoint's own config: "
                         "--config and --set cannot change it")
    cfg = Config.from_toml(args.config) if args.config else Config()
    overrides = parse_overrides(args.set, cfg)
    if overrides:
        cfg = Config.from_dict({**json.loads(cfg.to_json()), **overrides})
    if args.device:
        check_gpu(check_device(args.device))
        cfg = placed_config(cfg, args.device)
    elif not args.resume:  # a resumed run's device: load_checkpoint says when it is unusable
        check_gpu(cfg.device, option="the config's device")
    train = _load_packed(args.train)
    val = _load_packed(args.val) if args.val else None
    if args.resume:
        trainer = Trainer.resume(args.resume, train, val, out_dir=args.out, device=args.device)
        done = run_complete(trainer.cfg, trainer.state)
        if done:
            print(f"{args.resume}: the run was already complete ({done}); nothing to train, "
                  f"nothing written to {args.out}")
            return 0
    else:
        trainer = Trainer(Model.from_config(cfg), cfg, train, val, out_dir=args.out)
    trainer.fit()
    if trainer.world.is_main:
        print(f"checkpoints in {args.out}")
    return 0


def run_complete(cfg, state):
    """"stage N: E/E epochs" when the trainer state `state` (Trainer.state, as resumed from a
    checkpoint) has no step left to take under `cfg`, else None. A run ends at the end of
    stage 2's last epoch (stage 2, epoch == stage2_epochs); with stage2_epochs = 0 the last
    checkpoint is written at the end of stage 1 (stage 1, epoch == stage1_epochs)."""
    stage, epoch, batch = state["stage"], state["epoch"], state["batch"]
    if batch != 0:
        return None
    if stage == 2 and epoch >= cfg.stage2_epochs:
        return f"stage 2: {epoch}/{cfg.stage2_epochs} epochs"
    if stage == 1 and cfg.stage2_epochs == 0 and epoch >= cfg.stage1_epochs:
        return f"stage 1: {epoch}/{cfg.stage1_epochs} epochs, no stage 2"
    return None


def _load_model(args):
    """The checkpoint's model on --device; without --device on the device it was trained
    on, or on the CPU (with a note) when that is a GPU this machine cannot use."""
    from .model import load
    from .train import DeviceUnavailableError

    if args.device:
        return load(args.checkpoint, device=args.device)
    try:
        return load(args.checkpoint)
    except DeviceUnavailableError as e:
        print(f"note: {e}; running on the CPU", file=sys.stderr)
        return load(args.checkpoint, device="cpu")


def cmd_eval(args):
    from .data import PackedDataset

    if args.device:
        check_gpu(check_device(args.device))
    if args.json:  # before the evaluation, not after it
        check_output(args.json, "--json")
    # the packed files first: a wrong path fails before the model is built
    data = _load_packed(args.data)
    # MAE by shot needs the training set's age histogram: --train, else the one the
    # trainer stored in the checkpoint
    train_ages = PackedDataset(args.train).ages if args.train else None
    model = _load_model(args)
    if train_ages is None:
        train_ages = model.train_ages
    pred, rep = _evaluate(model, data, train_ages=train_ages, batch_size=args.batch)
    from .distributed import world

    if not world().is_main:  # every rank has the report; rank 0 prints and writes it
        return 0
    cfg = model.config
    how = (f"stage 2 (routed: {cfg.route})" if model.stage2_trained
           else "stage 1 only (vanilla head)")
    print(f"{args.checkpoint}: {cfg.backbone} {cfg.head}, {how}, flip test "
          f"{'on' if cfg.flip_test else 'off'}; {args.data}: {len(data)} images")
    if train_ages is None:
        print("(MAE by shot: the checkpoint has no training histogram; give the training "
              "set with --train)")
    if data.sigmas is not None and np.isnan(data.sigmas).any():
        print("(epsilon-error: not reported, some images have no sigma)")
    print()
    print(format_report(rep))
    if args.json:
        _write_json(args.json, rep)
        print(f"\nreport written to {args.json}")
    if args.plots:
        _eval_plots(args.plots, data, pred, rep, train_ages)
    return 0


def _eval_plots(folder, data, pred, rep, train_ages):
    """The figures of `eval --plots`: the trade-off between the answers at a glance."""
    from . import plots

    os.makedirs(folder, exist_ok=True)
    answers = {k: pred[k] for k in rep}
    written = [plots.per_age_mae({k: (data.ages, v) for k, v in answers.items()},
                                 train_ages=train_ages,
                                 path=os.path.join(folder, "per_age_mae.png")) and "per_age_mae.png"]
    if "routed" in rep:
        plots.routing_usage(data.ages, pred["choice"], errors=answers,
                            path=os.path.join(folder, "routing_usage.png"))
        written.append("routing_usage.png")
    print(f"figures written to {folder}: {', '.join(written)}")


def _route_for(model, route):
    """Model.predict's default (the config's route once stage 2 has trained the balanced
    head, else the vanilla head); a balanced route asked of a stage-1 model is an error."""
    if route is None:
        return model.config.route if model.stage2_trained else "vanilla"
    if route != "vanilla" and not model.stage2_trained:
        raise ValueError(f"--route {route}: this checkpoint's balanced head was never trained "
                         "(stage 1 only); use --route vanilla or leave --route out")
    return route


def cmd_predict(args):
    if args.device:
        check_gpu(check_device(args.device))
    for path in args.images:  # a wrong path fails before the model is built
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {path}")
    model = _load_model(args)
    route = _route_for(model, args.route)
    if not args.detect:
        ages, heads = model.predict(args.images, route=route, return_head=True)
        for path, age, head in zip(args.images, ages, heads):
            print(f"{path}\t{age:.1f}\t{HEAD_NAMES[int(head)]}")
        return 0
    from . import detect as gd

    detector = gd.get_detector(args.mtcnn_weights)  # fails early when no weights are found
    no_face = 0
    for path in args.images:
        faces = model.predict_faces(path, route=route, margin=args.margin, weights=detector)
        if not faces:
            no_face += 1
            print(f"glae predict: no face found in {path}", file=sys.stderr)
        for i, f in enumerate(faces):
            box = ",".join(f"{v:.0f}" for v in f.box)
            print(f"{path}\t{i}\t{box}\t{f.age:.1f}\t{HEAD_NAMES[int(f.head)]}")
    return 1 if no_face == len(args.images) else 0


def cmd_export(args):
    from .export import export_onnx

    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    check_output(args.output, "output")
    try:
        export_onnx(args.checkpoint, args.output, head=args.head)
    except ImportError as e:  # the optional onnx package
        print(f"glae export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


def cmd_info(args):
    from . import info

    for dev in args.device or ():
        check_device(dev)  # "cpu" too: it exercises the check against the CPU itself
    if args.device and not args.check:
        raise ValueError("--device chooses what --check checks; add --check")
    state = info.build_info()
    print(info.format_info(state))
    if not args.check:
        return 0
    devices = args.device or info.usable_gpus(state)
    if not devices:
        if state["cuda"]["state"] == "driver_error":  # a GPU is there but unusable
            print("\nself-check: the NVIDIA driver fails (above): no GPU can be checked",
                  file=sys.stderr)
            return 1
        print("\nself-check: no usable GPU on this machine, nothing to compare with the CPU")
        return 0
    print(f"\nself-check: one ResNet-18 fr+pa training step ({info.CHECK_BATCH} images "
          f"{info.CHECK_MODEL['input_size']} px) per device and math, against the CPU")
    rows = info.self_check(devices, maths=tuple(args.math))
    print(info.format_check(rows))
    bad = [r for r in rows if not r["ok"]]
    if bad:
        print(f"{len(bad)} check(s) failed: see docs/cuda.md, \"Likely first-run failures\"",
              file=sys.stderr)
    return 1 if bad else 0


def build_parser(prog=None):
    """The argument parser; prog (the name in usage lines) defaults to _prog()."""
    prog = _prog() if prog is None else prog
    p = argparse.ArgumentParser(prog=prog,
                                description=__doc__.replace("`python -m glae", f"`{prog}"))
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a small model on synthetic faces and report",
                       description=DEMO_HELP)
    d.add_argument("--out", default="glae-demo", help="output folder (default: ./glae-demo)")
    d.add_argument("--n", type=int, default=2400, help="synthetic images (default 2400)")
    d.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    d.add_argument("--batch", type=int, default=32,
                   help="training batch size (default: %(default)s)")
    d.add_argument("--epochs1", type=int, default=6, help="stage-1 epochs (default 6)")
    d.add_argument("--epochs2", type=int, default=2, help="stage-2 epochs (default 2)")
    d.add_argument("--lr1", type=float, default=0.005,
                   help="stage-1 peak learning rate (OneCycle; default: %(default)s)")
    d.add_argument("--lr2", type=float, default=0.002,
                   help="stage-2 peak learning rate (OneCycle; default: %(default)s)")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic faces, the split and the training "
                        "(default: %(default)s)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    d.add_argument("--math", default="fp32", choices=("fp32", "tf32", "bf16"),
                   help="GPU maths with --device cuda (default fp32: the CPU's numbers)")
    d.set_defaults(func=cmd_demo)

    pr = sub.add_parser("prepare", help="decode, align and pack a data set",
                        description=PREPARE_HELP)
    pr.add_argument("source", help='"utkface:FOLDER", "csv:FILE", "chalearn:FILE", "mivia:FILE", '
                                   '"folders:ROOT" (one folder per age); for pre-training '
                                   '"identities:ROOT" (one folder per identity) or '
                                   '"identities-csv:FILE" (path,identity columns)')
    pr.add_argument("out", help="packed file to write")
    pr.add_argument("--size", type=int, default=224,
                    help="side of the aligned square crops in pixels (default: %(default)s)")
    pr.add_argument("--margin", type=float, default=0.0,
                    help="border added on each side of the aligned face, as a fraction of "
                         "the face box (0.1: 10%%; images without landmarks are centre-cropped "
                         "and ignore it) (default: %(default)s)")
    pr.add_argument("--workers", type=int, default=None,
                    help="decoding/alignment threads (default: one per CPU core)")
    pr.add_argument("--detect", default="never", choices=("never", "missing", "always"),
                    help="run MTCNN on images without landmarks (missing) or on all (always); "
                         "one face per image, images with no face are skipped and reported "
                         "(default: %(default)s)")
    pr.add_argument("--pick", default="most_confident", choices=("most_confident", "largest"),
                    help="which face to keep when MTCNN finds several (default most_confident)")
    pr.add_argument("--mtcnn-weights", default=None, metavar="DIR",
                    help="folder with pnet.pt, rnet.pt, onet.pt (default: $GLAE_MTCNN_WEIGHTS "
                         "or an installed facenet-pytorch)")
    pr.set_defaults(func=cmd_prepare)

    pt = sub.add_parser("pretrain", help="identity pre-training of the backbone (AM-softmax) "
                                         "from a packed identity set",
                        description=PRETRAIN_HELP)
    pt.add_argument("--train", required=True, help="packed identity set (prepare identities:...)")
    pt.add_argument("--val", help="packed identity set for the verification figure (default: "
                                  "hold out val_identities of the training identities)")
    pt.add_argument("--out", required=True, help="output folder (log, checkpoints, backbone)")
    pt.add_argument("--config", help="TOML file with PretrainConfig fields "
                                     "(configs/lae_pretrain.toml)")
    pt.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a PretrainConfig field (repeatable), e.g. --set epochs=6 "
                         "--set batch_size=128 --set image_size=112")
    pt.add_argument("--resume", help="last.safetensors of a run to continue (exactly)")
    pt.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the config's)")
    pt.add_argument("--no-progress", action="store_true", help="no progress bars")
    pt.set_defaults(func=cmd_pretrain)

    t = sub.add_parser("train", help="two-stage training from packed files (settings: the "
                                     "defaults, an optional TOML config, --set)",
                       description=TRAIN_HELP)
    t.add_argument("--config", help="TOML file with Config fields (see configs/)")
    t.add_argument("--train", required=True, help="packed training set")
    t.add_argument("--val", help="packed validation set")
    t.add_argument("--out", required=True, help="output folder (log, checkpoints)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field (repeatable): VALUE is JSON when it parses "
                        "(64, 1e-3, true, [10, 20]), else plain text (head=fr+pa, "
                        "pretrained=resnet18.pth); augment.OPTION=VALUE changes one "
                        "augmentation option")
    t.add_argument("--resume", help="checkpoint to resume from (exactly)")
    t.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the config's device; with --resume, the "
                        "run's own; a run continued on another device is not bit-exact)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="full metric report of a checkpoint on a packed set",
                       description=EVAL_HELP)
    e.add_argument("checkpoint", help=CHECKPOINT_HELP)
    e.add_argument("data", help="packed file to evaluate on (any size)")
    e.add_argument("--train", metavar="PACK",
                   help="packed training set: its age histogram gives the many/medium/few-shot "
                        "MAE (default: the histogram stored in the checkpoint by the trainer; "
                        "left out when neither exists)")
    e.add_argument("--json", help="also write the report here (JSON)")
    e.add_argument("--plots", metavar="DIR",
                   help="also write DIR/per_age_mae.png (each answer's MAE per age) and, after "
                        "stage 2, DIR/routing_usage.png (GLAE Fig. 4: which head answered per "
                        "age group, beside each answer's MAE per group)")
    e.add_argument("--batch", type=int, default=64, help="images per forward pass (default 64)")
    e.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the checkpoint's device, or the CPU when "
                        "that is a GPU this machine cannot use)")
    e.set_defaults(func=cmd_eval)

    pd = sub.add_parser("predict", help="print one age per image file (aligned crops), or with "
                                           "--detect one line per face found in raw photos",
                        description=PREDICT_HELP)
    pd.add_argument("checkpoint", help=CHECKPOINT_HELP)
    pd.add_argument("images", nargs="+",
                    help="image files: aligned face crops, or raw photos with --detect")
    pd.add_argument("--route", default=None, choices=ROUTES,
                    help="which head answers (default: the checkpoint's route after stage 2, "
                         "the vanilla head for a stage-1 checkpoint)")
    pd.add_argument("--detect", action="store_true",
                    help="detect every face (MTCNN), align it and print: file, face index, "
                         "box x1,y1,x2,y2, age, head")
    pd.add_argument("--margin", type=float, default=None,
                    help="alignment margin with --detect (default: the one the training data "
                         "was prepared with, from the checkpoint; else 0)")
    pd.add_argument("--mtcnn-weights", default=None, metavar="DIR",
                    help="with --detect: folder with pnet.pt, rnet.pt, onet.pt")
    pd.add_argument("--device", default=None,
                    help="cpu, cuda or cuda:N (default: the checkpoint's device, or the CPU when "
                         "that is a GPU this machine cannot use)")
    pd.set_defaults(func=cmd_predict)

    x = sub.add_parser("export", help="write an ONNX graph of the inference model",
                       description=EXPORT_HELP)
    x.add_argument("checkpoint", help=CHECKPOINT_HELP)
    x.add_argument("output", help="the .onnx file to write (its folder must exist)")
    x.add_argument("--head", default="routed", choices=("routed", "vanilla", "balanced"),
                   help="routed: Adaptive Routing between the two heads (on the image and its "
                        "flip); vanilla or balanced: that head alone (default: %(default)s)")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="how glae was built, which GPUs it can use; --check "
                                    "compares a training step on each GPU with the CPU",
                       description=INFO_HELP)
    i.add_argument("--check", action="store_true",
                   help="one small training step on each usable GPU (or --device) in each "
                        "--math, against the same step on the CPU; exit status 1 on a mismatch")
    i.add_argument("--device", action="append", metavar="cuda:N",
                   help="the GPU to check: cuda or cuda:N (repeatable; default: every usable "
                        "one); cpu checks the CPU engine against itself, which only exercises "
                        "the check")
    i.add_argument("--math", nargs="+", default=["fp32", "bf16"], choices=("fp32", "tf32", "bf16"),
                   help="GPU maths to check (default fp32 bf16)")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None):
    """Run one command; argv defaults to sys.argv[1:]. Returns the exit status (0 ok,
    2 a clear error printed on stderr) so tests can call it in-process."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError, DeviceUnavailableError) as e:
        print(f"glae {args.command}: error: {e}", file=sys.stderr)
        _end_other_ranks(e)
        return 2
    except Exception as e:  # a rank that died or hangs (distributed), or a bug
        _end_other_ranks(e)
        raise


def _end_other_ranks(e):
    """In a run of several ranks, one that fails ends them all at once (MPI_Abort) rather
    than leaving them to wait for it until their timeout."""
    from . import distributed

    w = distributed._WORLD
    if w is not None and w.size > 1:
        distributed.report_failure(w, e)
