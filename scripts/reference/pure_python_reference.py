#!/usr/bin/env python3
"""Independent pure-Python (f64, no torch/numpy) Qwen2 forward for the tiny fixture, writing the
same JSON layout as hf_goldens.py. A cross-check of the parity test plumbing where torch is not
available; the committed golden must still come from hf_goldens.py (transformers).

    minarc init-model --preset tiny --seed 0 --out /tmp/tiny_s0
    python3 scripts/reference/pure_python_reference.py /tmp/tiny_s0 /tmp/tiny_s0.json
"""
import json, struct, math, sys
d = sys.argv[1]
cfg = json.load(open(f"{d}/config.json"))
raw = open(f"{d}/model.safetensors","rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8+n]); base = 8+n
def get(name):
    h = hdr[name]; a,b = h["data_offsets"]; buf = raw[base+a:base+b]
    vals = list(struct.unpack(f"<{len(buf)//4}f", buf)); sh = h["shape"]
    if len(sh)==1: return vals
    return [vals[i*sh[1]:(i+1)*sh[1]] for i in range(sh[0])]
E=cfg["hidden_size"]; H=cfg["num_attention_heads"]; KV=cfg["num_key_value_heads"]; D=E//H; L=cfg["num_hidden_layers"]; eps=cfg["rms_norm_eps"]; th=cfg["rope_theta"]
ids=[1, 17, 412, 95, 233, 871, 5, 640, 12, 999, 318, 77, 450, 263, 1000, 88, 541, 3, 702, 129, 256, 384, 47, 911]
P=[0,5,11,23]; S=len(ids)
def lin(x,W,b=None): return [sum(wi*xi for wi,xi in zip(w,x))+(b[j] if b else 0) for j,w in enumerate(W)]
def norm(x,w): v=sum(t*t for t in x)/len(x); return [wi*t/math.sqrt(v+eps) for wi,t in zip(w,x)]
def rope(x,p):
    h=D//2; out=[]
    for c in range(D):
        i=c%h; a=p*th**(-2*i/D)
        out.append(x[c]*math.cos(a)-x[c+h]*math.sin(a) if c<h else x[c]*math.cos(a)+x[c-h]*math.sin(a))
    return out
emb=get("model.embed_tokens.weight")
hs=[[emb[t][:] for t in ids]]; att=[]; heads=[]
x=hs[0]
for l in range(L):
    p=f"model.layers.{l}"
    xn=[norm(r,get(f"{p}.input_layernorm.weight")) for r in x]
    q=[lin(r,get(f"{p}.self_attn.q_proj.weight"),get(f"{p}.self_attn.q_proj.bias")) for r in xn]
    k=[lin(r,get(f"{p}.self_attn.k_proj.weight"),get(f"{p}.self_attn.k_proj.bias")) for r in xn]
    v=[lin(r,get(f"{p}.self_attn.v_proj.weight"),get(f"{p}.self_attn.v_proj.bias")) for r in xn]
    Wo=get(f"{p}.self_attn.o_proj.weight")
    A=[[None]*S for _ in range(H)]; o=[[0.0]*E for _ in range(S)]
    for h in range(H):
        g=h//(H//KV)
        kr=[rope(k[t][g*D:(g+1)*D],t) for t in range(S)]
        for pq in range(S):
            qh=rope(q[pq][h*D:(h+1)*D],pq)
            sc=[sum(a*b for a,b in zip(qh,kr[t]))/math.sqrt(D) for t in range(pq+1)]
            m=max(sc); ex=[math.exp(s-m) for s in sc]; z=sum(ex)
            a=[e/z for e in ex]+[0.0]*(S-pq-1); A[h][pq]=a
            oh=[sum(a[t]*v[t][g*D+c] for t in range(pq+1)) for c in range(D)]
            ho=[sum(Wo[j][h*D+c]*oh[c] for c in range(D)) for j in range(E)]
            if pq in P: heads.append({"layer":l,"head":h,"pos":pq,"values":ho}); att.append({"layer":l,"head":h,"pos":pq,"values":a})
            for j in range(E): o[pq][j]+=ho[j]
    mid=[[a+b for a,b in zip(r,s)] for r,s in zip(x,o)]
    xn2=[norm(r,get(f"{p}.post_attention_layernorm.weight")) for r in mid]
    G=get(f"{p}.mlp.gate_proj.weight"); U=get(f"{p}.mlp.up_proj.weight"); Dn=get(f"{p}.mlp.down_proj.weight")
    out=[]
    for r in xn2:
        gg=lin(r,G); uu=lin(r,U); hh=[a/(1+math.exp(-a))*b for a,b in zip(gg,uu)]
        out.append(lin(hh,Dn))
    x=[[a+b for a,b in zip(r,s)] for r,s in zip(mid,out)]
    hs.append(x)
fin=[norm(r,get("model.norm.weight")) for r in x]; hs[-1]=fin
LM=get("lm_head.weight") if "lm_head.weight" in hdr else emb
g={"token_ids":ids,"positions":P,"logits":[{"pos":p,"values":lin(fin[p],LM)} for p in P],
   "hidden_states":[{"layer":l,"pos":p,"values":hs[l][p]} for l in range(L+1) for p in P],
   "attentions":att,"head_outputs":heads,
   "weight_sums":{nm:sum(sum(r) if isinstance(r,list) else r for r in get(nm)) for nm in ["model.embed_tokens.weight","model.norm.weight"]}}
json.dump(g,open(sys.argv[2],"w"))
