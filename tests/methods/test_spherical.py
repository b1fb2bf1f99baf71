"""SLERP against its formula."""

from __future__ import annotations

import math

import numpy as np
from models import merged, numpy_of


def test_slerp(trio, tmp_path):
    _, models = trio
    out = merged(tmp_path, "slerp", [(models[0], 1.0), (models[2], 1.0)], t=0.3)
    a_all, b_all = numpy_of(models[0]), numpy_of(models[2])
    for name, tensor in out.items():
        a, b = a_all[name].reshape(-1).astype(np.float64), b_all[name].reshape(-1).astype(np.float64)
        cosine = np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)
        if abs(cosine) > 0.9995:  # (nearly) parallel: linear interpolation
            expected = (1 - 0.3) * a + 0.3 * b
        else:
            theta = math.acos(cosine)
            expected = (math.sin(0.7 * theta) * a + math.sin(0.3 * theta) * b) / math.sin(theta)
        np.testing.assert_allclose(tensor.numpy().reshape(-1), expected, rtol=0, atol=1e-6, err_msg=name)
