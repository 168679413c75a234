"""Chaos across processes on PostgreSQL: one ``freight serve --no-worker`` and three ``freight worker``s
on one database (shared ``--blobs`` directory), SIGKILLed at random while batches of several kinds run:
the scripted model, a remote upstream (the simulator, with 5xx, dropped connections and 429 bursts),
Anthropic Message Batches, and a batch lane (``openai-batch`` forwarding to a second freight playing
the provider, not killed). A killed process is started again at once (a worker under a new
owner id: it joins mid-batch); now and then a worker is stopped with SIGTERM instead (it leaves and
gives its work back) and started again later.

    python -m tests.chaos_postgres --kills 60          # from the repository root (`make chaos` runs it too)

Checked when every batch has ended:

- guarantee 1, line by line: every batch's output and error files (a Message Batch's results) hold
  exactly one line per input ``custom_id``, and ``request_counts`` agree with them;
- no request ran again after its result was stored: every result seen in the database at any kill is
  the one in the final file (same status and request id; attempt fencing);
- workers that joined mid-batch took work (their owner id held running requests).

"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos import Tally, check_lines, check_not_rerun, make_lines, seed_from_env
from servers import (
    SCRIPTED,
    TERMINAL,
    FreightServer,
    config_text,
    free_port,
    freight_command,
    jsonl_bytes,
    parse_jsonl,
    postgres_database,
    subprocess_env,
)

from freight.testing.upstream import Upstream, UpstreamConfig

REMOTE = "remote-sim"
LANE = "lane-fwd"
CHAT = "/v1/chat/completions"
ANTHROPIC = {"anthropic-version": "2023-06-01"}


def config(upstream_url: str, provider_url: str, rng: random.Random) -> str:
    return f"""\
[models."{LANE}"]
backend = "openai-batch"
base_url = "{provider_url}/v1"
upstream_model = "{SCRIPTED}"
poll_interval_s = 0.1
max_poll_interval_s = 0.4
max_requests_per_batch = 20

[models."{SCRIPTED}"]
backend = "scripted"
chunk_size = {rng.choice((4, 8, 16))}
max_concurrency = {rng.choice((2, 4))}

[models."{REMOTE}"]
backend = "openai"
base_url = "{upstream_url}"
chunk_size = 8
max_concurrency = 32
timeout_s = 5

[engine]
poll_interval_s = 0.05
retry_base_delay_s = 0.05
retry_max_delay_s = 0.5
max_attempts = 6
lease_s = 2
step_lease_s = 2

[limits]
max_active_batches_per_project = 0
"""


class Fleet:
    """The processes: the API on a fixed port, workers by name; each killed or stopped, then started."""

    def __init__(self, root: Path, url: str, rng: random.Random):
        self.root, self.url, self.rng = root, url, rng
        self.port = free_port()
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.joined_late: set[str] = set()
        self._n = 0

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        # Each process its own data dir (its lock and engine id), so a restart is a new owner on the store.
        self._n += 1
        data = self.root / f"data-{name}-{self._n}"
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [*freight_command(), *args, "--data-dir", str(data), "--database-url", self.url,
                 "--blobs", str(self.root / "blobs"), "--config", str(self.root / "freight.toml")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=subprocess_env(),
                cwd=self.root, start_new_session=True)

    def start_api(self) -> None:
        self.api = self._spawn("api", ["serve", "--no-worker", "--host", "127.0.0.1", "--port", str(self.port)])

    def start_worker(self, name: str, late: bool = False) -> None:
        self.workers[name] = self._spawn(f"worker-{name}", ["worker"])
        if late:
            self.joined_late.add(name)

    def kill(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(proc)

    def close(self) -> None:
        for proc in [self.api, *self.workers.values()]:
            self.stop(proc)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as c:
            return [tuple(r) for r in c.execute(sql).fetchall()]


class Client:
    """An SDK-like client: a create carries an Idempotency-Key and is retried until answered."""

    def __init__(self, base: str):
        self.http = httpx.Client(base_url=base, timeout=30)

    def call(self, method: str, path: str, *, timeout_s: float = 120, **kw: Any) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                r = self.http.request(method, path, **kw)
                if r.status_code < 500:
                    r.raise_for_status()
                    return r
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path} got no answer in {timeout_s} s")
            time.sleep(0.2)


class _Stopper:
    def __init__(self, server: FreightServer):
        self.server = server

    def close(self) -> None:
        self.server.stop()


def run_chaos(root: Path, url: str, rng: random.Random, tally: Tally, kills: int, *, n: int,
              deadline_s: float) -> None:
    (root / "provider.toml").write_text(config_text())
    provider = FreightServer(root / "provider-data", root / "provider.toml", log_path=root / "provider.log")
    with Upstream(UpstreamConfig(latency_s=0.01, error_rate=0.04, drop_rate=0.02, throttle_every_s=3.0,
                                 throttle_for_s=0.3)) as up, contextlib.closing(_Stopper(provider.start())):
        (root / "freight.toml").write_text(config(up.base_url, provider.url, rng))
        fleet = Fleet(root, url, rng)
        client = Client(f"http://127.0.0.1:{fleet.port}")
        owners_seen: set[str] = set()
        stop_sampling = threading.Event()

        def sample() -> None:  # which engine ids hold running requests (lease_owner)
            while not stop_sampling.is_set():
                with contextlib.suppress(Exception):
                    owners_seen.update(r[0] for r in fleet.rows(
                        "SELECT DISTINCT lease_owner FROM requests WHERE state=1 AND lease_owner IS NOT NULL"))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        try:
            fleet.start_api()
            for name in ("w1", "w2", "w3"):
                fleet.start_worker(name)
            sampler.start()
            openai_batches: dict[str, list[str]] = {}
            message_batches: dict[str, list[str]] = {}
            before: dict[tuple[str, str], tuple[Any, Any]] = {}

            def submit(kind: int) -> None:
                prefix = f"b{len(openai_batches) + len(message_batches)}"
                if kind == 2:
                    ids = [f"{prefix}-{i:04d}" for i in range(max(20, n // 4))]
                    reqs = [{"custom_id": c, "params": {"model": SCRIPTED, "max_tokens": 16,
                                                        "messages": [{"role": "user", "content": c}]}} for c in ids]
                    r = client.call("POST", "/v1/messages/batches", json={"requests": reqs},
                                    headers={**ANTHROPIC, "Idempotency-Key": f"mb-{prefix}"})
                    message_batches[r.json()["id"]] = ids
                    return
                model = {0: SCRIPTED, 1: REMOTE}.get(kind, LANE)
                lines = make_lines(rng, prefix, n if kind == 0 else n // 2 if kind == 1 else n // 4, model=model)
                if kind != 0:
                    for line in lines:  # the simulator answers; the scripted faults are the scripted model's
                        line["body"].pop("script", None)
                        line["body"]["max_tokens"] = 8
                f = client.call("POST", "/v1/files", files={"file": ("in.jsonl", jsonl_bytes(lines))},
                                data={"purpose": "batch"}, headers={"Idempotency-Key": f"f-{prefix}"}).json()
                b = client.call("POST", "/v1/batches", json={"input_file_id": f["id"], "endpoint": CHAT,
                                                               "completion_window": "24h"},
                                headers={"Idempotency-Key": f"b-{prefix}"}).json()
                openai_batches[b["id"]] = [line["custom_id"] for line in lines]

            for kind in (0, 1, 2, 3):
                submit(kind)
            left: dict[str, float] = {}  # workers stopped with SIGTERM: when they come back
            started = time.monotonic()
            for k in range(kills):
                time.sleep(rng.uniform(0.2, 1.2))
                if k % 4 == 3:
                    submit((k // 4) % 4)
                with contextlib.suppress(Exception):
                    before.update({(b, c): (s, r) for b, c, s, r in fleet.rows(
                        "SELECT batch_id, custom_id, status_code, request_id FROM requests WHERE state=2")})
                if rng.random() < 0.25:
                    fleet.kill(fleet.api)
                    fleet.start_api()
                    tally.landed["api"] += 1
                else:
                    name = rng.choice(sorted(set(fleet.workers) - set(left)))
                    fleet.kill(fleet.workers[name])
                    fleet.start_worker(name, late=True)
                    tally.landed["worker"] += 1
                tally.kills += 1
                for name, when in list(left.items()):
                    if time.monotonic() >= when:
                        del left[name]
                        fleet.start_worker(name, late=True)
                if not left and rng.random() < 0.15:  # one leaves (SIGTERM) for a while
                    name = rng.choice(sorted(fleet.workers))
                    fleet.stop(fleet.workers[name])
                    left[name] = time.monotonic() + rng.uniform(1, 3)
                    tally.landed["worker left"] += 1
            for name in left:
                fleet.start_worker(name, late=True)
            # Let everything end.
            remaining = deadline_s - (time.monotonic() - started)
            end = time.monotonic() + max(60.0, remaining)
            pending = set(openai_batches) | set(message_batches)
            while pending and time.monotonic() < end:
                for bid in sorted(pending):
                    if bid in openai_batches:
                        done = client.call("GET", f"/v1/batches/{bid}").json()["status"] in TERMINAL
                    else:
                        done = client.call("GET", f"/v1/messages/batches/{bid}",
                                           headers=ANTHROPIC).json()["processing_status"] == "ended"
                    if done:
                        pending.discard(bid)
                time.sleep(0.3)
            for bid in sorted(pending):
                tally.problem(f"{bid} did not end within the deadline")
            stop_sampling.set()
            sampler.join(5)
            for bid, ids in openai_batches.items():
                if bid in pending:
                    continue
                b = client.call("GET", f"/v1/batches/{bid}").json()
                out = parse_jsonl(client.call("GET", f"/v1/files/{b['output_file_id']}/content").content) \
                    if b.get("output_file_id") else []
                err = parse_jsonl(client.call("GET", f"/v1/files/{b['error_file_id']}/content").content) \
                    if b.get("error_file_id") else []
                rc = b["request_counts"]
                check_lines(tally, bid, ids, out, err, (rc["total"], rc["completed"], rc["failed"]))
                check_not_rerun(tally, bid, {c: v for (b2, c), v in before.items() if b2 == bid}, out + err)
            for bid, ids in message_batches.items():
                if bid in pending:
                    continue
                results = parse_jsonl(client.call("GET", f"/v1/messages/batches/{bid}/results",
                                                  headers=ANTHROPIC).content)
                check_lines(tally, bid, ids, results, [], None)
            tally.landed["engine ids that ran requests"] = len(owners_seen)
            if len(owners_seen) < 4:
                tally.problem(f"only {len(owners_seen)} engine ids held running requests: workers that "
                              "joined mid-batch took no work")
        finally:
            stop_sampling.set()
            fleet.close()


def chaos_postgres(kills: int, *, seed: int | None = None, workdir: Path | None = None, n: int = 200,
                   deadline_s: float = 120) -> Tally:
    seed = seed_from_env(seed)
    rng = random.Random(seed)
    tally = Tally(seed=seed, target="postgres fleet")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        root = workdir or Path(tempfile.mkdtemp(prefix="freight-chaos-pg-"))
        url = stack.enter_context(postgres_database("freight_chaos"))
        done = subprocess.run([*freight_command(), "migrate", "--database-url", url], capture_output=True,
                              text=True, env=subprocess_env(), stdin=subprocess.DEVNULL, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"freight migrate failed: {done.stderr}")
        run_chaos(root, url, rng, tally, kills, n=n, deadline_s=deadline_s)
    tally.elapsed_s = time.monotonic() - started
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=60)
    parser.add_argument("--requests", type=int, default=400, help="requests of a scripted batch")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    tally = chaos_postgres(args.kills, seed=args.seed, n=args.requests, deadline_s=600)
    print(tally.table())
    return 0 if tally.ok else 1


if __name__ == "__main__":
    sys.exit(main())
