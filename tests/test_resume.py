"""Kill and resume: a stage killed with SIGKILL mid-way, then run again with the same command,
finishes with results identical to an uninterrupted run, and redoes only what was not finished."""
from __future__ import annotations

import json
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_server import FaultServer
from test_detection import Judge

TESTS = Path(__file__).parent


PRELUDE = f"""import sys
sys.path.insert(0, {str(TESTS)!r})
import numpy as np

def random_rows(shape):  # token rows without the corpus (packing it costs 5 s per subprocess)
    return np.random.default_rng(0).integers(2, 49152, size=shape).astype(np.int32)
"""


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(PRELUDE + body)
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


def _run_here(script: Path, *args: str) -> None:
    """The uninterrupted reference run, in this process (torch and the model are imported already:
    a subprocess fewer per test). The killed runs and their reruns are subprocesses."""
    argv = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CACHE = """
from pathlib import Path
from autointerp import cache, models, saes
subject = models.load("embedded")
rows = random_rows((128, 64))
sae = saes.random_sae(576, 256, 8, seed=0)
cache.build_cache(Path(sys.argv[1]), subject, sae, "model.layers.4", rows, sae_id="random", corpus_hash="t",
                  batch_size=8, shard_rows=16, progress=False)
"""


def test_caching_killed_then_rerun_gives_the_same_bytes(tmp_path):
    script = _script(tmp_path, "cache_stage", CACHE)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run_here(script, str(whole))
    shards = killed / "shards"
    _kill_when([sys.executable, str(script), str(killed)],
               lambda: shards.exists() and len(list(shards.glob("*.npz"))) >= 3)
    n_done = len(list(shards.glob("*.npz")))
    assert n_done < len(list((whole / "shards").glob("*.npz")))  # killed mid-way
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz")}
    _run([sys.executable, str(script), str(killed)])
    assert _tree(killed) == _tree(whole)  # same shards, index, stats, byte for byte
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz") if p.name in before} == before  # not redone


SCORE = """
import dataclasses
from test_survival import _latents
from test_detection import VOCAB, decode
from autointerp.llm import Endpoint, LLMClient
from autointerp.scorers import intruder, run_with_control, write_run
name, base_url, out, progress, n = sys.argv[1:6]
expl, exs = _latents(int(n))
client = LLMClient(Endpoint(base_url=base_url, model="fake-judge"), None, concurrency=4)
judge = dict(decode=decode, seed=0)
if name == "detection":
    from autointerp.scorers.detection import DetectionScorer
    scorer = DetectionScorer(client, **judge)
elif name == "fuzzing":
    from autointerp.scorers.fuzzing import FuzzingScorer
    scorer = FuzzingScorer(client, **judge)
elif name == "simulation":
    from autointerp.scorers.simulation import SimulationScorer
    scorer = SimulationScorer(client, logprobs=False, **judge)
elif name == "intruder":
    scorer = intruder.IntruderScorer(client, logprobs=False, n_trials=2, n_activating=3, **judge)
elif name == "intruder_embedding":
    scorer = intruder.EmbeddingIntruder(decode=decode, n_trials=2, n_activating=3, seed=0)
elif name == "embedding":
    from conftest import WordTokenizer
    from autointerp.scorers.embedding import EmbeddingScorer
    tok = WordTokenizer()
    tok.encode("".join(VOCAB))
    scorer = EmbeddingScorer(tok, progress=False)
else:  # surprisal reads real token ids: the test vocabulary through the embedded model's tokenizer
    from autointerp import models
    from autointerp.scorers.surprisal import SurprisalScorer
    subject = models.load("embedded")
    ids = [subject.tokenizer.encode(w, add_special_tokens=False)[0] for w in VOCAB]
    exs = {j: [dataclasses.replace(w, token_ids=tuple(ids[t] for t in w.token_ids)) for w in ws] for j, ws in exs.items()}
    scorer = SurprisalScorer(subject, batch_size=8, progress=False)
own_control = name.startswith("intruder")
run = run_with_control(scorer, None if own_control else expl, exs, seed=0, resume=progress, chunk=4,
                       metric="accuracy" if own_control else None)
write_run(out, run)
"""


class AnyJudge(Judge):
    """``Judge``'s rules for detection and fuzzing, plus simulation (10 on the tokens that are the
    explanation's last word, else 0) and the intruder test (the excerpt sharing fewest words with
    the others)."""

    def _echo(self, req: dict) -> str:
        user = req["messages"][-1]["content"]
        if "\nTokens:\n" in user:
            word = re.search(r"Explanation: .* (\w+)\n", user).group(1)
            toks = re.findall(r"^\d+\. '(.*)'$", user, re.M)
            return "[" + ", ".join("10" if t.strip() == word else "0" for t in toks) + "]"
        excerpts = [set(x.split()) for x in re.findall(r"^Excerpt \d+: (.*)$", user, re.M)]
        if excerpts:
            shared = [sum(len(a & b) for b in excerpts if b is not a) for a in excerpts]
            return str(shared.index(min(shared)) + 1)
        return super()._echo(req)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def _no_seconds(records: list[dict]) -> list[dict]:
    """Records without their wall-clock timings (``seconds``, ``seconds_total``)."""
    return [{**r, "usage": {k: v for k, v in r["usage"].items() if not k.startswith("seconds")}} for r in records]


@pytest.mark.parametrize("name,n", [("detection", 32), ("fuzzing", 32), ("simulation", 32), ("intruder", 32),
                                    ("intruder_embedding", 32), ("embedding", 32), ("surprisal", 8)])
def test_a_scorer_killed_then_rerun_scores_only_the_rest_and_gives_the_same_results(tmp_path, name, n):
    """Each scorer, killed part way (chunks of 4 latents), then rerun: the finished latents are
    not scored again (their records untouched, no more calls than the chunk in flight), and the
    results equal an uninterrupted run's."""
    script = _script(tmp_path, "score_stage", SCORE)
    with AnyJudge(lifetime_s=600, delay_s=0.02) as srv:
        _run_here(script, name, srv.base_url, str(tmp_path / "whole.jsonl"), str(tmp_path / "p_whole"), str(n))
        full = srv.n_calls
    progress = tmp_path / "p_killed"
    with AnyJudge(lifetime_s=600, delay_s=0.02) as srv:
        cmd = [sys.executable, str(script), name, srv.base_url, str(tmp_path / "killed.jsonl"), str(progress), str(n)]
        _kill_when(cmd, lambda: len(list(progress.rglob("*.json"))) >= max(4, n // 4))  # a chunk or more done
        first = srv.n_calls
        kept = {p: p.stat().st_mtime_ns for p in progress.rglob("*.json")}
        assert max(4, n // 4) <= len(kept) < n
        _run(cmd)
        second = srv.n_calls - first
    by_chunk: dict[int, list[Path]] = {}
    for path in kept:
        by_chunk.setdefault(int(path.stem) // 4, []).append(path)
    whole_chunks = [p for ps in by_chunk.values() if len(ps) == 4 for p in ps]  # a kill may fall between a chunk's records
    assert whole_chunks and all(p.stat().st_mtime_ns == kept[p] for p in whole_chunks)  # not scored again
    if full:  # an LLM judge: only the rest was asked, and at most the chunk in flight twice
        assert 0 < second < full and first + second <= full + full // (n // 4)
    assert _no_seconds(_records(tmp_path / "killed.jsonl")) == _no_seconds(_records(tmp_path / "whole.jsonl"))


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
        _run_here(script, srv.base_url, str(tmp_path / "whole"))
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
import killer
from autointerp import cache, models, results, saes, steering
from autointerp.scorers import intervention as iv
killer.arm_from_argv(sys.argv, {"iv": iv})
out = Path(sys.argv[1])
subject = models.load("embedded")
rows = random_rows((64, 32))
sae = saes.random_sae(576, 256, 8, seed=0)
reader = cache.build_cache(out / "cache", subject, sae, "model.layers.4", rows, sae_id="random", corpus_hash="t",
                           batch_size=8, shard_rows=16, progress=False)
latents = sorted(int(j) for j in np.argsort(-reader.stats.count, kind="stable")[:4])
kw = dict(n_prompts=2, max_len=24, gen_tokens=3, calibration_steps=4, seed=0, progress=False, resume=out / "progress")
run = steering.run_all(subject, sae, "model.layers.4", reader, latents, random_rows=32, **kw)
known = steering.known_answer(subject, reader, 2, **kw)
(out / "all.json").write_text(json.dumps([results.plain(r) for res in (run.results, known.results)
                                          for rs in res.values() for r in rs]))
"""


def test_steering_and_its_controls_killed_then_rerun_steer_only_the_rest_and_give_the_same_scores(tmp_path):
    """Chapter 07's three steering loops (the trained latents, the random-SAE control, the known
    answer), each killed part way in turn: every rerun steers only what was not recorded, and the
    last one ends with the scores of an uninterrupted run."""
    script = _script(tmp_path, "steer_stage", STEER)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run_here(script, str(whole))
    progress = killed / "progress"

    def counts() -> dict[str, int]:
        return {d.name: len(list(d.rglob("*.json"))) for d in progress.iterdir()} if progress.exists() else {}

    kept: dict[str, int] = {}
    for spec, after in (("kill=iv.score_latent:3", {"intervention": 2}),
                        ("kill=iv.score_latent:4", {"intervention": 4, "intervention_random": 1}),
                        ("kill=iv.score_latent:5", {"intervention": 4, "intervention_random": 4, "known_answer": 1})):
        proc = subprocess.run([sys.executable, str(script), str(killed), spec], capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert counts() == after
        mtimes = {str(p): p.stat().st_mtime_ns for p in progress.rglob("*.json")}
        assert all(mtimes[p] == t for p, t in kept.items())  # recorded latents are not steered again
        kept = mtimes
    _run([sys.executable, str(script), str(killed)])
    assert all(p.stat().st_mtime_ns == kept[str(p)] for p in progress.rglob("*.json") if str(p) in kept)

    def scores(path):  # everything but the wall-clock timings
        return [{**r, "usage": {k: v for k, v in r["usage"].items() if k != "seconds"}}
                for r in json.loads(path.read_text())]
    assert scores(killed / "all.json") == scores(whole / "all.json")


ALIGN = """
import json
from pathlib import Path
import killer
from autointerp import alignment, layers, models, saes
from autointerp.rundir import RunDir
killer.arm_from_argv(sys.argv, {"saes": saes})
rundir = RunDir(Path(sys.argv[1]))
subject = models.load("embedded")
rows = random_rows((96, 32))
fam = layers.train(rundir, subject, rows, width=64, k=4, n_layers=2, batch_tokens=256, seed=0, hook="model.layers.4",
                   progress=False)
records = [{"pair": f"{kind}{a}-{kind}{b}", **alignment.to_record(m)}
           for kind in layers.HOOKS for (a, b), m in layers.layer_matchings(fam, kind).items()]
records.append({"pair": "seeds", **alignment.to_record(alignment.match(alignment.directions(fam.saes["resid4"]),
                                                                        alignment.directions(fam.saes["twin"]),
                                                                        progress=False))})
layers.write(rundir, records)
"""


def _sae_files(root: Path) -> dict[str, bytes]:
    """Every file of the published SAEs, the train reports without their wall-clock seconds."""
    out = {}
    for name, data in _tree(root).items():
        if name.endswith("train_report.json"):
            data = json.dumps({k: v for k, v in json.loads(data).items() if k not in ("seconds", "path")}).encode()
        out[name] = data
    return out


def test_alignment_killed_mid_training_and_mid_publishing_then_rerun_gives_the_same_family(tmp_path):
    """Chapter 09's family trains in one pass: a kill while its SAEs are being saved leaves none
    published (the pass is trained again, from the same seed: the same bytes); a kill while they are
    being moved into place leaves whole SAEs only, and the rerun finishes the moves without training."""
    script = _script(tmp_path, "align_stage", ALIGN)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run_here(script, str(whole))
    names = sorted(p.name for p in (whole / "layers").iterdir())
    assert len(names) == 6 and not (whole / "layers" / ".training").exists()

    def killed_run(spec: str) -> None:
        proc = subprocess.run([sys.executable, str(script), str(killed), spec], capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    killed_run("kill=saes._save:3:after")  # three SAEs saved in the staging folder, the pass not finished
    assert not any((killed / "layers" / n).exists() for n in names)
    killed_run("kill=saes._publish:3")  # the pass finished and marked complete; two SAEs moved into place
    published = [n for n in names if (killed / "layers" / n / saes_weights()).exists()]
    assert len(published) == 2 and not any((killed / "layers" / n).exists() for n in set(names) - set(published))
    staged = {n: (killed / "layers" / ".training" / n / "train_report.json").read_text()
              for n in set(names) - set(published)}
    _run([sys.executable, str(script), str(killed)])
    assert not (killed / "layers" / ".training").exists()
    assert {n: (killed / "layers" / n / "train_report.json").read_text() for n in staged} == staged  # not retrained
    assert _sae_files(killed / "layers") == _sae_files(whole / "layers")
    assert _records(killed / "scores" / "alignment.jsonl") == _records(whole / "scores" / "alignment.jsonl")


def saes_weights() -> str:
    from autointerp.saes import SAE_LENS_WEIGHTS
    return SAE_LENS_WEIGHTS


VARIANT = """
from pathlib import Path
import killer
from autointerp import baselines, config, examples, models
from autointerp.corpus import PackedCorpus
from autointerp.scorers import intervention as iv
from autointerp.scorers.embedding import EmbeddingScorer
killer.arm_from_argv(sys.argv, {"iv": iv})
cfg = config.resolve("smoke", Path(sys.argv[1]), sae_width=256, sae_k=8, n_tokens=64 * 64)
subject = models.load("embedded")
packed = PackedCorpus(random_rows((64, 64)), "random", 0, 64, "random-rows")
baselines.run_variant(cfg, "random_sae", subject, packed, {"embedding": EmbeddingScorer(subject.tokenizer, progress=False)},
                      n_tokens=cfg.n_tokens, n_latents=6, settings=examples.settings_for("smoke", min_examples=8),
                      n_pos=4, n_neg=4, max_rate=0.5, progress=False,
                      steer={"n_latents": 3, "n_prompts": 2, "max_len": 24, "gen_tokens": 3, "calibration_steps": 4})
"""


def test_a_baseline_variant_killed_while_steering_then_rerun_redoes_nothing_finished(tmp_path):
    """Chapter 08 runs each variant through cache, examples, explanations and scorers: killed in
    its intervention scoring, the rerun reuses the cache, the embedding scores' records and the
    steered latents, and ends with the scores of an uninterrupted run."""
    script = _script(tmp_path, "variant_stage", VARIANT)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run_here(script, str(whole))
    proc = subprocess.run([sys.executable, str(script), str(killed), "kill=iv.score_latent:2"], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    vdir = killed / "variants" / "random_sae"
    assert not (vdir / "scores" / "intervention.jsonl").exists()
    kept = {p: p.stat().st_mtime_ns for p in [*(killed / "progress").rglob("*.json"), *(vdir / "cache").rglob("*.npz")]}
    assert any("embedding" in str(p) for p in kept) and any("intervention" in str(p) for p in kept)
    _run([sys.executable, str(script), str(killed)])
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # cache, scores and steered latents not redone
    for name in ("embedding", "intervention"):
        got, want = (_records(d / "variants" / "random_sae" / "scores" / f"{name}.jsonl") for d in (killed, whole))
        assert _no_seconds(got) == _no_seconds(want)


FINDINGS = """
import os
import killer
from autointerp import findings
killer.arm_from_argv(sys.argv, {"os": os})
findings.write(sys.argv[1], findings.collect(sys.argv[1]), profile="smoke")
"""


def _findings_run(root: Path) -> Path:
    from autointerp import metrics, results
    from autointerp.rundir import RunDir

    rd = RunDir(root)
    rd.sae_dir.mkdir(parents=True)
    (rd.sae_dir / "train_report.json").write_text(json.dumps({"fvu": 0.15, "frac_alive": 0.88}))
    results.write_json(rd.cache_summary, {"stats": {"frac_alive": 0.96}})
    diff = metrics.MeanWithCI(0.24, 0.23, 0.25, 768, 0, 2000)
    results.write(rd.scores("alignment"), "scores", [{"pair": "random_floor", "kind": "random_floor", "mean_similarity": 0.113}],
                  scorer="alignment", resid_minus_mlp_gap1=diff, verdict=metrics.verdict(diff))
    return root


def test_the_findings_killed_mid_write_keep_the_previous_file_and_the_rerun_writes_the_same(tmp_path):
    """Killed between writing findings.json's temporary file and renaming it: the previous file is
    untouched (never half-written), and the rerun writes what an uninterrupted run writes."""
    script = _script(tmp_path, "findings_stage", FINDINGS)
    whole, killed = _findings_run(tmp_path / "whole"), _findings_run(tmp_path / "killed")
    _run_here(script, str(whole))
    previous = b'{"findings": "from an earlier run"}'
    (killed / "findings.json").write_bytes(previous)
    proc = subprocess.run([sys.executable, str(script), str(killed), "kill=os.replace:1"], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / "findings.json").read_bytes() == previous
    _run([sys.executable, str(script), str(killed)])

    def doc(root):
        return {k: v for k, v in json.loads((root / "findings.json").read_text()).items() if k != "provenance"}
    assert doc(killed) == doc(whole) and doc(whole)["findings"]


def test_verify_names_what_a_killed_process_left(tmp_path):
    from autointerp import config, verify

    cfg = config.resolve("smoke", tmp_path / "run")
    config.save(cfg)
    root = tmp_path / "run"
    (root / "layers" / ".training" / "resid4").mkdir(parents=True)
    (root / "layers" / ".training" / "complete").write_text("")
    (root / "variants" / ".training-sae").mkdir(parents=True)
    (root / "findings.json.tmp").write_text("{")
    notes = " ".join(verify.verify(root).notes)
    assert "layers/.training: an interrupted SAE training pass (finished; its SAEs are moved into place" in notes
    assert "variants/.training-sae: an interrupted SAE training pass (not finished; it is trained again" in notes
    assert "1 temporary file(s) left by a killed write (findings.json.tmp)" in notes
