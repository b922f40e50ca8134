"""``rhizome eval``, ``optimize`` and ``runs``: run records, the HTML report and its chart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rhizome.cli import main
from tests.server import OpenAIServer

Capture = pytest.CaptureFixture[str]


def test_eval_json_summary_with_slices(lm_args: list[str], data: Path, capsys: Capture) -> None:
    code = main(
        [
            "eval",
            "rhizome.examples:build",
            str(data),
            "--metric",
            "exact_match:answer",
            "--tag-field",
            "region",
            "--json",
            *lm_args,
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 6
    assert summary["failures"] == 0
    assert summary["score"] == pytest.approx(5 / 6)  # Chad is answered wrongly
    assert summary["slices"]["africa"] == {"score": 0.0, "n": 1}
    assert summary["slices"]["europe"]["score"] == 1.0
    assert summary["usage"]["calls"] == 6


def test_eval_writes_a_run_record_and_report(
    lm_args: list[str], data: Path, tmp_path: Path, capsys: Capture
) -> None:
    assert (
        main(["eval", "rhizome.examples:build", str(data), "--run-dir", "runs/ev", *lm_args]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("score 0.833")
    record = json.loads((tmp_path / "runs/ev/run.json").read_text())
    assert record["kind"] == "evaluate"
    assert record["status"] == "finished"
    html = (tmp_path / "runs/ev/report.html").read_text()
    assert "<b>0.833</b>" in html
    assert "95% CI" in html


def test_unknown_metric_lists_the_built_in_ones(
    lm_args: list[str], data: Path, capsys: Capture
) -> None:
    assert main(["eval", "rhizome.examples:build", str(data), "-m", "bleu", *lm_args]) == 1
    assert "built in: exact_match, token_f1" in capsys.readouterr().err


def _optimize(lm_args: list[str], data: Path, run_dir: str, *extra: str) -> int:
    return main(
        [
            "optimize",
            "rhizome.examples:build",
            str(data),
            "--optimizer",
            "random",
            "--trials",
            "5",
            "--demos",
            "2",
            "--run-dir",
            run_dir,
            "-q",
            *extra,
            *lm_args,
        ]
    )


def test_optimize_writes_program_run_dir_and_report_with_chart(
    lm_args: list[str], data: Path, tmp_path: Path, capsys: Capture
) -> None:
    assert _optimize(lm_args, data, "runs/opt", "--out", "qa.json", "--tag-field", "region") == 0
    out = capsys.readouterr().out
    assert re.search(r"before\s+0\.833\nafter\s+1\.000", out)
    assert "optimized program: qa.json" in out
    assert "serve it: rhizome serve rhizome.examples:build --params qa.json" in out
    program = json.loads((tmp_path / "qa.json").read_text())
    assert program["graph"] == "qa"
    assert len(program["parameters"]["answer"]["demos"]) >= 1
    run = tmp_path / "runs/opt"
    assert json.loads((run / "run.json").read_text())["kind"] == "random_search"
    assert (run / "before/run.json").is_file()
    assert (run / "after/run.json").is_file()
    trials = (run / "trials.jsonl").read_text().splitlines()
    assert len(trials) == 5
    html = (run / "report.html").read_text()
    assert html.startswith("<!doctype html>")
    assert "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    chart = re.search(r'<svg[^>]*class="chart".*?</svg>', html, re.S)
    assert chart is not None
    assert len(re.findall(r'class="point trial"', chart.group(0))) == len(trials)
    assert 'class="best"' in chart.group(0)
    assert len(re.findall(r'<rect class="cost bar"', chart.group(0))) == len(trials)
    assert 'class="graph"' in html  # the program is drawn too
    assert "africa" in html  # slices before and after


def test_runs_lists_and_compares(lm_args: list[str], data: Path, capsys: Capture) -> None:
    assert _optimize(lm_args, data, "runs/opt") == 0
    main(["eval", "rhizome.examples:build", str(data), "--run-dir", "runs/ev", "-q", *lm_args])
    capsys.readouterr()
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "run",
        "kind",
        "status",
        "score",
        "before",
        "calls",
        "tokens",
        "cost",
        "time",
    ]
    listed = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(listed) == {"runs/ev", "runs/opt", "runs/opt/after", "runs/opt/before"}
    assert listed["runs/opt"][1] == "random_search"
    assert listed["runs/ev"][3] == "0.833"

    assert main(["runs", "--compare", "runs/opt/before", "runs/opt/after", "--json"]) == 0
    before, after = json.loads(capsys.readouterr().out)
    assert before["kind"] == after["kind"] == "evaluate"
    assert after["calls"] == 6

    assert main(["runs", "--compare", "runs/ev", "runs/opt"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in table[2:]}
    assert rows["kind"].split()[1:] == ["evaluate", "random_search"]
    assert "(+" in rows["score"] or "(-" in rows["score"]
    assert "LM" in rows
    assert "tokens" in rows


def test_runs_compare_needs_run_dirs(capsys: Capture, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["runs", "--compare", "empty"]) == 1
    assert "not a run directory" in capsys.readouterr().err


def test_optimize_refuses_to_mix_runs(
    lm_args: list[str], data: Path, server: OpenAIServer, capsys: Capture
) -> None:
    assert _optimize(lm_args, data, "runs/opt") == 0
    calls = server.request_count
    assert _optimize(lm_args, data, "runs/opt") == 1
    err = capsys.readouterr().err
    assert "already holds a run record" in err
    assert "hint: pass a new --run-dir" in err
    assert server.request_count == calls


def test_inspect_reads_a_run_directory(lm_args: list[str], data: Path, capsys: Capture) -> None:
    main(["eval", "rhizome.examples:build", str(data), "--run-dir", "runs/ev", "-q", *lm_args])
    capsys.readouterr()
    assert main(["inspect", "runs/ev", "-n", "2", "--json"]) == 0
    calls = json.loads(capsys.readouterr().out)
    assert len(calls) == 2
    assert all(c["node"] == "answer" and c["reply"].startswith('{"answer"') for c in calls)


def test_joint_search_resumes_in_its_run_dir(
    lm_args: list[str], data: Path, server: OpenAIServer, capsys: Capture
) -> None:
    argv = [
        "optimize",
        "rhizome.examples:build",
        str(data),
        "--optimizer",
        "joint",
        "--trials",
        "3",
        "--run-dir",
        "runs/joint",
        "-q",
        "--json",
        *lm_args,
    ]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    calls = server.request_count
    assert main(argv) == 0  # every trial is on disk: only the final evaluation runs again
    second = json.loads(capsys.readouterr().out)
    assert server.request_count - calls == 6
    assert second["before"] == first["before"]
    assert second["after"] == first["after"]


def test_reflect_keeps_to_its_call_budget_and_resumes_in_its_run_dir(
    lm_args: list[str], data: Path, server: OpenAIServer, capsys: Capture
) -> None:
    argv = ["optimize", "rhizome.examples:build", str(data), "--optimizer", "reflect"]
    argv += ["--trials", "3", "--budget-calls", "40", "--run-dir", "runs/reflect", "-q"]
    argv += ["--json", *lm_args]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    record = json.loads((Path("runs/reflect") / "run.json").read_text())
    assert record["kind"] == "reflect"
    assert record["summary"]["spent"]["calls"] <= 40
    calls = server.request_count
    assert main(argv) == 0  # every step is on disk: only the final evaluation runs again
    second = json.loads(capsys.readouterr().out)
    assert server.request_count - calls == 6
    assert second["after"] == first["after"]
