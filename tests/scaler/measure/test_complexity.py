from __future__ import annotations

import pytest

from models import LPSNetArch, get_arch
from scaler.measure.complexity import measure_complexity

THREE_PATHS = LPSNetArch(depth=(1, 2, 1, 2, 1), width=(4, 6, 8, 10, 12), resolution=(1, 0.5, 0.375), num_classes=5)


def analytic_macs(arch: LPSNetArch, h: int, w: int) -> int:
    """Deploy-form MACs from the definition: each conv output element costs C_in*9 MACs plus its bias."""
    total = 0
    for ph, pw in arch.path_input_size(h, w):
        c_in = 3
        for d, c, s in zip(arch.depth, arch.width, (2, 2, 2, 2, 1), strict=True):
            for b in range(d):
                stride = s if b == 0 else 1
                ph, pw = (ph - 1) // stride + 1, (pw - 1) // stride + 1
                total += ph * pw * c * (c_in * 9 + 1)
                c_in = c
    hh, hw = arch.head_size(h, w)
    return total + hh * hw * arch.num_classes * (arch.width[-1] * arch.num_paths + 1)


@pytest.mark.parametrize(
    "arch", [get_arch("lpsnet_tiny"), get_arch("lpsnet_s"), THREE_PATHS], ids=["tiny", "s", "three-paths"]
)
def test_aten_backend_counts_exactly_the_convolutions(arch):
    c = measure_complexity(arch, (97, 131), flops_backend="aten")
    assert c.macs == analytic_macs(arch, 97, 131)
    assert c.flops_backend == "aten" and c.macs_form == "deploy" and not c.include_upsample


def test_pytorch_backend_also_counts_elementwise_work():
    arch = get_arch("lpsnet_tiny")
    aten = measure_complexity(arch, (97, 131), flops_backend="aten").macs
    torch_be = measure_complexity(arch, (97, 131), flops_backend="pytorch").macs
    assert aten < torch_be < 1.2 * aten


@pytest.mark.slow
@pytest.mark.parametrize(("name", "gmacs"), [("lpsnet_s", 10.44), ("lpsnet_m", 17.75), ("lpsnet_l", 43.86)])
def test_paper_scale_macs(name, gmacs):
    c = measure_complexity(get_arch(name), (1024, 2048))
    assert c.macs / 1e9 == pytest.approx(gmacs, abs=0.01)
    assert c.head_hw == get_arch(name).head_size(1024, 2048)


def test_parameters_and_report():
    c = measure_complexity(get_arch("lpsnet_s"), (64, 128))
    assert (c.params_train, c.params_deploy) == (3_375_363, 3_371_075)
    d = c.to_dict()
    assert d["flops_counter"]["name"] == "ptflops" and d["flops_counter"]["backend"] == "aten"
    assert d["input"] == {"batch": 1, "channels": 3, "height": 64, "width": 128}
    assert d["path_inputs"] == [[48, 96], [16, 32]]
    assert d["head_output"] == {"channels": 19, "height": 3, "width": 6}
    assert d["include_final_upsample"] is False


def test_bad_backend_and_tiny_input():
    with pytest.raises(ValueError, match="flops backend must be one of aten, pytorch"):
        measure_complexity(get_arch("lpsnet_tiny"), (64, 64), flops_backend="fvcore")
    with pytest.raises(ValueError, match=r"too small for resolution factor 0.5"):
        measure_complexity(get_arch("lpsnet_tiny"), (1, 64))
