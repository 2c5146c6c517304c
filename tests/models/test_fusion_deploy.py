"""The fusion head's deploy form: the train form's logits from folded constants, as latency and ONNX see it."""

from __future__ import annotations

import dataclasses

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from models import HeadConfig, LPSNetArch, MobileNetV2Arch, build_model, create_model, reparameterize
from models.base import FixedUpsample
from models.heads import FusionDeployHead, FusionHead, deploy_head
from scaler.measure import LatencySettings
from scaler.measure.latency import build_network
from scaler.measure.onnx_export import onnx_bytes

BACKBONES = {
    "lpsnet": LPSNetArch(depth=(1, 1, 1, 1, 1), width=(4, 8, 16, 32, 32), resolution=(1, 0.5), num_classes=5),
    "mobilenetv2": MobileNetV2Arch(width_mult=0.25, num_classes=5),
}


def _randomize_norms(model: nn.Module, seed: int) -> None:
    # Fresh BatchNorm and LayerNorm are identities: give them statistics and affines so folding them counts.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def _fusion(backbone: str, num_classes: int, **head: int) -> nn.Module:
    arch = dataclasses.replace(
        BACKBONES[backbone], num_classes=num_classes, head=HeadConfig(kind="fusion", init="random", **head)
    )
    model = build_model(arch)
    _randomize_norms(model, seed=num_classes)
    return model.eval()


def _assert_relative(out: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    assert out.shape == ref.shape
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err <= rel, f"relative difference {err:.2e} > {rel:g}"


@pytest.mark.parametrize(
    ("backbone", "num_classes", "layers", "heads", "hw"),
    [
        ("lpsnet", 5, 1, 4, (64, 128)),
        ("lpsnet", 19, 2, 2, (67, 93)),
        ("lpsnet", 1, 3, 4, (96, 64)),
        ("mobilenetv2", 12, 1, 8, (128, 160)),
        ("mobilenetv2", 3, 2, 4, (33, 47)),
    ],
)
def test_deploy_form_gives_the_train_forms_logits(backbone, num_classes, layers, heads, hw):
    torch.manual_seed(layers * 100 + num_classes)
    model = _fusion(backbone, num_classes, layers=layers, heads=heads, dim=32)
    model.set_classes([f"class {i}" for i in range(num_classes)], embeddings=torch.randn(num_classes, 384))
    deployed = reparameterize(model)
    assert isinstance(deployed.head, FusionDeployHead) and type(model.head) is FusionHead
    assert deployed.class_names == model.class_names
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        _assert_relative(deployed(x, upsample=False), model(x, upsample=False))
        logits, aux = deployed.forward_with_aux(x)
        ref_logits, ref_aux = model.forward_with_aux(x)
    _assert_relative(logits, ref_logits)
    _assert_relative(aux, ref_aux)


def test_deploy_form_folds_what_depends_on_the_classes_only():
    model = _fusion("lpsnet", 7, layers=1, heads=4, dim=32)
    head = reparameterize(model).head
    # The first layer's pixels -> text queries are one constant matrix per head and class ...
    assert head.query0.shape == (4 * 7, 32) and head.base0.shape == (7, 32)
    # ... and the state dict is the train form's (the folded constants are not saved).
    assert head.state_dict().keys() == model.head.state_dict().keys()
    assert not any(k in head.state_dict() for k in ("query0", "base0", "vin_w", "folded.0.key_q"))
    # Loading weights (a state dict for another class list, too) folds again.
    other = _fusion("lpsnet", 3, layers=1, heads=4, dim=32)
    torch.manual_seed(1)
    other.set_classes(["a", "b", "c"], embeddings=torch.randn(3, 384))
    head.load_state_dict(other.head.state_dict())
    assert head.query0.shape == (4 * 3, 32)
    x = torch.randn(1, 64, 4, 6)  # the head's input: two paths of 32 channels
    with torch.no_grad():
        _assert_relative(head(x), other.head(x))


def test_set_classes_on_a_deployed_network_folds_the_new_classes():
    model = _fusion("mobilenetv2", 5, layers=2, heads=4, dim=32)
    deployed = reparameterize(model)
    x = torch.randn(1, 3, 64, 96)
    for k, seed in ((9, 0), (2, 1), (5, 2)):
        emb = torch.randn(k, 384, generator=torch.Generator().manual_seed(seed))
        names = [f"c{i}" for i in range(k)]
        model.set_classes(names, embeddings=emb)
        deployed.set_classes(names, embeddings=emb)
        assert deployed.arch.num_classes == k and deployed.head.num_classes == k
        with torch.no_grad():
            _assert_relative(deployed(x), model(x))


def test_reparameterize_leaves_the_caller_alone():
    model = _fusion("lpsnet", 5, layers=1, heads=4, dim=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = reparameterize(model)
    assert type(model.head) is FusionHead
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert reparameterize(deployed) is deployed and deploy_head(deployed.head) is deployed.head
    # A network built in deploy form (backbone folded, head in its train form) gets the head folded
    # in a copy; the network itself keeps its train-form head.
    built = create_model("lpsnet_tiny+fusion", deploy=True).eval()
    folded = reparameterize(built)
    assert folded is not built and type(built.head) is FusionHead and isinstance(folded.head, FusionDeployHead)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        _assert_relative(folded(x), built(x))


def test_latency_measures_the_deploy_form():
    settings = LatencySettings(input_hw=(64, 128), threads=1)
    net = build_network(create_model("lpsnet_tiny+fusion").arch, None, settings)
    assert isinstance(net.model.head, FusionDeployHead)


def test_onnx_export_of_the_deploy_form_has_one_input_and_the_folded_constants():
    torch.manual_seed(0)
    model = _fusion("lpsnet", 6, layers=1, heads=4, dim=32)
    x = torch.randn(1, 3, 64, 128)
    graphs = {}
    for form, net in (("train", model), ("deploy", reparameterize(model))):
        wrapped = FixedUpsample(net, False).eval()
        with torch.no_grad():
            blob = onnx_bytes(wrapped, x)
            ref = wrapped(x)
        graph = onnx.load_from_string(blob).graph
        assert [i.name for i in graph.input] == ["image"]  # the class constants are in the graph, not inputs
        session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
        out = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        _assert_relative(out, ref)
        graphs[form] = graph
    ops = {form: [n.op_type for n in g.node if n.op_type != "Constant"] for form, g in graphs.items()}
    # The text branch is gone from the graph: no self-attention softmax, no GELU, two LayerNorms
    # (pixels, and the updated class tokens) instead of six.
    assert ops["deploy"].count("Softmax") == 2 and ops["train"].count("Softmax") == 3
    assert ops["deploy"].count("LayerNormalization") == 2 and ops["train"].count("LayerNormalization") == 6
    assert "Erf" not in ops["deploy"] and len(ops["deploy"]) < len(ops["train"])
    # The folded queries of the first layer travel as a constant (buffers export as Constant nodes).
    constants = [a.t for n in graphs["deploy"].node if n.op_type == "Constant" for a in n.attribute if a.t.dims]
    assert (4 * 6, 32) in {tuple(t.dims) for t in [*constants, *graphs["deploy"].initializer]}
