"""Pretrained EBMs: the authors' Hub layout, `pureebm export`, the Hub through its cache (a localhost stand-in), and
the one-line errors. No network: folders are written as the authors' release and huggingface_hub write them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pureebm_lightning.cli import main
from pureebm_lightning.defenses.pureebm import Purifier
from pureebm_lightning.energy_nets import SNGANResNetEnergy
from pureebm_lightning.errors import CheckpointError, PretrainedError
from pureebm_lightning.pretrained import load_pretrained, parse_source
from tests.authors_ebm import write_authors_folder
from tests.conftest import QUIET_PURIFY, ROOT, kill_during_second_block, write_digit_folder
from tests.fake_hub import FakeHub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def images(count: int, side: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- the authors' layout ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
@pytest.mark.parametrize("config", [True, False])
def test_the_authors_folder_gives_exactly_their_energies(tmp_path, patch_size, weights, config):
    theirs = write_authors_folder(tmp_path, nf=16, patch_size=patch_size, weights=weights, config=config)
    ebm = load_pretrained(tmp_path)
    assert isinstance(ebm.energy_net, SNGANResNetEnergy) and ebm.layout == "authors"
    assert ebm.energy_net.patch_size == patch_size and ebm.energy_net.num_filters == 16
    assert ebm.image_shape == (3, 32 * patch_size, 32 * patch_size)
    assert ebm.weights_file.name == ("model.safetensors" if weights == "safetensors" else "pytorch_model.bin")
    assert (ebm.sampler.step_size, ebm.sampler.temperature) == (1.25e-2, 1e-4)  # the paper's: their config has none
    x = images(3, 32 * patch_size)
    with torch.no_grad():
        assert torch.equal(ebm.energy_net(x), theirs(x).squeeze(1))
    purifier = Purifier.from_pretrained(str(tmp_path))
    assert purifier.steps == 150 and purifier.settings()["weights_sha256"] == ebm.weights_sha256


def test_the_mapped_weights_are_the_authors_parameter_for_parameter(tmp_path):
    theirs = write_authors_folder(tmp_path, nf=8)
    ours = load_pretrained(tmp_path).energy_net.state_dict()
    for key, value in theirs.state_dict().items():
        block, conv = (key.split(".")[0], key.split(".")[1]) if key != "l5.weight" else ("l5", "")
        mapped = "linear.weight" if block == "l5" else (
            f"blocks.{int(block[-1]) - 1}.{ {'c1': 'conv1', 'c2': 'conv2', 'c_sc': 'shortcut'}[conv]}.{key.split('.')[2]}")
        assert torch.equal(ours[mapped], value), key
    assert len(ours) == len(theirs.state_dict()) == 21


def test_a_config_that_contradicts_the_weights_is_refused(tmp_path):
    write_authors_folder(tmp_path, nf=16)
    (tmp_path / "config.json").write_text(json.dumps({"nf": 128, "patch_size": 1}))
    with pytest.raises(PretrainedError, match=r"config.json says nf = 128, but block1.c1.weight has shape \(16, 3, 3, 3\)"):
        load_pretrained(tmp_path)


def test_folders_that_are_not_an_ebm_of_a_known_layout_are_refused_naming_what_was_expected(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match="holds neither model.safetensors nor pytorch_model.bin"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "bert").mkdir()
    save_file({"embeddings.word_embeddings.weight": torch.zeros(4, 2)}, str(tmp_path / "bert/model.safetensors"))
    (tmp_path / "bert/config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(PretrainedError, match=r"not an EBM of a known layout .*embeddings.word_embeddings.weight.*"
                                              r"expected the authors' EBMSNGAN32 \(block1.c1.weight"):
        load_pretrained(tmp_path / "bert")
    truncated = tmp_path / "truncated"
    write_authors_folder(truncated, nf=8)
    (truncated / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes()[:100])
    with pytest.raises(PretrainedError, match="not a readable safetensors file"):
        load_pretrained(truncated)


def test_an_export_from_a_newer_release_or_with_a_bad_recommended_t_is_refused(tmp_path, rgb_ebm):
    main(["export", "--ckpt_path", str(rgb_ebm), "--out", str(tmp_path / "e")])
    config = json.loads((tmp_path / "e/config.json").read_text())
    (tmp_path / "e/config.json").write_text(json.dumps({**config, "format_version": 2}))
    with pytest.raises(PretrainedError, match=r"written by a newer pureebm-lightning \(config.json format 2"):
        load_pretrained(tmp_path / "e")
    (tmp_path / "e/config.json").write_text(json.dumps({**config, "recommended_steps": -5}))
    with pytest.raises(PretrainedError, match="recommended_steps is -5, not a number of steps"):
        load_pretrained(tmp_path / "e")


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Runs:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"block1.c1.weight": Runs()}, tmp_path / "pytorch_model.bin")  # what a hostile repo would upload
    with pytest.raises(PretrainedError, match="holds Python objects beyond tensors, which are refused"):
        load_pretrained(tmp_path)


def test_an_exported_config_may_not_choose_a_class_outside_the_package(tmp_path):
    write_authors_folder(tmp_path, nf=8)
    (tmp_path / "config.json").write_text(json.dumps({"energy_net": {"class_path": "os.system", "init_args": {}},
                                                      "image_shape": [3, 32, 32]}))
    with pytest.raises(PretrainedError, match="only pureebm_lightning's energy nets load"):
        load_pretrained(tmp_path)


def test_sources_are_parsed_with_one_line_errors(tmp_path):
    assert parse_source("hf://SunayBhat1/puregen-ebm-cinic10-imagenet").location == "SunayBhat1/puregen-ebm-cinic10-imagenet"
    assert parse_source("hf://a/b@v1.0").revision == "v1.0" and parse_source("hf://a/b").revision is None
    assert parse_source("hf://models/a/b@main").location == "a/b"  # huggingface_hub's own URI form
    assert parse_source(tmp_path).kind == "folder"
    for text, message in (("hf://a/b@", "nothing after '@'"), ("hf://ab", "a Hub repo is owner/name"),
                          ("hf://datasets/SunayBhat1/puregen-poisons", "a dataset repo; an EBM is a model repo"),
                          ("hf://a/b c", "not a valid Hub repo id"),
                          ("SunayBhat1/puregen-ebm", "write hf://SunayBhat1/puregen-ebm"),
                          (str(tmp_path / "nope.ckpt"), "no such checkpoint file")):
        with pytest.raises(CheckpointError, match=message):
            parse_source(text)


def test_fine_tuning_starts_from_the_pretrained_weights_and_refuses_another_net(tmp_path):
    from pureebm_lightning.ebm_module import EBMModule

    theirs = write_authors_folder(tmp_path, nf=16)
    module = EBMModule(SNGANResNetEnergy(3, 16), init_weights=str(tmp_path))
    module.setup("fit")
    x = images(2, 32)
    with torch.no_grad():
        assert torch.equal(module.energy_net(x), theirs(x).squeeze(1))
    other = EBMModule(SNGANResNetEnergy(3, 32), init_weights=str(tmp_path))
    with pytest.raises(PretrainedError, match=r"blocks.0.conv1.weight has shape \(16, 3, 3, 3\) there, \(32, 3, 3, 3\) in the "
                                              r"config's SNGANResNetEnergy .*num_filters=16.*set model.init_args.energy_net"):
        other.setup("fit")


@pytest.mark.slow
def test_pureebm_fit_fine_tunes_from_an_exported_folder(tmp_path, grey_ebm, monkeypatch):
    from pureebm_lightning.ebm_module import EBMModule
    from tests.conftest import CONFIGS, TINY_EBM

    exported = tmp_path / "exported"
    main(["export", "--ckpt_path", str(grey_ebm), "--out", str(exported)])
    monkeypatch.chdir(tmp_path)  # the config writes runs/ebm_digits/ here
    monkeypatch.setattr(sys, "argv", ["pureebm"])
    main(["fit", "--config", str(CONFIGS / "ebm_digits.yaml"), *TINY_EBM, "--trainer.max_steps=1",
          f"--model.init_args.init_weights={exported}"])
    ckpt = tmp_path / "runs/ebm_digits/checkpoints/last.ckpt"
    tuned = EBMModule.load_from_checkpoint(ckpt, map_location="cpu").energy_net.state_dict()
    start = load_pretrained(exported).energy_net.state_dict()
    moved = [k for k in start if not torch.equal(start[k], tuned[k])]
    assert moved and max((start[k] - tuned[k]).abs().max().item() for k in start) < 1e-2  # one Adam step (lr 1e-4) away
    with pytest.raises(SystemExit, match="set model.init_args.energy_net to match"):
        main(["fit", "--config", str(CONFIGS / "ebm_digits.yaml"), *TINY_EBM, "--model.init_args.energy_net.init_args.num_filters=4",
              f"--model.init_args.init_weights={exported}"])


# ---- export ---------------------------------------------------------------------------------------------------------
def test_export_round_trip_is_exact_and_the_card_states_the_gap(tmp_path, rgb_ebm):
    from huggingface_hub import ModelCard

    from pureebm_lightning.ebm_module import EBMModule

    out = tmp_path / "my-ebm"
    main(["export", "--ckpt_path", str(rgb_ebm), "--out", str(out), "--data", "digits", "--steps", "40",
          "--datasets", "[sklearn-digits]", "--license", "mit"])
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    trained = EBMModule.load_from_checkpoint(rgb_ebm, map_location="cpu")
    ebm = load_pretrained(out)
    assert ebm.layout == "pureebm" and ebm.image_shape == (3, 8, 8) and ebm.recommended_steps == 40
    assert (ebm.sampler.step_size, ebm.sampler.temperature, ebm.sampler.n_steps) == (
        trained.sampler.step_size, trained.sampler.temperature, trained.sampler.n_steps)
    x = images(5, 8)
    with torch.no_grad():
        assert torch.equal(ebm.energy_net(x), trained.energy_net(x))
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "pureebm-lightning" and card.data.datasets == ["sklearn-digits"]
    assert card.data.license == "mit" and "energy-based-model" in card.data.tags
    gap = json.loads((out / "config.json").read_text())["energy_gap"]
    assert gap["images"] == 1000 and gap["data"] == "digits" and gap["perturbation_255"] == 16
    assert card.data.to_dict()["pureebm"]["energy_gap"] == pytest.approx(gap["energy_perturbed"] - gap["energy_clean"], rel=1e-4)
    assert f"{gap['energy_gap']:.4g}" in card.text and "recommended T | 40" in card.text
    # the exported EBM purifies to the same bytes as the checkpoint it came from (T from its config)
    digits = ((images(6, 8) + 1) * 127.5).round().to(torch.uint8)
    from_export, from_ckpt = Purifier.from_pretrained(out), Purifier.from_checkpoint(rgb_ebm, steps=40)
    assert from_export.steps == 40 and torch.equal(from_export(digits), from_ckpt(digits))


def test_export_never_leaves_a_half_written_folder(tmp_path, rgb_ebm, monkeypatch):
    from pureebm_lightning.pretrained import export as export_module

    out = tmp_path / "my-ebm"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="exists and is not empty; pass --overwrite"):
        main(["export", "--ckpt_path", str(rgb_ebm), "--out", str(out)])

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "check_round_trip", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["export", "--ckpt_path", str(rgb_ebm), "--out", str(out), "--overwrite"])
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["my-ebm"]
    monkeypatch.undo()
    main(["export", "--ckpt_path", str(rgb_ebm), "--out", str(out), "--overwrite"])
    assert "not measured" in (out / "README.md").read_text() and not (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-ebm"]  # the replaced folder is gone too
    (out / ".git").mkdir()  # a clone of the Hub repo: --overwrite would delete its history
    with pytest.raises(SystemExit, match=r"holds a git repository \(.git\), which --overwrite would delete"):
        main(["export", "--ckpt_path", str(rgb_ebm), "--out", str(out), "--overwrite"])


def test_export_refuses_what_is_not_an_ebm_checkpoint(tmp_path, rgb_ebm):
    with pytest.raises(SystemExit, match="no such checkpoint file"):
        main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o")])
    folder = tmp_path / "grey"
    write_digit_folder(folder, count=4)
    with pytest.raises(SystemExit, match=r"its 1x8x8 images do not fit the EBM, which was trained on 3x8x8 images"):
        main(["export", "--ckpt_path", str(rgb_ebm), "--out", str(tmp_path / "o"), "--data", str(folder)])
    assert not (tmp_path / "o").exists()


def test_purified_datamodule_takes_an_exported_folder_and_purifies_as_the_checkpoint_does(tmp_path, rgb_ebm):
    from lightning.pytorch import Trainer

    from pureebm_lightning.data import PurifiedDataModule
    from tests.recording_module import RecordingModule

    exported, data = tmp_path / "exported", tmp_path / "poisoned"
    main(["export", "--ckpt_path", str(rgb_ebm), "--out", str(exported)])
    write_digit_folder(data, count=8, rgb=True)
    caches = {}
    for name, ebm in (("folder", exported), ("checkpoint", rgb_ebm)):
        dm = PurifiedDataModule(str(data), str(ebm), steps=5, batch_size=8, crop_padding=0, hflip=False,
                                cache_dir=str(tmp_path / name))
        Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False).fit(RecordingModule(features=3 * 8 * 8), dm)
        assert dm.purified_now == 8
        (caches[name],) = (tmp_path / name).iterdir()
    manifest = json.loads((caches["folder"] / "manifest.json").read_text())
    assert manifest["ebm_source"] == str(exported) and manifest["layout"] == "pureebm"
    files = sorted(p.relative_to(caches["folder"]) for p in caches["folder"].rglob("*.png"))
    assert len(files) == 8 and all((caches["folder"] / f).read_bytes() == (caches["checkpoint"] / f).read_bytes() for f in files)


# ---- purify from a pretrained source --------------------------------------------------------------------------------
def test_purify_from_a_folder_records_it_and_an_interrupted_run_finishes_only_with_the_same_weights(tmp_path, monkeypatch):
    ebm, other, data = tmp_path / "ebm", tmp_path / "other", tmp_path / "poisoned"
    write_authors_folder(ebm, nf=8)
    write_authors_folder(other, nf=8, seed=1)
    write_digit_folder(data, count=8, rgb=True, size=32)
    out = tmp_path / "purified"
    command = ["purify", "--data", str(data), "--steps", "2", "--batch_size", "4", "--out", str(out), *QUIET_PURIFY]
    calls = kill_during_second_block(monkeypatch)
    with pytest.raises(SystemExit):
        main([*command, "--ckpt_path", str(ebm)])
    calls.undo()
    assert calls == [[0, 1, 2, 3]] and not json.loads((out / "manifest.json").read_text()).get("complete")
    with pytest.raises(SystemExit, match="weights_sha256"):  # same repo layout and settings, other weights
        main([*command, "--ckpt_path", str(other)])
    main([*command, "--ckpt_path", str(ebm)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["ebm_source"] == str(ebm) and manifest["layout"] == "authors"
    assert manifest["weights_file"] == "model.safetensors" and manifest["repo_id"] is None
    assert manifest["weights_sha256"] == load_pretrained(ebm).weights_sha256 and "weights_sha256" in manifest["identity"]
    assert manifest["energy_net"] == {"class_path": "pureebm_lightning.energy_nets.SNGANResNetEnergy",
                                      "init_args": {"in_channels": 3, "num_filters": 8, "patch_size": 1}}


def test_the_same_weights_in_another_network_are_another_ebm(tmp_path, rgb_ebm):
    exported, data = tmp_path / "exported", tmp_path / "poisoned"
    main(["export", "--ckpt_path", str(rgb_ebm), "--out", str(exported)])
    write_digit_folder(data, count=4, rgb=True)
    command = ["purify", "--data", str(data), "--ckpt_path", str(exported), "--steps", "2", "--out", str(tmp_path / "o"), *QUIET_PURIFY]
    main(command)
    config = json.loads((exported / "config.json").read_text())
    config["energy_net"]["init_args"]["negative_slope"] = 0.2  # no shape changes: only the identity can tell
    (exported / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="energy_net"):
        main(command)


def test_purify_refuses_images_of_another_size_than_the_pretrained_ebm_takes(tmp_path):
    write_authors_folder(tmp_path / "ebm", nf=8)
    write_digit_folder(tmp_path / "poisoned", count=4, rgb=True, size=8)
    with pytest.raises(SystemExit, match=r"its 3x8x8 images do not fit the EBM \(.*ebm\), which takes 3x32x32 images"):
        main(["purify", "--data", str(tmp_path / "poisoned"), "--ckpt_path", str(tmp_path / "ebm"), *QUIET_PURIFY])
    assert not (tmp_path / "poisoned_purified").exists()


# ---- the Hub, through huggingface_hub and its cache ------------------------------------------------------------------
def run_pureebm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``pureebm ARGS`` in a fresh process with ``env`` (huggingface_hub reads HF_* when it is imported)."""
    return subprocess.run([sys.executable, "-m", "pureebm_lightning", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)


LOAD = ("import json, sys; from pureebm_lightning.pretrained import load_pretrained; e = load_pretrained(sys.argv[1]); "
        "print(json.dumps({'revision': e.revision, 'repo_id': e.repo_id, 'sha': e.weights_sha256, 'file': str(e.weights_file), "
        "'shape': e.image_shape}))")


def load_in_process(source: str, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD, source], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("kind, revision", [("authors", "@v1"), ("authors_bin", ""), ("exported", f"@{COMMIT}")])
def test_a_hub_repo_downloads_into_the_cache_and_loads_from_it_offline(tmp_path, kind, revision, request):
    folder = tmp_path / "repo"
    if kind == "exported":
        main(["export", "--ckpt_path", str(request.getfixturevalue("rgb_ebm")), "--out", str(folder)])
        weights, side, config = "model.safetensors", 8, True
    else:
        write_authors_folder(folder, nf=8, config=False, weights="bin" if kind == "authors_bin" else "safetensors")
        weights, side, config = ("pytorch_model.bin" if kind == "authors_bin" else "model.safetensors"), 32, False
    hub = FakeHub()
    hub.add_repo("someone/puregen-ebm", folder, COMMIT, tags=("v1",))
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    source = f"hf://someone/puregen-ebm{revision}"
    try:
        first = load_in_process(source, env)
        assert first["revision"] == COMMIT and first["repo_id"] == "someone/puregen-ebm" and first["shape"] == [3, side, side]
        assert first["file"].endswith(f"models--someone--puregen-ebm/snapshots/{COMMIT}/{weights}")
        assert first["sha"] == load_pretrained(folder).weights_sha256
        assert [p.rsplit("/", 1)[1] for p in hub.downloads()] == [weights, *(["config.json"] if config else [])]
        assert hub.asked("config.json") == (2 if config else 1)  # HEAD (+ GET): once, absent or not

        data = tmp_path / "poisoned"
        write_digit_folder(data, count=4, rgb=True, size=side)
        done = run_pureebm(["purify", "--data", str(data), "--ckpt_path", source, "--steps", "1", "--batch_size", "4",
                            *QUIET_PURIFY], env)
        assert done.returncode == 0, done.stderr
        manifest = json.loads((tmp_path / "poisoned_purified/manifest.json").read_text())
        assert (manifest["repo_id"], manifest["revision"], manifest["weights_sha256"]) == ("someone/puregen-ebm", COMMIT, first["sha"])
        assert manifest["ebm_source"] == source and manifest["weights_file"] == weights
        assert len(hub.downloads()) == (2 if config else 1)  # the second use read the cache
    finally:
        hub.close()
    assert load_in_process(source, {**env, "HF_HUB_OFFLINE": "1"}) == first  # the server is gone: the cache answers


@pytest.mark.slow
def test_offline_with_nothing_cached_says_how_to_download_and_writes_nothing(tmp_path):
    data = tmp_path / "poisoned"
    write_digit_folder(data, count=4, rgb=True, size=32)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    done = run_pureebm(["purify", "--data", str(data), "--ckpt_path", "hf://SunayBhat1/puregen-ebm-cinic10-imagenet",
                        *QUIET_PURIFY], env)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pureebm purify: error: hf://SunayBhat1/puregen-ebm-cinic10-imagenet: not in this machine's "
                           "Hugging Face cache") and "HF_HUB_OFFLINE is set" in last
    assert "`hf download SunayBhat1/puregen-ebm-cinic10-imagenet --local-dir puregen-ebm-cinic10-imagenet`" in last
    assert "Traceback" not in done.stderr and not (tmp_path / "poisoned_purified").exists()


@pytest.mark.slow
def test_hub_repos_that_do_not_exist_or_hold_no_ebm_fail_in_one_line(tmp_path):
    empty = tmp_path / "card-only"
    empty.mkdir()
    (empty / "README.md").write_text("# not a model\n")
    hub = FakeHub()
    hub.add_repo("someone/card-only", empty, COMMIT)
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    data = tmp_path / "poisoned"
    write_digit_folder(data, count=2, rgb=True, size=32)
    try:
        for source, message in (("hf://someone/missing", "no such model repo on the Hub"),
                                ("hf://someone/card-only", "holds neither model.safetensors nor pytorch_model.bin"),
                                ("hf://someone/card-only@v9", "the repo has no revision 'v9'")):
            done = run_pureebm(["purify", "--data", str(data), "--ckpt_path", source, *QUIET_PURIFY], env)
            last = done.stderr.strip().splitlines()[-1]
            assert done.returncode != 0 and f"pureebm purify: error: {source}: {message}" in last, done.stderr
    finally:
        hub.close()
