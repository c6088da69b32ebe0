"""OneCycleLR / MultiStepLR / linear scaling against the formulas PyTorch documents,
written out independently here."""
import math

import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak


def cos_anneal(start, end, pct):
    # cosine from start (pct=0) to end (pct=1)
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def ref_onecycle(step, total, max_lr, pct_start=0.3, div=25.0, final_div=1e4,
                 base_m=0.85, max_m=0.95):
    """Two-phase OneCycleLR: warm-up ends at float(pct_start * total) - 1, the anneal at
    total - 1 (PyTorch's phase table)."""
    initial = max_lr / div
    low = initial / final_div
    up_end = float(pct_start * total) - 1
    if step <= up_end:
        t = step / up_end
        return cos_anneal(initial, max_lr, t), cos_anneal(max_m, base_m, t)
    t = (step - up_end) / ((total - 1) - up_end)
    return cos_anneal(max_lr, low, t), cos_anneal(base_m, max_m, t)


@pytest.mark.parametrize("total", [10, 77, 100, 1000, 24 * 390])
@pytest.mark.parametrize("max_lr", [0.005, 0.1])
def test_onecycle_matches_formula(total, max_lr):
    for step in sorted(set(np.linspace(0, total, 60).astype(int).tolist())):
        lr, mom = _C.onecycle(step, total, max_lr)
        want_lr, want_m = ref_onecycle(step, total, max_lr)
        assert lr == pytest.approx(want_lr, rel=1e-12, abs=1e-18)
        assert mom == pytest.approx(want_m, rel=1e-12)


@pytest.mark.parametrize("total", [100, 1000, 4000])
def test_onecycle_landmarks(total):
    max_lr = 0.04
    lr0, m0 = _C.onecycle(0, total, max_lr)
    assert lr0 == pytest.approx(max_lr / 25, rel=1e-12)
    assert m0 == pytest.approx(0.95, rel=1e-12)
    # pct_start * total is an integer here: the peak is at step 0.3 * total - 1 exactly
    peak = round(0.3 * total) - 1
    lrp, mp = _C.onecycle(peak, total, max_lr)
    assert lrp == pytest.approx(max_lr, rel=1e-12)
    assert mp == pytest.approx(0.85, rel=1e-12)
    assert _C.onecycle(peak - 1, total, max_lr)[0] < lrp > _C.onecycle(peak + 1, total, max_lr)[0]
    lrf, mf = _C.onecycle(total - 1, total, max_lr)
    assert lrf == pytest.approx(max_lr / 25 / 1e4, rel=1e-9)
    assert mf == pytest.approx(0.95, rel=1e-12)
    # the lr rises monotonically to the peak and falls after it
    lrs, moms = _C.onecycle_steps(np.arange(total, dtype=np.int64), total, max_lr)
    assert np.all(np.diff(lrs[:peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) < 0)
    assert np.all(np.diff(moms[:peak + 1]) < 0) and np.all(np.diff(moms[peak:]) > 0)


def test_onecycle_options():
    total, max_lr = 200, 0.1
    # custom factors and momenta
    lr, m = _C.onecycle(0, total, max_lr, div_factor=10.0, base_momentum=0.8, max_momentum=0.9)
    assert lr == pytest.approx(0.01) and m == pytest.approx(0.9)
    # pct_start moves the peak
    assert _C.onecycle(99, total, max_lr, pct_start=0.5)[0] == pytest.approx(max_lr)
    # no momentum cycling: momentum is None
    lr2, m2 = _C.onecycle(17, total, max_lr, cycle_momentum=False)
    assert m2 is None and lr2 == pytest.approx(ref_onecycle(17, total, max_lr)[0], rel=1e-12)
    # linear annealing: straight lines between the same landmarks
    up_end = 0.3 * total - 1
    for s in (0, 10, 59, 60, 150, 199):
        if s <= up_end:
            t = s / up_end
            want = (max_lr - max_lr / 25) * t + max_lr / 25
        else:
            t = (s - up_end) / (total - 1 - up_end)
            want = (max_lr / 25 / 1e4 - max_lr) * t + max_lr
        assert _C.onecycle(s, total, max_lr, anneal_strategy="linear")[0] == pytest.approx(want, rel=1e-12)
    # three phases: up to max, back to initial at 2 * pct * total - 2, then to min
    init = max_lr / 25
    assert _C.onecycle(59, total, max_lr, three_phase=True)[0] == pytest.approx(max_lr)
    lr3, m3 = _C.onecycle(118, total, max_lr, three_phase=True)
    assert lr3 == pytest.approx(init) and m3 == pytest.approx(0.95)
    t = (150 - 118) / (199 - 118)
    lr4, m4 = _C.onecycle(150, total, max_lr, three_phase=True)
    assert lr4 == pytest.approx(cos_anneal(init, init / 1e4, t), rel=1e-12)
    assert m4 == pytest.approx(0.95)


def test_onecycle_steps_matches_scalar():
    steps = np.array([0, 5, 29, 30, 77, 100], np.int64)
    lrs, moms = _C.onecycle_steps(steps, 100, 0.1)
    for s, lr, m in zip(steps, lrs, moms):
        assert (lr, m) == _C.onecycle(int(s), 100, 0.1)
    lrs, moms = _C.onecycle_steps(steps, 100, 0.1, cycle_momentum=False)
    assert moms is None and lrs.dtype == np.float64
    assert _C.onecycle_steps(np.zeros(0, np.int64), 100, 0.1)[0].shape == (0,)


def test_onecycle_bad_arguments():
    with pytest.raises(ValueError, match=r"step 101 outside \[0, total_steps=100\]"):
        _C.onecycle(101, 100, 0.1)
    with pytest.raises(ValueError, match="outside"):
        _C.onecycle(-1, 100, 0.1)
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        _C.onecycle(0, 0, 0.1)
    with pytest.raises(TypeError, match="total_steps must be an int"):
        _C.onecycle(0, 100.0, 0.1)
    with pytest.raises(TypeError, match="step must be an int"):
        _C.onecycle(1.5, 100, 0.1)
    with pytest.raises(ValueError, match=r"pct_start must be in \[0, 1\]"):
        _C.onecycle(0, 100, 0.1, pct_start=1.5)
    with pytest.raises(ValueError, match="div_factor"):
        _C.onecycle(0, 100, 0.1, div_factor=0.0)
    with pytest.raises(ValueError, match="max_lr must be finite"):
        _C.onecycle(0, 100, float("inf"))
    with pytest.raises(ValueError, match="anneal_strategy must be 'cos' or 'linear'"):
        _C.onecycle(0, 100, 0.1, anneal_strategy="exp")
    # pct_start * total_steps == 1: PyTorch divides by zero at step 0; we say why
    with pytest.raises(ValueError, match="phase 1 of the schedule is empty"):
        _C.onecycle(0, 10, 0.1, pct_start=0.1)
    with pytest.raises(TypeError, match="steps must have dtype int64"):
        _C.onecycle_steps(np.zeros(3, np.int32), 100, 0.1)
    with pytest.raises(ValueError, match="steps must have 1 dimensions"):
        _C.onecycle_steps(np.zeros((3, 1), np.int64), 100, 0.1)
    with pytest.raises(ValueError, match="outside"):
        _C.onecycle_steps(np.array([0, 500], np.int64), 100, 0.1)


def test_multistep_matches_formula():
    # LAE pre-training: 18 epochs, milestones [7, 14, 16], gamma 0.1
    base = 0.005
    for epoch in range(20):
        k = sum(m <= epoch for m in (7, 14, 16))
        assert _C.multistep(epoch, base, [7, 14, 16]) == pytest.approx(base * 0.1 ** k, rel=1e-15)
    # unsorted and repeated milestones count each occurrence (PyTorch's Counter)
    assert _C.multistep(10, 1.0, (10, 3, 10), gamma=0.5) == pytest.approx(0.125)
    assert _C.multistep(0, 1.0, []) == 1.0
    assert _C.multistep(5, 2.0, np.array([1, 2], np.int64)) == pytest.approx(0.02)
    assert_no_leak(_C.multistep, 10**6, 0.1, [1, 2])  # ints beyond the small-int cache


def test_multistep_bad_arguments():
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        _C.multistep(-1, 0.1, [1])
    with pytest.raises(TypeError, match="milestones must be a sequence of ints"):
        _C.multistep(1, 0.1, 5)
    with pytest.raises(TypeError, match="milestones must be a sequence of ints"):
        _C.multistep(1, 0.1, "57")
    with pytest.raises(TypeError, match="milestones must hold ints"):
        _C.multistep(1, 0.1, [1.5])
    with pytest.raises(ValueError, match="milestone -3 is negative"):
        _C.multistep(1, 0.1, [-3])
    with pytest.raises(ValueError, match="must be finite"):
        _C.multistep(1, float("nan"), [1])


def test_linear_scaling():
    assert _C.linear_scaled_lr(0.005, 256) == pytest.approx(0.005)
    assert _C.linear_scaled_lr(0.005, 32) == pytest.approx(0.005 * 32 / 256)
    assert _C.linear_scaled_lr(0.001, 64, reference=128) == pytest.approx(0.0005)
    with pytest.raises(ValueError, match="batch and reference must be > 0"):
        _C.linear_scaled_lr(0.005, 0)
    with pytest.raises(ValueError, match="batch and reference must be > 0"):
        _C.linear_scaled_lr(0.005, 32, reference=-1)
    with pytest.raises(TypeError, match="batch must be an int"):
        _C.linear_scaled_lr(0.005, 32.0)
