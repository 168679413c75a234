"""FileStore: metadata, idempotency keys, listing, deletion and purging."""

from __future__ import annotations

from contract_helpers import NOW, a_file, make_batch, new_batch

from freight.domain.batches import BatchStatus
from freight.ports import Store


def test_file_idempotency_key_returns_the_first_file(store: Store) -> None:
    first = a_file("file-" + "1" * 24)
    assert store.insert_file(first, first.id, "up-1").id == first.id
    again = a_file("file-" + "2" * 24)
    assert store.insert_file(again, again.id, "up-1").id == first.id
    assert store.get_file("p", again.id) is None and store.file_blob_key(again.id) is None
    other = a_file("file-" + "3" * 24, project="q")
    assert store.insert_file(other, other.id, "up-1").id == other.id, "keys are per project"
    assert store.delete_file("p", first.id)
    found = store.find_file("p", "up-1")
    assert found is not None and found.id == first.id, "a deleted file still answers its key (no re-create)"
    assert store.get_file("p", first.id) is None
    assert store.find_file("p", "nope") is None
    plain = a_file("file-" + "4" * 24)
    store.insert_file(plain, plain.id)
    store.insert_file(a_file("file-" + "5" * 24), "file-" + "5" * 24)  # many files without a key
    assert store.get_file("p", plain.id) == plain


def test_files_list_in_upload_order_both_ways_with_purpose_and_cursor(store: Store) -> None:
    ids = [f"file-{i:024x}" for i in range(5)]
    for i, fid in enumerate(ids):
        store.insert_file(a_file(fid, purpose="batch" if i % 2 == 0 else "user_data"), fid)
    store.insert_file(a_file("file-" + "f" * 24, project="q"), "x")
    page = store.list_files("p", purpose=None, after=None, limit=3, order="asc")
    assert [f.id for f in page.items] == ids[:3] and page.has_more
    page = store.list_files("p", purpose=None, after=ids[2], limit=10, order="asc")
    assert [f.id for f in page.items] == ids[3:] and not page.has_more
    page = store.list_files("p", purpose=None, after=None, limit=10, order="desc")
    assert [f.id for f in page.items] == ids[::-1]
    page = store.list_files("p", purpose="batch", after=ids[4], limit=10, order="desc")
    assert [f.id for f in page.items] == [ids[2], ids[0]]
    assert store.list_files("p", purpose=None, after="file-nope", limit=10, order="asc").items == []
    assert store.delete_file("p", ids[0]) and not store.delete_file("p", ids[0])
    assert not store.delete_file("q", ids[1]), "another project's file"
    assert [f.id for f in store.list_files("p", purpose="batch", after=None, limit=10, order="asc").items] == [
        ids[2], ids[4]]


def test_deleted_and_expired_files_are_purged_once_no_active_batch_reads_them(store: Store) -> None:
    deleted, expired, live, read = (f"file-{i:024x}" for i in range(4))
    store.insert_file(a_file(deleted), "blob-deleted")
    store.insert_file(a_file(expired, expires_at=int(NOW) - 1), "blob-expired")
    store.insert_file(a_file(live, expires_at=int(NOW) + 100), "blob-live")
    store.insert_file(a_file(read), "blob-read")
    store.insert_batch(new_batch(input_file_id=read), None)
    assert store.delete_file("p", deleted) and store.delete_file("p", read)
    assert sorted(store.purgeable_files(NOW)) == [(deleted, "blob-deleted"), (expired, "blob-expired")]
    assert len(store.purgeable_files(NOW, limit=1)) == 1
    assert store.file_blob_key(deleted) == "blob-deleted", "bytes still there until purged"
    store.mark_purged([deleted, expired])
    assert store.purgeable_files(NOW) == [] and store.file_blob_key(deleted) is None
    assert store.blob_keys() == {"blob-live", "blob-read"}
    assert store.set_status(new_batch(input_file_id=read).id, [BatchStatus.VALIDATING], BatchStatus.FAILED, 1)
    assert store.purgeable_files(NOW) == [(read, "blob-read")], "its batch has ended"


def test_a_running_batch_keeps_its_input(store: Store) -> None:
    b = make_batch(store, 1)
    store.insert_file(a_file(b.input_file_id), "blob-in")
    assert store.delete_file("p", b.input_file_id)
    assert store.purgeable_files(NOW) == []


def test_concurrent_uploads_under_one_key_make_one_file(store: Store) -> None:
    import threading

    got: list[str] = []
    barrier = threading.Barrier(4)

    def upload(i: int) -> None:
        barrier.wait()
        f = a_file(f"file-{i:024x}")
        got.append(store.insert_file(f, f.id, "same-key").id)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and len(set(got)) == 1
    assert len(store.list_files("p", purpose=None, after=None, limit=10, order="asc").items) == 1
