from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from stripes import Stripes

from models import HeadConfig, LPSNet, LPSNetArch, get_arch, save_embeddings
from scaler.errors import UserError
from scaler.proxy.augment import AugmentConfig, TrainStream, colour_jitter, resize_pair
from scaler.proxy.train import (
    Checkpoint,
    TrainConfig,
    confusion_matrix,
    evaluate,
    iou_from_confusion,
    poly_lr,
    train_and_evaluate,
)

TINY = get_arch("lpsnet_tiny")
SMALL_NET = LPSNetArch(depth=(1, 1, 1, 1, 1), width=(8, 8, 16, 16, 16), resolution=(1,))


def _config(**kw) -> TrainConfig:
    base = dict(dataset="stripes", iters=40, batch=4, crop=(32, 48), lr=0.05, seed=0, jitter=0.1)
    return TrainConfig(**{**base, **kw})


def _train(arch=SMALL_NET, train=None, val=None, **kw):
    return train_and_evaluate(
        arch, _config(**kw), progress=False, train_set=train or Stripes(), val_set=val or Stripes(n=6, seed=99)
    )


def test_poly_lr():
    assert poly_lr(0, base_lr=0.1, iters=100) == pytest.approx(0.1)
    assert poly_lr(50, base_lr=0.1, iters=100) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(100, base_lr=0.1, iters=100) == 0.0
    assert [poly_lr(i, base_lr=0.1, iters=100, warmup=4) for i in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert poly_lr(4, base_lr=0.1, iters=100, warmup=4) == pytest.approx(0.1)


def test_confusion_and_iou():
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    conf = confusion_matrix(pred, target, 4, 255)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    iou = iou_from_confusion(conf)
    assert iou[0].item() == pytest.approx(1 / 3)
    assert iou[1].item() == pytest.approx(2 / 3)
    assert iou[2].item() == 0.0
    assert math.isnan(iou[3].item())


def test_training_learns_and_reports():
    r = _train()
    assert r.ok, r.reason
    assert r.miou > 0.8
    assert set(r.per_class_iou) == {"red", "green", "blue"}
    assert r.iters_done == 40 and len(r.loss_curve) == 40
    assert r.loss_last < 0.5 * r.loss_first
    assert r.images_per_s > 0 and 0 <= r.data_time_share < 1
    assert r.num_val_images == 6
    assert r.arch["num_classes"] == 3  # the dataset's class count replaces the architecture's


def test_same_seed_same_result_and_workers_do_not_matter():
    a = _train(iters=12)
    b = _train(iters=12)
    c = _train(iters=12, workers=1)
    assert a.loss_curve == b.loss_curve == c.loss_curve
    assert a.miou == b.miou == c.miou
    d = _train(iters=12, seed=1)
    assert d.loss_curve != a.loss_curve


def test_data_stream_is_the_same_for_every_architecture():
    # The stream depends on the dataset, the augmentation and the seed only.
    aug = AugmentConfig(crop=(32, 48))
    s1, s2 = TrainStream(Stripes(), aug, 20, seed=3), TrainStream(Stripes(), aug, 20, seed=3)
    for k in (0, 7, 19):
        x1, y1, j1 = s1[k]
        x2, y2, j2 = s2[k]
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(j1, j2)
        assert x1.shape == (3, 32, 48) and y1.shape == (32, 48) and j1.shape == (3,)
        assert x1.min() >= 0.0 and x1.max() <= 1.0
    assert not torch.equal(TrainStream(Stripes(), aug, 20, seed=4)[0][0], s1[0][0])
    x, y = TrainStream.collate([s1[0], s1[1]])
    assert x.shape == (2, 3, 32, 48) and y.shape == (2, 32, 48) and y.dtype == torch.int64
    # Each epoch visits every image once.
    assert sorted(s1.order[:12].tolist()) == list(range(12))


def test_crop_larger_than_image_pads_with_ignore():
    aug = AugmentConfig(crop=(100, 120), scale=(1.0, 1.0), flip=0.0, jitter=0.0)
    x, y, _ = TrainStream(Stripes(size=(48, 64)), aug, 1, seed=0)[0]
    assert x.shape == (3, 100, 120)
    assert (y[48:, :] == 255).all() and (y[:, 64:] == 255).all()


def test_colour_jitter_is_per_image_and_identity_at_one():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g)
    same = colour_jitter(images.clone(), torch.ones(2, 3))
    torch.testing.assert_close(same, images)
    brighter = colour_jitter(images.clone(), torch.tensor([[1.0, 1.0, 1.0], [0.5, 1.0, 1.0]]))
    torch.testing.assert_close(brighter[0], images[0])
    torch.testing.assert_close(brighter[1], images[1] * 0.5)


def test_mask_resize_is_nearest():
    mask = torch.arange(12).view(3, 4)
    _, up = resize_pair(torch.zeros(3, 3, 4), mask, (6, 8))
    assert up[::2, ::2].tolist() == mask.tolist() and up[1::2, 1::2].tolist() == mask.tolist()
    _, down = resize_pair(torch.zeros(3, 3, 4), mask, (3, 2))
    assert down.tolist() == [[0, 2], [4, 6], [8, 10]]


def test_eval_size_resizes_inputs_and_scores_at_label_size():
    torch.manual_seed(0)
    model = LPSNet(SMALL_NET.__class__(SMALL_NET.depth, SMALL_NET.width, SMALL_NET.resolution, 3))
    seen_sizes = []
    model.register_forward_pre_hook(lambda m, args: seen_sizes.append(tuple(args[0].shape[-2:])))
    conf, n = evaluate(model, Stripes(n=5), eval_size=(40, 56), device=torch.device("cpu"), batch=2)
    assert n == 5 and seen_sizes == [(40, 56)] * 3
    assert conf.sum().item() == 5 * (48 * 64 - 16)


def test_nonfinite_loss_is_a_failed_result():
    r = _train(lr=1e9, iters=30)
    assert r.status == "failed" and not r.ok
    assert "loss became" in r.reason and "lower the learning rate" in r.reason
    assert r.miou is None


def test_bad_data_is_a_failed_result_naming_the_file():
    r = _train(train=Stripes(bad=5))
    assert r.status == "failed"
    assert "bad data" in r.reason and "/data/masks/0005.png" in r.reason and "7" in r.reason


def test_cuda_oom_is_a_failed_result(monkeypatch):
    def boom(self, x, upsample=True):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(LPSNet, "forward", boom)
    r = _train(iters=3)
    assert r.status == "failed" and "CUDA out of memory at batch 4, crop 32x48" in r.reason


def test_other_errors_are_failed_results(monkeypatch):
    def broken(self, x, upsample=True):
        raise RuntimeError("something odd\nmore lines")

    monkeypatch.setattr(LPSNet, "forward", broken)
    r = _train(iters=3)
    assert r.status == "failed" and r.reason == "RuntimeError: something odd"


def test_save_round_trip(tmp_path):
    path = tmp_path / "w" / "weights.pt"
    r = train_and_evaluate(
        SMALL_NET, _config(iters=10), progress=False, train_set=Stripes(), val_set=Stripes(n=4, seed=9), save=path
    )
    ckpt = torch.load(path, weights_only=True)
    arch = LPSNetArch.from_dict(ckpt["arch"])
    model = LPSNet(arch)
    model.load_state_dict(ckpt["state_dict"])
    conf, _ = evaluate(model, Stripes(n=4, seed=9), eval_size=None, device=torch.device("cpu"))
    iou = iou_from_confusion(conf)
    assert float(np.nanmean(iou.numpy())) == pytest.approx(r.miou, abs=1e-9)
    assert ckpt["train_config"]["iters"] == 10 and ckpt["result"]["status"] == "ok"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"iters": 0}, "iters must be >= 1"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"scale": (2.0, 1.0)}, "scale must be (low, high)"),
        ({"crop": (0, 10)}, "crop must be at least 1x1"),
    ],
)
def test_bad_config(kw, message):
    with pytest.raises(UserError) as e:
        _config(**kw)
    assert message in str(e.value)


def test_bad_device_and_too_small_crop():
    with pytest.raises(UserError, match="CUDA is not available"):
        _train(device="cuda")
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        _train(device="gpu0")
    with pytest.raises(UserError, match=r"crop 1x48: input 1x48 is too small"):
        _train(arch=TINY, crop=(1, 48))


# Recorded before train_and_evaluate was split into setup, loop and metrics (same machine, same
# torch): a refactor of the training code must give these numbers bit for bit.
def test_seeded_run_on_synthetic_data_is_pinned():
    synthetic = "synthetic:size=64x128,train=16,val=4"
    config = TrainConfig(dataset=synthetic, iters=20, batch=4, crop=(64, 64), seed=3, lr=0.1)
    r = train_and_evaluate(TINY, config, progress=False)
    assert r.ok, r.reason
    assert r.miou == 0.12377165435092086
    assert r.pixel_accuracy == 0.4913876645096752
    assert r.loss_first == 2.1377944946289062
    assert r.loss_last == 1.568597137928009
    assert r.loss_curve[:4] == [2.13779, 2.17593, 2.13016, 2.14815]
    assert r.loss_curve[-4:] == [1.55172, 1.50871, 1.5963, 1.54089]


def test_seeded_run_on_stripes_is_pinned():
    r = _train(iters=12)
    assert r.ok, r.reason
    assert r.miou == 0.47288038207000865
    assert r.pixel_accuracy == 0.7198407504363001
    assert r.loss_first == 1.0869112014770508
    assert r.loss_last == 0.7461456656455994
    assert r.loss_curve == [
        1.08691, 1.03159, 0.99991, 1.02179, 0.92272, 0.75857, 0.81801, 0.73272, 0.83822, 0.73997, 0.63157, 0.74615
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("recipe", "miou", "curve"),
    [
        # Every parameter by SGD from a random init: what runs made before the recipe fields trained with.
        (
            {"optimizer": "sgd", "init": "random"},
            0.26143430528825995,
            [1.5969, 2.02665, 1.46703, 1.78378, 1.48291, 1.19622, 1.23395, 1.17272],
        ),
        # The default recipe: AdamW for the head's transformer parts, starting as DenseCLIP.
        ({}, 0.3818520618806484, [1.76844, 2.69953, 1.44471, 1.3599, 1.30162, 0.81421, 0.83363, 0.61694]),
    ],
)
def test_seeded_run_with_a_fusion_head_is_pinned(tmp_path, monkeypatch, recipe, miou, curve):
    # The auxiliary-loss path of the loop, with precomputed (seeded) class embeddings.
    monkeypatch.setenv("LPS_SCALER_TEXT_CACHE", str(tmp_path / "text-cache"))
    emb = torch.randn(3, 32, generator=torch.Generator().manual_seed(7))
    encoder = f"file:{save_embeddings(tmp_path / 'classes.pt', emb, ['red', 'green', 'blue'])}"
    arch = dataclasses.replace(SMALL_NET, head=HeadConfig(kind="fusion", text_encoder=encoder, **recipe))
    r = _train(arch=arch, iters=8)
    assert r.ok, r.reason
    assert r.miou == miou
    assert r.loss_curve == curve
    # The groups it trained with are in the result (and so in the trial).
    assert [g["optimizer"] for g in r.param_groups] == (["sgd"] if recipe else ["sgd", "adamw", "adamw"])
    assert r.arch["head"].get("optimizer") == (None if recipe else "adamw")


def test_training_leaves_the_callers_global_rng_alone():
    torch.manual_seed(1234)
    torch.rand(3)  # a state part-way through a stream, not a fresh seed
    before = torch.random.get_rng_state()
    a = _train(iters=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.rand(5)  # another caller state: the run's own seed decides its weights, not the caller's
    b = _train(iters=3)
    assert a.ok and b.ok and a.loss_curve == b.loss_curve and a.miou == b.miou


def test_bad_validation_data_is_a_failed_result_with_the_training_stats():
    r = _train(iters=3, val=Stripes(n=6, seed=99, bad=2))
    assert r.status == "failed" and "bad data" in r.reason and "/data/masks/0002.png" in r.reason
    assert r.iters_done == 3 and len(r.loss_curve) == 3 and r.miou is None


def test_ohem_counts_the_hard_pixels_and_at_least_the_hardest_share():
    from scaler.proxy.train import ohem_cross_entropy

    # Four labelled pixels of two classes: two easy (p(true) ~ 0.98), two hard; one ignored pixel.
    logits = torch.tensor([[[[4.0, 4.0, -2.0, 0.1, 9.0]], [[0.0, 0.0, 2.0, 0.0, 0.0]]]])  # (1, 2, 1, 5)
    target = torch.tensor([[[0, 0, 0, 1, 255]]])
    pixel = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none").flatten()[:4]
    hard = pixel[pixel > -math.log(0.7)]
    assert hard.numel() == 2  # the -2 vs 2 pixel and the near-tie of class 1
    assert ohem_cross_entropy(logits, target, 255, 0.7, 1 / 16) == pytest.approx(float(hard.mean()))
    # At least the hardest 3 of the 4 labelled pixels, whatever the threshold says.
    assert ohem_cross_entropy(logits, target, 255, 0.7, 0.75) == pytest.approx(float(pixel.topk(3).values.mean()))
    # Every pixel kept: plain cross-entropy over the labelled ones.
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert ohem_cross_entropy(logits, target, 255, 0.999, 1.0) == pytest.approx(float(ce))
    assert float(ohem_cross_entropy(logits, torch.full_like(target, 255), 255, 0.7, 0.1)) == 0.0


def test_ohem_is_a_recipe_option_recorded_only_when_chosen():
    assert "loss" not in TrainConfig().to_dict() and "ohem_thresh" not in TrainConfig().to_dict()
    d = TrainConfig(loss="ohem", ohem_thresh=0.6).to_dict()
    assert (d["loss"], d["ohem_thresh"], d["ohem_min_kept"]) == ("ohem", 0.6, 1 / 16)
    with pytest.raises(UserError, match="training config: loss must be one of ce, ohem, got 'focal'"):
        TrainConfig(loss="focal")
    with pytest.raises(UserError, match="ohem_thresh must be a probability"):
        TrainConfig(loss="ohem", ohem_thresh=1.5)


def test_a_training_with_ohem_runs_records_its_loss_and_parts_from_plain_cross_entropy():
    plain = _train(TINY)
    hard = _train(TINY, loss="ohem")
    assert plain.ok and hard.ok and hard.config["loss"] == "ohem" and "loss" not in plain.config
    # At initialisation every pixel is hard (its class gets ~1/C < 0.7): the first losses are equal; once
    # the network is sure of some pixels they drop out of OHEM's mean, and the curves part.
    assert hard.loss_first == pytest.approx(plain.loss_first)
    assert hard.loss_curve[1:] != pytest.approx(plain.loss_curve[1:])


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_in_rungs_resumed_from_checkpoints_equals_training_straight_through(tmp_path):
    """Successive halving trains a candidate to a rung, keeps a checkpoint, and goes on later: the weights,
    loss curve and mIoU at the end are those of one uninterrupted run (same data, LR position, momentum)."""
    config = _config(iters=24)
    kw = dict(progress=False, train_set=Stripes(), val_set=Stripes(n=6, seed=99))
    straight = train_and_evaluate(SMALL_NET, config, save=tmp_path / "straight.pt", eval_at=(6, 12), **kw)
    assert straight.ok, straight.reason
    first = train_and_evaluate(SMALL_NET, config, until=6, checkpoint=tmp_path / "c6.pt", **kw)
    assert first.ok and first.iters_done == 6 and [r["iters"] for r in first.rungs] == [6]
    c6 = Checkpoint.read(tmp_path / "c6.pt")
    assert c6.iters_done == 6 and len(c6.losses) == 6
    second = train_and_evaluate(SMALL_NET, config, until=12, resume=c6, checkpoint=tmp_path / "c12.pt", **kw)
    third = train_and_evaluate(
        SMALL_NET, config, resume=Checkpoint.read(tmp_path / "c12.pt"), save=tmp_path / "rungs.pt", **kw
    )
    assert third.ok and third.iters_done == 24
    # The evaluations on the way change nothing: each rung's mIoU is the straight run's at that point.
    assert [r["miou"] for r in straight.rungs] == [first.miou, second.miou, straight.miou]
    assert [r["iters"] for r in straight.rungs] == [6, 12, 24]
    assert third.miou == straight.miou
    assert third.loss_curve == straight.loss_curve and third.loss_first == straight.loss_first
    a = torch.load(tmp_path / "straight.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "rungs.pt", weights_only=True)["state_dict"]
    assert _weights_equal(a, b)
    # Without the optimiser's momentum the run parts from the straight one: the checkpoint carries it.
    bare = dataclasses.replace(c6, optimizer={"state": {}, "param_groups": c6.optimizer["param_groups"]})
    other = train_and_evaluate(SMALL_NET, config, resume=bare, save=tmp_path / "bare.pt", **kw)
    assert not _weights_equal(a, torch.load(tmp_path / "bare.pt", weights_only=True)["state_dict"])
    assert other.ok


def test_a_checkpoint_resumes_only_its_own_recipe_and_a_damaged_one_says_so(tmp_path):
    kw = dict(progress=False, train_set=Stripes(), val_set=Stripes(n=6, seed=99))
    train_and_evaluate(SMALL_NET, _config(iters=12), until=4, checkpoint=tmp_path / "c.pt", **kw)
    c = Checkpoint.read(tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"another recipe \(lr differ\); it cannot be resumed"):
        train_and_evaluate(SMALL_NET, _config(iters=12, lr=0.01), resume=c, **kw)
    # Where it runs may change (another worker, another evaluation batch); what it computes may not.
    assert c.mismatch(_config(iters=12, eval_batch=2, workers=1)) is None
    why = c.mismatch(_config(iters=12, seed=1, batch=2))
    assert why == "the checkpoint was trained with another recipe (batch, seed differ)"
    with pytest.raises(ValueError, match="stopped at iteration 4; nothing to train up to 4"):
        train_and_evaluate(SMALL_NET, _config(iters=12), until=4, resume=c, **kw)
    with pytest.raises(ValueError, match="until must be 1 to iters"):
        train_and_evaluate(SMALL_NET, _config(iters=12), until=13, **kw)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a training checkpoint"):
        Checkpoint.read(tmp_path / "bad.pt")
