"""``labeler train``: a head on stored features, or a fine-tuned backbone on the crops."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import (
    backbone_option,
    batch_size_option,
    device_option,
    field_option,
    labeler_command,
    person_options,
    progress_option,
    seed_option,
    show_progress_lines,
    workers_option,
    workspace_option,
)

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_command("train", aliases={"--run": "--model"})
@workspace_option()
@field_option()
@click.option(
    "--mode",
    type=click.Choice(["auto", "head", "ensemble", "finetune"]),
    default="auto",
    show_default=True,
    help="head: a classifier on the stored features (seconds on a CPU); ensemble: the head "
    "and 3 CNNs fine-tuned on the crops at 128 px, their probabilities averaged (the best "
    "scores; about 14 min for 2,000 labels on 2 CPU cores); auto: the ensemble from 300 "
    "labels (up to 2,500 without a GPU), else the head; finetune: CNNs alone at 224 px "
    "(a GPU helps).",
)
@click.option(
    "--folds",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="K of the person-grouped K-fold (1: one model with a validation split).",
)
@click.option(
    "--head",
    "head_kind",
    type=click.Choice(["logreg", "mlp"]),
    default="logreg",
    show_default=True,
    help="Classifier of --mode head: logistic regression or a small MLP.",
)
@click.option(
    "--features",
    "feature_spec",
    default="auto",
    show_default=True,
    help="Feature spec for --mode head.",
)
@backbone_option("timm backbone of --mode finetune ('timm:<model>'; the default runs offline).")
@click.option(
    "--epochs",
    default=None,
    type=click.IntRange(min=1),
    help="Passes over the labeled crops  [default: 20 for --mode finetune, 6 for ensemble].",
)
@batch_size_option(32, "Crops per training step (--mode finetune).")
@click.option(
    "--image-size",
    default=None,
    type=click.IntRange(32, 1024),
    help="Side of the crops the fine-tuned model sees, px  [default: 224 for --mode finetune, "
    "128 for ensemble].",
)
@click.option(
    "--lr",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Peak learning rate of AdamW of the fine-tune  [default: 0.0003 for --mode finetune, "
    "0.0005 for ensemble].",
)
@device_option()
@workers_option("data-loading processes of --mode finetune (0: in the training process)", 0, 0)
@person_options("folds never split one")
@click.option(
    "--label-errors/--no-label-errors",
    default=True,
    show_default=True,
    help="Also run the Suggest step (head mode): suggestions and suspected label errors for "
    "the Review page, as 'labeler suggest' does.",
)
@seed_option("Seed of the folds and of training (the same seed gives the same model).")
@click.option(
    "--model",
    "run_id",
    default=None,
    metavar="RUN_ID",
    help="Name of the model run to write (default: time-stamped); an existing finetune run "
    "resumes (old name --run). 'labeler predict --model' takes the same name.",
)
@progress_option()
def command(
    ws: Workspace,
    field: str,
    mode: str,
    folds: int,
    head_kind: str,
    feature_spec: str,
    backbone: str,
    epochs: int | None,
    batch_size: int,
    image_size: int | None,
    lr: float | None,
    device: str,
    workers: int,
    persons: str,
    person_pattern: str | None,
    person_csv: str | None,
    label_errors: bool,
    seed: int,
    run_id: str | None,
) -> None:
    """Train a classifier for FIELD on the human labels; report macro-F1, per-class
    precision/recall and a confusion matrix; save it under the workspace's models/."""

    from dataclasses import replace

    from tqdm.contrib.logging import logging_redirect_tqdm

    from labeler.train import TrainConfig, train
    from labeler.train.data import finetune_for

    if ":" in backbone and not backbone.startswith("timm:"):
        raise click.BadParameter(
            f"{backbone!r}: fine-tuning takes a timm backbone, 'timm:<model>' (e.g. "
            "'timm:efficientnet_lite0')",
            param_hint="--backbone",
        )
    config = TrainConfig(
        field=field,
        mode=mode,
        folds=folds,
        head=head_kind,
        feature_spec=feature_spec,
        persons=persons,
        person_pattern=person_pattern,
        person_csv=person_csv,
        seed=seed,
        run_id=run_id,
        finetune=replace(
            finetune_for(mode),
            backbone=backbone.removeprefix("timm:"),
            batch_size=batch_size,
            device=device,
            num_workers=workers,
            **{
                k: v
                for k, v in (("epochs", epochs), ("image_size", image_size), ("lr", lr))
                if v is not None
            },
        ),
    )
    # fine-tuning shows a bar (rate, time left) and its epoch lines (losses) without -v,
    # the lines printed above the bar
    show_progress_lines("labeler.train.finetune")
    with logging_redirect_tqdm():
        res = train(ws, config, progress=None)
    for line in res.report.lines():
        click.echo(line)
    click.echo(f"evaluated on {res.config['evaluated_on']}")
    if cal := res.config.get("calibration"):
        click.echo(f"confidence tempered on out-of-fold predictions: T={cal['temperature']:.2f}, "
                   f"calibration error {cal['oof_ece_before']:.3f} -> {cal['oof_ece_after']:.3f}")  # fmt: skip
    if res.config.get("persons"):
        p = res.config["persons"]
        click.echo(f"persons: {p['n_persons']} by {p['method']} ({p['detail']})")
        if p.get("confidence"):
            from labeler.export.persons import sureness_line

            click.echo("  how sure: " + sureness_line(p["confidence"]))
    click.echo(f"saved {res.run_dir} (confusion matrix: {res.run_dir / 'confusion.png'})")
    if scores := res.config.get("scores"):
        click.echo(
            "out of fold: "
            + ", ".join(f"{k} macro-F1 {v['macro_f1']:.3f}" for k, v in scores.items())
        )
    if label_errors and res.config["mode"] in ("head", "ensemble"):
        from labeler.loop.step import suggest_workspace

        run = suggest_workspace(ws, field=field, feature_spec=feature_spec)
        click.echo(f"{len(run.suspects)} likely label errors written for review")
