"""Capture (or inject) cross-attention queries and outputs with diffusers attention processors.

Behaviour is swapped in by composition: every `attn2` layer of the frozen UNet gets a stateless
CaptureProcessor; self-attention layers keep their own processors. The model is never edited. What a
call records lives in a Recording owned by that call (`with recording() as rec: unet(...)`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from iap.errors import IapError
from iap.models.compat import SUPPORTED


@dataclass
class Recording:
    """What one UNet call captures: each cross-attention layer's queries and outputs; optionally the
    queries to use instead of the layer's own (injection)."""

    inject: dict[str, torch.Tensor] | None = None
    queries: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


# The recording of the UNet call in progress, per thread / task: concurrent calls on one UNet (mapped
# precompute shards on threads) never see each other's tensors, and the processors hold no state.
_CURRENT: ContextVar[Recording | None] = ContextVar("iap_recording", default=None)


@contextmanager
def recording(inject: dict[str, torch.Tensor] | None = None) -> Iterator[Recording]:
    """Capture the cross-attention layers of the UNet calls made inside this block (this thread only)."""
    rec = Recording(inject)
    token = _CURRENT.set(rec)
    try:
        yield rec
    finally:
        _CURRENT.reset(token)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def attend(attn: Attention, queries: torch.Tensor, context: torch.Tensor,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's attention output for given projected queries over `context`, through its frozen
    to_k / to_v / to_out. queries: (B, N, inner); context: (B, S, D) -> (B, N, out_dim)."""
    dtype = attn.to_k.weight.dtype
    q = _split_heads(queries.to(dtype), attn.heads)
    k = _split_heads(attn.to_k(context.to(dtype)), attn.heads)
    v = _split_heads(attn.to_v(context.to(dtype)), attn.heads)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    o = o.transpose(1, 2).flatten(2)
    return attn.to_out[1](attn.to_out[0](o))


class CaptureProcessor:
    """Equivalent to diffusers' AttnProcessor2_0 for SD cross-attention, plus recording/injection into
    the current call's Recording (none outside a `recording()` block: then it is the stock layer)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        rec = _CURRENT.get()
        if rec is not None and rec.inject is not None:
            q = rec.inject[self.name]
        else:
            q = attn.to_q(hidden_states)
        mask = None
        if attention_mask is not None:
            batch, seq = encoder_hidden_states.shape[0], encoder_hidden_states.shape[1]
            mask = attn.prepare_attention_mask(attention_mask, seq, batch).view(batch, attn.heads, -1, seq)
        o = attend(attn, q, encoder_hidden_states, mask)
        if rec is not None:
            rec.queries[self.name] = q
            rec.outputs[self.name] = o
        return o


def cross_attention_layers(unet: torch.nn.Module) -> dict[str, Attention]:
    """The UNet's cross-attention layers by module name (module order, not execution order)."""
    names = [k.removesuffix(".processor") for k in unet.attn_processors if k.endswith("attn2.processor")]
    layers = {name: unet.get_submodule(name) for name in names}
    for name, attn in layers.items():
        unsupported = [a for a in ("group_norm", "spatial_norm", "norm_cross", "norm_q", "norm_k")
                       if getattr(attn, a, None) is not None]
        if unsupported or attn.residual_connection or attn.rescale_output_factor != 1.0:
            raise IapError(f"cross-attention layer {name} uses {unsupported or 'a residual/rescale'}, "
                           "which IAP's capture processor does not support (SD 1.x/2.x layers do not)")
    if not layers:
        raise IapError(f"the UNet has no cross-attention layers (attn2): it is not a text-conditioned model. "
                       f"iap supports {SUPPORTED}")
    return layers


def install_capture(unet: torch.nn.Module) -> dict[str, Attention]:
    """Give every attn2 layer a CaptureProcessor; other layers keep theirs. Idempotent."""
    layers = cross_attention_layers(unet)
    current = unet.attn_processors
    if sum(isinstance(p, CaptureProcessor) for p in current.values()) == len(layers):
        return layers
    processors = {key: CaptureProcessor(key.removesuffix(".processor"))
                  if key.removesuffix(".processor") in layers else proc for key, proc in current.items()}
    unet.set_attn_processor(processors)
    return layers
