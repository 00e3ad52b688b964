"""Peers from their released files (spandrel) with their official pre/post-processing, as methods and
as roles of the blending baseline, and the comparison sweep (benchmarks/compare.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import yaml
from PIL import Image
from skimage.data import astronaut
from torch import nn

from headsup.inference.blending import Bicubic, BlendingBaseline
from headsup.inference.peers import PeerModel, mirror_pad
from headsup.metrics.seam import seam_scores
from tests.conftest import ROOT
from tests.peer_files import RELEASES, build, save_release

# the astronaut's face, MTCNN's landmarks in the 512 px photo
LANDMARKS = torch.tensor([[205.01, 101.73], [246.76, 103.71], [224.67, 128.96], [201.72, 139.25], [245.27, 141.86]])


@pytest.fixture(scope="module")
def peer_weights(tmp_path_factory):
    """weights/peers/ with every peer's release file (random weights, the release's layout)."""
    root = tmp_path_factory.mktemp("peers")
    folder = root / "weights" / "peers"
    folder.mkdir(parents=True)
    return root, {kind: save_release(kind, folder) for kind in RELEASES}


def photo() -> torch.Tensor:
    return (torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255)[None]


@pytest.mark.parametrize("kind", ["realesrgan", "realesr_general", "swinir"])
def test_released_sr_model_equals_its_own_architecture(peer_weights, kind):
    """spandrel detects the architecture and loads every tensor: the output equals the release's own
    network (basicsr's, the code the file was saved from) run as its official test runs it (SwinIR:
    mirrored to a multiple of its window of 8, cropped back)."""
    _, files = peer_weights
    peer = PeerModel(str(files[kind]))
    assert peer.scale == 4 and not peer.signed
    lq = photo()[..., 90:126, 200:238]  # 36 x 38: not a multiple of SwinIR's window
    name, key = RELEASES[kind]
    own = build(kind).eval()
    own.load_state_dict(torch.load(files[kind], weights_only=True)[key])
    with torch.no_grad():
        padded, h, w = (mirror_pad(lq, 8) if kind == "swinir" else (lq, *lq.shape[-2:]))
        expected = own(padded)[..., : 4 * h, : 4 * w].clamp(0, 1)
    out = peer(lq)
    assert out.shape == (1, 3, 144, 152) and (out - expected).abs().max() < 1e-5


def test_swinir_padding_mirrors_like_its_official_test():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(1, 2, 3, 5)
    padded, h, w = mirror_pad(x, 4)
    assert (h, w) == (3, 5) and padded.shape[-2:] == (4, 8)
    assert torch.equal(padded[..., 3, :5], x[..., 2, :])  # row 3 repeats the last row (a flip, not a reflection)
    assert torch.equal(padded[..., :3, 5:8], x[..., :, [4, 3, 2]])


class Passthrough(nn.Module):
    """Stands in for a face network: returns its input, keeps it and the keyword arguments."""

    def forward(self, x, **kwargs):
        self.seen, self.kwargs = x.clone(), kwargs
        return x, None


@pytest.mark.parametrize("kind", ["gfpgan", "codeformer"])
def test_face_models_see_minus_one_to_one_and_give_back_zero_to_one(peer_weights, kind):
    """GFPGAN and CodeFormer take [-1, 1] in their official inference: an identity network inside
    PeerModel sees the photo in [-1, 1] and PeerModel gives the photo back unchanged; CodeFormer
    gets the fidelity weight."""
    _, files = peer_weights
    peer = PeerModel(str(files[kind]), fidelity=0.7)
    assert peer.signed and peer.scale == 1
    peer.net = Passthrough()
    face = photo()
    out = peer(face)
    assert torch.allclose(out, face, atol=1e-6)
    assert peer.net.seen.min() < -0.99 and torch.allclose(peer.net.seen, face * 2 - 1)
    assert peer.net.kwargs == ({"weight": 0.7} if kind == "codeformer" else {"return_rgb": False})
    with pytest.raises(ValueError, match="512x512 FFHQ-aligned faces"):
        peer(face[..., :256, :256])


def test_peer_errors_name_the_file_and_option(tmp_path, peer_weights):
    _, files = peer_weights
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        PeerModel(str(tmp_path / "nothere.pth"))
    torch.save({"params": {"some.weight": torch.zeros(3)}}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="odd.pth: spandrel does not recognise"):
        PeerModel(str(tmp_path / "odd.pth"))
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        PeerModel(str(tmp_path / "corrupt.pth"))
    with pytest.raises(ValueError, match="does not support precision fp16"):
        PeerModel(str(files["gfpgan"]), precision="fp16")  # GFPGAN reports no fp16 support
    with pytest.raises(ValueError, match="fidelity"):
        PeerModel(str(files["codeformer"]), fidelity=2)


def test_tiled_peer_keeps_the_scale_and_stays_close(peer_weights):
    _, files = peer_weights
    whole, tiled = PeerModel(str(files["realesr_general"])), PeerModel(str(files["realesr_general"]), tile=48)
    lq = photo()[..., 60:140, 170:270]
    a, b = whole(lq), tiled(lq)
    assert b.shape == a.shape == (1, 3, 320, 400) and 0 < (a - b).abs().mean() < 0.05
    no_overlap = PeerModel(str(files["realesr_general"]), tile=48, tile_overlap=0)(lq)
    assert not torch.allclose(no_overlap, b)  # the overlap given is the one used


def test_blending_with_released_roles_leaves_a_seam(peer_weights):
    """GFPGAN (random weights) pasted over Real-ESRGAN's photo through facexlib's mask: the seam score
    is above that of the untouched photo (0) and of the background model alone."""
    _, files = peer_weights
    hq = photo()[..., :256, 96:352]
    lq = torch.nn.functional.interpolate(hq, scale_factor=0.25, mode="area")
    landmarks = (LANDMARKS - torch.tensor([96.0, 0.0]))[None]
    background = PeerModel(str(files["realesr_general"]))
    blend = BlendingBaseline(background, PeerModel(str(files["gfpgan"])), face_size=512, detect=False)
    out = blend(lq, landmarks[:, None], torch.ones(1, 1, dtype=torch.bool))
    assert float(seam_scores(hq, hq, landmarks)) == 0.0
    assert float(seam_scores(out, hq, landmarks)) > float(seam_scores(background(lq), hq, landmarks)) + 0.1


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comparison_sweep_runs_the_peers_from_their_files(peer_weights, monkeypatch, capsys):
    """benchmarks/compare.py with the method presets as shipped (weights/peers/<release file>), on a
    portrait crop with its faces: Real-ESRGAN, realesr-general and SwinIR whole-image, GFPGAN+Real-ESRGAN and
    CodeFormer+Real-ESRGAN, then one table with the seam score; a method whose weights are missing is
    reported, the rest run.
    (Whether the paste leaves a seam: test_blending_with_released_roles_leaves_a_seam.)"""
    from headsup.data.faces import annotate

    root, _ = peer_weights
    monkeypatch.chdir(root)
    portrait = root / "portrait"
    portrait.mkdir(exist_ok=True)
    Image.fromarray(astronaut()[:256, 96:352]).save(portrait / "astronaut.png")
    manifest = annotate(portrait, portrait / "faces.jsonl", num_workers=0, progress=False)
    (root / "sets.yaml").write_text(yaml.safe_dump([{"name": "portrait", "manifest": str(manifest),
                                                      "kind": "portrait"}]))
    (root / "shared.yaml").write_text(yaml.safe_dump({
        "data": {"num_workers": 0, "batch_size": 1},
        "trainer": {"accelerator": "cpu"},
        "results": {"save_images": False}}))
    methods = {m: {"configs": [str(ROOT / "configs" / "methods" / f"{m}.yaml")]}
               for m in ("realesrgan", "swinir", "gfpgan_realesrgan", "codeformer_realesrgan")}
    for name, file in (("realesr_general", RELEASES["realesr_general"][0]), ("missing", "not_downloaded.pth")):
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"model": {"eval_color_fix": "none", "generator": {
            "class_path": "headsup.inference.peers.PeerModel", "init_args": {"path": f"weights/peers/{file}"}}}}))
        methods[name] = {"configs": [str(ROOT / "configs" / "methods" / "realesrgan.yaml"), str(root / f"{name}.yaml")]}
    config = root / "compare.yaml"
    config.write_text(yaml.safe_dump({"out": "runs/compare", "configs": [str(root / "shared.yaml")],
                                      "sets": [str(root / "sets.yaml")], "methods": methods}))
    assert _compare_module().main([str(config)]) == 1  # "missing" could not run
    err = capsys.readouterr().err
    assert "missing did not run" in err and err.count("did not run") == 1, err
    assert "weights/peers/not_downloaded.pth" in err  # names the missing file
    ran = ("realesrgan", "swinir", "realesr_general", "gfpgan_realesrgan", "codeformer_realesrgan")
    results = {m: json.loads((root / "runs" / "compare" / m / "results.json").read_text()) for m in ran}
    for method, r in results.items():
        assert r["method"] == method and r["settings"]["color_fix"] == "none"
        assert r["sets"]["portrait"]["images"] == 1 and "seam" in r["sets"]["portrait"][method]
    whole = results["realesrgan"]["sets"]["portrait"]["realesrgan"]
    for method in ("gfpgan_realesrgan", "codeformer_realesrgan"):  # a (random) face pasted over the same background
        assert results[method]["sets"]["portrait"][method]["psnr_y"] != whole["psnr_y"]
    table = (root / "runs" / "compare" / "comparison.md").read_text()
    assert all(f"| {m} | 1 |" in table for m in results) and "Seam ↓" in table.splitlines()[2]


def test_compare_builds_each_methods_headsup_command(tmp_path):
    compare = _compare_module()
    args = compare.command("m", {"configs": ["a.yaml"], "ckpt_path": "x.ckpt", "args": ["--b", 1]},
                           {"configs": ["shared.yaml"]}, tmp_path / "sets.yaml", tmp_path / "out")
    assert args[:5] == ["test", "--config", "a.yaml", "--config", "shared.yaml"]  # the method's own configs first
    assert args[args.index("--ckpt_path") + 1] == "x.ckpt" and args[-2:] == ["--b", "1"]
    assert args[args.index("--trainer.default_root_dir") + 1] == str(tmp_path / "out" / "m")
    assert args[args.index("--model.method") + 1] == "m"
