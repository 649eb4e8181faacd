"""The model card (``README.md``) of an exported EBM: Hub metadata in YAML, then what the EBM is and how to use it."""

from __future__ import annotations

from typing import Any

TAGS = ["energy-based-model", "pureebm", "data-poisoning-defense", "langevin-dynamics", "pytorch-lightning"]


def model_card(config: dict[str, Any], datasets: list[str], license: str | None, name: str):
    """A :class:`huggingface_hub.ModelCard` for the exported folder ``name`` described by its ``config.json``."""
    from huggingface_hub import ModelCard, ModelCardData

    gap, training, sampler = config.get("energy_gap"), config["training"], config["sampler"]
    data = ModelCardData(library_name="pureebm-lightning", tags=TAGS, datasets=datasets or None, license=license,
                         pureebm={"recommended_steps": config["recommended_steps"], "image_shape": config["image_shape"],
                                  "step_size": sampler["step_size"], "temperature": sampler["temperature"],
                                  "training_steps": training["global_step"],
                                  "energy_gap": gap["energy_gap"] if gap else None})
    net = config["energy_net"]
    args = ", ".join(f"{k}={v}" for k, v in net["init_args"].items())
    c, h, w = config["image_shape"]
    if gap:
        measured = (f"| clean vs perturbed energy gap | {gap['energy_gap']:.4g} (clean {gap['energy_clean']:.4g}, perturbed "
                    f"{gap['energy_perturbed']:.4g}; perturbed higher for {100 * gap['perturbed_higher']:.1f} % of "
                    f"{gap['images']} images of {gap['data']}, random sign perturbation of {gap['perturbation_255']:g}/255) |")
    else:
        measured = "| clean vs perturbed energy gap | not measured (exported without --data) |"
    body = f"""
# {name}: an energy-based model for PureEBM purification

An energy-based model (EBM) trained by maximum likelihood with persistent Langevin chains by
[pureebm-lightning](https://pypi.org/project/pureebm-lightning/), for the PureEBM defense against train-time data
poisoning (arXiv 2405.19376): every image of a possibly poisoned training set is replaced by T Langevin steps of this
EBM started at it, and the classifier is trained on the result. How well that removes a given poison depends on the
EBM, its data and T: measure it on your attacks before relying on it.

## Use

```bash
pip install pureebm-lightning
pureebm purify --data poisoned/ --ckpt_path hf://<owner>/{name}          # or the downloaded folder
```

```python
from pureebm_lightning import Purifier
purifier = Purifier.from_pretrained("hf://<owner>/{name}")            # T = {config['recommended_steps']} by default
purified = purifier(images)  # uint8 (B, {c}, {h}, {w}), or floats in [-1, 1]
```

Fine-tune it: `pureebm fit --config <your EBM config> --model.init_args.init_weights hf://<owner>/{name}` (the config's
energy net must be the one below).

## The model

| | |
|---|---|
| energy net | `{net['class_path']}({args})` |
| images | {c} x {h} x {w}, pixels scaled to [-1, 1] |
| Langevin sampler | eps = {sampler['step_size']}, tau = {sampler['temperature']} (training: K = {sampler['n_steps']} steps) |
| training | {training['global_step']} optimiser steps ({training['epoch']} epochs); data: {', '.join(datasets) if datasets else 'not stated'} |
| recommended T | {config['recommended_steps']} Langevin steps per image |
{measured}

Files: `model.safetensors` (the energy net's weights), `config.json` (the class, its arguments, the sampler settings
and the image shape), this card.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
