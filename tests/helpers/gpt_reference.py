"""An independent plain-torch forward pass of the original minGPT layout, for checking loaders."""

import math

import torch
import torch.nn.functional as F


def reference_logits(sd, cfg, text, img, know=None):
    """Plain-torch forward from original-layout tensors, written independently of the model."""
    V, C = cfg.img_vocab_size, cfg.n_embd
    ids = torch.cat([text + V, img[:, :-1]], 1)
    x = sd["tok_emb.weight"][ids]
    if know is not None:
        ent = know.vectors @ sd["ent_emb.weight"].T + sd["ent_emb.bias"]
        fused = x.clone()
        for b in range(x.shape[0]):
            for t in range(cfg.text_len):
                cover = [e for e in range(ent.shape[1]) if know.mask[b, e] and know.starts[b, e] <= t < know.ends[b, e]]
                if cover:
                    w = torch.softmax(torch.stack([x[b, t] @ ent[b, e] for e in cover]), 0)
                    fused[b, t] = x[b, t] + sum(w[j] * ent[b, e] for j, e in enumerate(cover))
        x = fused
    x = _blocks(sd, cfg, x)
    x = F.layer_norm(x, (C,), sd["ln_f.weight"], sd["ln_f.bias"], 1e-5)
    return (x @ sd["head.weight"].T)[:, cfg.text_len - 1 :]


def _blocks(sd, cfg, x):
    """Token embeddings (B, T, C) → the last block's output (positions added, before ln_f)."""
    C, H = cfg.n_embd, cfg.n_head
    T = x.shape[1]
    x = x + sd["pos_emb"][:, :T]
    hd = C // H
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (C,), sd[p + "ln1.weight"], sd[p + "ln1.bias"], 1e-5)
        q, k, v = (
            (h @ sd[p + f"attn.{n}.weight"].T + sd[p + f"attn.{n}.bias"]).view(-1, T, H, hd).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(-1, T, C)
        x = x + y @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (C,), sd[p + "ln2.weight"], sd[p + "ln2.bias"], 1e-5)
        h = h @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"]
    return x


def release_id_matrix(entities, entity_num, text_len):
    """EasyNLP's (entity_num, text_len) id matrix of one text: ``entities`` is a list of
    (id, pos_s, pos_e) with inclusive token ends; every other cell (empty slots too) is 0."""
    M = torch.zeros(entity_num, text_len, dtype=torch.long)
    for i, (entity_id, s, e) in enumerate(entities):
        M[i, s : e + 1] = entity_id
    return M


def release_logits(sd, cfg, text, img, id_matrices, entity2vec):
    """The EasyNLP knowledge release's forward, from raw tensors: the plain transformer, then
    before ln_f each text's block output X (text_len, C) gets sum_i softmax(<X, E_i>)_i E_i with
    E = ent_emb(entity2vec[M]). ``id_matrices``: one (entity_num, text_len) matrix per text, or
    None for the plain model (the release's later generation steps)."""
    V, C, Tt = cfg.img_vocab_size, cfg.n_embd, cfg.text_len
    x = sd["tok_emb.weight"][torch.cat([text + V, img[:, :-1]], 1)]
    x = _blocks(sd, cfg, x)
    if id_matrices is not None:
        rows = []
        for b, M in enumerate(id_matrices):
            E = entity2vec[M] @ sd["ent_emb.weight"].T + sd["ent_emb.bias"]  # (entity_num, Tt, C)
            X = x[b, :Tt]
            scores = torch.stack([(X.reshape(-1) * E[i].reshape(-1)).sum() for i in range(E.shape[0])])
            scores = torch.where(scores == 0, torch.full_like(scores, -1e30), scores)
            w = torch.softmax(scores, 0)
            rows.append(torch.cat([X + (w[:, None, None] * E).sum(0), x[b, Tt:]]))
        x = torch.stack(rows)
    x = F.layer_norm(x, (C,), sd["ln_f.weight"], sd["ln_f.bias"], 1e-5)
    return (x @ sd["head.weight"].T)[:, Tt - 1 :]


def release_greedy(sd, cfg, text, id_matrices, entity2vec):
    """Greedy codes (B, img_len) as the release generates them: the whole sequence re-run at every
    step, the knowledge applied at the first step only."""
    codes = torch.zeros(text.shape[0], 0, dtype=torch.long)
    for i in range(cfg.img_len):
        img = torch.cat([codes, torch.zeros_like(text[:, :1])], 1)  # the last column is never an input
        logits = release_logits(sd, cfg, text, img, id_matrices if i == 0 else None, entity2vec)
        codes = torch.cat([codes, logits[:, i].argmax(-1, keepdim=True)], 1)
    return codes


def raw_original_state_dict(cfg, seed=3):
    """Random tensors under the original key names (minGPT layout, `transformer.` prefix)."""
    g = torch.Generator().manual_seed(seed)
    C, bs = cfg.n_embd, cfg.block_size
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    sd = {"tok_emb.weight": r(cfg.vocab_size, C), "pos_emb": r(1, bs, C)}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        for n in ("ln1", "ln2"):
            sd[p + n + ".weight"], sd[p + n + ".bias"] = 1 + r(C), r(C)
        for n in ("key", "query", "value", "proj"):
            sd[p + f"attn.{n}.weight"], sd[p + f"attn.{n}.bias"] = r(C, C), r(C)
        sd[p + "attn.mask"] = torch.tril(torch.ones(bs, bs)).view(1, 1, bs, bs)
        sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"] = r(4 * C, C), r(4 * C)
        sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"] = r(C, 4 * C), r(C)
    sd["ln_f.weight"], sd["ln_f.bias"] = 1 + r(C), r(C)
    sd["head.weight"] = r(cfg.img_vocab_size, C)
    if cfg.entity_dim:
        sd["ent_emb.weight"], sd["ent_emb.bias"] = r(C, cfg.entity_dim), r(C)
    return sd
