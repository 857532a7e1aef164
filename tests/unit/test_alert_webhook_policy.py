"""Webhook retry policy without I/O: which answers are retried, backoff growth, giving up."""

from __future__ import annotations

import random
import threading

from sinks.alerts import Delivered, Interrupted, Parked, WebhookDelivery, WebhookPolicy, backoff_s

POLICY = WebhookPolicy("http://127.0.0.1:1/hook", 1.0, backoff_initial_s=1.0,
                       backoff_max_s=8.0, give_up_after_s=30.0)


class FakeClock:
    """Time moves only when the delivery waits (stop.wait is replaced by advancing it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Waiter(threading.Event):
    def __init__(self, clock: FakeClock, stop_after: int | None = None) -> None:
        super().__init__()
        self.clock, self.waits, self.stop_after = clock, [], stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        self.clock.now += timeout or 0.0
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def run(answers: list[tuple[int | None, str]], stop_after: int | None = None
        ) -> tuple[object, list[dict[str, str]], Waiter]:
    clock, sent = FakeClock(), []
    waiter = Waiter(clock, stop_after)

    def post(url: str, body: bytes, headers: dict[str, str], timeout: float
             ) -> tuple[int | None, str]:
        sent.append(headers)
        return answers[min(len(sent), len(answers)) - 1]

    d = WebhookDelivery(POLICY, waiter, post=post, clock=clock, seed=1)
    return d.deliver("00000000000000aa", b"{}"), sent, waiter


def test_transient_failures_are_retried_with_growing_capped_backoff() -> None:
    outcome, sent, waiter = run([(503, "HTTP 503"), (None, "no response"), (429, "HTTP 429"),
                                 (500, "HTTP 500"), (502, "HTTP 502"), (204, "HTTP 204")])
    assert outcome == Delivered(204, 6)
    assert [h["X-Journeymap-Attempt"] for h in sent] == ["1", "2", "3", "4", "5", "6"]
    assert {h["Idempotency-Key"] for h in sent} == {"00000000000000aa"}
    steps = [1, 2, 4, 8, 8]
    assert all(s / 2 <= w < s for w, s in zip(waiter.waits, steps, strict=True))


def test_permanent_refusals_are_parked_at_once() -> None:
    for status in (400, 401, 404, 410, 301):
        outcome, sent, _ = run([(status, f"HTTP {status}")])
        assert isinstance(outcome, Parked) and outcome.last_status == status
        assert len(sent) == 1 and f"HTTP {status}" in outcome.reason


def test_gives_up_after_the_configured_time() -> None:
    outcome, _, waiter = run([(503, "HTTP 503: busy")])
    assert isinstance(outcome, Parked) and outcome.reason.startswith("gave up after")
    assert "HTTP 503: busy" in outcome.reason
    assert sum(waiter.waits) <= POLICY.give_up_after_s
    assert sum(waiter.waits) > POLICY.give_up_after_s - POLICY.backoff_max_s


def test_stop_while_waiting_is_neither_delivered_nor_parked() -> None:
    outcome, sent, _ = run([(503, "HTTP 503")], stop_after=2)
    assert outcome == Interrupted(2)
    assert len(sent) == 2


def test_backoff_jitter_stays_in_half_to_full_step() -> None:
    rng = random.Random(0)
    for attempt in range(1, 12):
        step = min(8.0, 2.0 ** (attempt - 1))
        assert step / 2 <= backoff_s(POLICY, attempt, rng) < step
