"""The weight view of an audit: which tensors, and which rows of the output head, a fine-tune changed.

Where the model and its reference share an architecture, comparing their weights is a cheap first
look. A head-rows tilt (tokentilt's default placement) changes only some rows of an untied output
head, so the set it tilted is read off exactly: the rows that differ. A LoRA or full fine-tune moves
the blocks ("the body"), and the view then says how the change is spread over the layers. Rows are
compared against the reference's output head (its input embeddings when the head is tied).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

HEAD_ROWS_LIMIT = 0.5  # more rows than this share of the vocabulary changed: not a set, a retrained head


@dataclass
class WeightView:
    """What changed between two models' weights."""

    comparable: bool  # the same parameter names and shapes (else nothing below is measured)
    tensors: int  # tensors compared: the body's, the input embeddings and the output head (once each)
    changed: int  # of them, those that differ at all
    body_change: float  # ||model - reference|| / ||reference|| over every tensor but the embeddings and head
    head_rows_changed: int  # output-head rows that differ from the reference's
    head_only: bool  # nothing but some head rows changed: a head-rows edit, whose set is `rows`
    top: list[dict]  # the most changed tensors: name, relative change
    layers: list[dict]  # per block index: relative change of its tensors together
    summary: str  # one sentence for people
    rows: torch.Tensor | None = None  # (V,) bool, the head rows that changed

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("rows")
        return out


def _named(model) -> dict[str, torch.Tensor]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name: p.detach() for name, p in base.named_parameters()}


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a in ("layers", "h", "blocks") and b.isdigit():
            return int(b)
    return None


def weight_view(model, reference, top: int = 8) -> WeightView:
    """Compare model's weights with reference's (same architecture); see the module's docstring."""
    ends = {}  # "input embeddings" / "output head" -> (model's, reference's)
    for label, get in (("input embeddings", "get_input_embeddings"), ("output head", "get_output_embeddings")):
        ends[label] = tuple(getattr(m, get)().weight.detach() for m in (model, reference))
    mine, theirs = _named(model), _named(reference)
    skip_m = {p.data_ptr() for p, _ in ends.values()}
    skip_r = {p.data_ptr() for _, p in ends.values()}
    body = [n for n, p in mine.items() if p.data_ptr() not in skip_m]
    shared = [
        n for n in body if n in theirs and theirs[n].data_ptr() not in skip_r and mine[n].shape == theirs[n].shape
    ]
    if len(shared) != len(body) or any(a.shape != b.shape for a, b in ends.values()):
        return WeightView(
            False, 0, 0, 0.0, 0, False, [], [], "the weights are not comparable (different parameter names or shapes)"
        )
    head_m, head_r = ends["output head"]
    rows = (head_m.float() != head_r.float()).any(1).cpu()  # (V,)
    changes, body_sq, norm_sq, layers = [], 0.0, 0.0, {}
    for name, a, b in [(n, mine[n], theirs[n]) for n in shared] + [(k, *v) for k, v in ends.items()]:
        diff, norm = float((a.float() - b.float()).norm()), float(b.float().norm())
        changes.append({"name": name, "relative_change": diff / norm if norm else float(diff > 0)})
        if name in ends:
            continue
        body_sq, norm_sq = body_sq + diff**2, norm_sq + norm**2
        layer = _layer_of(name)
        if layer is not None:
            d = layers.setdefault(layer, [0.0, 0.0])
            d[0], d[1] = d[0] + diff**2, d[1] + norm**2
    changed = sum(c["relative_change"] > 0 for c in changes)
    spread = (body_sq / norm_sq) ** 0.5 if norm_sq else 0.0
    k = int(rows.sum())
    head_only = changed == 1 and 0 < k <= HEAD_ROWS_LIMIT * len(rows)  # the one changed tensor is the head
    per_layer = [{"layer": i, "relative_change": (n / d) ** 0.5 if d else 0.0} for i, (n, d) in sorted(layers.items())]
    if changed == 0:
        summary = "the weights are identical"
    elif head_only:
        summary = f"only {k} rows of the output head changed: a head-rows edit of those {k} tokens"
    else:
        moved = sum(x["relative_change"] > 1e-4 for x in per_layer)
        summary = (
            f"{changed} of {len(changes)} tensors changed; the body moved by {spread:.2e} of its norm, "
            f"spread over {moved} of {len(per_layer)} blocks; {k} output-head rows changed"
        )
    ranked = sorted(changes, key=lambda c: -c["relative_change"])[:top]
    return WeightView(True, len(changes), changed, spread, k, head_only, ranked, per_layer, summary, rows)
