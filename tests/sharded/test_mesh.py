"""Tensor-parallel layouts on a mesh of two processes (dp=1, tp=2; a 2-D dp x tp mesh needs four): a ``Partial``
gradient is redistributed to its parameter's layout before the perturbation reads it, and a ``Partial`` tensor is
refused where local pieces would be summed as parts of it. The data-parallel reductions of a 2-D mesh go over its
``data_parallel`` dimension (``test_data_parallel.py``)."""

from __future__ import annotations

import pytest

from . import _mesh

pytestmark = pytest.mark.ddp


def test_partial_gradient_is_resolved_before_the_ascent(ddp):
    for placements, diff in ddp.run(_mesh.sam_with_partial_gradient):
        assert [type(p).__name__ for p in placements] == ["Replicate"]  # stored back in `.grad`, resolved
        assert diff < 1e-5, diff  # SAM on the whole batch (measured: 1e-7); the local pieces gave 0.4


def test_partial_tensor_is_refused_by_the_shard_sums(ddp):
    for message in ddp.run(_mesh.partial_tensor_refused):
        assert message.startswith(
            "a perturbed tensor must be laid out as `Shard` or `Replicate` on every mesh dimension, got placements "
            "(Partial(sum),): a `Partial` piece is not a part of the tensor"
        ), message
