"""Write the three glae notebooks with nbformat (outputs empty, stable cell ids).

    python notebooks/make_notebooks.py        # rewrites notebooks/*.ipynb

Edit the cells here, not in the .ipynb files, so the notebooks stay reviewable as code.
tests/test_notebooks.py executes the written notebooks (GLAE_NB_FAST=1: smaller runs).
"""
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

# The first code cell of every notebook: find glae (installed, or the checkout one level
# up when run from notebooks/ without `pip install -e .`), pick sizes, no display needed.
SETUP = '''\
import os, sys, tempfile, time
import numpy as np

try:
    import glae
except ImportError:  # not installed: use the checkout this notebook lives in
    sys.path.insert(0, os.path.abspath(".."))
    import glae
from glae import plots
from glae.data import random_split, synthetic_faces

%matplotlib inline

# Sizes: GLAE_NB_FAST=1 (the tests) makes every run smaller still.
FAST = os.environ.get("GLAE_NB_FAST") == "1"
{sizes}
WORK = tempfile.mkdtemp(prefix="glae-nb-")  # everything this notebook writes goes here
print(f"glae {{glae.__version__}}, CUDA {{glae.HAS_CUDA}}, {{glae.get_num_threads()}} threads, "
      f"fast={{FAST}}, writing to {{WORK}}")'''


def notebook(cells):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, text) in enumerate(cells):
        cell = new_markdown_cell(text) if kind == "md" else new_code_cell(text)
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives no diff noise
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


QUICKSTART = [
    ("md", """\
# glae quickstart

Train a GLAE age estimator in both stages, evaluate it with the papers' metrics, predict and
save/load, in one to two minutes on two CPU cores (`GLAE_NB_FAST=1`: seconds, and a model
that has learnt nothing yet).

The data are glae's **synthetic faces**: drawings whose proportions, wrinkles and hair
change with age, with a long-tailed age histogram shaped like UTKFace's. They let the whole
pipeline run anywhere; the errors below say nothing about accuracy on real photographs (see
`02_your_own_data.ipynb` for those). The run is tiny (600 images of 32 px, 4 + 2 epochs), so
expect a model that has only started to learn: compare it with always answering the
training mean, printed below."""),
    ("code", SETUP.format(sizes='''\
N_IMAGES = 200 if FAST else 600   # synthetic faces
SIZE = 32                          # pixels (the papers use 224)
EPOCHS1, EPOCHS2 = (1, 1) if FAST else (4, 2)   # stage 1 / stage 2 epochs''')),
    ("md", """\
## Data

`synthetic_faces` returns uint8 images `(N, S, S, 3)` and float32 ages. `random_split` is
the papers' random 80-20 protocol as index arrays (reproducible from a seed)."""),
    ("code", """\
images, ages = synthetic_faces(N_IMAGES, size=SIZE, seed=0)
tr, va = random_split(len(ages), (0.8, 0.2), seed=0)
print(images.shape, images.dtype, f"ages {ages.min():.0f}-{ages.max():.0f}, "
      f"{len(tr)} training / {len(va)} validation images")
counts = np.bincount((ages // 10).astype(int), minlength=11)
print("images per decade 0-9 ... 100:", counts.tolist())
plots.faces(images, ages, {}, n=8, title="synthetic faces, youngest to oldest");"""),
    ("md", """\
## Model and training

`glae.Model` takes any field of `glae.Config` (the papers' defaults otherwise): a ResNet-18
backbone with the Feature Rearrangement + Pixel-level Auxiliary head (`"fr+pa"`). `fit`
runs **stage 1** (the whole network, instance-balanced sampling) then **stage 2** (the
backbone frozen, a balanced copy of the head retrained with class-balanced sampling), and
prints one line per epoch with the validation MAE/CMAE of each head."""),
    ("code", """\
model = glae.Model(backbone="resnet18", head="fr+pa", image_size=SIZE, batch_size=32,
                   stage1_epochs=EPOCHS1, stage2_epochs=EPOCHS2,
                   base_lr1=0.005, base_lr2=0.002, linear_scaling=False,
                   augment={"crop": True, "flip": True, "color_jitter": False, "randaugment": False})
print(model)
t0 = time.perf_counter()
trainer = model.fit((images[tr], ages[tr]), (images[va], ages[va]), out_dir=WORK, progress=False)
print(f"trained in {time.perf_counter() - t0:.0f} s; log and checkpoints in {WORK}")"""),
    ("md", """\
## Evaluate

`model.predict` answers with **Adaptive Routing** (GLAE: the head whose prediction changes
least under a horizontal flip) and test-time flip averaging. `glae.metrics.report` computes
every metric of both papers at once: MAE, CMAE (GLAE eq. 13: each age counts once), AAR
(LAE's and GLAE's groups), group MAE/CMAE, cumulative scores, MAE by shot."""),
    ("code", """\
pred = model.predict(images[va])
rep = glae.metrics.report(ages[va], pred, train_ages=ages[tr])
print(f"MAE {rep['mae']:.2f}  CMAE {rep['cmae']:.2f}  AAR (LAE) {rep['aar_lae']['aar']:.2f}  "
      f"CS(5) {rep['cs']['cs'][5]:.2f}")
print(f"(always answering the training mean: MAE {np.mean(np.abs(ages[va] - ages[tr].mean())):.2f})")
print()
print(plots.table({"routed": rep}))"""),
    ("md", """\
## Predict

`predict` takes a batch array, one image, a list of arrays, PIL images or file paths; the
route can be forced to one head, and the answering head and the age distributions can be
returned too."""),
    ("code", """\
from PIL import Image

path = os.path.join(WORK, "face.jpg")
Image.fromarray(images[va[0]]).save(path, quality=95)
print("from a file:", model.predict([path]), " true age:", ages[va[0]])

routed, dist, head = model.predict(images[va[:5]], return_distribution=True, return_head=True)
print("routed     ", np.round(routed, 1))
print("vanilla    ", np.round(model.predict(images[va[:5]], route="vanilla"), 1))
print("balanced   ", np.round(model.predict(images[va[:5]], route="balanced"), 1))
print("head used  ", head, "(0 vanilla, 1 balanced)")
print("distribution", dist.shape, "sums to", dist.sum(1).round(3))"""),
    ("md", """\
## Save and load

One safetensors file holds both heads, the BN statistics, the optimizer momentum and the
config; the tensors carry torchvision's names and layout."""),
    ("code", """\
path = model.save(os.path.join(WORK, "model.safetensors"))
model2 = glae.load(path)
print(model2, f"{os.path.getsize(path) / 1e6:.1f} MB")
np.testing.assert_allclose(model2.predict(images[va]), pred, rtol=1e-5, atol=1e-4)
print("the loaded model predicts the same ages")"""),
    ("md", """\
Next: `02_your_own_data.ipynb` (folders, CSVs, UTKFace names, packed files, protocols) and
`03_long_tail_analysis.ipynb` (the papers' figures). From a shell, `python -m glae demo`
runs a larger version of this notebook."""),
]


OWN_DATA = [
    ("md", """\
# Your own data

From a folder of face images and their ages to a trained and evaluated model:

1. **read** the labels with a `glae.data` reader (UTKFace file names, a CSV, age folders,
   Chalearn, MIVIA) into records, with a report of everything it could not use;
2. **prepare** once: decode, align (5 landmarks when given, else centre crop), resize and
   write one **packed file** that training memory-maps;
3. apply a **protocol**: remove duplicates, split, build a balanced test set;
4. train briefly and evaluate.

So that it runs anywhere, the notebook first writes a small fixture: synthetic faces saved
as JPEGs with UTKFace-style names, plus a few files a real folder tends to contain (a
malformed name, a copy of an image, a copy with a different age). A cell below shows how to
point it at the real UTKFace development subset instead."""),
    ("code", SETUP.format(sizes='''\
N_IMAGES = 240 if FAST else 800   # fixture images
SIZE = 32                          # packed crop size in pixels (the papers use 224)
EPOCHS1, EPOCHS2 = (1, 1) if FAST else (4, 2)''')),
    ("md", """\
## A fixture folder in UTKFace's naming

UTKFace keeps the labels in the file names: `<age>_<gender>_<race>_<date>.jpg.chip.jpg`."""),
    ("code", """\
import shutil
from PIL import Image

FIXTURE = os.path.join(WORK, "utkface-fixture")
os.makedirs(FIXTURE)
faces_, ages_ = synthetic_faces(N_IMAGES, size=64, seed=1)
rng = np.random.default_rng(1)
names = []
for i, (im, a) in enumerate(zip(faces_, ages_)):
    name = f"{int(a)}_{rng.integers(2)}_{rng.integers(5)}_2017011{i:09d}.jpg.chip.jpg"
    Image.fromarray(im).save(os.path.join(FIXTURE, name), quality=92)
    names.append(name)
# what real folders contain: a copy under another name (same age), a copy whose name
# carries a different age (which label is right?), a name without an age, a non-image
shutil.copy(os.path.join(FIXTURE, names[0]), os.path.join(FIXTURE, names[0].replace("_2017", "_2018")))
a1 = int(names[1].split("_")[0])
shutil.copy(os.path.join(FIXTURE, names[1]), os.path.join(FIXTURE, f"{a1 + 7}_0_0_20190101000000001.jpg.chip.jpg"))
shutil.copy(os.path.join(FIXTURE, names[2]), os.path.join(FIXTURE, "unknown_0_0_20170101.jpg.chip.jpg"))
open(os.path.join(FIXTURE, "notes.txt"), "w").write("not an image")
print(len(os.listdir(FIXTURE)), "files in", FIXTURE)"""),
    ("md", """\
### Using the real UTKFace development subset

The project's development data (5,711 real faces, not shipped with glae) lives in
`shared/data/utkface-dev/images` beside the checkout, i.e. `../shared/data/utkface-dev`
seen from the repository root. Set `USE_REAL = True` to use it when it is present (or set
the environment variable `GLAE_UTKFACE_DEV` to the folder). Preparing all of it takes a
minute or two; training on it for real wants more epochs and larger images than here."""),
    ("code", """\
USE_REAL = False
REPO = os.path.dirname(os.path.dirname(os.path.abspath(glae.__file__)))
REAL = os.environ.get("GLAE_UTKFACE_DEV") or os.path.join(REPO, "..", "shared", "data", "utkface-dev", "images")
SOURCE = REAL if USE_REAL and os.path.isdir(REAL) else FIXTURE
print("real subset present:", os.path.isdir(REAL), "| reading", SOURCE)"""),
    ("md", """\
## Read

Every reader returns `(records, report)`: a `Record` per usable image (path, age, optional
sigma, identity, landmarks, extra fields) and a `Report` listing what was skipped and why,
and what was kept with a warning. Nothing crashes on one bad file name."""),
    ("code", """\
from glae.data import read_csv, read_utkface

records, report = read_utkface(SOURCE)
print(report.summary())
for problem in report.problems[:6]:
    print(" ", problem)
print(records[0])"""),
    ("md", """\
The same images described by a CSV (`path,age[,sigma,identity,lx1,ly1,...]`, paths relative
to the CSV's folder); `read_csv(path, columns={...})` maps other column names."""),
    ("code", """\
import csv

csv_path = os.path.join(WORK, "labels.csv")
with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "age"])
    for r in records[:20]:
        w.writerow([os.path.relpath(r.path, WORK), r.age])
    w.writerow(["missing.jpg", 30])  # reported, not fatal
csv_records, csv_report = read_csv(csv_path)
print(csv_report)"""),
    ("md", """\
## Prepare to a packed file

`prepare` decodes each image once on a thread pool, aligns it (`align_face` with 5
landmarks, a centre crop and resize without), hashes the decoded pixels and writes the
packed file. Its report adds the images that could not be decoded. The same step from a
shell: `python -m glae prepare utkface:FOLDER faces.glaepack --size 32`."""),
    ("code", """\
from glae.data import PackedDataset, prepare

packed_path = os.path.join(WORK, "faces.glaepack")
t0 = time.perf_counter()
prep_report = prepare(records, packed_path, size=SIZE, workers=2)
print(prep_report.summary(), f"({time.perf_counter() - t0:.1f} s)")
ds = PackedDataset(packed_path)
print(ds, f"{os.path.getsize(packed_path) / 1e6:.1f} MB;", "images:", type(ds.images).__name__, ds.images.shape)
print("meta:", {k: ds.meta[k] for k in ("size", "aligned")})"""),
    ("md", """\
## Protocols

- `deduplicate` by content hash before splitting, so no image is on both sides through a
  copy; copies whose ages disagree are all dropped (no one knows which label is right);
- `random_split`: Morph II's random 80-20, MIVIA's 4:1 (`subject_split` when identities are
  known, as for CACD);
- `balanced_subset`: a test set with the same number of images of every age (MIVIA-LT: 10
  per age), drawn from the test part."""),
    ("code", """\
from glae.data import balanced_subset, deduplicate

kept, dedup = deduplicate(ds.hashes, ds.ages)
print(f"deduplicate: {dedup.n_in} -> {dedup.n_kept} images; dropped copies {dedup.dropped_copies}, "
      f"conflicting labels {dedup.dropped_conflicts}")
tr_part, te_part = random_split(len(kept), (0.8, 0.2), seed=0)
train_idx, test_idx = kept[tr_part], kept[te_part]
lt_idx = balanced_subset(ds.ages, n_per_age=2, indices=test_idx, seed=0)
print(f"train {len(train_idx)}, test {len(test_idx)}, balanced test {len(lt_idx)} "
      f"({len(np.unique(ds.ages[lt_idx]))} ages x 2)")"""),
    ("md", """\
## Train and evaluate

`glae.Dataset(images, ages)` takes the memmapped images indexed by a protocol's indices
(`ds.images[idx]` reads just those crops into memory)."""),
    ("code", """\
train = glae.Dataset(ds.images[train_idx], ds.ages[train_idx])
test = glae.Dataset(ds.images[test_idx], ds.ages[test_idx])
model = glae.Model(image_size=SIZE, batch_size=32, stage1_epochs=EPOCHS1, stage2_epochs=EPOCHS2,
                   base_lr1=0.005, base_lr2=0.002, linear_scaling=False,
                   augment={"crop": True, "flip": True, "color_jitter": False, "randaugment": False})
trainer = model.fit(train, test, out_dir=os.path.join(WORK, "run"), progress=False)"""),
    ("code", """\
reports = trainer.evaluate(test, stage=2)          # vanilla, balanced and routed heads
print("test set (long-tailed like the training set)")
print(plots.table(reports))
lt = glae.Dataset(ds.images[lt_idx], ds.ages[lt_idx])
print("\\nbalanced test set (every age equally often: MAE = CMAE)")
print(plots.table(trainer.evaluate(lt, stage=2)))"""),
    ("md", """\
The same from a shell, on packed files (see `python -m glae train --help`):

```bash
python -m glae prepare utkface:shared/data/utkface-dev/images utk.glaepack --size 112
python -m glae train --train train.glaepack --val val.glaepack --out runs/utk --set image_size=112
python -m glae eval runs/utk/best.safetensors test.glaepack --json report.json
```"""),
]


LONG_TAIL = [
    ("md", """\
# Long-tail analysis: the papers' views

The figures and tables of GLAE (and LAE) for a GLAE model ("fr+pa", both stages) against
the l_base baseline (a "gap" model), drawn with `glae.plots` from `glae.metrics`:

- **Fig. 1**: MAE per age for l_base and the vanilla, balanced and routed answers, over the training
  age histogram, with each answer's CMAE as a dashed line;
- **Fig. 4**: which head Adaptive Routing used, per age group;
- predicted vs true age; training curves from the trainer's `log.jsonl`;
- **Fig. 3**: faces with their true and predicted ages;
- **Table IX**-style group MAE / CMAE (children and teenagers 0-17, adults 18-65, elderly
  66-100), AAR, and MAE by shot (many / medium / few training images per age).

The model is trained here on synthetic faces for a few epochs, so the curves show the
method's machinery, not the papers' numbers; point `train`/`test` at your own packed data
(see `02_your_own_data.ipynb`) and train longer for real figures."""),
    ("code", SETUP.format(sizes='''\
N_IMAGES = 240 if FAST else 1000
SIZE = 32
EPOCHS1, EPOCHS2 = (1, 1) if FAST else (4, 2)''')),
    ("code", """\
images, ages = synthetic_faces(N_IMAGES, size=SIZE, seed=2)
tr, te = random_split(len(ages), (0.7, 0.3), seed=0)
train, test = glae.Dataset(images[tr], ages[tr]), glae.Dataset(images[te], ages[te])
model = glae.Model(image_size=SIZE, batch_size=32, stage1_epochs=EPOCHS1, stage2_epochs=EPOCHS2,
                   base_lr1=0.005, base_lr2=0.002, linear_scaling=False,
                   augment={"crop": True, "flip": True, "color_jitter": False, "randaugment": False})
RUN = os.path.join(WORK, "run")
trainer = model.fit(train, test, out_dir=RUN, progress=False)"""),
    ("md", """\
The baseline the papers compare against: the standard network of LAE / row l_base of GLAE
Table II, global average pooling + a linear classifier trained with l_base = KL + L1 for the
same stage-1 epochs, without Feature Rearrangement, Pixel-level Auxiliary learning or a
second stage."""),
    ("code", """\
baseline = glae.Model(image_size=SIZE, head="gap", loss="base", batch_size=32,
                      stage1_epochs=EPOCHS1, stage2_epochs=0, base_lr1=0.005,
                      linear_scaling=False,
                      augment={"crop": True, "flip": True, "color_jitter": False, "randaugment": False})
baseline.fit(train, test, progress=False)
p_base = baseline.predict(test.images, route="vanilla")"""),
    ("md", """\
`trainer.predict` gives, for every test image, the vanilla head's age, the balanced head's,
the routed answer and which head answered (0 vanilla, 1 balanced); `trainer.evaluate` the
full metric report of each."""),
    ("code", """\
p = trainer.predict(test)
y = test.ages
reports = {"l_base (gap)": glae.metrics.report(test.ages, p_base, train_ages=train.ages),
           **trainer.evaluate(test, stage=2)}
for head in ("l_base (gap)", "vanilla", "balanced", "routed"):
    print(f"{head:<9} MAE {reports[head]['mae']:.2f}  CMAE {reports[head]['cmae']:.2f}")"""),
    ("md", "## Fig. 1: MAE per age over the training histogram"),
    ("code", """\
plots.per_age_mae({"l_base (gap)": (y, p_base), **{h: (y, p[h]) for h in ("vanilla", "balanced", "routed")}},
                  train_ages=train.ages, path=os.path.join(WORK, "fig1_per_age_mae.png"));"""),
    ("md", """\
## Fig. 4: routing usage per age group

GLAE reports that adults mostly get the vanilla head and children and the elderly the
balanced one."""),
    ("code", """\
plots.routing_usage(y, p["choice"], path=os.path.join(WORK, "fig4_routing.png"));
for group, u in reports["routed"]["routing"].items():
    print(group, "empty" if u is None else f"vanilla {u['vanilla']:.2f}, balanced {u['balanced']:.2f} ({u['count']} images)")"""),
    ("code", """\
plots.routing_usage(y, p["choice"], edges=glae.metrics.GLAE_GROUPS,
                    title="routing usage per decade (GLAE eq. 16 groups)");"""),
    ("md", "## Predicted vs true age, coloured by the head that answered"),
    ("code", """\
plots.scatter(y, p["routed"], choice=p["choice"], title=f"routed: MAE {reports['routed']['mae']:.2f}");"""),
    ("md", "## Training curves from log.jsonl"),
    ("code", """\
import json

with open(os.path.join(RUN, "log.jsonl")) as f:
    log = [json.loads(line) for line in f]
print(len(log), "epochs logged; keys of one entry:", sorted(log[0]), "| train:", sorted(log[0]["train"]))
plots.training_curves(RUN);"""),
    ("md", """\
## Fig. 3: faces with true (T) and predicted ages

Spread over the age range, then the faces where the vanilla head was furthest off."""),
    ("code", """\
plots.faces(test.images, y, {"routed": p["routed"], "vanilla": p["vanilla"]}, n=8);
worst = np.argsort(-np.abs(p["vanilla"] - y))[:8]
plots.faces(test.images, y, {"routed": p["routed"], "vanilla": p["vanilla"]}, pick=worst,
            title="largest vanilla errors");"""),
    ("md", """\
## Table IX: group MAE and CMAE, AAR, shots

MAE weights every image, CMAE every age present in the group (GLAE eq. 13), so CMAE is what
exposes the tail. AAR = max(0, 7 - MAE) + max(0, 3 - sigma) over age groups (LAE eq. 6-7
with Table 1's groups; GLAE eq. 15-16 with decades)."""),
    ("code", """\
print(plots.table(reports))
print()
print(f"{'':<10}{'AAR LAE':>9}{'AAR GLAE':>10}{'sigma':>7}   MAE by shot (many / medium / few)")
for head, rep in reports.items():
    shots = " / ".join("-" if rep["shot"][s] is None else f"{rep['shot'][s]['mae']:.2f}"
                       for s in glae.metrics.SHOTS)
    print(f"{head:<10}{rep['aar_lae']['aar']:>9.2f}{rep['aar_glae']['aar']:>10.2f}"
          f"{rep['aar_lae']['sigma']:>7.2f}   {shots}")"""),
    ("code", """\
# per-group AAR table of LAE (Table 1's groups): MAE per group of the routed answer
g = reports["routed"]["aar_lae"]
print({k: (None if v is None else round(v, 2)) for k, v in g["group_mae"].items()})
print("groups without test images:", g["missing"])"""),
]


def main():
    for name, cells in (("01_quickstart.ipynb", QUICKSTART), ("02_your_own_data.ipynb", OWN_DATA),
                        ("03_long_tail_analysis.ipynb", LONG_TAIL)):
        path = os.path.join(HERE, name)
        nbformat.write(notebook(cells), path, version=4)
        print("wrote", path)


if __name__ == "__main__":
    main()
