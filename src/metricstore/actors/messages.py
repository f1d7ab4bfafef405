"""What actors exchange: msgpack-encoded messages in envelopes.

Every message is a msgpack map with a ``"type"`` key, so it could cross a
process or a network unchanged. Numeric columns travel as the raw bytes of
little-endian numpy arrays. A request that needs an answer rides in an
Envelope together with a reply channel; the envelope itself is never
serialized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import trio

from metricstore.errors import StorageBusyError, StorageClosedError
from metricstore.models import SeriesKey

Message = dict[str, Any]
ReplyChannel = trio.MemorySendChannel[bytes]
Mailbox = trio.MemorySendChannel["Envelope"]
Inbox = trio.MemoryReceiveChannel["Envelope"]

_INT64 = np.dtype("<i8")
_FLOAT64 = np.dtype("<f8")


@dataclass(slots=True)
class Envelope:
    payload: bytes
    reply: ReplyChannel | None = None
    # An in-process object that rides along, such as a subscriber's feed
    # buffer. A message meant to cross a process boundary has none.
    attachment: object = None


def pack(message: Message) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def unpack(payload: bytes) -> Message:
    message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if not isinstance(message, dict):
        raise TypeError(f"an actor message must be a map, not {type(message).__name__}")
    return message


def int_column(array: npt.NDArray[np.int64]) -> bytes:
    return np.ascontiguousarray(array, dtype=_INT64).tobytes()


def float_column(array: npt.NDArray[np.float64]) -> bytes:
    return np.ascontiguousarray(array, dtype=_FLOAT64).tobytes()


def read_ints(data: bytes) -> npt.NDArray[np.int64]:
    return np.frombuffer(data, dtype=_INT64).astype(np.int64, copy=False)


def read_floats(data: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(data, dtype=_FLOAT64).astype(np.float64, copy=False)


def encode_key(key: SeriesKey, unit: str = "") -> list[Any]:
    name, labels = key
    return [name, [list(pair) for pair in labels], unit]


def decode_key(data: list[Any]) -> tuple[SeriesKey, str]:
    name, labels, unit = data
    return (name, tuple((str(k), str(v)) for k, v in labels)), unit


async def send_request(
    mailbox: Mailbox,
    message: Message,
    *,
    send_timeout: float = math.inf,
    attachment: object = None,
) -> Message:
    """Send a request to an actor and wait for its reply.

    Raises StorageBusyError when the actor's mailbox stays full for
    ``send_timeout`` seconds, and StorageClosedError when the actor has shut
    down. A reply with an ``"error"`` key is returned as is.
    """
    reply_send, reply_receive = trio.open_memory_channel[bytes](1)
    envelope = Envelope(pack(message), reply_send, attachment)
    try:
        with trio.move_on_after(send_timeout) as scope:
            await mailbox.send(envelope)
        if scope.cancelled_caught:
            raise StorageBusyError(
                f"the pipeline did not accept a {message.get('type')!r} request within "
                f"{send_timeout:g}s; retry later"
            )
        async with reply_receive:
            return unpack(await reply_receive.receive())
    except (trio.ClosedResourceError, trio.BrokenResourceError, trio.EndOfChannel):
        raise StorageClosedError("the storage pipeline has shut down") from None


async def reply(envelope: Envelope, message: Message) -> None:
    """Answer a request; a requester that went away is ignored."""
    if envelope.reply is None:
        return
    try:
        envelope.reply.send_nowait(pack(message))
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        pass
    finally:
        await envelope.reply.aclose()


async def tell(mailbox: Mailbox, message: Message) -> None:
    """Send a message that needs no reply; waits while the mailbox is full."""
    await mailbox.send(Envelope(pack(message)))
