"""The SDAR network (Qwen3 / Qwen3-MoE decoder with a block-causal mask), written for export.

Static shapes, no data-dependent Python control flow: ``torch.onnx.export`` traces one graph per
(block_length, num_logits) pair. One step takes ``T`` new tokens at positions
``past_len + arange(T)`` plus the K/V cache rows ``[0, P)`` (rows ``>= past_len`` are masked) and
returns the logits of the last ``num_logits`` positions and the K/V of the ``T`` new positions.

Precision / fp16 overflow safety
--------------------------------
Weights and the K/V cache are stored in ``dtype`` (float32, float16 or bfloat16) and the matmuls
run in ``compute_dtype`` (normally ``dtype``). Everything that can overflow or lose precision in
half precision runs in float32:

* the residual stream (embeddings are upcast on lookup; each block's attention / MLP output is
  upcast before it is added), so activations growing past 65504 across layers never hit fp16;
* every RMSNorm (x * rsqrt(mean(x^2) + eps) * w, with w kept in float32), including q_norm/k_norm;
* RoPE (cos/sin computed in float32 from float32 positions), and the 1/sqrt(D) scale is applied to
  q in float32 *before* the score matmul, so q.k stays small in fp16;
* attention softmax (scores upcast to float32, mask applied in float32), MoE router softmax;
* the logits (the LM head output is upcast to float32).

Only normalised inputs enter the low-precision matmuls; their fp32-accumulated outputs are
upcast immediately. This differs from Hugging Face's bf16 path (which rounds the residual and
the norm outputs to bf16) only by being more accurate.

Attention never concatenates past and new K/V: the scores against the past and against the new
block are computed separately, the *scores* are concatenated (``[.., T, P + T]``: a few rows),
the softmax runs over them, and the probabilities are split to weight the two V's. The past cache
is read once and never copied (see DESIGN.md).

Cache rows ``>= past_len`` are masked out of the softmax, so their probabilities are exactly 0;
they must however hold finite values (0 * NaN is NaN): the runtime allocates the cache zeroed,
and the graph only ever writes finite K/V into it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import SDARConfig

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def to_torch_dtype(d) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    if d not in _DTYPES:
        raise ValueError(f"unsupported dtype {d!r}; use float32, float16 or bfloat16")
    return _DTYPES[d]


def dtype_name(d: torch.dtype) -> str:
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[d]


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """float32 RMSNorm: x * rsqrt(mean(x^2) + eps) * w (x and w are upcast; result float32)."""
    x = x.float()
    # w is float32 already (_Norm): no upcast for the tracer to record and fold into a copy of w
    w = w if w.dtype == torch.float32 else w.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class _Linear(nn.Module):
    """y = x @ W^T in compute dtype; W stored in storage dtype (a Cast in the graph if they differ).

    ``transposed``: the weight is held as [in, out] in the compute dtype, the very initializer the
    exported graph keeps (a graph skeleton, see :class:`GraphSkeleton`): the tracer then records a
    plain MatMul on it and has no Transpose / Cast of a weight to fold into a new tensor.
    """

    def __init__(self, weight: torch.Tensor, compute_dtype: torch.dtype, transposed: bool = False):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.compute_dtype = compute_dtype
        self.transposed = transposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return torch.matmul(x.to(self.compute_dtype), self.weight)
        w = self.weight if self.weight.dtype == self.compute_dtype else self.weight.to(self.compute_dtype)
        return torch.matmul(x.to(self.compute_dtype), w.t())


class _Norm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.float(), requires_grad=False)  # norms always float32
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class _DenseMLP(nn.Module):
    def __init__(self, W: _Params, p: str, cd: torch.dtype):
        super().__init__()
        self.gate_proj = W.linear(p + "gate_proj.weight", cd)
        self.up_proj = W.linear(p + "up_proj.weight", cd)
        self.down_proj = W.linear(p + "down_proj.weight", cd)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


class _MoEMLP(nn.Module):
    """Qwen3-MoE sparse MLP computed densely (every expert on every token), exact.

    Routing: softmax over experts in float32, top-k, renormalise if norm_topk_prob; the sparse
    routing weights become a dense [N, E] matrix (zero off the top-k), no scatter op needed.
    """

    def __init__(self, W: _Params, p: str, cfg: SDARConfig, cd: torch.dtype):
        super().__init__()
        E = cfg.num_experts
        self.E, self.k, self.norm_topk = E, cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.cd = cd
        self.gate = W.linear(p + "gate.weight", cd)
        # [E, in, out] so that x @ W[e] is the projection
        self.w_gate = W.experts(p, "gate_proj", E, cd)
        self.w_up = W.experts(p, "up_proj", E, cd)
        self.w_down = W.experts(p, "down_proj", E, cd)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, H = h.shape[0], h.shape[1], h.shape[2]
        x = h.reshape(-1, H).to(self.cd)                          # [N, H]
        probs = torch.softmax(self.gate(x).float(), dim=-1)        # [N, E] float32
        topv, topi = torch.topk(probs, self.k, dim=-1)             # [N, k]
        if self.norm_topk:
            topv = topv / topv.sum(-1, keepdim=True)
        onehot = (topi.unsqueeze(-1) == torch.arange(self.E, device=h.device)).to(topv.dtype)
        route = (onehot * topv.unsqueeze(-1)).sum(1)               # [N, E] float32, sparse

        def w(t):
            return t if t.dtype == self.cd else t.to(self.cd)

        xe = x.unsqueeze(0)                                        # [1, N, H]
        a = torch.matmul(xe, w(self.w_gate))                       # [E, N, I]
        b = torch.matmul(xe, w(self.w_up))
        y = torch.matmul(nn.functional.silu(a) * b, w(self.w_down))  # [E, N, H]
        # weight in float32 and sum over experts (fp32 accumulation of the expert mix)
        out = (y.float() * route.t().unsqueeze(-1)).sum(0)        # [N, H]
        return out.reshape(B, T, H)


class _Layer(nn.Module):
    def __init__(self, W: _Params, i: int, cfg: SDARConfig, cd: torch.dtype, sd: torch.dtype):
        super().__init__()
        p = f"model.layers.{i}."
        eps = cfg.rms_norm_eps
        self.nh, self.kvh, self.D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.G = self.nh // self.kvh
        self.cd, self.sd = cd, sd
        self.input_layernorm = W.norm(p + "input_layernorm.weight", eps)
        self.post_attention_layernorm = W.norm(p + "post_attention_layernorm.weight", eps)
        self.q_proj = W.linear(p + "self_attn.q_proj.weight", cd)
        self.k_proj = W.linear(p + "self_attn.k_proj.weight", cd)
        self.v_proj = W.linear(p + "self_attn.v_proj.weight", cd)
        self.o_proj = W.linear(p + "self_attn.o_proj.weight", cd)
        self.q_norm = W.norm(p + "self_attn.q_norm.weight", eps)
        self.k_norm = W.norm(p + "self_attn.k_norm.weight", eps)
        if cfg.layer_is_moe(i):
            self.mlp = _MoEMLP(W, p + "mlp.", cfg, cd)
        else:
            self.mlp = _DenseMLP(W, p + "mlp.", cd)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        """x [B,T,H] f32; cos/sin [T,D] f32; mask [T, P+T] bool; past_k/v [P,B,KVH,D] storage dtype."""
        B, T = x.shape[0], x.shape[1]
        nh, kvh, G, D = self.nh, self.kvh, self.G, self.D
        h = self.input_layernorm(x)
        q = self.q_norm(self.q_proj(h).reshape(B, T, nh, D))        # f32 [B,T,nh,D]
        k = self.k_norm(self.k_proj(h).reshape(B, T, kvh, D))       # f32 [B,T,kvh,D]
        v = self.v_proj(h).reshape(B, T, kvh, D)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)                   # [T,1,D]
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        k_store = k.to(self.sd)
        v_store = v.to(self.sd)
        present_k = k_store.permute(1, 0, 2, 3)                     # [T,B,kvh,D]
        present_v = v_store.permute(1, 0, 2, 3)
        # GQA without repeating K/V: query heads of one kv group stacked along the row axis.
        q = (q * (1.0 / math.sqrt(D))).to(self.cd)
        q = q.reshape(B, T, kvh, G, D).permute(0, 2, 3, 1, 4).reshape(B, kvh, G * T, D)
        kc = k_store.to(self.cd)
        vc = v_store.to(self.cd)
        pk = past_k.to(self.cd).permute(1, 2, 3, 0)                 # [B,kvh,D,P]
        pv = past_v.to(self.cd).permute(1, 2, 0, 3)                 # [B,kvh,P,D]
        s_past = torch.matmul(q, pk).float()                        # [B,kvh,G*T,P]
        s_new = torch.matmul(q, kc.permute(0, 2, 3, 1)).float()     # [B,kvh,G*T,T]
        P = past_k.shape[0]
        scores = torch.cat([s_past, s_new], dim=-1).reshape(B, kvh, G, T, P + T)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).reshape(B, kvh, G * T, P + T)
        p_past, p_new = probs[..., :P], probs[..., P:]
        o = torch.matmul(p_past.to(self.cd), pv) + torch.matmul(p_new.to(self.cd), vc.permute(0, 2, 1, 3))
        o = o.reshape(B, kvh, G, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, nh * D)
        x = x + self.o_proj(o).float()
        x = x + self.mlp(self.post_attention_layernorm(x)).float()
        return x, present_k, present_v


class SDARModel(nn.Module):
    """SDAR network from an :class:`SDARConfig` and a name -> tensor dict (HF Qwen3 names).

    ``dtype``: storage dtype of the weights and of the K/V cache. ``compute_dtype``: dtype of the
    matmuls (default: ``dtype``; pass float32 with bf16 storage for ONNX Runtime CPU, which has
    no bf16 kernels). ``weights`` may also be a :class:`GraphSkeleton` (the network the exporter
    traces, without the weights).
    """

    def __init__(self, cfg: SDARConfig, weights, dtype="float32", compute_dtype=None):
        super().__init__()
        sd = to_torch_dtype(dtype)
        cd = to_torch_dtype(compute_dtype) if compute_dtype is not None else sd
        self.config, self.dtype_, self.compute_dtype = cfg, sd, cd
        W = weights if isinstance(weights, _Params) else HFParams(weights, sd)
        self.embed_tokens = W.embedding("model.embed_tokens.weight")
        self.layers = nn.ModuleList(_Layer(W, i, cfg, cd, sd) for i in range(cfg.num_hidden_layers))
        self.norm = W.norm("model.norm.weight", cfg.rms_norm_eps)
        self.lm_head = W.linear("lm_head.weight", cd)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def empty_cache(self, batch: int = 1) -> list[torch.Tensor]:
        c = self.config
        return [torch.zeros(0, batch, c.num_key_value_heads, c.head_dim, dtype=self.dtype_)
                for _ in range(c.num_hidden_layers)]

    def forward(self, input_ids: torch.Tensor, past_len: torch.Tensor, past_keys: list, past_values: list,
                block_length: int, num_logits: int):
        """input_ids [B,T] int64, past_len [1] int64, past_keys/values: per layer [P,B,KVH,D].

        ``num_logits``: an int (static), or an int64 [1] tensor (traced as a graph input).

        Returns (logits [B, num_logits, V] float32 or None, present_keys, present_values), the
        presents per layer [T,B,KVH,D] in the storage dtype.
        """
        T = input_ids.shape[1]
        P = past_keys[0].shape[0]
        x = torch.nn.functional.embedding(input_ids, self.embed_tokens).float()
        cos, sin, mask = rope_and_mask(past_len, T, P, block_length, self.inv_freq)
        pks, pvs = [], []
        for i, layer in enumerate(self.layers):
            x, pk, pv = layer(x, cos, sin, mask, past_keys[i], past_values[i])
            pks.append(pk)
            pvs.append(pv)
        return head_logits(x, T, self.norm, self.lm_head, num_logits), pks, pvs


def rope_inv_freq(cfg: SDARConfig) -> torch.Tensor:
    D = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    return inv_freq / cfg.rope_linear_factor


def rope_and_mask(past_len: torch.Tensor, T: int, P: int, block_length: int, inv_freq: torch.Tensor):
    """(cos [T, D], sin [T, D], mask [T, P + T]) of a step of T tokens after a bound cache of P rows."""
    pos = (past_len.reshape(1) + torch.arange(T, dtype=torch.int64)).float()   # [T]
    freqs = pos.unsqueeze(-1) * inv_freq.unsqueeze(0)                            # [T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    # mask [T, P+T]: cache row r visible iff r < past_len; new b visible from a iff b//L <= a//L
    valid_past = torch.arange(P, dtype=torch.int64) < past_len.reshape(1)        # [P]
    blk = torch.div(torch.arange(T, dtype=torch.int64), block_length, rounding_mode="floor")
    m_new = blk.unsqueeze(0) <= blk.unsqueeze(1)                                # [T, T]
    mask = torch.cat([valid_past.unsqueeze(0).expand(T, P), m_new], dim=1)
    return cos, sin, mask


def head_logits(x: torch.Tensor, T, norm: nn.Module, lm_head: nn.Module, num_logits) -> torch.Tensor | None:
    """float32 logits of the last ``num_logits`` rows of the final hidden state x [B, T, H] (None for 0);
    ``T`` is the step's token count (read off the input ids, as the traced graphs do)."""
    if torch.is_tensor(num_logits):
        # ONNX Runtime step graph: the row count is an input (0 in prefill, L in decode/fused),
        # so one graph with a dynamic token axis serves every step kind (Range + Gather).
        rows = torch.arange(T - num_logits.reshape(()), T, dtype=torch.int64)
        return lm_head(norm(x.index_select(1, rows))).float()
    if num_logits > 0:
        return lm_head(norm(x[:, T - num_logits:])).float()
    return None


# --------------------------------------------------------------------------- where parameters come from


class _Params:
    """What the modules read their parameters from (HF names): real weights or a graph skeleton."""

    def linear(self, name: str, cd: torch.dtype) -> _Linear:
        raise NotImplementedError

    def norm(self, name: str, eps: float) -> _Norm:
        raise NotImplementedError

    def embedding(self, name: str) -> nn.Parameter:
        raise NotImplementedError

    def experts(self, prefix: str, proj: str, count: int, cd: torch.dtype) -> nn.Parameter:
        raise NotImplementedError


class HFParams(_Params):
    """Weights from a name -> tensor dict (HF layout), cast to the storage dtype; a missing
    ``lm_head.weight`` is the (tied) embedding table."""

    def __init__(self, weights: dict, sd: torch.dtype):
        self.W = {k: v.to(sd) if v.is_floating_point() else v for k, v in weights.items()}

    def linear(self, name, cd):
        if name == "lm_head.weight" and name not in self.W:    # tied: the embedding table
            return _Linear(self.W["model.embed_tokens.weight"], cd)
        return _Linear(self.W[name], cd)

    def norm(self, name, eps):
        return _Norm(self.W[name], eps)

    def embedding(self, name):
        return nn.Parameter(self.W[name], requires_grad=False)

    def experts(self, prefix, proj, count, cd):
        stacked = torch.stack([self.W[f"{prefix}experts.{e}.{proj}.weight"].t() for e in range(count)])
        return nn.Parameter(stacked.contiguous(), requires_grad=False)


@dataclass(frozen=True)
class GraphWeight:
    """How one parameter of a :class:`GraphSkeleton` is made from the checkpoint: the HF tensors it
    holds, ``layout`` "as_is", "transposed" ([in, out], a linear) or "experts" (the experts'
    transposed weights stacked [E, in, out]), in ``dtype`` (the tensor the exported graph keeps)."""

    names: tuple[str, ...]
    layout: str
    dtype: torch.dtype
    shape: tuple[int, ...]


class GraphSkeleton(_Params):
    """Parameters with the graph's shapes and dtypes but no weights, for tracing the network.

    Each is a fresh ``torch.empty`` (pages the tracer only reads map the kernel's zero page, so
    they cost no memory) whose first element is its index, so the exporter's merge of equal
    initializers keeps them apart. The real values are written by the exporter from ``recipes``
    (parameter -> :class:`GraphWeight`), tensor by tensor.
    """

    def __init__(self, cfg: SDARConfig, sd: torch.dtype):
        from .checkpoint import expected_tensor_shapes  # noqa: PLC0415

        self.shapes = expected_tensor_shapes(cfg)
        self.sd = sd
        self.recipes: dict[int, GraphWeight] = {}   # by data_ptr (modules re-wrap)

    def _placeholder(self, names: tuple[str, ...], layout: str, dtype: torch.dtype,
                     shape: tuple[int, ...]) -> nn.Parameter:
        t = torch.empty(shape, dtype=dtype)
        t.view(-1)[0] = len(self.recipes) + 1
        self.recipes[t.data_ptr()] = GraphWeight(names, layout, dtype, tuple(shape))
        return nn.Parameter(t, requires_grad=False)

    def linear(self, name, cd):
        out_dim, in_dim = self.shapes[name]
        return _Linear(self._placeholder((name,), "transposed", cd, (in_dim, out_dim)), cd, transposed=True)

    def norm(self, name, eps):
        return _Norm(self._placeholder((name,), "as_is", torch.float32, self.shapes[name]), eps)

    def embedding(self, name):
        return self._placeholder((name,), "as_is", self.sd, self.shapes[name])

    def experts(self, prefix, proj, count, cd):
        names = tuple(f"{prefix}experts.{e}.{proj}.weight" for e in range(count))
        out_dim, in_dim = self.shapes[names[0]]
        return self._placeholder(names, "experts", cd, (count, in_dim, out_dim))

    def recipes_of(self, module: nn.Module, prefix: str = "") -> dict[str, GraphWeight]:
        """Parameter name (as ``module.named_parameters`` gives it) -> its recipe."""
        return {prefix + n: self.recipes[p.data_ptr()] for n, p in module.named_parameters()}


def graph_skeleton(cfg: SDARConfig, dtype="float32", compute_dtype=None) -> tuple[SDARModel, GraphSkeleton]:
    """The network with placeholder parameters in the exported graph's layout, and its recipes."""
    sd = to_torch_dtype(dtype)
    skeleton = GraphSkeleton(cfg, sd)
    return SDARModel(cfg, skeleton, dtype, compute_dtype).eval(), skeleton


def full_sequence_logits(model: SDARModel, ids: torch.Tensor, block_length: int) -> torch.Tensor:
    """Logits [B, S, V] of a whole sequence, past_len 0, block-causal mask (no-cache reference)."""
    B, S = ids.shape
    with torch.no_grad():
        logits, _, _ = model(ids, torch.zeros(1, dtype=torch.int64), model.empty_cache(B),
                             model.empty_cache(B), block_length, S)
    return logits


def build_model(model_dir, dtype="float32", compute_dtype=None) -> SDARModel:
    """Load a checkpoint dir and build the model (eval mode)."""
    from .checkpoint import load_checkpoint

    ck = load_checkpoint(model_dir, dtype=dtype)
    return SDARModel(ck.config, ck.weights, dtype=dtype, compute_dtype=compute_dtype).eval()
