"""Loading checkpoints saved by the LPS-Net reference code.

The state dicts here are built by name and shape from the method's definition (not from our module),
and the expected outputs come from a functional re-implementation of the reference forward pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import CheckpointError, from_reference_checkpoint

STRIDES = (2, 2, 2, 2, 1)
PATHS = {1: ["net"], 2: ["netH", "netL"], 3: ["net1", "net2", "net3"]}


def reference_state_dict(depth, width, n_paths, classes, seed=0, deploy=False):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for p in PATHS[n_paths]:
        c_in = 3
        for s, (d, c) in enumerate(zip(depth, width, strict=True)):
            for b in range(d):
                pre = f"{p}.stages.{s}.{b}"
                sd[f"{pre}.0.weight"] = torch.randn(c, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
                if deploy:
                    sd[f"{pre}.0.bias"] = torch.randn(c, generator=g) * 0.1
                else:
                    sd[f"{pre}.1.weight"] = torch.rand(c, generator=g) + 0.5
                    sd[f"{pre}.1.bias"] = torch.randn(c, generator=g) * 0.1
                    sd[f"{pre}.1.running_mean"] = torch.randn(c, generator=g) * 0.1
                    sd[f"{pre}.1.running_var"] = torch.rand(c, generator=g) + 0.5
                    sd[f"{pre}.1.num_batches_tracked"] = torch.tensor(1000)
                c_in = c
    sd["head.weight"] = torch.randn(classes, width[-1] * n_paths, 1, 1, generator=g) * 0.1
    sd["head.bias"] = torch.randn(classes, generator=g) * 0.1
    return sd


def _up(x, size):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def reference_forward(sd, depth, resolution, x):
    """The reference network's forward (eval mode), written with functionals from the definition."""
    names = PATHS[len(resolution)]
    h, w = x.shape[-2:]
    feats = [_up(x, (int(h * r), int(w * r))) for r in resolution]
    for s in range(5):
        for k, p in enumerate(names):
            f = feats[k]
            for b in range(depth[s]):
                pre = f"{p}.stages.{s}.{b}"
                stride = STRIDES[s] if b == 0 else 1
                f = F.conv2d(f, sd[f"{pre}.0.weight"], sd.get(f"{pre}.0.bias"), stride=stride, padding=1)
                if f"{pre}.1.weight" in sd:
                    f = F.batch_norm(
                        f,
                        sd[f"{pre}.1.running_mean"],
                        sd[f"{pre}.1.running_var"],
                        sd[f"{pre}.1.weight"],
                        sd[f"{pre}.1.bias"],
                        training=False,
                        eps=1e-5,
                    )
                f = F.relu(f)
            feats[k] = f
        if s in (2, 3) and len(feats) > 1:
            feats = [f + sum(_up(g, f.shape[-2:]) for j, g in enumerate(feats) if j != i) for i, f in enumerate(feats)]
    cat = torch.cat([feats[0]] + [_up(f, feats[0].shape[-2:]) for f in feats[1:]], 1)
    return F.conv2d(cat, sd["head.weight"], sd["head.bias"])


CASES = [
    ((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5,), 19),
    ((1, 3, 3, 4, 2), (8, 24, 48, 32, 40), (0.75, 0.25), 19),
    ((1, 2, 2, 2, 2), (4, 8, 8, 16, 16), (1.0, 0.5, 0.25), 7),
]


@pytest.mark.parametrize(("depth", "width", "resolution", "classes"), CASES)
@pytest.mark.parametrize("deploy", [False, True], ids=["train-form", "deploy-form"])
def test_round_trip_gives_reference_outputs(tmp_path, depth, width, resolution, classes, deploy):
    sd = reference_state_dict(depth, width, len(resolution), classes, seed=len(resolution), deploy=deploy)
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    model = from_reference_checkpoint(path, resolution=resolution)
    assert not model.training
    assert model.arch.depth == depth and model.arch.width == width
    assert model.arch.num_classes == classes and model.arch.resolution == tuple(resolution)
    assert model.deploy == deploy
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = reference_forward(sd, depth, resolution, x)
        out = model(x, upsample=False)
        full = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert full.shape == (2, classes, 97, 131)


def test_wrapped_and_dataparallel_state_dicts_load():
    depth, width, res = CASES[1][:3]
    sd = reference_state_dict(depth, width, 2, 19)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    model = from_reference_checkpoint(wrapped, resolution=res, num_classes=19)
    torch.testing.assert_close(model.state_dict()["netL.stages.3.3.0.weight"], sd["netL.stages.3.3.0.weight"])


def test_resolution_may_be_given_in_any_order_and_with_zeros():
    depth, width = CASES[1][:2]
    sd = reference_state_dict(depth, width, 2, 19)
    model = from_reference_checkpoint(sd, resolution=(0.25, 0, 0.75))
    assert model.arch.resolution == (0.75, 0.25)


def _bad(sd, **kw):
    with pytest.raises(CheckpointError) as e:
        from_reference_checkpoint(sd, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_mismatches_name_the_first_bad_tensor():
    depth, width, res = CASES[1][:3]
    sd = reference_state_dict(depth, width, 2, 19)

    missing = dict(sd)
    del missing["netL.stages.2.1.1.running_var"]
    assert "missing tensor 'netL.stages.2.1.1.running_var'" in _bad(missing, resolution=res)

    shape = dict(sd)
    shape["netL.stages.1.0.0.weight"] = torch.zeros(24, 4, 3, 3)
    assert "'netL.stages.1.0.0.weight' has shape (24, 4, 3, 3), expected (24, 8, 3, 3)" in _bad(shape, resolution=res)

    extra = dict(sd)
    extra["netH.aux.weight"] = torch.zeros(1)
    assert "unexpected tensor 'netH.aux.weight'" in _bad(extra, resolution=res)

    deeper_low = dict(sd)
    deeper_low["netL.stages.4.2.0.weight"] = torch.zeros(40, 40, 3, 3)
    assert "unexpected tensor 'netL.stages.4.2.0.weight'" in _bad(deeper_low, resolution=res)

    headless = {k: v for k, v in sd.items() if not k.startswith("head.")}
    assert "missing tensor 'head.weight'" in _bad(headless, resolution=res)


def test_other_bad_checkpoints():
    depth, width, res = CASES[1][:3]
    sd = reference_state_dict(depth, width, 2, 19)
    assert "2 path(s) (netH, netL) but 1 resolution factor(s)" in _bad(sd, resolution=(0.5,))
    assert "19 classes, but num_classes=11" in _bad(sd, resolution=res, num_classes=11)
    assert "resolution[0] must be in (0, 1]" in _bad(sd, resolution=(2.0, 0.5))
    renamed = {k.replace("netH", "netA"): v for k, v in sd.items()}
    assert "match no LPS-Net layout" in _bad(renamed, resolution=res)
    four = {k: v for k, v in sd.items() if ".stages.4." not in k}
    assert "has stages [0, 1, 2, 3], expected 0..4" in _bad(four, resolution=res)
    assert "no tensors found" in _bad({"epoch": 1}, resolution=res)
    assert "expected a state dict, got list" in _bad([1, 2], resolution=res)


def test_bad_files(tmp_path):
    assert "no such checkpoint file" in _bad(tmp_path / "none.pth", resolution=(0.5,))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    assert "cannot load checkpoint" in _bad(junk, resolution=(0.5,))


def test_unsafe_pickles_are_refused(tmp_path):
    import argparse

    p = tmp_path / "pickle.pth"
    torch.save({"state_dict": {"head.weight": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, p)
    assert "weights_only loading refuses" in _bad(p, resolution=(0.5,))
