"""tools/compare_dapper_runs.py: the paired change of two runs' series and the N-member prediction, against the
figures computed directly and against ensembles drawn with a known shared error."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "compare_dapper_runs.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_dapper_runs", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensemble_series(rng, cycles: int, members: int, shared: float, own: float, size: int = 4000):
    """DAPPER's per-cycle rmse of the ensemble mean and spread (rms of the ddof-1 std) for members drawn as
    truth + a shared error b (std ``shared``, one draw a cycle) + each member's own (std ``own``)."""
    rmse, spread = [], []
    for _ in range(cycles):
        ensemble = rng.normal(0, shared, size) + rng.normal(0, own, (members, size))
        rmse.append(float(np.sqrt((ensemble.mean(0) ** 2).mean())))
        spread.append(float(np.sqrt(ensemble.var(0, ddof=1).mean())))
    return rmse, spread


def write_run(path: Path, rmse, spread, members: int, seed: int = 3000, smoothed=None, forecast=None) -> Path:
    series = {"rmse.a": rmse, "spread.a": spread}
    if forecast is not None:  # a filter that kept its forecasts' scores
        series["rmse.f"] = forecast
    if smoothed is not None:  # a lagged filter's fixed-lag smoother
        series.update({"rmse.s": smoothed[0], "spread.s": smoothed[1]})
    path.write_text(json.dumps({
        "experiment": {"seed": seed, "cycles": len(rmse), "truth_sha256": "abc"},
        "methods": {"latentda-filter": {"method": f"LatentDA(pipeline=<…>, N={members}, mode='filter')",
                                        "series": series}}}))
    return path


def test_smoothed_compares_the_smoothed_states(tmp_path, capsys):
    tool = load_tool()
    a = write_run(tmp_path / "a.json", [2.0] * 10, [1.0] * 10, 4, smoothed=([1.0] * 10, [0.5] * 10))
    b = write_run(tmp_path / "b.json", [3.0] * 10, [1.0] * 10, 4, smoothed=([1.0 + 0.02 * k for k in range(10)], [0.6] * 10))
    tool.main([str(a), str(b), "--cycles", "1", "10", "--smoothed"])
    out = capsys.readouterr().out
    assert "(smoothed states)" in out and "rmse 1.000  spread 0.500" in out
    assert "rmse 1.090  spread 0.600" in out and "paired change +0.090" in out  # not the analyses' +1.000
    with pytest.raises(SystemExit, match="rmse.s"):  # a run without smoothed states is named
        tool.main([str(write_run(tmp_path / "c.json", [1.0] * 10, [0.5] * 10, 4)), str(a), "--cycles", "1", "10", "--smoothed"])


def test_prediction_matches_the_ensemble_drawn_with_more_members():
    """rmse_N² ≈ rmse_M² − spread_M²(1/M − 1/N): predicted from 4 members, measured with 16, same law."""
    tool = load_tool()
    rng = np.random.default_rng(0)
    r4, s4 = ensemble_series(rng, 40, 4, shared=0.7, own=1.0)
    r16, _ = ensemble_series(rng, 40, 16, shared=0.7, own=1.0)
    predicted = tool.predicted_rmse(r4, s4, 4, 16)
    exact = math.sqrt(0.7**2 + 1.0 / 16)
    assert np.mean(r4) > exact + 0.1  # four members do err more: the prediction has something to remove
    assert predicted == pytest.approx(exact, rel=0.03)
    assert predicted == pytest.approx(np.mean(r16), rel=0.03)


def test_paired_change_and_output(tmp_path, capsys):
    tool = load_tool()
    rng = np.random.default_rng(1)
    base = list(rng.uniform(1.0, 2.0, 30))
    spread = [0.5] * 30
    shift = [0.1 + 0.01 * ((-1) ** k) for k in range(30)]
    a = write_run(tmp_path / "a.json", base, spread, 4)
    b = write_run(tmp_path / "b.json", [x + d for x, d in zip(base, shift)], spread, 4)
    tool.main([str(a), str(b), "--cycles", "11", "30", "--members", "8"])
    out = capsys.readouterr().out
    window = shift[10:30]
    change = np.mean(window)
    se = np.std(window, ddof=1) / math.sqrt(20)
    assert f"rmse {np.mean(base[10:30]):.3f}" in out
    assert f"paired change {change:+.3f} ± {se:.3f}" in out
    assert f"predicted with 8 members: {tool.predicted_rmse(base[10:30], spread[10:30], 4, 8):.3f}" in out


def test_a_run_of_another_method_is_named_with_it(tmp_path, capsys):
    tool = load_tool()
    a = write_run(tmp_path / "a.json", [2.0] * 10, [1.0] * 10, 4)
    hybrid = tmp_path / "hybrid.json"
    hybrid.write_text(json.dumps({"experiment": {"seed": 3000, "cycles": 10, "truth_sha256": "abc"},
                                  "methods": {"letkf-learned": {"method": "LETKF(N=25)",
                                                                "series": {"rmse.a": [2.5] * 10, "spread.a": [1.5] * 10}}}}))
    tool.main([str(a), f"{hybrid}:letkf-learned", "--cycles", "1", "10"])
    out = capsys.readouterr().out
    assert "hybrid.json:letkf-learned (10 cycles" in out and "rmse 2.500  spread 1.500" in out
    assert "paired change +0.500" in out
    with pytest.raises(SystemExit, match="'latentda-filter'"):  # without the method, the default is looked for
        tool.main([str(a), str(hybrid), "--cycles", "1", "10"])


def test_blocks_of_cycles_and_the_analysis_share_of_the_forecast_error(tmp_path, capsys):
    """--per 5 over cycles 3–14: blocks 3–7, 8–12, 13–14, each with its own means and paired change; a/f the mean of
    the per-cycle ratios (not the ratio of the means), and only for runs that kept their forecasts."""
    tool = load_tool()
    rng = np.random.default_rng(2)
    base = list(rng.uniform(1.0, 2.0, 20))
    forecast = [x / q for x, q in zip(base, rng.uniform(0.9, 1.0, 20))]
    other = [x + 0.05 * k for k, x in enumerate(base)]  # a drift: the paired change grows block by block
    a = write_run(tmp_path / "a.json", base, [0.5] * 20, 4, forecast=forecast)
    b = write_run(tmp_path / "b.json", other, [0.6] * 20, 4)
    tool.main([str(a), str(b), "--cycles", "3", "14", "--per", "5"])
    lines = capsys.readouterr().out.splitlines()
    whole = np.mean([x / f for x, f in zip(base[2:14], forecast[2:14])])
    assert f"a/f {whole:.3f}" in lines[1] and "a/f" not in lines[2]
    blocks = [line for line in lines if line.startswith("cycles ") and ":" in line]
    assert [line.split(":")[0] for line in blocks] == ["cycles 3–7", "cycles 8–12", "cycles 13–14"]
    for line, (start, stop) in zip(blocks, [(3, 7), (8, 12), (13, 14)]):
        window = slice(start - 1, stop)
        ratio = np.mean([x / f for x, f in zip(base[window], forecast[window])])
        mine, theirs = line.split(": ", 1)[1].split(" | ")
        assert mine == f"{np.mean(base[window]):.3f} ({0.5 / np.mean(base[window]):.2f}, a/f {ratio:.3f})"
        change = np.subtract(other[window], base[window])
        se = np.std(change, ddof=1) / math.sqrt(len(change))
        assert theirs.startswith(f"{np.mean(other[window]):.3f} ({0.6 / np.mean(other[window]):.2f}) "
                                 f"{np.mean(change):+.3f} ± {se:.3f}")
    with pytest.raises(SystemExit):  # argparse's error: a block of no cycles
        tool.main([str(a), "--cycles", "3", "14", "--per", "0"])


@pytest.mark.parametrize("case", ["missing", "not-json", "too-short", "other-seed", "no-score", "no-series-key"])
def test_bad_runs_are_named(tmp_path, case):
    tool = load_tool()
    a = write_run(tmp_path / "a.json", [1.0] * 10, [0.5] * 10, 4)
    b = tmp_path / "b.json"
    if case == "not-json":
        b.write_text("{")
    elif case == "too-short":
        write_run(b, [1.0] * 5, [0.5] * 5, 4)
    elif case == "other-seed":
        write_run(b, [1.0] * 10, [0.5] * 10, 4, seed=1)
    elif case == "no-score":  # a filter started at cycle 4: non-finite, null in the JSON, before it
        write_run(b, [None] * 3 + [1.0] * 7, [None] * 3 + [0.5] * 7, 4)
    elif case == "no-series-key":
        b.write_text(a.read_text().replace('"rmse.a"', '"rmse.f"'))
    with pytest.raises(SystemExit) as error:
        tool.main([str(a), str(b), "--cycles", "1", "10"])
    assert "b.json" in str(error.value)
    if case == "no-score":
        assert "no score for cycle 1 (3 of" in str(error.value)
