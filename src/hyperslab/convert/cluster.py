"""Ingest's per-file work as tasks on a ``dask.distributed`` cluster.

::

    hyperslab ingest /data/run42/ --repo beamline:repo --name run42 --dask local:2
    hyperslab ingest /data/run42/ --repo s3://beamline/repo --dask tcp://scheduler:8786

    from dask.distributed import Client
    ingest(repo, files, name="run42", client=Client("tcp://scheduler:8786"))

Each entry's work is: open the file, walk its chunk index, hash the source
(sha256), compute the CRC-32C of every chunk, build the reference map, store it and
the entry record content-addressed (and copy the source with ``--upload-sources``).
Tasks do this for a batch of entries each (a few tasks a worker) and return their
tree values; the client makes the one commit, exactly as a serial ingest does, so the
entry records, and the tree id, are the same bytes.

Why this is safe to retry: every object a task writes is named by its content, so
a task that runs twice (Dask reschedules the tasks of a worker that dies) writes the
same objects again and returns the same value; nothing is visible until the client
commits. A file that cannot be converted comes back as its named error, not as a
task failure, so it is reported and the rest commit, as in a serial ingest.

Workers reopen the repository from its URL (``Repository.display``) with their own
configuration and credentials, the way pickled stores reopen on dask workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hyperslab.errors import BadInputError, HyperslabError, TransientError

if TYPE_CHECKING:
    from hyperslab.references.repository import Repository

#: one entry's plan, and its outcome: (tree value, summary) or a named error (the
#: types of convert.ingest, which calls this module and hands it the work to do)
Plan = Any
Outcome = Any
#: a batch's work: ``work(repo, plans, **kwargs)`` gives ``(plan, outcome)`` for each
#: plan, in order (a module-level function, so that workers can import it)
BatchWork = Callable[..., Iterable[tuple[Plan, Outcome]]]

__all__ = ["connect", "dask_client", "ingest_on_cluster"]


def distributed() -> ModuleType:
    """``dask.distributed``, or a named error saying how to install it (an extra)."""
    try:
        import dask.distributed
    except ImportError:
        raise BadInputError(
            "--dask needs dask.distributed: pip install 'hyperslab[dask]'"
        ) from None
    return dask.distributed


def connect(spec: str) -> Any:
    """A ``dask.distributed.Client`` for ``--dask SPEC``: ``local`` (a LocalCluster of
    one single-threaded worker process per core), ``local:N`` (N such workers), or a
    scheduler address (``tcp://host:8786``). The caller closes it (and its cluster)."""
    dd = distributed()
    spec = spec.strip()
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2]
        if count and not (count.isdigit() and int(count) > 0):
            raise BadInputError(f"--dask {spec!r}: after local: give a number of workers (local:4)")
        workers = int(count) if count else (os.cpu_count() or 1)
        cluster = dd.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",  # a local cluster listens on loopback only
            dashboard_address="127.0.0.1:0",
            silence_logs=40,
        )
        return dd.Client(cluster)
    if "://" not in spec and ":" not in spec:
        raise BadInputError(
            f"--dask {spec!r}: give local, local:N or a scheduler address (tcp://host:8786)"
        )
    try:
        return dd.Client(spec, timeout="10s")
    except OSError as exc:
        raise TransientError(f"cannot reach the dask scheduler at {spec}: {exc}") from exc


@contextmanager
def dask_client(spec: str | None) -> Iterator[Any]:
    """``--dask SPEC`` as a client for the duration (None: no cluster); a LocalCluster
    it started is shut down after, whatever happened."""
    if spec is None:
        yield None
        return
    client = connect(spec)
    try:
        yield client
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None and spec.strip().startswith("local"):
            cluster.close()


#: tasks a worker gets (load balance, and a small rerun if one dies) ...
TASKS_PER_WORKER = 8
#: ... with at most this many entries each
MAX_BATCH = 64


def _batch_task(
    work: BatchWork, repo_url: str, plans: Sequence[Plan], kwargs: dict[str, Any]
) -> list[Outcome]:
    """A batch of entries, on a worker, the way a serial ingest does them."""
    try:
        repo = _worker_repository(repo_url)
    except HyperslabError as exc:
        return [exc for _ in plans]
    return [outcome for _, outcome in work(repo, plans, **kwargs)]


#: repositories this worker process has opened (its clients and immutable objects
#: serve every task of the run, as a serial ingest's one Repository does)
_OPENED: dict[str, Repository] = {}
_OPENING = threading.Lock()


def _worker_repository(url: str) -> Repository:
    from hyperslab.references.repository import Repository

    with _OPENING:
        repo = _OPENED.get(url)
        if repo is None:
            repo = _OPENED[url] = Repository.open(url)
        return repo


def ingest_on_cluster(
    client: Any,
    repo: Repository,
    plans: Sequence[Plan],
    work: BatchWork,
    kwargs: dict[str, Any],
) -> Generator[tuple[Plan, Outcome], None, None]:
    """``work(repo, batch, **kwargs)`` of batches of ``plans`` on ``client``'s workers;
    each plan's outcome as its batch finishes, in no particular order.

    Plans go in batches, :data:`TASKS_PER_WORKER` tasks a worker (at most
    :data:`MAX_BATCH` plans a task): a task costs the scheduler and the worker a few
    milliseconds, as much as converting a small file, so 1,000 files as 1,000 tasks
    spent more time scheduling than working; several tasks a worker still balance the
    load and keep what a dead worker's rerun costs small. Within a batch, ``work``
    pipelines as a serial run does (ingest reads the next files while it stores)."""
    as_completed = distributed().as_completed
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    size = max(1, min(MAX_BATCH, -(-len(plans) // (workers * TASKS_PER_WORKER))))
    batches = [list(plans[i : i + size]) for i in range(0, len(plans), size)]
    futures = {
        client.submit(
            _batch_task,
            work,
            repo.display,
            batch,
            kwargs,
            key=f"hyperslab-ingest-{i}-{batch[0].name}",
        ): batch
        for i, batch in enumerate(batches)
    }
    try:
        for future in as_completed(futures):
            yield from zip(futures[future], future.result(), strict=True)
    finally:
        for future in futures:
            future.cancel()
