"""The readers and prepare on the real UTKFace development subset (../shared/data/utkface-dev).
Skipped where the folder is absent (a user's fresh clone). GLAE_UTKFACE_DEV overrides the
location (e.g. when running from a worktree that has no ../shared beside it)."""
import os

import numpy as np
import pytest

from glae import _C
from glae.data import PackedDataset, deduplicate, prepare, random_split, read_utkface

from conftest import UTKFACE_DEV

FOLDER = os.environ.get("GLAE_UTKFACE_DEV", UTKFACE_DEV)
pytestmark = pytest.mark.skipif(not os.path.isdir(FOLDER), reason=f"{FOLDER} absent")
HAS_ALIGN = hasattr(_C, "center_crop_resize")


@pytest.fixture(scope="module")
def utk():
    return read_utkface(FOLDER)


def test_read_all_names(utk):
    recs, rep = utk
    assert rep.n_seen == 5711 and len(recs) == 5711  # the age is always readable
    assert not rep.skipped
    malformed = {os.path.basename(p.source) for p in rep.warnings if "malformed" in p.reason}
    # the three odd names the subset is known to hold (README: missing race, missing dot)
    assert {"61_1_20170109142408075.jpg.chip.jpg", "55_0_0_20170116232725357jpg.chip.jpg"} <= malformed
    assert len(malformed) <= 10
    ages = np.array([r.age for r in recs])
    assert ages.min() >= 1 and ages.max() == 100  # 101..116 clipped, each listed as a warning
    over = sum(int(os.path.basename(r.path).split("_")[0]) > 100 for r in recs)
    assert over > 0 and sum("clipped" in p.reason for p in rep.warnings) == over
    decades = np.bincount(np.minimum(ages // 10, 10).astype(int), minlength=11)
    assert decades[2] == decades.max()  # 20-29 the head, as the README's counts say


@pytest.mark.skipif(not HAS_ALIGN, reason="glae._C has no center_crop_resize in this build")
def test_prepare_a_few_hundred(utk, tmp_path):
    recs, _ = utk
    pick = np.random.default_rng(0).choice(len(recs), 300, replace=False)
    sel = [recs[i] for i in sorted(pick)]
    rep = prepare(sel, tmp_path / "utk64.glae", size=64, workers=2)
    assert rep.n_used == 300 and not rep.skipped
    ds = PackedDataset(tmp_path / "utk64.glae")
    assert ds.images.shape == (300, 64, 64, 3)
    assert ds.align_size == 64 and ds.align_margin == 0.0  # for predict_faces on raw photos
    np.testing.assert_array_equal(ds.ages, [r.age for r in sel])
    assert ds.paths == [r.path for r in sel]
    assert 40 < ds.images.mean() < 220 and ds.images.std() > 20  # real photographs, not blank
    kept, drep = deduplicate(ds.hashes, ds.ages)
    assert len(kept) == 300  # the dev subset was deduplicated already
    tr, te = random_split(ds.subset(kept), (0.8, 0.2), seed=0)
    assert len(tr) == 240 and len(te) == 60
    loader_epoch(ds)


def loader_epoch(ds):
    """One epoch of the C Loader over the memory-mapped file, as training drives it."""
    n = len(ds)
    order = np.random.default_rng(1).permutation(n).astype(np.int64)
    tags = np.arange(n, dtype=np.float32)  # passed as "ages": the labels name the sample
    # training augmentations (crop, flip, jitter, RandAugment), GLAE normalisation
    L = _C.Loader(ds.images, tags, ds.ages, order, 32, out_size=64, seed=5, epoch=1, threads=2,
                  norm="glae")
    assert len(L) == 10
    batches = [(x.copy(), t.copy(), a.copy()) for x, t, a in L]
    assert [len(t) for _, t, _ in batches] == [32] * 9 + [12]
    seen = np.concatenate([t for _, t, _ in batches]).astype(np.int64)
    np.testing.assert_array_equal(seen, order)  # every index, once, in the sampler's order
    np.testing.assert_array_equal(np.bincount(seen, minlength=n), np.ones(n))
    np.testing.assert_array_equal(np.concatenate([a for _, _, a in batches]), ds.ages[order])
    x = np.concatenate([b for b, _, _ in batches])
    assert x.shape == (n, 64, 64, 3) and x.dtype == np.float32 and np.isfinite(x).all()
    assert x.min() >= -127.5 / 128 and x.max() <= 127.5 / 128  # (x - 127.5) / 128 of uint8
    assert -0.6 < x.mean() < 0.6 and x.std() > 0.1  # real photographs, not blank
    # the same batches as the reference augment_batch on those indices (determinism)
    np.testing.assert_array_equal(x[:32], _C.augment_batch(ds.images, order[:32], 64, 5, 1, norm="glae"))
    # augmentations off, ImageNet normalisation: exactly the stored crops, normalised
    off = dict(crop=False, flip=0.0, jitter=False, randaugment=False, norm="imagenet")
    L = _C.Loader(ds.images, tags, None, order, 64, out_size=64, threads=2, **off)
    x = np.concatenate([b for b, _, _ in L])
    ref = (np.asarray(ds.images)[order] / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-6)
