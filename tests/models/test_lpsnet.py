from __future__ import annotations

import pytest
import torch
from torch import nn

from models import LPSNet, LPSNetArch, create_model, get_arch, list_models, reparameterize

PARAMS_19 = {
    "lpsnet_tiny": (16_183, 16_091),
    "lpsnet_s": (3_375_363, 3_371_075),
    "lpsnet_m": (3_375_363, 3_371_075),
    "lpsnet_l": (9_159_235, 9_152_291),
}

# Registry variants plus test-only ones that cover one and three paths and uneven sizes.
THREE_PATHS = LPSNetArch(depth=(1, 2, 1, 2, 1), width=(4, 6, 8, 10, 12), resolution=(1, 0.5, 0.375), num_classes=5)
ONE_FULL = LPSNetArch(depth=(2, 1, 1, 1, 2), width=(3, 5, 7, 9, 11), resolution=(1,), num_classes=3)
ARCHS = [*list_models(), THREE_PATHS, ONE_FULL]


def _id(spec):
    return spec if isinstance(spec, str) else spec.inline()


def _randomise_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.2
            m.running_mean = torch.randn(n, generator=g) * 0.2
            m.running_var = torch.rand(n, generator=g) + 0.5


def test_parameter_counts_equal_the_reference():
    for name, (train, deploy) in PARAMS_19.items():
        m = create_model(name)
        assert sum(p.numel() for p in m.parameters()) == train, name
        assert sum(p.numel() for p in reparameterize(m.eval()).parameters()) == deploy, name
        assert sum(p.numel() for p in create_model(name, deploy=True).parameters()) == deploy, name


@pytest.mark.parametrize("spec", ARCHS, ids=_id)
@pytest.mark.parametrize(("h", "w"), [(97, 131), (64, 48)])
def test_forward_backward_shapes(spec, h, w):
    torch.manual_seed(0)
    model = create_model(spec)
    arch = model.arch
    x = torch.randn(2, 3, h, w, requires_grad=True)
    out = model(x)
    assert out.shape == (2, arch.num_classes, h, w)
    head = model(x, upsample=False)
    assert head.shape == (2, arch.num_classes, *arch.head_size(h, w))
    (out.square().mean() + head.mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    # Every path must influence the output (the interactions and the concat wire them in).
    for path in model.paths if isinstance(model, LPSNet) else []:
        assert path.stages[0][0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("spec", ARCHS, ids=_id)
def test_deploy_form_equals_eval_form(spec):
    torch.manual_seed(1)
    model = create_model(spec)
    _randomise_bn(model, seed=2)
    model.eval()
    fused = reparameterize(model)
    assert fused.deploy and not model.deploy
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 75, 99)
    with torch.no_grad():
        ref = model(x, upsample=False)
        out = fused(x, upsample=False)
        assert not torch.equal(ref, torch.zeros_like(ref))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    assert reparameterize(fused) is fused


def test_deploy_leaves_the_source_model_untouched():
    model = create_model("lpsnet_tiny").eval()
    _randomise_bn(model, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reparameterize(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_channels_last_gives_same_output():
    torch.manual_seed(4)
    model = reparameterize(create_model("lpsnet_s").eval())
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)


def test_paths_see_their_own_resolution():
    # Path k's first conv must run on int(H*r_k) x int(W*r_k): the defined resizing, not a padding trick.
    model = create_model(THREE_PATHS).eval()
    seen = []
    hooks = [
        p.stages[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:]))) for p in model.paths
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 97, 131))
    for h in hooks:
        h.remove()
    assert seen == [(97, 131), (48, 65), (36, 49)]


def test_module_names_follow_the_reference():
    names = {n: list(create_model(n).state_dict()) for n in ("lpsnet_tiny", "lpsnet_s")}
    assert "net.stages.0.0.0.weight" in names["lpsnet_tiny"]
    assert "net.stages.4.0.1.running_var" in names["lpsnet_tiny"]
    assert "netL.stages.3.9.1.bias" in names["lpsnet_s"]
    assert {"head.weight", "head.bias"} <= set(names["lpsnet_s"])
    assert [k for k in create_model(THREE_PATHS).state_dict() if k.endswith("stages.0.0.0.weight")] == [
        "net1.stages.0.0.0.weight",
        "net2.stages.0.0.0.weight",
        "net3.stages.0.0.0.weight",
    ]


def test_too_small_input_is_a_clear_error():
    model = create_model("lpsnet_s")
    with pytest.raises(ValueError, match=r"too small for resolution factor 0.25"):
        model(torch.randn(1, 3, 3, 64))


def test_constructor_rejects_non_arch():
    with pytest.raises(TypeError, match="LPSNetArch"):
        LPSNet("lpsnet_s")  # type: ignore[arg-type]
    assert get_arch("lpsnet_s").num_paths == 2
