"""The stopping rules on synthetic monitor sequences: Noppel et al.'s rule, goal convergence (converges, keeps
improving until the maximum, accuracy collapse), the config's recipe defaults, and exact state round trips."""
from __future__ import annotations

import pytest

from xaisec.backdoor.config import BackdoorConfig
from xaisec.backdoor.stopping import (ABORT, CONTINUE, CONVERGED, EarlyStopping, GoalConvergence, goal_losses,
                                      make_rule)
from xaisec.config import load_config
from xaisec.errors import ConfigError


def record(acc: float, goal: float, asr: float | None = None, keep: float = 0.01) -> dict[str, float]:
    r = {"monitor/acc_clean": acc, "monitor/gradcam/map_keep": keep, "monitor/gradcam/map_goal": goal}
    if asr is not None:
        r["monitor/asr"] = asr
    return r


def run(rule, records) -> list[str]:
    return [rule.observe(r) for r in records]


def test_noppel_early_stopping():
    stop = EarlyStopping(window=3, acc_tol=0.01, map_tol=0.01, abort_epochs=5, abort_acc=0.5)
    assert stop.update(0.9, [0.5]) == CONTINUE
    assert stop.update(0.95, [0.3]) == CONTINUE
    assert stop.update(0.95, [0.2]) == CONTINUE  # maps still moving
    assert stop.update(0.951, [0.2]) == CONTINUE  # window 0.95..0.951 but maps 0.3 -> 0.2
    assert stop.update(0.952, [0.205]) == CONVERGED
    restored = EarlyStopping(window=3, acc_tol=0.01, map_tol=0.01, abort_epochs=5, abort_acc=0.5)
    restored.load(stop.state())
    assert restored == stop
    low = EarlyStopping(window=4, abort_epochs=3, abort_acc=0.8)
    assert [low.update(a, [1.0 / (i + 1)]) for i, a in enumerate((0.5, 0.6, 0.7))] == [CONTINUE, CONTINUE, ABORT]


def test_noppel_observe_reads_every_map_dissimilarity():
    stop = EarlyStopping(window=2, acc_tol=0.01, map_tol=0.01)
    assert run(stop, [record(0.9, 0.3, keep=0.5), record(0.9, 0.3, keep=0.1)]) == [CONTINUE, CONTINUE]  # keep moved
    assert stop.observe(record(0.9, 0.3, keep=0.1)) == CONVERGED
    assert stop.dissims[-1] == [0.1, 0.3]


def test_goal_losses_orders_maps_and_turns_asr_into_a_loss():
    r = {**record(0.9, 0.2, asr=0.75), "monitor/vbp/map_goal": 0.4, "monitor/acc_trig": 0.1}
    assert goal_losses(r) == [0.2, 0.4, 0.25]


def test_goal_converges_on_a_plateau():
    # goal loss halves each epoch, then flattens at 0.1
    goals = [0.8, 0.4, 0.2, 0.12, 0.1, 0.099, 0.1, 0.098, 0.099, 0.098]
    accs = [0.96, 0.95, 0.955, 0.96, 0.96, 0.962, 0.961, 0.96, 0.962, 0.961]
    rule = GoalConvergence(window=3, acc_tol=0.01, goal_rtol=0.01, min_epochs=4)
    decisions = run(rule, [record(a, g) for a, g in zip(accs, goals)])
    # epoch 7: best of epochs 5-7 (0.099) beats best of 1-4 (0.12) by 0.021, 3% of the progress 0.8 -> 0.12: continue;
    # epoch 8: best of 6-8 (0.098) beats best of 1-5 (0.1) by 0.002 < 1% of 0.7 (0.007): converged
    assert decisions[:7] == [CONTINUE] * 7 and decisions[7] == CONVERGED


def test_goal_keeps_improving_runs_to_the_maximum():
    rule = GoalConvergence(window=3, goal_rtol=0.01, goal_atol=0.0, min_epochs=2)
    decisions = run(rule, [record(0.95, 1 - 0.03 * e) for e in range(30)])  # steady progress, never flat
    assert set(decisions) == {CONTINUE}


def test_goal_waits_for_the_clean_accuracy_and_for_every_goal():
    rule = GoalConvergence(window=3, acc_tol=0.01, min_epochs=1)
    accs = [0.97, 0.97, 0.955, 0.95, 0.94, 0.97, 0.97]  # a dip under the attack: no stop on a flat goal
    assert run(rule, [record(a, 0.1) for a in accs]) == [CONTINUE] * 6 + [CONVERGED]  # stop once it recovered
    jitter = GoalConvergence(window=3, acc_tol=0.01, min_epochs=1)  # jitter around a level does not block
    assert run(jitter, [record(a, 0.1) for a in (0.96, 0.97, 0.955, 0.965, 0.96)])[-1] == CONVERGED
    asr = GoalConvergence(window=2, min_epochs=1, goal_atol=0.002)
    # the maps are flat but the ASR still climbs by 3 points an epoch
    assert set(run(asr, [record(0.95, 0.1, asr=0.8 + 0.03 * e) for e in range(6)])) == {CONTINUE}
    assert asr.observe(record(0.95, 0.1, asr=0.95)) == CONTINUE  # still 3 points better than before the window
    assert asr.observe(record(0.95, 0.1, asr=0.951)) == CONVERGED


def test_goal_aborts_when_the_clean_accuracy_collapses():
    rule = GoalConvergence(window=3, min_epochs=2, abort_epochs=4, abort_acc=0.8)
    decisions = run(rule, [record(a, 0.1) for a in (0.7, 0.5, 0.3, 0.2)])
    assert decisions == [CONTINUE, CONTINUE, CONTINUE, ABORT]


def test_goal_state_resumes_exactly():
    records = [record(0.9 + 0.01 * e, 0.5 / (e + 1), asr=0.5) for e in range(5)]
    whole = GoalConvergence(window=2, min_epochs=1)
    split = GoalConvergence(window=2, min_epochs=1)
    run(whole, records[:3])
    run(split, records[:3])
    resumed = GoalConvergence(window=2, min_epochs=1)
    resumed.load(split.state())
    assert run(resumed, records[3:]) == run(whole, records[3:]) and resumed == whole


def test_config_picks_the_recipes_rule_and_validates():
    noppel = load_config(BackdoorConfig, overrides=["attack.recipe=noppel_pp"]).stopping
    assert noppel.rule == "noppel" and isinstance(noppel.make(), EarlyStopping) and noppel.make().acc_tol == 0.003
    goal = load_config(BackdoorConfig, overrides=["attack.recipe=latka_fooling", "stopping.min_epochs=7"]).stopping
    assert goal.rule == "goal" and goal.make() == GoalConvergence(min_epochs=7)
    assert load_config(BackdoorConfig, overrides=["stopping.rule=noppel", "stopping.acc_tol=0.02"]).stopping.make().acc_tol == 0.02
    assert load_config(BackdoorConfig, overrides=["stopping.rule=none"]).stopping.make() is None
    for bad in ("stopping.rule=patience", "stopping.goal_rtol=1.5", "stopping.min_epochs=0"):
        with pytest.raises(ConfigError):
            load_config(BackdoorConfig, overrides=[bad])
    with pytest.raises(ValueError, match="unknown stopping rule"):
        make_rule("patience")
