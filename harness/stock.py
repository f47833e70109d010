"""A stock Celery app: the benchmark's baseline, what a user would run instead of durable runs.

Celery's defaults plus `acks_late`, and none of this project's pool, bootsteps, heartbeats
or Django: the chain's last task records when it finished in a file of its own
(STOCK_DONE_DIR). On the embedded broker it uses the same folder, with the transport that
writes messages atomically (runs.broker). Its worker: `celery -A harness.stock worker`.
"""

import os
import time
from pathlib import Path

from celery import Celery

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")

app = Celery("stock", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # A chain's later messages go to the default queue: the cluster's private one.
    task_default_queue=os.environ.get("DURABLE_QUEUE", "celery"),
)
if BROKER_URL.startswith("filesystem://"):
    folder = Path(os.environ["DURABLE_BROKER_DIR"])
    app.conf.update(
        broker_transport="runs.broker:Transport",
        broker_transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.1,
        },
    )


@app.task(name="stock.noop")
def noop(*args, **kwargs) -> None:
    return None


@app.task(name="stock.done")
def done(chain: str) -> None:
    path = Path(os.environ["STOCK_DONE_DIR"], chain)
    path.with_suffix(".tmp").write_text(repr(time.time()))
    path.with_suffix(".tmp").replace(path)  # atomic: a reader never sees it half-written
