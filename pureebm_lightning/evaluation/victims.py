"""The victims: a classifier trained on each defended set, measured on clean and poisoned test images, kept by key."""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

import torch

from pureebm_lightning.data.poisoned_set import PoisonedSetDataModule
from pureebm_lightning.evaluation.purified_sets import digest
from pureebm_lightning.evaluation.settings import VictimRecipe
from pureebm_lightning.evaluation.steps import last_checkpoint, train_victim
from pureebm_lightning.images import to_signed_unit


def predict(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])


@functools.lru_cache(maxsize=2)  # a scenario's victims and its floor read the same two test sets in turn
def test_sets(folder: Path, spec_folder: Path | None) -> tuple[PoisonedSetDataModule, tuple[torch.Tensor, torch.Tensor],
                                                           tuple[torch.Tensor, torch.Tensor] | None]:
    """The data module of ``folder`` tested against ``spec_folder``'s attack, its clean test images and labels, and
    its poisoned test images and the labels the attack wants (None without an attack), decoded once."""
    dm = PoisonedSetDataModule(str(folder), crop_padding=0, hflip=False,
                               poison_spec=str(spec_folder / "poison.json") if spec_folder else None)
    dm.setup("test")

    def stacked(dataset):
        items = [dataset[i] for i in range(len(dataset))]
        return to_signed_unit(torch.stack([item[0] for item in items])), torch.tensor([item[1] for item in items])

    return dm, stacked(dm.test_set), (stacked(dm.poison_test_set) if dm.poison is not None else None)


def measure(model, folder: Path, spec_folder: Path | None = None, magnifications: tuple[float, ...] = (1.0,)) -> dict:
    """Natural accuracy, target-class accuracy and poison success (per magnification) of ``model`` on ``folder``'s
    clean test split and the poisoned tests of ``spec_folder``'s attack, built by PoisonedSetDataModule as
    `pureebm test` builds them (a clean-trained model tested against an attack gives its floor)."""
    dm, (images, labels), poisoned_tests = test_sets(folder, spec_folder)
    right = predict(model, images) == labels
    result = {"natural": right.float().mean().item()}
    if poisoned_tests is None:
        return result
    poisoned, wanted = poisoned_tests
    if dm.poison.kind == "triggered":
        result["target_class_accuracy"] = right[labels == dm.poison.target_class].float().mean().item()
        for m in magnifications:
            result[f"success_x{m:g}"] = (predict(model, dm.add_trigger(poisoned, m)) == wanted).float().mean().item()
    else:
        result["success_x1"] = (predict(model, poisoned) == wanted).float().mean().item()
        with torch.no_grad():
            result["p_intended"] = torch.softmax(model(poisoned[:1]), 1)[0, wanted[0]].item()
    return result


class Victims:
    """Victims by key (the training set's folder name, which hashes what made it, and the seed): each result is
    appended to victims.jsonl as it is measured and each model kept in its own folder, so a rerun skips them."""

    def __init__(self, out: Path, recipe: VictimRecipe) -> None:
        self.path, self.recipe, self.out = out / "victims.jsonl", recipe, out
        self.done = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                row = json.loads(line)
                self.done[row["key"]] = row

    def recipe_identity(self) -> list[str]:
        """What names a victim besides its set, seed and epochs: nothing for the default digits recipe (so that
        results of earlier releases are found), else the recipe's configs, options and milestones."""
        r = self.recipe
        if (r.configs, r.args, r.milestones) == (VictimRecipe().configs, [], VictimRecipe().milestones):
            return []
        return [f"recipe{digest(r.configs, r.args, r.milestones)}"]

    def model(self, key: str, folder: Path, seed: int):
        """The victim trained on ``folder`` with ``seed``: loaded if a previous run finished it."""
        from pureebm_lightning.classifier_module import ClassifierModule

        workdir = self.out / "victims" / digest(key, seed, self.recipe.epochs, *self.recipe_identity())
        if (workdir / "done").is_file():
            return ClassifierModule.load_from_checkpoint(last_checkpoint(workdir), map_location="cpu").eval()
        shutil.rmtree(workdir, ignore_errors=True)
        model = train_victim(self.recipe, folder, workdir, seed)
        (workdir / "done").write_text(f"{key} seed {seed}\n")
        return model

    def run(self, key: str, folder: Path, seed: int, evaluate_with, **facts) -> dict:
        full = "|".join([key, f"seed{seed}", f"epochs{self.recipe.epochs}", *self.recipe_identity()])
        if full not in self.done:
            start = time.time()
            model = self.model(key, folder, seed)
            row = {"key": full, **facts, "victim_seed": seed, **evaluate_with(model), "seconds": round(time.time() - start, 1)}
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            self.done[full] = row
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "key"), flush=True)
        return self.done[full]
