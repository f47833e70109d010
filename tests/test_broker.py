"""The embedded broker under concurrent producers and consumers."""

import multiprocessing
import queue as stdlib_queue

from kombu import Connection

from runs.broker import Transport


def connection(folder) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder)}
    return Connection("filesystem://", transport=Transport, transport_options=options)


def produce(folder, start: int, count: int) -> None:
    with connection(folder) as conn:
        messages = conn.SimpleQueue("bench")
        for number in range(start, start + count):
            messages.put({"n": number})
        messages.close()


def test_it_never_hands_a_consumer_a_half_written_message(tmp_path):
    producers = [
        multiprocessing.get_context("fork").Process(target=produce, args=(tmp_path, i * 1000, 400))
        for i in range(3)
    ]
    for process in producers:
        process.start()
    received = set()
    with connection(tmp_path) as conn:
        messages = conn.SimpleQueue("bench")
        # Consume while the producers are still writing: kombu's own transport would
        # sometimes read an empty file here and raise JSONDecodeError.
        while len(received) < 1200:
            try:
                message = messages.get(timeout=10)
            except stdlib_queue.Empty:
                break
            received.add(message.payload["n"])
            message.ack()
        messages.close()
    for process in producers:
        process.join()
    assert received == {i * 1000 + n for i in range(3) for n in range(400)}
    assert not [name for name in tmp_path.iterdir() if name.name.startswith(".writing-")]
