"""Shared assertion of the view placements (:class:`nnunet_ssl.methods.views.ViewSamplingConfig`'s ``placement``)."""
import numpy as np


def assert_placed(box, shape, placement: str = "inside", tol: float = 1e-9) -> None:
    """``box`` (2 x ndim: lower and upper corner, voxels) satisfies ``placement`` in a case of ``shape``:
    'centre' = its centre lies inside the case; 'inside' = inside the case on every axis where it fits, containing
    the case on every axis where it is longer."""
    box, shape = np.asarray(box, dtype=np.float64), np.asarray(shape, dtype=np.float64)
    if placement == "centre":
        c = (box[0] + box[1]) / 2
        assert (c >= -tol).all() and (c <= shape + tol).all(), (box, shape)
        return
    fits = box[1] - box[0] <= shape
    assert (box[0][fits] >= -tol).all() and (box[1][fits] <= shape[fits] + tol).all(), (box, shape)
    assert (box[0][~fits] <= tol).all() and (box[1][~fits] >= shape[~fits] - tol).all(), (box, shape)
