"""torch.compile for the UNet alone, in place (`nn.Module.compile`), so checkpoint keys stay unchanged."""
from __future__ import annotations

from composer.core import Algorithm, Event


class CompileUNet(Algorithm):
    def __init__(self, mode: str | None = None, fullgraph: bool = False, dynamic: bool | None = False):
        self.kwargs = {"mode": mode, "fullgraph": fullgraph, "dynamic": dynamic}

    def match(self, event, state) -> bool:
        return event == Event.INIT

    def apply(self, event, state, logger) -> None:
        state.model.unet.compile(**self.kwargs)
