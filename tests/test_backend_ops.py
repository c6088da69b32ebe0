"""Every op on every backend against the CPU, in the shape of ggml's test-backend-ops: one
test per op, parametrised over the devices (`dev`: "cpu" always, "cuda" where a GPU is
usable). Each op binding takes `ctx` (None: the CPU, else a context from cuda_context())
and the test calls the same binding with ctx=None for the reference: the CPU kernels are
the definition of right (their own tests compare them with NumPy references and finite
differences). Tolerances fit the precision: float32 math ~1e-5 relative, TF32 / bf16
~1e-2. The first tests always run: the module imports, HAS_CUDA matches the build, and a
bad or missing device fails with a clear error (never a crash). Where `nvidia-smi` shows a
GPU that glae cannot use (built without CUDA, a driver too old for the runtime), the GPU
cases fail with the driver's message instead of skipping."""
import numpy as np
import pytest

from glae import _C

from devices import (BF16, DEVICES, FP32, GPUS_SEEN, STATUS, TF32, is_cuda, needs_gpu,
                     unusable_gpu_message)


LOSS_MODES = {"base": 0, "lae_cls": 1, "kl": 2}


# ---- always run ------------------------------------------------------------------------

def test_module_flags():
    assert _C.HAS_CUDA in (0, 1)
    if STATUS["state"] != "driver_error":
        assert isinstance(_C.cuda_devices(), list)
    if not _C.HAS_CUDA:
        assert _C.cuda_devices() == []
    for name in ("cuda_context", "cuda_set_math", "cuda_set_benchmark", "cuda_algo_cache_size",
                 "cuda_double_buffer_relu"):
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
            _C.cuda_set_math(None, 0)


def test_bad_context_argument_is_a_type_error():
    x = np.zeros(3, np.float32)
    for bad in (object(), 0, "cuda"):
        with pytest.raises(TypeError, match="ctx"):
            _C.relu_forward(x, ctx=bad)
        with pytest.raises(TypeError, match="ctx"):
            _C.relu_forward(x, bad)  # positionally, as the last argument
    with pytest.raises(TypeError):
        _C.relu_forward(x, ctx=None, bogus=1)
    np.testing.assert_array_equal(_C.relu_forward(x, ctx=None), x)
    if _C.HAS_CUDA:
        with pytest.raises(TypeError, match="ctx"):
            _C.cuda_set_math(None, 0)


# ---- the devices: the `dev` and `gpu_ctx` fixtures are in conftest.py ------------------------

def set_math(ctx, math):
    """the CUDA math mode (fp32 / tf32 / bf16); the CPU backends have float32 only"""
    if is_cuda(ctx):
        _C.cuda_set_math(ctx, math)


def close(got, ref, rtol=1e-5, atol=1e-6):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape
    assert np.isfinite(got).all() == np.isfinite(ref).all()
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


def rel_close(got, ref, tol):
    """relative to the largest magnitude (TF32 / bf16 errors scale with it)"""
    scale = max(float(np.abs(ref).max()), 1e-6)
    assert float(np.abs(np.asarray(got, np.float64) - ref).max()) <= tol * scale


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- one test per op family -----------------------------------------------------------------

def test_elementwise(dev, rng):
    x, y, g = f32(rng, 3, 5, 7, 4), f32(rng, 3, 5, 7, 4), f32(rng, 3, 5, 7, 4)
    close(_C.relu_forward(x, ctx=dev), _C.relu_forward(x), 0, 0)
    r = _C.relu_forward(x)
    close(_C.relu_backward(g, r, ctx=dev), _C.relu_backward(g, r), 0, 0)
    close(_C.add_forward(x, y, ctx=dev), _C.add_forward(x, y), 0, 0)
    da, db = _C.add_backward(g, ctx=dev)
    close(da, g, 0, 0)
    close(db, g, 0, 0)
    close(_C.hflip_forward(x, ctx=dev), _C.hflip_forward(x), 0, 0)
    w = f32(rng, 4)
    close(_C.prelu_forward(x, w, ctx=dev), _C.prelu_forward(x, w), 0, 0)
    for a, b in zip(_C.prelu_backward(g, x, w, ctx=dev), _C.prelu_backward(g, x, w)):
        close(a, b)


@pytest.mark.parametrize("rows,c", [(2, 3), (4 * 9 * 9, 64), (5000, 37), (16, 512)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm(dev, rng, rows, c, training):
    x = f32(rng, rows, c, scale=3.0) + 2.0
    gamma, beta = f32(rng, c), f32(rng, c)
    rm_c, rv_c = f32(rng, c), np.abs(f32(rng, c)) + 0.5
    rm_g, rv_g = rm_c.copy(), rv_c.copy()
    yc = _C.batchnorm_forward(x, gamma, beta, rm_c, rv_c, 0.1, 1e-5, training)
    yg = _C.batchnorm_forward(x, gamma, beta, rm_g, rv_g, 0.1, 1e-5, training, ctx=dev)
    for a, b in zip(yg, yc):
        close(a, b, 1e-5, 1e-5)
    close(rm_g, rm_c)  # updated in place on every device
    close(rv_g, rv_c)  # unbiased running variance, like PyTorch
    dy = f32(rng, rows, c)
    bc = _C.batchnorm_backward(dy, x, yc[1], yc[2], gamma, training)
    bg = _C.batchnorm_backward(dy, x, yc[1], yc[2], gamma, training, ctx=dev)
    for a, b in zip(bg, bc):
        close(a, b, 1e-4, 1e-4)


@pytest.mark.parametrize("k,stride,pad,ceil", [(3, 2, 1, False), (2, 2, 0, True), (3, 1, 1, False)])
def test_maxpool(dev, rng, k, stride, pad, ceil):
    x = f32(rng, 2, 9, 11, 5)
    x[0, 0, 0, :] = x[0, 0, 1, :]  # ties: the first maximum wins on both sides
    yc, ac = _C.maxpool2d_forward(x, k, stride, pad, ceil)
    yg, ag = _C.maxpool2d_forward(x, k, stride, pad, ceil, ctx=dev)
    close(yg, yc, 0, 0)
    np.testing.assert_array_equal(ag, ac)
    dy = f32(rng, *yc.shape)
    close(_C.maxpool2d_backward(dy, ac, 9, 11, k, stride, pad, ceil, ctx=dev),
          _C.maxpool2d_backward(dy, ac, 9, 11, k, stride, pad, ceil))
    bad = ac.copy()
    bad.flat[3] = 9 * 11  # one past the input: refused before any device sees it
    with pytest.raises(ValueError, match="argmax holds an index outside"):
        _C.maxpool2d_backward(dy, bad, 9, 11, k, stride, pad, ceil, ctx=dev)


def test_model_util_ops(dev, rng):
    """fill, the NCHW flatten of the FR map and the flip average (exact: pure data moves
    and one float32 add and multiply)"""
    np.testing.assert_array_equal(_C.fill(1000, 0.125, ctx=dev), np.full(1000, 0.125, np.float32))
    x = f32(rng, 3, 49, 101)
    np.testing.assert_array_equal(_C.flatten_nchw_forward(x, ctx=dev), x.transpose(0, 2, 1))
    np.testing.assert_array_equal(_C.flatten_nchw_backward(x.transpose(0, 2, 1).copy(), ctx=dev), x)
    a, b = f32(rng, 7, 101), f32(rng, 7, 101)
    np.testing.assert_array_equal(_C.avg2_forward(a, b, ctx=dev), np.float32(0.5) * (a + b))
    u = rng.integers(0, 256, (5, 17, 19, 3), dtype=np.uint8)  # 4845 values: odd tail
    for norm in ("glae", "imagenet", "none"):
        np.testing.assert_array_equal(_C.normalise_u8(u, norm=norm, ctx=dev),
                                      _C.normalise_u8(u, norm=norm))


def test_avgpool(dev, rng):
    x = f32(rng, 3, 7, 7, 130)
    close(_C.avgpool_forward(x, ctx=dev), _C.avgpool_forward(x))
    dy = f32(rng, 3, 130)
    close(_C.avgpool_backward(dy, 7, 7, ctx=dev), _C.avgpool_backward(dy, 7, 7))


@pytest.mark.parametrize("math,tol", [(FP32, 1e-5), (TF32, 1e-2), (BF16, 2e-2)])
def test_linear(dev, rng, math, tol):
    set_math(dev, math)
    x, w, b = f32(rng, 33, 70), f32(rng, 19, 70), f32(rng, 19)
    rel_close(_C.linear_forward(x, w, b, ctx=dev), _C.linear_forward(x, w, b), tol)
    rel_close(_C.linear_forward(x, w, None, ctx=dev), _C.linear_forward(x, w, None), tol)
    dy = f32(rng, 33, 19)
    for a, c in zip(_C.linear_backward(dy, x, w, True, ctx=dev), _C.linear_backward(dy, x, w, True)):
        rel_close(a, c, tol)


@pytest.mark.parametrize("r", [1, 2, 4])
def test_pixel_shuffle(dev, rng, r):
    x = f32(rng, 2, 3, 5, 3 * r * r)
    close(_C.pixel_shuffle_forward(x, r, ctx=dev), _C.pixel_shuffle_forward(x, r), 0, 0)
    dy = f32(rng, 2, 3 * r, 5 * r, 3)
    close(_C.pixel_shuffle_backward(dy, r, ctx=dev), _C.pixel_shuffle_backward(dy, r), 0, 0)


@pytest.mark.parametrize("k", [1, 7, 101, 300])
def test_softmax(dev, rng, k):
    x = f32(rng, 37, k, scale=4.0)
    x[0, 0] = -np.inf
    y = _C.softmax_forward(x)
    close(_C.softmax_forward(x, ctx=dev), y)
    ly = _C.log_softmax_forward(x)
    close(_C.log_softmax_forward(x, ctx=dev), ly)
    dy = f32(rng, 37, k)
    close(_C.softmax_backward(dy, y, ctx=dev), _C.softmax_backward(dy, y), 1e-5, 1e-6)
    close(_C.log_softmax_backward(dy, ly, ctx=dev), _C.log_softmax_backward(dy, ly), 1e-5, 1e-5)


CONV_CASES = [  # (n, h, w, cin, cout, k, stride, pad)
    (2, 9, 9, 3, 8, 3, 1, 1),
    (2, 16, 16, 16, 32, 3, 2, 1),
    (2, 8, 8, 32, 16, 1, 1, 0),
    (2, 7, 9, 4, 8, 7, 2, 3),
    (1, 32, 32, 2, 101, 16, 16, 0),  # the FR conv of GLAE (k16 s16), small
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("math,tol", [(FP32, 1e-4), (TF32, 1e-2)])
def test_conv2d(dev, rng, case, math, tol):
    set_math(dev, math)
    n, h, w, cin, cout, k, s, p = case
    x, wt, b = f32(rng, n, h, w, cin), f32(rng, cout, k, k, cin, scale=0.2), f32(rng, cout)
    y = _C.conv2d_forward(x, wt, b, s, p)
    rel_close(_C.conv2d_forward(x, wt, b, s, p, ctx=dev), y, tol)
    dy = f32(rng, *y.shape)
    ref = _C.conv2d_backward(dy, x, wt, s, p, True)
    got = _C.conv2d_backward(dy, x, wt, s, p, True, ctx=dev)
    for a, c in zip(got, ref):
        rel_close(a, c, tol)
    # the accumulators of the parameter gradients are added to, on every device
    dw0, db0 = f32(rng, *wt.shape), f32(rng, cout)
    dwa, dba = dw0.copy(), db0.copy()
    got = _C.conv2d_backward(dy, x, wt, s, p, True, need_dx=False, dw_accumulate=dwa,
                             db_accumulate=dba, ctx=dev)
    assert got[0] is None and got[1] is dwa and got[2] is dba
    rel_close(dwa - dw0, ref[1], 2 * tol)
    rel_close(dba - db0, ref[2], 2 * tol)
    if is_cuda(dev):
        assert _C.cuda_algo_cache_size(dev) > 0
    elif dev is not None:  # the oneDNN backend: its primitives are cached per shape
        assert _C.onednn_cache_size(dev) > 0


@pytest.mark.parametrize("case", [(2, 9, 9, 3, 5, 3, 2, 1), (2, 16, 16, 8, 16, 3, 1, 1),
                                  (3, 8, 8, 16, 32, 1, 2, 0)])
@pytest.mark.parametrize("residual,relu", [(False, False), (False, True), (True, True)])
def test_conv2d_bn_act(dev, rng, case, residual, relu):
    """The fused inference op against NumPy on the conv reference, and against the three ops
    it replaces: conv + eval batch norm (+ residual) (+ ReLU). The reference runs those
    ops (the same bits); a backend may fold the batch norm into the weights (~1e-6)."""
    set_math(dev, FP32)
    n, h, w, cin, cout, k, s, p = case
    x, wt, b = f32(rng, n, h, w, cin), f32(rng, cout, k, k, cin, scale=0.2), f32(rng, cout)
    g, be, rm = rng.uniform(0.5, 2, cout).astype(np.float32), f32(rng, cout), f32(rng, cout)
    rv = rng.uniform(0.5, 2, cout).astype(np.float32)
    y0 = _C.conv2d_forward(x, wt, b, s, p)
    res = f32(rng, *y0.shape) if residual else None
    want = (y0.astype(np.float64) - rm) / np.sqrt(rv.astype(np.float64) + 1e-5) * g + be
    if residual:
        want = want + res
    if relu:
        want = np.maximum(want, 0)
    rm0, rv0 = rm.copy(), rv.copy()
    y, sm, si = _C.conv2d_bn_act_forward(x, wt, b, g, be, rm, rv, 1e-5, s, p, residual=res,
                                         relu=relu, ctx=dev)
    rel_close(y, want, 1e-5)
    close(sm, rm)
    close(si, 1 / np.sqrt(rv.astype(np.float64) + 1e-5))
    np.testing.assert_array_equal(rm, rm0)  # the running statistics are only read
    np.testing.assert_array_equal(rv, rv0)
    if dev is None:  # the reference is the three ops, bit for bit
        ref, _, _ = _C.batchnorm_forward(y0, g, be, rm.copy(), rv.copy(), 0.1, 1e-5, False)
        if residual:
            ref = _C.add_forward(ref, res)
        if relu:
            ref = _C.relu_forward(ref)
        np.testing.assert_array_equal(y, ref)
    with pytest.raises(ValueError, match="eps"):
        _C.conv2d_bn_act_forward(x, wt, b, g, be, rm, rv, 0.0, s, p, ctx=dev)
    with pytest.raises(ValueError, match="running_var"):
        _C.conv2d_bn_act_forward(x, wt, b, g, be, rm, rv[:-1], 1e-5, s, p, ctx=dev)


def test_conv2d_benchmark_mode(gpu_ctx, rng):
    _C.cuda_set_benchmark(gpu_ctx, True)
    try:
        x, wt = f32(rng, 2, 12, 12, 8), f32(rng, 16, 3, 3, 8, scale=0.2)
        rel_close(_C.conv2d_forward(x, wt, None, 1, 1, ctx=gpu_ctx),
                  _C.conv2d_forward(x, wt, None, 1, 1), 1e-4)
    finally:
        _C.cuda_set_benchmark(gpu_ctx, False)


@pytest.mark.parametrize("mode", ["base", "lae_cls", "kl"])
@pytest.mark.parametrize("group", [1, 4])
def test_ldl_loss(dev, rng, mode, group):
    n, k = 6, 101
    y = rng.uniform(0, 100, n).astype(np.float32)
    z = _C.label_distribution(y, 2.0, k, True)
    close(_C.label_distribution(y, 2.0, k, True, ctx=dev), z, 1e-5, 1e-7)
    sig = rng.uniform(1, 4, n).astype(np.float32)
    close(_C.label_distribution(y, sig, k, False, ctx=dev),
          _C.label_distribution(y, sig, k, False), 1e-5, 1e-7)
    x = f32(rng, n * group, k, scale=3.0)
    lc, pc = _C.ldl_loss_forward(x, z, y, group, mode, 0.7, 3.0)
    lg, pg = _C.ldl_loss_forward(x, z, y, group, mode, 0.7, 3.0, ctx=dev)
    close(lg, lc, 1e-5, 1e-5)
    close(pg, pc, 1e-5, 1e-7)
    dl = rng.uniform(0.1, 1, n * group).astype(np.float32)
    close(_C.ldl_loss_backward(dl, pc, z, y, group, mode, 0.7, 3.0, ctx=dev),
          _C.ldl_loss_backward(dl, pc, z, y, group, mode, 0.7, 3.0), 1e-5, 1e-6)


@pytest.mark.parametrize("mode", ["smaller", "bigger"])
@pytest.mark.parametrize("flip", [True, False])
def test_routing(dev, rng, mode, flip):
    n, k = 50, 101
    ps = [_C.softmax_forward(f32(rng, n, k, scale=2.0)) for _ in range(4)]
    close(_C.expected_age(ps[0], ctx=dev), _C.expected_age(ps[0]), 1e-6, 1e-5)
    close(_C.kl_rows(ps[0], ps[1], ctx=dev), _C.kl_rows(ps[0], ps[1]), 1e-5, 1e-6)
    ref = _C.adaptive_route(*ps, mode=mode, flip_average=flip)
    got = _C.adaptive_route(*ps, mode=mode, flip_average=flip, ctx=dev)
    np.testing.assert_array_equal(got["choice"], ref["choice"])
    close(got["prob"], ref["prob"], 0, 0)
    close(got["age"], ref["age"], 1e-6, 1e-5)
    close(got["upsilon"], ref["upsilon"], 1e-5, 1e-6)


@pytest.mark.parametrize("nesterov,first,wd", [(True, False, 5e-4), (False, True, 0.0), (True, True, 1e-3)])
def test_sgd(dev, rng, nesterov, first, wd):
    n = 1000
    p, g, m = f32(rng, n), f32(rng, n), f32(rng, n)
    mask = (rng.uniform(size=n) < 0.3).astype(np.uint8)
    kw = dict(momentum=0.9, dampening=0.0, weight_decay=wd, nesterov=nesterov, first_step=first,
              begin=100, end=900, no_decay_mask=mask)
    pc, mc = p.copy(), m.copy()
    _C.sgd_step(pc, mc, g, 0.1, **kw)
    pg, mg = p.copy(), m.copy()
    _C.sgd_step(pg, mg, g, 0.1, **kw, ctx=dev)  # in place on every device
    close(pg, pc, 1e-6, 1e-7)  # FMA contraction may differ from the CPU build in the last bit
    close(mg, mc, 1e-6, 1e-7)
    np.testing.assert_array_equal(pg[:100], p[:100])
    np.testing.assert_array_equal(pg[900:], p[900:])


def test_metrics(dev, rng):
    y = rng.uniform(0, 90, 3000).astype(np.float32)
    yhat = (y + rng.normal(0, 5, 3000)).astype(np.float32)
    sig = rng.uniform(1, 5, 3000).astype(np.float32)
    assert _C.metrics_mae(y, yhat, ctx=dev) == pytest.approx(_C.metrics_mae(y, yhat), rel=1e-12)
    assert _C.metrics_epsilon(y, yhat, sig, ctx=dev) == pytest.approx(
        _C.metrics_epsilon(y, yhat, sig), rel=1e-9)


def test_bad_input_on_every_device(dev):
    with pytest.raises(TypeError, match="x"):
        _C.relu_forward(np.zeros(3, np.float64), ctx=dev)
    with pytest.raises(ValueError, match="group"):
        _C.ldl_loss_forward(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32),
                            np.zeros(4, np.float32), 0, ctx=dev)
    with pytest.raises(ValueError, match="writeable"):
        rm = np.zeros(3, np.float32)
        rm.flags.writeable = False
        _C.batchnorm_forward(np.ones((4, 3), np.float32), np.ones(3, np.float32),
                             np.zeros(3, np.float32), rm, np.ones(3, np.float32), 0.1, 1e-5, True,
                             ctx=dev)


def test_cuda_context_errors(gpu_ctx):
    with pytest.raises(ValueError, match="math"):
        _C.cuda_set_math(gpu_ctx, 7)
    with pytest.raises(ValueError, match="device"):
        _C.cuda_context(len(DEVICES), 0)


def test_double_buffered_input_slots(gpu_ctx, rng):
    """pinned -> device copies on the copy stream, two slots, the events of
    glae_cuda_slot_*: every row arrives whole, after its copy, before being overwritten"""
    _C.cuda_set_math(gpu_ctx, FP32)
    x = f32(rng, 8, 1 << 21)
    close(_C.cuda_double_buffer_relu(gpu_ctx, x), np.maximum(x, 0), rtol=0, atol=0)
    one = f32(rng, 1, 7)
    close(_C.cuda_double_buffer_relu(gpu_ctx, one), np.maximum(one, 0), rtol=0, atol=0)


# ---- mixed precision: the bf16 layers (ops.h) ----------------------------------------------

def bf16_close(got, ref, ulps=2.0, atol=1e-5):
    """two bf16 results of float32 math summed in different orders: a rounding may land
    on either side, so allow a couple of bf16 units in the last place"""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= ulps * 2.0 ** -8 * np.abs(ref) + atol)


BF16_CONV = [(2, 17, 15, 3, 16, 7, 2, 3), (2, 8, 8, 32, 32, 3, 1, 1), (2, 8, 8, 64, 128, 1, 2, 0),
             (1, 9, 9, 16, 24, 3, 2, 1)]


@pytest.mark.parametrize("case", BF16_CONV)
@pytest.mark.parametrize("math", [FP32, BF16])
def test_bf16_conv_layers(dev, rng, case, math):
    set_math(dev, math)
    n, h, w, c, o, k, s, p = case
    x = _C.bf16_round(f32(rng, n, h, w, c))
    wt = f32(rng, o, k, k, c, scale=0.2)
    b = f32(rng, o)
    y = _C.conv2d_forward_bf16(x, wt, b, s, p)
    rel_close(_C.conv2d_forward_bf16(x, wt, b, s, p, ctx=dev), y, 2e-2)
    dy = _C.bf16_round(f32(rng, *y.shape))
    ref = _C.conv2d_backward_bf16(dy, x, wt, s, p, True)
    got = _C.conv2d_backward_bf16(dy, x, wt, s, p, True, ctx=dev)
    for g, r in zip(got, ref):
        rel_close(g, r, 2e-2)


@pytest.mark.parametrize("residual,relu", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("c", [96, 20])  # 8 channels per thread / one per thread
def test_bf16_bn_act(dev, rng, residual, relu, training, c):
    x = _C.bf16_round(f32(rng, 4, 9, 7, c, scale=2.0) + 1.0)
    res = _C.bf16_round(f32(rng, 4, 9, 7, c)) if residual else None
    g, beta = f32(rng, c) * 0.2 + 1.0, f32(rng, c)
    rm, rv = f32(rng, c), np.abs(f32(rng, c)) + 0.5
    ref = _C.bn_act_forward_bf16(x, res, g, beta, rm.copy(), rv.copy(), training, relu)
    got = _C.bn_act_forward_bf16(x, res, g, beta, rm.copy(), rv.copy(), training, relu, ctx=dev)
    bf16_close(got[0], ref[0], atol=1e-4)
    for a, r in zip(got[1:], ref[1:]):
        close(a, r, rtol=1e-5, atol=1e-6)
    y, m, inv = ref[0], ref[1], ref[2]
    dy = _C.bf16_round(f32(rng, *x.shape))
    ref = _C.bn_act_backward_bf16(dy, y if relu else None, x, m, inv, g, training, relu)
    got = _C.bn_act_backward_bf16(dy, y if relu else None, x, m, inv, g, training, relu, ctx=dev)
    bf16_close(got[0], ref[0], atol=1e-3)
    np.testing.assert_array_equal(got[1], ref[1])  # the masked gradient is exact
    close(got[2], ref[2], rtol=1e-4, atol=1e-4)
    close(got[3], ref[3], rtol=1e-4, atol=1e-4)


def test_bf16_pool_and_add(dev, rng):
    x = _C.bf16_round(f32(rng, 2, 17, 15, 64))
    y, am = _C.maxpool2d_forward_bf16(x, 3, 2, 1)
    yg, amg = _C.maxpool2d_forward_bf16(x, 3, 2, 1, ctx=dev)
    np.testing.assert_array_equal(yg, y)
    np.testing.assert_array_equal(amg, am)
    dy = _C.bf16_round(f32(rng, *y.shape))
    bf16_close(_C.maxpool2d_backward_bf16(dy, am, 17, 15, 3, 2, 1, ctx=dev),
               _C.maxpool2d_backward_bf16(dy, am, 17, 15, 3, 2, 1), ulps=1.0, atol=0)
    for n in (1000, 1003):  # eight per thread / one per thread
        a, b = _C.bf16_round(f32(rng, n)), _C.bf16_round(f32(rng, n))
        np.testing.assert_array_equal(_C.add_forward_bf16(a, b, ctx=dev), _C.add_forward_bf16(a, b))
