"""The embedded default broker: kombu's filesystem transport, made safe for many processes.

kombu's filesystem transport creates a file and then writes it, both for messages and
for the exchange tables that route them. A process reading in between sees an empty
file: a worker taking a message dies on the JSON error, and a producer reading a
routing table routes its message nowhere. Here every file is written under a
temporary name and renamed into place, which POSIX makes atomic: a reader sees a whole
file or the previous one. (Celery loads this module before Django is set up, so it
imports nothing from the project.)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps


def write_atomically(folder: Path | str, name: str, content: str) -> None:
    # A leading dot and no ".msg" ending: consumers never pick up a half-written file.
    partial = os.path.join(folder, f".writing-{uuid.uuid4()}")
    with open(partial, "w") as f:
        f.write(content)
    os.replace(partial, os.path.join(folder, name))


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        try:
            write_atomically(self.data_folder_out, name, dumps(payload))
        except OSError as exc:
            raise ChannelError(f"Cannot add message {name!r} to the broker folder") from exc

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        table = self._exchange_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            # The lock serialises read-modify-write between binders; readers need none.
            with open(table.with_name(f".{table.name}.lock"), "a") as guard:
                filesystem.lock(guard, filesystem.LOCK_EX)
                try:
                    queues = self.get_table(exchange)
                    if entry not in queues:
                        write_atomically(self.control_folder, table.name, dumps([entry, *queues]))
                finally:
                    filesystem.unlock(guard)
        except OSError as exc:
            raise ChannelError(f"Cannot bind {queue!r} in {table}") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def transport_options(folder: Path | str) -> dict:
    """CELERY_BROKER_TRANSPORT_OPTIONS for this transport (CELERY_BROKER_URL="filesystem://",
    CELERY_BROKER_TRANSPORT="runs.broker:Transport") keeping its messages in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
