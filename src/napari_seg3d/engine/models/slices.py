"""2D networks applied to volumes slice by slice: the multi-axis 2.5D approach of
volume-segmantics.

A :class:`SliceNetwork` wraps a 2D network (a :class:`~.unet.UNet` or a variant built with
``spatial_dims=2``) and takes ``(B, C, Z, Y, X)`` windows like a 3D network, so training,
sliding-window prediction, blocks, streaming and the model file treat it as any other network:

- a window one voxel thick along an axis is a stack of 2D slices along that axis: training slices
  (``(B, C, 1, y, x)``) and images with a single z-slice go through the 2D network once, and the
  logits come back unchanged;
- any other window is cut into slices along the axes of :attr:`SliceNetwork.planes` (``"fast"``:
  z; ``"three"``: z, y and x; ``"best"``: z, y and x, each with the four 90-degree in-plane
  rotations), and the class probabilities of all passes are averaged. The result is returned as
  logits of the averaged probabilities (their logarithm for softmax; the logit for one sigmoid
  channel), so the softmax or sigmoid of inference gives back the average exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import PLANES

_PASSES = {"fast": ((0,), 1), "three": ((0, 1, 2), 1), "best": ((0, 1, 2), 4)}
_EPS = 1e-7


def passes(planes: str) -> tuple[tuple[int, ...], int]:
    """The slicing axes (0 = z, 1 = y, 2 = x) and the number of in-plane rotations of a mode."""
    try:
        return _PASSES[planes]
    except KeyError:
        raise ValueError(f"Unknown planes {planes!r}; choose one of {', '.join(PLANES)}.") from None


class SliceNetwork(nn.Module):
    """A 2D network that segments ``(B, C, Z, Y, X)`` windows along one or three axes.

    Args:
        net: a 2D network mapping ``(N, C, H, W)`` to logits ``(N, K, H, W)``.
        planes: see :data:`PLANES`: how it predicts when called as it is (it is not saved in
            the weights). To predict along other planes, use :meth:`with_planes`, which leaves
            this network unchanged.
    """

    def __init__(self, net: nn.Module, planes: str = "three") -> None:
        super().__init__()
        if getattr(net, "spatial_dims", 2) != 2:
            raise ValueError("SliceNetwork wraps a 2D network (spatial_dims=2).")
        self.net = net
        self.spatial_dims = 3  # what the wrapper takes, like a 3D network
        self.in_channels = net.in_channels
        self.out_channels = net.out_channels
        self.planes = planes

    @property
    def planes(self) -> str:
        return self._planes

    @planes.setter
    def planes(self, value: str) -> None:
        passes(value)
        self._planes = value

    def with_planes(self, planes: str) -> SliceNetwork:
        """This network predicting along ``planes``: itself when they are its own, else a light
        view that shares its 2D network (the same weights, device and mode) and leaves this one
        unchanged, so two predictions of one model along different planes never interfere."""
        if planes == self.planes:
            return self
        view = SliceNetwork(self.net, planes)
        view.training = self.training  # the wrapper's own flag; the 2D network is shared
        return view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, Z, Y, X)`` of windows ``(B, C, Z, Y, X)``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"SliceNetwork expects input of shape (B, C, Z, Y, X) with "
                             f"C={self.in_channels}, got shape {tuple(x.shape)}.")
        axes, rotations = passes(self.planes)
        thin = [a for a in range(3) if x.shape[2 + a] == 1]
        if thin:  # a stack of 2D slices: its own plane only
            axes = (thin[0],)
        if self.training:
            rotations = 1
        if len(axes) == 1 and rotations == 1:
            return along_axis(self.net, x, axes[0], 0)
        total = None
        for axis in axes:
            for k in range(rotations):
                probs = self._activate(along_axis(self.net, x, axis, k).float())
                total = probs if total is None else total.add_(probs)
        mean = total.div_(len(axes) * rotations).clamp_(_EPS, 1 - _EPS)
        return torch.logit(mean) if self.out_channels == 1 else mean.log()

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.out_channels == 1 else torch.softmax(logits, 1)


def with_planes(network: nn.Module, planes: str | None) -> nn.Module:
    """``network`` predicting along ``planes`` (see :meth:`SliceNetwork.with_planes`); None:
    the network as it is.

    Raises:
        ValueError: ``planes`` for a network that is not a :class:`SliceNetwork` (a 3D one).
    """
    if planes is None:
        return network
    if not isinstance(network, SliceNetwork):
        raise ValueError("Planes (fast, three, best) apply to 2D (2.5D) models only; this model "
                         "is a 3D network.")
    return network.with_planes(planes)


def along_axis(net: nn.Module, x: torch.Tensor, axis: int, rotation: int = 0) -> torch.Tensor:
    """Apply a 2D ``net`` to every slice of ``x`` ``(B, C, Z, Y, X)`` along spatial ``axis``
    (0, 1 or 2), each slice rotated by ``rotation`` quarter turns in its plane and turned back.

    Returns:
        Logits ``(B, K, Z, Y, X)``.
    """
    b, c = x.shape[:2]
    moved = x.movedim(2 + axis, 1)  # (B, S, C, P, Q): the slices along `axis`
    s, p, q = moved.shape[1], moved.shape[3], moved.shape[4]
    slices = moved.reshape(b * s, c, p, q)
    if rotation:
        slices = torch.rot90(slices, rotation, (2, 3))
    logits = net(slices)
    if rotation:
        logits = torch.rot90(logits, -rotation, (2, 3))
    k = logits.shape[1]
    return logits.reshape(b, s, k, p, q).movedim(1, 2 + axis)
