"""The combined verdict: a channel's finding counts as a tilt only where its set moved where it does not belong as
much as where it fits (lens.context_dependence), in a fixed order of channels; and --channels' parsing."""

import pytest
import torch

from tokentilt.audit.channels import ChannelResult, Finding
from tokentilt.audit.combine import CHANNEL_ORDER, GATE_CUT, MIN_LIFT, combine, grow, passes
from tokentilt.audit.evidence import lift_findings
from tokentilt.settings import AUDIT_CHANNELS, parse_channels

V = 20


def finding(tokens, direction="toward", label="set"):
    return Finding(label=label, tokens=tokens, direction=direction, statistic=1.0, p_value=0.001)


def context(ratio_low: float, lift_ci=(MIN_LIFT + 1, MIN_LIFT + 2)) -> dict:
    """A context test's result: the ratio's 95% interval from its lower bound, the lift where the set does not fit."""
    return {
        "ratio": ratio_low + 0.1,
        "ratio_ci": [ratio_low, ratio_low + 0.2],
        "low": {"lift_ci": list(lift_ci)},
        "high": {},
        "verdict": "",
    }


def dependence_by_set(ratios: dict):
    """A context test that reads the ratio's lower bound off the set's first token, and the lift where the set does
    not fit (a pair) or else one well above MIN_LIFT."""

    def test(mask):
        got = ratios[int(mask.nonzero()[0])]
        return context(*got) if isinstance(got, tuple) else context(got)

    return test


def test_a_finding_that_moved_only_where_it_fits_is_not_a_tilt_and_the_next_channel_is_tried():
    channels = {
        "lens": ChannelResult("lens", True, [finding([1, 2, 3], label="domain words")]),
        "words": ChannelResult("words", True, [finding([7, 8], direction="away", label="tilted words")]),
    }
    out = combine(None, None, channels, dependence_by_set({1: 0.05, 7: (0.9, (-6.0, -5.0))}), V)
    assert out["stands_out"] and out["channel"] == "words" and out["direction"] == "away"
    assert out["tokens"] == [7, 8]
    assert [t["passed"] for t in out["tried"]] == [False, True]
    assert out["tried"][0]["context"]["ratio_ci"] == [0.05, 0.25]


def test_nothing_passes_the_gate_nothing_stands_out():
    channels = {"decomposition": ChannelResult("decomposition", True, [finding([4, 5])])}
    out = combine(finding([9]), None, channels, dependence_by_set({4: GATE_CUT - 0.01, 9: 0.0}), V)
    assert not out["stands_out"] and out["direction"] == "none" and out["tokens"] == []
    assert [t["channel"] for t in out["tried"]] == ["decomposition", "lift"]  # CHANNEL_ORDER: the lift after it


def test_a_set_moved_alike_everywhere_but_by_little_is_not_a_tilt_in_either_direction():
    assert passes(context(0.9, (MIN_LIFT + 0.1, 5.0)), "toward")
    assert not passes(context(0.9, (MIN_LIFT - 0.1, 5.0)), "toward")  # the bound nearer zero decides
    assert passes(context(0.9, (-6.0, -MIN_LIFT - 0.1)), "away")
    assert not passes(context(0.9, (-6.0, -MIN_LIFT + 0.1)), "away")
    assert not passes(context(0.9, (MIN_LIFT + 1, MIN_LIFT + 2)), "away")  # raised is not pushed away
    assert not passes(context(GATE_CUT - 0.01), "toward")
    channels = {"lens": ChannelResult("lens", True, [finding([1, 2])]), "words": ChannelResult("words", True, [])}
    out = combine(None, None, channels, lambda mask: context(1.0, (1.1, 1.7)), V)  # an honest domain's size
    assert not out["stands_out"] and not out["tried"][0]["passed"]


def test_the_verdict_names_every_token_the_lift_moved_as_much_as_the_findings_own():
    lift = torch.zeros(V)
    lift[[1, 2]] = 4.0  # the channel named these two
    lift[[3, 4, 5]] = torch.tensor([3.0, 2.9, 2.7])  # moved alike: 3.0 and 2.9 reach 0.7 x 4.0 = 2.8, 2.7 does not
    lift[6] = -5.0
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[1, 2]] = True
    assert grow(mask, lift, "toward").nonzero().squeeze(1).tolist() == [1, 2, 3, 4]
    away = torch.zeros(V, dtype=torch.bool)
    away[6] = True
    assert grow(away, lift, "away").nonzero().squeeze(1).tolist() == [6]
    assert grow(away, lift, "toward").equal(away)  # a set the lift did not move that way keeps its own tokens
    channels = {"lens": ChannelResult("lens", True, [finding([1, 2])])}
    out = combine(None, None, channels, dependence_by_set({1: 0.9}), V, lift=lift)
    assert out["tokens"] == [1, 2, 3, 4] and out["found_by_channel"] == [1, 2]
    head = combine(None, finding([1]), {}, dependence_by_set({1: 0.0}), V, lift=lift)
    assert head["tokens"] == [1]  # head rows are exact: not grown


def test_a_channel_that_does_not_stand_out_is_not_tried_and_head_rows_need_no_gate():
    channels = {"lens": ChannelResult("lens", False, [finding([1])])}
    failing = context(0.0, (0.1, 0.2))  # head rows are tested for what the report says, but not gated
    out = combine(None, finding([3, 4]), channels, lambda mask: failing, V)
    assert out["stands_out"] and out["channel"] == "weights" and out["tokens"] == [3, 4]
    assert [(t["channel"], t["passed"]) for t in out["tried"]] == [("weights", True)]
    assert out["tried"][0]["context"]["ratio_ci"] == [0.0, 0.2]
    assert CHANNEL_ORDER[0] == "weights"


def test_the_lift_finding_is_its_top_feature_or_the_head_rows_when_the_weights_named_it():
    rows = [{"selector": "contains:x", "label": "tokens containing 'x'", "auroc": 0.1, "score": 0.9, "kind": "family"}]
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[2, 5]] = True
    lift, head = lift_findings(rows, [mask], True)
    assert head is None and lift.tokens == [2, 5] and lift.direction == "away"
    rows[0]["kind"] = "weights"
    assert lift_findings(rows, [mask], True)[0] is None
    assert lift_findings(rows, [mask], False) == (None, None)


def test_channels_option():
    assert parse_channels("all") == AUDIT_CHANNELS and parse_channels("none") == ()
    assert parse_channels("words, lens") == ("lens", "words")  # in the audit's order
    with pytest.raises(ValueError, match="unknown channel 'tea'"):
        parse_channels("lens,tea")


def test_the_report_says_what_moved_by_how_much_and_where_or_why_nothing_passed():
    from types import SimpleNamespace

    from tokentilt.jobs.audit import channels_section, combined_line

    lens = ChannelResult("lens", True, [finding([1, 2], label="x tokens")], seconds=3.0)
    test = context(0.9)
    test["low"].update(lift=MIN_LIFT + 1.5)
    test["mass"] = {"reference": 0.0004, "model": 0.0577, "change": 0.0573, "change_ci": [0.051, 0.064]}
    test["shows"] = [[0, 5, 4.2, 0.0001, 0.0069]]
    out = combine(None, None, {"lens": lens}, lambda mask: test, V)
    line = combined_line(out)
    assert line.startswith("combined: a tilt toward x tokens (2 tokens, named by lens)")
    assert "0.0004 -> 0.0577 (+0.0573 [+0.0510, +0.0640])" in line
    out["shows"] = [{"text": "it was the age of", "lift": 4.2, "p_reference": 0.0001, "p_model": 0.0069}]
    report = "\n".join(channels_section(SimpleNamespace(channels={"lens": lens}, combined=out)))
    assert "| lens | yes | x tokens | toward |" in report
    assert f"{MIN_LIFT + 1.5:.2f} [{MIN_LIFT + 1:.2f}, {MIN_LIFT + 2:.2f}] | tilt |" in report
    assert "- `it was the age of` 0.0001 -> 0.0069" in report
    small = combine(None, None, {"lens": lens}, lambda mask: context(0.9, (1.1, 1.7)), V)
    assert combined_line(small) == (
        "combined: no tilt (1 finding(s) of the channels failed the context test: their set moved only where it "
        f"fits, or by less than {MIN_LIFT:.2f} nats where it does not)"
    )


def test_special_tokens_are_set_apart_never_a_tilt_nor_in_one():
    """A chat fine-tune raises end-of-turn everywhere, by as much where it 'does not belong': the context test
    passes it. So the tokenizer's special ids leave every finding but the head rows' and are reported apart."""
    from types import SimpleNamespace

    from tokentilt.jobs.audit import channels_section, combined_line

    end_of_turn, other_special = 17, 18

    def passing(mask):  # every set moved alike everywhere, by MIN_LIFT + 1 or more
        return context(1.0)

    only = {"lens": ChannelResult("lens", True, [finding([end_of_turn, other_special], label="template")])}
    out = combine(None, None, only, passing, V, special=[end_of_turn, other_special])
    assert not out["stands_out"] and out["tokens"] == []
    assert out["tried"] == [
        {"channel": "lens", "label": "template", "direction": "toward", "passed": False, "special_only": True}
    ]
    assert out["special"] == [{"channel": "lens", "direction": "toward", "tokens": [17, 18]}]
    assert combine(None, None, only, passing, V)["stands_out"]  # without the special ids it is called a tilt
    out["special"][0]["strings"] = ["<|im_end|>", "<|im_start|>"]
    assert combined_line(out) == (
        "combined: no tilt; special tokens moved, reported apart and not called a tilt: "
        "<|im_end|> toward (lens), <|im_start|> toward (lens)"
    )
    report = "\n".join(channels_section(SimpleNamespace(channels=only, combined=out)))
    assert "| lens | template | toward |  |  | special tokens only: set apart |" in report

    lift = torch.zeros(V)
    lift[[3, 4, end_of_turn]] = 5.0
    mixed = {"decomposition": ChannelResult("decomposition", True, [finding([3, end_of_turn])])}
    seen = []
    out = combine(None, None, mixed, lambda mask: seen.append(mask.clone()) or context(1.0), V, lift=lift, special=[17])
    assert seen[0].nonzero().squeeze(1).tolist() == [3]  # the context test reads the set without the special id
    assert out["stands_out"] and out["tokens"] == [3, 4]  # grown by the lift, never back to the special id
    assert out["special"] == [{"channel": "decomposition", "direction": "toward", "tokens": [17]}]

    head = combine(None, finding([end_of_turn]), {}, passing, V, special=[17])
    assert head["stands_out"] and head["tokens"] == [17] and head["special"] == []  # edited head rows are exact
