"""The method of the SR-folder-vs-HQ mode of `headsup test`: another method's saved outputs, scored.

Test sets that give `sr` (a folder of saved outputs paired with `hq` by name, `DatasetSpec.sr`) are
scored from those files under `model.method`, whatever the generator. `SavedOutputs` stands in for
the generator when nothing is to be run (`benchmarks/saved_outputs.yaml`): it has a `scale` (for the
bicubic row, where LQ is given) and no weights.
"""

from __future__ import annotations

import torch
from torch import nn


class SavedOutputs(nn.Module):
    """No model: every test set must give its method's saved outputs (`sr`).

    Args:
        scale: Upscaling factor of the saved outputs (the bicubic row's, where a set has LQ).
    """

    uses_faces = False
    reference = False

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, lq: torch.Tensor, **conditioning) -> torch.Tensor:
        raise ValueError("model.generator is SavedOutputs (scores saved images, runs no model): give every test "
                         "set an 'sr' folder of saved outputs (data.test_sets[*].sr)")
