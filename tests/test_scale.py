"""Paper scale on this machine's terms: sharded caching on torchrun (two CPU ranks, gloo, write the
cache a single process writes, byte for byte, and a launch killed part way is finished by the next
one without redoing a shard), and LLM throughput that grows with the requests in flight."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autointerp import config, distributed, saes


def _run_dir(root: Path, sae_dir: Path) -> Path:
    config.save(config.resolve("smoke", root, sae=str(sae_dir), n_tokens=64 * 64, shard_rows=4, batch_size=4))
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _torchrun(run_dir: Path, n: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "autointerp.distributed", str(run_dir)]


def test_two_ranks_write_the_single_process_cache_and_a_killed_launch_is_finished_by_the_next(tmp_path):
    sae_dir = tmp_path / "sae"
    saes.random_sae(576, 256, 8, seed=0, hook="model.layers.8").save_model(str(sae_dir))
    one = _run_dir(tmp_path / "one", sae_dir)
    two = _run_dir(tmp_path / "two", sae_dir)
    distributed.cache_run(str(one), progress=False)  # no torchrun: one process, world size 1
    shards = two / "cache" / "shards"
    proc = subprocess.Popen(_torchrun(two), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while not (shards.exists() and len(list(shards.glob("*.npz"))) >= 4):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "torchrun never wrote 4 shards"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
    proc.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz")}
    assert 4 <= len(kept) < 16 and not (two / "cache" / "index").exists()
    done = subprocess.run(_torchrun(two), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Cached 64 rows in 16 shards" in done.stdout
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz") if p.name in kept} == kept  # not redone
    assert _tree(two / "cache") == _tree(one / "cache")  # shards, index, stats, manifest, byte for byte


def test_llm_throughput_grows_with_the_requests_in_flight():
    """bench/llm_throughput.py at small sizes: against a server that answers after 0.1 s, 8 in
    flight send far more calls per second than 1, and 32 more than 8 (ratios, not times)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import llm_throughput

    rates = llm_throughput.run(latency_s=0.1, levels=(1, 8, 32), per_level=2)
    assert rates[8] > 3 * rates[1] and rates[32] > 1.5 * rates[8], rates
