"""Saves the resolved config of every run without blocking reruns in the same folder.

Lightning's SaveConfigCallback refuses to start when `config.yaml` exists. Here each
subcommand has its own file (`config.yaml` for fit, `config_test.yaml`, ...); an
identical file is left as it is, a different one is kept and the new config goes to
the next free numbered name (`config-1.yaml`), so nothing written before is lost.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import SaveConfigCallback


class VersionedSaveConfig(SaveConfigCallback):
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = Path(trainer.log_dir)
        stage = str(getattr(stage, "value", stage))
        stem = "config" if stage == "fit" else f"config_{stage}"
        text = self.parser.dump(self.config, skip_none=False)
        candidate, n = log_dir / f"{stem}.yaml", 0
        while candidate.exists() and candidate.read_text() != text:
            n += 1
            candidate = log_dir / f"{stem}-{n}.yaml"
        self.config_filename = candidate.name
        self.overwrite = True
        super().setup(trainer, pl_module, stage)
