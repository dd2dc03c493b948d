"""Scale worker processes on queue depth with the semantics of KEDA and the HPA.

``policy`` holds the decision as a pure function (``decide``), tested without
processes or clocks; ``supervisor`` applies it to real worker processes.
"""

from scanpipe.autoscale.policy import (
    Decision,
    Observation,
    ScalerState,
    ScalingPolicy,
    decide,
)
from scanpipe.autoscale.supervisor import ScalingEvent, Supervisor

__all__ = [
    "Decision",
    "Observation",
    "ScalerState",
    "ScalingEvent",
    "ScalingPolicy",
    "Supervisor",
    "decide",
]
