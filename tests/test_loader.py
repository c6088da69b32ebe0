"""The threaded Loader: every index once per epoch, same batches for any thread count,
clean shutdown mid-epoch, no leaks, worker errors as exceptions, bad input."""
import gc
import os
import sys
import time

import numpy as np
import pytest

from glae import _C

N = 50


@pytest.fixture
def data(rng):
    images = rng.integers(0, 256, (N, 28, 28, 3), dtype=np.uint8)
    ages = np.arange(N, dtype=np.float32)          # age == index: the labels identify samples
    sigmas = (np.arange(N) * 0.5 + 1).astype(np.float32)
    return images, ages, sigmas


def run(loader):
    return [tuple(a.copy() for a in b) for b in loader]


@pytest.mark.parametrize("threads", [1, 3])
def test_one_epoch_every_index_once(data, rng, threads):
    images, ages, sigmas = data
    order = rng.permutation(N).astype(np.int64)
    L = _C.Loader(images, ages, sigmas, order, 8, out_size=20, seed=3, epoch=1, threads=threads)
    assert len(L) == 7
    batches = run(L)
    assert [len(b[1]) for b in batches] == [8] * 6 + [2]
    seen = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(seen, order.astype(np.float32))  # in order, each once
    np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), sigmas[order])
    assert all(b[0].shape == (len(b[1]), 20, 20, 3) and b[0].dtype == np.float32 for b in batches)
    with pytest.raises(StopIteration):
        next(L)


def test_batches_match_augment_batch_for_any_threads(data, rng):
    images, ages, sigmas = data
    order = np.concatenate([rng.permutation(N), rng.integers(0, N, 13)]).astype(np.int64)  # with repeats
    want = _C.augment_batch(images, order, 20, 9, 2)
    for threads, prefetch in [(1, 1), (2, 0), (4, 2)]:
        L = _C.Loader(images, ages, sigmas, order, 6, out_size=20, seed=9, epoch=2,
                      threads=threads, prefetch=prefetch)
        x = np.concatenate([b[0] for b in L])
        np.testing.assert_array_equal(x, want)


def test_drop_last_and_labels_optional(data):
    images, _, _ = data
    L = _C.Loader(images, None, None, np.arange(N, dtype=np.int64), 16, out_size=12, drop_last=True)
    b = run(L)
    assert len(L) == 3 and len(b) == 3 and all(len(x[1]) == 16 for x in b)
    assert all((x[1] == 0).all() and (x[2] == 0).all() for x in b)


def test_returned_batches_are_not_overwritten(data):
    images, ages, sigmas = data
    L = _C.Loader(images, ages, sigmas, np.arange(N, dtype=np.int64), 5, out_size=12, threads=2, prefetch=1)
    kept = list(L)  # holding every batch while the ring is reused
    ref = _C.augment_batch(images, np.arange(N, dtype=np.int64), 12, 0, 0)
    np.testing.assert_array_equal(np.concatenate([k[0] for k in kept]), ref)


def test_dropped_batch_arrays_are_refilled_held_ones_never(data):
    """A batch the caller no longer references is refilled by a later next() instead of a
    fresh allocation; a batch still referenced (a variable, a view, a list) never is."""
    images, ages, sigmas = data
    order = np.arange(N, dtype=np.int64)
    ref = _C.augment_batch(images, order, 12, 0, 0)
    L = _C.Loader(images, ages, sigmas, order, 5, out_size=12, threads=2)
    addresses, held, views = [], [], []
    for i, (x, a, s) in enumerate(L):
        np.testing.assert_array_equal(x, ref[5 * i:5 * i + 5])  # what a fresh array would hold
        addresses.append(x.__array_interface__["data"][0])
        if i == 3:
            held.append(x)
        if i == 6:
            views.append(x[1:3])
    # a for loop keeps one batch alive while the next is filled: two arrays take turns
    assert len(set(addresses)) < len(addresses)
    np.testing.assert_array_equal(held[0], ref[15:20])   # kept batch 3 was never refilled
    np.testing.assert_array_equal(views[0], ref[31:33])  # nor batch 6, seen through a view


def test_drop_mid_epoch_is_clean(data):
    images, ages, sigmas = data
    big = np.repeat(images, 8, axis=0)
    t = time.perf_counter()
    for threads in (1, 2, 4):
        L = _C.Loader(big, None, None, np.arange(len(big), dtype=np.int64), 4, out_size=64,
                      threads=threads, prefetch=3)
        next(L)
        del L  # joins the workers (they stop between samples)
    L = _C.Loader(big, None, None, np.arange(len(big), dtype=np.int64), 4, out_size=64, threads=2)
    next(L)
    L.close()
    with pytest.raises(StopIteration):
        next(L)
    L.close()  # idempotent
    assert time.perf_counter() - t < 10


def test_many_loaders_no_leak(data):
    images, ages, sigmas = data

    def rss_kb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4

    def once(k):
        L = _C.Loader(images, ages, sigmas, np.arange(N, dtype=np.int64), 10, out_size=16,
                      threads=1 + k % 3, seed=k)
        if k % 2:
            next(L)

    for k in range(20):
        once(k)
    gc.collect()
    refs = [sys.getrefcount(a) for a in (images, ages, sigmas)]
    before = rss_kb()
    for k in range(300):
        once(k)
    gc.collect()
    assert [sys.getrefcount(a) for a in (images, ages, sigmas)] == refs
    if not os.environ.get("GLAE_SANITIZED"):  # ASan's quarantine holds freed memory: its
        # LeakSanitizer run (bench/sanitize.sh --leaks) checks the Loader instead
        assert rss_kb() - before < 20_000  # 300 loaders x 2 slots x 30 KB would be ~18 MB if leaked


def test_loader_keeps_its_arrays_alive(rng):
    images = rng.integers(0, 256, (6, 10, 10, 3), dtype=np.uint8)
    ages = np.arange(6, dtype=np.float32)
    ref = _C.augment_batch(images, np.arange(6, dtype=np.int64), 8, 0, 0)
    L = _C.Loader(images, ages, None, np.arange(6, dtype=np.int64), 3, out_size=8)
    del images, ages
    gc.collect()
    x = np.concatenate([b[0] for b in L])
    np.testing.assert_array_equal(x, ref)


def test_worker_error_raises(data):
    images, ages, sigmas = data
    order = np.arange(20, dtype=np.int64)
    order[10] = N + 5  # in the third batch of 4
    L = _C.Loader(images, ages, sigmas, order, 4, out_size=12, threads=2)
    assert len(next(L)[1]) == 4
    assert len(next(L)[1]) == 4
    with pytest.raises(ValueError, match=r"index 55 at position 10 outside \[0, 50\)"):
        next(L)
    with pytest.raises(StopIteration):
        next(L)


def test_bad_input(data):
    images, ages, sigmas = data
    idx = np.arange(N, dtype=np.int64)
    with pytest.raises(TypeError, match="images must have dtype uint8"):
        _C.Loader(images.astype(np.float32), ages, sigmas, idx, 4)
    with pytest.raises(ValueError, match="images: dimension 3 must be 3"):
        _C.Loader(images[..., :2].copy(), ages, sigmas, idx, 4)
    with pytest.raises(ValueError, match="ages: dimension 0 must be 50"):
        _C.Loader(images, ages[:10].copy(), sigmas, idx, 4)
    with pytest.raises(TypeError, match="sigmas must have dtype float32"):
        _C.Loader(images, ages, sigmas.astype(np.float64), idx, 4)
    with pytest.raises(TypeError, match="indices must have dtype int64"):
        _C.Loader(images, ages, sigmas, idx.astype(np.int32), 4)
    with pytest.raises(ValueError, match="batch_size"):
        _C.Loader(images, ages, sigmas, idx, 0)
    with pytest.raises(ValueError, match="out_size"):
        _C.Loader(images, ages, sigmas, idx, 4, out_size=-1)
    with pytest.raises(ValueError, match="threads"):
        _C.Loader(images, ages, sigmas, idx, 4, threads=0)
    with pytest.raises(ValueError, match="unknown key 'blur'"):
        _C.Loader(images, ages, sigmas, idx, 4, blur=1.0)
    with pytest.raises(TypeError, match="missing required argument 'batch_size'"):
        _C.Loader(images, ages, sigmas, idx)
    assert list(_C.Loader(images, ages, sigmas, idx[:0], 4)) == []


def _in_subprocess(code):
    """Run `code` in a fresh interpreter (a crash or a hang must not take pytest with it)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_close_from_two_threads_at_once():
    """The second close() waits for nothing and used to free the images under the first
    one's still-running workers (a segfault); it is now refused while the first joins."""
    rc, out = _in_subprocess("""
import threading, time, numpy as np
from glae import _C
for trial in range(6):
    imgs = np.random.randint(0, 255, (4, 512, 512, 3), np.uint8)
    L = _C.Loader(imgs, None, None, np.arange(4, dtype=np.int64).repeat(50), 4, out_size=256,
                  threads=2, prefetch=2, crop=True, randaugment=True)
    del imgs
    time.sleep(0.02)
    bar, errs = threading.Barrier(2), []
    def closer():
        bar.wait()
        try:
            L.close()
        except RuntimeError as e:
            errs.append(str(e))
    ts = [threading.Thread(target=closer) for _ in range(2)]
    [t.start() for t in ts]; [t.join() for t in ts]
    assert all("in use by another thread" in e for e in errs), errs
    assert list(L) == []
print("ok")
""")
    assert rc == 0 and out.strip().endswith("ok"), out


def test_loader_after_fork_is_an_error_not_a_hang():
    """fork copies no threads: iterating the Loader in the child raised nothing and never
    ended, and the child hung at exit joining workers that are not there."""
    rc, out = _in_subprocess("""
import os, sys, numpy as np
from glae import _C
L = _C.Loader(np.zeros((8, 32, 32, 3), np.uint8), None, None, np.arange(8, dtype=np.int64).repeat(20), 4, out_size=28, threads=2)
next(L)
pid = os.fork()
if pid == 0:
    try:
        next(L)
        code = 3
    except RuntimeError as e:
        code = 0 if "after fork" in str(e) else 4
    sys.exit(code)  # and the Loader is freed at exit without joining
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
assert len(list(L)) == 39
print("ok")
""")
    assert rc == 0 and "child 0" in out and out.strip().endswith("ok"), out
