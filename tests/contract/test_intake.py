"""The intake store port on SQLite and PostgreSQL: dedupe, claim once, batch per flush, delivery."""

from __future__ import annotations

from freight.ports import IntakeMessage, Store


def _msg(mid: str, *, url: str = "/v1/chat/completions", result: str | None = None, at: float = 1.0) -> IntakeMessage:
    return IntakeMessage("src", mid, f"c-{mid}", url, None if result else '{"model":"m"}', "reply", "corr", at,
                         result=result)


def test_a_message_is_kept_once_per_source(store: Store) -> None:
    assert store.add_intake(_msg("a"))
    assert not store.add_intake(_msg("a"))
    assert store.add_intake(IntakeMessage("other", "a", "c", "/v1/embeddings", "{}", None, None, 2.0))
    got = store.get_intake("src", "a")
    assert got is not None and got.custom_id == "c-a" and got.reply_to == "reply" and got.correlation_id == "corr"
    assert store.get_intake("src", "zzz") is None


def test_pending_messages_are_claimed_into_one_flush_once(store: Store) -> None:
    for i in range(5):
        store.add_intake(_msg(f"m{i}", url="/v1/embeddings" if i == 4 else "/v1/chat/completions"))
    store.add_intake(_msg("bad", result='{"error":1}\n'))
    assert [m.message_id for m in store.intake_pending("src")] == ["m0", "m1", "m2", "m3", "m4"]
    assert store.claim_intake("src", "f1", 3) == 3
    assert store.claim_intake("src", "f2", 10) == 2
    assert store.intake_pending("src") == []
    assert sorted(store.open_flushes("src")) == ["f1", "f2"]
    assert [m.message_id for m in store.intake_flush("f2")] == ["m3", "m4"]
    m3, m4 = store.intake_flush("f2")
    assert store.set_intake_batch("f2", [m3.seq], "batch_x") == 1
    assert store.open_flushes("src") == ["f1", "f2"] or sorted(store.open_flushes("src")) == ["f1", "f2"]
    assert store.set_intake_batch("f1", [m4.seq], "batch_y") == 0  # not a message of that flush
    assert store.set_intake_batch("f2", [m4.seq], "batch_y") == 1
    assert store.set_intake_batch("f2", [m4.seq], "batch_z") == 0  # a batch is set once
    assert store.open_flushes("src") == ["f1"]


def test_undelivered_results_until_marked(store: Store) -> None:
    store.add_intake(_msg("bad", result='{"error":1}\n'))
    store.add_intake(_msg("ok"))
    store.add_intake(_msg("waiting"))
    store.claim_intake("src", "f", 1)  # "ok"
    store.set_intake_batch("f", [m.seq for m in store.intake_flush("f")], "batch_1")
    assert [m.message_id for m in store.intake_undelivered("src", 10)] == ["bad", "ok"]
    assert store.mark_intake_delivered("src", ["bad", "ok"]) == 2
    assert store.mark_intake_delivered("src", ["bad"]) == 0
    assert store.intake_undelivered("src", 10) == []
    got = store.get_intake("src", "ok")
    assert got is not None and got.delivered and got.batch_id == "batch_1" and got.flush_id == "f"


def test_many_messages_are_kept_in_one_go_each_once(store: Store) -> None:
    store.add_intake(_msg("a"))
    assert store.add_intakes([_msg("a"), _msg("b"), _msg("c"), _msg("b")]) == 2
    assert [m.message_id for m in store.intake_pending("src")] == ["a", "b", "c"]
    assert store.add_intakes([]) == 0


def test_a_refused_flush_gives_its_messages_results_once(store: Store) -> None:
    for mid in ("a", "b", "c"):
        store.add_intake(_msg(mid))
    store.claim_intake("src", "f", 3)
    assert store.set_intake_results("src", [("a", "line-a\n"), ("b", "line-b\n")]) == 2
    assert store.set_intake_results("src", [("a", "again\n")]) == 0  # a result is set once
    assert store.open_flushes("src") == ["f"]  # "c" still needs its batch
    store.set_intake_batch("f", [m.seq for m in store.intake_flush("f")], "batch_2")  # only "c": a and b have results
    assert store.open_flushes("src") == []
    assert store.set_intake_results("src", [("c", "late\n")]) == 0  # it has a batch
    got = {m.message_id: (m.result, m.batch_id) for m in store.intake_undelivered("src", 10)}
    assert got == {"a": ("line-a\n", None), "b": ("line-b\n", None), "c": (None, "batch_2")}
