"""Stores on Azure Blob Storage (``az://``), against Azurite (Microsoft's storage emulator, from npm)
started on 127.0.0.1: a killed harvest resumes to the store a local harvest makes, train and eval read
it, the writer's lock is taken, renewed and taken over with conditional writes there too, and no command prints the traceback adlfs
raised at exit (location.close_clients). Credentials come from the standard environment variable
AZURE_STORAGE_CONNECTION_STRING. Skipped without Azurite (``SAGSAE_AZURITE`` = its ``azurite-blob``,
or on PATH) or adlfs."""

import os
import shutil

import pytest
from conftest import free_port, local_server
from test_object_store import (
    hold_and_refuse,
    kill_resume_equals_local,
    lock_refuses_live_and_takes_over_stale,
    train_and_eval_read,
)

pytest.importorskip("adlfs")
AZURITE = os.environ.get("SAGSAE_AZURITE") or shutil.which("azurite-blob")
pytestmark = pytest.mark.skipif(not AZURITE, reason="Azurite (npm install azurite) not found")
# Azurite's published development account (the same in every installation)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def az(tmp_path_factory):
    """Azurite's blob service on 127.0.0.1 and its connection string in the environment; yields a
    container."""
    port = free_port()
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")  # fmt: skip
    argv = [AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--skipApiVersionCheck", "--loose",
            "--location", str(tmp_path_factory.mktemp("azurite"))]  # fmt: skip
    with local_server(argv, port, {"AZURE_STORAGE_CONNECTION_STRING": conn}):
        import adlfs

        fs = adlfs.AzureBlobFileSystem(connection_string=conn)
        fs.mkdir("sagsae-test")
        yield fs


def test_harvest_kill_resume_train_eval_on_azure(tmp_path, az):
    url = "az://sagsae-test/syn"
    p = kill_resume_equals_local(tmp_path, az, url)
    assert "Traceback" not in p.stderr, p.stderr[-2000:]  # adlfs's exit-time error is not printed
    train_and_eval_read(tmp_path, url)


def test_azure_lock_refuses_a_second_writer(az):
    from sagsae_cli.store import open_store

    url = "az://sagsae-test/locked"
    hold_and_refuse(url).close()
    assert open_store(url).rows("train") == 5 and not az.exists("sagsae-test/locked/.lock")


def test_azure_lock_takeover_is_conditional(az, monkeypatch):
    lock_refuses_live_and_takes_over_stale(az, "az://sagsae-test/taken", monkeypatch)
