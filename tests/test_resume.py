"""Kill and resume: a stage killed with SIGKILL mid-way, then run again with the same command,
finishes with results identical to an uninterrupted run, and redoes only what was not finished."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from fault_server import FaultServer
from test_detection import Judge

TESTS = Path(__file__).parent


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n{body}")
    return path


def _kill_when(cmd: list[str], ready, timeout_s: float = 300) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; fails if it ended first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the stage ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("the stage never reached the point to kill it at")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CACHE = """
from pathlib import Path
from autointerp import cache, corpus, models, saes
subject = models.load("embedded")
rows = corpus.load_and_pack("stdlib", subject.tokenizer, ctx_len=64, n_tokens=64 * 128, seed=0).tokens
sae = saes.random_sae(576, 256, 8, seed=0)
cache.build_cache(Path(sys.argv[1]), subject, sae, "model.layers.4", rows, sae_id="random", corpus_hash="t",
                  batch_size=8, shard_rows=16, progress=False)
"""


def test_caching_killed_then_rerun_gives_the_same_bytes(tmp_path):
    script = _script(tmp_path, "cache_stage", CACHE)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run([sys.executable, str(script), str(whole)])
    shards = killed / "shards"
    _kill_when([sys.executable, str(script), str(killed)],
               lambda: shards.exists() and len(list(shards.glob("*.npz"))) >= 3)
    n_done = len(list(shards.glob("*.npz")))
    assert n_done < len(list((whole / "shards").glob("*.npz")))  # killed mid-way
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz")}
    _run([sys.executable, str(script), str(killed)])
    assert _tree(killed) == _tree(whole)  # same shards, index, stats, byte for byte
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz") if p.name in before} == before  # not redone


DETECTION = """
from test_survival import _latents
from test_detection import decode
from autointerp.llm import Endpoint, LLMClient
from autointerp.scorers import run_with_control, write_run
from autointerp.scorers.detection import DetectionScorer
base_url, out, progress = sys.argv[1:4]
expl, exs = _latents(32)
client = LLMClient(Endpoint(base_url=base_url, model="fake-judge"), None, concurrency=4)
run = run_with_control(DetectionScorer(client, decode=decode), expl, exs, seed=0, resume=progress, chunk=4)
write_run(out, run)
"""


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_a_scorer_killed_then_rerun_scores_only_the_rest_and_gives_the_same_results(tmp_path):
    script = _script(tmp_path, "detection_stage", DETECTION)
    with Judge(lifetime_s=600, delay_s=0.02) as srv:
        _run([sys.executable, str(script), srv.base_url, str(tmp_path / "whole.jsonl"), str(tmp_path / "p_whole")])
        full = srv.n_calls
    progress = tmp_path / "p_killed"
    with Judge(lifetime_s=600, delay_s=0.02) as srv:
        _kill_when([sys.executable, str(script), srv.base_url, str(tmp_path / "killed.jsonl"), str(progress)],
                   lambda: len(list(progress.rglob("*.json"))) >= 8)
        first = srv.n_calls
        _run([sys.executable, str(script), srv.base_url, str(tmp_path / "killed.jsonl"), str(progress)])
        second = srv.n_calls - first
    assert 0 < second < full and first + second <= full + 24  # at most the chunk in flight is redone
    assert _records(tmp_path / "killed.jsonl") == _records(tmp_path / "whole.jsonl")


EXPLAIN = """
from test_explanations import _lex, dec
from autointerp import explain as xp, explanations as xps
from autointerp.llm import Endpoint, LLMClient
base_url, run_dir = sys.argv[1:3]
client = LLMClient(Endpoint(base_url=base_url, model="fake"), run_dir + "/llm_cache", concurrency=2)
out = xp.run_explainers([_lex(j) for j in range(60)], [xp.LLMExplainer(max_tokens=40)], dec, client)
xps.save(run_dir, out, explainers=[xp.LLMExplainer(max_tokens=40)], endpoint=client.endpoint)
"""


def test_explaining_killed_then_rerun_sends_only_the_rest_and_gives_the_same_explanations(tmp_path):
    script = _script(tmp_path, "explain_stage", EXPLAIN)
    answer = ("good", "[EXPLANATION]: Mentions of opening a file")
    with FaultServer(default=answer, lifetime_s=600, delay_s=0.02) as srv:
        _run([sys.executable, str(script), srv.base_url, str(tmp_path / "whole")])
        full = srv.n_calls
    cache = tmp_path / "killed" / "llm_cache"
    with FaultServer(default=answer, lifetime_s=600, delay_s=0.02) as srv:
        _kill_when([sys.executable, str(script), srv.base_url, str(tmp_path / "killed")],
                   lambda: len(list(cache.rglob("*.json"))) >= 15)
        first = srv.n_calls
        _run([sys.executable, str(script), srv.base_url, str(tmp_path / "killed")])
        second = srv.n_calls - first
    assert 0 < second < full and first + second <= full + 2  # only the calls in flight are sent twice

    def texts(run_dir):
        return [{k: v for k, v in x.items() if k != "cached"} for r in _records(run_dir / "explanations.jsonl")
                for x in r["explanations"]]
    assert texts(tmp_path / "killed") == texts(tmp_path / "whole")


def test_a_latent_whose_calls_failed_is_not_recorded_so_the_rerun_asks_again(tmp_path):
    """A spending cap stops a scorer part way: the latents it starved are not kept as finished,
    and the rerun with a higher cap completes them (the rest comes from the progress records)."""
    from test_detection import decode
    from test_survival import _latents

    from autointerp.llm import Budget, Endpoint, LLMClient
    from autointerp.scorers import run_with_control
    from autointerp.scorers.detection import DetectionScorer

    expl, exs = _latents(12)

    def score(srv, budget, progress):
        client = LLMClient(Endpoint(base_url=srv.base_url, model="fake-judge"), None, budget=budget, concurrency=2)
        return run_with_control(DetectionScorer(client, decode=decode), expl, exs, seed=0, resume=progress, chunk=4)

    with Judge() as srv:
        whole = score(srv, None, tmp_path / "whole")
        capped = score(srv, Budget(max_calls=30), tmp_path / "p")
        assert any(r.metrics.n_failed for r in capped.real + capped.control)
        calls = srv.n_calls
        again = score(srv, None, tmp_path / "p")
        assert 0 < srv.n_calls - calls < 72  # only the starved chunks were asked again
    assert [r.metrics for r in again.real + again.control] == [r.metrics for r in whole.real + whole.control]


STEER = """
import json
from pathlib import Path
import numpy as np
from autointerp import cache, corpus, models, results, saes, steering
out = Path(sys.argv[1])
subject = models.load("embedded")
rows = corpus.load_and_pack("stdlib", subject.tokenizer, ctx_len=32, n_tokens=32 * 64, seed=0).tokens
sae = saes.random_sae(576, 256, 8, seed=0)
reader = cache.build_cache(out / "cache", subject, sae, "model.layers.4", rows, sae_id="random", corpus_hash="t",
                           batch_size=8, shard_rows=16, progress=False)
latents = sorted(int(j) for j in np.argsort(-reader.stats.count, kind="stable")[:6])
run = steering.run_all(subject, sae, "model.layers.4", reader, latents, n_prompts=2, max_len=24, gen_tokens=3,
                       calibration_steps=4, random_control=False, seed=0, progress=False, resume=out / "progress")
(out / "trained.json").write_text(json.dumps([results.plain(r) for r in run.results["trained"] + run.results["shuffled"]]))
"""


def test_steering_killed_then_rerun_steers_only_the_rest_and_gives_the_same_scores(tmp_path):
    script = _script(tmp_path, "steer_stage", STEER)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run([sys.executable, str(script), str(whole)])
    records = killed / "progress" / "intervention"
    _kill_when([sys.executable, str(script), str(killed)], lambda: len(list(records.rglob("*.json"))) >= 2)
    kept = {p.name: p.stat().st_mtime_ns for p in records.rglob("*.json")}
    assert 2 <= len(kept) < 6
    _run([sys.executable, str(script), str(killed)])
    assert {p.name: p.stat().st_mtime_ns for p in records.rglob("*.json") if p.name in kept} == kept  # not redone
    def scores(path):  # everything but the wall-clock timings
        return [{**r, "usage": {k: v for k, v in r["usage"].items() if k != "seconds"}}
                for r in json.loads(path.read_text())]
    assert scores(killed / "trained.json") == scores(whole / "trained.json")
