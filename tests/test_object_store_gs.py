"""Stores on Google Cloud Storage (``gs://``), against gcp-storage-emulator (from PyPI) started on
127.0.0.1: a killed harvest resumes to the store a local harvest makes, and train and eval read it.
gcsfs finds the server through the standard variable STORAGE_EMULATOR_HOST. The emulator ignores
GCS's preconditions (``ifGenerationMatch=0`` creates over an existing object there), so the lock's
conditional create, which real GCS enforces, is tested on S3 and Azure only. Skipped without gcsfs or
the emulator."""

import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import free_port, local_server, run_cli
from test_object_store import kill_resume_equals_local, train_and_eval_read

# before gcsfs is imported here: its default class asks a gRPC control API the emulator lacks for
# every bucket's layout (a 60 s timeout each; the subprocesses get it from the fixture's environment)
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
pytest.importorskip("gcsfs")
EMULATOR = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent)) or shutil.which(
    "gcp-storage-emulator"
)
pytestmark = pytest.mark.skipif(not EMULATOR, reason="gcp-storage-emulator (pip install) not found")


@pytest.fixture(scope="module")
def gs():
    """The emulator on 127.0.0.1 with a bucket, STORAGE_EMULATOR_HOST in the environment; yields gcsfs."""
    port = free_port()
    argv = [EMULATOR, "start", "--host", "127.0.0.1", "--port", str(port), "--default-bucket", "sagsae-test",
            "--in-memory", "--quiet"]  # fmt: skip
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    with local_server(argv, port, env):
        import gcsfs

        yield gcsfs.GCSFileSystem()


def test_harvest_kill_resume_train_eval_on_gcs(tmp_path, gs):
    url = "gs://sagsae-test/syn"
    p = kill_resume_equals_local(tmp_path, gs, url)
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    p = run_cli("store", "info", url, check=0)
    assert url in p.stderr + p.stdout and "100,000" in p.stderr + p.stdout
    train_and_eval_read(tmp_path, url)


def test_missing_bucket_is_one_line(gs):
    p = run_cli("store", "info", "gs://no-such-bucket/x", check=2)
    assert p.stderr.count("\n") == 1 and "gs://no-such-bucket/x" in p.stderr, p.stderr
