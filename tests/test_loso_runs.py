"""loso_runs: the record of repeated six-fold runs is consistent, and its spread is summed up right."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from loso_runs import RUNS, main, read_runs, summarise  # noqa: E402

SOURCES = ("10001", "10002", "10006", "10007", "10009", "10010")  # the tile record's sources

HEADER = "date,recorded_in,variant,epochs," + ",".join(SOURCES) + ",nucleus_dice\n"


def write_record(path: Path, rows: list[tuple[str, list[float], float]]) -> Path:
    lines = [f"2026-11-30,abc1234,\"{variant}, one\",60,{','.join(map(str, sources))},{mean}\n"
             for variant, sources, mean in rows]
    path.write_text(HEADER + "".join(lines), encoding="utf-8")
    return path


def test_every_recorded_run_agrees_with_its_own_sources():
    runs = read_runs(RUNS)
    assert runs and all(0 < dice <= 1 for run in runs for dice in run["sources"].values())
    assert all(abs(sum(run["sources"].values()) / len(SOURCES) - run["nucleus_dice"]) <= 0.001 for run in runs)


def test_summary_gives_the_spread_of_the_runs_and_each_sources_range():
    runs = [{"variant": "v", "nucleus_dice": mean, "sources": dict.fromkeys(SOURCES, mean)}
            for mean in (0.89, 0.90, 0.91, 0.92)]
    runs[0]["sources"]["10006"] = 0.70
    summary = summarise(runs, line=0.90)
    assert summary["runs"] == 4 and summary["mean"] == pytest.approx(0.905)
    sd = math.sqrt(sum((m - 0.905) ** 2 for m in (0.89, 0.90, 0.91, 0.92)) / 3)  # sample SD
    assert summary["sd"] == pytest.approx(sd, abs=1e-4) and summary["se"] == pytest.approx(sd / 2, abs=1e-4)
    assert (summary["min"], summary["max"], summary["at_or_above_line"]) == (0.89, 0.92, 3)
    assert summary["sources"]["10006"] == {"min": 0.70, "max": 0.92, "mean": pytest.approx(0.8575, abs=1e-3)}
    single = summarise(runs[:1], line=0.90)
    assert single["sd"] is None and single["se"] is None and single["at_or_above_line"] == 0
    with pytest.raises(ValueError):
        summarise([], line=0.9)


def test_cli_groups_runs_by_variant_and_ends_with_json(tmp_path: Path):
    record = write_record(tmp_path / "runs.csv", [("a", [0.9] * 6, 0.9), ("a", [0.92] * 6, 0.92),
                                                  ("b", [0.8] * 6, 0.8)])
    result = CliRunner().invoke(main, ["--runs", str(record), "--line", "0.91"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert sorted(report) == ["a, one", "b, one"]
    assert report["a, one"]["runs"] == 2 and report["a, one"]["at_or_above_line"] == 1
    assert report["b, one"]["sd"] is None
    assert "a, one: 2 run(s), mean 0.9100 (SD 0.0141" in result.output


def test_a_run_whose_mean_is_not_its_sources_mean_is_refused_by_line(tmp_path: Path):
    record = write_record(tmp_path / "runs.csv", [("a", [0.9] * 6, 0.9), ("a", [0.9] * 6, 0.95)])
    result = CliRunner().invoke(main, ["--runs", str(record)])
    assert result.exit_code != 0
    assert f"{record}:3: nucleus_dice 0.95 is not the mean of its sources (0.9000)" in result.output
    no_source = tmp_path / "short.csv"
    no_source.write_text("variant,nucleus_dice,epochs\nx,0.9,60\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["--runs", str(no_source)])
    assert result.exit_code != 0 and f"{no_source}: no column per source" in result.output


def test_pool_sums_up_every_variant_that_shares_a_change(tmp_path: Path):
    record = write_record(tmp_path / "runs.csv", [("copies", [0.90] * 6, 0.90), ("b", [0.80] * 6, 0.80),
                                                  ("Copies + TTA", [0.92] * 6, 0.92)])
    result = CliRunner().invoke(main, ["--runs", str(record), "--pool", "copies"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    pool = report["pooled: every variant with 'copies'"]
    assert pool["runs"] == 2 and pool["mean"] == pytest.approx(0.91) and (pool["min"], pool["max"]) == (0.90, 0.92)
    assert report["b, one"]["runs"] == 1  # the groups themselves stay
    missing = CliRunner().invoke(main, ["--runs", str(record), "--pool", "zoom"])
    assert missing.exit_code != 0 and "--pool" in missing.output and "'zoom'" in missing.output


def test_the_whole_field_record_reads_its_fields_and_f1(tmp_path: Path):
    fields = [f"EDF{i:03d}" for i in (0, 1, 4, 5)]
    record = tmp_path / "fields_runs.csv"
    record.write_text("date,code,variant," + ",".join(fields) + ",nucleus_dice,f1\n"
                      "2026-12-01,abc,default,0.9,0.92,0.94,0.88,0.91,0.93\n"
                      "2026-12-02,abd,default,0.92,0.90,0.94,0.92,0.92,0.95\n", encoding="utf-8")
    runs = read_runs(record)
    assert list(runs[0]["sources"]) == fields and runs[1]["f1"] == 0.95
    summary = summarise(runs, 0.91)
    assert summary["f1_mean"] == 0.94 and summary["at_or_above_line"] == 2
    assert summary["sources"]["EDF005"] == {"mean": 0.9, "min": 0.88, "max": 0.92}
    result = CliRunner().invoke(main, ["--runs", str(record), "--line", "0.93"])
    assert result.exit_code == 0 and "object F1 0.9400" in result.output


def test_a_whole_field_run_goes_on_record_once_and_sums_up(tmp_path: Path):
    from record_run import append, record_row

    def summary(dice: list[float]) -> dict:
        images = {f"EDF00{i}.png": {"nucleus_dice": d, "fold": i % 2} for i, d in enumerate(dice)}
        return {"images": images, "nucleus_dice": round(sum(dice) / len(dice), 4), "f1": 0.95, "fnro": 0.05,
                "field_dice_min": min(dice), "n_extra": 3, "n_missed": 1, "train_seconds_max": 850.0,
                "infer_seconds_per_image": 5.5, "epochs_min": 97}

    record = tmp_path / "fields_runs.csv"
    first = summary([0.90, 0.92, 0.94, 0.96])
    target = append(record_row(first, "default", "abc1234", "2026-12-01"), first, record)
    assert json.loads(target.read_text()) == first and target.name == "fields_2026-12-01_abc1234_default.json"
    second = summary([0.91, 0.93, 0.93, 0.95])
    append(record_row(second, "default", "abc1235", "2026-12-02"), second, record)
    runs = read_runs(record)  # the record reads back, each mean the mean of its fields
    assert [run["nucleus_dice"] for run in runs] == [0.93, 0.93] and list(runs[0]["sources"])[0] == "EDF000"
    with record.open(newline="") as handle:  # the fewest epochs a fold got is on record beside the means
        assert [row["epochs_min"] for row in csv.DictReader(handle)] == ["97", "97"]
    with pytest.raises(ValueError, match="on record already"):
        append(record_row(second, "default", "abc1235", "2026-12-02"), second, record)
    older = {key: value for key, value in summary([0.9] * 4).items() if key != "epochs_min"}
    older["folds"] = [{"epochs": 54}, {"epochs": 44}]
    assert record_row(older, "default", "x", "2026-12-01")["epochs_min"] == 44  # from its folds
    with pytest.raises(ValueError, match="no per-field scores"):
        record_row({"nucleus_dice": 0.9}, "default", "x", "2026-12-01")


def test_a_long_variant_still_makes_a_file_name_and_two_alike_stay_apart(tmp_path: Path):
    from record_run import append, record_row

    summary = {"images": {"EDF000.png": {"nucleus_dice": 0.9, "fold": 0}}, "nucleus_dice": 0.9, "f1": 0.95}
    record = tmp_path / "fields_runs.csv"
    long = "hard-pixel cross-entropy (--set model.loss=dice_hard_ce; pale copies, SYNTH=0), " * 4
    first = append(record_row(summary, long + "seed 137", "abc1234", "2026-12-08"), summary, record)
    second = append(record_row(summary, long + "seed 138", "abc1234", "2026-12-08"), summary, record)
    assert first != second and first.is_file() and second.is_file()
    assert all(len(path.name.encode()) < 160 for path in (first, second))
    assert first.name.startswith("fields_2026-12-08_abc1234_hard-pixel-cross-entropy-set-model-loss")


def test_one_bench_real_run_over_whole_fields_goes_on_record_too():
    from record_run import record_row

    single = {"per_image": {"EDF000.png": {"nucleus_dice": 0.59}, "EDF004.png": {"nucleus_dice": 0.86}},
              "nucleus_dice": 0.725, "f1": 0.8, "fnro": 0.1, "n_extra": 5, "n_missed": 2, "train_seconds": 850.8,
              "infer_seconds_per_image": 1.27, "epochs": 103}
    row = record_row(single, "synthetic fields only", "abc1234", "2026-12-01")
    assert (row["EDF000"], row["EDF004"], row["field_dice_min"], row["train_seconds_max"]) == (0.59, 0.86, 0.59, 850.8)
    assert row["epochs_min"] == 103
