"""SmallCNN's ``stages``: more stages of width w in front for larger inputs (the ch. 3 resolution sweep)."""
from __future__ import annotations

import pytest
import torch

from robustlab.models import create_model
from robustlab.models.small import SmallCNN


def test_more_stages_end_on_the_same_feature_map_for_proportionally_larger_inputs():
    small, large = SmallCNN(1, 10, width=4), SmallCNN(1, 10, width=4, stages=5)
    end = (2, 16, 7, 7)
    assert small.stages(torch.rand(2, 1, 28, 28)).shape == large.stages(torch.rand(2, 1, 112, 112)).shape == end
    widths = [m.conv.out_channels for m in large.modules() if hasattr(m, "conv")]
    assert widths == [4, 4, 4, 8, 16]  # w, ..., w, 2w, 4w
    assert [m.conv.out_channels for m in small.modules() if hasattr(m, "conv")] == [4, 8, 16]  # unchanged default


def test_stages_through_the_factory_and_bad_values():
    model = create_model("smallcnn", 10, in_channels=1, width=4, stages=4)
    assert model(torch.rand(1, 1, 56, 56)).shape == (1, 10)
    for bad in (2, 3.5, True):
        with pytest.raises(ValueError, match="stages must be a whole number >= 3"):
            SmallCNN(1, 10, stages=bad)
