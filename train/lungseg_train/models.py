"""The three architectures of the report: Swin-UNet, UNETR (2D), ResNet50-UNet.

Contract of every model: input NCHW float32, 1 channel, HU window (-600/1500)
mapped onto [0,1]; output logits [N,1,H,W] at the input size. Every op used
here exports to ONNX opset 17 exactly (no Resize/Upsample: upsampling is
done with transposed convolutions or pixel rearrangement; attention is
written out with matmul and softmax).

Each family has a full variant (the report's sizes) and a compact one that
fits the 25 MB model budget; `build(name)` makes either. Parameters and
FLOPs are reported by `describe(name)`.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch per sample while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


# ---------------------------------------------------------------------------
# Swin-UNet (Cao et al. 2021, on Swin Transformer, Liu et al. 2021)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B,H,W,C] -> [B*nW, ws*ws, C]."""
    _, h, w, c = x.shape
    x = x.reshape(-1, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """[B*nW, ws*ws, C] -> [B,H,W,C]."""
    c = x.shape[-1]
    x = x.reshape(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with relative position bias."""

    def __init__(self, dim: int, window: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.dim, self.window, self.heads = dim, window, heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.rel_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
        flat = coords.flatten(1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0) + (window - 1)
        index = rel[..., 0] * (2 * window - 1) + rel[..., 1]
        self.register_buffer("rel_index", index.reshape(-1), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        _trunc_normal_(self.rel_bias)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1))
        bias = self.rel_bias[self.rel_index].reshape(n, n, self.heads).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(-1, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.reshape(-1, self.heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = torch.matmul(attn, v).transpose(1, 2).reshape(-1, n, c)
        return self.proj_drop(self.proj(x))


class SwinBlock(nn.Module):
    """LayerNorm -> (shifted) window attention -> residual; LayerNorm -> MLP -> residual."""

    def __init__(self, dim: int, res: Tuple[int, int], heads: int, window: int, shift: int,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.dim, self.res = dim, res
        if min(res) <= window:  # one window covers the map: no shift (as in Swin)
            window, shift = min(res), 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift > 0:
            h, w = res
            img = torch.zeros(1, h, w, 1)
            cnt = 0
            for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                for wsl in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                    img[:, hs, wsl, :] = cnt
                    cnt += 1
            mw = window_partition(img, window).squeeze(-1)
            mask = mw.unsqueeze(1) - mw.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
            self.register_buffer("attn_mask", mask, persistent=False)
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.res
        c = self.dim
        shortcut = x
        x = self.norm1(x).reshape(-1, h, w, c)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = window_partition(x, self.window)
        mask = self.attn_mask.to(win.dtype) if self.attn_mask is not None else None
        win = self.attn(win, mask)
        x = window_reverse(win, self.window, h, w)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(-1, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """[B, H*W, C] -> [B, H/2*W/2, 2C]: 2x2 neighbours concatenated, LayerNorm, linear."""

    def __init__(self, res: Tuple[int, int], dim: int):
        super().__init__()
        self.res, self.dim = res, dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        h, w = self.res
        x = x.reshape(-1, h, w, self.dim)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = x.reshape(-1, (h // 2) * (w // 2), 4 * self.dim)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """[B, H*W, C] -> [B, (sH)*(sW), C*s*s/expand_out]: linear, pixel rearrangement, LayerNorm.

    scale 2 halves the channels (Swin-UNet's patch expanding); scale 4 keeps
    them (the final x4 expanding).
    """

    def __init__(self, res: Tuple[int, int], dim: int, scale: int = 2):
        super().__init__()
        self.res, self.dim, self.scale = res, dim, scale
        self.out_dim = dim // 2 if scale == 2 else dim
        self.expand = nn.Linear(dim, self.out_dim * scale * scale, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x):
        h, w = self.res
        s, c = self.scale, self.out_dim
        x = self.expand(x).reshape(-1, h, w, s, s, c)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h * s * w * s, c)
        return self.norm(x)


class SwinUNet(nn.Module):
    def __init__(self, img_size: int = 256, patch: int = 4, embed: int = 96,
                 depths: Sequence[int] = (2, 2, 2, 2), heads: Sequence[int] = (3, 6, 12, 24),
                 window: int = 8, mlp_ratio: float = 4.0, drop_path: float = 0.1, in_ch: int = 1):
        super().__init__()
        self.config = dict(img_size=img_size, patch=patch, embed=embed, depths=list(depths),
                           heads=list(heads), window=window, mlp_ratio=mlp_ratio, drop_path=drop_path)
        nl = len(depths)
        self.nl = nl
        r0 = img_size // patch
        self.patch_embed = nn.Conv2d(in_ch, embed, patch, patch)
        self.embed_norm = nn.LayerNorm(embed)
        dpr = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.enc, self.merge = nn.ModuleList(), nn.ModuleList()
        for i in range(nl):
            dim, r = embed * 2 ** i, r0 // 2 ** i
            blocks = [SwinBlock(dim, (r, r), heads[i], window, 0 if j % 2 == 0 else window // 2,
                                mlp_ratio, dpr[sum(depths[:i]) + j]) for j in range(depths[i])]
            self.enc.append(nn.Sequential(*blocks))
            self.merge.append(PatchMerging((r, r), dim) if i < nl - 1 else nn.Identity())
        self.norm = nn.LayerNorm(embed * 2 ** (nl - 1))
        # decoder: stage nl-1 output is the bottleneck; expand and fuse skips
        self.up, self.concat, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for k in range(nl - 1):
            i = nl - 1 - k  # resolution level the expansion starts from
            dim, r = embed * 2 ** i, r0 // 2 ** i
            self.up.append(PatchExpand((r, r), dim, 2))
            j = i - 1  # level after expansion
            dj, rj = embed * 2 ** j, r0 // 2 ** j
            self.concat.append(nn.Linear(2 * dj, dj))
            self.dec.append(nn.Sequential(*[SwinBlock(dj, (rj, rj), heads[j], window,
                                                      0 if b % 2 == 0 else window // 2, mlp_ratio,
                                                      dpr[sum(depths[:j]) + b]) for b in range(depths[j])]))
        self.norm_up = nn.LayerNorm(embed)
        self.final_expand = PatchExpand((r0, r0), embed, patch)
        self.head = nn.Conv2d(embed, 1, 1)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            _trunc_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        size = x.shape[-1]
        r0 = self.config["img_size"] // self.config["patch"]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = self.embed_norm(x)
        skips = []
        for i in range(self.nl):
            skips.append(x)  # the input of each stage, as in Swin-UNet
            x = self.merge[i](self.enc[i](x))
        x = self.norm(x)
        for k in range(self.nl - 1):
            x = self.up[k](x)
            x = torch.cat([x, skips[self.nl - 2 - k]], dim=-1)
            x = self.dec[k](self.concat[k](x))
        x = self.norm_up(x)
        x = self.final_expand(x)  # [B, (r0*p)^2, C]
        e = self.config["embed"]
        x = x.reshape(-1, size, size, e).permute(0, 3, 1, 2)
        return self.head(x)


# ---------------------------------------------------------------------------
# UNETR (Hatamizadeh et al. 2022), 2D


class ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int, drop: float = 0.0):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)
        x = torch.matmul(self.drop(attn), v).transpose(1, 2).reshape(-1, n, c)
        return self.proj(x)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ViTAttention(dim, heads, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp, drop)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d (affine, no running statistics) with its mean and
    variance taken row by row, then over the rows: the same parameters and
    maths, but exported as two ReduceMean steps of at most a few hundred
    elements each, so ONNX Runtime's float32 sums over a 256x256 plane stay
    as accurate as PyTorch's."""

    def forward(self, x):
        mu = x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
        d = x - mu
        var = (d * d).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
        y = d / torch.sqrt(var + self.eps)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ResBlock(nn.Module):
    """MONAI's UnetResBlock in 2D: conv-IN-lrelu-conv-IN (+ 1x1 projection) -> lrelu."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.norm1 = InstanceNorm2d(cout, affine=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = InstanceNorm2d(cout, affine=True)
        self.act = nn.LeakyReLU(0.01)
        self.proj = None
        if cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), InstanceNorm2d(cout, affine=True))

    def forward(self, x):
        r = x if self.proj is None else self.proj(x)
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + r)


class PrUpBlock(nn.Module):
    """UNETR's projection-upsampling of a ViT feature: (1 + n) x [transposed conv x2 (+ res block)]."""

    def __init__(self, cin: int, cout: int, n: int):
        super().__init__()
        self.init = nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)
        self.blocks = nn.ModuleList([nn.Sequential(nn.ConvTranspose2d(cout, cout, 2, 2, bias=False),
                                                   ResBlock(cout, cout)) for _ in range(n)])

    def forward(self, x):
        x = self.init(x)
        for b in self.blocks:
            x = b(x)
        return x


class UpBlock(nn.Module):
    """Transposed conv x2, concatenate the skip, res block."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)
        self.block = ResBlock(2 * cout, cout)

    def forward(self, x, skip):
        return self.block(torch.cat([self.up(x), skip], dim=1))


class UNETR(nn.Module):
    def __init__(self, img_size: int = 256, patch: int = 16, hidden: int = 768, depth: int = 12,
                 heads: int = 12, mlp: int = 3072, taps: Sequence[int] = (3, 6, 9, 12),
                 feature: int = 16, drop: float = 0.0, in_ch: int = 1):
        super().__init__()
        if patch != 16:
            raise ValueError("UNETR decoder assumes patch 16 (4 upsamplings)")
        if len(taps) != 4 or taps[-1] != depth:
            raise ValueError("taps must be 4 layer numbers ending with depth")
        self.config = dict(img_size=img_size, patch=patch, hidden=hidden, depth=depth, heads=heads,
                           mlp=mlp, taps=list(taps), feature=feature)
        self.grid = img_size // patch
        self.taps = [t - 1 for t in taps]
        self.patch_embed = nn.Conv2d(in_ch, hidden, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, hidden))
        self.drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList([ViTBlock(hidden, heads, mlp, drop) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden)
        f = feature
        self.encoder1 = ResBlock(in_ch, f)
        self.encoder2 = PrUpBlock(hidden, 2 * f, 2)
        self.encoder3 = PrUpBlock(hidden, 4 * f, 1)
        self.encoder4 = PrUpBlock(hidden, 8 * f, 0)
        self.decoder5 = UpBlock(hidden, 8 * f)
        self.decoder4 = UpBlock(8 * f, 4 * f)
        self.decoder3 = UpBlock(4 * f, 2 * f)
        self.decoder2 = UpBlock(2 * f, f)
        self.head = nn.Conv2d(f, 1, 1)
        _trunc_normal_(self.pos)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _tokens_to_map(self, x):
        c = x.shape[-1]
        return x.transpose(1, 2).reshape(-1, c, self.grid, self.grid)

    def forward(self, x_in):
        x = self.patch_embed(x_in).flatten(2).transpose(1, 2)
        x = self.drop(x + self.pos)
        feats = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.taps[:3]:
                feats.append(x)
        x = self.norm(x)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self._tokens_to_map(feats[0]))
        enc3 = self.encoder3(self._tokens_to_map(feats[1]))
        enc4 = self.encoder4(self._tokens_to_map(feats[2]))
        d = self.decoder5(self._tokens_to_map(x), enc4)
        d = self.decoder4(d, enc3)
        d = self.decoder3(d, enc2)
        d = self.decoder2(d, enc1)
        return self.head(d)


# ---------------------------------------------------------------------------
# ResNet50-UNet


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.body(x)


class UNetUp(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, 2)
        self.block = ConvBlock(cout + cskip, cout)

    def forward(self, x, skip):
        return self.block(torch.cat([self.up(x), skip], dim=1))


def _resnet_init(net: nn.Module) -> None:
    """torchvision's ResNet initialisation, re-applied after layers are replaced."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def resnet_encoder(width: int = 64, layers: Sequence[int] = (3, 4, 6, 3), in_ch: int = 1) -> nn.Module:
    """torchvision's ResNet with Bottleneck blocks; width 64 is resnet50 itself.

    width < 64 rebuilds the stem and the four stages with planes
    (w, 2w, 4w, 8w), so the stage outputs are (4w, 8w, 16w, 32w): the
    ResNet-50 layout at reduced width. conv1 takes `in_ch` channels.
    """
    from torchvision.models import resnet
    if width == 64 and list(layers) == [3, 4, 6, 3]:
        net = resnet.resnet50(weights=None)
    else:
        net = resnet.ResNet(resnet.Bottleneck, list(layers))
    net.conv1 = nn.Conv2d(in_ch, width, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    if width != 64:
        net.inplanes = width
        net.layer1 = net._make_layer(resnet.Bottleneck, width, layers[0])
        net.layer2 = net._make_layer(resnet.Bottleneck, 2 * width, layers[1], stride=2)
        net.layer3 = net._make_layer(resnet.Bottleneck, 4 * width, layers[2], stride=2)
        net.layer4 = net._make_layer(resnet.Bottleneck, 8 * width, layers[3], stride=2)
    net.fc = nn.Identity()
    _resnet_init(net)
    return net


class ResNetUNet(nn.Module):
    """ResNet (Bottleneck) encoder with a U-Net decoder.

    Skips at every stage: stem (1/2), layer1 (1/4), layer2 (1/8), layer3
    (1/16); layer4 (1/32) is the bottleneck; plus a full-resolution skip from
    a small conv block on the input, so 1-2 px nodule borders are not lost.
    """

    def __init__(self, width: int = 64, decoder: Sequence[int] = (256, 128, 64, 32, 16), in_ch: int = 1):
        super().__init__()
        self.config = dict(width=width, layers=[3, 4, 6, 3], decoder=list(decoder))
        self.encoder = resnet_encoder(width, (3, 4, 6, 3), in_ch)
        e = [width, 4 * width, 8 * width, 16 * width, 32 * width]  # stem, layer1..layer4
        d = list(decoder)
        self.full = ConvBlock(in_ch, d[4])
        self.up4 = UNetUp(e[4], e[3], d[0])  # 1/32 -> 1/16
        self.up3 = UNetUp(d[0], e[2], d[1])  # -> 1/8
        self.up2 = UNetUp(d[1], e[1], d[2])  # -> 1/4
        self.up1 = UNetUp(d[2], e[0], d[3])  # -> 1/2
        self.up0 = UNetUp(d[3], d[4], d[4])  # -> 1/1
        self.head = nn.Conv2d(d[4], 1, 1)
        for m in [self.full, self.up4, self.up3, self.up2, self.up1, self.up0]:
            _resnet_init(m)

    def load_encoder_weights(self, path: str) -> Dict[str, List[str]]:
        """Loads a local torchvision resnet50 state_dict (no download).

        conv1's RGB kernels are summed into one input channel; fc is dropped.
        """
        sd = torch.load(path, map_location="cpu")
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        w = sd.get("conv1.weight")
        if w is not None and w.shape[1] != self.encoder.conv1.weight.shape[1]:
            sd["conv1.weight"] = w.sum(dim=1, keepdim=True)
        res = self.encoder.load_state_dict(sd, strict=False)
        return {"missing": list(res.missing_keys), "unexpected": list(res.unexpected_keys)}

    def forward(self, x):
        n = self.encoder
        f0 = n.relu(n.bn1(n.conv1(x)))  # 1/2
        f1 = n.layer1(n.maxpool(f0))  # 1/4
        f2 = n.layer2(f1)  # 1/8
        f3 = n.layer3(f2)  # 1/16
        f4 = n.layer4(f3)  # 1/32
        d = self.up4(f4, f3)
        d = self.up3(d, f2)
        d = self.up2(d, f1)
        d = self.up1(d, f0)
        d = self.up0(d, self.full(x))
        return self.head(d)


# ---------------------------------------------------------------------------
# Registry

SPECS: Dict[str, Dict[str, object]] = {
    "swin-unet": dict(family="swin-unet", variant="full", kw=dict(embed=96, depths=(2, 2, 2, 2), heads=(3, 6, 12, 24), window=8),
                      text="Swin-UNet: patch 4, embedding 96, depths [2,2,2,2], heads [3,6,12,24], window 8, "
                           "W-MSA/SW-MSA with relative position bias, patch merging to 1/32 and patch expanding back, skips."),
    "swin-unet-small": dict(family="swin-unet", variant="compact", kw=dict(embed=32, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=8),
                            text="Compact Swin-UNet: patch 4, embedding 32, depths [2,2,2,2], heads [1,2,4,8] (head dim 32), window 8; "
                                 "same layout as the full model."),
    "unetr": dict(family="unetr", variant="full", kw=dict(hidden=768, depth=12, heads=12, mlp=3072, taps=(3, 6, 9, 12), feature=16),
                  text="UNETR (2D): ViT patch 16, hidden 768, 12 layers, 12 heads, MLP 3072; layers 3/6/9/12 feed "
                       "deconvolution blocks of a U-Net-like decoder (feature size 16)."),
    "unetr-small": dict(family="unetr", variant="compact", kw=dict(hidden=192, depth=8, heads=3, mlp=768, taps=(2, 4, 6, 8), feature=16),
                        text="Compact UNETR (2D): ViT patch 16, hidden 192, 8 layers, 3 heads, MLP 768; layers 2/4/6/8 feed "
                             "the same decoder (feature size 16)."),
    "resnet50-unet": dict(family="resnet50-unet", variant="full", kw=dict(width=64, decoder=(256, 128, 64, 32, 16)),
                          text="ResNet50-UNet: torchvision resnet50 encoder (1-channel conv1) with a U-Net decoder, skips at "
                               "stem and layer1-3, layer4 as bottleneck, plus a full-resolution skip."),
    "resnet50-unet-small": dict(family="resnet50-unet", variant="compact", kw=dict(width=16, decoder=(128, 64, 32, 24, 16)),
                                text="Compact ResNet50-UNet: the ResNet-50 Bottleneck layout [3,4,6,3] built with torchvision's "
                                     "ResNet class at one-quarter width (planes 16/32/64/128, stage outputs 64/128/256/512), "
                                     "U-Net decoder 128/64/32/24/16 with the same skips."),
}

MODEL_NAMES = list(SPECS)
HEAD_BIAS = -4.6
COMPACT = [n for n in MODEL_NAMES if SPECS[n]["variant"] == "compact"]
FULL = [n for n in MODEL_NAMES if SPECS[n]["variant"] == "full"]


def build(name: str, img_size: int = 256) -> nn.Module:
    if name not in SPECS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    s = SPECS[name]
    kw = dict(s["kw"])
    if s["family"] == "swin-unet":
        m = SwinUNet(img_size=img_size, drop_path=0.1 if s["variant"] == "full" else 0.05, **kw)
    elif s["family"] == "unetr":
        m = UNETR(img_size=img_size, **kw)
    else:
        m = ResNetUNet(**kw)
    # prior on the output: nodule pixels are ~0.1-1 % of a slice, so start at
    # sigmoid(-4.6) = 1 % instead of 50 % (the loss then works on the nodules
    # from the first steps instead of first unlearning the background)
    nn.init.constant_(m.head.bias, HEAD_BIAS)
    m.lungseg_name = name
    return m


def count_parameters(m: nn.Module) -> int:
    return int(sum(p.numel() for p in m.parameters()))


def count_flops(m: nn.Module, size: int = 256) -> int:
    """Rough FLOPs (2 x multiply-adds) of one forward pass of one image.

    Counts convolutions, transposed convolutions, linear layers and the two
    attention matmuls; ignores norms, activations and softmax.
    """
    total = [0]

    def conv(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total[0] += 2 * out.numel() * (mod.in_channels // mod.groups) * k

    def tconv(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total[0] += 2 * inp[0].numel() * (mod.out_channels // mod.groups) * k

    def lin(mod, inp, out):
        total[0] += 2 * out.numel() * mod.in_features

    def attn(mod, inp, out):
        x = inp[0]
        bw, n, c = x.shape
        total[0] += 2 * 2 * bw * n * n * c

    hooks = []
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv))
        elif isinstance(mod, nn.ConvTranspose2d):
            hooks.append(mod.register_forward_hook(tconv))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(lin))
        elif isinstance(mod, (WindowAttention, ViTAttention)):
            hooks.append(mod.register_forward_hook(attn))
    was = m.training
    m.eval()
    try:
        with torch.no_grad():
            p = next(m.parameters())
            m(torch.zeros(1, 1, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        m.train(was)
    return int(total[0])


def describe(name: str) -> Dict[str, object]:
    m = build(name)
    s = SPECS[name]
    return {"name": name, "architecture": s["family"], "variant": s["variant"],
            "parameters": count_parameters(m), "flops": count_flops(m), "text": s["text"]}
