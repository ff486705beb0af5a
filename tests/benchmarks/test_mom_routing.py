"""benchmarks/mom_routing.py: MoM routing statistics on MQAR, checked against routings set by
hand (one-hot embeddings, a router that sends token id i to memories {i % 4, (i + 1) % 4}),
the exact chance levels, the CLI on a saved checkpoint (with and without its run's Hydra
config) and the refusals."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import mom_routing as mr  # noqa: E402

from memarch.checkpoint import CONFIG_KEY, load  # noqa: E402
from memarch.config import instantiate  # noqa: E402
from memarch.data import MQAR  # noqa: E402

D, NK, NV = 32, 8, 8
VOCAB = 1 + NK + NV                                   # 17 ids, one-hot in D = 32 channels


def cfg(**mom):
    return {"_target_": "memarch.models.MemLM", "vocab_size": VOCAB, "d_model": D,
            "d_hidden": 8, "layer_pattern": ["mom"],
            "mixers": {"mom": {"_target_": "memarch.mixers.MoM", "_partial_": True,
                               "n_heads": 2, "n_memories": 4, "topk": 2, **mom}}}


def one_hot_embeddings(net):
    """Token i's mixer input in layer 0 is sqrt(D) e_i (RMSNorm of a one-hot embedding)."""
    with torch.no_grad():
        net.embed.weight.zero_()
        net.embed.weight[:, :VOCAB] = torch.eye(VOCAB)


def token_routed_net():
    """route_by="token": id i -> top-2 {i % 4, (i + 1) % 4}, top-1 i % 4."""
    torch.manual_seed(0)
    net = instantiate(cfg())
    one_hot_embeddings(net)
    with torch.no_grad():
        W = net.blocks[0].mixer.router.weight                       # [4, D]
        W.zero_()
        for i in range(VOCAB):
            W[i % 4, i], W[(i + 1) % 4, i] = 5.0, 2.5
    return net


def batch(n=6, **kw):
    ds = MQAR(**{**dict(seq_len=40, num_kv_pairs=4, num_keys=NK, num_values=NV, gap=6,
                        seed=3), **kw})
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "labels")}


def by_hand(b, top, topset):
    """The statistics from the ids alone, given id -> top-1 (write == read, token routing)
    and id -> top-k set; also the load."""
    ids, labels = b["input_ids"], b["labels"]
    rows = []
    for r in range(ids.shape[0]):
        for p in range(ids.shape[1]):
            if labels[r, p] == -100:
                continue
            kid = int(ids[r, p])
            kp = ids[r].tolist().index(kid)
            vid = int(ids[r, kp + 1])
            assert vid == int(labels[r, p])
            rows.append(dict(row=r, query=p, key_pos=kp, value_pos=kp + 1,
                             key_top1_match=top(kid) == top(kid),
                             key_topk_overlap=bool(topset(kid) & topset(kid)),
                             value_top1_match=top(vid) == top(kid),
                             value_topk_overlap=bool(topset(vid) & topset(kid))))
    return rows


def load_by_hand(ids, topset, mask=None):
    counts = [0] * 4
    n = 0
    for r in range(ids.shape[0]):
        for p in range(ids.shape[1]):
            if mask is not None and not mask[r][p]:
                continue
            n += 1
            for m in topset(int(ids[r, p])):
                counts[m] += 1
    return [c / (2 * n) for c in counts]


def test_chance_levels_are_exact(checks):
    checks.true(mr.chance_levels(4, 2) == (0.25, 1 - 1 / 6), "M=4, k=2: 1/4, 5/6")
    checks.true(mr.chance_levels(4, 1) == (0.25, 0.25), "top-1: overlap = top-1 match")
    checks.true(mr.chance_levels(3, 2) == (1 / 3, 1.0), "2k > M: the sets always meet")
    checks.true(mr.chance_levels(8, 2) == (0.125, 1 - 15 / 28), "M=8, k=2: 1 - C(6,2)/C(8,2)")
    # against a brute-force enumeration of uniform k-subsets
    import itertools
    for M, k in ((4, 2), (5, 2), (6, 3)):
        subs = list(itertools.combinations(range(M), k))
        frac = sum(bool(set(a) & set(b)) for a in subs for b in subs) / len(subs) ** 2
        checks.true(abs(mr.chance_levels(M, k)[1] - frac) < 1e-12, f"M={M}, k={k}")


@pytest.mark.parametrize("gap", [0, 6])
def test_token_routing_stats_by_hand(gap, checks):
    net = token_routed_net()
    b = batch(gap=gap, seq_len=40 if gap else 32)
    stats = mr.routing_stats(net, b, per_query=True)
    json.dumps(stats)                                                    # JSON-ready as is

    def top(i):
        return i % 4

    def topset(i):
        return {i % 4, (i + 1) % 4}
    want = by_hand(b, top, topset)
    checks.true(stats["n_queries"] == len(want) == 6 * 4, "4 queries per sequence")
    (layer,) = stats["layers"]
    checks.true(layer["layer"] == 0 and layer["route_by"] == "token", "layer 0, token")
    checks.true(layer["queries"] == want, "per query: positions and matches")
    for key in ("key_top1_match", "key_topk_overlap", "value_top1_match", "value_topk_overlap"):
        checks.true(abs(layer[key] - sum(q[key] for q in want) / len(want)) < 1e-12, key)
    checks.true(layer["key_top1_match"] == layer["key_topk_overlap"] == 1.0,
                "layer 0: the key token and its query are the same input")
    checks.true(layer["value_top1_match"] < 1.0, "some values go elsewhere (not trivial)")
    if gap:
        checks.true(min(q["query"] for q in want) >= 8 + gap, "queries after the gap")
    ids = b["input_ids"]
    pairs = torch.zeros(ids.shape, dtype=torch.bool)
    for q in want:
        pairs[q["row"], q["key_pos"]] = pairs[q["row"], q["value_pos"]] = True
    checks.true(bool(pairs[:, :8].all()) and not bool(pairs[:, 8:].any()),
                "the pair tokens are positions 0..2N-1")
    for key, got_, exp in (("load", layer["load"], load_by_hand(ids, topset)),
                           ("load_pairs", layer["load_pairs"],
                            load_by_hand(ids, topset, pairs.tolist()))):
        checks.true(all(abs(g - e) < 1e-12 for g, e in zip(got_, exp)), f"{key}: {got_} {exp}")
    checks.true(layer["read_load"] == layer["load"], "token: reads are the writes")
    # entropy of the mean routing: nearly the top-1 histogram (the router is almost one-hot)
    h = [0] * 4
    for i in ids.flatten().tolist():
        h[top(i)] += 1
    p = [c / ids.numel() for c in h]
    want_h = -sum(x * math.log(x) for x in p if x > 0)
    checks.true(abs(layer["entropy"] - want_h) < 1e-4, f"entropy {layer['entropy']} {want_h}")
    checks.true(layer["max_entropy"] == math.log(4), "log M")
    checks.true((layer["chance_top1"], layer["chance_topk_overlap"]) == (0.25, 5 / 6),
                "chance levels")


def test_key_query_routing_stats_by_hand(checks):
    """route_by="key_query", no conv: the read routing of token i is by its query e_{i % 4},
    the write routing by its (shared memory's) key e_{(i + 1) % 4}; the router sends e_j to
    {j, j + 1}. So the key token writes to {k+1, k+2} and its query reads {k, k+1}: the top-1
    never agree and the top-2 sets always meet; the value token v writes {v+1, v+2}."""
    torch.manual_seed(0)
    net = instantiate(cfg(route_by="key_query", conv_size=0))
    one_hot_embeddings(net)
    m = net.blocks[0].mixer
    H, K, M = m.n_heads, m.head_dim, m.n_memories
    k0 = H * K + M * H * K                                          # the shared key's rows
    with torch.no_grad():
        Wqkv = m.qkv_proj.weight
        Wqkv[:H * K].zero_()
        Wqkv[k0:k0 + H * K].zero_()
        for i in range(VOCAB):
            Wqkv[i % 4, i] = 1.0                                     # q head 0: e_{i % 4}
            Wqkv[k0 + (i + 1) % 4, i] = 1.0                          # k^0 head 0: e_{i+1 % 4}
        m.router.weight.zero_()
        for j in range(4):
            m.router.weight[j, j], m.router.weight[(j + 1) % 4, j] = 20.0, 10.0
    b = batch()
    (layer,) = mr.routing_stats(net, b, per_query=True)["layers"]
    checks.true(layer["route_by"] == "key_query", "route_by reported")
    checks.true(layer["key_top1_match"] == 0.0 and layer["key_topk_overlap"] == 1.0, "keys")
    for q in layer["queries"]:
        kid = int(b["input_ids"][q["row"], q["query"]])
        vid = int(b["input_ids"][q["row"], q["value_pos"]])
        checks.true(q["value_top1_match"] == ((vid + 1) % 4 == kid % 4), f"value top-1 {q}")
        meet = bool({(vid + 1) % 4, (vid + 2) % 4} & {kid % 4, (kid + 1) % 4})
        checks.true(q["value_topk_overlap"] == meet, f"value top-2 {q}")
    ids = b["input_ids"]
    checks.true(all(abs(g - e) < 1e-12 for g, e in zip(
        layer["load"], load_by_hand(ids, lambda i: {(i + 1) % 4, (i + 2) % 4}))), "write load")
    checks.true(all(abs(g - e) < 1e-12 for g, e in zip(
        layer["read_load"], load_by_hand(ids, lambda i: {i % 4, (i + 1) % 4}))), "read load")


def test_layers_found_in_a_mixed_model_and_mode_kept(checks):
    torch.manual_seed(0)
    c = cfg()
    c["mixers"]["la"] = {"_target_": "memarch.mixers.LinearAttention", "_partial_": True,
                         "n_heads": 2}
    c["layer_pattern"] = ["la", "mom", "mom"]
    net = instantiate(c).train()
    stats = mr.routing_stats(net, batch(n=2))
    checks.true([s["layer"] for s in stats["layers"]] == [1, 2], "the MoM layers, in order")
    checks.true(net.training, "training mode restored")
    for s in stats["layers"]:
        checks.true(abs(sum(s["load"]) - 1) < 1e-9 and abs(sum(s["load_pairs"]) - 1) < 1e-9,
                    "loads sum to 1")
        checks.true(all(0 <= s[k] <= 1 for k in ("key_top1_match", "key_topk_overlap",
                                                 "value_top1_match", "value_topk_overlap")),
                    "fractions")
    checks.true(all(p.grad is None for p in net.parameters()), "no gradients")


def test_refusals(checks):
    torch.manual_seed(0)
    c = cfg()
    c["mixers"] = {"la": {"_target_": "memarch.mixers.LinearAttention", "_partial_": True,
                          "n_heads": 2}}
    c["layer_pattern"] = ["la"]
    with pytest.raises(ValueError, match=r"MemLM has no MoM layer .*LinearAttention"):
        mr.routing_stats(instantiate(c), batch(n=1))
    net = token_routed_net()
    ids = torch.tensor([[1, 9, 2, 10, 0, 2, 0, 1]])
    ok = torch.tensor([[-100, -100, -100, -100, -100, 10, -100, 9]])
    checks.true(mr.routing_stats(net, {"input_ids": ids, "labels": ok})["n_queries"] == 2,
                "a hand-made batch")
    with pytest.raises(ValueError, match="no scored position"):
        mr.routing_stats(net, {"input_ids": ids, "labels": torch.full_like(ids, -100)})
    bad = ok.clone()
    bad[0, 5] = 9                                    # the label is not the token after the key
    with pytest.raises(ValueError, match="not the label 9: not an MQAR batch"):
        mr.routing_stats(net, {"input_ids": ids, "labels": bad})
    bad = ok.clone()
    bad[0, 0] = 9                                    # a "query" whose key never occurred
    with pytest.raises(ValueError, match="no earlier occurrence"):
        mr.routing_stats(net, {"input_ids": ids, "labels": bad})


def _save(path: Path, c: dict) -> Path:
    torch.manual_seed(0)
    net = instantiate(c)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({CONFIG_KEY: c, "state_dict": {f"net.{k}": v
                                              for k, v in net.state_dict().items()}}, path)
    return path


def test_cli_reads_the_runs_data_config(tmp_path, capsys, checks):
    ckpt = _save(tmp_path / "run" / "checkpoints" / "last.ckpt", cfg())
    hydra = tmp_path / "run" / ".hydra"
    hydra.mkdir()
    hydra.joinpath("config.yaml").write_text(yaml.safe_dump({"data": {
        "dataset": {"_target_": "memarch.data.MQAR", "_partial_": True, "seq_len": 40,
                    "num_kv_pairs": 4, "num_keys": NK, "num_values": NV, "power_a": 0.01,
                    "gap": 6},
        "val_seed": 3}}))
    out = tmp_path / "stats.json"
    stats = mr.main([str(ckpt), "--batches", "2", "--batch-size", "3", "--json", str(out)])
    text = capsys.readouterr().out
    checks.true(stats["data"]["gap"] == 6 and stats["data"]["seed"] == 3
                and stats["data"]["seq_len"] == 40, f"the run's data: {stats['data']}")
    checks.true(stats["n_sequences"] == 6 and stats["n_queries"] == 24, "2 x 3 sequences")
    checks.true("chance (uniform random routing, M=4, k=2): top-1 match 0.250, top-k overlap "
                "0.833" in text, text)
    checks.true(json.loads(out.read_text())["layers"] == stats["layers"], "JSON written")
    # the same data as routing_stats on the validation items directly
    direct = mr.routing_stats(load(ckpt).model, batch(n=6, seed=3))
    checks.true(direct["layers"] == stats["layers"], "CLI == routing_stats on MQAR(seed=3)")
    # flags override the run's config
    stats = mr.main([str(ckpt), "--batch-size", "2", "--gap", "0", "--seq-len", "24"])
    checks.true(stats["data"]["gap"] == 0 and stats["data"]["seq_len"] == 24, "overridden")


def test_cli_without_run_config_and_refusals(tmp_path, capsys, checks):
    ckpt = _save(tmp_path / "m.ckpt", cfg())
    # configs/data/mqar.yaml's defaults need 65 ids: the 17-id model is refused by name
    with pytest.raises(SystemExit):
        mr.main([str(ckpt)])
    checks.true("more than the model's vocab_size=17" in capsys.readouterr().err, "vocab")
    stats = mr.main([str(ckpt), "--num-keys", "8", "--num-values", "8", "--batch-size", "2"])
    checks.true(stats["data"]["source"].endswith("defaults") and stats["seq_len"] == 64,
                "defaults")
    c = cfg()
    c["mixers"] = {"la": {"_target_": "memarch.mixers.LinearAttention", "_partial_": True,
                          "n_heads": 2}}
    c["layer_pattern"] = ["la"]
    plain = _save(tmp_path / "la.ckpt", c)
    with pytest.raises(SystemExit) as e:
        mr.main([str(plain), "--num-keys", "8", "--num-values", "8", "--batch-size", "1"])
    checks.true(e.value.code == 2, "exit status 2")
    checks.true("has no MoM layer" in capsys.readouterr().err, "names the missing MoM layer")
