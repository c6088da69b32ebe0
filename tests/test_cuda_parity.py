"""CUDA twins against the CPU kernels (the CPU ones are the definition of right), on
random inputs. Tolerances fit the precision: float32 math ~1e-5 relative, TF32 / bf16
~1e-2. Everything but the first tests skips without a GPU; the first tests always run:
the module imports, HAS_CUDA matches the build, and a CUDA binding fails with a clear
RuntimeError (never a crash) when there is no device or no CUDA backend. Where
`nvidia-smi` shows a GPU that glae cannot use (built without CUDA, a driver too old for
the runtime), the GPU tests fail with the driver's message instead of skipping."""
import shutil
import subprocess

import numpy as np
import pytest

from glae import _C


def nvidia_smi_gpus():
    """The GPU lines of `nvidia-smi -L`; [] without nvidia-smi or when it fails."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in out.splitlines() if line.startswith("GPU ")]


STATUS = _C.cuda_device_status()  # never raises; says why there is no device
GPUS_SEEN = nvidia_smi_gpus()     # what the machine has, whatever glae can use
DEVICES = _C.cuda_devices() if STATUS["state"] == "ready" else []
# Skip only where the machine has no GPU. Where nvidia-smi shows one that glae cannot
# use (a CPU-only build, a driver too old for the runtime), the GPU tests fail instead.
needs_gpu = pytest.mark.skipif(not DEVICES and not GPUS_SEEN,
                               reason=f"no CUDA device ({STATUS['message']})")


def unusable_gpu_message():
    return (f"nvidia-smi shows {GPUS_SEEN} but glae cannot use it: {STATUS['state']}: "
            f"{STATUS['message']} (HAS_CUDA={_C.HAS_CUDA}, build: {_C.BUILD_INFO['reason']})")

FP32, TF32, BF16 = 0, 1, 2
LOSS_MODES = {"base": 0, "lae_cls": 1, "kl": 2}


# ---- always run ------------------------------------------------------------------------

def test_module_flags():
    assert _C.HAS_CUDA in (0, 1)
    if STATUS["state"] != "driver_error":
        assert isinstance(_C.cuda_devices(), list)
    if not _C.HAS_CUDA:
        assert _C.cuda_devices() == []
    for name in ("cuda_context", "cuda_conv2d_forward", "cuda_batchnorm_forward", "cuda_sgd_step",
                 "cuda_ldl_loss_forward", "cuda_adaptive_route", "cuda_metrics_mae"):
        assert callable(getattr(_C, name))


def test_device_status_tells_no_device_from_a_broken_driver():
    st = STATUS
    assert set(st) == {"state", "count", "message", "driver_version", "runtime_version"}
    assert st["state"] in ("ready", "no_device", "no_driver", "driver_error", "not_built")
    assert st["message"]
    assert (st["state"] == "not_built") == (not _C.HAS_CUDA)
    if st["state"] == "ready":
        assert st["count"] == len(_C.cuda_devices()) >= 1
        return
    assert st["count"] == 0
    if st["state"] == "no_driver":
        assert st["driver_version"] == 0
    if st["state"] in ("no_device", "no_driver"):
        assert _C.cuda_devices() == []  # a machine without a GPU is not an error
    if st["state"] == "driver_error":
        # a driver that is there but unusable is an error, never "0 devices"
        with pytest.raises(RuntimeError, match="driver"):
            _C.cuda_devices()
        with pytest.raises(RuntimeError, match="driver"):
            _C.cuda_context()


@pytest.mark.skipif(not GPUS_SEEN, reason="nvidia-smi shows no GPU")
def test_gpu_shown_by_nvidia_smi_is_usable():
    assert _C.HAS_CUDA == 1 and STATUS["state"] == "ready", unusable_gpu_message()


@pytest.mark.skipif(bool(DEVICES), reason="a CUDA device is present")
def test_no_device_is_a_clear_runtime_error():
    with pytest.raises(RuntimeError, match="CUDA"):
        _C.cuda_context()
    if not _C.HAS_CUDA:
        with pytest.raises(RuntimeError, match="built without CUDA"):
            _C.cuda_relu_forward(None, np.zeros(3, np.float32))


@pytest.mark.skipif(not _C.HAS_CUDA, reason="built without CUDA")
def test_bad_context_argument_is_a_type_error():
    with pytest.raises(TypeError, match="ctx"):
        _C.cuda_relu_forward(object(), np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="ctx"):
        _C.cuda_set_math(None, 0)


# ---- with a GPU ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx():
    if not DEVICES:
        if GPUS_SEEN:
            pytest.fail(unusable_gpu_message())
        pytest.skip(f"no CUDA device ({STATUS['message']})")
    c = _C.cuda_context(0, FP32)
    yield c
    _C.cuda_set_math(c, FP32)


@pytest.fixture
def fp32(ctx):
    _C.cuda_set_math(ctx, FP32)
    return ctx


def close(gpu, cpu, rtol=1e-5, atol=1e-6):
    gpu, cpu = np.asarray(gpu), np.asarray(cpu)
    assert gpu.shape == cpu.shape
    assert np.isfinite(gpu).all() == np.isfinite(cpu).all()
    np.testing.assert_allclose(gpu, cpu, rtol=rtol, atol=atol)


def rel_close(gpu, cpu, tol):
    """relative to the largest magnitude (TF32 / bf16 errors scale with it)"""
    scale = max(float(np.abs(cpu).max()), 1e-6)
    assert float(np.abs(np.asarray(gpu, np.float64) - cpu).max()) <= tol * scale


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@needs_gpu
def test_elementwise(fp32, rng):
    x, y, g = f32(rng, 3, 5, 7, 4), f32(rng, 3, 5, 7, 4), f32(rng, 3, 5, 7, 4)
    close(_C.cuda_relu_forward(fp32, x), _C.relu_forward(x), 0, 0)
    r = _C.relu_forward(x)
    close(_C.cuda_relu_backward(fp32, g, r), _C.relu_backward(g, r), 0, 0)
    close(_C.cuda_add_forward(fp32, x, y), _C.add_forward(x, y), 0, 0)
    da, db = _C.cuda_add_backward(fp32, g)
    close(da, g, 0, 0)
    close(db, g, 0, 0)
    close(_C.cuda_hflip_forward(fp32, x), _C.hflip_forward(x), 0, 0)
    w = f32(rng, 4)
    close(_C.cuda_prelu_forward(fp32, x, w), _C.prelu_forward(x, w), 0, 0)
    for a, b in zip(_C.cuda_prelu_backward(fp32, g, x, w), _C.prelu_backward(g, x, w)):
        close(a, b)


@needs_gpu
@pytest.mark.parametrize("rows,c", [(2, 3), (4 * 9 * 9, 64), (5000, 37), (16, 512)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm(fp32, rng, rows, c, training):
    x = f32(rng, rows, c, scale=3.0) + 2.0
    gamma, beta = f32(rng, c), f32(rng, c)
    rm_c, rv_c = f32(rng, c), np.abs(f32(rng, c)) + 0.5
    rm_g, rv_g = rm_c.copy(), rv_c.copy()
    yc = _C.batchnorm_forward(x, gamma, beta, rm_c, rv_c, 0.1, 1e-5, training)
    yg = _C.cuda_batchnorm_forward(fp32, x, gamma, beta, rm_g, rv_g, 0.1, 1e-5, training)
    for a, b in zip(yg, yc):
        close(a, b, 1e-5, 1e-5)
    close(rm_g, rm_c)
    close(rv_g, rv_c)  # unbiased running variance, like PyTorch
    dy = f32(rng, rows, c)
    bc = _C.batchnorm_backward(dy, x, yc[1], yc[2], gamma, training)
    bg = _C.cuda_batchnorm_backward(fp32, dy, x, yc[1], yc[2], gamma, training)
    for a, b in zip(bg, bc):
        close(a, b, 1e-4, 1e-4)


@needs_gpu
@pytest.mark.parametrize("k,stride,pad,ceil", [(3, 2, 1, False), (2, 2, 0, True), (3, 1, 1, False)])
def test_maxpool(fp32, rng, k, stride, pad, ceil):
    x = f32(rng, 2, 9, 11, 5)
    x[0, 0, 0, :] = x[0, 0, 1, :]  # ties: the first maximum wins on both sides
    yc, ac = _C.maxpool2d_forward(x, k, stride, pad, ceil)
    yg, ag = _C.cuda_maxpool2d_forward(fp32, x, k, stride, pad, ceil)
    close(yg, yc, 0, 0)
    np.testing.assert_array_equal(ag, ac)
    dy = f32(rng, *yc.shape)
    close(_C.cuda_maxpool2d_backward(fp32, dy, ac, 9, 11, k, stride, pad, ceil),
          _C.maxpool2d_backward(dy, ac, 9, 11, k, stride, pad, ceil))


@needs_gpu
def test_model_util_ops(fp32, rng):
    """fill, the NCHW flatten of the FR map and the flip average (exact: pure data moves
    and one float32 add and multiply)"""
    np.testing.assert_array_equal(_C.cuda_fill(fp32, 1000, 0.125), np.full(1000, 0.125, np.float32))
    x = f32(rng, 3, 49, 101)
    np.testing.assert_array_equal(_C.cuda_flatten_nchw_forward(fp32, x), x.transpose(0, 2, 1))
    np.testing.assert_array_equal(_C.cuda_flatten_nchw_backward(fp32, x.transpose(0, 2, 1).copy()), x)
    a, b = f32(rng, 7, 101), f32(rng, 7, 101)
    np.testing.assert_array_equal(_C.cuda_avg2_forward(fp32, a, b),
                                  np.float32(0.5) * (a + b))
    u = rng.integers(0, 256, (5, 17, 19, 3), dtype=np.uint8)  # 4845 values: odd tail
    for norm in ("glae", "imagenet", "none"):
        np.testing.assert_array_equal(_C.cuda_normalise_u8(fp32, u, norm),
                                      _C.normalise_u8(u, norm=norm))


@needs_gpu
def test_avgpool(fp32, rng):
    x = f32(rng, 3, 7, 7, 130)
    close(_C.cuda_avgpool_forward(fp32, x), _C.avgpool_forward(x))
    dy = f32(rng, 3, 130)
    close(_C.cuda_avgpool_backward(fp32, dy, 7, 7), _C.avgpool_backward(dy, 7, 7))


@needs_gpu
@pytest.mark.parametrize("math,tol", [(FP32, 1e-5), (TF32, 1e-2), (BF16, 2e-2)])
def test_linear(ctx, rng, math, tol):
    _C.cuda_set_math(ctx, math)
    x, w, b = f32(rng, 33, 70), f32(rng, 19, 70), f32(rng, 19)
    rel_close(_C.cuda_linear_forward(ctx, x, w, b), _C.linear_forward(x, w, b), tol)
    rel_close(_C.cuda_linear_forward(ctx, x, w, None), _C.linear_forward(x, w, None), tol)
    dy = f32(rng, 33, 19)
    for a, c in zip(_C.cuda_linear_backward(ctx, dy, x, w, True), _C.linear_backward(dy, x, w, True)):
        rel_close(a, c, tol)
    _C.cuda_set_math(ctx, FP32)


@needs_gpu
@pytest.mark.parametrize("r", [1, 2, 4])
def test_pixel_shuffle(fp32, rng, r):
    x = f32(rng, 2, 3, 5, 3 * r * r)
    close(_C.cuda_pixel_shuffle_forward(fp32, x, r), _C.pixel_shuffle_forward(x, r), 0, 0)
    dy = f32(rng, 2, 3 * r, 5 * r, 3)
    close(_C.cuda_pixel_shuffle_backward(fp32, dy, r), _C.pixel_shuffle_backward(dy, r), 0, 0)


@needs_gpu
@pytest.mark.parametrize("k", [1, 7, 101, 300])
def test_softmax(fp32, rng, k):
    x = f32(rng, 37, k, scale=4.0)
    x[0, 0] = -np.inf
    y = _C.softmax_forward(x)
    close(_C.cuda_softmax_forward(fp32, x), y)
    ly = _C.log_softmax_forward(x)
    close(_C.cuda_log_softmax_forward(fp32, x), ly)
    dy = f32(rng, 37, k)
    close(_C.cuda_softmax_backward(fp32, dy, y), _C.softmax_backward(dy, y), 1e-5, 1e-6)
    close(_C.cuda_log_softmax_backward(fp32, dy, ly), _C.log_softmax_backward(dy, ly), 1e-5, 1e-5)


CONV_CASES = [  # (n, h, w, cin, cout, k, stride, pad)
    (2, 9, 9, 3, 8, 3, 1, 1),
    (2, 16, 16, 16, 32, 3, 2, 1),
    (2, 8, 8, 32, 16, 1, 1, 0),
    (2, 7, 9, 4, 8, 7, 2, 3),
    (1, 32, 32, 2, 101, 16, 16, 0),  # the FR conv of GLAE (k16 s16), small
]


@needs_gpu
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("math,bf16,tol", [(FP32, False, 1e-4), (TF32, False, 1e-2), (BF16, True, 3e-2)])
def test_conv2d(ctx, rng, case, math, bf16, tol):
    _C.cuda_set_math(ctx, math)
    n, h, w, cin, cout, k, s, p = case
    x, wt, b = f32(rng, n, h, w, cin), f32(rng, cout, k, k, cin, scale=0.2), f32(rng, cout)
    y = _C.conv2d_forward(x, wt, b, s, p)
    rel_close(_C.cuda_conv2d_forward(ctx, x, wt, b, s, p, bf16), y, tol)
    dy = f32(rng, *y.shape)
    ref = _C.conv2d_backward(dy, x, wt, s, p, True)
    got = _C.cuda_conv2d_backward(ctx, dy, x, wt, s, p, True, bf16)
    for a, c in zip(got, ref):
        rel_close(a, c, tol)
    assert _C.cuda_algo_cache_size(ctx) > 0
    _C.cuda_set_math(ctx, FP32)


@needs_gpu
def test_conv2d_benchmark_mode(ctx, rng):
    _C.cuda_set_benchmark(ctx, True)
    try:
        x, wt = f32(rng, 2, 12, 12, 8), f32(rng, 16, 3, 3, 8, scale=0.2)
        rel_close(_C.cuda_conv2d_forward(ctx, x, wt, None, 1, 1), _C.conv2d_forward(x, wt, None, 1, 1), 1e-4)
    finally:
        _C.cuda_set_benchmark(ctx, False)


@needs_gpu
@pytest.mark.parametrize("mode", ["base", "lae_cls", "kl"])
@pytest.mark.parametrize("group", [1, 4])
def test_ldl_loss(fp32, rng, mode, group):
    n, k = 6, 101
    y = rng.uniform(0, 100, n).astype(np.float32)
    z = _C.label_distribution(y, 2.0, k, True)
    close(_C.cuda_label_distribution(fp32, y, None, 2.0, k, True), z, 1e-5, 1e-7)
    sig = rng.uniform(1, 4, n).astype(np.float32)
    close(_C.cuda_label_distribution(fp32, y, sig, 1.0, k, False),
          _C.label_distribution(y, sig, k, False), 1e-5, 1e-7)
    x = f32(rng, n * group, k, scale=3.0)
    lc, pc = _C.ldl_loss_forward(x, z, y, group, mode, 0.7, 3.0)
    lg, pg = _C.cuda_ldl_loss_forward(fp32, x, z, y, group, LOSS_MODES[mode], 0.7, 3.0)
    close(lg, lc, 1e-5, 1e-5)
    close(pg, pc, 1e-5, 1e-7)
    dl = rng.uniform(0.1, 1, n * group).astype(np.float32)
    close(_C.cuda_ldl_loss_backward(fp32, dl, pc, z, y, group, LOSS_MODES[mode], 0.7, 3.0),
          _C.ldl_loss_backward(dl, pc, z, y, group, mode, 0.7, 3.0), 1e-5, 1e-6)


@needs_gpu
@pytest.mark.parametrize("mode", ["smaller", "bigger"])
@pytest.mark.parametrize("flip", [True, False])
def test_routing(fp32, rng, mode, flip):
    n, k = 50, 101
    ps = [_C.softmax_forward(f32(rng, n, k, scale=2.0)) for _ in range(4)]
    close(_C.cuda_expected_age(fp32, ps[0]), _C.expected_age(ps[0]), 1e-6, 1e-5)
    close(_C.cuda_kl_rows(fp32, ps[0], ps[1]), _C.kl_rows(ps[0], ps[1]), 1e-5, 1e-6)
    ref = _C.adaptive_route(*ps, mode=mode, flip_average=flip)
    prob, age, choice, ups = _C.cuda_adaptive_route(fp32, *ps, 0 if mode == "smaller" else 1, flip)
    np.testing.assert_array_equal(choice, ref["choice"])
    close(prob, ref["prob"], 0, 0)
    close(age, ref["age"], 1e-6, 1e-5)
    close(ups, ref["upsilon"], 1e-5, 1e-6)


@needs_gpu
@pytest.mark.parametrize("nesterov,first,wd", [(True, False, 5e-4), (False, True, 0.0), (True, True, 1e-3)])
def test_sgd(fp32, rng, nesterov, first, wd):
    n = 1000
    p, g, m = f32(rng, n), f32(rng, n), f32(rng, n)
    mask = (rng.uniform(size=n) < 0.3).astype(np.uint8)
    pc, mc = p.copy(), m.copy()
    _C.sgd_step(pc, mc, g, 0.1, momentum=0.9, dampening=0.0, weight_decay=wd, nesterov=nesterov,
                first_step=first, begin=100, end=900, no_decay_mask=mask)
    pg, mg = p.copy(), m.copy()
    _C.cuda_sgd_step(fp32, pg, mg, g, mask, 0.1, 0.9, 0.0, wd, nesterov, first, 100, 900)
    close(pg, pc, 1e-6, 1e-7)  # FMA contraction may differ from the CPU build in the last bit
    close(mg, mc, 1e-6, 1e-7)
    np.testing.assert_array_equal(pg[:100], p[:100])
    np.testing.assert_array_equal(pg[900:], p[900:])


@needs_gpu
def test_metrics(fp32, rng):
    y = rng.uniform(0, 90, 3000).astype(np.float32)
    yhat = (y + rng.normal(0, 5, 3000)).astype(np.float32)
    sig = rng.uniform(1, 5, 3000).astype(np.float32)
    assert _C.cuda_metrics_mae(fp32, y, yhat) == pytest.approx(_C.metrics_mae(y, yhat), rel=1e-12)
    assert _C.cuda_metrics_epsilon(fp32, y, yhat, sig) == pytest.approx(
        _C.metrics_epsilon(y, yhat, sig), rel=1e-9)


@needs_gpu
def test_bad_input_on_gpu(fp32):
    with pytest.raises(TypeError, match="x"):
        _C.cuda_relu_forward(fp32, np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="group"):
        _C.cuda_ldl_loss_forward(fp32, np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32),
                                 np.zeros(4, np.float32), 0, 0, 1.0, 0.0)
    with pytest.raises(ValueError, match="math"):
        _C.cuda_set_math(fp32, 7)
    with pytest.raises(ValueError, match="device"):
        _C.cuda_context(len(DEVICES), 0)


@needs_gpu
def test_double_buffered_input_slots(fp32, rng):
    """pinned -> device copies on the copy stream, two slots, the events of
    glae_cuda_slot_*: every row arrives whole, after its copy, before being overwritten"""
    x = f32(rng, 8, 1 << 21)
    close(_C.cuda_double_buffer_relu(fp32, x), np.maximum(x, 0), rtol=0, atol=0)
    one = f32(rng, 1, 7)
    close(_C.cuda_double_buffer_relu(fp32, one), np.maximum(one, 0), rtol=0, atol=0)


# ---- mixed precision: the bf16 layers (ops.h) through one binding, ctx=None vs a CUDA ctx --

def bf16_close(gpu, cpu, ulps=2.0, atol=1e-5):
    """two bf16 results of float32 math summed in different orders: a rounding may land
    on either side, so allow a couple of bf16 units in the last place"""
    gpu, cpu = np.asarray(gpu, np.float64), np.asarray(cpu, np.float64)
    assert gpu.shape == cpu.shape
    assert np.all(np.abs(gpu - cpu) <= ulps * 2.0 ** -8 * np.abs(cpu) + atol)


BF16_CONV = [(2, 17, 15, 3, 16, 7, 2, 3), (2, 8, 8, 32, 32, 3, 1, 1), (2, 8, 8, 64, 128, 1, 2, 0),
             (1, 9, 9, 16, 24, 3, 2, 1)]


@pytest.mark.parametrize("case", BF16_CONV)
def test_bf16_conv_layers(fp32, rng, case):
    n, h, w, c, o, k, s, p = case
    x = _C.bf16_round(f32(rng, n, h, w, c))
    wt = f32(rng, o, k, k, c, scale=0.2)
    b = f32(rng, o)
    y = _C.conv2d_forward_bf16(x, wt, b, s, p)
    rel_close(_C.conv2d_forward_bf16(x, wt, b, s, p, fp32), y, 2e-2)
    dy = _C.bf16_round(f32(rng, *y.shape))
    ref = _C.conv2d_backward_bf16(dy, x, wt, s, p, True)
    got = _C.conv2d_backward_bf16(dy, x, wt, s, p, True, fp32)
    for g, r in zip(got, ref):
        rel_close(g, r, 2e-2)


@pytest.mark.parametrize("residual,relu", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("c", [96, 20])  # 8 channels per thread / one per thread
def test_bf16_bn_act(fp32, rng, residual, relu, training, c):
    x = _C.bf16_round(f32(rng, 4, 9, 7, c, scale=2.0) + 1.0)
    res = _C.bf16_round(f32(rng, 4, 9, 7, c)) if residual else None
    g, beta = f32(rng, c) * 0.2 + 1.0, f32(rng, c)
    rm, rv = f32(rng, c), np.abs(f32(rng, c)) + 0.5
    ref = _C.bn_act_forward_bf16(x, res, g, beta, rm.copy(), rv.copy(), training, relu)
    got = _C.bn_act_forward_bf16(x, res, g, beta, rm.copy(), rv.copy(), training, relu, fp32)
    bf16_close(got[0], ref[0], atol=1e-4)
    for a, r in zip(got[1:], ref[1:]):
        close(a, r, rtol=1e-5, atol=1e-6)
    y, m, inv = ref[0], ref[1], ref[2]
    dy = _C.bf16_round(f32(rng, *x.shape))
    ref = _C.bn_act_backward_bf16(dy, y if relu else None, x, m, inv, g, training, relu)
    got = _C.bn_act_backward_bf16(dy, y if relu else None, x, m, inv, g, training, relu, fp32)
    bf16_close(got[0], ref[0], atol=1e-3)
    np.testing.assert_array_equal(got[1], ref[1])  # the masked gradient is exact
    close(got[2], ref[2], rtol=1e-4, atol=1e-4)
    close(got[3], ref[3], rtol=1e-4, atol=1e-4)


def test_bf16_pool_and_add(fp32, rng):
    x = _C.bf16_round(f32(rng, 2, 17, 15, 64))
    y, am = _C.maxpool2d_forward_bf16(x, 3, 2, 1)
    yg, amg = _C.maxpool2d_forward_bf16(x, 3, 2, 1, fp32)
    np.testing.assert_array_equal(yg, y)
    np.testing.assert_array_equal(amg, am)
    dy = _C.bf16_round(f32(rng, *y.shape))
    bf16_close(_C.maxpool2d_backward_bf16(dy, am, 17, 15, 3, 2, 1, fp32),
               _C.maxpool2d_backward_bf16(dy, am, 17, 15, 3, 2, 1), ulps=1.0, atol=0)
    for n in (1000, 1003):  # eight per thread / one per thread
        a, b = _C.bf16_round(f32(rng, n)), _C.bf16_round(f32(rng, n))
        np.testing.assert_array_equal(_C.add_forward_bf16(a, b, fp32), _C.add_forward_bf16(a, b))
