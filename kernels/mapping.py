"""``map_series``: run a function over series on a Dask cluster.

>>> df = map_series(measure, uids)                 # fn(volume, series_metadata) per series
>>> df = catalog.cohort("lung-ct@3").map(measure)  # Cohort.map, the same

``map_series(fn, series_uids)`` runs ``fn(volume, series_metadata)`` once
per series on the workers (of ``cluster=``, else the default client, else a
cluster of the hub's gateway, see :func:`.cluster.cluster`). Each worker
loads its series itself through the data service with your token (never the
archive's credentials; the token is hidden from task descriptions, so it
never reaches a worker's log). The result is a pandas DataFrame, one row
per series in the order given: ``series_uid``, then the function's result (a
dict's items as columns, anything else in ``result``), then ``error``: None,
or why that series failed (the function raised, or the series could not be
loaded); a failure never stops the other series. A worker that dies is
replaced and its series are run again elsewhere.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Iterable, Mapping

from .cluster import DEFAULT_WORKERS, ClusterError, cluster, token_from_env
from .environment import TOKEN_ENV

log = logging.getLogger(__name__)


class HiddenToken:
    """A token that travels to the workers with the tasks but never shows:
    Dask writes a failed task's arguments into the worker's log with
    ``repr``, and this one's is ``<token>``."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<token>"

    __str__ = __repr__

    def __getstate__(self):
        return self._value

    def __setstate__(self, state):
        self._value = state


# -- mapping over series ---------------------------------------------------------
def _as_client(where):
    """(client, done): a Client for ``where`` and what to call when the map
    is over. None: Dask's current client, else a new cluster of this module;
    a number: a new cluster of that many workers; a Client; a cluster object."""
    from distributed import Client

    if where is None:
        try:
            from distributed import default_client

            return default_client(), lambda: None
        except ValueError:
            where = DEFAULT_WORKERS
    if isinstance(where, bool):
        raise TypeError("cluster= takes a Client, a cluster, a number of workers or None")
    if isinstance(where, int):
        client = cluster(where)
        return client, client.shutdown  # the cluster was made for this map
    if isinstance(where, Client):
        return where, lambda: None
    if hasattr(where, "scheduler_address"):  # a cluster object: ours to connect, not to stop
        client = Client(where, set_as_default=False)
        return client, client.close
    raise TypeError(f"cluster= takes a Client, a cluster, a number of workers or None, "
                    f"not {type(where).__name__}")


def _data_access(pacs) -> tuple[str, str]:
    """(DICOMweb URL of the data service, token) for the workers."""
    from .dicomweb import PACS
    from .environment import ENV_URL

    pacs = pacs if pacs is not None else PACS.from_env()
    if getattr(pacs, "_username", None):
        raise ClusterError("map_series gives the workers a JupyterHub token, never a user "
                           "name and password: use a PACS made with token=...")
    if not pacs.url:
        raise ClusterError(f"no data service configured: set {ENV_URL} (the hub sets it in "
                           "every user server) or pass pacs=PACS(url, token=...)")
    token = pacs._token or token_from_env()
    if not token:
        raise ClusterError(f"no token for the workers: set {' or '.join(TOKEN_ENV)}")
    return pacs.url, token


def _user_module(module) -> bool:
    """True for a module of the user's own (a ``.py`` beside the notebook),
    which workers and scheduler cannot import: not installed, not ours."""
    import site

    path = getattr(module, "__file__", None)
    name = getattr(module, "__name__", "__main__")
    if not path or name == "__main__" or name.split(".")[0] == "imaginghub":
        return False
    installed = [*site.getsitepackages(), site.getusersitepackages(), sys.prefix,
                 sys.base_prefix]
    path = os.path.realpath(path)
    return not any(path.startswith(os.path.realpath(p) + os.sep) for p in installed if p)


def _ship_by_value(fn) -> None:
    """Send the user's own modules with ``fn``: its module, the modules (or
    whose functions and classes) it names, and theirs in turn, are pickled by
    value."""
    import types

    import cloudpickle

    def named(values):
        for value in values:
            if isinstance(value, types.ModuleType):
                yield value
            elif isinstance(value, (types.FunctionType, type)):
                yield sys.modules.get(getattr(value, "__module__", None) or "")

    code, names = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    todo = [sys.modules.get(getattr(fn, "__module__", None) or ""),
            *named(names.get(n) for n in (code.co_names if code else ()))]
    seen = set()
    while todo:
        module = todo.pop()
        if module is None or id(module) in seen or not _user_module(module):
            continue
        seen.add(id(module))
        cloudpickle.register_pickle_by_value(module)
        todo.extend(named(list(vars(module).values())))


_local = threading.local()


def _worker_pacs(url: str, token: HiddenToken):
    """One PACS per worker thread and (url, token), kept for the next series."""
    from .dicomweb import PACS

    cache = getattr(_local, "pacs", None)
    if cache is None:
        cache = _local.pacs = {}
    key = (url, token.reveal())
    if key not in cache:
        cache.clear()
        cache[key] = PACS(url, token=token.reveal(), cache_dir=None)
    return cache[key]


class ShippedFunction:
    """The user's function as cloudpickle bytes, loaded once per worker."""

    _loaded: dict = {}

    def __init__(self, payload: bytes):
        import hashlib

        self.payload = payload
        self.digest = hashlib.sha256(payload).hexdigest()

    def load(self):
        fn = self._loaded.get(self.digest)
        if fn is None:
            import cloudpickle

            if len(self._loaded) > 16:
                self._loaded.clear()
            fn = self._loaded[self.digest] = cloudpickle.loads(self.payload)
        return fn

    def __repr__(self) -> str:
        return f"<function {self.digest[:12]}>"


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_one(fn, series_uid: str, url: str, token: HiddenToken) -> dict:
    """The task run on a worker for one series: load it through the data
    service, call ``fn``; every failure but an unreachable archive (which
    Dask retries) is returned as the series' error."""
    from .errors import Unavailable

    row = {"series_uid": series_uid}
    if isinstance(fn, ShippedFunction):
        fn = fn.load()
    try:
        volume = _worker_pacs(url, token).load_series(series_uid, progress=False, cache=False)
    except Unavailable:
        raise  # transient: Dask runs the task again (retries=)
    except Exception as e:
        row["error"] = f"loading the series: {_error_text(e)}"
        return row
    metadata = {"series_uid": series_uid,
                **{k: v for k, v in volume.metadata.items() if k != "source_frames"}}
    try:
        row["result"] = fn(volume, metadata)
    except Exception as e:
        row["error"] = _error_text(e)
        row["traceback"] = traceback.format_exc()
    return row


def map_series(fn, series_uids: Iterable[str], *, cluster=None, retries: int = 1, pacs=None,
               progress: bool = True, description: str | None = None):
    """Run ``fn(volume, series_metadata)`` for each series on a Dask cluster;
    a DataFrame, one row per series (see the module's docstring).

    ``cluster``: a ``distributed.Client`` or cluster; a number (a new cluster
    of that many workers, shut down at the end); None (Dask's current client,
    for example the one :func:`cluster` returned, else a new cluster of 2
    workers, shut down at the end). ``retries``: how many more times a
    series whose loading failed for want of the archive is tried (a series
    whose worker died is run again anyway, up to Dask's
    ``distributed.scheduler.allowed-failures``). ``pacs``: whose data and
    token (default: the kernel's ``pacs`` settings). ``progress``: a tqdm
    bar (the notebook's widget in a kernel)."""
    import pandas as pd
    from distributed import as_completed
    from tqdm.auto import tqdm

    uids = [str(u) for u in series_uids]
    url, token = _data_access(pacs)
    _ship_by_value(fn)
    import cloudpickle

    # pickled here with cloudpickle (Dask tries plain pickle first, which
    # sends functions of the user's own modules by name only)
    shipped = ShippedFunction(cloudpickle.dumps(fn))
    secret = HiddenToken(token)
    client, done = _as_client(cluster)
    name = getattr(fn, "__name__", "fn").strip("<>") or "fn"
    run = uuid.uuid4().hex[:8]
    rows: list[dict | None] = [None] * len(uids)
    try:
        futures = [client.submit(run_one, shipped, uid, url, secret, key=f"{name}-{run}-{i}",
                                 retries=retries, pure=False) for i, uid in enumerate(uids)]
        where = {f.key: i for i, f in enumerate(futures)}
        with tqdm(total=len(futures), disable=not progress, unit="series",
                  desc=description or f"{name} over {len(uids)} series") as bar:
            for future in as_completed(futures):
                i = where[future.key]
                try:
                    rows[i] = future.result()
                except Exception as e:  # retries spent, or the task killed its workers
                    rows[i] = {"series_uid": uids[i], "error": _error_text(e)}
                future.release()
                bar.update(1)
    finally:
        done()
    return _frame(rows, pd)


def _frame(rows: list[dict], pd):
    records, tracebacks = [], {}
    for i, row in enumerate(rows):
        rec = {"series_uid": row["series_uid"]}
        if "result" in row:
            result = row["result"]
            if isinstance(result, Mapping):
                for k, v in result.items():
                    rec[k if k not in ("series_uid", "error") else f"result_{k}"] = v
            else:
                rec["result"] = result
        rec["error"] = row.get("error")
        if row.get("traceback"):
            tracebacks[i] = row["traceback"]
        records.append(rec)
    columns = ["series_uid"]
    for rec in records:
        columns += [k for k in rec if k not in columns and k != "error"]
    df = pd.DataFrame.from_records(records, columns=columns + ["error"])
    df["error"] = pd.Series([rec["error"] for rec in records], dtype=object)  # None: no error
    df.attrs["tracebacks"] = tracebacks  # row -> the function's traceback
    return df


def map_cohort(cohort, fn, *, cluster=None, retries: int = 1, **kwargs):
    """``Cohort.map``: :func:`map_series` over the cohort's series, as the
    identity the cohort was read with (its catalog's data service and token)."""
    catalog = cohort.catalog
    if kwargs.get("pacs") is None and catalog.api and catalog._token:
        from .dicomweb import PACS

        kwargs["pacs"] = PACS(catalog.api.rsplit("/api", 1)[0] + "/dicom-web",
                              token=catalog._token)
    kwargs.setdefault("description", f"{fn.__name__ if hasattr(fn, '__name__') else 'fn'} "
                                     f"over {cohort.ref}")
    return map_series(fn, cohort.series, cluster=cluster, retries=retries, **kwargs)
