"""The embedded default broker: kombu's filesystem transport, made safe for many processes.

kombu's filesystem transport creates a message file and then writes it, so a worker
listing the folder in between takes an empty file and dies on the JSON error. Here a
message is written under a temporary name and renamed into place, which POSIX makes
atomic: a consumer sees a whole message or none. (This module is loaded by Celery
before Django is set up, so it imports nothing from the project.)
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # No ".msg" ending and a leading dot: consumers never pick up a half-written file.
        partial = os.path.join(self.data_folder_out, f".writing-{uuid.uuid4()}")
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add message {final!r} to the broker folder") from exc


class Transport(filesystem.Transport):
    Channel = Channel
