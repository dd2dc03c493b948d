"""The scaling decision of KEDA and the HPA, as a pure function of observed state.

Workers scale on queue depth the way a KEDA ``ScaledObject`` with an
``aws-sqs-queue`` trigger scales a Deployment, so a pipeline tuned on a laptop
behaves the same on Kubernetes. ``decide`` takes the policy, the state carried
over from the previous poll and one observation, and returns a decision and the
next state. It reads no clock and starts no process; ``supervisor`` applies it.

Two controllers share the work, and ``decide`` plays both:

* KEDA owns the step between zero and one replica (activation). The trigger is
  active only when the metric is strictly greater than the activation
  threshold. When active at zero, it scales up. When inactive, it scales back
  to ``min_replicas`` once ``cooldown_period_seconds`` have passed since the
  last active poll; the cooldown applies to that step alone. With
  ``min_replicas`` of 1 or more the step never happens and the HPA is always in
  charge.
* The HPA owns 1..N. Its desired count for an ``AverageValue`` metric is
  ``ceil(metric / target_per_replica)``, kept within ``max(1, min_replicas)``
  and ``max_replicas``. Scale-up is immediate; scale-down is stabilized: the
  count may fall no lower than the highest recommendation made within the last
  ``scale_down_stabilization_seconds``.

The queue metric is ``ApproximateNumberOfMessages`` plus, when
``scale_on_in_flight`` is true, ``ApproximateNumberOfMessagesNotVisible``, as
the SQS scaler counts it.

Not modelled: the HPA's 10% tolerance band, its scale-up and scale-down rate
policies (by default it may at most double, or add 4 pods, per 15 s), KEDA's
``idleReplicaCount``, ``initialCooldownPeriod`` and ``fallback``. The jump
from zero goes straight to the HPA's count rather than through one replica.

References:

* https://keda.sh/docs/latest/reference/scaledobject-spec/
  (pollingInterval 30, cooldownPeriod 300, minReplicaCount 0,
  maxReplicaCount 100; the cooldown applies only when scaling to zero)
* https://keda.sh/docs/2.15/concepts/scaling-deployments/
  (activation and scaling phases; activation needs strictly greater)
* https://keda.sh/docs/latest/scalers/aws-sqs/
  (queueLength 5, activationQueueLength 0, scaleOnInFlight true)
* https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/
  (desired replicas; scale-down stabilization window of 300 s)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scanpipe.errors import ConfigError

#: The longest stabilization window the HPA accepts, in seconds.
MAX_STABILIZATION_SECONDS = 3600


@dataclass(frozen=True)
class ScalingPolicy:
    """How workers scale on queue depth; every default is KEDA's or the HPA's.

    Example, the embedded stack polling every second and idling down fast::

        ScalingPolicy(polling_interval_seconds=1, cooldown_period_seconds=30)
    """

    #: How often the queue is observed (KEDA ``pollingInterval``).
    polling_interval_seconds: float = 30.0
    #: Inactive time before scaling to zero (KEDA ``cooldownPeriod``).
    cooldown_period_seconds: float = 300.0
    #: Fewest workers (KEDA ``minReplicaCount``); 0 allows scale to zero.
    min_replicas: int = 0
    #: Most workers (KEDA ``maxReplicaCount``).
    max_replicas: int = 100
    #: Messages one worker is meant to handle (SQS scaler ``queueLength``).
    target_per_replica: int = 5
    #: The metric must exceed this to activate (``activationQueueLength``).
    activation_threshold: int = 0
    #: Count messages being processed as well as waiting (``scaleOnInFlight``).
    scale_on_in_flight: bool = True
    #: HPA ``behavior.scaleDown.stabilizationWindowSeconds``.
    scale_down_stabilization_seconds: float = 300.0

    def __post_init__(self) -> None:
        _check_seconds("polling_interval_seconds", self.polling_interval_seconds)
        if self.polling_interval_seconds <= 0:
            raise ConfigError(
                "ScalingPolicy.polling_interval_seconds must be greater than 0, "
                f"but it is {self.polling_interval_seconds!r}."
            )
        _check_seconds("cooldown_period_seconds", self.cooldown_period_seconds)
        _check_seconds(
            "scale_down_stabilization_seconds",
            self.scale_down_stabilization_seconds,
        )
        if self.scale_down_stabilization_seconds > MAX_STABILIZATION_SECONDS:
            raise ConfigError(
                "ScalingPolicy.scale_down_stabilization_seconds must be at most "
                f"{MAX_STABILIZATION_SECONDS} (the HPA's limit), "
                f"but it is {self.scale_down_stabilization_seconds!r}."
            )

        _check_count("min_replicas", self.min_replicas, lowest=0)
        _check_count("max_replicas", self.max_replicas, lowest=1)
        _check_count("target_per_replica", self.target_per_replica, lowest=1)
        _check_count("activation_threshold", self.activation_threshold, lowest=0)
        if self.min_replicas > self.max_replicas:
            raise ConfigError(
                "ScalingPolicy.min_replicas must not exceed max_replicas, but "
                f"min_replicas is {self.min_replicas} and max_replicas is "
                f"{self.max_replicas}."
            )
        if not isinstance(self.scale_on_in_flight, bool):
            raise ConfigError(
                "ScalingPolicy.scale_on_in_flight must be true or false, "
                f"but it is {self.scale_on_in_flight!r}."
            )


@dataclass(frozen=True)
class Observation:
    """One poll of the queue and of the workers running at that moment."""

    #: When the poll happened, in seconds on any clock that only moves forward.
    now: float
    #: Messages waiting to be received (``ApproximateNumberOfMessages``).
    visible: int
    #: Messages received but not yet deleted (``...NotVisible``).
    in_flight: int
    #: Workers running now, not counting those asked to stop.
    current_replicas: int

    def __post_init__(self) -> None:
        if min(self.visible, self.in_flight, self.current_replicas) < 0:
            raise ValueError(
                "Observation counts must be 0 or more, but got "
                f"visible={self.visible} in_flight={self.in_flight} "
                f"current_replicas={self.current_replicas}."
            )


@dataclass(frozen=True)
class ScalerState:
    """What one decision passes to the next; start from ``ScalerState()``."""

    #: When the trigger was last active (KEDA ``lastActiveTime``); None: never.
    last_active_at: float | None = None
    #: ``(time, replicas)`` recommendations inside the stabilization window.
    recommendations: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class Decision:
    """How many workers there should be, and why, in words a person can read."""

    desired: int
    reason: str
    active: bool
    metric: int


def decide(
    policy: ScalingPolicy, state: ScalerState, obs: Observation
) -> tuple[Decision, ScalerState]:
    """Decide the worker count for one poll, as KEDA and the HPA together would.

    Args:
        policy: The scaling settings.
        state: The state returned by the previous call, or ``ScalerState()``.
        obs: The queue depth and running workers now.

    Returns:
        The decision and the state to pass to the next call.

    Edge cases:

    * Inactive, ``min_replicas`` 0, and never active since the state was made
      (``last_active_at`` None) while workers run: they are scaled to zero at
      once, as KEDA does with no ``lastActiveTime``.
    * Inactive but still inside the cooldown: the HPA stays in charge and
      recommends ``ceil(metric / target)`` with a floor of one, so with a
      stabilization window shorter than the cooldown the count can fall to one
      before the cooldown takes it to zero.
    * ``min_replicas`` 1 or more: the activation threshold is ignored for
      scaling (KEDA treats the object as always active) and the count never
      falls below ``min_replicas``.
    * More workers than ``max_replicas`` (the policy changed): scaled down at
      once; fewer than ``min_replicas``: scaled up at once.
    """
    metric = obs.visible + (obs.in_flight if policy.scale_on_in_flight else 0)
    active = metric > policy.activation_threshold
    current = obs.current_replicas
    last_active_at = obs.now if active else state.last_active_at
    trigger = (
        f"queue metric {metric} > activation {policy.activation_threshold}"
        if active
        else f"queue metric {metric} <= activation {policy.activation_threshold}"
    )

    idle_seconds = None if last_active_at is None else obs.now - last_active_at
    cooled = idle_seconds is None or idle_seconds >= policy.cooldown_period_seconds
    hpa_in_charge = active or policy.min_replicas > 0 or (current > 0 and not cooled)
    if not hpa_in_charge:
        if current == 0:
            reason = f"{trigger}: stay at zero"
        elif idle_seconds is None:
            reason = f"{trigger} and never active: scale to zero"
        else:
            reason = (
                f"inactive for {idle_seconds:.1f}s >= cooldown "
                f"{policy.cooldown_period_seconds:g}s: scale to zero"
            )
        decision = Decision(desired=0, reason=reason, active=active, metric=metric)
        return decision, ScalerState(last_active_at=last_active_at)

    raw, sizing = _recommend(policy, metric)
    if active and current == 0:
        steps = [f"{trigger}: activate", sizing]
    elif active or policy.min_replicas > 0:
        steps = [trigger, sizing]
    else:
        steps = [
            f"{trigger}, inactive for {idle_seconds:.1f}s < cooldown "
            f"{policy.cooldown_period_seconds:g}s",
            sizing,
        ]

    window = policy.scale_down_stabilization_seconds
    kept = tuple(
        (at, replicas)
        for at, replicas in state.recommendations
        if at > obs.now - window
    )
    desired = raw
    if current > raw:
        # The HPA keeps the current count inside [raw, highest recent
        # recommendation]: down only as far as the window allows.
        ceiling = max([raw, *(replicas for _, replicas in kept)])
        desired = min(current, ceiling)
        if desired > raw:
            steps.append(f"scale-down held at {desired} by {window:g}s window")

    decision = Decision(
        desired=desired, reason="; ".join(steps), active=active, metric=metric
    )
    next_state = ScalerState(
        last_active_at=last_active_at, recommendations=(*kept, (obs.now, raw))
    )
    return decision, next_state


def _recommend(policy: ScalingPolicy, metric: int) -> tuple[int, str]:
    """The HPA's replica count for ``metric`` and the sum that gave it."""
    wanted = -(-metric // policy.target_per_replica)
    floor = max(1, policy.min_replicas)
    sizing = f"ceil({metric}/{policy.target_per_replica})={wanted}"
    if wanted > policy.max_replicas:
        return policy.max_replicas, f"{sizing}, capped at max {policy.max_replicas}"
    if wanted < floor:
        return floor, f"{sizing}, raised to {floor}"
    return wanted, sizing


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(
            f"ScalingPolicy.{name} must be a number of seconds, 0 or more, "
            f"but it is {value!r}."
        )


def _check_count(name: str, value: object, *, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ConfigError(
            f"ScalingPolicy.{name} must be a whole number, {lowest} or more, "
            f"but it is {value!r}."
        )
