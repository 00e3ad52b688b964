"""Evaluation sets (pairing by name, deterministic synthetic LQ, mod-crop) and the DataModule's
device-side degradation (per-rank seeds, sharpened GT, pair pool)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut, chelsea, coffee

from headsup.data.datamodule import SRDataModule, collate
from headsup.data.datasets import EvalDataset, RandomCropDataset
from headsup.data.specs import DatasetSpec
from headsup.degradations import BicubicDegradation


@pytest.fixture()
def paired(tmp_path):
    hq, lq = tmp_path / "hq", tmp_path / "lq"
    hq.mkdir()
    lq.mkdir()
    for name, img in [("b_cat", chelsea()), ("a_coffee", coffee())]:
        img = img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4]
        Image.fromarray(img).save(hq / f"{name}.png")
        Image.fromarray(img).resize((img.shape[1] // 4, img.shape[0] // 4), Image.BICUBIC).save(lq / f"{name}.jpg")
    return hq, lq


def test_pairs_are_matched_by_name_not_order(paired):
    hq, lq = paired
    ds = EvalDataset(DatasetSpec(name="p", hq=str(hq), lq=str(lq)), scale=4)
    for item in ds:
        ref = np.asarray(Image.open(hq / f"{item['name']}.png"))
        assert item["hq"].shape[-2:] == (ref.shape[0], ref.shape[1])
        assert item["lq"].shape[-2:] == (ref.shape[0] // 4, ref.shape[1] // 4)
        assert torch.allclose(item["hq"].permute(1, 2, 0), torch.from_numpy(ref).float() / 255)


def test_unpaired_names_are_reported(paired):
    hq, lq = paired
    (lq / "a_coffee.jpg").rename(lq / "a_coffe.jpg")
    with pytest.raises(ValueError, match="a_coffee"):
        EvalDataset(DatasetSpec(name="p", hq=str(hq), lq=str(lq)), scale=4)


def test_hq_only_sets_are_mod_cropped_and_seeded(tmp_path):
    Image.fromarray(astronaut()[:103, :70]).save(tmp_path / "x.png")
    ds = EvalDataset(DatasetSpec(name="h", hq=str(tmp_path), seed=10), scale=4)
    item = ds[0]
    assert item["hq"].shape == (3, 100, 68) and item["seed"] == 10
    crop = EvalDataset(DatasetSpec(name="h", hq=str(tmp_path), center_crop=50), scale=4)[0]
    assert crop["hq"].shape == (3, 48, 48)


def test_synthetic_eval_lq_is_identical_run_to_run(tmp_path):
    for i in range(3):
        Image.fromarray(astronaut()[i * 50 : i * 50 + 64, :64]).save(tmp_path / f"{i}.png")
    spec = DatasetSpec(name="h", hq=str(tmp_path))
    deg = BicubicDegradation(noise_prob=0.5, jpeg_prob=0.5)
    outs = []
    for _ in range(2):
        dm = SRDataModule(val_sets=[spec], degradation=deg, crop_size=32, num_workers=0)
        batch = collate([EvalDataset(spec, 4)[i] for i in range(3)])
        outs.append(dm.on_after_batch_transfer(batch, 0)["lq"])
    assert outs[0].shape == (3, 3, 16, 16)
    assert torch.equal(outs[0], outs[1])
    single = SRDataModule(val_sets=[spec], degradation=deg, crop_size=32, num_workers=0)
    alone = single.on_after_batch_transfer(collate([EvalDataset(spec, 4)[2]]), 0)["lq"]
    assert torch.equal(alone[0], outs[0][2])  # an image's LQ does not depend on its batch


def test_training_crops_skip_too_small_images(tmp_path):
    Image.fromarray(astronaut()[:20, :20]).save(tmp_path / "small.png")
    Image.fromarray(astronaut()[:64, :64]).save(tmp_path / "ok.png")
    with pytest.warns(UserWarning, match="small.png"):
        ds = RandomCropDataset(DatasetSpec(name="t", hq=str(tmp_path)), crop_size=32)
    assert [p.name for p in ds.files] == ["ok.png"]
    with pytest.raises(ValueError, match="at least 128x128"):
        RandomCropDataset(DatasetSpec(name="t", hq=str(tmp_path)), crop_size=128)


def test_crop_size_must_be_a_multiple_of_the_scale():
    with pytest.raises(ValueError, match="crop_size"):
        SRDataModule(crop_size=30)


def test_training_degradation_is_seeded_per_rank():
    from types import SimpleNamespace

    from headsup.degradations import RealESRGANDegradation

    hq = torch.from_numpy(astronaut()[:128, :128]).permute(2, 0, 1).float()[None].repeat(4, 1, 1, 1) / 255

    def lq(rank: int) -> torch.Tensor:
        dm = SRDataModule(degradation=RealESRGANDegradation(), crop_size=128, num_workers=0, seed=5)
        dm.trainer = SimpleNamespace(training=True, global_rank=rank)
        first = dm.on_after_batch_transfer({"hq": hq.clone()}, 0)["lq"]
        second = dm.on_after_batch_transfer({"hq": hq.clone()}, 0)["lq"]
        assert not torch.equal(first, second)  # the generator advances between batches
        return first

    assert lq(0).shape == (4, 3, 32, 32)
    assert torch.equal(lq(0), lq(0))
    assert not torch.equal(lq(0), lq(1))


def test_pool_passes_batches_while_filling_then_swaps():
    from headsup.degradations.pool import PairPool

    pool = PairPool(8)
    gen = torch.Generator().manual_seed(0)
    batches = [{"lq": torch.full((4, 1), float(i)), "hq": torch.full((4, 2), float(i)), "name": i,
                "prompt": [f"{i}.{k}" for k in range(4)]} for i in range(4)]
    assert pool(batches[0], gen) is batches[0] and pool(batches[1], gen) is batches[1]
    out = pool(batches[2], gen)
    assert out["name"] == 2 and set(out["lq"].flatten().tolist()) <= {0.0, 1.0}
    assert torch.equal(out["lq"][:, 0], out["hq"][:, 0])  # pairs stay pairs
    assert [float(p.split(".")[0]) for p in out["prompt"]] == out["lq"][:, 0].tolist()  # prompts travel with them
    assert len(set(out["prompt"])) == 4
    held = sorted(pool.store["lq"].flatten().tolist())
    assert held.count(2.0) == 4 and len(held) == 8  # the new batch went in, nothing was lost
    with pytest.raises(ValueError, match="multiple"):
        PairPool(6)({"lq": torch.zeros(4, 1), "hq": torch.zeros(4, 1)})


def test_sharpened_gt_and_pool_in_the_datamodule():
    from types import SimpleNamespace

    from headsup.degradations.functional import usm_sharpen

    hq = torch.from_numpy(astronaut()[:128, :128]).permute(2, 0, 1).float()[None].repeat(2, 1, 1, 1) / 255
    dm = SRDataModule(crop_size=128, batch_size=2, num_workers=0, sharpen_gt=True, pool_size=4)
    dm.trainer = SimpleNamespace(training=True, global_rank=0)
    batch = dm.on_after_batch_transfer({"hq": hq.clone()}, 0)
    assert torch.equal(batch["hq_orig"], hq)
    assert torch.allclose(batch["hq"], usm_sharpen(hq))
    assert dm.pool.filled == 2
    with pytest.raises(ValueError, match="pool_size"):
        SRDataModule(batch_size=4, pool_size=6)


def test_saved_outputs_pair_by_name_whole_hq_and_errors_name_the_files(tmp_path):
    """`sr` (saved outputs): paired with HQ by name (an extra output is ignored), compared with the whole HQ
    (no mod-crop) when there is no LQ; a missing output or one of another size stops, naming the files."""
    hq_dir, sr_dir = tmp_path / "hq", tmp_path / "sr"
    hq_dir.mkdir(), sr_dir.mkdir()
    img = astronaut()[:102, :98]  # not a multiple of the scale
    for name, shift in (("b", 0), ("c", 40)):
        Image.fromarray(np.roll(img, shift, axis=1)).save(hq_dir / f"{name}.png")
        Image.fromarray(np.roll(img, shift, axis=1)[::-1]).save(sr_dir / f"{name}.png")
    Image.fromarray(img).save(sr_dir / "a_extra.png")  # sorts first; has no HQ
    ds = EvalDataset(DatasetSpec(name="saved", hq=str(hq_dir), sr=str(sr_dir)), scale=4)
    for i in range(len(ds)):
        item = ds[i]
        assert item["hq"].shape == item["sr"].shape == (3, 102, 98) and "lq" not in item and "seed" not in item
        assert torch.equal(item["sr"], item["hq"].flip(1))  # its own saved output, by name
    (sr_dir / "c.png").unlink()
    with pytest.raises(ValueError, match=r"no saved output in .*sr for 1 HQ images.*'c'"):
        EvalDataset(DatasetSpec(name="saved", hq=str(hq_dir), sr=str(sr_dir)), scale=4)
    Image.fromarray(img[:50]).save(sr_dir / "c.png")
    with pytest.raises(ValueError, match=r"saved output .*c.png is \(50, 98\), HQ .*c.png is \(102, 98\)"):
        EvalDataset(DatasetSpec(name="saved", hq=str(hq_dir), sr=str(sr_dir)), scale=4)[1]
