"""Views for the tracker audit: what each view does to an image, how sets are laid out for
the oracle, and that the option is checked (the audit itself: test_tracker_audit)."""

from typing import get_args

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.methods.tracker import TrackerOptions
from tracemark.methods.tracker.views import (
    VIEW_SETS,
    VIEWS,
    ViewSet,
    view,
    view_count,
    with_views,
)


@pytest.fixture
def images():
    return np.random.default_rng(0).random((6, 9, 7, 3), dtype=np.float32) + 1.0  # no zeros


def test_identity_flip_and_shifts(images):
    np.testing.assert_array_equal(view(images, 0, 0, False), images)
    np.testing.assert_array_equal(view(images, 0, 0, True), images[:, :, ::-1])
    down = view(images, 2, 0, False)  # content moves down two rows, zeros come in on top
    np.testing.assert_array_equal(down[:, 2:], images[:, :-2])
    assert not down[:, :2].any()
    left = view(images, 0, -4, False)
    np.testing.assert_array_equal(left[:, :, :-4], images[:, :, 4:])
    assert not left[:, :, -4:].any()
    assert not view(images, 9, 0, False).any()  # moved off the image entirely
    assert view(images, 0, 0, True).flags.c_contiguous


def test_sets_are_laid_out_set_by_set_then_view_by_view(images):
    k = 3  # two sets of three images
    assert with_views(images, k, "none") is images
    out = with_views(images, k, "flip-shift2")
    v = VIEW_SETS["flip-shift2"]
    assert out.shape == (2 * v * k, *images.shape[1:])
    for s in range(2):
        block = out[s * v * k : (s + 1) * v * k].reshape(v, k, *images.shape[1:])
        for j in range(v):
            np.testing.assert_array_equal(block[j], view(images[s * k : (s + 1) * k], *VIEWS[j]))
    with pytest.raises(ValueError, match="whole sets"):
        with_views(images[:5], k, "flip")


def test_view_sets_are_prefixes_and_names_are_checked():
    assert VIEWS[0] == (0, 0, False)  # every set holds the image as published
    assert get_args(ViewSet) == tuple(VIEW_SETS)  # the flag's choices are the sets
    assert [view_count(n) for n in VIEW_SETS] == [1, 2, 6, 10]
    with pytest.raises(TracemarkError, match="unknown views 'rotate'"):
        view_count("rotate")
    with pytest.raises(TracemarkError, match="unknown views"):
        TrackerOptions(views="rotate")
    assert TrackerOptions(views="flip").views == "flip"
