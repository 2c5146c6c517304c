"""The ``fusion`` head, in its train form (:class:`FusionHead`) and its deploy form (:class:`FusionDeployHead`).

Our reading of "CLIP for Lightweight Semantic Segmentation" (Jin and Yang, arXiv 2310.07394), whose
abstract alone is public: "a parallel design of CNN and transformer with a two-way bridge in
between". The paper's layer details are not published; what we chose: the visual map and the class
tokens are projected to a common width; each of ``layers`` layers runs a conv branch on the map
(depthwise 3x3 + pointwise, residual: spatial context) in parallel with a transformer branch on the
K class tokens (self-attention + MLP, pre-norm), then the two-way bridge: pixels -> text
cross-attention updates the class tokens from the image, and text -> pixels cross-attention injects
the classes into every pixel. The logits are the pixel-text score map between the fused pixels and
the fused tokens (plus the tokens before fusion, so the text embeddings keep their say). An optional
auxiliary loss scores the map before fusion against the projected text embeddings.

The deploy form computes the same logits with fewer, larger operations (see
:class:`FusionDeployHead` for what is folded and what stays per image).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .heads import FUSION_PARTS, HeadConfig, HeadError, LanguageHead, register_head

__all__ = ["FusionDeployHead", "FusionHead", "FusionLayer"]


class _Attention(nn.Module):
    """Multi-head attention as plain matmul and softmax (exports to ONNX at any opset we use)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, nq, d = query.shape
        nk = context.shape[1]
        h = self.heads
        q = self.q(query).reshape(b, nq, h, d // h).transpose(1, 2)
        k = self.k(context).reshape(b, nk, h, d // h).transpose(1, 2)
        v = self.v(context).reshape(b, nk, h, d // h).transpose(1, 2)
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (d // h) ** -0.5, dim=-1)
        return self.out(torch.matmul(attn, v).transpose(1, 2).reshape(b, nq, d))


class FusionLayer(nn.Module):
    """Conv branch (visual map) and transformer branch (class tokens) in parallel, then the two-way bridge."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 1, 1, 0, bias=False),
            nn.BatchNorm2d(dim),
        )
        self.text_norm1 = nn.LayerNorm(dim)
        self.text_self = _Attention(dim, heads)
        self.text_norm2 = nn.LayerNorm(dim)
        self.text_mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        self.to_text_q = nn.LayerNorm(dim)
        self.to_text_kv = nn.LayerNorm(dim)
        self.to_text = _Attention(dim, heads)
        self.to_pixels_q = nn.LayerNorm(dim)
        self.to_pixels_kv = nn.LayerNorm(dim)
        self.to_pixels = _Attention(dim, heads)

    def text_branch(self, t: torch.Tensor) -> torch.Tensor:
        """The class tokens' transformer branch: self-attention then MLP, pre-norm, residual."""
        n = self.text_norm1(t)
        t = t + self.text_self(n, n)
        return t + self.text_mlp(self.text_norm2(t))

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, d, h, w = v.shape
        v = F.relu(v + self.conv(v))
        t = self.text_branch(t)
        tokens = v.flatten(2).transpose(1, 2)
        t = t + self.to_text(self.to_text_q(t), self.to_text_kv(tokens))
        tokens = tokens + self.to_pixels(self.to_pixels_q(tokens), self.to_pixels_kv(t))
        return tokens.transpose(1, 2).reshape(b, d, h, w), t


@register_head("fusion")
class FusionHead(LanguageHead):
    """The two-way fusion module (see the module docstring for what the paper leaves open)."""

    def __init__(self, config: HeadConfig, in_channels: int, text_dim: int, num_classes: int) -> None:
        super().__init__(config, in_channels, text_dim, num_classes)
        dim = config.dim
        self.visual_in = nn.Sequential(
            nn.Conv2d(in_channels, dim, 1, 1, 0, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
        )
        self.text_in = nn.Linear(text_dim, dim)
        self.layers = nn.ModuleList(FusionLayer(dim, config.heads) for _ in range(config.layers))
        self.pixel_out = nn.Conv2d(dim, dim, 1, 1, 0, bias=True)
        self.text_out = nn.Linear(dim, dim)
        self.aux_pixel = nn.Conv2d(dim, dim, 1, 1, 0, bias=True) if config.has_aux else None
        if config.init == "denseclip":
            self.start_as_denseclip()
        for part in config.ablate:
            self.switch_off(part)

    @torch.no_grad()
    def switch_off(self, part: str) -> None:
        """Fix ``part``'s output projection at zero in every layer (an ablation; see ``HeadConfig.ablate``).

        ``text_self``: the class tokens' self-attention; ``to_text``: the pixels -> text bridge direction;
        ``to_pixels``: text -> pixels. The residual then adds nothing, whatever the part's other weights.
        """
        if part not in FUSION_PARTS:
            raise HeadError(f"unknown fusion part {part!r} (parts: {', '.join(FUSION_PARTS)})")
        for layer in self.layers:
            out = getattr(layer, part).out  # the parts are the layer's attribute names
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            out.requires_grad_(False)

    @torch.no_grad()
    def start_as_denseclip(self) -> None:
        """Zero every residual branch, so the head computes DenseCLIP's score map and learns what they add.

        The conv branch's last BatchNorm scale, the text self-attention's and MLP's output layers, both
        bridge directions' output projections and ``text_out`` start at zero: each layer passes the
        visual map (post-ReLU, so the ReLU after the residual is the identity) and the class tokens
        through unchanged, and the logits are the cosine between ``pixel_out(visual_in(x))`` and
        ``text_in(embeddings)``, scaled. The branches' other weights keep their random init, so the
        zeroed layers get gradients from the first step on (as ReZero/LayerScale-style residuals do).
        """
        for layer in self.layers:
            nn.init.zeros_(layer.conv[4].weight)
            for linear in (layer.text_self.out, layer.text_mlp[2], layer.to_text.out, layer.to_pixels.out):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.text_out.weight)
        nn.init.zeros_(self.text_out.bias)

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> Any:
        b = x.shape[0]
        t0 = self.text_in(self.class_embeddings).unsqueeze(0).expand(b, -1, -1)
        v0 = self.visual_in(x)
        v, t = v0, t0
        for layer in self.layers:
            v, t = layer(v, t)
        logits = self.score_map(self.pixel_out(v), self.text_out(t) + t0)
        if not return_aux:
            return logits
        aux = self.score_map(self.aux_pixel(v0), t0) if self.aux_pixel is not None else None
        return logits, aux

    def deploy_form(self) -> FusionDeployHead:
        """A :class:`FusionDeployHead` with this head's weights and classes (this head is not changed)."""
        return FusionDeployHead.from_head(self)


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    # Imported here: models.lpsnet imports the heads, so a module-level import would be circular.
    from .lpsnet import _fuse_conv_bn

    return _fuse_conv_bn(conv, bn)


def _put(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set a folded constant: a non-persistent buffer, so state dicts keep the train form's keys."""
    value = value.detach().contiguous()
    if name in module._buffers:
        module._buffers[name] = value
    else:
        module.register_buffer(name, value, persistent=False)


class _FoldedLayer(nn.Module):
    """The constants of one :class:`FusionLayer` that depend on its weights only (not on the classes).

    With ``D`` the width, ``H`` heads of width ``E = D / H`` and ``s = E ** -0.5``:

    - ``dw_w, dw_b, pw_w, pw_b``: the conv branch with its BatchNorms folded.
    - ``key_q`` (``H x E x D``): pixels -> text scores from a class token's query ``q``: head ``h``'s
      score against pixel ``x`` is ``s q_h . (W_k,h LN(x) + b)``; the part that does not depend on
      ``x`` is the same for every pixel and cancels in the softmax over pixels, so the score is
      ``(q_h key_q[h]) . norm(x)`` with ``norm`` the LayerNorm without its affine (folded in here).
    - ``val_out`` (``H x D x D``) and ``text_bias`` (``D``): the attention-weighted values times the
      output projection, so the class-token update is ``sum_h (A_h norm(x)) val_out[h] + text_bias``
      (each head's weights sum to one, so the value biases become one constant).
    - ``kv2_w, kv2_b``: text -> pixels keys and values from the class tokens, one linear.
    - ``kv2_fold`` (``2H x E x D+1``) and ``kv2_bias``: per image, the keys become the matrix that
      scores ``norm(x)`` directly (the pixels' query projection and its LayerNorm folded in, its bias
      as the last column) and the values become value times output projection (its bias split over
      the heads, whose weights each sum to one).
    """

    def __init__(self, layer: FusionLayer, heads: int) -> None:
        super().__init__()
        self.refold(layer, heads)

    @torch.no_grad()
    def refold(self, layer: FusionLayer, heads: int) -> None:
        """Fold ``layer``'s current weights (``heads`` attention heads) into this module's buffers."""
        d = layer.to_text.q.in_features
        h, e = heads, d // heads
        s = e**-0.5
        dw_w, dw_b = _fold_conv_bn(layer.conv[0], layer.conv[1])
        pw_w, pw_b = _fold_conv_bn(layer.conv[3], layer.conv[4])
        _put(self, "dw_w", dw_w)
        _put(self, "dw_b", dw_b)
        _put(self, "pw_w", pw_w.reshape(d, d))
        _put(self, "pw_b", pw_b)
        a, g1, b1 = layer.to_text, layer.to_text_kv.weight, layer.to_text_kv.bias
        _put(self, "key_q", s * (a.k.weight * g1).reshape(h, e, d))
        wv = (a.v.weight * g1).reshape(h, e, d)
        wo = a.out.weight.reshape(d, h, e).permute(1, 0, 2)  # head h: out.weight[:, h*E:(h+1)*E]
        _put(self, "val_out", torch.matmul(wo, wv).transpose(1, 2))
        _put(self, "text_bias", a.out.weight @ (a.v.weight @ b1 + a.v.bias) + a.out.bias)
        p, g2, b2 = layer.to_pixels, layer.to_pixels_q.weight, layer.to_pixels_q.bias
        _put(self, "kv2_w", torch.cat([p.k.weight, p.v.weight]))
        _put(self, "kv2_b", torch.cat([p.k.bias, p.v.bias]))
        query = torch.cat([s * p.q.weight * g2, (s * (p.q.weight @ b2 + p.q.bias)).unsqueeze(1)], dim=1)
        value = F.pad(p.out.weight.t(), (0, 1))  # no score bias column for the values
        _put(self, "kv2_fold", torch.cat([query, value]).reshape(2 * h, e, d + 1))
        bias = torch.zeros(2 * h, 1, d + 1, dtype=query.dtype, device=query.device)
        bias[h:, :, :d] = p.out.bias / h
        _put(self, "kv2_bias", bias)

    def text_query(self, layer: FusionLayer, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-image text side of the layer (for the first layer, folded once per class list).

        Args:
            layer: The layer these constants were folded from.
            t: The class tokens entering the layer, ``B x K x D``.

        Returns:
            The matrix (``B x HK x D``, head-major rows) whose product with the normalised pixels gives
            the pixels -> text scores, and the class tokens after the text branch plus the update's bias.
        """
        b, k, d = t.shape
        h, e = self.key_q.shape[:2]
        t = layer.text_branch(t)
        q = layer.to_text.q(layer.to_text_q(t)).reshape(b, k, h, e).transpose(1, 2)  # B x H x K x E
        return torch.matmul(q, self.key_q.unsqueeze(0)).reshape(b, h * k, d), t + self.text_bias


def _refold_after_load(module: nn.Module, _keys: Any) -> None:
    module.refold()  # type: ignore[operator]


class FusionDeployHead(FusionHead):
    """The deploy form of :class:`FusionHead`: the same logits (eval mode), computed with fewer, larger ops.

    Folded into constants when the class list or the weights are set (non-persistent buffers, so
    the state dict is the train form's, and ONNX export carries them as initializers):

    - Every BatchNorm (into ``visual_in``'s conv and the conv branches).
    - What depends on the class embeddings alone: the projected text ``t0`` (plus ``text_out``'s
      bias), the first layer's whole text branch (self-attention and MLP), its pixels -> text
      queries multiplied into the key projection (``query0``: the scores are one matmul on the
      normalised pixels), and the class tokens before their update (``base0``).
    - The attention projections that can be merged (see :class:`_FoldedLayer`): pixel-side
      LayerNorms (their affines go into the projections after them; the two LayerNorms on the
      pixels share one normalisation), key/query, value/output, and the biases that cancel or
      become constants.

    What stays per image, because the bridge is two-way: the class tokens are updated from each
    image (pixels -> text), so everything after that depends on the image too: the text -> pixels
    keys and values, the text output projection, and in layers after the first the text branch.
    These are ``K x D`` ops (a few microseconds each); the pixel-side work is token matmuls
    (``N x D`` by ``D x HK`` and back), one LayerNorm and two softmaxes per layer, and the conv
    branch. Pixels stay ``B x N x D`` tokens from ``visual_in`` on; the depthwise conv reads them as a
    channels-last image (a view). On the 2-core CPU we measured (AMD EPYC, torch 2.13, 2 threads) a
    token linear took 52 us where the 1x1 conv took 93 us (192 -> 64 channels, 12 x 24), the
    depthwise 3x3 42 us channels-last against 71 us NCHW, and LayerNorm on contiguous tokens 30 us
    against 74 us on the transposed NCHW view. Attention is written as matmul + softmax rather than
    ``scaled_dot_product_attention``: the folded scores are not a query-key product, so SDPA would
    need the unfolded projections back.

    Weights changed after folding (other than through ``load_state_dict``, :meth:`set_class_embeddings`
    or :meth:`refold`) are not seen: this form is for inference.
    """

    def __init__(self, config: HeadConfig, in_channels: int, text_dim: int, num_classes: int) -> None:
        super().__init__(config, in_channels, text_dim, num_classes)
        for layer in self.layers:
            if layer.to_text_kv.eps != layer.to_pixels_q.eps:
                raise HeadError("fusion deploy form: the two pixel LayerNorms of a layer must share their eps")
        self.folded = nn.ModuleList(_FoldedLayer(layer, config.heads) for layer in self.layers)
        self.refold()
        self.register_load_state_dict_post_hook(_refold_after_load)
        self.eval()

    @classmethod
    def from_head(cls, head: FusionHead) -> FusionDeployHead:
        """The deploy form of ``head`` (same weights, classes, device and dtype); ``head`` is not changed.

        Args:
            head: A trained fusion head (train or eval mode; BatchNorms use their running statistics).

        Returns:
            The new head, in eval mode.
        """
        ref = head.class_embeddings
        # The new module's random initialisation (overwritten below) must not move the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            new = cls(head.config, head.visual_in[0].in_channels, head.text_dim, head.num_classes)
        new.load_state_dict(head.state_dict())
        new.class_names = head.class_names
        new = new.to(device=ref.device, dtype=next(head.parameters()).dtype)
        new.refold()  # in the head's own dtype
        return new.eval()

    def deploy_form(self) -> FusionDeployHead:
        return self

    def set_class_embeddings(
        self, embeddings: torch.Tensor, class_names: list[str] | tuple[str, ...] | None = None
    ) -> None:
        """As :meth:`LanguageHead.set_class_embeddings`, then the class constants are folded again.

        Raises:
            HeadError: As :meth:`LanguageHead.set_class_embeddings`.
        """
        super().set_class_embeddings(embeddings, class_names)
        self.refold()

    @torch.no_grad()
    def refold(self) -> None:
        """Fold every constant again from the current weights and class embeddings."""
        for folded, layer in zip(self.folded, self.layers, strict=True):
            folded.refold(layer, self.config.heads)
        vin_w, vin_b = _fold_conv_bn(self.visual_in[0], self.visual_in[1])
        _put(self, "vin_w", vin_w.reshape(vin_w.shape[0], -1))
        _put(self, "vin_b", vin_b)
        d = self.config.dim
        _put(self, "po_w", self.pixel_out.weight.reshape(d, d))
        _put(self, "po_b", self.pixel_out.bias)
        t0 = self.text_in(self.class_embeddings)
        _put(self, "t0", t0)
        _put(self, "text_const", t0 + self.text_out.bias)
        _put(self, "scale_value", self.scale())
        query0, base0 = self.folded[0].text_query(self.layers[0], t0.unsqueeze(0))
        _put(self, "query0", query0[0])
        _put(self, "base0", base0[0])

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> Any:
        b, _, height, width = x.shape
        n, d, k = height * width, self.config.dim, self.num_classes
        h = self.config.heads
        # Pixels are B x N x D tokens throughout; as an image they are a channels-last view (no
        # copy), which is also the layout the depthwise conv runs fastest in on the CPU.
        tokens = F.relu(F.linear(x.flatten(2).transpose(1, 2), self.vin_w, self.vin_b))
        v0 = tokens
        query: torch.Tensor = self.query0
        base: torch.Tensor = self.base0
        t = base
        for i, (layer, f) in enumerate(zip(self.layers, self.folded, strict=True)):
            if i > 0:
                query, base = f.text_query(layer, t)
            v = tokens.transpose(1, 2).reshape(b, d, height, width)
            dw = F.relu(F.conv2d(v, f.dw_w, f.dw_b, padding=1, groups=d))
            tokens = F.relu(tokens + F.linear(dw.flatten(2).transpose(1, 2), f.pw_w, f.pw_b))
            xn = F.layer_norm(tokens, (d,), eps=layer.to_text_kv.eps)
            # pixels -> text: each class token's heads attend over all pixels.
            attn = torch.softmax(torch.matmul(query, xn.transpose(1, 2)), dim=-1)  # B x HK x N
            upd = torch.matmul(attn, xn).reshape(b, h, k, d).transpose(1, 2).reshape(b, k, h * d)
            t = base + torch.matmul(upd, f.val_out.reshape(h * d, d))
            # text -> pixels: every pixel attends over the (updated) class tokens, per head.
            kv = F.linear(layer.to_pixels_kv(t), f.kv2_w, f.kv2_b).reshape(b, k, 2 * h, d // h).transpose(1, 2)
            folded = torch.matmul(kv, f.kv2_fold.unsqueeze(0)) + f.kv2_bias  # B x 2H x K x D+1
            scores = folded[:, :h].reshape(b, h * k, d + 1)
            values = folded[:, h:, :, :d].reshape(b, h * k, d)
            s = torch.baddbmm(scores[:, :, d].unsqueeze(1), xn, scores[:, :, :d].transpose(1, 2))  # B x N x HK
            attn2 = torch.softmax(s.reshape(b, n, h, k), dim=-1).reshape(b, n, h * k)
            tokens = torch.baddbmm(tokens, attn2, values)
        y = F.linear(tokens, self.po_w, self.po_b)  # B x N x D
        text = F.normalize(F.linear(t, self.text_out.weight) + self.text_const, dim=-1) * self.scale_value
        norm = torch.linalg.vector_norm(y, dim=-1).clamp_min(1e-12).unsqueeze(1)
        logits = (torch.matmul(text, y.transpose(1, 2)) / norm).reshape(b, k, height, width)
        if not return_aux:
            return logits
        if self.aux_pixel is None:
            return logits, None
        return logits, self.score_map(self.aux_pixel(v0.transpose(1, 2).reshape(b, d, height, width)), self.t0)
