#!/usr/bin/env python3
"""Times a model folder with Hugging Face transformers and torch on the CPU, for side-by-side
ratios with minarc (run by hand; needs `pip install torch transformers`). Alternate it with
minarc (A B A B) so drift hits both.

    python scripts/reference/bench_torch.py --model DIR [--tokens 600] [--reps 3] --json hf.json
        [--threads 2] [--dtypes f32,bf16] [--attribution]
    minarc bench forward --model DIR --dtype bf16 --torch hf.json       # forward ratios
    minarc bench attribution --model DIR --torch hf.json                # attribution ratios

The forward: `tokens` token ids 0..tokens mod vocab (as `minarc bench forward` uses ids, not
text); the body is `Qwen2Model` (no lm_head), as minarc's plain forward without logits.

`--attribution` also times the seed's attribution algorithm (spec A4-A6, A13, A18-A19) written
in torch, f32, on the sample `minarc bench attribution` builds (same ids, answers, labels and
candidates), and records its results so minarc can check that both computed the same numbers:
* attribute_step(lm_head): the lm_head node's IG backward (5 points, masked log-prob, final-norm
  back) and the residual attribution of every head and MLP below it;
* `nodes` attn_q backwards (IG, 5 points, K/V frozen) and `nodes` attn_v backwards (plain
  gradient), heads 0.. of the top layers, pattern A-->A-, fed by the lm_head node's gradient;
* attribute_residual of the attn_q nodes' gradients (g = nodes).
"""
import argparse, json, math, statistics, time

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM


def body_times(a, cfg, out):
    ids = torch.arange(a.tokens).remainder(cfg.vocab_size).unsqueeze(0)
    for name in a.dtypes.split(","):
        dt = {"f32": torch.float32, "bf16": torch.bfloat16}[name]
        m = AutoModel.from_pretrained(a.model, dtype=dt, attn_implementation="sdpa").eval()
        with torch.inference_mode():
            m(ids)  # warm-up
            ts = []
            for _ in range(a.reps):
                t = time.perf_counter()
                m(ids)
                ts.append(time.perf_counter() - t)
        out["body"][name] = {"median_s": statistics.median(ts), "times_s": ts}
        print(f"HF {type(m).__name__} sdpa {name}: median {statistics.median(ts):.3f} s "
              f"({', '.join(f'{x:.3f}' for x in ts)})")
        del m


def rope(x, pos, inv_freq):
    """HF's rotate-half RoPE of x [.., k, d] at absolute positions pos [k]."""
    ang = torch.tensor(pos, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos(), emb.sin()
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


class Seed:
    """The seed algorithm on cached activations of one sample (f32)."""

    def __init__(self, model, cfg, ids, answers, labels, candidates):
        self.m, self.cfg = model, cfg
        self.L = cfg.num_hidden_layers
        self.n = cfg.num_attention_heads
        self.kvh = cfg.num_key_value_heads
        self.d = cfg.hidden_size // self.n
        self.eps = cfg.rms_norm_eps
        self.s = len(ids)
        self.pos = [a - 1 for a in answers]  # the A- span: the positions predicting the answers
        self.labels = torch.tensor(labels)
        self.mask = torch.full((cfg.vocab_size,), -1e4)
        self.mask[torch.tensor(candidates)] = 0.0
        theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.d, 2, dtype=torch.float32) / self.d)
        layers = model.model.layers
        self.o_in, self.mlp_out, self.pre_final = {}, {}, {}
        hooks = []
        for l, layer in enumerate(layers):
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
                lambda mod, inp, l=l: self.o_in.__setitem__(l, inp[0][0].detach())))
            hooks.append(layer.mlp.register_forward_hook(
                lambda mod, inp, out, l=l: self.mlp_out.__setitem__(l, out[0].detach())))
        hooks.append(model.model.norm.register_forward_pre_hook(
            lambda mod, inp: self.pre_final.__setitem__(0, inp[0][0].detach())))
        with torch.no_grad():
            out = model.model(torch.tensor([ids]), output_hidden_states=True)
        for h in hooks:
            h.remove()
        self.hs = [h[0] for h in out.hidden_states]  # [s, e]; hs[L] is final-normed
        pre = self.pre_final[0]
        self.final_var = pre.pow(2).mean(-1, keepdim=True)

    def ig_points(self, x, steps):
        """A1: steps+1 points α = 0, 1/steps, .., 1 of x (one point, x itself, for steps = 0)."""
        if steps == 0:
            return x.detach().clone().unsqueeze(0).requires_grad_(True)
        al = torch.arange(steps + 1, dtype=torch.float32) / steps
        return (al.view(-1, *([1] * x.dim())) * x.detach()).requires_grad_(True)

    def lm_head_grad(self):
        """A4-A6, A13 lm_head: IG (4 steps) of the masked mean log-prob, then the final-norm back."""
        x = self.hs[self.L][self.pos]  # [k, e]
        xs = self.ig_points(x, 4)  # [5, k, e]
        logits = xs @ self.m.lm_head.weight.T + self.mask  # [5, k, v]
        lp = torch.log_softmax(logits, -1)
        ys = lp.gather(-1, self.labels.view(1, -1, 1).expand(xs.shape[0], -1, 1)).squeeze(-1).mean(-1)
        ys.sum().backward()
        g = xs.grad.mean(0)
        w = self.m.model.norm.weight
        return w * g * torch.rsqrt(self.final_var[self.pos] + self.eps)  # A5

    def head_forward(self, l, h, xq, xk, xv):
        """One head's o_proj contribution [b, k, e] for queries xq [b, k, e] at self.pos over keys
        xk, xv [.., s, e] (causal)."""
        at = self.m.model.layers[l].self_attn
        d, g = self.d, h // (self.n // self.kvh)
        q = xq @ at.q_proj.weight[h * d:(h + 1) * d].T + at.q_proj.bias[h * d:(h + 1) * d]
        k = xk @ at.k_proj.weight[g * d:(g + 1) * d].T + at.k_proj.bias[g * d:(g + 1) * d]
        v = xv @ at.v_proj.weight[g * d:(g + 1) * d].T + at.v_proj.bias[g * d:(g + 1) * d]
        q = rope(q, self.pos, self.inv_freq)
        k = rope(k, list(range(self.s)), self.inv_freq)
        sc = q @ k.transpose(-1, -2) / math.sqrt(d)  # [b, k, s]
        causal = torch.arange(self.s)[None, :] > torch.tensor(self.pos)[:, None]
        a = torch.softmax(sc.masked_fill(causal, float("-inf")), -1)
        return (a @ v) @ at.o_proj.weight[:, h * d:(h + 1) * d].T

    def attn_grad(self, l, h, gy, kind):
        """A13 attn_q (IG, 4 steps, K/V frozen) or attn_v (plain gradient): input-norm back."""
        ln = self.m.model.layers[l].input_layernorm
        hs = self.hs[l]
        var = hs.pow(2).mean(-1, keepdim=True)
        xkv = ln.weight * (hs * torch.rsqrt(var + self.eps))  # [s, e]
        if kind == "q":
            xs = self.ig_points(xkv[self.pos], 4)  # [5, k, e]
            ys = self.head_forward(l, h, xs, xkv, xkv)
            (ys * gy).sum().backward()
            g = xs.grad.mean(0)
        else:
            xs = self.ig_points(xkv, 0)  # [1, s, e]
            ys = self.head_forward(l, h, xkv[self.pos].unsqueeze(0), xkv, xs)
            (ys * gy).sum().backward()
            g = xs.grad[0][self.pos]  # src = pos for A-->A-
        return ln.weight * g * torch.rsqrt(var[self.pos] + self.eps)

    def residual(self, G, to_layer, down_layer):
        """A18: [to_layer, H+1, g] gradient × activation of every head and MLP below the nodes."""
        e = self.cfg.hidden_size
        rows = []
        with torch.no_grad():
            for l in range(to_layer):
                wo = self.m.model.layers[l].self_attn.o_proj.weight  # [e, n·d]
                o = self.o_in[l][self.pos].view(-1, self.n, self.d)  # [k, n, d]
                head_out = torch.einsum("knd,end->kne", o, wo.view(e, self.n, self.d))
                ha = torch.einsum("kne,gke->ng", head_out, G)
                ma = torch.einsum("ke,gke->g", self.mlp_out[l][self.pos], G)
                keep = torch.tensor([float(l < dl) for dl in down_layer])
                rows.append(torch.cat([ha * keep, (ma * keep)[None]], 0))
        return torch.stack(rows)


def attribution_times(a, cfg, out):
    m = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32,
                                             attn_implementation="sdpa").eval()
    v, s, L, H = cfg.vocab_size, a.tokens, cfg.num_hidden_layers, cfg.num_attention_heads
    ids = [(i * 7919 + 13) % v for i in range(s)]
    answers = [s - 2 - 2 * i for i in range(8)][::-1]
    labels = [ids[x] for x in answers]
    candidates = [(c * 31 + 5) % v for c in range(10)] + labels
    seed = Seed(m, cfg, ids, answers, labels, candidates)
    nodes = [(L - 1 - (i // H) % L, i % H) for i in range(a.nodes)]
    res = {"tokens": s, "nodes": a.nodes}
    times = {k: [] for k in ["attribute_step", "attn_q", "attn_v", "attribute_residual"]}
    for _ in range(a.reps):
        t = time.perf_counter()
        lm_grad = seed.lm_head_grad()
        step = seed.residual(lm_grad.unsqueeze(0), L, [L])
        times["attribute_step"].append(time.perf_counter() - t)
        gy = lm_grad.detach()
        t = time.perf_counter()
        qg = [seed.attn_grad(l, h, gy, "q") for l, h in nodes]
        times["attn_q"].append(time.perf_counter() - t)
        t = time.perf_counter()
        vg = [seed.attn_grad(l, h, gy, "v") for l, h in nodes]
        times["attn_v"].append(time.perf_counter() - t)
        G = torch.stack(qg).detach()
        down = [float(l) for l, _ in nodes]
        t = time.perf_counter()
        resid = seed.residual(G, int(math.ceil(max(down))), down)
        times["attribute_residual"].append(time.perf_counter() - t)
    for k, ts in times.items():
        res[k] = {"median_s": statistics.median(ts), "times_s": ts}
        print(f"torch seed {k}: median {statistics.median(ts):.4f} s")
    res["values"] = {
        "attribute_step": step[:, :, 0].tolist(),  # [L, H+1]
        "attribute_residual": resid.permute(2, 0, 1).tolist(),  # [g, to_layer, H+1]
        "attn_v_grad_sum": [float(x.detach().sum()) for x in vg],
    }
    out["attribution"] = res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=600)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--attribution", action="store_true")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = AutoConfig.from_pretrained(a.model)
    out = {"model": a.model, "tokens": a.tokens, "threads": a.threads, "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "body": {}}
    if a.dtypes:
        body_times(a, cfg, out)
    if a.attribution:
        attribution_times(a, cfg, out)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
