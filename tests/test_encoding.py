"""Response JSON, request ids and event ids (app/encoding.py)."""

from __future__ import annotations

import json
import os
import uuid

from app.encoding import encode_json, new_event_id, new_request_id


def test_event_ids_are_version_4_uuids_in_their_usual_text() -> None:
    ids = [new_event_id() for _ in range(5000)]

    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_event_id()  # the pool holds unused bytes now
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, new_event_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)

    assert from_child != new_event_id()


def test_request_ids_are_32_hex_digits() -> None:
    ids = {new_request_id() for _ in range(1000)}

    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_json_is_compact_utf8_and_takes_integers_beyond_64_bits() -> None:
    assert encode_json({"a": "ü", "b": [1, 2.5, None]}) == '{"a":"ü","b":[1,2.5,null]}'.encode()
    assert json.loads(encode_json({"n": 2**70})) == {"n": 2**70}
