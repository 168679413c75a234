"""The scheduling policy (freight/domain/scheduling.py): property tests, a pure simulation on a fixed
clock, and the engine with the scripted backend sharing one model between weighted projects."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.backends.scripted import ScriptedBackend
from freight.domain.batches import TERMINAL, Batch
from freight.domain.clock import FixedClock
from freight.domain.requests import Failure, Result
from freight.domain.scheduling import Candidate, Policy, check_priority, order, share, target, urgent
from freight.domain.windows import huge_integer
from freight.engine.engine import Engine, EngineSettings
from freight.engine.settings import SchedulingSettings
from freight.services.batches import BatchService
from freight.services.catalog import ModelCatalog
from freight.services.files import FileService
from freight.store.blobs import LocalBlobStore
from freight.store.sqlite import SqliteStore

NOW = 10_000.0
projects = st.sampled_from(["a", "b", "c", "d"])
candidates = st.lists(st.builds(
    Candidate, id=st.uuids().map(str), project=projects, priority=st.integers(-5, 5),
    created_at=st.floats(0, NOW), expires_at=st.floats(NOW - 100, NOW + 10_000), remaining=st.integers(0, 500),
    paused=st.booleans()), max_size=20, unique_by=lambda c: c.id)
# (no subnormal seconds: scaling every weight by a power of two scales every share exactly only in the
# normal range; below it, rounding differs and two shares can swap, as a full-suite run once found)
usage = st.dictionaries(projects, st.floats(0, 1000, allow_subnormal=False))
weights = st.dictionaries(projects, st.floats(0.1, 10))
rate = st.floats(0.01, 5)


@settings(max_examples=150, deadline=None)
@given(candidates, usage, weights, rate, st.integers(1, 8))
def test_order_is_every_unpaused_batch_once_with_urgent_ones_first(
        cs: list[Candidate], used: dict[str, float], w: dict[str, float], spr: float, slots: int) -> None:
    policy = Policy(w)
    got = order(cs, used, policy, NOW, spr, slots)
    assert sorted(c.id for c in got) == sorted(c.id for c in cs if not c.paused)
    first = urgent([c for c in cs if not c.paused], NOW, spr, slots, policy.margin)
    assert got[:len(first)] == first, "urgent batches come before all others"
    targets = [target(c, policy.margin) for c in first]
    assert targets == sorted(targets), "earliest target first"
    if first:  # the ramp holds only batches that must run now: the last one's demand reaches its target
        assert NOW + sum(x.remaining * spr / slots for x in first) >= target(first[-1], policy.margin) - 1e-6
    rest = got[len(first):]
    keys = [(share(used, policy, c.project), c.project) for c in rest]
    assert keys == sorted(keys), "then projects by share of model time used / weight"
    for x, y in itertools.pairwise(rest):
        if x.project == y.project:
            assert (-x.priority, x.expires_at, x.remaining) <= (-y.priority, y.expires_at, y.remaining), \
                "priority, then deadline, then the least work"


@settings(max_examples=100, deadline=None)
@given(candidates, usage, weights, rate, st.sampled_from([0.125, 0.5, 2.0, 4.0, 64.0]))
def test_scaling_every_weight_alike_changes_nothing(
        cs: list[Candidate], used: dict[str, float], w: dict[str, float], spr: float, k: float) -> None:
    a = order(cs, used, Policy(w), NOW, spr)
    b = order(cs, used, Policy({p: x * k for p, x in w.items()}, default_weight=k), NOW, spr)
    assert [c.id for c in a] == [c.id for c in b]


def test_an_integer_too_large_for_json_parsers_is_out_of_range_not_of_the_wrong_type() -> None:
    from freight.wire import jsonx

    huge = jsonx.loads(b"1180591620717411303424")  # 2**70: orjson reads it as a float
    with pytest.raises(ValueError, match="must be between -1000 and 1000, got 1180591620717411303424"):
        check_priority(huge)


@given(st.one_of(st.integers(), st.booleans(), st.floats(), st.text(max_size=3)))
def test_priority_is_an_integer_in_range(value: object) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and -1000 <= value <= 1000:
        assert check_priority(value) == value
    else:  # (a wrong type is a TypeError: the API answers invalid_type, an integer out of range invalid_value)
        wrong_type = (isinstance(value, bool) or not isinstance(value, int)) and not huge_integer(value)
        with pytest.raises(TypeError if wrong_type else ValueError, match="priority"):
            check_priority(value)


# ---- a pure simulation: one model slot, every request takes 1 s on a fixed clock -------------------------

def simulate(batches: list[Candidate], policy: Policy, *, seconds: int, arrivals: dict[int, Candidate] | None = None,
             ramp: bool = True) -> tuple[list[str], dict[str, float]]:
    """Run ``seconds`` requests one at a time; the batch served each second, and when each batch finished."""
    live = {c.id: c for c in batches}
    used: Counter[str] = Counter()
    served: list[str] = []
    finished: dict[str, float] = {}
    for t in range(seconds):
        now = NOW + t
        for c in [c for at, c in (arrivals or {}).items() if at == t]:
            live[c.id] = replace(c, created_at=now, expires_at=now + (c.expires_at - c.created_at))
        todo = [c for c in live.values() if c.remaining > 0 and now < c.expires_at]
        ranked = order(todo, used, policy, now, 1.0 if ramp else 0.0)
        if not ranked:
            break
        c = ranked[0]
        served.append(c.id)
        used[c.project] += 1.0
        live[c.id] = replace(c, remaining=c.remaining - 1)
        if c.remaining == 1:
            finished[c.id] = now + 1
    return served, finished


def big(batch_id: str, project: str, n: int = 10_000, window: float = 86_400, priority: int = 0) -> Candidate:
    return Candidate(batch_id, project, priority, NOW, NOW + window, n)


def test_weights_1_2_3_give_shares_within_ten_percent() -> None:
    policy = Policy({"a": 1, "b": 2, "c": 3})
    served, _ = simulate([big("a1", "a"), big("b1", "b"), big("b2", "b"), big("c1", "c")], policy, seconds=600)
    per = Counter(x[0] for x in served)
    for project, weight in (("a", 1), ("b", 2), ("c", 3)):
        assert abs(per[project] / 600 - weight / 6) <= 0.1 * weight / 6, per


def test_a_high_priority_batch_submitted_late_overtakes_its_project() -> None:
    policy = Policy({})
    late = big("a-urgent-work", "a", n=20, priority=5)
    served, finished = simulate([big("a1", "a"), big("b1", "b")], policy, seconds=200, arrivals={50: late})
    after = served[50:]
    a_turns = [x for x in after if x.startswith("a")]
    assert a_turns[:20] == ["a-urgent-work"] * 20, "each of project a's turns goes to it until it is done"
    assert finished["a-urgent-work"] <= NOW + 50 + 41, "and it still shares the model fairly with b"


def test_the_deadline_ramp_meets_a_window_fair_share_alone_would_miss() -> None:
    policy = Policy({"big": 10, "small": 1})
    small = Candidate("small1", "small", 0, NOW, NOW + 100, 50)  # 50 s of work in a 100 s window
    _, finished = simulate([big("big1", "big"), small], policy, seconds=300)
    assert finished["small1"] <= NOW + 100 * 0.9 + 1, "done by 90% of its window"
    _, unfair = simulate([big("big1", "big"), small], policy, seconds=300, ramp=False)
    assert "small1" not in unfair, "without the ramp its 1/11 share would not finish it in time"


def test_deadlines_are_met_when_a_schedule_can_meet_them() -> None:
    policy = Policy({})
    # Three windows, each feasible when earliest deadline goes first (20 + 30 + 25 = 75 s of work by 100 s).
    cs = [Candidate("x", "p1", 0, NOW, NOW + 40, 20), Candidate("y", "p2", 0, NOW, NOW + 70, 30),
          Candidate("z", "p3", 0, NOW, NOW + 100, 25), big("w", "p4", window=10_000)]
    _, finished = simulate(cs, policy, seconds=400)
    for c in cs[:3]:
        assert finished[c.id] <= c.expires_at, (c.id, finished)


# ---- the engine: one scripted model shared by projects weighted 1:2:3 -------------------------------------

class Timed(ScriptedBackend):
    """Each chunk takes 1 s of the fixed clock per request, and is recorded by project."""

    def __init__(self, clock: FixedClock) -> None:
        super().__init__(chunk_size=2, max_concurrency=1)
        self.clock = clock
        self.chunks: list[str] = []

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        self.chunks.append(bodies[0]["messages"][0]["content"].split("-")[0])
        self.clock.advance(len(bodies))
        return await super().execute(endpoint, bodies)


def test_the_engine_shares_a_model_by_weight(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite", synchronous="OFF")
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
    clock = FixedClock()
    backend = Timed(clock)
    weights = SchedulingSettings(weights={"a": 1, "b": 2, "c": 3})
    engine = Engine(store, blobs, ModelCatalog([backend]), clock,
                    EngineSettings(poll_interval_s=0.01, lease_s=3600, scheduling=weights))
    files, batches = FileService(store, blobs, clock), BatchService(store, clock, on_change=engine.wake)

    def submit(project: str, n: int) -> Batch:
        data = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
            "model": "freight-scripted", "messages": [{"role": "user", "content": f"{project}-{i}"}]}}) + "\n"
            for i in range(n)).encode()
        file_id, writer = files.new_upload()
        writer.write(data)
        f = files.finish_upload(project, file_id, writer, filename="in.jsonl", purpose="batch", expires_after_s=None)
        return batches.create(project, {"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                                        "completion_window": "24h"})

    everything = [submit(p, 120) for p in "abc"]

    async def main() -> None:
        while any(b.status.value == "validating" for b in store.active_batches()):
            await engine.tick()
        await engine.tick()

        def done() -> bool:
            return all((b := store.get_batch(None, x.id)) is not None and b.status in TERMINAL for x in everything)

        await asyncio.wait_for(engine.run(until=done), 60)

    try:
        asyncio.run(main())
        per = Counter(backend.chunks[:60])  # while every project still has work
        for project, weight in (("a", 1), ("b", 2), ("c", 3)):
            assert abs(per[project] / 60 - weight / 6) <= 0.1 * weight / 6, (per, backend.chunks[:60])
        assert sum(store.usage_since(0).values()) == pytest.approx(360), "model time used is stored"
    finally:
        store.close()


def test_weights_and_margin_come_from_the_config(tmp_path: Path) -> None:
    from freight.config import load_settings
    from freight.domain.errors import ConfigError

    path = tmp_path / "freight.toml"
    path.write_text('[scheduling]\nmargin = 0.8\nusage_window = "10m"\n[projects."a"]\nweight = 3\n')
    s = load_settings(path, env={}).engine.scheduling
    assert (s.weights, s.margin, s.usage_window_s) == ({"a": 3.0}, 0.8, 600)
    for bad in ('[projects."a"]\nweight = 0\n', "[scheduling]\nmargin = 1.5\n", "[scheduling]\nspeed = 1\n",
                '[projects."a"]\nrate = 1\n'):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            load_settings(path, env={})
