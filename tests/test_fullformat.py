"""The full profile's formats, offline: a randomly initialised Gemma-2 saved as a Hugging Face
folder, Gemma Scope JumpReLU SAEs (``params.npz`` for the run's SAE, sae-lens folders for chapters
08's and 09's sources), bfloat16, every chapter on the ``mini`` profile (full's shape, smoke's
sizes). The weights are random: this checks code paths and formats, not findings."""
from __future__ import annotations

import json

import numpy as np
import nbformat
import pytest
import torch

from autointerp import corpus, models, rundir, run, sae_formats, saes, synthetic

RUN_LAYER = 3


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullformat_assets")
    folder = synthetic.gemma2_folder(root / "gemma-2-tiny")
    subject = models.load(str(folder))
    rows = corpus.load_and_pack("stdlib", subject.tokenizer, 64, 64 * 48, 1).tokens
    run_sae = synthetic.gemma_scope_sae(subject, f"model.layers.{RUN_LAYER}", rows,
                                        root / "gemma-scope-tiny-res" / f"layer_{RUN_LAYER}" / "width_512", width=512)
    for f in ("cfg.json", saes.SAE_LENS_WEIGHTS):  # the run's SAE exactly as Gemma Scope ships it
        (run_sae / f).unlink()
    for layer in range(2, 6):
        synthetic.gemma_scope_sae(subject, f"model.layers.{layer}", rows, root / "res-128" / f"layer_{layer}",
                                  width=128, seed=layer, npz=False)
        synthetic.gemma_scope_sae(subject, models.mlp_output_hook(subject, layer), rows,
                                  root / "mlp-128" / f"layer_{layer}", width=128, seed=10 + layer, npz=False)
    return {"root": root, "model": folder, "sae": run_sae, "subject": subject, "rows": rows}


def test_gemma_scope_npz_and_sae_lens_folder_encode_alike(assets, tmp_path):
    subject, rows = assets["subject"], assets["rows"]
    both = synthetic.gemma_scope_sae(subject, "model.layers.2", rows, tmp_path / "gemma-scope-x-mlp" / "layer_2" / "w",
                                     width=64, seed=3)
    from_lens = saes.load(str(both))  # cfg.json + sae_weights.safetensors win when both are there
    (both / saes.SAE_LENS_WEIGHTS).unlink()
    from_npz = saes.load(str(both))
    assert from_lens.cfg.architecture() == from_npz.cfg.architecture() == "jumprelu"
    assert from_npz.cfg.metadata.hook_name == "blocks.2.hook_mlp_out"  # read off the release-style path
    assert from_lens.cfg.metadata.hook_name == "blocks.2.hook_resid_post"  # what it was made for
    x = saes.hooked_activations(subject, "model.layers.2", rows[:4])[:, 1:].reshape(-1, 64)
    z = from_npz.encode(x)
    assert torch.equal(from_lens.encode(x), z)
    rate = float((z > 0).float().mean())
    assert 0.005 < rate < 0.1, rate  # thresholds calibrated to ~2% of tokens


def test_gemma_scope_npz_errors(tmp_path):
    np.savez(tmp_path / sae_formats.GEMMA_SCOPE_WEIGHTS, W_enc=np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match=r"not a Gemma Scope SAE: it lacks \['W_dec'"):
        saes.load(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"params.npz \(Gemma Scope\)"):
        saes.load(str(tmp_path / "empty"))


def test_gemma2_norm_gain_and_random_like_follow_the_architecture(assets):
    subject, rows = assets["subject"], assets["rows"]
    # Gemma's RMSNorm scales by 1 + weight (zero-initialised): the known-answer SAE reads the
    # effective gain, so its decoder directions exist
    from autointerp import steering

    psae, hook = steering.planted_output_sae(subject, [" the", " of"])
    assert torch.isfinite(psae.W_dec).all() and hook == f"model.layers.{subject.n_layers - 1}"
    jr = saes.load(str(assets["sae"]))
    rnd = saes.random_like(jr, subject, f"model.layers.{RUN_LAYER}", rows, seed=0)
    assert rnd.cfg.d_sae == jr.cfg.d_sae and 1 <= rnd.cfg.k <= 30  # its L0, as a JumpReLU has no k


@pytest.mark.notebooks
def test_every_chapter_runs_on_the_full_formats(assets, tmp_path):
    """Chapters 00-12 on the mini profile: Gemma-2 folder, Gemma Scope SAE, bfloat16, sources."""
    rd = tmp_path / "mini_run"
    a = assets["root"]
    groups = [
        (["00", "01", "02", "03", "04", "05", "06", "07"],
         {"model": str(assets["model"]), "sae": str(assets["sae"]), "hook": f"model.layers.{RUN_LAYER}",
          "fuzz_modes": ["default"]}),  # active fuzzing's code has no format of its own
        (["08"], {"sources": {"narrow": f"{a}/res-128/layer_{{layer}}", "mlp": f"{a}/mlp-128/layer_{{layer}}"}}),
        (["09"], {"sources": {"resid": f"{a}/res-128/layer_{{layer}}", "mlp": f"{a}/mlp-128/layer_{{layer}}"}}),
        (["10", "11", "12"], {}),
    ]
    for only, params in groups:
        run.run("mini", rd, only=only, params=params, cell_timeout_s=600)
    check_mini_run(rd, a)


def check_mini_run(rd, a) -> None:
    """What the mini run must have written, and that it took the full profile's code paths."""
    for nb in run.notebooks():
        executed = nbformat.read(rd / "notebooks" / nb.name, as_version=4)
        assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
                    if o.output_type == "error"], nb.name
    for stage, files in rundir.STAGES.items():
        for rel in files:  # a loaded SAE is not copied into the run (sae/ is for a trained one)
            if not rel.startswith("sae/") and rel != "scores/fuzzing_active.jsonl":  # active fuzzing: not asked
                assert (rd / rel).exists(), f"{stage} did not write {rel}"
    prov = json.loads((rd / "run.json").read_text())
    assert prov["config"]["dtype"] == "bfloat16" and prov["config"]["profile"] == "mini"
    assert prov["provenance"]["model"]["architecture"] == "Gemma2ForCausalLM"
    assert prov["provenance"]["sae"]["architecture"] == "jumprelu"
    assert prov["provenance"]["sae"]["hook_name"] == f"blocks.{RUN_LAYER}.hook_resid_post"
    stats = json.loads((rd / "cache" / "summary.json").read_text())["stats"]
    assert stats["n_latents"] == 512 and 1 <= stats["mean_l0"] <= 60  # a JumpReLU's L0 varies by token
    header = json.loads((rd / "scores" / "baselines.jsonl").open().readline())["header"]
    assert "surprisal" in header["settings"]["scorers"]  # the full profile's scorer list
    variants = header["variants"]
    assert {v: variants[v]["source"] for v in ("narrow", "mlp")} == {
        "narrow": f"{a}/res-128/layer_{RUN_LAYER}", "mlp": f"{a}/mlp-128/layer_{RUN_LAYER}"}
    assert variants["mlp"]["hook"] == f"model.layers.{RUN_LAYER}.post_feedforward_layernorm"
    assert not (rd / "variants" / "narrow" / "sae").exists()  # loaded from sources, not trained
    fam = json.loads((rd / "scores" / "alignment.jsonl").open().readline())["header"]["family"]
    assert fam["mlp2"]["hook"] == "model.layers.2.post_feedforward_layernorm"  # Gemma's hook_mlp_out
    assert sorted(p.name for p in (rd / "layers").iterdir() if not p.name.startswith(".")) == ["narrow", "twin"]
