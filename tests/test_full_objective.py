"""The full HeadsUp objective through the CLI on tiny models: logged terms, who trains, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from headsup.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "experiments" / "tiny_headsup.yaml"
TERMS = {"mse", "lpips", "vsd", "vsd_aux", "face_mse", "face_lpips", "identity", "face_gan", "face_gan_aux", "gan",
         "gan_aux"}


@pytest.fixture(scope="module")
def portrait_set(samples_dir) -> Path:
    return build_portrait_set_for(samples_dir)


def build_portrait_set_for(samples_dir: Path) -> Path:
    from headsup.testing.recipes import prepare_tiny_portrait_set

    return prepare_tiny_portrait_set(samples_dir)


def tiny_config(tmp_path: Path, samples: Path, backbone: Path, weights: dict, portraits: Path, **trainer) -> Path:
    from headsup.testing.recipes import localize_tiny_headsup

    cfg = localize_tiny_headsup(yaml.safe_load(TINY.read_text()), tmp_path / "run", samples, backbone, weights,
                                portraits)
    cfg["trainer"].update(**trainer)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, after: dict, keep) -> set[str]:
    return {k for k in before if keep(k) and before[k].is_floating_point() and not torch.equal(before[k], after[k])}


def test_full_objective_trains_every_part_with_its_own_loss(tmp_path, samples_dir, tiny_sd_dir, tiny_weights,
                                                           portrait_set):
    config = tiny_config(tmp_path, samples_dir, tiny_sd_dir, tiny_weights, portrait_set, max_steps=3,
                         val_check_interval=1000)
    clip = 1e-4  # far below the fake score's gradient norm: clipping must act on every update
    cli = build_cli(["--config", str(config), "--data.val_sets", "[]",
                     "--model.objectives.vsd.init_args.grad_clip", str(clip)], run=False)
    model = cli.model
    before = _snapshot(model)
    fake = {id(p) for p in model.objectives["vsd"].scores.fake_parameters()}
    fake_norms = []  # gradient norm of the fake score's LoRA when its optimizer steps

    def record(optimizer, args, kwargs):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if params and all(id(p) in fake for p in params):
            fake_norms.append(float(torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm()))

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        cli.trainer.fit(model, datamodule=cli.datamodule)
    finally:
        handle.remove()
    after = _snapshot(model)
    assert len(fake_norms) == 3 and max(fake_norms) <= clip * 1.001  # OSEDiff clips the fake score too
    opt = model.objectives["vsd"].configure_optimizer()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 1e-2

    logged = {k.removeprefix("train/") for k in cli.trainer.logged_metrics if k.startswith("train/")}
    assert logged == TERMS | {"loss", "lr", "generator_updates", "skipped_steps"}
    assert cli.trainer.global_step == 3 and int(model.generator_updates) == 3  # generator updates, not all steps

    changed = _changed(before, after, lambda k: True)
    trainable = model._checkpoint_keys - {"generator_updates"}
    assert changed <= trainable  # nothing frozen moved: teacher, VAE decoder, identity, LPIPS, D backbone
    groups = {
        "generator LoRA / conv_in": lambda k: k.startswith("generator."),
        "fake score LoRA": lambda k: k.startswith("objectives.vsd.") and "fake_score" in k,
        "face discriminator heads": lambda k: k.startswith("objectives.face_gan.discriminator.heads."),
        "image discriminator heads": lambda k: k.startswith("objectives.gan.discriminator.heads."),
    }
    for name, keep in groups.items():
        assert _changed(before, after, keep), f"{name} did not train"
    frozen = [k for k in before if k.startswith(("objectives.identity.", "objectives.lpips.",
                                                  "objectives.face_gan.discriminator.backbone.",
                                                  "objectives.gan.discriminator.backbone.",
                                                  "generator.vae.decoder."))]
    assert frozen and not any(k in trainable for k in frozen)
    teacher = [k for k in before if k.startswith("objectives.vsd.scores.unet.") and "fake_score" not in k]
    assert teacher and not (set(teacher) & changed)

    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    saved = set(ckpt["state_dict"])
    assert saved == model._checkpoint_keys
    assert not any(k in saved for k in frozen + teacher)

    # reloading the checkpoint into a freshly built model reproduces its outputs
    fresh = build_cli(["--config", str(config), "--data.val_sets", "[]"], run=False).model
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=False)
    lq = torch.rand(1, 3, 16, 16)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model.generator(lq), fresh.generator(lq))


def test_fp16_mixed_is_refused_with_helper_optimizers():
    from types import SimpleNamespace

    from headsup.models.generator import OneStepSR
    from headsup.models.teacher import TeacherWithFakeScore
    from headsup.objectives.vsd import VSDLoss
    from headsup.system import SRSystem
    from headsup.testing.tiny import TinySD

    system = SRSystem(OneStepSR(TinySD()), {"vsd": VSDLoss(TeacherWithFakeScore())})
    assert system.objectives["vsd"].scores.built  # built from the generator's backbone
    system._trainer = SimpleNamespace(precision="16-mixed", datamodule=None)
    with pytest.raises(ValueError, match="bf16-mixed"):
        system.setup("fit")
