from coarseflow.model.flow import (
    BoxBase,
    FlowSettings,
    box_flow,
    make_flow,
    split_trainable,
)

__all__ = ["BoxBase", "FlowSettings", "box_flow", "make_flow", "split_trainable"]
