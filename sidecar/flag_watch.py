"""Each sidecar instance's view of the cutover flag, kept current by polling its version.

Guarantees (tests/integration/test_admin_api.py):
- A change made through any instance's admin API (or any process writing the flag) is seen
  by every running instance within ``admin.flag_poll_s`` plus one read, without a restart.
- A failed read keeps the last rules (the customer path never waits on the flag) and is
  logged; the next poll tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sidecar.db.admin_store import PostgresAdminStore
from sidecar.domain.flags import FlagRules
from sidecar.errors import SidecarError
from sidecar.owned import OwnedTask

log = logging.getLogger(__name__)


class FlagWatcher:
    """Owns one polling task; ``rules`` is what the proxy evaluates against."""

    def __init__(
        self,
        store: PostgresAdminStore,
        poll_s: float,
        on_change: Callable[[FlagRules], None] | None = None,
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        self.on_change = on_change
        self.rules = FlagRules(store.default_mode)
        self._owned = OwnedTask("flag-watcher")

    async def start(self) -> None:
        await self.refresh()
        self._owned.start(self._poll)

    async def stop(self) -> None:
        await self._owned.stop()

    async def refresh(self) -> FlagRules:
        """Read the rules now (after a change made here, so it applies at once)."""
        rules = await self.store.flag_rules()
        self._set(rules)
        return rules

    def adopt(self, rules: FlagRules) -> None:
        """Rules this process just committed: in force here at once."""
        self._set(rules)

    def _set(self, rules: FlagRules) -> None:
        if rules.version < self.rules.version:
            return  # an older read finishing late: never go back
        if rules.version != self.rules.version or rules != self.rules:
            self.rules = rules
            if self.on_change is not None:
                self.on_change(rules)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                if await self.store.flag_version() != self.rules.version:
                    self._set(await self.store.flag_rules())
            except Exception as exc:  # the database away: keep the last rules, try again
                code = exc.code if isinstance(exc, SidecarError) else type(exc).__name__
                log.warning("flag read failed", extra={"event": "flag_watch", "code": code})


__all__ = ["FlagWatcher"]
