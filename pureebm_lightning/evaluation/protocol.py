"""The paper's evaluation protocol, end to end: split, poisons, EBMs, defenses, victims, results.md and plots.

Run by `pureebm evaluate --config configs/evaluate/digits.yaml` (docs/method.md has the method):
1. Data: the clean images (``data``: the bundled digits, or a stated subset and size of a dataset root, written
   once into ``out/dataset``). ``data.holdout`` of the training images are held out (`pureebm poison --holdout`,
   the same draw for every attack); the rest is the victim's training split.
2. EBMs (``ebm``): "clean" trains on the held-out images, disjoint from the victim's; "poisoned" trains on one
   attack's poisoned victim split itself (``ebm.poisoned_attack``, first target class).
3. Attacks (`pureebm poison`): BadNets, Blended and Narcissus once per target class; Gradient Matching once per
   target (distinct test images, intended class drawn), each with its own poisons and victim.
4. Defenses of the training set (``defenses``): none; JPEG; PureEBM at every T of the sweep. PureEBM runs one chain
   per distinct image (an image shared by several sets is purified once) and keeps a snapshot at each T: the same
   Psi_T as `pureebm purify --steps T`. The poisoned EBM purifies its own split at every T (its gap to the clean EBM).
5. Victims (``victim``): the classifier recipe trained on each defended set; natural accuracy, target-class
   accuracy, poison success, and its floor (the attack on a model trained on the clean split).
6. Plug-ins (``plugins``): registered attacks and defenses measured beside the table, in their own section.
7. Writes results.md (tables in the paper's shape, mean and spread over target classes, each target checked),
   results.json, results.csv, victims.jsonl, timings.json, sweep.png, chain_curves.png and pairs.png into ``out``.

An interrupted run resumes: poisoned folders, EBM checkpoints, purified images and every victim's result are
kept under ``out``, named by what made them, and reused by the same command (``--fresh`` starts over).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pureebm_lightning.checkpoints import file_sha256
from pureebm_lightning.evaluation import plugins as plugin_report
from pureebm_lightning.evaluation.defenses import Defense, JPEGDefense, NoDefense, PureEBMDefense
from pureebm_lightning.evaluation.purified_sets import (
    DistinctImages,
    digest,
    jpeg_distinct,
    load_set,
    purify_distinct,
    sweep_purifier,
    write_defended,
)
from pureebm_lightning.evaluation.report import write_report
from pureebm_lightning.evaluation.settings import Evaluation
from pureebm_lightning.evaluation.steps import poison, train_ebm
from pureebm_lightning.evaluation.stopwatch import Stopwatch
from pureebm_lightning.evaluation.victims import Victims, measure
from pureebm_lightning.images import chw_to_pil
from pureebm_lightning.poisoning.clean_data import load_clean_data
from pureebm_lightning.sources import open_source

TRIGGERED = ("badnets", "blended", "narcissus")


def prepare_out(out: Path, fresh: bool) -> None:
    """``out`` created; with ``fresh``, emptied first (only a folder this command wrote)."""
    if fresh and out.exists():
        if any(out.iterdir()) and not ((out / "timings.json").is_file() or (out / "data").is_dir() or (out / "dataset").is_dir()):
            raise SystemExit(f"--fresh: {out} does not look like a folder `pureebm evaluate` wrote (no timings.json or data/); "
                             "delete it yourself or pick another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run(cfg: Evaluation, argv: list[str] | None = None) -> dict:
    """Every step of the protocol into ``cfg.out`` (resuming what an earlier run finished); the summary."""
    cfg = cfg.resolved()
    A, D = cfg.attacks, cfg.defenses
    out = Path(cfg.out).expanduser().resolve()
    prepare_out(out, cfg.fresh)
    clock = Stopwatch(out)
    data = cfg.data.prepare(out)
    data_flags = cfg.data.poison_flags(data)
    attacker = ["--hflip"] if A.hflip else []
    attacker += ["--surrogate_seed", "0"] if A.shared_surrogate else []  # the attackers' options beside their budgets

    # 1. split and poisons
    print("Poisons: `pureebm poison` per attack and scenario (reused when --out already holds them)", flush=True)
    clean_folder, clean_spec = poison(out / "data", "clean", "--attack", "none", *data_flags)
    if cfg.ebm.data:  # the clean EBM's own images (the paper: the ImageNet part of CINIC-10)
        holdout, ebm_name, train_dir = Path(cfg.ebm.data).expanduser().resolve(), "clean_ebm_data", ""
        ebm_count = len(open_source(holdout))
    else:  # the held-out images, as an ImageFolder tree for `pureebm fit`
        holdout, ebm_name, train_dir = out / "data" / "ebm_holdout", "clean_holdout", "train"
        if not clean_spec["holdout_ids"]:
            raise SystemExit("the clean EBM has no images: set data.holdout above 0 or give ebm.data")
        if not (holdout / "done").is_file():
            pool = load_clean_data(data, clean_spec["holdout"], clean_spec["split_seed"], 16).pool
            for image, label, index in zip(pool.images, pool.labels, pool.ids):
                (holdout / "train" / str(int(label))).mkdir(parents=True, exist_ok=True)
                chw_to_pil(image).save(holdout / "train" / str(int(label)) / f"{int(index)}.png")
            (holdout / "done").write_text("")
        ebm_count = len(clean_spec["holdout_ids"])
    holdout_count = len(clean_spec["holdout_ids"])
    jobs = []  # (attack, k, name, flags)
    flags = {"badnets": ["--budget", str(A.badnets_budget)], "blended": ["--budget", str(A.blended_budget)],
             "narcissus": ["--budget", str(A.narcissus_budget), "--epsilon", str(A.narcissus_epsilon),
                           "--steps", str(A.narcissus_steps), "--lr", str(A.narcissus_lr), "--surrogate_epochs", str(A.surrogate_epochs),
                           *attacker]}
    for attack in TRIGGERED:
        for k, target in enumerate(A.target_classes):
            jobs.append((attack, k, f"{attack}_c{target}", ["--attack", attack, "--target_class", str(target), "--seed", str(k), *flags[attack], *data_flags]))
    test_source = open_source(clean_folder / "test")
    classes = len(test_source.classes)
    test_ids = [int(Path(key).stem) for key in test_source.keys]
    if A.gm_targets > len(test_ids):
        raise SystemExit(f"--gm_targets {A.gm_targets}: the test split has only {len(test_ids)} images")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(test_ids))
    for j in range(A.gm_targets):  # distinct target images, an intended class drawn for each
        i = int(order[j])
        intended = (test_source.labels[i] + 1 + int(rng.integers(classes - 1))) % classes
        jobs.append(("gradient_matching", j, f"gradient_matching_t{j}", [
            "--attack", "gradient_matching", "--budget", str(A.gm_budget), "--epsilon", str(A.gm_epsilon), "--steps",
            str(A.gm_steps), "--restarts", str(A.gm_restarts), "--seed", str(j), "--target_id", str(test_ids[i]),
            "--intended_class", str(intended), "--surrogate_epochs", str(A.surrogate_epochs), *attacker, *data_flags]))
    scenarios = []  # (attack, k, folder, spec)
    for attack, k, name, job_flags in tqdm(jobs, desc="poisons", unit="set", dynamic_ncols=True):
        folder, spec = poison(out / "data", name, *job_flags)
        scenarios.append((attack, k, folder, spec))
    clock.lap("poisons")

    # 2. EBMs
    first_poisoned = next(s for s in scenarios if s[0] == cfg.ebm.poisoned_attack)
    clean_ckpt = train_ebm(cfg.ebm, ebm_name, holdout, out, ebm_count, cfg.data.grayscale, train_dir,
                           cfg.data.image_size if cfg.ebm.data else None)
    poisoned_ckpt = train_ebm(cfg.ebm, f"poisoned_{first_poisoned[2].name}", first_poisoned[2], out,
                              len(open_source(first_poisoned[2]).keys), cfg.data.grayscale)
    clock.lap("ebms")

    # 3. defenses: every distinct training image purified once
    clean_images, clean_labels, clean_ids = load_set(clean_folder)
    original_of = dict(zip(clean_ids, clean_images))
    sets = {"clean": (clean_folder, clean_images, clean_labels, clean_ids)}
    for _attack, _k, folder, _ in scenarios:
        sets[folder.name] = (folder, *load_set(folder))
    store, rows_of = DistinctImages(), {}
    for name, (_folder, images, _labels, ids) in sets.items():  # GM sets need the main T only: their poisons go last
        if not name.startswith("gradient_matching"):
            rows_of[name] = store.add(images, torch.stack([original_of[i] for i in ids]))
    sweep_store = len(store)
    for name, (_folder, images, _labels, ids) in sets.items():
        if name.startswith("gradient_matching"):
            rows_of[name] = store.add(images, torch.stack([original_of[i] for i in ids]))
    all_images, all_originals = torch.stack(store.images), torch.stack(store.originals)
    clean_sha, poisoned_sha = file_sha256(clean_ckpt), file_sha256(poisoned_ckpt)
    layout = ["channels_last"] if D.channels_last else []  # in the keys only when on: earlier keys stay valid
    key = digest(clean_sha, D.sweep, D.T, D.curve_every, D.batch_size, D.jpeg_quality, sweep_store, all_images, *layout)
    cache = out / "purified" / f"clean_ebm_{key}.pt"
    if cache.is_file():
        purified = torch.load(cache, weights_only=True)
    else:
        purifier = sweep_purifier(clean_ckpt, max(D.sweep), D.channels_last)
        curve = list(range(0, max(D.sweep) + 1, D.curve_every))
        purified = purify_distinct(purifier, all_images[:sweep_store], all_originals[:sweep_store], D.sweep, curve,
                                   D.batch_size, "sweep sets")
        rest = purify_distinct(purifier, all_images[sweep_store:], all_originals[sweep_store:], [D.T], [0, D.T],
                               D.batch_size, "Gradient Matching poisons", first_index=sweep_store) if len(store) > sweep_store else None
        purified["jpeg"] = jpeg_distinct(all_images, D.jpeg_quality)
        purified["gm_T"] = rest["snapshots"][D.T] if rest else torch.empty(0, *all_images.shape[1:], dtype=torch.uint8)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(purified, cache)
    name0 = first_poisoned[2].name
    poisoned_sweep = D.sweep if D.poisoned_ebm_sweep else [D.T]
    poisoned_key = digest(poisoned_sha, name0, poisoned_sweep, D.batch_size, sets[name0][1], *layout)
    poisoned_cache = out / "purified" / f"poisoned_ebm_{poisoned_key}.pt"
    if poisoned_cache.is_file():
        by_poisoned_ebm = torch.load(poisoned_cache, weights_only=True)
    else:
        images0 = sets[name0][1]
        by_poisoned_ebm = purify_distinct(sweep_purifier(poisoned_ckpt, max(poisoned_sweep), D.channels_last), images0,
                                          torch.stack([original_of[i] for i in sets[name0][3]]), poisoned_sweep, [0],
                                          D.batch_size, "its split with the poisoned EBM")["snapshots"]
        torch.save(by_poisoned_ebm, poisoned_cache)
    clock.lap("purification")

    def defended(name: str, defense: Defense) -> Path:
        """The training set ``name`` after ``defense``, written once into defended/<set>/<label>-<what made it>."""
        folder, images, labels, ids = sets[name]
        rows = torch.tensor(rows_of[name])
        if isinstance(defense, NoDefense):
            return folder
        if isinstance(defense, JPEGDefense):
            new, made = purified["jpeg"][rows], {"defense": "jpeg", "jpeg_quality": defense.quality, "key": key}
        elif defense.ebm == "poisoned":
            new, made = by_poisoned_ebm[defense.steps], {"defense": "pureebm", "checkpoint": str(poisoned_ckpt),
                                                         "checkpoint_sha256": poisoned_sha, "steps": defense.steps,
                                                         "key": poisoned_key}
        else:
            t = defense.steps
            if name.startswith("gradient_matching"):  # its clean images were purified with the sweep sets
                new = torch.stack([purified["snapshots"][t][r] if r < sweep_store else purified["gm_T"][r - sweep_store] for r in rows])
            else:
                new = purified["snapshots"][t][rows]
            made = {"defense": "pureebm", "checkpoint": str(clean_ckpt), "checkpoint_sha256": clean_sha, "steps": t, "key": key}
        return write_defended(folder, new, labels, out / "defended" / name / f"{defense.label}-{made['key']}", made)

    def victim(set_name: str, defense: Defense, seed: int, evaluate_with, **facts) -> dict:
        folder = defended(set_name, defense)
        return victims.run(f"{set_name}|{defense.label}|{folder.name}", folder, seed, evaluate_with, **facts,
                           defense=defense.label, T=defense.steps)

    # 4. victims
    victims = Victims(out, cfg.victim)
    none, jpeg, main_t = NoDefense(), JPEGDefense(D.jpeg_quality), PureEBMDefense(D.T)
    sweep_k = range(len(A.target_classes) if D.sweep_scenarios is None else D.sweep_scenarios)
    results, clean_models = [], {}
    for k in range(len(A.target_classes)):  # the floor models: one per victim seed, trained on the clean split
        results.append(victim("clean", none, 100 + k, lambda m: measure(m, clean_folder), attack="clean", scenario=k))
        clean_models[k] = victims.model(f"clean|none|{clean_folder.name}", clean_folder, 100 + k)
    gm_seed = 100  # every Gradient Matching victim trains with the first seed: targets vary, the recipe does not

    def attack_victims(attack: str, k: int, folder: Path, spec: dict, defenses: list[Defense]) -> None:
        seed = gm_seed if attack == "gradient_matching" else 100 + k
        mags = (1.0, 3.0) if attack == "narcissus" else (1.0,)
        floor = measure(clean_models[0 if attack == "gradient_matching" else k], clean_folder, folder, mags)
        target = spec["targets"][0]["id"] if attack == "gradient_matching" else spec["target_class"]
        for defense in defenses:
            row = victim(folder.name, defense, seed, lambda m: measure(m, folder, folder, mags), attack=attack, scenario=k,
                         target=target)
            results.append({**row, **{f"floor_{name}": v for name, v in floor.items()}})

    for attack, k, folder, spec in scenarios:
        if attack == "gradient_matching":
            defenses = [none] + ([jpeg, main_t] if A.gm_defenses == "always" else [])
        else:
            defenses = [none, jpeg] + [PureEBMDefense(t) for t in D.sweep if t > 0 and (t == D.T or k in sweep_k)]
            if folder.name == name0:  # the EBM trained on this very split, at every T of the sweep
                defenses += [PureEBMDefense(D.T, "poisoned", main=True)] + [
                    PureEBMDefense(t, "poisoned") for t in poisoned_sweep if t > 0 and t != D.T]
        attack_victims(attack, k, folder, spec, defenses)
    if A.gm_defenses == "auto":  # defended Gradient Matching victims only when the attack works undefended
        gm = [r for r in results if r["attack"] == "gradient_matching"]
        if any(r["success_x1"] > r["floor_success_x1"] for r in gm):
            for attack, k, folder, spec in [s for s in scenarios if s[0] == "gradient_matching"]:
                attack_victims(attack, k, folder, spec, [jpeg, main_t])
    clock.lap("victims")

    # 5. plug-ins, beside the table: its sets, purifications and victims are untouched
    plugin_rows, works = plugin_stage(cfg, data_flags, out, clean_folder, clean_models, clean_ckpt, clean_sha, original_of, victims,
                                      results, scenarios, {"clean_ebm": clean_ckpt, "poisoned_ebm": poisoned_ckpt})
    clock.lap("plugins")

    # 6. report
    facts = {"holdout_images": holdout_count, "ebm_images": ebm_count, "ebm_data": cfg.ebm.data, "victim_images": len(clean_labels), "test_images": len(test_ids),
             "distinct_images": len(store), "argv": list(argv or []), "data": cfg.data.describe(), "timings": {"this_invocation_s": clock.now, "total_s": clock.total},
             "ebm_checkpoints": {"clean": str(clean_ckpt), "poisoned": str(poisoned_ckpt)}}
    summary = write_report(out, cfg, results, purified, store, rows_of, sweep_store, name0, facts)
    plugin_report.write(out, plugin_rows, cfg, works)
    clock.lap("report")
    summary["facts"]["timings"] = {"this_invocation_s": clock.now, "total_s": clock.total}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"Done in {sum(clock.now.values()) / 60:.1f} min (all invocations into {out}: {sum(clock.total.values()) / 60:.1f} min): "
          f"{out / 'results.md'}", flush=True)
    return summary


def plugin_stage(cfg: Evaluation, data_flags: list[str], out: Path, clean_folder: Path, clean_models: dict, clean_ckpt: Path, clean_sha: str, original_of: dict,
                 victims: "Victims", results: list[dict], scenarios: list, ebms: dict[str, Path] | None = None
                 ) -> tuple[list[dict], dict[str, bool]]:
    """Plug-in attacks (per target class, victims for none, JPEG and every T) and plug-in defenses (against every
    triggered attack that works undefended); rows with their floors, and which attacks work. ``ebms`` fills the
    ``{clean_ebm}`` and ``{poisoned_ebm}`` of ``plugins.attack_args``."""
    A, D, P = cfg.attacks, cfg.defenses, cfg.plugins
    rows, plugin_scenarios = [], []
    for attack in P.attacks:
        for k, target in enumerate(A.target_classes):
            folder, spec = poison(out / "data", f"{attack}_c{target}", "--attack", attack, "--target_class", str(target),
                                  "--seed", str(k), *plugin_report.attack_flags(cfg, attack, ebms), *data_flags)
            plugin_scenarios.append((attack, k, folder, spec))
            images, labels, ids = load_set(folder)
            key = digest(clean_sha, P.sweep, D.batch_size, D.jpeg_quality, images, *(["channels_last"] if D.channels_last else []))
            cache = out / "purified" / f"plugin_{folder.name}_{key}.pt"
            if cache.is_file():
                snaps = torch.load(cache, weights_only=True)
            else:
                snaps = purify_distinct(sweep_purifier(clean_ckpt, max(P.sweep), D.channels_last), images,
                                        torch.stack([original_of[i] for i in ids]), P.sweep, [0], D.batch_size,
                                        folder.name)["snapshots"]
                snaps["jpeg"] = jpeg_distinct(images, D.jpeg_quality)
                torch.save(snaps, cache)
            floor = measure(clean_models[k], clean_folder, folder)
            for defense in [NoDefense(), JPEGDefense(D.jpeg_quality), *[PureEBMDefense(t) for t in P.sweep if t > 0]]:
                if isinstance(defense, NoDefense):
                    defended = folder
                else:
                    new = snaps["jpeg"] if isinstance(defense, JPEGDefense) else snaps[defense.steps]
                    made = {"defense": "jpeg", "jpeg_quality": D.jpeg_quality} if isinstance(defense, JPEGDefense) else \
                        {"defense": "pureebm", "checkpoint_sha256": clean_sha, "steps": defense.steps}
                    defended = write_defended(folder, new, labels, out / "defended" / folder.name / f"{defense.label}-{key}", made)
                row = victims.run(f"{folder.name}|{defense.label}|{defended.name}", defended, 100 + k,
                                  lambda m, folder=folder: measure(m, folder, folder), attack=attack, scenario=k,
                                  target=target, defense=defense.label, T=defense.steps)
                rows.append({**row, "stage": "plugin_attack", **{f"floor_{n}": v for n, v in floor.items()}})

    def works_undefended(rows_of_attack: list[dict]) -> bool:
        return mean_of([r["success_x1"] for r in rows_of_attack if r["defense"] == "none"]) >= 0.8

    # which attacks work, the table's and the plug-ins' apart (a plug-in may reuse a table attack's name at other settings)
    works = {a: works_undefended([r for r in rows if r["attack"] == a]) for a in {s[0] for s in plugin_scenarios}}
    triggered = [(s, works_undefended([r for r in results if r["attack"] == s[0]])) for s in scenarios if s[0] != "gradient_matching"]
    triggered += [(s, works[s[0]]) for s in plugin_scenarios]
    everything = results + rows
    for name in P.defenses:
        for (attack, k, folder, _), working in triggered:
            if not working:
                continue
            mags = (1.0, 3.0) if attack == "narcissus" else (1.0,)
            floor = measure(clean_models[k], clean_folder, folder, mags)
            defended, settings = plugin_report.defended_by_plugin(name, folder, out, D.batch_size)
            row = victims.run(f"{folder.name}|{name}|{defended.name}", defended, 100 + k,
                              lambda m, folder=folder, mags=mags: measure(m, folder, folder, mags), attack=attack,
                              scenario=k, defense=name, T=0, defense_settings=settings)
            rows.append({**row, "stage": "plugin_defense", **{f"floor_{n}": v for n, v in floor.items()}})
            for r in everything:  # the references of its table: the same attack undefended and at the main T
                if r["attack"] == attack and r.get("scenario") == k and r["defense"] in ("none", f"T{D.T}") and r not in rows:
                    rows.append({**r, "stage": r.get("stage", "reference")})
    return rows, works


def mean_of(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0

