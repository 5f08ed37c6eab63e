"""Phase 2's environment, rewards and curriculum (charlie.rl), on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from charlie import UNPARSEABLE
from charlie.errors import CharlieError
from charlie.rl import curriculum, environment, rewards
from charlie.rl.rewards import RewardSpec

SPEC = rewards.spec_from_costs(5, 10)  # a fill in and a fill out: 2 x 15 bps = 0.003
WELL = "<reasoning>Trend up.</reasoning><support>- RSI 60</support><action><{}></action><|end|>"


def test_the_cost_is_the_backtests_round_trip():
    assert SPEC.cost == pytest.approx(0.003) and SPEC.band == pytest.approx(0.003)


@pytest.mark.parametrize(
    ("action", "ret", "expected"),
    [
        ("BUY", 0.02, 1.7),  # (0.02 - 0.003) / 0.01
        ("STRONG_BUY", 0.02, 3.0),  # (0.04 - 0.006) / 0.01 = 3.4, clipped
        ("SELL", 0.02, -2.3),  # (-0.02 - 0.003) / 0.01
        ("STRONG_SELL", -0.01, 1.4),  # (0.02 - 0.006) / 0.01
        ("BUY", 0.002, -0.1),  # right direction, but the move does not pay the cost
        ("HOLD", 0.002, 0.5),  # inside the cost band: standing aside was right
        ("HOLD", -0.003, 0.5),  # on the band's edge
        ("HOLD", 0.013, -1.0),  # (0.013 - 0.003) / 0.01 missed
        ("HOLD", -0.2, -3.0),  # a missed crash, clipped
        (UNPARSEABLE, 0.0, -3.0),  # no answer is never safe
    ],
)
def test_the_return_reward_is_the_actions_own_net_return_over_volatility(action, ret, expected):
    assert rewards.return_score(action, ret, 0.01, SPEC) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("action", "ret", "expected"),
    [
        ("BUY", -0.02, -1.5 * 2.3),  # a false bullish call: 1.5 x (-0.02 - 0.003) / 0.01
        ("SELL", 0.02, -1.0 * 2.3),  # a false bearish call, the same size: 1.0 x
        ("BUY", 0.02, 0.0),  # right calls and HOLD add nothing
        ("HOLD", -0.05, 0.0),
        (UNPARSEABLE, -0.05, 0.0),
    ],
)
def test_the_asymmetry_penalises_false_bullish_calls_more(action, ret, expected):
    assert rewards.asymmetry_score(action, ret, 0.01, SPEC) == pytest.approx(expected)


def test_the_asymmetry_is_configurable():
    even = RewardSpec(cost=0.003, bullish_penalty=1.0, bearish_penalty=1.0)
    assert rewards.asymmetry_score("BUY", -0.02, 0.01, even) == pytest.approx(
        rewards.asymmetry_score("SELL", 0.02, 0.01, even)
    )


def test_the_hold_band_is_configurable():
    wide = RewardSpec(cost=0.003, hold_band=0.02, hold_reward=0.2)
    assert rewards.return_score("HOLD", 0.013, 0.01, wide) == pytest.approx(0.2)


def test_the_format_reward_scores_structure_and_floors_unparseable():
    assert rewards.format_score(WELL.format("BUY"), SPEC) == 1.0
    assert rewards.format_score(WELL.format("BUY").removesuffix("<|end|>"), SPEC) == 1.0
    assert rewards.format_score("<reasoning>x</reasoning><action><BUY></action>", SPEC) == 0.0
    assert rewards.format_score(WELL.format("BUY") + " and more", SPEC) == 0.0
    assert rewards.format_score("I would buy here.", SPEC) == 0.0  # the text fallback reads it
    assert rewards.format_score("<reasoning>no view", SPEC) == SPEC.format_floor
    assert rewards.format_score("", SPEC) == -1.0


def test_no_outcome_scores_none_which_trl_leaves_out():
    assert rewards.return_score("BUY", math.nan, 0.01, SPEC) is None
    assert rewards.asymmetry_score("BUY", 0.01, math.nan, SPEC) is None


GROUP = [WELL.format(a) for a in ("STRONG_BUY", "BUY", "HOLD", "SELL")] + [
    "<reasoning>trend up</reasoning><action><BUY></action>",
    "rambling with no call",
]


@pytest.mark.parametrize(("ret", "vol"), [(0.02, 0.01), (-0.015, 0.02), (0.001, 0.005)])
def test_every_term_varies_within_a_group_of_one_prompt(ret, vol):
    """A term constant across one prompt's completions has zero advantage: it teaches nothing."""
    n = len(GROUP)
    for func in rewards.reward_functions(SPEC):
        scores = func(["same prompt"] * n, GROUP, forward_return=[ret] * n, volatility=[vol] * n)
        assert len(scores) == n and np.std(scores) > 0, func.__name__


def test_the_functions_take_trls_signature_and_conversational_completions():
    fmt, ret, asym = rewards.reward_functions(SPEC)
    assert [f.__name__ for f in (fmt, ret, asym)] == [
        "format_reward", "return_reward", "asymmetry_reward",
    ]  # fmt: skip
    chat = [[{"role": "assistant", "content": WELL.format("SELL")}]]
    extra = {"trainer_state": None, "uid": ["A-1"], "ticker": ["A"]}
    assert fmt(["p"], chat, **extra) == [1.0]
    assert ret(["p"], chat, forward_return=[-0.01], volatility=[0.01], **extra) == [
        pytest.approx(0.7)
    ]  # (0.01 - 0.003) / 0.01
    assert asym(["p"], chat, forward_return=[-0.01], volatility=[0.01], **extra) == [0.0]


# ---------------------------------------------------------------------------- environment


def bars(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    dates = pd.bdate_range("2024-01-01", periods=n)
    return pd.DataFrame({"date": dates, "open": close * 0.999, "high": close * 1.01,
                         "low": close * 0.99, "close": close, "adj_close": close,
                         "volume": 1e6})  # fmt: skip


def rows(frame: pd.DataFrame, positions, ticker: str = "ACME") -> list[dict]:
    return [{"uid": f"{ticker}-{i}", "ticker": ticker, "as_of_date": str(frame["date"][i].date()),
             "prompt": f"snapshot {i}", "action": "BUY"} for i in positions]  # fmt: skip


def test_an_episode_earns_the_next_open_to_the_close_h_days_on():
    frame = bars()
    out = environment.build_episodes(rows(frame, [30, 40]), {"ACME": frame}, horizon=5)
    close, opens = frame["adj_close"].to_numpy(), frame["open"].to_numpy()
    expected = [close[t + 5] / opens[t + 1] - 1 for t in (30, 40)]
    assert out.frame["forward_return"].tolist() == pytest.approx(expected)
    assert out.frame["reward_end"].tolist() == [str(frame["date"][t + 5].date()) for t in (30, 40)]
    logret = np.diff(np.log(close))
    vol = [np.std(logret[t - 20 : t], ddof=1) * math.sqrt(5) for t in (30, 40)]
    assert out.frame["volatility"].tolist() == pytest.approx(vol)
    assert out.dropped == {}


def test_no_episode_reads_a_price_past_its_horizon():
    frame = bars()
    before = environment.build_episodes(rows(frame, [20, 30]), {"ACME": frame}, horizon=5).frame
    later = frame.copy()
    later.loc[36:, ["open", "high", "low", "close", "adj_close"]] *= 3.0  # after 30 + 5
    after = environment.build_episodes(rows(frame, [20, 30]), {"ACME": later}, horizon=5).frame
    pd.testing.assert_frame_equal(before, after)
    later.loc[35:, ["close", "adj_close"]] *= 3.0  # the horizon's own bar does count
    moved = environment.build_episodes(rows(frame, [30]), {"ACME": later}, horizon=5).frame
    assert moved["forward_return"][0] != pytest.approx(before["forward_return"][1])


def test_episodes_without_an_outcome_are_dropped_and_counted():
    frame = bars()
    out = environment.build_episodes(
        rows(frame, [5, 30, 57]) + rows(frame, [30], ticker="GONE"), {"ACME": frame}, horizon=5
    )
    assert out.frame["uid"].tolist() == ["ACME-30"]
    assert out.dropped == {"short_history": 1, "window_past_data": 1, "no_prices": 1}


def test_a_reward_window_into_the_held_out_split_is_refused():
    frame = bars()
    train = environment.build_episodes(rows(frame, [30, 40]), {"ACME": frame}, horizon=5).frame
    environment.check_reward_window(train, str(frame["date"][46].date()), 5)  # ends at bar 45
    with pytest.raises(CharlieError, match=r"5-day reward of 1 training episode.*ACME-40"):
        environment.check_reward_window(train, str(frame["date"][45].date()), 5)


# ---------------------------------------------------------------------------- curriculum


def test_the_curriculum_runs_calm_episodes_first_in_shuffled_bands():
    vol = np.array([0.05, 0.01, 0.03, 0.02, 0.04, 0.06])
    order = curriculum.curriculum_order(vol, stages=3, seed=0)
    assert sorted(order.tolist()) == list(range(6))
    bands = [set(order[i : i + 2].tolist()) for i in (0, 2, 4)]
    assert bands == [{1, 3}, {2, 4}, {0, 5}]
    assert np.array_equal(order, curriculum.curriculum_order(vol, stages=3, seed=0))
    assert curriculum.curriculum_order(vol, stages=1, seed=0).tolist() != np.argsort(vol).tolist()


def test_the_curriculum_uses_no_future_prices():
    frame = bars(80)
    episodes = environment.build_episodes(rows(frame, range(25, 70)), {"ACME": frame}, horizon=3)
    before = curriculum.apply_curriculum(episodes.frame, stages=3, seed=1)
    later = frame.copy()
    later.loc[73:, ["open", "close", "adj_close"]] *= 0.2  # after every episode's window
    again = environment.build_episodes(rows(frame, range(25, 70)), {"ACME": later}, horizon=3)
    after = curriculum.apply_curriculum(again.frame, stages=3, seed=1)
    assert before["uid"].tolist() == after["uid"].tolist()
    stages = before.groupby("stage")["volatility"]
    assert (stages.max().to_numpy()[:-1] <= stages.min().to_numpy()[1:]).all()  # easy first


def test_with_a_tokenizer_the_text_is_the_ids_decoded_with_their_special_tokens():
    """TRL's ``completions`` lose the special tokens, the thesis's structure and action."""
    from charlie.training.tokens import add_thesis_tokens, train_tokenizer

    tok = train_tokenizer([WELL.format("BUY"), "Trend up. RSI 60"] * 20, 300)
    add_thesis_tokens(tok)
    ids = tok(WELL.format("STRONG_SELL"), add_special_tokens=False)["input_ids"]
    stripped = tok.decode(ids, skip_special_tokens=True)
    assert "<action>" not in stripped  # what TRL hands over as the completion
    fmt, ret, _ = rewards.reward_functions(SPEC, tok)
    assert fmt(["p"], [stripped], completion_ids=[ids]) == [1.0]
    assert ret(["p"], [stripped], completion_ids=[ids], forward_return=[-0.01],
               volatility=[0.01]) == [pytest.approx(1.4)]  # fmt: skip
    # Without the ids, the action went with the special tokens: the floor.
    assert rewards.reward_functions(SPEC)[0](["p"], [stripped]) == [SPEC.format_floor]
