"""KeyService: the create path when a drawn lookup id is already taken."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authproxy.app import COMPONENTS
from authproxy.keys import service as keyservice
from authproxy.keys.format import NewKey, ParsedKey, generate_key
from tests.conftest import bearer, new_key


class TestLookupIdCollision:
    async def test_taken_lookup_id_is_drawn_again(
        self, client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the random lookup id exists already, another key is drawn; both keys work,
        and exactly one audit row is written for the new one."""
        first = await new_key(client)
        other = generate_key()
        taken = NewKey(
            full=other.full, parsed=ParsedKey(first.record.lookup_id, other.parsed.secret)
        )
        draws = iter([taken, generate_key()])
        monkeypatch.setattr(keyservice, "generate_key", lambda: next(draws))
        second = await new_key(client, name="second")
        assert second.record.lookup_id != first.record.lookup_id
        for created in (first, second):
            assert (await client.get("/x", headers=bearer(created.key))).status == 200
        events = await client.app[COMPONENTS].keys.audit_trail("plant-7", limit=10, before=None)
        assert [e.key_id for e in events] == [second.record.id, first.record.id]
