"""The core: counter-based RNG, threads, the build flags, the leak checker itself."""
import ctypes

import numpy as np
import pytest

import glae
from glae import _C

from helpers import assert_no_leak


# Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
KAT = [
    ([0, 0], [0, 0, 0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 2, [0xFFFFFFFF] * 4, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0xA4093822, 0x299F31D0], [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.parametrize("key,ctr,want", KAT)
def test_philox_known_answers(key, ctr, want):
    out = _C.philox4x32(np.array(key, np.uint32), np.array(ctr, np.uint32))
    assert [int(v) for v in out] == want


def test_rng_is_a_function_of_its_counter():
    a = _C.rng_uniform(7, 1, 2, 3, 1000)
    b = _C.rng_uniform(7, 1, 2, 3, 1000)
    c = _C.rng_uniform(7, 1, 2, 4, 1000)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rng_distributions():
    u = _C.rng_uniform(1, 0, 0, 0, 200_000)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    z = _C.rng_normal(2, 0, 0, 0, 200_000)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # fraction within one sigma of a standard normal
    assert abs(np.mean(np.abs(z) < 1) - 0.6827) < 0.005


def test_no_leaks_in_rng_bindings():
    key, ctr = np.array([1, 2], np.uint32), np.array([3, 4, 5, 6], np.uint32)
    assert_no_leak(_C.philox4x32, key, ctr)
    assert_no_leak(_C.rng_uniform, 7, 1, 2, 3, 100)
    assert_no_leak(_C.rng_normal, 7, 1, 2, 3, 100)
    assert_no_leak(_C.rng_uniform, 7, 1, 2, 3, 0)
    # the error paths release what they took
    bad = np.zeros(3, np.uint32)
    assert_no_leak(lambda: pytest.raises(ValueError, _C.philox4x32, key, bad))
    assert_no_leak(lambda: pytest.raises(ValueError, _C.rng_normal, 1, 0, 0, 0, -5))


def test_leak_checker_sees_a_leaked_output_and_a_leaked_argument():
    incref = ctypes.pythonapi.Py_IncRef
    incref.argtypes = [ctypes.py_object]

    def leaks_output(x):
        y = _C.rng_uniform(1, 0, 0, 0, 4)
        incref(y)  # what a binding that returns a new reference twice would do
        return y

    def leaks_outputs(x):
        return [leaks_output(x) for _ in range(4)]

    def leaks_argument(x):
        incref(x)

    # a leaked array is one allocator block (its data comes from numpy's own cache), so one
    # leak per call sits exactly at the checker's threshold (n blocks over n calls), where a
    # collection of unrelated garbage can hide it (seen once in CI, with n=5): the leaking
    # function leaks four arrays per call, which any n catches
    x = np.zeros(3)
    for n in (20, 5):
        for fn, what in [(leaks_outputs, "memory blocks"), (leaks_argument, "reference counts")]:
            with pytest.raises(AssertionError, match=what):
                assert_no_leak(fn, x, n=n)


def test_threads_roundtrip():
    n = glae.get_num_threads()
    glae.set_num_threads(1)
    assert glae.get_num_threads() == 1
    glae.set_num_threads(n)
    with pytest.raises(ValueError, match="n must be >= 1"):
        glae.set_num_threads(0)
    with pytest.raises(ValueError, match="at most 1024"):
        glae.set_num_threads(10000)
    assert glae.get_num_threads() == n


def test_thread_count_holds_in_every_thread():
    """OpenMP keeps its thread count per calling thread: a Python worker thread (a
    ThreadPoolExecutor of prepare, a server's request thread) started with OpenMP's
    default. Every binding now applies the process-wide setting first."""
    import threading

    n0 = glae.get_num_threads()
    want = n0 + 1
    glae.set_num_threads(want)
    try:
        seen = {}

        def work():
            seen["get"] = glae.get_num_threads()
            _C.mtcnn_resize_area(np.zeros((4, 4, 3), np.float32), 2, 2)
            seen["after a call"] = _C._omp_threads_here()

        t = threading.Thread(target=work)
        t.start()
        t.join()
        assert seen == {"get": want, "after a call": want}
    finally:
        glae.set_num_threads(n0)
    assert glae.get_num_threads() == n0 == _C._omp_threads_here()


def test_a_model_runs_on_its_own_thread_count():
    """A Model's context holds its count (Model(threads=), or 0: follow the process
    default): each call applies it in the calling thread, whatever the default is; the
    Loader's hand-over copy runs on the Loader's threads."""
    import threading

    n0 = glae.get_num_threads()
    x = np.zeros((2, 32, 32, 3), np.uint8)
    try:
        glae.set_num_threads(3)
        m = _C.Model("resnet18", "gap", input_size=32, threads=2)
        d = _C.Model("resnet18", "gap", input_size=32)
        assert (m.threads, d.threads) == (2, 3)
        glae.set_num_threads(1)  # followed by the model without a count of its own
        assert (m.threads, d.threads) == (2, 1)
        seen = []

        def work(model):
            model.predict(x, route="vanilla", flip=False, norm="glae")
            seen.append(_C._omp_threads_here())

        for model, want in ((m, 2), (d, 1)):
            t = threading.Thread(target=work, args=(model,))
            t.start()
            t.join()
            assert seen[-1] == want
        m.threads = 4
        work(m)
        assert seen[-1] == 4 and glae.get_num_threads() == 1
        m.threads = 0  # back to the default
        assert m.threads == 1
        for bad in (-1, 2000):
            with pytest.raises(ValueError, match="threads must be in"):
                m.threads = bad
        with pytest.raises(TypeError):
            m.threads = "2"
        with pytest.raises(ValueError, match="threads must be >= 0"):
            _C.Model("resnet18", "gap", input_size=32, threads=-1)
        with pytest.raises(ValueError, match="at most 1024"):
            _C.Model("resnet18", "gap", input_size=32, threads=1025)
        images = np.zeros((4, 8, 8, 3), np.uint8)
        loader = _C.Loader(images, None, None, np.arange(4, dtype=np.int64), 2, out_size=8,
                           threads=2, crop=False, flip=0.0, jitter=False, randaugment=False)
        next(loader)
        assert _C._omp_threads_here() == 2 and glae.get_num_threads() == 1
        loader.close()
    finally:
        glae.set_num_threads(n0)


def test_bad_arguments_to_core_bindings():
    with pytest.raises(TypeError, match="key must have dtype"):
        _C.philox4x32(np.zeros(2, np.int64), np.zeros(4, np.uint32))
    with pytest.raises(ValueError, match="ctr: dimension 0 must be 4"):
        _C.philox4x32(np.zeros(2, np.uint32), np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match="n must be >= 0"):
        _C.rng_uniform(1, 0, 0, 0, -5)


def test_cuda_flag_matches_build():
    assert isinstance(glae.HAS_CUDA, bool)
    assert isinstance(_C.cuda_devices(), list)


def test_arrays_must_be_native_and_aligned():
    """A big-endian float32 array has NumPy's float32 type number: it used to be read as
    native floats (wrong values, silently); a misaligned one is undefined behaviour in C."""
    x = np.arange(6, dtype=">f4")
    with pytest.raises(ValueError, match="byte order"):
        _C.relu_forward(x)
    raw = np.zeros(6 * 4 + 1, np.uint8)
    odd = np.frombuffer(raw.data, dtype=np.float32, count=6, offset=1)
    assert not odd.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        _C.relu_forward(odd)
    np.testing.assert_array_equal(_C.relu_forward(np.ascontiguousarray(x, dtype=np.float32)),
                                  np.arange(6, dtype=np.float32))
