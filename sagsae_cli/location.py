"""Where an activation store lives: a local directory or an fsspec URL (``s3://bucket/path``,
``gs://…``, ``memory://…``), and the writer's lock there.

Zarr v3 does the reading and writing through its own storage layer (``LocalStore`` for a path,
``FsspecStore`` for a URL); this module holds only what a store needs beyond that: existence, the list
of its files, deletion, size, and one writer at a time.

The lock. On a local disk it is an ``flock`` on ``<store>/.lock`` (released by the kernel when the
process dies). Object stores have no rename and no flock, so there it is an object ``<store>/.lock``
holding the owner (host, pid, a random token) and a heartbeat time:
- taken with a *conditional create* (S3 ``If-None-Match: *``): of two writers, exactly one succeeds;
- refreshed at every commit with a *conditional overwrite* (``If-Match`` its own ETag), so a writer
  whose lock was taken over finds out before it publishes anything;
- taken over only when stale: its owner ran on this host and that pid is gone (a killed harvest
  resumed on the same machine), or its heartbeat is older than ``SAGSAE_LOCK_LEASE`` seconds
  (default 600; a writer on another node that died). The takeover is itself a conditional overwrite
  of the stale object's ETag, so two processes cannot both take it over.
Azure Blob Storage (adlfs) gets the same conditions (``If-None-Match: *``, ``If-Match`` on the ETag),
and Google Cloud Storage (gcsfs) their equivalent on the object's generation (``ifGenerationMatch=0``
to create, ``ifGenerationMatch=<generation>`` to overwrite or delete). Other filesystems get the
conditional create where fsspec offers it (``mode="create"``) and a plain overwrite for the refresh and
the takeover (documented race: two simultaneous takeovers of one stale lock).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from pathlib import Path

from sagsae_cli.errors import SagsaeError

LOCK = ".lock"
DEFAULT_LEASE_S = 600.0
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
EXTRAS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_EXTRA_OF = {"s3fs": "s3", "gcsfs": "gs", "adlfs": "az"}  # pyproject's optional-dependency names


def is_url(where: str | Path) -> bool:
    """True for ``scheme://…`` other than ``file://``."""
    m = _URL.match(str(where))
    return bool(m) and m.group(1).lower() != "file"


def lease_seconds() -> float:
    return float(os.environ.get("SAGSAE_LOCK_LEASE", DEFAULT_LEASE_S))


class Location:
    """A store's root. ``str()`` is what a user typed (a resolved path, or the URL)."""

    def __init__(self, where: str | Path):
        where = str(where)
        if where.startswith("file://"):
            where = where[len("file://") :]
        self.remote = is_url(where)
        if self.remote:
            self.url = where.rstrip("/")
            self._fs = None
            scheme, _, rest = where.partition("://")
            if not rest.strip("/"):
                raise SagsaeError(
                    f"{where} names no {'container' if scheme.lower() in ('az', 'abfs') else 'bucket'}: "
                    f"give {scheme}://<bucket>/<path>"
                )
        else:
            self.local = Path(where)

    # --- identity ---------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.url if self.remote else str(self.local)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __fspath__(self) -> str:
        if self.remote:
            raise TypeError(f"{self.url} is not a local path")
        return str(self.local)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.remote else self.local.name

    def canonical(self) -> str:
        """What a run records as its store: an absolute path, or the URL."""
        return self.url if self.remote else str(self.local.resolve())

    def child(self, name: str) -> Location:
        return Location(f"{self.url}/{name}" if self.remote else self.local / name)

    # --- the filesystem -----------------------------------------------------------------------
    @property
    def fs(self):
        """The (synchronous) fsspec filesystem of a URL, created once; credentials come from the
        standard environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, …)."""
        if self._fs is None:
            self._fs, self._root = _url_to_fs(self.url)
        return self._fs

    def _key(self, rel: str = "") -> str:
        self.fs  # noqa: B018 - sets _root
        return f"{self._root}/{rel}" if rel else self._root

    def zarr_store(self, read_only: bool = False):
        """What to hand zarr: the path for a local store, an ``FsspecStore`` for a URL."""
        if not self.remote:
            return str(self.local)
        from zarr.storage import FsspecStore

        self.fs  # noqa: B018 - a missing fsspec backend is one line, before zarr's own error
        return FsspecStore.from_url(self.url, read_only=read_only)

    def exists(self, rel: str = "") -> bool:
        if not self.remote:
            return (self.local / rel).exists() if rel else self.local.exists()
        self.fs.invalidate_cache()
        try:
            return bool(self.fs.exists(self._key(rel)))
        except Exception as e:
            raise _remote_error(self.url, e) from None

    def names(self) -> list[str]:
        """The entries directly under the root (none if it does not exist)."""
        if not self.remote:
            return [p.name for p in self.local.iterdir()] if self.local.is_dir() else []
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self._key(), detail=False)
        except FileNotFoundError:
            return []
        except Exception as e:
            raise _remote_error(self.url, e) from None
        return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def files(self, rel: str = "") -> dict[str, int]:
        """Every file under ``rel`` (recursively) -> its size, keyed by the path relative to the root."""
        if not self.remote:
            base = self.local / rel if rel else self.local
            if not base.exists():
                return {}
            return {str(p.relative_to(self.local)): p.stat().st_size for p in base.rglob("*") if p.is_file()}
        self.fs.invalidate_cache()
        root = self._key()
        try:
            found = self.fs.find(self._key(rel), detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:
            raise _remote_error(self.url, e) from None
        return {k[len(root) + 1 :]: int(v.get("size") or 0) for k, v in found.items()}

    def mkdir(self) -> None:
        if not self.remote:
            self.local.mkdir(parents=True, exist_ok=True)
        # object stores have no directories: the first object written makes the prefix

    def remove(self) -> None:
        """Delete the store. Local: renamed aside first, so it vanishes at once. Remote: the root
        ``zarr.json`` first (readers then see no store), then everything else."""
        if not self.remote:
            trash = self.local.with_name(f".{self.local.name}.deleting-{os.getpid()}")
            os.rename(self.local, trash)
            shutil.rmtree(trash)
            return
        try:
            if self.exists("zarr.json"):
                self.fs.rm_file(self._key("zarr.json"))
            keys = [k for k in self.files() if k != LOCK]
            if keys:
                self.fs.rm([self._key(k) for k in keys])
        except Exception as e:
            raise _remote_error(self.url, e) from None

    # --- one writer at a time -------------------------------------------------------------------
    def writer_alive(self) -> bool:
        """True while another process holds the writer's lock (a harvest or import still under way)."""
        if not self.remote:
            from sagsae_cli.files import lock_held

            return self.local.is_dir() and lock_held(self.local)
        from sagsae_cli.store_lock import _ObjectLock, _stale

        try:
            held, _ = _ObjectLock.peek(self)
        except Exception:
            return False
        return held is not None and _stale(held) is None

    def lock(self, doing: str):
        """Take the writer's lock (store_lock.py); refused in one line if it is held."""
        from sagsae_cli.store_lock import _FileLock, _ObjectLock

        if not self.remote:
            return _FileLock(self, doing)
        return _ObjectLock(self, doing)


def close_clients() -> None:
    """Close object-store clients now, while the event loops they were made on still run.

    adlfs closes its service client in a ``weakref.finalize(fs, fsspec.asyn.sync, fs.loop, close, fs)``
    that runs at interpreter exit, after zarr has stopped its loop, or with no loop at all for the
    filesystem zarr's ``FsspecStore`` makes: every command on an ``az://`` store then printed
    "RuntimeError: Loop is not running" with a traceback after it had finished (fsspec/adlfs#495).
    Such finalizers run here instead: at once if their loop runs, else their coroutine on zarr's loop.
    Registered with ``atexit`` when the first remote filesystem is made (``_close_at_exit``), so it
    runs before zarr's own exit handler; best effort: the work is done and committed by then."""
    import weakref

    try:
        from fsspec.asyn import sync
    except ImportError:
        return
    for fin in list(getattr(weakref.finalize, "_registry", {})):
        info = fin.peek()
        if info and getattr(info[1], "__qualname__", "") == "GCSFileSystem.close_session":
            _close_session_on_its_loop(fin, *info[2][1:2])
            continue
        if not info or info[1] is not sync or len(info[2]) < 2:
            continue
        loop, close, *args = info[2]
        try:
            if loop is not None and loop.is_running():
                fin()
            else:
                from zarr.core.sync import sync as zarr_sync

                fin.detach()
                zarr_sync(close(*args))
        except Exception:
            pass


def _close_session_on_its_loop(fin, session=None) -> None:
    """gcsfs closes its aiohttp session in a finalizer that, at exit, runs it on fsspec's loop whatever
    loop made it: for the filesystem zarr makes (on zarr's loop) that printed "attached to a different
    loop" with a traceback once fsspec's loop had also been started (as the GCS lock's calls do)."""
    import asyncio

    loop = getattr(session, "_loop", None)
    if session is None or session.closed or loop is None or not loop.is_running():
        return
    fin.detach()
    try:
        asyncio.run_coroutine_threadsafe(session.close(), loop).result(10)
    except Exception:
        pass


_CLOSE_REGISTERED = []


def _close_at_exit() -> None:
    if not _CLOSE_REGISTERED:
        import atexit

        import zarr.core.sync  # noqa: F401 - zarr's exit handler first, so that ours runs before it

        atexit.register(close_clients)
        _CLOSE_REGISTERED.append(True)


PROBE_SECONDS = 3.0  # how long the endpoint of an object store may take to answer a TCP connect
_PROBED: dict[str, str | None] = {}  # endpoint -> why it cannot be reached (None: it can)


def _endpoint(scheme: str) -> tuple[str, str] | None:
    """(endpoint URL, the variable that sets it) of a URL scheme's object store, or None if unknown."""
    env = os.environ
    if scheme in ("s3", "s3a"):
        var = "AWS_ENDPOINT_URL_S3" if env.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        return env.get(var) or "https://s3.amazonaws.com", var
    if scheme in ("gs", "gcs"):
        host = env.get("STORAGE_EMULATOR_HOST")
        return (host if "://" in (host or "://") else f"http://{host}") or "", "STORAGE_EMULATOR_HOST"
    if scheme in ("az", "abfs"):
        conn = dict(
            part.split("=", 1)
            for part in env.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";")
            if "=" in part
        )
        if conn.get("BlobEndpoint"):
            return conn["BlobEndpoint"], "AZURE_STORAGE_CONNECTION_STRING"
        name = conn.get("AccountName") or env.get("AZURE_STORAGE_ACCOUNT_NAME")
        return (f"https://{name}.blob.core.windows.net", "AZURE_STORAGE_ACCOUNT_NAME") if name else None
    return None


def _probe(url: str, scheme: str) -> None:
    """Fail within PROBE_SECONDS when the object store's endpoint cannot be reached (no network, a wrong
    endpoint, an emulator not running), instead of after the backend's retries (gcsfs: ~50 s)."""
    from urllib.parse import urlsplit

    found = _endpoint(scheme)
    if found is None:
        return
    endpoint, var = found
    if not endpoint:  # gs:// without an emulator: Google's endpoint
        endpoint = "https://storage.googleapis.com"
    if endpoint not in _PROBED:
        parts = urlsplit(endpoint)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            _PROBED[endpoint] = None
        except OSError as e:
            _PROBED[endpoint] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if _PROBED[endpoint] is not None:
        hint = _CREDENTIAL_HINTS.get(scheme, "check the URL and the credentials of its filesystem")
        raise SagsaeError(
            f"{url}: cannot reach {endpoint} within {PROBE_SECONDS:g} s ({_PROBED[endpoint]}): check the network, "
            f"or set {var} to your endpoint; {hint}"
        )


def _url_to_fs(url: str):
    scheme = _URL.match(url).group(1).lower()
    _probe(url, scheme)
    try:
        from fsspec.core import url_to_fs

        _close_at_exit()
        _quiet_backends()
        return url_to_fs(url)
    except ImportError as e:
        pkg = EXTRAS.get(scheme, f"the fsspec backend for {scheme}://")
        raise SagsaeError(
            f"{url}: {scheme}:// stores need {pkg} ({e}): pip install {pkg}"
            + (f" (or pip install 'sagsae[{_EXTRA_OF[pkg]}]')" if pkg in _EXTRA_OF else "")
        ) from None
    except Exception as e:  # the backend's constructor: no credentials, no JVM for hdfs://, ...
        from fsspec.registry import known_implementations, registry

        if scheme not in known_implementations and scheme not in registry:
            raise SagsaeError(
                f"{url} is not a store location fsspec knows ({e}): use a path or an fsspec URL"
            ) from None
        raise _remote_error(url, e) from None


def _quiet_backends() -> None:
    """Silence the storage backends' own logs unless the user has set their levels: they log every
    failed request with its traceback (gcsfs: "_request out of retries"), and the failure reaches
    the user anyway, as the one line of ``_remote_error``."""
    for name in ("gcsfs", "s3fs", "adlfs", "aiobotocore", "botocore", "azure"):
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.CRITICAL)


def _remote_error(url: str, e: Exception) -> SagsaeError:
    """An object-store failure in one line (no bucket, no credentials, endpoint down, …)."""
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    hint = _CREDENTIAL_HINTS.get(
        url.split("://", 1)[0].lower(), "check the URL and the credentials of its filesystem"
    )
    return SagsaeError(f"{url}: {type(e).__name__}: {msg}: {hint}")


_GCS_HINT = (
    "check the bucket exists and the credentials (GOOGLE_APPLICATION_CREDENTIALS; STORAGE_EMULATOR_HOST "
    "for an emulator)"
)
_S3_HINT = (
    "check the bucket exists and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
    "AWS_ENDPOINT_URL for an S3-compatible server)"
)
_AZ_HINT = (
    "check the container exists and the credentials (AZURE_STORAGE_CONNECTION_STRING, or "
    "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN)"
)
_CREDENTIAL_HINTS = {  # by URL scheme
    "s3": _S3_HINT, "s3a": _S3_HINT, "gs": _GCS_HINT, "gcs": _GCS_HINT, "az": _AZ_HINT, "abfs": _AZ_HINT,
}  # fmt: skip
