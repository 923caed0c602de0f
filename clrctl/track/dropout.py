"""``model.dropout``'s masks across a resume: a callback whose state (each dropout layer's
generator) ``last.pt`` carries, so a resumed run draws exactly the masks the uninterrupted
one draws (the generators are seeded from the run's seed by
:func:`clrctl.model.build.seed_dropout`)."""

from __future__ import annotations

from typing import Any

import torch

from clrctl.engine.callbacks import Callback
from clrctl.model.build import dropouts


class DropoutState(Callback):
    """Carries the generators of the model's :class:`~clrctl.model.build.HeadDropout` layers."""

    checkpoint_key = "dropout"

    def __init__(self, model):
        self.layers = [layer for layer in dropouts(model) if layer.generator is not None]

    def state_dict(self) -> dict[str, Any]:
        return {"generators": [layer.generator.get_state() for layer in self.layers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for layer, saved in zip(self.layers, state.get("generators", [])):
            layer.generator.set_state(saved.cpu() if isinstance(saved, torch.Tensor) else saved)


def dropout_callbacks(setup) -> list[Callback]:
    """The callback when the model has seeded dropout layers (model.dropout), else none."""
    state = DropoutState(setup.model)
    return [state] if state.layers else []
