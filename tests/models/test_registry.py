from __future__ import annotations

from pathlib import Path

import pytest

from models import ArchError, LPSNet, LPSNetArch, create_model, get_arch, list_models, register_model, resolve_arch
from models.registry import _REGISTRY


def test_list_models():
    names = list_models()
    assert names == sorted(names)
    assert {"lpsnet_l", "lpsnet_m", "lpsnet_s", "lpsnet_tiny", "mobilenetv2_050", "mobilenetv2_100"} <= set(names)


@pytest.mark.parametrize(
    ("name", "depth", "width", "resolution"),
    [
        ("lpsnet_tiny", (1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5,)),
        ("lpsnet_s", (1, 3, 3, 10, 10), (8, 24, 48, 96, 96), (0.75, 0.25)),
        ("lpsnet_m", (1, 3, 3, 10, 10), (8, 24, 48, 96, 96), (1.0, 0.25)),
        ("lpsnet_l", (1, 3, 3, 10, 10), (8, 24, 64, 160, 160), (1.0, 0.25)),
    ],
)
def test_named_variants_match_the_paper(name, depth, width, resolution):
    a = get_arch(name)
    assert (a.depth, a.width, a.resolution, a.num_classes) == (depth, width, resolution, 19)


def test_duplicate_registration_raises():
    before = dict(_REGISTRY)
    with pytest.raises(ValueError, match="'lpsnet_s' is already registered"):
        register_model("lpsnet_s")(lambda: get_arch("lpsnet_s"))
    with pytest.raises(ValueError, match="may not contain '\\+'"):
        register_model("lpsnet_x+fusion")(lambda: get_arch("lpsnet_s"))
    assert before == _REGISTRY  # a refused registration leaves the table as it was


def test_every_spelling_resolves_to_the_same_arch(tmp_path):
    a = get_arch("lpsnet_s")
    p = tmp_path / "arch.json"
    p.write_text(a.to_json())
    for spec in ("lpsnet_s", a.inline(), str(p), p, a, " lpsnet_s "):
        assert resolve_arch(spec) == a


def test_json_path_without_json_suffix(tmp_path):
    p = tmp_path / "my-arch"
    p.write_text(get_arch("lpsnet_m").to_json())
    assert resolve_arch(str(p)) == get_arch("lpsnet_m")


def test_num_classes_override():
    m = create_model("lpsnet_tiny", num_classes=11)
    assert isinstance(m, LPSNet)
    assert m.head.out_channels == 11
    assert m.arch.num_classes == 11
    with pytest.raises(ArchError, match="num_classes must be an integer >= 1, got 0"):
        resolve_arch("lpsnet_tiny", num_classes=0)


def test_create_model_deploy_form_has_no_batchnorm():
    m = create_model("lpsnet_tiny", deploy=True)
    assert m.deploy
    assert not any(type(x).__name__ == "BatchNorm2d" for x in m.modules())


@pytest.mark.parametrize("spec", ["lpsnet_xl", "lpsnet:d=1", "missing/arch.json", Path("nowhere.json")])
def test_unknown_specs_give_clear_errors(spec):
    with pytest.raises(ArchError) as e:
        resolve_arch(spec)
    msg = str(e.value)
    assert "\n" not in msg
    assert any(word in msg for word in ("unknown architecture", "missing", "cannot read"))


def test_unknown_name_lists_registered():
    with pytest.raises(ArchError, match="registered: lpsnet_l, lpsnet_m, lpsnet_s, lpsnet_tiny"):
        get_arch("nope")


def test_bad_type():
    with pytest.raises(ArchError, match="got int"):
        resolve_arch(3)  # type: ignore[arg-type]
    assert isinstance(resolve_arch(LPSNetArch((1,) * 5, (1,) * 5, (1,))), LPSNetArch)


# Pinned before the family registry existed: runs, caches and studies key on these hashes, so a
# refactor must keep ``to_dict`` (and with it the hash) byte-identical.
@pytest.mark.parametrize(
    ("spec", "arch_hash", "inline"),
    [
        ("lpsnet_s", "ad758a42bb25", "lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25"),
        ("lpsnet_tiny", "2a273e0bdeb1", "lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5"),
        # Language-guided heads with the recipe they trained with before its fields existed (SGD, random
        # init: what a stored head that names no recipe reads as) keep the hashes pinned then.
        (
            "lpsnet:d=1,3,3,10,10;w=8,24,64,160,160;r=1,0.25;h=fusion/opt=sgd/init=random",
            "c5bf3470ac83",
            "lpsnet:d=1,3,3,10,10;w=8,24,64,160,160;r=1,0.25;h=fusion/opt=sgd/init=random",
        ),
        ("mobilenetv2_050", "6505bb3bdf8a", "mobilenetv2:m=0.5"),
        ("mobilenetv2:m=1;h=denseclip/opt=sgd", "0f244f472e4f", "mobilenetv2:m=1;h=denseclip/opt=sgd"),
        (
            "lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25;c=7;h=fusion/dim=96/layers=2/opt=sgd/init=random",
            "bf8a7b17a8da",
            "lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25;c=7;h=fusion/dim=96/layers=2/opt=sgd/init=random",
        ),
        ("mobilenetv2:m=0.35;c=5;h=denseclip/opt=sgd", "f609d6b32d52", "mobilenetv2:m=0.35;c=5;h=denseclip/opt=sgd"),
        # Today's recipe (AdamW for the transformer parts, DenseCLIP start) is another trained network.
        ("lpsnet_l+fusion", "f1946e9fa1ba", "lpsnet:d=1,3,3,10,10;w=8,24,64,160,160;r=1,0.25;h=fusion"),
        ("mobilenetv2_100+denseclip", "8d2606bafff7", "mobilenetv2:m=1;h=denseclip"),
        (
            "lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25;c=7;h=fusion/dim=96/layers=2",
            "f318c51b7f1a",
            "lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25;c=7;h=fusion/dim=96/layers=2",
        ),
    ],
)
def test_arch_hashes_and_inline_are_pinned(spec, arch_hash, inline):
    a = resolve_arch(spec)
    assert a.arch_hash() == arch_hash
    assert a.inline() == inline
    assert resolve_arch(inline) == a


def test_to_dict_is_pinned():
    assert get_arch("mobilenetv2_050").to_json(indent=None) == (
        '{"family": "mobilenetv2", "width_mult": 0.5, "num_classes": 19}'
    )
    assert get_arch("lpsnet_m").to_json(indent=None) == (
        '{"family": "lpsnet", "depth": [1, 3, 3, 10, 10], "width": [8, 24, 48, 96, 96], '
        '"resolution": [1.0, 0.25], "num_classes": 19}'
    )
    assert resolve_arch("mobilenetv2:m=0.35;c=5;h=denseclip/opt=sgd").to_json(indent=None) == (
        '{"family": "mobilenetv2", "width_mult": 0.35, "num_classes": 5, "head": {"kind": "denseclip", '
        '"text_encoder": "minilm", "templates": ["a photo of a {}.", "a photo of the {}.", '
        '"there is a {} in the scene.", "a cropped photo of a {}."]}}'
    )
    assert resolve_arch("mobilenetv2:m=0.35;c=5;h=denseclip").to_json(indent=None) == (
        '{"family": "mobilenetv2", "width_mult": 0.35, "num_classes": 5, "head": {"kind": "denseclip", '
        '"text_encoder": "minilm", "templates": ["a photo of a {}.", "a photo of the {}.", '
        '"there is a {} in the scene.", "a cropped photo of a {}."], "optimizer": "adamw", "lr": 0.001, '
        '"weight_decay": 0.0001, "warmup": 0.1}}'
    )
