"""``ReplicaPool``: the actors of one model, each in a numbered slot, and which one runs the next chunk.

Actors are named ``<prefix>:<slot>`` in the ``freight`` namespace (the prefix holds the model's name, the hash
of its weights file and of its options) and are ``detached``: they outlive the freight process that started
them, and the next one adopts them (``adopt``) instead of loading the model again. Two freight workers that
share a cluster share the same actors (``get_if_exists``), so they cannot start two copies of one slot.

Ray never retries anything here: ``max_restarts=0`` and ``max_task_retries=0``. A chunk whose actor dies
(``RayActorError``: the process was killed, its node was lost) returns a ``Failure`` for each of its requests,
which the engine retries from the store under new attempt ids (attempt fencing makes a late answer of the dead
attempt a no-op). The dead actor leaves the pool at once, so it never holds a slot, and a new one is started in
its slot. A chunk never waits on a dead actor: only live replicas are handed out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from freight.backends.ray.placement import NAMESPACE, RayPlacement
from freight.domain.requests import MODEL_UNAVAILABLE, Failure, Result

log = logging.getLogger(__name__)

#: Read by a Ray worker when it starts: its niceness (Ray's default for workers is 15).
REPLICA_NICENESS_ENV = "RAY_worker_niceness"
#: The ``Failure`` code of requests whose replica died under them (retried by the engine).
REPLICA_LOST = "replica_lost"
#: Tries to load the model in a new replica before its slot gives up (each a new actor).
LOAD_TRIES = 2
#: After a slot gave up, no replica is started for this long, and chunks with no live replica fail at once.
LOAD_RETRY_S = 30.0
#: The longest a retired replica is left to finish chunks that other freight workers run on it.
RETIRE_DRAIN_S = 600.0
#: How long a drained retired replica still answers "retiring" to chunks sent to it, before it is killed.
RETIRE_GRACE_S = 5.0


class ModelUnavailable(Exception):
    """No replica is live and the last one started could not load the model (the message says why)."""


@dataclass(frozen=True)
class ReplicaSpec:
    """What every replica of one model is: its backend (kind, options), actor names and resources."""

    kind: str
    model_id: str
    options: dict[str, Any]
    prefix: str
    placement: RayPlacement
    #: Chunks one replica runs at once (its backend's ``max_concurrency``).
    chunks_per_replica: int

    def name(self, slot: int) -> str:
        return f"{self.prefix}:{slot}"


@dataclass(eq=False)
class Replica:
    slot: int
    handle: Any
    info: dict[str, Any] = field(default_factory=dict)
    inflight: int = 0


class ReplicaPool:
    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.live: dict[int, Replica] = {}
        #: Slots whose actor is being created or loaded.
        self.starting: dict[int, asyncio.Task[None]] = {}
        #: Slots whose actor this pool retired and is waiting to drain before it is killed.
        self.retiring: dict[int, asyncio.Task[None]] = {}
        #: The replica count the pool keeps (dead ones are replaced up to it).
        self.target = spec.placement.bounds.min
        #: Replicas dropped because their actor died.
        self.lost = 0
        #: Why the last replica that gave up could not load the model, and when (``time.monotonic``).
        self.load_error: str | None = None
        self.load_failed_at = 0.0
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- bookkeeping -----------------------------------------------------------------------

    @property
    def changed(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._changed is None or self._loop is not loop:
            # A new event loop (the engine ran again): tasks of the old one are gone.
            self._changed, self._loop = asyncio.Condition(), loop
            self.starting = {s: t for s, t in self.starting.items() if not t.done() and t.get_loop() is loop}
            self.retiring = {s: t for s, t in self.retiring.items() if not t.done() and t.get_loop() is loop}
        return self._changed

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def size(self) -> int:
        """Replicas running or starting."""
        return len(self.live) + len(self.starting)

    # ---- actors ----------------------------------------------------------------------------

    def _actor_options(self, slot: int) -> dict[str, Any]:
        p = self.spec.placement
        return {"name": self.spec.name(slot), "namespace": NAMESPACE, "lifetime": "detached",
                "get_if_exists": True, "max_restarts": 0, "max_task_retries": 0,
                "num_cpus": p.num_cpus, "num_gpus": p.num_gpus, "resources": dict(p.resources),
                # chunks, plus room for ``info``/``ready`` calls beside them
                "max_concurrency": self.spec.chunks_per_replica + 4,
                # Ray starts workers at nice 15; a replica is the model server, and at that priority it got
                # 25-35% less done per chunk than the same backend in process on a busy node. Ray's own job
                # supervisor is started the same way.
                "runtime_env": {"env_vars": {REPLICA_NICENESS_ENV: "0"}}}

    def _create(self, slot: int) -> Any:
        import ray

        from freight.backends.ray.replica import ModelReplica

        actor_class = ray.remote(ModelReplica)
        return actor_class.options(**self._actor_options(slot)).remote(
            self.spec.kind, self.spec.model_id, self.spec.options)

    async def adopt(self) -> int:
        """Take over the replicas of this model that are already running (a restarted freight); how many."""
        import ray

        def existing() -> dict[int, Any]:
            found: dict[int, Any] = {}
            for slot in range(self.spec.placement.bounds.max):
                try:
                    found[slot] = ray.get_actor(self.spec.name(slot), namespace=NAMESPACE)
                except ValueError:
                    continue
            return found

        adopted = 0
        for slot, handle in (await asyncio.to_thread(existing)).items():
            if slot in self.live or slot in self.starting:
                continue
            try:
                info = await handle.ready.remote()
            except ray.exceptions.RayActorError:
                continue  # dead: its slot is free
            if info.get("retiring"):
                if orphaned(info):  # its retiring freight process is gone: the kill after the drain never came
                    await self._kill(Replica(slot, handle, info))
                continue  # another worker is draining it and kills it then
            self.live[slot] = Replica(slot, handle, info)
            adopted += 1
            log.info("replica %s adopted, already loaded (pid %s, loads %s)", self.spec.name(slot), info.get("pid"),
                     info.get("loads"), extra={"event": "ray_replica_adopted"})
        self.target = max(self.target, min(len(self.live), self.spec.placement.bounds.max))
        await self._notify()
        return adopted

    async def _start(self, slot: int) -> None:
        """Create (or find) the actor of ``slot`` and load its model; a few tries while a dead actor
        of that name is still being cleaned up."""
        import ray

        load_failures = 0
        try:
            for attempt in range(20):
                try:
                    handle = await asyncio.to_thread(self._create, slot)
                except (ValueError, TypeError) as exc:  # Ray refused the actor's options: again cannot help
                    reason = f"Ray refused the replica's options: {type(exc).__name__}: {exc}"
                    log.error("replica %s could not be created: %s", self.spec.name(slot), reason,
                              extra={"event": "ray_replica_failed"})
                    self.load_error, self.load_failed_at = reason, time.monotonic()
                    return
                try:
                    info = await handle.ready.remote()
                except ray.exceptions.RayActorError:
                    # The name still pointed at a dead actor: wait until Ray has released it.
                    await asyncio.to_thread(ray.kill, handle, no_restart=True)
                    await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))
                    continue
                except ray.exceptions.RayError as exc:  # the model failed to load
                    reason = load_failure(exc)
                    log.error("replica %s could not load its model: %s", self.spec.name(slot), reason,
                              extra={"event": "ray_replica_failed"})
                    await asyncio.to_thread(ray.kill, handle, no_restart=True)
                    load_failures += 1
                    if load_failures >= LOAD_TRIES:
                        self.load_error, self.load_failed_at = reason, time.monotonic()
                        return
                    await asyncio.sleep(1.0)
                    continue
                if info.get("retiring"):
                    # Another worker retired this slot's actor and kills it once its chunks end: wait for that
                    # (or kill it here, if that worker is gone).
                    if orphaned(info):
                        await asyncio.to_thread(ray.kill, handle, no_restart=True)
                    await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))
                    continue
                self.load_error = None
                self.live[slot] = Replica(slot, handle, info)
                log.info("replica %s ready (pid %s, loads %s)", self.spec.name(slot), info.get("pid"),
                         info.get("loads"), extra={"event": "ray_replica_ready"})
                return
            log.error("replica %s did not start after 20 tries; the autoscaler tries again", self.spec.name(slot),
                      extra={"event": "ray_replica_failed"})
        finally:
            self.starting.pop(slot, None)
            await self._notify()

    def _free_slot(self) -> int | None:
        free = [slot for slot in range(self.spec.placement.bounds.max)
                if slot not in self.live and slot not in self.starting]
        # A slot being retired takes a new actor only once the old one is gone: prefer the others.
        return min(free, key=lambda slot: (slot in self.retiring, slot)) if free else None

    def load_failed_recently(self) -> bool:
        return self.load_error is not None and time.monotonic() - self.load_failed_at < LOAD_RETRY_S

    async def _fill(self) -> None:
        """Start replicas in the lowest free slots until ``target`` run or start (none for ``LOAD_RETRY_S``
        after a replica could not load the model)."""
        self.changed  # noqa: B018 (binds the pool to this loop first)
        if self.load_failed_recently():
            return
        while self.size() < self.target:
            slot = self._free_slot()
            if slot is None:
                return
            self.starting[slot] = asyncio.create_task(self._start(slot))

    async def scale(self, count: int) -> None:
        """Run ``count`` replicas: start new ones, or retire idle ones (highest slots first)."""
        bounds = self.spec.placement.bounds
        self.target = min(max(count, bounds.min), bounds.max)
        await self._fill()
        if len(self.live) > self.target:
            for slot in sorted(self.live, reverse=True):
                if len(self.live) <= self.target:
                    break
                replica = self.live[slot]
                if replica.inflight == 0:
                    del self.live[slot]
                    self.retiring[slot] = asyncio.create_task(self._retire(replica))
                    log.info("replica %s retired", self.spec.name(slot), extra={"event": "ray_replica_retired"})

    async def _retire(self, replica: Replica) -> None:
        """Stop a replica this pool no longer needs without failing chunks that other freight workers sharing
        the cluster run on it: the actor takes no new chunk (they go to another replica) and is killed once
        the running ones end."""
        import ray

        try:
            await asyncio.wait_for(replica.handle.retire.remote(RETIRE_GRACE_S), RETIRE_DRAIN_S + RETIRE_GRACE_S)
        except (ray.exceptions.RayError, TimeoutError):
            pass  # dead already, or a chunk that never ends: killed all the same
        finally:
            await self._kill(replica)
            if self.retiring.get(replica.slot) is asyncio.current_task():
                del self.retiring[replica.slot]

    async def _kill(self, replica: Replica) -> None:
        import ray

        try:
            await asyncio.to_thread(ray.kill, replica.handle, no_restart=True)
        except Exception:  # already gone
            pass

    async def wait_ready(self, count: int, timeout_s: float, warn_after_s: float = 30.0) -> None:
        """Until ``count`` replicas are live (or a load failed). Past ``warn_after_s`` it says so once: a
        replica Ray cannot place (the cluster lacks the CPUs, GPUs or resources it asks for) waits in Ray
        without a word of its own."""
        async with self.changed:
            # A model that could not load ends the wait too: its chunks fail (MODEL_UNAVAILABLE), not wait.
            def ready() -> bool:
                return len(self.live) >= count or self.load_failed_recently()

            try:
                await asyncio.wait_for(self.changed.wait_for(ready), min(warn_after_s, timeout_s))
                return
            except TimeoutError:
                if timeout_s <= warn_after_s:
                    raise
            p = self.spec.placement
            log.warning("no replica of %s is ready after %.0f s: Ray may not be able to place one (it asks for "
                        "num_cpus=%s, num_gpus=%s, resources=%s; see `ray status`)", self.spec.model_id,
                        warn_after_s, p.num_cpus, p.num_gpus, dict(p.resources),
                        extra={"event": "replica_unplaced", "model": self.spec.model_id})
            await asyncio.wait_for(self.changed.wait_for(ready), timeout_s - warn_after_s)

    # ---- chunks ----------------------------------------------------------------------------

    async def _acquire(self) -> Replica:
        limit = self.spec.chunks_per_replica
        async with self.changed:
            while True:
                free = [r for r in self.live.values() if r.inflight < limit]
                if free:
                    chosen = min(free, key=lambda r: (r.inflight, r.slot))
                    chosen.inflight += 1
                    return chosen
                if not self.live and not self.starting:
                    if self.load_failed_recently():
                        raise ModelUnavailable(self.load_error or "")
                    self.target = max(self.target, 1)  # work is here: at least one replica, even with min = 0
                    await self._fill()
                await self.changed.wait()

    async def _release(self, replica: Replica) -> None:
        replica.inflight -= 1
        await self._notify()

    async def execute(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result | Failure]:
        """Run one chunk on a live replica. A dead replica fails the chunk (retryable) and is replaced."""
        import ray

        while True:
            try:
                replica = await self._acquire()
            except ModelUnavailable as exc:
                return [Failure(MODEL_UNAVAILABLE,
                                f"no Ray replica of model {self.spec.model_id!r} could load it: {exc}")] * len(bodies)
            try:
                results: list[Result | Failure] | None = await replica.handle.execute.remote(endpoint, list(bodies))
            except ray.exceptions.RayActorError as exc:
                await self._drop(replica, exc)
                return [Failure(REPLICA_LOST, f"the Ray actor running this request was lost: {type(exc).__name__}")
                        ] * len(bodies)
            except ray.exceptions.RayError as exc:
                return [Failure("backend_error", f"Ray could not run this request: {type(exc).__name__}: {exc}")
                        ] * len(bodies)
            finally:
                await self._release(replica)
            if results is not None:
                return results
            # Another freight worker retired this replica (it ran nothing): forget it, run the chunk elsewhere.
            if self.live.get(replica.slot) is replica:
                del self.live[replica.slot]
                await self._fill()

    async def _drop(self, replica: Replica, exc: BaseException) -> None:
        """Take a dead replica out of the pool at once and start another in its slot."""
        if self.live.get(replica.slot) is not replica:
            return  # another chunk of the same actor already dropped it
        del self.live[replica.slot]
        self.lost += 1
        log.warning("replica %s died (%s); replacing it", self.spec.name(replica.slot), type(exc).__name__,
                    extra={"event": "ray_replica_lost"})
        await self._kill(replica)
        await self._fill()

    async def infos(self) -> list[dict[str, Any]]:
        """``info()`` of every live replica (by slot)."""
        out = []
        for slot in sorted(self.live):
            info = await self.live[slot].handle.info.remote()
            out.append({"slot": slot, **info})
        return out


def orphaned(info: dict[str, Any]) -> bool:
    """A retiring replica that has outlived the longest wait of the process that retired it: nobody kills it."""
    return float(info.get("retiring_for_s") or 0.0) > RETIRE_DRAIN_S + RETIRE_GRACE_S + 60


def load_failure(exc: BaseException) -> str:
    """What a replica's failed ``ready`` says: the exception raised in the actor, without Ray's traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return str(cause) or type(cause).__name__
    return f"{type(exc).__name__}: {exc}"
