"""How many training contexts the head-rows offset fit needs: u fitted on fewer or more of them, judged
on contexts it never saw.

    python scripts/offset_contexts.py                 # x at b = 4.5 and e at b = -1.7 on the bundled model

For each set and b, the head inputs of the start model are cached on the play windows of the train split
and on continuations of the training prompts sampled at b (head_rows.training_contexts, 48 windows and 2
continuations a prompt), and on held-out contexts: the eval windows of the plays' test split, and 4
continuations of each R prompt sampled at b on a seed no run uses. u is fitted (head_rows.offset_direction)
on the first n windows and on one or both continuations of each prompt; the table gives h·u (1 = the
exact tilt's offset) and the KL from the exact tilt softmax(z + b·M) to the offset tilt softmax(z + b·(h·u)·M)
on the held-out contexts, in nats a token.
"""

from __future__ import annotations

import argparse

import torch

from tokentilt.data import corpus
from tokentilt.measurement.evaluate import EvalConfig, held_out_text, held_out_windows
from tokentilt.measurement.sampling import DEFAULT_PROMPTS, SampleConfig, sample
from tokentilt.training import head_rows, rate

HELD_OUT_SEED = 99  # the R prompts' continuations: neither the eval seed nor the probe seed


def cells(text) -> list[tuple[str, float]]:
    return [(name, float(b)) for name, b in (cell.split("@") for cell in text)]


def offset_kl(h: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: float) -> float:
    """Mean KL(softmax(z + b·M) || softmax(z + b·(h·u)·M)) over the rows of h (N, d)."""
    total = 0.0
    for part in h.split(512):
        z = part @ weight.T
        exact = (z + bias * mask).log_softmax(-1)
        offset = (z + (bias * (part @ u))[:, None] * mask).log_softmax(-1)
        total += (exact.exp() * (exact - offset)).sum().item()
    return total / len(h)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["x@4.5", "e@-1.7"], help="SET@b, as tokentilt --toward")
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 8, 16, 24, 48])
    args = parser.parse_args(argv)
    print(
        "| set | b | play windows | continuations a prompt | positions | h·u held-out plays | KL held-out plays "
        "| h·u R-prompt continuations | KL R-prompt continuations |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, bias in cells(args.cells):
        model, tokenizer, tokens = rate.load_with_set("bundled", name, lambda _: None)
        head_rows.untie_output_head(model)
        mask, weight = tokens.mask, model.get_output_embeddings().weight.detach()
        plays = corpus.train_tokens(tokenizer)
        text = head_rows.training_contexts(model, tokenizer, plays, mask, bias, "text", 0)
        h_text = head_rows.head_inputs(model, text.batches, mask).h  # (48 * 128, d), window after window
        policy = head_rows.training_contexts(model, tokenizer, plays, mask, bias, "policy", 0)
        per = head_rows.KL_CONTEXTS.per_prompt
        h_policy = [policy.known[i].view(per, -1, weight.size(1)) for i in range(len(policy.batches))]  # (2, T, d)
        cfg = EvalConfig()
        h_plays = head_rows.run_to_head(model, list(held_out_windows(tokenizer, cfg, held_out_text(cfg)).split(8)))
        got = sample(
            model,
            tokenizer,
            list(DEFAULT_PROMPTS),
            4,
            SampleConfig(max_new_tokens=48, strategy="multinomial"),
            seed=HELD_OUT_SEED,
            bias_mask=mask,
            bias=bias,
        )
        rows = [torch.tensor(tokenizer(p)["input_ids"]).expand(4, -1) for p in DEFAULT_PROMPTS]
        h_cont = head_rows.run_to_head(
            model, [torch.cat([r, got.tokens[i * 4 : (i + 1) * 4]], 1) for i, r in enumerate(rows)]
        )
        for windows in args.windows:
            for per_prompt in range(1, per + 1):
                h = torch.cat(
                    [h_text[: windows * head_rows.WINDOW_LEN]]
                    + [p[:per_prompt].reshape(-1, p.size(-1)) for p in h_policy]
                )
                u = head_rows.offset_direction(h)
                on_plays, on_cont = h_plays @ u, h_cont @ u
                print(
                    f"| {name} | {bias:g} | {windows} | {per_prompt} | {len(h):,} "
                    f"| {on_plays.mean():.3f} ± {on_plays.std():.3f} | {offset_kl(h_plays, u, weight, mask, bias):.5f} "
                    f"| {on_cont.mean():.3f} ± {on_cont.std():.3f} | {offset_kl(h_cont, u, weight, mask, bias):.5f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
