"""`headsup`: the Lightning command line (fit, validate, test, predict) of SRSystem + SRDataModule.

    headsup fit --config configs/experiments/quickstart.yaml
    headsup fit --config configs/experiments/quickstart.yaml --ckpt_path last       (resume)
    headsup test --config configs/experiments/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt
    headsup predict --config ... --ckpt_path ... --data.predict_input photos/ --writer.output_dir out/

Every component is given by class path and init args in the config; `--print_config`
shows the resolved configuration.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# frozen parts (VAE decoder, LPIPS, teachers) are in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# checkpoints of manual optimisation hold the state after the update, which is what we want
warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")

from jsonargparse import Namespace  # noqa: E402
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402

from headsup.callbacks import PredictWriter, ResultsWriter, VersionedSaveConfig  # noqa: E402
from headsup.data.datamodule import SRDataModule  # noqa: E402
from headsup.data.io import ImageReadError  # noqa: E402
from headsup.models.runtime import INFERENCE_OPTIONS  # noqa: E402
from headsup.system import SRSystem  # noqa: E402


class _Parser(LightningArgumentParser):
    """A bad option or config value is reported as the error and a pointer to --help, without the
    whole usage text (a hundred lines here) in front of it."""

    def print_usage(self, file=None) -> None:
        if file is not sys.stderr:
            super().print_usage(file)


class HeadsupCLI(LightningCLI):
    """LightningCLI with the results and prediction writers always attached."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResultsWriter, "results")
        parser.add_lightning_class_args(PredictWriter, "writer")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:  # noqa: BLE001 - re-raised, with the config key of a missing file added
            cause = _input_error(err)
            keys = _keys_naming(self.config, str(cause)) if isinstance(cause, FileNotFoundError) else []
            if not keys:
                raise
            raise FileNotFoundError(f"{cause} (set by {', '.join(keys)})") from err

    # Inference-time choices of a run, not properties of the trained model.
    RUN_KEYS = ("model.metrics", "model.eval_color_fix", *(f"model.generator.init_args.{k}" for k in INFERENCE_OPTIONS))

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        # what this run sets itself (command line and --config files, without defaults), for _parse_ckpt_path
        try:
            self._given = parser.parse_object(args, defaults=False) if isinstance(args, (dict, Namespace)) else \
                parser.parse_args(sys.argv[1:] if args is None else args, defaults=False)
        except (SystemExit, Exception):  # noqa: BLE001 - parsed once already; without it every run option is kept
            self._given = None

    def _explicit(self, key: str) -> bool:
        """Whether this run's command line or one of its config files sets `key` (a default does not)."""
        if self._given is None:
            return True
        return f"{self.config.get('subcommand')}.{key}" in self._given

    def _parse_ckpt_path(self) -> None:
        # With --ckpt_path, Lightning replaces the model section by the checkpoint's; the run
        # options this run's config or command line set (metrics, colour fix, tiling, upsampling,
        # ...) are kept; those left at their defaults come from the checkpoint.
        sub = self.config.get("subcommand")
        kept = {k: self.config.get(f"{sub}.{k}") for k in self.RUN_KEYS if self._explicit(k)} if sub else {}
        try:
            super()._parse_ckpt_path()  # torch.load with weights_only (torch's default since 2.6)
        except pickle.UnpicklingError as err:
            path = self.config.get(f"{sub}.ckpt_path") if sub else self.config.get("ckpt_path")
            first_line = str(err).splitlines()[0]
            raise UnsafeCheckpointError(
                f"{path} (--ckpt_path) holds more than tensors and plain values (loading it could run code) or "
                f"is not a torch checkpoint, refused: {first_line}") from err
        for key, value in kept.items():  # an explicit null too
            self.config[f"{sub}.{key}"] = value


class UnsafeCheckpointError(ValueError):
    """A checkpoint that would run code while unpickling (refused; torch.load with weights_only)."""


def place_run(cfg: dict, run_dir: str | os.PathLike) -> dict:
    """Point a loaded experiment config at one run folder: trainer root, a TensorBoard logger
    writing into the folder itself, and every callback's `dirpath` (checkpoints) inside it. In place."""
    run = Path(run_dir)
    trainer = cfg.setdefault("trainer", {})
    trainer["default_root_dir"] = str(run)
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                         "init_args": {"save_dir": str(run.parent), "name": run.name, "version": ""}}
    for callback in trainer.get("callbacks") or []:
        if "dirpath" in callback.get("init_args", {}):
            callback["init_args"]["dirpath"] = str(run / "checkpoints")
    return cfg


def build_cli(args: ArgsType = None, run: bool = True) -> HeadsupCLI:
    """Parse `args` (the command line when None) and build model, data and trainer; `run=False`
    stops there (notebooks: `build_cli(["--config", path], run=False).model`)."""
    return HeadsupCLI(
        SRSystem,
        SRDataModule,
        save_config_callback=VersionedSaveConfig,
        parser_class=_Parser,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> int:
    """Entry point of the `headsup` command; returns the exit status."""
    try:
        build_cli(args)
    except SIGTERMException:  # Lightning's exit on SIGTERM (preemption, time limit) would report success
        print("headsup: stopped by SIGTERM before the run finished; --ckpt_path last resumes it "
              "(the checkpoint callback writes last.ckpt on the way out when save_last is set)", file=sys.stderr)
        return 143
    except Exception as err:  # noqa: BLE001 - only a missing/unreadable file is reported, the rest re-raised
        cause = _input_error(err)
        if cause is None:
            raise
        print(f"headsup: error: {cause}", file=sys.stderr)
        return 2
    return 0


def _leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of a parsed config (namespaces, dicts and lists)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else \
        vars(node).items() if isinstance(node, Namespace) else None
    if items is None:
        yield prefix, node
        return
    for key, value in items:
        yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))


def _keys_naming(config, message: str) -> list[str]:
    """The config keys (without the subcommand) whose string value appears in `message` as a whole word."""
    sub = config.get("subcommand")
    keys = []
    for key, value in _leaves(config.get(sub) if sub else config):
        if isinstance(value, (str, os.PathLike)) and str(value) and re.search(
                rf"(?<![\w/.~-]){re.escape(str(value))}(?![\w/.~-])", message):
            keys.append(f"--{key}")
    return keys


def _input_error(err: BaseException) -> BaseException | None:
    """The missing-file, unreadable-image or refused-checkpoint error behind `err` (jsonargparse wraps errors raised
    while building components in its own), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (FileNotFoundError, ImageReadError, UnsafeCheckpointError)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
