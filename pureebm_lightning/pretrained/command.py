"""``pureebm export --ckpt_path runs/.../last.ckpt --out my-ebm/``: a trained EBM as a Hub-ready folder."""

from __future__ import annotations

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser


def build_parser() -> ArgumentParser:
    """The options of ``pureebm export`` (no torch imported: ``--help`` answers at once)."""
    parser = ArgumentParser(
        prog="pureebm export",
        description="Write a trained EBM as a folder ready for the Hugging Face Hub: model.safetensors (the energy net's "
        "weights), config.json (its class and arguments, the sampler settings, the image shape, the recommended T) and "
        "README.md (a model card with Hub metadata and the measured clean vs perturbed energy gap). `pureebm purify "
        "--ckpt_path FOLDER` and Purifier.from_pretrained read it back; upload it with `hf upload OWNER/NAME FOLDER` "
        "(or `huggingface-cli upload`).",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--ckpt_path", type=str, required=True, help="EBM checkpoint written by `pureebm fit`")
    parser.add_argument("--out", type=str, required=True, help="the folder to write (refused if it exists and is not empty)")
    parser.add_argument("--steps", type=int, default=150, help="the T the card and config.json recommend for purification")
    parser.add_argument("--data", type=str | None, default=None,
                        help="clean images to measure the energy gap on, and to calibrate `pureebm purify --stop energy` "
                        "on (150-step chains, on CPU): a folder `pureebm purify` reads, or `digits` (the bundled set); "
                        "without it the card says the gap was not measured")
    parser.add_argument("--images", type=int, default=1000, help="how many images of --data (evenly spread) to measure on")
    parser.add_argument("--datasets", type=list[str], default=[], help="Hub dataset ids the EBM was trained on (card metadata)")
    parser.add_argument("--license", type=str | None, default=None, help="the weights' license (card metadata), e.g. mit")
    parser.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace a non-empty --out")
    parser.add_argument("--threads", type=int | None, default=None, help="CPU threads (default: one per idle core)")
    return parser


def export(argv: list[str]) -> None:
    """Run ``pureebm export`` with ``argv`` (the arguments after ``export``)."""
    cfg = build_parser().parse_args(argv)

    from pureebm_lightning.pretrained.export import export_ebm
    from pureebm_lightning.runtime import configure_threads

    configure_threads(cfg.threads)
    out = export_ebm(cfg.ckpt_path, cfg.out, steps=cfg.steps, data=cfg.data, images=cfg.images, datasets=cfg.datasets,
                     license=cfg.license, overwrite=cfg.overwrite)
    print(f"Exported {cfg.ckpt_path} to {out}/ (model.safetensors, config.json, README.md); upload it with "
          f"`hf upload OWNER/NAME {out}`")
