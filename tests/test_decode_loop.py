"""The llama.cpp backend's decode loop on a fake model: no llama.cpp, no threads, no timing.

The fake model's sampled token depends on the seed's random stream *and* on how many sequences share
the forward pass, as llama.cpp's on a CPU does by float noise (see freight/backends/llama_cpp/decode_loop.py).
So two identical seeded sequences decoded in different company come out different, unless the loop
decodes them once. Also: a request withdrawn while it waits for a slot ends at once, unstarted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from freight.backends.llama_cpp.decode_loop import DecodeLoop, Job
from freight.backends.llama_cpp.interface import BatchItem, SeqSpec
from freight.ports import Withdrawal

VOCAB = 1000


class FakeSampler:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)


class FakeRunner:
    n_vocab = VOCAB
    slot_ctx = 4096
    n_batch = 512
    min_prefix = 16
    wants_dense_slots = False

    def __init__(self, n_slots: int) -> None:
        self.n_slots = n_slots
        self.width = 0
        self.freed = 0

    def forward(self, items: Sequence[BatchItem]) -> list[int]:
        self.width = len(items)
        return [i if item.logits else -1 for i, item in enumerate(items)]

    def sample(self, sampler: Any, out: int) -> int:
        token: int = (sampler.rng.randrange(VOCAB) + self.width) % VOCAB  # "noise" from the batch's width
        return token

    def piece(self, token: int) -> bytes:
        return b"%d " % token

    def is_eog(self, token: int) -> bool:
        return False

    def free_sampler(self, sampler: Any) -> None:
        self.freed += 1

    def release(self, slot: int) -> None: ...
    def move(self, src: int, dst: int) -> None: ...
    def remember_prefix(self, slot: int, prompt: Sequence[int]) -> None: ...

    def cached_prefix(self, prompt: Sequence[int]) -> int:
        return 0


def spec(prompt: list[int], seed: int, max_tokens: int = 6, keyed: bool = True) -> SeqSpec:
    key = repr((prompt, seed, max_tokens)).encode() if keyed else None
    return SeqSpec(prompt, max_tokens, FakeSampler(seed), key=key)


def turn(loop: DecodeLoop) -> None:
    """One round of the loop's thread, run here."""
    loop._pull(block=False)
    loop._reap_cancelled()
    loop._admit()
    loop._compact()
    if loop._active:
        loop._step()


def submit(loop: DecodeLoop, s: SeqSpec, withdrawal: Withdrawal | None = None) -> Job:
    job = Job(1, lambda _job: None, withdrawal)
    loop._thread = object()  # type: ignore[assignment]  # submit() checks that the loop runs
    loop.submit([(s, job, 0)])
    return job


def run(loop: DecodeLoop, *jobs: Job, limit: int = 200) -> None:
    for _ in range(limit):
        if all(j.done for j in jobs):
            return
        turn(loop)
    raise AssertionError("the jobs did not finish")


def text(job: Job) -> bytes:
    out = job.outputs[0]
    assert out is not None
    return out.text


def busy_batch(loop: DecodeLoop, keyed: bool) -> tuple[Job, Job]:
    """Identical seeded requests, far apart, among others that come and go."""
    first = submit(loop, spec([1, 2, 3], seed=7, keyed=keyed))
    turn(loop)
    others = [submit(loop, spec([9, i], seed=i, max_tokens=2 + i % 3)) for i in range(5)]
    turn(loop)
    turn(loop)
    second = submit(loop, spec([1, 2, 3], seed=7, keyed=keyed))
    run(loop, first, second, *others)
    return first, second


def test_identical_seeded_requests_in_one_busy_batch_get_the_same_output() -> None:
    loop = DecodeLoop(FakeRunner(n_slots=4))  # type: ignore[arg-type]
    first, second = busy_batch(loop, keyed=True)
    assert text(first) == text(second) and loop.stats.shared == 1


def test_the_fake_model_does_depend_on_the_batch() -> None:
    """Without the key (no seed given) the same two requests differ: the test above could fail."""
    loop = DecodeLoop(FakeRunner(n_slots=4))  # type: ignore[arg-type]
    first, second = busy_batch(loop, keyed=False)
    assert text(first) != text(second) and loop.stats.shared == 0


def test_a_later_identical_request_gets_the_finished_output() -> None:
    loop = DecodeLoop(FakeRunner(n_slots=4))  # type: ignore[arg-type]
    first = submit(loop, spec([5, 6], seed=3))
    run(loop, first)
    crowd = [submit(loop, spec([8, i], seed=i)) for i in range(3)]
    again = submit(loop, spec([5, 6], seed=3))
    run(loop, again, *crowd)
    assert text(again) == text(first) and loop.stats.shared == 1


def test_a_cancelled_leader_hands_over_to_its_follower() -> None:
    runner = FakeRunner(n_slots=1)
    loop = DecodeLoop(runner)  # type: ignore[arg-type]
    blocker = submit(loop, spec([4], seed=1, max_tokens=3))
    leader = submit(loop, spec([1, 2], seed=9))
    follower = submit(loop, spec([1, 2], seed=9))
    turn(loop)
    leader.cancel()
    run(loop, blocker, follower)
    assert follower.outputs[0] is not None and not follower.error and loop.stats.shared == 0
    assert not loop._leaders and not loop._waiting


def test_a_withdrawn_request_waiting_for_a_slot_ends_unstarted() -> None:
    runner = FakeRunner(n_slots=1)
    loop = DecodeLoop(runner)  # type: ignore[arg-type]
    withdrawal = Withdrawal()
    running = submit(loop, spec([4], seed=1, max_tokens=5), withdrawal)
    waiting = submit(loop, spec([5], seed=2), withdrawal)
    follower = submit(loop, spec([4], seed=1, max_tokens=5), withdrawal)  # identical to the running one
    turn(loop)
    withdrawal.set("cancelled")
    turn(loop)
    assert waiting.done and waiting.withdrawn and waiting.outputs == [None]
    assert follower.done and follower.withdrawn
    run(loop, running)
    assert not running.withdrawn and running.outputs[0] is not None  # it had a slot: it finishes
    assert runner.freed == 3
