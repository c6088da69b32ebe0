"""The whole model on the GPU against the same model on the CPU: one ResNet-18 and one
ResNet-50 "fr+pa" training step from the same weights and batch (loss, every parameter
gradient, BN running statistics), an SGD step through the device buffers, predict, and
device-aware get/set. The CPU model is the definition of right. fp32 math: ~1e-4 relative
on gradients (cuDNN's algorithms sum in other orders); TF32: ~2e-2; bf16 (mixed
precision) against the CPU's bf16 layers, to bf16 noise. Skips without a GPU,
except the checks of the error a CPU-only machine must give."""
import numpy as np
import pytest

from glae import _C

DEVICES = _C.cuda_devices() if _C.HAS_CUDA else []
needs_gpu = pytest.mark.skipif(not DEVICES, reason="no CUDA device (or built without CUDA)")

SIZE = 112  # fr+pa's projection depends on the input size; 112 keeps the CPU side quick


@pytest.mark.skipif(bool(DEVICES), reason="a CUDA device is present")
def test_cuda_model_without_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA"):
        _C.Model("resnet18", "gap", input_size=64, device="cuda")


def test_bad_device_string():
    with pytest.raises(ValueError, match="device"):
        _C.Model("resnet18", "gap", input_size=64, device="tpu")


def test_cpu_model_sgd_step_and_write_flat_match_the_free_functions():
    """The device-neutral API the trainer uses gives the CPU's bits exactly."""
    kw = dict(backbone="resnet18", head="fr+pa", input_size=64, proj_depth=1, proj_width=16)
    a, b = _C.Model(**kw), _C.Model(**kw)
    assert a.device == "cpu"
    g = np.random.default_rng(0).standard_normal(a.params.size).astype(np.float32)
    a.write_flat("grads", g)
    b.grads[:] = g
    np.testing.assert_array_equal(a.grads, b.grads)
    mask = np.zeros(a.params.size, np.uint8)
    for name, shape, off, numel, is_buf, group, no_decay in a.param_table():
        if not is_buf and no_decay:
            mask[off:off + numel] = 1
    for first, excl in ((True, True), (False, False)):
        a.sgd_step(0.1, 0.9, 0.0, 1e-2, True, first, 0, a.params.size, excl)
        _C.sgd_step(b.params, b.momentum, b.grads, 0.1, 0.9, 0.0, 1e-2, True, first, 0,
                    b.params.size, mask if excl else None)
        assert a.params.tobytes() == b.params.tobytes()
        assert a.momentum.tobytes() == b.momentum.tobytes()
    a.write_flat("momentum", np.zeros(3, np.float32), 7)
    assert not a.momentum[7:10].any()
    # a view of the very buffer it writes (overlapping ranges: staged, not memcpy'd)
    want = np.array(a.params[1:1001])
    a.write_flat("params", a.params[1:1001])
    np.testing.assert_array_equal(a.params[:1000], want)
    with pytest.raises(ValueError, match="do not fit"):
        a.write_flat("momentum", np.zeros(3, np.float32), a.params.size - 2)
    with pytest.raises(ValueError, match="role"):
        a.write_flat("weights", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="begin"):
        a.sgd_step(0.1, 0.9, 0.0, 0.0, True, False, 5, 4)


def test_async_step_is_the_step_on_the_cpu():
    """train_step_async + async_losses(back) give the same losses and weights as
    train_step (on the CPU it is train_step; the lag logic is the same on both devices)."""
    kw = dict(backbone="resnet18", head="fr+pa", input_size=64, seed=1)
    a, b = _C.Model(**kw), _C.Model(**kw)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((3, 4, 64, 64, 3)).astype(np.float32)
    ys = rng.uniform(1, 90, (3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="no train_step_async|so far"):
        a.async_losses()
    ref = []
    for i in range(3):
        for m in (a, b):
            m.zero_grad()
        ref.append(a.train_step(xs[i], ys[i]))
        b.train_step_async(xs[i], ys[i])
        assert b.async_losses() == ref[-1]
        if i:
            assert b.async_losses(1) == ref[-2]
        for m in (a, b):
            m.sgd_step(0.01, 0.9, 0.0, 5e-4, True, i == 0)
    assert a.params.tobytes() == b.params.tobytes()
    with pytest.raises(ValueError, match="back"):
        b.async_losses(2)


@needs_gpu
@pytest.mark.parametrize("math", ["fp32", "bf16"])
def test_async_steps_match_sync_steps_on_gpu(math):
    """Five pipelined steps (pinned double-buffered input, losses read a step late) give
    the losses and weights of five plain steps on a twin GPU model."""
    kw = dict(backbone="resnet18", head="fr+pa", input_size=SIZE, proj_width=64, seed=2,
              device="cuda", math=math)
    a, b = _C.Model(**kw), _C.Model(**kw)
    warm(_C.Model(**dict(kw, device="cpu", math="fp32")), a, b)  # see warm(): nondeterministic
    rng = np.random.default_rng(0)                               # algorithms + a chaotic start
    got, ref = [], []
    for i in range(5):
        x, ages, sigma = batch(seed=10 + i)
        for m in (a, b):
            m.zero_grad()
        ref.append(a.train_step(x, ages, sigma)["total"])
        b.train_step_async(x, ages, sigma)
        x[:] = rng.standard_normal(x.shape)  # the caller may reuse its arrays at once
        for m in (a, b):
            m.sgd_step(0.002, 0.9, 0.0, 5e-4, True, i == 0)
        if i:
            got.append(b.async_losses(1)["total"])
    got.append(b.async_losses()["total"])
    # cuDNN may pick non-deterministic algorithms: a bf16 rounding can flip between twins
    tol = 1e-4 if math == "fp32" else 1e-2
    np.testing.assert_allclose(got, ref, rtol=tol)
    np.testing.assert_allclose(b.params, a.params, rtol=tol, atol=1e-5)


def test_cuda_graph_needs_a_cuda_model():
    m = _C.Model(backbone="resnet18", head="gap", input_size=64)
    assert m.cuda_graph == "off"
    with pytest.raises(ValueError, match="CUDA model"):
        m.use_cuda_graph()
    with pytest.raises(ValueError, match="CUDA model"):
        m.cudnn_benchmark()


@needs_gpu
@pytest.mark.parametrize("math", ["fp32", "bf16"])
def test_cuda_graph_steps_match_plain_steps(math):
    """A model replaying its step as a CUDA graph against a twin running it plainly: the
    first step warms up, the second is captured, a predict in between (a re-plan) makes
    it warm up and capture again; losses and weights stay the twin's."""
    kw = dict(backbone="resnet18", head="fr+pa", input_size=SIZE, proj_width=64, seed=4,
              device="cuda", math=math)
    a, b = _C.Model(**kw), _C.Model(**kw)
    warm(_C.Model(**dict(kw, device="cpu", math="fp32")), a, b)
    b.use_cuda_graph()
    assert b.cuda_graph == "off"
    states, la, lb = [], [], []
    for i in range(7):
        x, ages, sigma = batch(seed=20 + i)
        if i == 4:
            for m in (a, b):
                m.predict(x[:2], route="vanilla")
        for m in (a, b):
            m.zero_grad()
            m.train_step_async(x, ages, sigma)
            m.sgd_step(0.002, 0.9, 0.0, 5e-4, True, i == 0)
        la.append(a.async_losses()["total"])
        lb.append(b.async_losses()["total"])
        states.append(b.cuda_graph)
    assert not states[-1].startswith("failed"), states[-1]
    assert states[:3] == ["warming up", "captured", "captured"], states
    assert states[4:6] == ["warming up", "captured"], states
    tol = 1e-4 if math == "fp32" else 1e-2
    np.testing.assert_allclose(lb, la, rtol=tol)
    np.testing.assert_allclose(b.params, a.params, rtol=tol, atol=1e-5)


def pair(depth, math="fp32", **kw):
    cfg = dict(backbone=f"resnet{depth}", head="fr+pa", input_size=SIZE, proj_width=64, seed=3)
    cfg.update(kw)
    cpu = _C.Model(**cfg)
    gpu = _C.Model(**cfg, device="cuda", math=math)
    return cpu, gpu


# warm-up steps before a comparison at reduced precision. Measured with the CPU's bf16
# layers against float32 on the comparison batch (relative gradient error, worst
# per-tensor cosine): ResNet-18 0.30 / 0.92 after 8 steps; ResNet-50 0.95 / 0.07 after 8
# (still chaotic: no bar could tell a bug from noise), 0.12 / 0.94 after 20, 0.08 / 0.98
# after 50.
WARM = {18: 8, 50: 50}


def warm(cpu, *others, steps=8):
    """A few float32 SGD steps on the CPU model, then its weights copied into the others.
    At random initialisation a ResNet's gradient is chaotic: a 2^-8 relative change of the
    input moves it by 15-30% (ResNet-18) or more (ResNet-50; tests/test_bf16.py), so TF32
    and bf16 could only be compared at tolerances that would hide bugs. After a few steps
    (WARM) the same perturbation moves it far less."""
    x, ages, sigma = batch(seed=7)
    for step in range(steps):
        cpu.zero_grad()
        cpu.train_step(x, ages, sigma)
        cpu.sgd_step(0.002, 0.9, 0.0, 5e-4, True, step == 0)
    cpu.write_flat("momentum", np.zeros(cpu.params.size, np.float32))
    for m in others:
        m.write_flat("params", cpu.params.copy())
        m.write_flat("buffers", cpu.buffers.copy())


def batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, SIZE, SIZE, 3)).astype(np.float32)
    ages = rng.uniform(5, 80, n).astype(np.float32)
    sigma = rng.uniform(1, 3, n).astype(np.float32)
    return x, ages, sigma


def report(name, a, b):
    d = np.abs(a.astype(np.float64) - b)
    scale = np.abs(b).max() + 1e-12
    return d.max() / scale, f"{name}: max |diff| {d.max():.3g}, scale {scale:.3g}"


def distance(a, ref):
    """||a - ref|| / ||ref||: how far a whole gradient is from the reference"""
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def compare_grads(cpu, gpu, tol):
    table = cpu.param_table()
    g_cpu, g_gpu = cpu.grads, gpu.grads
    worst = []
    for name, shape, off, numel, is_buf, group, _ in table:
        if is_buf:
            continue
        rel, msg = report(name, g_gpu[off:off + numel], g_cpu[off:off + numel])
        worst.append((rel, msg))
    worst.sort(reverse=True)
    print("\n".join(m for _, m in worst[:10]))  # largest relative differences first
    assert worst[0][0] < tol, worst[0][1]


@needs_gpu
@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("math,tol", [("fp32", 1e-3), ("tf32", 5e-2)])
def test_train_step_matches_cpu(depth, math, tol):
    """fp32: every gradient to 1e-3 of the CPU's (cuDNN sums in other orders). TF32 rounds
    the convolutions' and GEMMs' inputs to 10 mantissa bits; the CPU's bf16 layers round
    them to 7 and every stored activation too, so the CPU bf16 model's distance to
    float32 bounds the TF32 step's (a per-tensor 5% bar would sit inside TF32's own
    noise: the bf16 model's worst tensor is off by ~55% in that metric)."""
    cpu, gpu = pair(depth, math)
    assert gpu.device.startswith("cuda")
    np.testing.assert_array_equal(gpu.params, cpu.params)  # same init, uploaded
    # the TF32 step's bound: the CPU's bf16 layers from the same weights
    cpu16 = None if math == "fp32" else _C.Model(backbone=f"resnet{depth}", head="fr+pa",
                                                  input_size=SIZE, proj_width=64, seed=3,
                                                  math="bf16")
    others = (gpu,) if cpu16 is None else (gpu, cpu16)
    warm(cpu, *others, steps=WARM[depth])
    x, ages, sigma = batch()
    for m in (cpu,) + others:
        m.zero_grad()
    lc = cpu.train_step(x, ages, sigma, stage=1, loss="base")
    lg = gpu.train_step(x, ages, sigma, stage=1, loss="base")
    for k in ("total", "local", "holistic"):
        assert lg[k] == pytest.approx(lc[k], rel=tol / 10 if math == "fp32" else tol), k
    if math == "fp32":
        compare_grads(cpu, gpu, tol)
    else:
        cpu16.train_step(x, ages, sigma, stage=1, loss="base")
        g32 = cpu.grads.astype(np.float64)
        e16, e = distance(cpu16.grads, g32), distance(gpu.grads, g32)
        cos = cosines(g32, gpu.grads, cpu.param_table())
        print(f"TF32 gradient vs float32: {e:.3f} (CPU bf16: {e16:.3f}); worst cosines {cos[:3]}")
        assert e <= e16, (e, e16)
        assert cos[0][0] > 0.9, cos[:3]
    rel, msg = report("buffers", gpu.buffers, cpu.buffers)
    assert rel < tol, msg


def cosines(ref, got, table):
    out = []
    for name, shape, off, numel, is_buf, group, _ in table:
        a, b = ref[off:off + numel].astype(np.float64), got[off:off + numel]
        if is_buf or not a.any():
            continue
        out.append((float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)), name))
    return sorted(out)


@needs_gpu
@pytest.mark.parametrize("depth", [18, 50])
def test_bf16_train_step_matches_cpu(depth):
    """Mixed precision: the GPU's bf16 step against the CPU's bf16 layers (the definition,
    ops/bf16.c) and the float32 model. Two bf16 implementations round after different
    summation orders, so they agree to bf16 noise, not bit for bit: the GPU's distance to
    float32 must be of the size of the CPU bf16 model's."""
    cfg = dict(backbone=f"resnet{depth}", head="fr+pa", input_size=SIZE, proj_width=64, seed=3)
    cpu32, cpu16 = _C.Model(**cfg), _C.Model(**cfg, math="bf16")
    gpu16 = _C.Model(**cfg, device="cuda", math="bf16")
    assert gpu16.math == "bf16"
    warm(cpu32, cpu16, gpu16, steps=WARM[depth])
    x, ages, sigma = batch()
    loss = {}
    for key, m in (("cpu32", cpu32), ("cpu16", cpu16), ("gpu16", gpu16)):
        m.zero_grad()
        loss[key] = m.train_step(x, ages, sigma, stage=1, loss="base")
    for k in ("total", "local", "holistic"):
        assert loss["gpu16"][k] == pytest.approx(loss["cpu16"][k], rel=2e-2), (k, loss)
    g32 = cpu32.grads.astype(np.float64)
    e_cpu, e_gpu = distance(cpu16.grads, g32), distance(gpu16.grads, g32)
    cos = cosines(g32, gpu16.grads, cpu32.param_table())
    print(f"bf16 gradient vs float32: CPU {e_cpu:.3f}, GPU {e_gpu:.3f}; worst cosines {cos[:3]}")
    assert e_gpu <= 2 * e_cpu + 0.05
    assert cos[0][0] > 0.75, cos[:3]
    b32 = cpu32.buffers
    assert np.linalg.norm(gpu16.buffers - b32) <= 2 * np.linalg.norm(cpu16.buffers - b32) + 1e-4 * np.linalg.norm(b32)
    # inference in mixed precision
    ac, pc, _ = cpu16.predict(x, route="vanilla")[:3]
    ag, pg, _ = gpu16.predict(x, route="vanilla")[:3]
    np.testing.assert_allclose(ag, ac, atol=0.5)


@needs_gpu
def test_stage2_sgd_and_predict_match_cpu():
    cpu, gpu = pair(18)
    x, ages, sigma = batch(seed=1)
    for m in (cpu, gpu):
        m.zero_grad()
        m.train_step(x, ages, sigma, stage=1)
        b, e = 0, m.group_range("head")[1]
        m.sgd_step(0.01, 0.9, 0.0, 5e-4, True, True, b, e, True)
        m.copy_head_to_balanced()
        m.zero_grad()
        m.train_step(x, ages, sigma, stage=2, loss="lae_cls", mae=4.0)
        b, e = m.group_range("balanced")
        m.sgd_step(0.01, 0.9, 0.0, 5e-4, True, True, b, e, True)
    for role in ("params", "momentum", "buffers"):
        rel, msg = report(role, getattr(gpu, role), getattr(cpu, role))
        assert rel < 1e-3, msg
    for route in ("smaller", "vanilla", "balanced"):
        ac, pc, hc, uc = cpu.predict(x, route=route, return_upsilon=True)
        ag, pg, hg, ug = gpu.predict(x, route=route, return_upsilon=True)
        np.testing.assert_allclose(ag, ac, rtol=1e-3, atol=1e-2)
        np.testing.assert_allclose(pg, pc, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(ug, uc, rtol=1e-2, atol=1e-5)
        if route != "smaller":  # a near tie of the Upsilons may flip the routed head
            np.testing.assert_array_equal(hg, hc)
        for flip in (True, False):  # the evaluation's per-head ages (head_ages)
            hac = cpu.predict(x, route=route, flip=flip, head_ages=True)[3]
            hag = gpu.predict(x, route=route, flip=flip, head_ages=True)[3]
            np.testing.assert_allclose(hag, hac, rtol=1e-3, atol=1e-2)
    fc, fg = cpu.forward(x), gpu.forward(x)
    for k in fc:
        np.testing.assert_allclose(fg[k], fc[k], rtol=1e-3, atol=1e-4, err_msg=k)


@needs_gpu
def test_get_set_write_flat_on_device():
    cpu, gpu = pair(18)
    name = "layer1.0.conv1.weight"
    w = np.random.default_rng(0).standard_normal(cpu.get(name).shape).astype(np.float32)
    gpu.set(name, w)
    np.testing.assert_array_equal(gpu.get(name), w)
    mom = np.arange(gpu.params.size, dtype=np.float32)
    gpu.write_flat("momentum", mom)
    np.testing.assert_array_equal(gpu.momentum, mom)
    gpu.write_flat("momentum", np.zeros(10, np.float32), 5)
    assert not gpu.momentum[5:15].any() and gpu.momentum[15] == 15
    with pytest.raises(ValueError):
        gpu.params[0] = 1.0  # a device model hands out read-only copies
    gpu.zero_grad()
    assert not gpu.grads.any()


@needs_gpu
@pytest.mark.parametrize("math", ["fp32", "bf16"])
def test_cudnn_benchmark_mode_gives_the_same_step(math):
    """Algorithms chosen by timing (cudnnFind) instead of the heuristics: the same step."""
    kw = dict(backbone="resnet18", head="fr+pa", input_size=SIZE, proj_width=64, seed=5,
              device="cuda", math=math)
    a, b = _C.Model(**kw), _C.Model(**kw)
    b.cudnn_benchmark(True)
    cpu_kw = dict(kw, device="cpu", math="fp32")
    warm(_C.Model(**cpu_kw), a, b)  # past the chaotic start (bf16 roundings differ by algorithm)
    x, ages, sigma = batch(seed=3)
    la, lb = a.train_step(x, ages, sigma), b.train_step(x, ages, sigma)
    tol = 1e-4 if math == "fp32" else 2e-2
    assert lb["total"] == pytest.approx(la["total"], rel=tol)
    g = a.grads
    assert distance(b.grads, g) < (1e-3 if math == "fp32" else 0.3)


@needs_gpu
@pytest.mark.parametrize("graph", [False, True])
def test_uint8_batches_match_float_batches_on_gpu(graph):
    """uint8 pixels sent as bytes and normalised on the device (the Trainer's path, from
    Loader(dtype='uint8')) against the same batches normalised on the host and sent as
    float32: the same steps, async (with and without a CUDA graph) and sync, and the same
    predictions."""
    kw = dict(backbone="resnet18", head="fr+pa", input_size=SIZE, proj_width=64, seed=6,
              device="cuda", math="bf16")
    a, b = _C.Model(**kw), _C.Model(**kw)
    warm(_C.Model(**dict(kw, device="cpu", math="fp32")), a, b)
    if graph:
        b.use_cuda_graph()
    rng = np.random.default_rng(1)
    la, lb = [], []
    for i in range(4):
        u = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
        _, ages, sigma = batch(seed=30 + i)
        x = _C.normalise_u8(u, norm="imagenet")
        for m in (a, b):
            m.zero_grad()
        a.train_step_async(x, ages, sigma)
        b.train_step_async(u, ages, sigma, norm="imagenet")
        u[:] = 0  # the caller may reuse its arrays at once
        for m in (a, b):
            m.sgd_step(0.002, 0.9, 0.0, 5e-4, True, i == 0)
        la.append(a.async_losses()["total"])
        lb.append(b.async_losses()["total"])
    if graph:
        assert b.cuda_graph == "captured", b.cuda_graph
    np.testing.assert_allclose(lb, la, rtol=1e-2)
    np.testing.assert_allclose(b.params, a.params, rtol=1e-2, atol=1e-5)
    u = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    x = _C.normalise_u8(u)
    _, ages, sigma = batch(n=3, seed=40)
    for m in (a, b):
        m.zero_grad()
    ra, rb = a.train_step(x, ages, sigma), b.train_step(u, ages, sigma, norm="glae")
    np.testing.assert_allclose(rb["total"], ra["total"], rtol=1e-2)
    pa, pb = a.predict(x, route="vanilla"), b.predict(u, route="vanilla", norm="glae")
    np.testing.assert_allclose(pb[0], pa[0], rtol=1e-2)


@needs_gpu
def test_effnet_train_step_and_predict_match_cpu():
    """EfficientNetV2-S (depthwise convolutions, SE, SiLU, stochastic depth with the same
    host-drawn masks on both) in fp32 on the GPU against the CPU: loss, every gradient
    (tensors whose exact gradient is 0, BN biases between two training-mode BNs, are left
    out: both sides hold float32 noise there), BN statistics, and the routed prediction."""
    cfg = dict(backbone="efficientnet_v2_s", head="fr+pa", input_size=64, proj_width=64, seed=3)
    cpu, gpu = _C.Model(**cfg), _C.Model(**cfg, device="cuda", math="fp32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64, 64, 3)).astype(np.float32)
    ages = rng.uniform(5, 80, 8).astype(np.float32)
    for m in (cpu, gpu):
        m.zero_grad()
    lc, lg = cpu.train_step(x, ages), gpu.train_step(x, ages)
    assert gpu.drop_step == cpu.drop_step == 1
    assert lg["total"] == pytest.approx(lc["total"], rel=1e-4)
    g_cpu, g_gpu, top = cpu.grads, gpu.grads, np.abs(cpu.grads).max()
    worst = []
    for name, shape, off, numel, is_buf, group, _ in cpu.param_table():
        if is_buf or np.abs(g_cpu[off:off + numel]).max() < 1e-6 * top:
            continue
        worst.append(report(name, g_gpu[off:off + numel], g_cpu[off:off + numel]))
    worst.sort(reverse=True)
    print("\n".join(m for _, m in worst[:5]))
    assert worst[0][0] < 1e-3, worst[0][1]
    rel, msg = report("buffers", gpu.buffers, cpu.buffers)
    assert rel < 1e-3, msg
    a, b = cpu.predict(x[:4]), gpu.predict(x[:4])
    np.testing.assert_allclose(b[0], a[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(b[1], a[1], atol=1e-4)
