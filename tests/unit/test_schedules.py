"""Closed-form schedules: every phase and shape against hand formulas, spec round trips, errors.

Expected values are written out with math.* here, never taken from the
implementation. Convention under test (docs/schedules.md): a phase of n
steps evaluates local step s at progress p = (s + 1) / n, so its last step
is exactly its target and steps past the schedule hold the last value.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from warmstart.errors import SpecError, WarmstartError
from warmstart.schedules import (
    SGDR,
    Constant,
    Decay,
    InvSqrt,
    Rewarm,
    Schedule,
    ScheduleSpecError,
    Stable,
    Warmup,
    from_dict,
    parse,
    presets,
)
from warmstart.schedules.phases import DECAY_SHAPES, WARMUP_SHAPES

approx = lambda x: pytest.approx(x, rel=1e-12, abs=1e-15)  # noqa: E731


def values(spec: str, n: int) -> list[float]:
    return parse(spec).multipliers(n)


# --- warmup shapes


def test_linear_warmup_boundaries():
    v = values("warmup:linear:4", 6)
    assert v[0] == 0.25  # first step: one increment, never 0
    assert v[1] == 0.5 and v[2] == 0.75
    assert v[3] == 1.0  # last warmup step is the peak
    assert v[4] == 1.0 and v[5] == 1.0  # past the end holds the last value


def test_linear_warmup_from_start_ratio():
    v = values("warmup:linear:5:0.2", 5)
    for s in range(5):
        assert v[s] == approx(0.2 + 0.8 * (s + 1) / 5)
    assert v[4] == 1.0


def test_cosine_warmup():
    v = values("warmup:cosine:6:0.1", 8)
    for s in range(6):
        assert v[s] == approx(0.1 + 0.9 * 0.5 * (1 - math.cos(math.pi * (s + 1) / 6)))
    assert v[0] == approx(0.1 + 0.9 * 0.5 * (1 - math.cos(math.pi / 6)))
    assert v[5] == 1.0 and v[7] == 1.0


def test_exp_warmup():
    v = values("warmup:exp:4:0.01", 5)
    assert v[0] == approx(0.01 * 100 ** 0.25)
    assert v[1] == approx(0.1)
    assert v[2] == approx(0.01 * 100 ** 0.75)
    assert v[3] == 1.0 and v[4] == 1.0


def test_rewarm_is_a_warmup_with_its_own_name():
    assert values("rewarm:linear:4", 4) == values("warmup:linear:4", 4)
    assert isinstance(parse("rewarm:linear:4").phases[0], Rewarm)
    assert parse("rewarm:linear:4") != parse("warmup:linear:4")


# --- stable / constant


def test_stable_inherits_previous_level_and_can_set_its_own():
    v = values("warmup:linear:2 > stable:2 > decay:linear:2:0.5 > stable:2 > stable:2:0.3", 11)
    assert v[:4] == [0.5, 1.0, 1.0, 1.0]
    assert v[4] == approx(0.75) and v[5] == 0.5
    assert v[6:8] == [0.5, 0.5]  # stable continues at the decay's end
    assert v[8:10] == [0.3, 0.3] and v[10] == 0.3
    assert values("constant:3", 4) == [1.0] * 4
    assert values("stable:3:0.25", 4) == [0.25] * 4


# --- decay shapes, from the peak to end


@pytest.mark.parametrize("end", [0.0, 0.1])
def test_linear_decay(end):
    n = 5
    v = values(f"decay:linear:{n}:{end}", n + 2)
    for s in range(n):
        assert v[s] == approx(end + (1 - end) * (1 - (s + 1) / n))
    assert v[0] == approx(end + (1 - end) * 0.8)
    assert v[n - 1] == end  # last step lands on end
    assert v[n] == end and v[n + 1] == end


def test_cosine_decay():
    n, end = 8, 0.1
    v = values(f"warmup:linear:2 > decay:cosine:{n}:{end}", 2 + n + 1)
    for s in range(n):
        assert v[2 + s] == approx(end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (s + 1) / n)))
    assert v[2 + n - 1] == end and v[2 + n] == end


def test_one_minus_sqrt_decay():
    n = 9
    v = values(f"stable:3 > decay:1-sqrt:{n}", 3 + n + 1)
    for s in range(n):
        assert v[3 + s] == approx(1 - math.sqrt((s + 1) / n))
    assert v[3 + 8] == 0.0 and v[3 + 9] == 0.0


def test_exp_decay():
    v = values("decay:exp:4:0.01", 5)
    assert v[0] == approx(0.01 ** 0.25)
    assert v[1] == approx(0.1)
    assert v[3] == 0.01 and v[4] == 0.01


def test_decay_from_explicit_start():
    v = values("decay:linear:4:0.2:0.6", 4)
    for s in range(4):
        assert v[s] == approx(0.2 + 0.4 * (1 - (s + 1) / 4))


# --- sgdr and invsqrt


def test_sgdr_restarts_with_growing_periods():
    end = 0.1
    v = values(f"sgdr:20:3:2:{end}", 21)
    cyc = lambda pos, length: end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (pos + 1) / length))  # noqa: E731
    expected = [cyc(p, 3) for p in range(3)] + [cyc(p, 6) for p in range(6)] + [cyc(p, 12) for p in range(11)]
    for s in range(20):
        assert v[s] == approx(expected[s])
    assert v[2] == end and v[8] == end  # each cycle ends on end
    assert v[3] == approx(end + (1 - end) * 0.5 * (1 + math.cos(math.pi / 6)))  # restart near the peak
    assert v[20] == v[19]  # past the end: last value (cut mid-cycle)


def test_sgdr_constant_period():
    v = values("sgdr:8:4", 8)
    assert v[:4] == v[4:]
    assert v[3] == 0.0 and v[0] == approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_invsqrt_after_warmup():
    v = values("warmup:linear:4 > invsqrt:10:4", 15)
    assert v[3] == 1.0
    for s in range(10):
        assert v[4 + s] == approx(math.sqrt(4 / (4 + s + 1)))
    assert v[14] == v[13] == approx(math.sqrt(4 / 14))


# --- presets


def test_presets_expand_to_phases():
    assert presets.wsd(1000, warmup=100, decay_frac=0.2) == Schedule(
        (Warmup("linear", 100), Stable(700), Decay("1-sqrt", 200))
    )
    assert presets.cosine(100, warmup=10, min_ratio=0.1) == Schedule((Warmup("linear", 10), Decay("cosine", 90, 0.1)))
    assert presets.d2z(100, warmup=10) == Schedule((Warmup("linear", 10), Decay("linear", 90, 0.0)))
    assert presets.sgdr(100, t0=10, t_mult=2) == Schedule((SGDR(100, 10, 2),))
    assert presets.invsqrt(100, warmup=10) == Schedule((Warmup("linear", 10), InvSqrt(90, 10.0)))
    assert presets.rewarm(100, warmup=10, min_ratio=0.1) == Schedule(
        (Rewarm("linear", 10), Decay("cosine", 90, 0.1))
    )
    assert presets.infinite(100, warmup=10, cooldown=20, anneal=10, level=0.4) == Schedule(
        (Warmup("linear", 10), Decay("cosine", 20, 0.4), Stable(60), Decay("linear", 10, 0.0))
    )
    assert presets.constant(10, warmup=2) == Schedule((Warmup("linear", 2), Stable(8)))


def test_d2z_values():
    v = parse("d2z(total=10, warmup=2)").multipliers(11)
    assert v[:2] == [0.5, 1.0]
    for s in range(8):
        assert v[2 + s] == approx(1 - (s + 1) / 8)
    assert v[9] == 0.0 and v[10] == 0.0


def test_infinite_values():
    sched = parse("infinite(total=20, warmup=2, cooldown=4, anneal=4, level=0.5, end=0.0)")
    v = sched.multipliers(21)
    assert v[1] == 1.0
    for s in range(4):
        assert v[2 + s] == approx(0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * (s + 1) / 4)))
    assert v[5] == 0.5
    assert v[6:16] == [0.5] * 10
    for s in range(4):
        assert v[16 + s] == approx(0.5 * (1 - (s + 1) / 4))
    assert v[19] == 0.0 and v[20] == 0.0


def test_preset_string_forms_agree():
    a = parse("wsd(total=1000, warmup=100, decay_frac=0.2, shape=cosine)")
    assert a == parse("wsd(1000, 100, 0.2, cosine)")
    b = parse("total=1000; wsd(warmup=100, shape=cosine)")
    assert b.phases == a.phases and b.total == 1000
    assert parse("wsd", total=1000) == presets.wsd(1000)
    assert parse("peak=1e-3; cosine(total=50)").peak == 1e-3


# --- lr and totals


def test_absolute_lr_and_peak():
    sched = parse("peak=3e-4; warmup:linear:4 > stable:4")
    assert sched.lr(0) == 3e-4 * 0.25
    assert sched.lr(0, peak=1.0) == 0.25
    assert sched.lrs(3) == [3e-4 * 0.25, 3e-4 * 0.5, 3e-4 * 0.75]
    with pytest.raises(SpecError, match="no peak"):
        parse("stable:3").lr(0)


def test_rest_fills_up_to_total():
    sched = parse("total=100; warmup:linear:10 > stable:* > decay:linear:20")
    assert sched.lengths == (10, 70, 20)
    assert sched.length == 100 and sched.multiplier(99) == 0.0


def test_total_longer_than_phases_holds_last_value():
    sched = parse("total=10; decay:linear:4:0.25")
    assert sched.num_steps == 10 and sched.length == 4
    assert sched.multipliers(10)[3:] == [0.25] * 7


def test_negative_step_is_an_error():
    with pytest.raises(ValueError):
        parse("stable:3").multiplier(-1)


# --- spec round trips


def test_string_round_trip_examples():
    for text in [
        "warmup:linear:1000 > stable:9000 > decay:1-sqrt:2000",
        "peak=0.0003; warmup:exp:100:0.01 > sgdr:1000:100:2:0.05",
        "peak=1e-05; total=500; rewarm:cosine:50:0.1 > stable:* > decay:exp:100:0.01",
        "constant:10:0.5 > decay:linear:10:0.0:0.5 > invsqrt:10:3.5:0.2",
    ]:
        sched = parse(text)
        assert parse(sched.to_string()) == sched
        assert from_dict(sched.to_dict()) == sched
    assert parse("warmup:linear:1000 > stable:9000 > decay:1-sqrt:2000:0.0").to_string() == (
        "warmup:linear:1000 > stable:9000 > decay:1-sqrt:2000"
    )


def test_keyword_arguments_and_whitespace():
    a = parse("peak=3e-4;warmup:linear:10>decay:cosine:90:0.1")
    b = parse("  peak = 3e-4 ;  warmup : linear : steps=10  >  decay:cosine:90:end=0.1 ")
    assert a == b


def test_yaml_and_json_dict_forms():
    text = """
peak: 3.0e-4
total: 12000
phases:
  - {kind: warmup, shape: linear, steps: 1000}
  - {kind: stable, steps: "*"}
  - {kind: decay, shape: 1-sqrt, steps: 2000, end: 0.0}
"""
    sched = from_dict(yaml.safe_load(text))
    assert sched == parse("peak=3e-4; total=12000; warmup:linear:1000 > stable:* > decay:1-sqrt:2000:0.0")
    assert from_dict(json.loads(json.dumps(sched.to_dict()))) == sched
    assert from_dict([{"kind": "stable", "steps": 3}]) == parse("stable:3")
    assert from_dict("stable:3") == parse("stable:3")


def test_load_spec_files(tmp_path):
    from warmstart.schedules import load, resolve

    sched = parse("peak=1e-3; warmup:cosine:10 > decay:linear:90")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sched.to_dict()))
    (tmp_path / "s.json").write_text(json.dumps(sched.to_dict()))
    (tmp_path / "s.txt").write_text(sched.to_string() + "\n")
    for name in ("s.yaml", "s.json", "s.txt"):
        assert load(tmp_path / name) == sched
        assert resolve(str(tmp_path / name)) == sched
    (tmp_path / "bad.yaml").write_text("phases: [{kind: decay, shape: quad, steps: 3}]")
    with pytest.raises(SpecError, match=r"phases\[0\]\.shape: unknown decay shape 'quad'") as err:
        load(tmp_path / "bad.yaml")
    assert err.value.path == str(tmp_path / "bad.yaml")


ratio = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
pos_ratio = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False)
steps = st.integers(min_value=1, max_value=10**7)


@st.composite
def phases(draw):
    kind = draw(st.sampled_from(["warmup", "rewarm", "stable", "constant", "decay", "sgdr", "invsqrt"]))
    if kind in ("warmup", "rewarm"):
        shape = draw(st.sampled_from(WARMUP_SHAPES))
        start = draw(pos_ratio if shape == "exp" else ratio)
        return (Warmup if kind == "warmup" else Rewarm)(shape, draw(steps), start)
    if kind in ("stable", "constant"):
        return (Stable if kind == "stable" else Constant)(draw(steps), draw(st.none() | ratio))
    if kind == "decay":
        shape = draw(st.sampled_from(DECAY_SHAPES))
        end = draw(pos_ratio if shape == "exp" else ratio)
        start = draw(st.none() | st.floats(min_value=end, max_value=1.0))
        return Decay(shape, draw(steps), end, start)
    if kind == "sgdr":
        return SGDR(draw(steps), draw(st.integers(1, 10**5)), draw(st.integers(1, 5)), draw(ratio))
    return InvSqrt(draw(steps), draw(st.floats(min_value=1e-3, max_value=1e7)), draw(st.none() | ratio))


@st.composite
def schedules(draw):
    ps = draw(st.lists(phases(), min_size=1, max_size=6))
    peak = draw(st.none() | st.floats(min_value=1e-9, max_value=10.0))
    total = None
    if draw(st.booleans()):
        fixed = sum(p.steps for p in ps)
        if draw(st.booleans()):  # one phase fills the rest
            i = draw(st.integers(0, len(ps) - 1))
            p = ps[i]
            args = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
            args["steps"] = "*"
            fixed -= p.steps
            ps[i] = type(p)(**args)
            total = fixed + draw(st.integers(1, 10**6))
        else:
            total = fixed + draw(st.integers(0, 10**6))
    try:
        return Schedule(tuple(ps), peak=peak, total=total)
    except SpecError:  # e.g. a decay that would end above the previous level
        assume(False)


@settings(max_examples=120, deadline=None)
@given(schedules())
def test_round_trip_property(sched):
    text = sched.to_string()
    again = parse(text)
    assert again == sched
    assert again.to_string() == text
    assert from_dict(sched.to_dict()) == sched
    assert from_dict(json.loads(json.dumps(sched.to_dict()))) == sched
    assert from_dict(yaml.safe_load(yaml.safe_dump(sched.to_dict()))) == sched
    for step in (0, sched.length - 1, sched.length + 5):
        assert again.multiplier(step) == sched.multiplier(step)


# --- errors point at the offending token


@pytest.mark.parametrize(
    "text, token, problem",
    [
        ("warmup:linear:100 > decay:quad:200", "quad", "unknown decay shape"),
        ("warmup:linear:0", "0", "at least 1 step"),
        ("warmup:linear:-5", "-5", "at least 1 step"),
        ("warmup:linear:ten", "ten", "whole number"),
        ("stable:10 > decay:cosine:10:1.5", "1.5", "above the peak"),
        ("stable:10:0.3 > decay:cosine:10:0.5", "decay", "above the level"),
        ("total=5; warmup:linear:10", "total", "need 10 steps but total is 5"),
        ("peak=-1; stable:3", "-1", "peak must be > 0"),
        ("peak=abc; stable:3", "abc", "expected a number"),
        ("lr=1; stable:3", "lr", "unknown setting"),
        ("stable:3 > foo:1", "foo", "unknown phase kind"),
        ("warmup:exp:10", "warmup", "exp warmup needs a start"),
        ("sgdr:10", "sgdr", "missing t0"),
        ("stable:3:0.5:9", "9", "too many arguments"),
        ("stable:3 > > stable:3", ">", "empty phase"),
        ("decay:linear:3:bogus=1", "bogus", "unknown argument"),
        ("wsd(total=10, warmup=20)", "wsd", "warmup 20 leaves"),
        ("wsd(total=10, colour=2)", "colour", "unknown argument"),
        ("stable:3 > stable:*", "stable", "length fills up to total"),
    ],
)
def test_errors_point_at_the_token(text, token, problem):
    with pytest.raises(ScheduleSpecError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, SpecError) and isinstance(err, WarmstartError)
    assert err.token == token
    assert text[err.position : err.position + len(token)] == token
    assert problem in str(err)
    assert f"column {err.position + 1}" in str(err) and repr(token) in str(err)
    assert "\n" not in str(err)


def test_python_construction_errors_are_spec_errors():
    with pytest.raises(SpecError):
        Warmup("quad", 10)
    with pytest.raises(SpecError):
        Decay("linear", 0)
    with pytest.raises(SpecError):
        Schedule(())
    with pytest.raises(SpecError):
        presets.wsd(10, warmup=20)
    with pytest.raises(SpecError, match=r"phases\[1\]: decay ends at 0.5"):
        from_dict({"phases": [{"kind": "stable", "steps": 2, "level": 0.2}, {"kind": "decay", "shape": "linear", "steps": 2, "end": 0.5}]})
