"""The scaling decision against KEDA's and the HPA's documented behaviour."""

from __future__ import annotations

import dataclasses

import pytest

from scanpipe.autoscale.policy import (
    Decision,
    Observation,
    ScalerState,
    ScalingPolicy,
    decide,
)
from scanpipe.errors import ConfigError


def make_policy(**changes: object) -> ScalingPolicy:
    """KEDA's defaults, with a one-second poll as the embedded stack uses."""
    return dataclasses.replace(ScalingPolicy(polling_interval_seconds=1), **changes)


def make_timeline(
    policy: ScalingPolicy,
    samples: list[tuple[float, int, int]],
    *,
    replicas: int = 0,
) -> list[Decision]:
    """Decide on each ``(now, visible, in_flight)`` sample in turn.

    The workers are assumed to reach each desired count before the next poll.
    """
    state = ScalerState()
    decisions = []
    for now, visible, in_flight in samples:
        obs = Observation(now, visible, in_flight, replicas)
        decision, state = decide(policy, state, obs)
        decisions.append(decision)
        replicas = decision.desired
    return decisions


def desired_counts(decisions: list[Decision]) -> list[int]:
    return [decision.desired for decision in decisions]


@pytest.mark.parametrize(
    ("changes", "visible", "in_flight", "current", "desired"),
    [
        pytest.param({}, 0, 0, 0, 0, id="idle-at-zero-stays-zero"),
        pytest.param({}, 1, 0, 0, 1, id="one-message-activates-one-worker"),
        pytest.param({}, 12, 0, 0, 3, id="twelve-messages-target-5-gives-3"),
        pytest.param({}, 15, 0, 0, 3, id="exact-multiple-of-target"),
        pytest.param({"target_per_replica": 1}, 7, 0, 0, 7, id="target-1"),
        pytest.param({"max_replicas": 4}, 100, 0, 0, 4, id="clamped-at-max"),
        pytest.param({"activation_threshold": 3}, 3, 0, 0, 0, id="at-activation"),
        pytest.param({"activation_threshold": 3}, 4, 0, 0, 1, id="above-activation"),
        pytest.param(
            {"activation_threshold": 50, "target_per_replica": 10},
            40,
            0,
            0,
            0,
            id="activation-wins-over-scaling",
        ),
        pytest.param({}, 0, 6, 0, 2, id="in-flight-counts"),
        pytest.param({}, 3, 4, 1, 2, id="visible-plus-in-flight"),
        pytest.param(
            {"scale_on_in_flight": False}, 2, 10, 0, 1, id="in-flight-ignored"
        ),
        pytest.param(
            {"scale_on_in_flight": False},
            0,
            10,
            0,
            0,
            id="only-in-flight-ignored-is-inactive",
        ),
        pytest.param({"min_replicas": 2}, 0, 0, 0, 2, id="starts-at-min"),
        pytest.param(
            {"min_replicas": 2, "activation_threshold": 100},
            20,
            0,
            2,
            4,
            id="min-above-zero-ignores-activation",
        ),
        pytest.param({"max_replicas": 2}, 100, 0, 5, 2, id="above-max-drops-at-once"),
        pytest.param({}, 30, 0, 2, 6, id="scale-up-is-immediate"),
    ],
)
def test_one_poll_decides_like_keda(
    changes: dict[str, object],
    visible: int,
    in_flight: int,
    current: int,
    desired: int,
) -> None:
    policy = make_policy(**changes)
    obs = Observation(
        now=100.0, visible=visible, in_flight=in_flight, current_replicas=current
    )

    decision, _ = decide(policy, ScalerState(), obs)

    assert decision.desired == desired


def test_the_reason_shows_the_sum() -> None:
    obs = Observation(now=0.0, visible=12, in_flight=0, current_replicas=1)

    decision, _ = decide(make_policy(), ScalerState(), obs)

    assert decision == Decision(
        desired=3,
        reason="queue metric 12 > activation 0; ceil(12/5)=3",
        active=True,
        metric=12,
    )


def test_an_empty_queue_keeps_workers_through_the_cooldown_then_scales_to_zero() -> (
    None
):
    policy = make_policy(cooldown_period_seconds=30)

    decisions = make_timeline(
        policy, [(0, 12, 0), (1, 0, 0), (29, 0, 0), (30, 0, 0), (31, 0, 0)]
    )

    assert desired_counts(decisions) == [3, 3, 3, 0, 0]
    assert [d.active for d in decisions] == [True, False, False, False, False]
    assert decisions[3].reason == "inactive for 30.0s >= cooldown 30s: scale to zero"


def test_activity_during_the_cooldown_restarts_it() -> None:
    policy = make_policy(cooldown_period_seconds=30)

    decisions = make_timeline(
        policy, [(0, 5, 0), (20, 0, 0), (25, 1, 0), (50, 0, 0), (55, 0, 0)]
    )

    assert desired_counts(decisions) == [1, 1, 1, 1, 0]


@pytest.mark.parametrize(
    ("window_seconds", "desired"),
    [
        pytest.param(0, [3, 1, 1, 1], id="no-window-scales-down-at-once"),
        pytest.param(60, [3, 3, 3, 1], id="window-holds-the-highest-count"),
    ],
)
def test_cooldown_applies_only_to_zero_and_the_hpa_window_to_scale_down(
    window_seconds: float, desired: list[int]
) -> None:
    policy = make_policy(scale_down_stabilization_seconds=window_seconds)

    # 12 messages, then 2 for a minute: active throughout, so KEDA's cooldown
    # never starts and the scale-down from 3 to 1 is the HPA's alone.
    decisions = make_timeline(policy, [(0, 12, 0), (1, 2, 0), (59, 2, 0), (60, 2, 0)])

    assert desired_counts(decisions) == desired


def test_the_window_holds_a_scale_down_but_never_a_scale_up() -> None:
    policy = make_policy(scale_down_stabilization_seconds=60)

    decisions = make_timeline(policy, [(0, 12, 0), (1, 2, 0), (2, 30, 0), (3, 2, 0)])

    assert desired_counts(decisions) == [3, 3, 6, 6]
    assert decisions[1].reason.endswith("scale-down held at 3 by 60s window")


def test_a_window_shorter_than_the_cooldown_leaves_one_worker_until_it_ends() -> None:
    policy = make_policy(cooldown_period_seconds=30, scale_down_stabilization_seconds=0)

    decisions = make_timeline(policy, [(0, 12, 0), (1, 0, 0), (29, 0, 0), (30, 0, 0)])

    assert desired_counts(decisions) == [3, 1, 1, 0]


def test_min_replicas_of_one_never_scales_to_zero() -> None:
    policy = make_policy(min_replicas=1, cooldown_period_seconds=30)

    decisions = make_timeline(policy, [(0, 0, 0), (1, 12, 0), (400, 0, 0), (800, 0, 0)])

    assert desired_counts(decisions) == [1, 3, 1, 1]


def test_workers_running_with_no_activity_ever_seen_scale_to_zero_at_once() -> None:
    obs = Observation(now=5.0, visible=0, in_flight=0, current_replicas=2)

    decision, state = decide(make_policy(), ScalerState(), obs)

    assert decision.desired == 0
    assert state == ScalerState()


def test_the_state_keeps_only_recommendations_inside_the_window() -> None:
    policy = make_policy(scale_down_stabilization_seconds=10)
    samples = [(float(t), 12, 0) for t in range(0, 100, 5)]

    state = ScalerState()
    for now, visible, in_flight in samples:
        _, state = decide(policy, state, Observation(now, visible, in_flight, 3))

    assert state == ScalerState(
        last_active_at=95.0, recommendations=((90.0, 3), (95.0, 3))
    )


def test_a_burst_scales_from_zero_to_many_and_back_to_zero() -> None:
    policy = make_policy(
        cooldown_period_seconds=5,
        scale_down_stabilization_seconds=3,
        max_replicas=4,
    )
    queue = [0, 0, 1, 12, 40, 18, 9, 4, 0, 0, 0, 0, 0, 0, 0, 0]
    samples = [(float(t), visible, 0) for t, visible in enumerate(queue)]

    decisions = make_timeline(policy, samples)

    assert desired_counts(decisions) == [0, 0, 1, 3, 4, 4, 4, 4, 2, 1, 1, 1, 0, 0, 0, 0]
    assert max(desired_counts(decisions)) == policy.max_replicas


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"polling_interval_seconds": 0},
            "polling_interval_seconds must be greater than 0, but it is 0",
            id="zero-poll",
        ),
        pytest.param(
            {"cooldown_period_seconds": -1},
            "cooldown_period_seconds must be a number of seconds, 0 or more, "
            "but it is -1",
            id="negative-cooldown",
        ),
        pytest.param(
            {"scale_down_stabilization_seconds": 3601},
            "at most 3600",
            id="window-over-hpa-limit",
        ),
        pytest.param(
            {"cooldown_period_seconds": float("nan")},
            "cooldown_period_seconds must be a number of seconds",
            id="nan-cooldown",
        ),
        pytest.param(
            {"min_replicas": -1},
            "min_replicas must be a whole number, 0 or more, but it is -1",
            id="negative-min",
        ),
        pytest.param(
            {"max_replicas": 0},
            "max_replicas must be a whole number, 1 or more, but it is 0",
            id="zero-max",
        ),
        pytest.param(
            {"min_replicas": 5, "max_replicas": 3},
            "min_replicas must not exceed max_replicas, but min_replicas is 5 "
            "and max_replicas is 3",
            id="min-above-max",
        ),
        pytest.param(
            {"target_per_replica": 0},
            "target_per_replica must be a whole number, 1 or more, but it is 0",
            id="zero-target",
        ),
        pytest.param(
            {"target_per_replica": 2.5},
            "target_per_replica must be a whole number",
            id="fractional-target",
        ),
        pytest.param(
            {"activation_threshold": -1},
            "activation_threshold must be a whole number, 0 or more",
            id="negative-activation",
        ),
        pytest.param(
            {"max_replicas": True},
            "max_replicas must be a whole number",
            id="bool-max",
        ),
        pytest.param(
            {"scale_on_in_flight": "yes"},
            "scale_on_in_flight must be true or false",
            id="non-bool-in-flight",
        ),
    ],
)
def test_an_invalid_policy_is_refused_with_a_sentence(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_policy(**changes)

    assert message in str(caught.value)
    assert str(caught.value).endswith(".")


def test_the_defaults_are_kedas_and_the_hpas() -> None:
    assert ScalingPolicy() == ScalingPolicy(
        polling_interval_seconds=30,
        cooldown_period_seconds=300,
        min_replicas=0,
        max_replicas=100,
        target_per_replica=5,
        activation_threshold=0,
        scale_on_in_flight=True,
        scale_down_stabilization_seconds=300,
    )
