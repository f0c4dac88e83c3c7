"""Associative memory (``--memory-kind assoc``), after ARMT (Rodkin et al. 2024,
"Associative Recurrent Memory Transformer", arXiv 2407.04841).

Plain PyTorch, a :class:`~tarm_plugin.memory.MemoryKind`: the state carried
from segment to segment is, per layer l, an associative matrix ``A_l``
[F, d] and a normaliser ``z_l`` [F] over a feature map phi of keys: DPFP
(Schlag et al. 2021), ``F = 2 * key_dim * nu`` features, L2-normalised as in
the ARMT code. A segment is ``[tokens | m memory tokens]``; the memory tokens
are learned and the same at every segment (they only write). Before layer l
every position x reads

    q = phi(W_q x),   x <- x + (q A_l) / max(q . z_l, 1)

and after the segment the memory tokens' outputs o_j of layer l write with
the delta rule, each with a learned strength beta_j = sigmoid(w_b . o_j + b):

    k_j = phi(W_k o_j),   v_j = W_v o_j,   v'_j = (k_j A_l) / max(k_j . z_l, 1)
    A_l <- A_l + sum_j beta_j k_j^T (v_j - v'_j)
    z_l <- z_l + sum_j k_j * clamp(1 - k_j . z_l, 0, 1)

The value already stored under a key is replaced (by beta of the way), not
added to; z grows only with what a key adds that is new, so ``q . z`` counts
how many values a query's key holds (two values written under one key in one
segment read back as their mean). The ARMT code divides by ``q . z + 1e-5``;
dividing by at least 1 instead reads a key no write covered as ``q A`` rather
than amplifying it, which bounds the read by ``|A|`` for any unit query (a
guarantee for fp16, where ``+1e-5`` leaves it to the learned keys); a key
that was written reads its value exactly either way (``k . z = 1``).
``A_0 = 0``, ``z_0 = 0``: a text's first segment reads 0, and so does every
segment if nothing is written (beta = 0). The state is kept and read in
float32 whatever the model's precision.

The state of a row is one tensor [num_layers, F, d + 1] (``A`` and ``z`` side by
side), so the task's store carries, gathers and checkpoints it as any memory.
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory import MemoryKind, Option, register_memory_kind

EPS = 1e-6


def dpfp(x: Tensor, nu: int) -> Tensor:
    """Deterministic parameter-free projection (Schlag et al. 2021), L2-normalised:
    [..., k] -> [..., 2*k*nu], >= 0, unit norm (0 for x = 0)."""
    r = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    phi = torch.cat([r * torch.roll(r, shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
    return F.normalize(phi, dim=-1, eps=EPS)


def lookup(keys: Tensor, A: Tensor, z: Tensor) -> Tensor:
    """(keys A) / max(keys . z, 1): [B, T, F] against A [B, F, d], z [B, F] -> [B, T, d]."""
    return torch.bmm(keys, A) / torch.bmm(keys, z.unsqueeze(-1)).clamp_min(1.0)


def delta_write(A: Tensor, z: Tensor, keys: Tensor, values: Tensor, strength: Tensor) -> Tuple[Tensor, Tensor]:
    """The delta rule for unit keys [B, m, F], values [B, m, d], strength [B, m, 1] (float32)."""
    stored = lookup(keys, A, z)
    A = A + torch.bmm((strength * keys).transpose(1, 2), values - stored)
    new = (1.0 - torch.bmm(keys, z.unsqueeze(-1))).clamp(0.0, 1.0)
    return A, z + (keys * new).sum(dim=1)


@register_memory_kind("assoc")
class AssociativeMemory(MemoryKind):
    """Per layer: W_q, W_k [key_dim, d], W_v [d, d], the strength w_b [1, d] + b;
    ``tokens`` [m, d], the memory tokens that write."""

    # the memory tokens and their writers act after the segment's tokens; the queries read
    CARRY_ONLY = ("tokens", "key", "value", "strength")
    OPTIONS = {
        "assoc_key_dim": Option(32, "the key dimension of the associative memory"),
        "assoc_dpfp_nu": Option(3, "the DPFP feature map's nu (features = 2 * key dim * nu)"),
    }

    @classmethod
    def from_config(cls, cfg, dim: int, num_layers: int, init_std: float, write_norm: bool,
                    dropout: float) -> "AssociativeMemory":
        return cls(cfg.num_memory_tokens, dim, num_layers, key_dim=cfg.assoc_key_dim,
                   nu=cfg.assoc_dpfp_nu, init_std=init_std, dropout=dropout)

    def __init__(self, num_tokens: int, dim: int, num_layers: int, key_dim: int = 32, nu: int = 3,
                 init_std: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"--num-memory-tokens must be >= 1 with --memory-kind assoc (they write), got {num_tokens}")
        if key_dim < 1:
            raise ValueError(f"--assoc-key-dim must be >= 1, got {key_dim}")
        if nu < 1 or nu > 2 * key_dim - 1:
            raise ValueError(f"--assoc-dpfp-nu must be in [1, {2 * key_dim - 1}] (2 * key dim - 1), got {nu}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"--memory-dropout must be in [0, 1), got {dropout}")
        self.num_tokens, self.dim, self.num_layers = num_tokens, dim, num_layers
        self.key_dim, self.nu = key_dim, nu
        self.features = 2 * key_dim * nu
        self.tokens = nn.Parameter(torch.randn(num_tokens, dim) * init_std)
        self.query = nn.ModuleList(nn.Linear(dim, key_dim, bias=False) for _ in range(num_layers))
        self.key = nn.ModuleList(nn.Linear(dim, key_dim, bias=False) for _ in range(num_layers))
        self.value = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(num_layers))
        self.strength = nn.ModuleList(nn.Linear(dim, 1) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def initial_memory(self, bsz: int) -> Tensor:
        return self.tokens.new_zeros(bsz, self.num_layers, self.features, self.dim + 1, dtype=torch.float32)

    def segment_memory(self, read: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        tokens = self.dropout(self.tokens.to(dtype)).unsqueeze(0).expand(read.size(0), -1, -1)
        return tokens[:, :0], tokens

    def before_layer(self, index: int, x: Tensor, read: Tensor) -> Tensor:
        A, z = read[:, index, :, :-1], read[:, index, :, -1]
        q = dpfp(self.query[index](x).float(), self.nu)
        return x + lookup(q, A, z).to(x.dtype)

    def written(self, final: Tensor, layers: Sequence[Tensor]) -> Tensor:
        """Each layer's memory-token outputs [B, num_layers, m, d]."""
        return torch.stack(list(layers), dim=1)

    def update(self, prev: Tensor, written: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        states, strengths = [], []
        for i in range(self.num_layers):
            o = written[:, i]
            keys = dpfp(self.key[i](o).float(), self.nu)
            values = self.value[i](o).float()
            strength = torch.sigmoid(self.strength[i](o).float())
            A, z = delta_write(prev[:, i, :, :-1], prev[:, i, :, -1], keys, values, strength)
            states.append(torch.cat([A, z.unsqueeze(-1)], dim=-1))
            strengths.append(strength)
        return torch.stack(states, dim=1), torch.stack(strengths, dim=1)

    def extra_repr(self) -> str:
        return (f"num_tokens={self.num_tokens}, dim={self.dim}, layers={self.num_layers}, "
                f"key_dim={self.key_dim}, nu={self.nu} (features {self.features})")
