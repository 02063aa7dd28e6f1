"""The rollout analysis: a step judged from both versions' counters over the same window (pure)."""

from __future__ import annotations

from controller.core.rolling_out import judge
from controller.structs.manifests import Analysis, RolloutStep
from controller.structs.rollouts import LATENCY_BUCKETS, Counters, window


def counters(requests: int, errors: int = 0, latency_s: float = 0.004, slow: int = 0, slow_s: float = 0.2) -> Counters:
    """``requests`` answered, ``errors`` of them 5xx, ``slow`` of them taking ``slow_s`` and the rest ``latency_s``."""
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    for seconds, count in ((latency_s, requests - slow), (slow_s, slow)):
        index = next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS))
        buckets[index] += count
    return Counters(requests, errors, tuple(buckets))


ANALYSIS = Analysis(maxErrorRate=0.05, maxP99Ms=50, maxP99Ratio=2, minRequests=100)
STEP = RolloutStep(weight=10, pauseSeconds=30)


def test_a_step_is_not_judged_before_its_minimum_of_requests() -> None:
    verdict = judge(ANALYSIS, STEP, counters(99, errors=99), counters(900), elapsed_s=60)
    assert verdict.passed is None and verdict.message.startswith("waiting for requests: 99/100")


def test_an_error_rate_over_the_limit_fails_with_the_figures() -> None:
    verdict = judge(ANALYSIS, STEP, counters(312, errors=19), counters(2800), elapsed_s=5)
    assert verdict.passed is False
    assert verdict.message == "error rate 6.1 % > 5.0 % over 312 requests"


def test_an_absolute_p99_over_the_limit_fails_early_even_during_the_pause() -> None:
    verdict = judge(ANALYSIS, STEP, counters(312, slow=10, slow_s=0.09), counters(2800), elapsed_s=5)
    assert verdict.passed is False and verdict.message.startswith("p99 ") and "> 50 ms over 312 requests" in verdict.message


def test_p99_relative_to_the_live_version_over_the_same_window() -> None:
    slow = judge(Analysis(maxP99Ratio=2), STEP, counters(200, latency_s=0.03), counters(1800, latency_s=0.004), elapsed_s=40)
    assert slow.passed is False and "× live p99" in slow.message
    same = judge(Analysis(maxP99Ratio=2), STEP, counters(200, latency_s=0.004), counters(1800, latency_s=0.004), elapsed_s=40)
    assert same.passed is True


def test_at_full_weight_the_live_reference_comes_from_an_earlier_step() -> None:
    verdict = judge(Analysis(maxP99Ratio=2), RolloutStep(weight=100), counters(200, latency_s=0.03), Counters(),
                    elapsed_s=1, live_reference_p99_ms=4.9)
    assert verdict.passed is False and "live p99 4.9 ms" in verdict.message


def test_a_step_passes_once_its_pause_is_over_and_the_checks_hold() -> None:
    waiting = judge(ANALYSIS, STEP, counters(150), counters(1350), elapsed_s=10)
    assert waiting.passed is None and "pausing 10/30 s" in waiting.message
    passed = judge(ANALYSIS, STEP, counters(150), counters(1350), elapsed_s=31)
    assert passed.passed is True and passed.candidate.requests == 150 and passed.live.requests == 1350


def test_windows_count_only_what_came_after_the_baseline_and_new_replicas_from_zero() -> None:
    before = {"a": counters(100, errors=1)}
    now = {"a": counters(160, errors=4), "b": counters(20)}
    assert window(now, before).requests == 80 and window(now, before).errors == 3


def test_p99_interpolates_inside_its_bucket_as_prometheus_does() -> None:
    # 100 requests in (5 ms, 10 ms]: the 99th is 99 % of the way through the bucket.
    assert abs((counters(100, latency_s=0.008).p99_ms or 0) - 9.95) < 1e-9
    assert Counters().p99_ms is None
