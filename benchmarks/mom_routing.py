"""Routing statistics of a trained Mixture-of-Memories model on MQAR: does a query read the
memories its key-value pair was written to?

    python benchmarks/mom_routing.py outputs/RUN/checkpoints/last.ckpt [--batches 4]
        [--batch-size 32] [--seq-len 64 --pairs 4 --gap 0 --num-keys 32 --num-values 32]
        [--seed 1] [--json stats.json]

MoM (``memarch.mixers.mom.MoM``, 2502.13685) routes every token to k of M memories; a token
writes (its k, v) and reads (its q) only the memories it is routed to. On MQAR (``k_1 v_1 ...
k_N v_N``, then every key once more; ``memarch.data.MQAR``) the association k_i -> v_i is
written at the value token 2i+1 (the short conv gives its key the key token's features) and read
at the query, a later occurrence of the key token; the label sits at the query position. With
``route_by="token"`` the router reads x_t, so the write (value token) and the read (query) may
go to different memories.

``routing_stats(net, batch)`` runs the model once over ``batch["input_ids"]`` with a forward
hook on every MoM layer, and recomputes that layer's routing from its captured input with
``MoM.routings(x, state)`` (the write routing and the read routing: the same for
``route_by="token"``; by the token's key and by its query for ``"key_query"``). Per layer:

* ``load`` / ``load_pairs``: the fraction of the routed (write) slots that go to each memory,
  over all tokens and over the key and value tokens of the queried pairs only (sums to 1);
  ``read_load`` / ``read_load_pairs`` the same for the read routing;
* for every scored query p (labels != -100) with key id kid: the key token 2i (the first
  occurrence of kid, checked to be followed by the label: the value token 2i+1), and whether
  (a) the key token's write top-1 memory is the query's read top-1 memory
  (``key_top1_match``), (b) their top-k sets intersect (``key_topk_overlap``), and the same
  for the value token (``value_top1_match``, ``value_topk_overlap``), as fractions of the
  queries; with ``route_by="token"`` the write and read routings of a token are one routing;
* the chance levels of (a) and (b) for uniform random routing, ``1/M`` and
  ``1 - C(M-k, k) / C(M, k)`` (``chance_top1``, ``chance_topk_overlap``);
* ``entropy`` (``read_entropy``): the entropy in nats of the mean write (read) routing
  distribution over all tokens (``max_entropy`` = log M: perfectly balanced on average);
* ``accuracy_value_overlap`` / ``accuracy_no_value_overlap``: the model's recall accuracy
  (argmax of the logits at the query) on the queries whose value token's top-k set does /
  does not meet the query's (None when there is no such query).

Every value is a plain Python float, int, bool, str, None or list of them (``json.dumps``
takes the result as is). The shared memory (``shared_memory=True``), which every token writes
and reads, is not part of the routing and not counted.

The CLI loads the checkpoint with ``memarch.checkpoint.load`` (``torch.load(weights_only=
True)``) and builds the MQAR data of its training run from ``RUN/.hydra/config.yaml`` (the run
directory above ``checkpoints/``) when there is one and its data is MQAR (seq_len,
num_kv_pairs, num_keys, num_values, power_a, gap; seed = data.val_seed: the validation split),
else from ``configs/data/mqar.yaml``'s defaults; the flags override either.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from memarch.data.synthetic import IGNORE_INDEX, MQAR
from memarch.mixers.mom import MoM

__all__ = ["chance_levels", "mom_layers", "routing_stats", "main"]

# configs/data/mqar.yaml's dataset, the CLI's defaults when the run's config is not found
MQAR_DEFAULTS = {"seq_len": 64, "num_kv_pairs": 4, "num_keys": 32, "num_values": 32,
                 "power_a": 0.01, "gap": 0}
VAL_SEED = 1


def chance_levels(n_memories: int, topk: int) -> tuple[float, float]:
    """(P[two tokens share the top-1 memory], P[their top-k sets intersect]) when every
    token's routing is an independent uniformly random k-subset of the M memories (its top-1
    uniform over M): ``(1/M, 1 - C(M-k, k) / C(M, k))``."""
    return 1.0 / n_memories, 1.0 - math.comb(n_memories - topk, topk) / math.comb(n_memories,
                                                                                  topk)


def mom_layers(net: torch.nn.Module) -> list[MoM]:
    """The MoM modules of ``net`` in module order; a ValueError when there is none."""
    layers = [m for m in net.modules() if isinstance(m, MoM)]
    if not layers:
        kinds = sorted({type(m).__name__ for m in net.modules()
                        if type(m).__module__.startswith("memarch.mixers")})
        raise ValueError(f"routing_stats: {type(net).__name__} has no MoM layer (no module is "
                         f"a memarch.mixers.mom.MoM; its mixers: {kinds or 'none'})")
    return layers


def _capture(net: torch.nn.Module, layers: list[MoM], ids: torch.Tensor):
    """One forward of ``net`` over ids; per MoM layer the (write, read) routings recomputed
    from the input the layer received (forward hooks), and the logits."""
    got: dict[int, list] = {id(m): [] for m in layers}

    def hook(mod, args, kwargs, output):
        x = args[0] if args else kwargs["x"]
        state = args[1] if len(args) > 1 else kwargs.get("state")
        got[id(mod)].append(mod.routings(x, state))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in layers]
    try:
        with torch.no_grad():
            out = net(ids)
    finally:
        for h in handles:
            h.remove()
    routings = []
    for m in layers:
        calls = got[id(m)]
        if len(calls) != 1:
            raise ValueError(f"routing_stats: MoM layer {m.layer_idx} ran {len(calls)} times in "
                             "one forward; routing_stats needs one call per layer over the "
                             "whole batch (a MemLM, not a segmented wrapper)")
        routings.append(calls[0])
    logits = getattr(out, "logits", out)
    return routings, logits


def _queries(ids: torch.Tensor, labels: torch.Tensor):
    """The scored queries of an MQAR batch: (rows, query positions, key positions) [Q] each;
    the key position is the first occurrence of the query's key id, and the token after it
    (the value) must be the label."""
    rows, pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    if rows.numel() == 0:
        raise ValueError("routing_stats: the batch has no scored position (labels are all "
                         f"{IGNORE_INDEX}): not an MQAR batch")
    keys = []
    for b, p in zip(rows.tolist(), pos.tolist()):
        kid = int(ids[b, p])
        hit = (ids[b, :p] == kid).nonzero()
        if hit.numel() == 0:
            raise ValueError(f"routing_stats: the query at row {b}, position {p} (key id {kid}) "
                             "has no earlier occurrence of its key: not an MQAR batch")
        k = int(hit[0])
        if k + 1 >= p or int(ids[b, k + 1]) != int(labels[b, p]):
            raise ValueError(f"routing_stats: row {b}: the key id {kid} queried at position {p} "
                             f"first occurs at {k}, but the token after it is not the label "
                             f"{int(labels[b, p])}: not an MQAR batch")
        keys.append(k)
    return rows, pos, torch.tensor(keys, dtype=torch.long)


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


def _entropy(probs: torch.Tensor) -> float:
    p = probs.double().flatten(0, -2).mean(0)                                   # [M]
    return float(-(p * p.clamp_min(1e-300).log()).sum())


def _frac(t: torch.Tensor) -> float:
    return float(t.double().mean())


def _layer_stats(m: MoM, write, read, rows, qpos, kpos, pair_mask, correct, per_query):
    M, k = m.n_memories, m.topk
    (pw, rw, _), (pr, rr, _) = write, read
    top1_w, top1_r = pw.topk(k, -1).indices[..., 0], pr.topk(k, -1).indices[..., 0]   # [B, T]
    vpos = kpos + 1

    def load(routed, mask=None):
        r = routed if mask is None else routed[mask]                             # [.., M]
        return _floats(r.reshape(-1, M).double().sum(0) / (r.reshape(-1, M).shape[0] * k))

    q_top1, q_set = top1_r[rows, qpos], rr[rows, qpos]                           # [Q], [Q, M]
    res = {}
    for side, at in (("key", kpos), ("value", vpos)):
        res[f"{side}_top1"] = top1_w[rows, at] == q_top1
        res[f"{side}_topk"] = (rw[rows, at] & q_set).any(-1)
    c1, ck = chance_levels(M, k)
    over = res["value_topk"]

    def acc(sel):
        return _frac(correct[sel]) if bool(sel.any()) else None
    stats: dict[str, Any] = {
        "layer": m.layer_idx, "route_by": m.route_by, "n_memories": M, "topk": k,
        "shared_memory": m.shared_memory,
        "load": load(rw), "load_pairs": load(rw, pair_mask),
        "read_load": load(rr), "read_load_pairs": load(rr, pair_mask),
        "key_top1_match": _frac(res["key_top1"]), "key_topk_overlap": _frac(res["key_topk"]),
        "value_top1_match": _frac(res["value_top1"]),
        "value_topk_overlap": _frac(res["value_topk"]),
        "chance_top1": c1, "chance_topk_overlap": ck,
        "entropy": _entropy(pw), "read_entropy": _entropy(pr), "max_entropy": math.log(M),
        "accuracy_value_overlap": acc(over), "accuracy_no_value_overlap": acc(~over),
    }
    if per_query:
        stats["queries"] = [
            {"row": int(b), "query": int(p), "key_pos": int(kp), "value_pos": int(kp) + 1,
             "key_top1_match": bool(a), "key_topk_overlap": bool(bb),
             "value_top1_match": bool(c), "value_topk_overlap": bool(d)}
            for b, p, kp, a, bb, c, d in zip(rows.tolist(), qpos.tolist(), kpos.tolist(),
                                             res["key_top1"].tolist(), res["key_topk"].tolist(),
                                             res["value_top1"].tolist(),
                                             res["value_topk"].tolist())]
    return stats


def routing_stats(net: torch.nn.Module, batch: dict, *, per_query: bool = False) -> dict:
    """Routing statistics of every MoM layer of ``net`` (a MemLM) on one MQAR batch
    (``{"input_ids": [B, T], "labels": [B, T]}``, as ``memarch.data.MQAR`` items stacked);
    module docstring. ``per_query``: also each layer's per-query booleans under
    ``"queries"``. Runs in ``torch.no_grad`` and leaves the model's mode as it was."""
    layers = mom_layers(net)
    ids, labels = batch["input_ids"], batch["labels"]
    if ids.dim() == 1:
        ids, labels = ids[None], labels[None]
    if ids.shape != labels.shape:
        raise ValueError(f"routing_stats: input_ids {tuple(ids.shape)} and labels "
                         f"{tuple(labels.shape)} must have the same shape [B, T]")
    device = next(net.parameters()).device
    ids, labels = ids.to(device), labels.to(device)
    rows, qpos, kpos = _queries(ids, labels)
    kpos = kpos.to(device)
    pair_mask = torch.zeros(ids.shape, dtype=torch.bool, device=device)
    pair_mask[rows, kpos] = True
    pair_mask[rows, kpos + 1] = True
    was_training = net.training
    net.eval()
    try:
        routings, logits = _capture(net, layers, ids)
    finally:
        net.train(was_training)
    correct = logits[rows, qpos].argmax(-1) == labels[rows, qpos]
    return {
        "n_sequences": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
        "n_queries": int(rows.numel()), "accuracy": _frac(correct),
        "layers": [_layer_stats(m, w, r, rows, qpos, kpos, pair_mask, correct, per_query)
                   for m, (w, r) in zip(layers, routings)],
    }


# -- CLI ----------------------------------------------------------------------------------------
def run_data_config(ckpt: Path) -> dict:
    """The MQAR dataset arguments of the run that wrote ``ckpt`` (``RUN/checkpoints/x.ckpt``
    -> ``RUN/.hydra/config.yaml``), plus ``seed`` (data.val_seed); {} when there is no such
    file or its data is not MQAR. Values that are not plain numbers are left out."""
    cfg_file = ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        return {}
    import yaml
    try:
        cfg = yaml.safe_load(cfg_file.read_text())
    except yaml.YAMLError:
        return {}
    data = (cfg or {}).get("data") or {}
    ds = data.get("dataset") or {}
    if not isinstance(ds, dict) or ds.get("_target_") != "memarch.data.MQAR":
        return {}
    out = {k: ds[k] for k in MQAR_DEFAULTS if isinstance(ds.get(k), (int, float))
           and not isinstance(ds.get(k), bool)}
    if isinstance(data.get("val_seed"), int):
        out["seed"] = data["val_seed"]
    out["_from"] = str(cfg_file)
    return out


def mqar_batch(n: int, *, seed: int, **kw) -> dict:
    """Items 0..n-1 of ``MQAR(seed=seed, split="val", **kw)`` stacked: {input_ids, labels}."""
    ds = MQAR(seed=seed, split="val", size=n, **kw)
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "labels")}


def format_table(stats: dict) -> str:
    lines = [f"{stats['n_sequences']} sequences x {stats['seq_len']} tokens, "
             f"{stats['n_queries']} queries, recall accuracy {stats['accuracy']:.3f}", ""]
    head = (f"{'layer':>5} {'route_by':>9} {'load (all)':>24} {'load (pairs)':>24} "
            f"{'key@1':>6} {'key@k':>6} {'val@1':>6} {'val@k':>6} {'H/logM':>6} "
            f"{'acc|ov':>6} {'acc|no':>6}")
    lines += [head, "-" * len(head)]

    def f(v):
        return "   -  " if v is None else f"{v:6.3f}"
    for s in stats["layers"]:
        load = " ".join(f"{v:.2f}" for v in s["load"])
        pairs = " ".join(f"{v:.2f}" for v in s["load_pairs"])
        lines.append(f"{s['layer']!s:>5} {s['route_by']:>9} {load:>24} {pairs:>24} "
                     f"{f(s['key_top1_match'])} {f(s['key_topk_overlap'])} "
                     f"{f(s['value_top1_match'])} {f(s['value_topk_overlap'])} "
                     f"{f(s['entropy'] / s['max_entropy'])} "
                     f"{f(s['accuracy_value_overlap'])} {f(s['accuracy_no_value_overlap'])}")
        if s["route_by"] != "token":
            rl = " ".join(f"{v:.2f}" for v in s["read_load"])
            rp = " ".join(f"{v:.2f}" for v in s["read_load_pairs"])
            lines.append(f"{'':>5} {'(reads)':>9} {rl:>24} {rp:>24}")
    chance = sorted({(s["n_memories"], s["topk"], s["chance_top1"], s["chance_topk_overlap"])
                     for s in stats["layers"]})
    lines.append("")
    for M, k, c1, ck in chance:
        lines.append(f"chance (uniform random routing, M={M}, k={k}): top-1 match {c1:.3f}, "
                     f"top-k overlap {ck:.3f}")
    lines.append("key@1 / key@k: the key token's and the query's top-1 memory agree / top-k "
                 "sets meet; val@: the same for the value token (where the pair is written); "
                 "acc|ov, acc|no: recall accuracy on the queries whose value token's top-k set "
                 "meets / misses the query's")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--batches", type=int, default=1, help="batches of --batch-size sequences")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--pairs", type=int, help="num_kv_pairs")
    ap.add_argument("--gap", type=int)
    ap.add_argument("--num-keys", type=int)
    ap.add_argument("--num-values", type=int)
    ap.add_argument("--power-a", type=float)
    ap.add_argument("--seed", type=int, help="data seed (default: the run's data.val_seed, 1)")
    ap.add_argument("--json", type=Path, help="also write the statistics here")
    args = ap.parse_args(argv)
    for name in ("batches", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")

    from memarch.checkpoint import load
    net = load(args.checkpoint).model
    run = run_data_config(args.checkpoint)
    data = {**MQAR_DEFAULTS, **{k: v for k, v in run.items() if not k.startswith("_")}}
    data.setdefault("seed", VAL_SEED)
    for flag, key in (("seq_len", "seq_len"), ("pairs", "num_kv_pairs"), ("gap", "gap"),
                      ("num_keys", "num_keys"), ("num_values", "num_values"),
                      ("power_a", "power_a"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    seed = data.pop("seed")
    vocab = 1 + data["num_keys"] + data["num_values"]
    if vocab > getattr(net, "vocab_size", vocab):
        ap.error(f"MQAR with num_keys={data['num_keys']}, num_values={data['num_values']} has "
                 f"{vocab} token ids, more than the model's vocab_size={net.vocab_size}")
    try:
        batch = mqar_batch(args.batches * args.batch_size, seed=seed, **data)
        stats = routing_stats(net, batch)
    except ValueError as e:
        print(f"mom_routing: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    stats["data"] = {**data, "seed": seed,
                     "source": run.get("_from", "configs/data/mqar.yaml defaults")}
    stats["checkpoint"] = str(args.checkpoint)
    print(f"MQAR {data} seed {seed} (from {stats['data']['source']}, flags override)")
    print(format_table(stats))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(stats, indent=1))
    return stats


if __name__ == "__main__":
    main()
