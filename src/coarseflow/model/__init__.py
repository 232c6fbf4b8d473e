from coarseflow.model.flow import (
    FlowSettings,
    TruncatedStandardNormal,
    make_flow,
    split_trainable,
)

__all__ = ["FlowSettings", "TruncatedStandardNormal", "make_flow", "split_trainable"]
