"""`dmlt-train`: the command line. Flags mirror the config fields; --config reads YAML."""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Sequence

from dmlt_trainer.config import ConfigField, RunConfig, build_config, config_fields, load_yaml
from dmlt_trainer.errors import ConfigError

# Flags whose field name alone does not say what they set; the first spelling is the flag's
# name, the others are kept because existing commands use them.
FLAG_NAMES = {
    "enabled": ("--mlflow", "--enabled"),
    "target": ("--target-column", "--target"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmlt-train",
        description="Data-parallel training of a tabular net, with MLflow tracking and Optuna search.",
    )
    parser.add_argument(
        "--config", help="YAML file of config fields (nested by section or flat) (default: none)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any config field, e.g. --set lr=0.001 (repeatable)",
    )
    for field in config_fields().values():
        _add_flag(parser, field)
    return parser


def _add_flag(parser: argparse.ArgumentParser, field: ConfigField) -> None:
    flags = FLAG_NAMES.get(field.name, ("--" + field.name.replace("_", "-"),))
    default = field.info.get_default(call_default_factory=True)
    section = f"[{field.section}] " if field.section else ""
    text = f"{section}{field.info.description} (default: {default!r})".replace("%", "%%")
    if field.info.annotation is bool:
        action = argparse.BooleanOptionalAction
        parser.add_argument(*flags, dest=field.name, default=None, action=action, help=text)
    else:
        kind = _metavar(field.info.annotation)
        parser.add_argument(*flags, dest=field.name, default=None, metavar=kind, help=text)


def _metavar(annotation: typing.Any) -> str:
    """INT, FLOAT, STR, LIST or NAME (one of a fixed set) for a field's type."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin is list:
        return "LIST"
    if origin is typing.Literal:
        return "NAME"
    return getattr(annotation, "__name__", "VALUE").upper()


def parse_config(argv: Sequence[str] | None = None) -> RunConfig:
    args = build_parser().parse_args(argv)
    file_values = load_yaml(args.config) if args.config else {}
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "set") and v is not None}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects FIELD=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    return build_config(file_values, overrides)


def run(cfg: RunConfig) -> int:
    from dmlt_trainer.dist import launched_by_torchrun

    if launched_by_torchrun():
        if cfg.mode in ("hp_search", "benchmark"):
            raise ConfigError(f"mode {cfg.mode} launches its own processes; run it without torchrun")
        from dmlt_trainer.runner import run_training

        run_training(cfg)
        return 0
    if cfg.mode == "single":
        from dmlt_trainer.runner import run_training

        result = run_training(cfg)
        _print_summary(result)
        return 0
    if cfg.mode == "ddp":
        from dmlt_trainer.dist import launch_local

        launch_local(cfg)
        return 0
    if cfg.mode == "hp_search":
        if cfg.hpo.hp_engine == "ray":
            from dmlt_trainer.hpo_ray import run_ray_search as run_search
        else:
            from dmlt_trainer.hpo import run_search

        run_search(cfg)
        return 0
    from dmlt_trainer.benchmark import run_benchmark

    run_benchmark(cfg)
    return 0


def _print_summary(result) -> None:
    if sys.stdout.isatty():
        print(
            f"{result.status}: {result.epochs_run} epochs, best val AUC {result.best_val_auc:.4f} "
            f"(epoch {result.best_epoch + 1}), test AUC {result.test_metrics['auc']:.4f}, "
            f"MLflow run {result.mlflow_run_id}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(argv)
        return run(cfg)
    except ConfigError as exc:
        print(f"dmlt-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dmlt-train: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # torchrun's ChildFailedError and friends: one line, details above
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        if isinstance(exc, ChildFailedError):
            print(f"dmlt-train: error: a rank failed: {exc.get_first_failure()[1].message}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
