"""Issue 17: an out-of-range integer passed to a glae._C binding is a ValueError naming the
function and the argument, never CPython's bare OverflowError ("signed integer is greater
than maximum", "int too big to convert"). The parsers every binding goes through
(glae_parse_tuple[_kw], csrc/python/convert.c) name it; these tests call every binding."""
import re

import numpy as np
import pytest

from glae import _C

HUGE = (2 ** 70, -2 ** 70, 2 ** 40, 2 ** 64)
NAMED = re.compile(r"argument ('\w+'|\d+)|\b\w+ (is|must)\b|\b\w+ = ")


def _call_all(fn, label, failures, max_args=16):
    for k in range(max_args):
        for h in HUGE:
            try:
                fn(*([h] * k))
            except OverflowError as e:
                failures.append(f"{label}({k} x {h}): OverflowError: {e}")
            except ValueError as e:
                s = str(e)
                if ("range" in s or "fit" in s) and not NAMED.search(s):
                    failures.append(f"{label}({k} x {h}): unnamed: {s}")
            except (TypeError, RuntimeError, MemoryError, IndexError, KeyError):
                pass  # a wrong type or a refused size: named elsewhere, not this test's concern


def test_every_function_names_an_out_of_range_integer():
    failures = []
    names = [n for n in dir(_C) if not n.startswith("_") and callable(getattr(_C, n))
             and not isinstance(getattr(_C, n), type)]
    assert len(names) > 50
    for name in names:
        _call_all(getattr(_C, name), name, failures)
    assert not failures, "\n".join(failures[:20])


def test_model_methods_name_an_out_of_range_integer():
    m = _C.Model(backbone="resnet18", head="gap", input_size=16, threads=1)
    failures = []
    for name in dir(m):
        f = getattr(m, name)
        if name.startswith("_") or not callable(f) or name in ("close",):
            continue
        _call_all(f, f"Model.{name}", failures, max_args=12)
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("call, match", [
    (lambda: _C.set_num_threads(2 ** 40), r"set_num_threads: argument 1 = 1099511627776 does not fit its C type \(int, 32 bits\)"),
    (lambda: _C.center_crop_resize(np.zeros((4, 4, 3), np.uint8), 2 ** 70), "center_crop_resize: argument 2 = "),
    (lambda: _C.align_face(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 2), np.float32), size=2 ** 70),
     "align_face: argument 'size' = "),
    (lambda: _C.resize(np.zeros((4, 4, 3), np.uint8), 4, -2 ** 70), "resize: argument 'out_w' = "),
    (lambda: _C.Model(backbone="resnet18", head="gap", input_size=2 ** 40), "Model: argument 'input_size'"),
    (lambda: _C.Model(backbone="resnet18", head="gap", seed=2 ** 64), "Model: argument 'seed'"),
    (lambda: _C.Model(backbone="resnet18", head="gap", input_size=16).write_flat(
        "momentum", np.zeros(1, np.float32), 2 ** 70), "write_flat: argument 'offset' = "),
    (lambda: setattr(_C.Model(backbone="resnet18", head="gap", input_size=16), "threads", 2 ** 70),
     "threads must be in"),
    (lambda: _C.conv2d_forward(np.zeros((1, 4, 4, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32), None,
                               stride=2 ** 70, pad=0), "conv2d: stride = "),
    (lambda: _C.conv2d_forward(np.zeros((1, 4, 4, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32), None,
                               stride=1, pad=(1, -2 ** 64)), "conv2d: pad = "),
])
def test_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
