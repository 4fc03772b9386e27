"""A store writer's lock (docs/FORMATS.md, "Locks"): an flock on ``<store>/.lock`` locally; on object
stores a lock object with a heartbeat, created and renewed through conditional writes (on the ETag on
S3 and Azure, on the generation on GCS, a conditional create elsewhere) and taken over only when stale.
``Location.lock`` and ``Location.writer_alive`` reach it."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

from sagsae_cli.errors import SagsaeError
from sagsae_cli.location import LOCK, Location, _remote_error, lease_seconds


class _FileLock:
    def __init__(self, loc: Location, doing: str):
        from sagsae_cli.files import lock_dir

        self.fd = lock_dir(loc.local, doing)

    def refresh(self) -> None:  # the kernel holds an flock for as long as the process lives
        pass

    def release(self) -> None:
        from sagsae_cli.files import unlock

        if self.fd is not None:
            unlock(self.fd)
            self.fd = None


class _ObjectLock:
    def __init__(self, loc: Location, doing: str):
        self.loc, self.doing, self.etag = loc, doing, None
        self.key = loc._key(LOCK)
        self.ops = _conditional_ops(loc)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        try:
            self._acquire()
        except SagsaeError:
            raise
        except Exception as e:
            raise _remote_error(loc.url, e) from None

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "heartbeat": time.time(), "doing": self.doing}).encode()

    def _put(self, etag: str | None = None, create: bool = False) -> None:
        """Write our lock object: created only if absent, or overwriting only ``etag``; a failed
        condition is ``_Conflict``."""
        try:
            self.etag = self.ops.put(self.key, self._body(), create=create, etag=etag)
        except FileExistsError:
            raise _Conflict() from None
        except OSError as e:
            if _precondition(e):
                raise _Conflict() from None
            raise

    def _acquire(self) -> None:
        for _ in range(3):  # a lost race re-reads the lock
            try:
                self._put(create=True)
                return
            except _Conflict:
                pass
            held, etag = self._read()
            if held is None:
                continue  # released between our create and our read
            if _stale(held) is None:
                age = time.time() - float(held.get("heartbeat", 0))
                raise SagsaeError(
                    f"another process is {held.get('doing', 'writing')} {self.loc} (pid {held.get('pid')} on "
                    f"{held.get('host')}, last seen {age:.0f} s ago): wait for it to finish or choose another "
                    f"--out (a lock not refreshed for SAGSAE_LOCK_LEASE={lease_seconds():.0f} s is taken over)"
                )
            try:
                self._put(etag=etag)  # take over exactly the stale lock we read
                return
            except (_Conflict, FileNotFoundError):
                continue  # someone else took it over (or released it) first
        raise SagsaeError(f"could not take the lock of {self.loc}: other processes keep taking it; try again")

    @staticmethod
    def peek(loc: Location) -> tuple[dict | None, str | None]:
        """The lock object of ``loc`` as it is now (None if there is none), without taking it."""
        lock = _ObjectLock.__new__(_ObjectLock)
        lock.loc, lock.key, lock.ops = loc, loc._key(LOCK), _conditional_ops(loc)
        return lock._read()

    def _read(self) -> tuple[dict | None, str | None]:
        self.loc.fs.invalidate_cache()
        try:
            body, etag = self.ops.get(self.key)
        except FileNotFoundError:
            return None, None
        try:
            return json.loads(body), etag
        except ValueError:
            return {"host": "?", "pid": "?", "heartbeat": 0}, etag  # garbled: treat as stale

    def refresh(self) -> None:
        """Renew the heartbeat; refused if another process has taken the lock over meanwhile."""
        try:
            self._put(etag=self.etag)
        except (_Conflict, FileNotFoundError):
            raise SagsaeError(
                f"lost the lock of {self.loc} (another process took it over after "
                f"SAGSAE_LOCK_LEASE={lease_seconds():.0f} s without a heartbeat?): stopping before "
                "publishing anything; rerun to resume"
            ) from None
        except Exception as e:
            raise _remote_error(self.loc.url, e) from None

    def release(self) -> None:
        if self.key is None:
            return
        key, self.key = self.key, None
        try:
            self.ops.delete(key, self.etag)
        except Exception:
            pass  # taken over or already gone: nothing of ours to release


def _conditional_ops(loc: Location):
    """The lock's three object operations on ``loc``'s filesystem, with conditions where it has them;
    chosen by the filesystem's package, so every URL scheme it serves (s3:// and s3a://, az:// and
    abfs://) gets the same conditions."""
    by_package = {"s3fs": _S3Ops, "adlfs": _AzureOps, "gcsfs": _GCSOps}
    ops = by_package.get(type(loc.fs).__module__.split(".")[0], _FsspecOps)
    return ops(loc.fs)


class _FsspecOps:
    """Any fsspec filesystem: the create is conditional where the backend offers ``mode="create"``
    (gcsfs: ``ifGenerationMatch=0``); overwrites and deletes are plain (no ETag: ``put`` returns None)."""

    def __init__(self, fs):
        self.fs = fs

    def put(self, key: str, body: bytes, create: bool, etag: str | None) -> str | None:
        self.fs.pipe_file(key, body, mode="create" if create else "overwrite")
        return None

    def get(self, key: str) -> tuple[bytes, str | None]:
        return self.fs.cat_file(key), None

    def delete(self, key: str, etag: str | None) -> None:
        self.fs.rm_file(key)


class _S3Ops(_FsspecOps):
    """S3: ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to overwrite or delete."""

    def put(self, key, body, create, etag):
        b, k = key.split("/", 1)
        kw = {"IfNoneMatch": "*"} if create else ({"IfMatch": etag} if etag else {})
        return self.fs.call_s3("put_object", Bucket=b, Key=k, Body=body, **kw).get("ETag")

    def get(self, key):
        b, k = key.split("/", 1)
        out = self.fs.call_s3("get_object", Bucket=b, Key=k)
        return _sync_read(self.fs, out["Body"]), out.get("ETag")

    def delete(self, key, etag):
        b, k = key.split("/", 1)
        self.fs.call_s3("delete_object", Bucket=b, Key=k, **({"IfMatch": etag} if etag else {}))


class _GCSOps(_FsspecOps):
    """Google Cloud Storage through gcsfs's JSON-API calls: an object's generation stands for its ETag,
    ``ifGenerationMatch=0`` creates, ``ifGenerationMatch=<generation>`` overwrites or deletes (GCS answers
    412, which gcsfs raises as FileExistsError)."""

    def _upload_url(self) -> str:
        return getattr(self.fs, "_location", "https://storage.googleapis.com") + "/upload/storage/v1/b/{}/o"

    def put(self, key, body, create, etag):
        b, k = key.split("/", 1)
        out = self.fs.call("POST", self._upload_url(), b, uploadType="media", name=k, data=body, json_out=True,
                           ifGenerationMatch="0" if create else etag)  # fmt: skip
        self.fs.invalidate_cache(key)
        return str(out["generation"])

    def get(self, key):
        b, k = key.split("/", 1)
        generation = str(self.fs.call("GET", "b/{}/o/{}", b, k, json_out=True)["generation"])
        _, body = self.fs.call("GET", "b/{}/o/{}", b, k, alt="media", generation=generation)  # that version
        return body, generation

    def delete(self, key, etag):
        b, k = key.split("/", 1)
        self.fs.call("DELETE", "b/{}/o/{}", b, k, ifGenerationMatch=etag)
        self.fs.invalidate_cache(key)


class _AzureOps(_FsspecOps):
    """Azure Blob Storage through adlfs's client: ``If-None-Match: *`` to create (adlfs's
    ``overwrite=False``), ``If-Match: <ETag>`` to overwrite or delete, and the body read with its ETag
    in one request."""

    def _blob(self, key: str, work):
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from fsspec.asyn import sync

        container, blob = key.split("/", 1)

        async def run():
            async with self.fs.service_client.get_blob_client(container=container, blob=blob) as bc:
                return await work(bc)

        try:
            return sync(self.fs.loop, run)
        except ResourceModifiedError:
            raise FileExistsError(key) from None  # the If-Match condition failed
        except ResourceNotFoundError:
            raise FileNotFoundError(key) from None

    @staticmethod
    def _if_match(etag: str | None) -> dict:
        from azure.core import MatchConditions

        return {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}

    def put(self, key, body, create, etag):
        if create:
            return self.fs.pipe_file(key, body, overwrite=False).get("etag")

        async def work(bc):
            return (await bc.upload_blob(body, overwrite=True, **self._if_match(etag)))["etag"]

        return self._blob(key, work)

    def get(self, key):
        async def work(bc):
            d = await bc.download_blob()
            return await d.readall(), d.properties.etag

        return self._blob(key, work)

    def delete(self, key, etag):
        async def work(bc):
            await bc.delete_blob(**self._if_match(etag))

        self._blob(key, work)


def _stale(held: dict) -> str | None:
    """Why a held lock may be taken over, or None if its owner may still be alive."""
    if time.time() - float(held.get("heartbeat", 0) or 0) > lease_seconds():
        return "lease expired"
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held.get("pid")), 0)
        except (ProcessLookupError, ValueError, TypeError):
            return "owner gone"
        except PermissionError:
            return None
    return None


class _Conflict(Exception):
    """A conditional write's condition did not hold."""


def _precondition(e: Exception) -> bool:
    import errno

    return isinstance(e, OSError) and (e.errno == errno.EINVAL or "Precondition" in str(e))


def _sync_read(fs, body) -> bytes:
    """Read an aiobotocore streaming body on the filesystem's event loop."""
    from fsspec.asyn import sync

    async def read():
        try:
            return await body.read()
        finally:
            body.close()

    return sync(fs.loop, read)
