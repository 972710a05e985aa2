"""What a platform bridge remembers of its own sends, bounded (oldest forgotten first).

    bot_messages   ids the implementation gave the bot's messages: a group message
                   quoting one of them is a reply to the bot (a wake rule)
    in flight      replies being sent now, by "<session key>|<event id>"
    undelivered    replies whose send failed (errored, timed out, link lost)

The duplicate policy: the pipeline answers a re-delivered message with its stored reply
(``duplicate=True``). That reply is sent again only when its first delivery failed
(waiting for the outcome when that delivery is still in flight); a reply that went out
is never repeated, as chat platforms do not deduplicate on the receiving side.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

__all__ = ["DeliveryLedger"]


class DeliveryLedger:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.bot_messages: OrderedDict[str, None] = OrderedDict()
        self._undelivered: OrderedDict[str, None] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[bool]] = {}

    def _add(self, into: OrderedDict[str, None], key: str) -> None:
        into[key] = None
        into.move_to_end(key)
        while len(into) > self.size:
            into.popitem(last=False)

    def sent(self, message_id: str) -> None:
        """The bot sent a message that got ``message_id``."""
        self._add(self.bot_messages, message_id)

    async def resend_duplicate(self, key: str) -> bool:
        """Whether the stored reply for ``key`` must be sent again (see the module doc)."""
        earlier = self._in_flight.get(key)
        if earlier is not None:
            return not await asyncio.shield(earlier)
        return key in self._undelivered

    def begin(self, key: str) -> asyncio.Future[bool]:
        """A delivery for ``key`` starts; pass the result to ``finish``."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = done
        return done

    def finish(self, key: str, done: asyncio.Future[bool], delivered: bool) -> None:
        if delivered:
            self._undelivered.pop(key, None)
        else:
            self._add(self._undelivered, key)
        if not done.done():
            done.set_result(delivered)
        if self._in_flight.get(key) is done:
            del self._in_flight[key]
