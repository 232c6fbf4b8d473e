from coarseflow.model.flow import (
    BoxBase,
    FlowSettings,
    make_flow,
    split_trainable,
)

__all__ = ["BoxBase", "FlowSettings", "make_flow", "split_trainable"]
