"""Stores on Azure Blob Storage (``az://``), against Azurite (Microsoft's storage emulator, from npm)
started on 127.0.0.1: a killed harvest resumes to the store a local harvest makes, train and eval read
it, the writer's lock is a conditional create there too, and no command prints the traceback adlfs
raised at exit (location.close_clients). Credentials come from the standard environment variable
AZURE_STORAGE_CONNECTION_STRING. Skipped without Azurite (``SAGSAE_AZURITE`` = its ``azurite-blob``,
or on PATH) or adlfs."""

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import run_cli
from test_object_store import SYN, _arrays, _free_port

pytest.importorskip("adlfs")
AZURITE = os.environ.get("SAGSAE_AZURITE") or shutil.which("azurite-blob")
pytestmark = pytest.mark.skipif(not AZURITE, reason="Azurite (npm install azurite) not found")
# Azurite's published development account (the same in every installation)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def az(tmp_path_factory):
    port = _free_port()
    server = subprocess.Popen(
        [AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--skipApiVersionCheck", "--loose",
         "--location", str(tmp_path_factory.mktemp("azurite"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")  # fmt: skip
    old = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = conn
    try:
        for _ in range(600):  # a hang guard while the server starts, not a time limit on anything tested
            if server.poll() is not None:
                pytest.fail("Azurite exited at start")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        import adlfs

        fs = adlfs.AzureBlobFileSystem(connection_string=conn)
        fs.mkdir("sagsae-test")
        yield fs
    finally:
        server.terminate()
        server.wait()
        if old is None:
            os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)
        else:
            os.environ["AZURE_STORAGE_CONNECTION_STRING"] = old


def test_harvest_kill_resume_train_eval_on_azure(tmp_path, az):
    run_cli("harvest", *SYN, "--out", tmp_path / "local", check=0)
    url = "az://sagsae-test/syn"
    killed = subprocess.run([sys.executable, "-m", "sagsae_cli", "harvest", *map(str, SYN), "--out", url],
                            env={**os.environ, "SAGSAE_FAULT": "commit:2"}, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert az.exists("sagsae-test/syn/.lock")  # the dead writer's lock object is still there
    p = run_cli("harvest", *SYN, "--out", url, check=0)  # same host, owner pid gone: taken over
    assert "Traceback" not in p.stderr, p.stderr[-2000:]  # adlfs's exit-time error is not printed
    assert not az.exists("sagsae-test/syn/.lock")
    a, b = _arrays(tmp_path / "local"), _arrays(url)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    p = run_cli("train", "--store", url, "--out", tmp_path / "runs", "--width", 32, "--tokens", 20_000,
                "--batch", 500, "--quiet", check=0)  # fmt: skip
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    run_cli("eval", *sorted((tmp_path / "runs").iterdir()), "--results", tmp_path / "res", "--quiet", check=0)
    import pandas as pd

    row = pd.read_parquet(next((tmp_path / "res" / "eval").glob("*.parquet"))).iloc[0]
    assert row["eval_tokens"] == 5_000 and 0 < row["r2"] <= 1


def test_azure_lock_refuses_a_second_writer(az):
    import torch

    from sagsae_cli.store import StoreWriter, open_store

    url = "az://sagsae-test/locked"
    w = StoreWriter(url, d=4, dtype="float32", config={"c": 1})
    w.append("train", torch.ones(5, 4))
    w.commit()
    p = run_cli(
        "harvest", "--source", "synthetic", "--d", 4, "--tokens", 100, "--out", url, "--force", check=2
    )
    assert "another process is writing" in p.stderr and p.stderr.count("\n") == 1
    w.close()
    assert open_store(url).rows("train") == 5 and not az.exists("sagsae-test/locked/.lock")
