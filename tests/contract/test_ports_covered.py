"""Every method of every store port is called by this contract suite."""

from __future__ import annotations

import re
from pathlib import Path

from freight.ports import (
    BatchStore,
    EventStore,
    FileStore,
    IntakeStore,
    KeyStore,
    LaneStore,
    MessageBatchStore,
    RequestQueue,
    ResultCache,
    SchedulingStore,
    StatsStore,
    StepLeases,
    Store,
    WebhookStore,
)


def port_methods(port: type) -> set[str]:
    return {name for name, value in vars(port).items() if callable(value) and not name.startswith("_")}


def test_every_port_method_has_a_contract_test() -> None:
    text = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py") if p.name != Path(__file__).name)
    called = set(re.findall(r"store\.(\w+)\(", text))
    ports = (FileStore, BatchStore, RequestQueue, KeyStore, MessageBatchStore, LaneStore, StepLeases, EventStore,
             WebhookStore, StatsStore, SchedulingStore, ResultCache, IntakeStore)
    methods = set().union(*(port_methods(p) for p in ports))
    assert len(methods) > 40 and all(len(port_methods(p)) <= 15 for p in ports), "small ports"
    assert methods - called == set()
    assert port_methods(Store) == {"close"}
