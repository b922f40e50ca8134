"""``rhizome run``, ``batch``, ``inspect``, ``graph``, and how every command fails and helps."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from rhizome.cli import main
from tests.server import OpenAIServer

Capture = pytest.CaptureFixture[str]


def test_run_prints_the_outputs(lm_args: list[str], capsys: Capture) -> None:
    code = main(
        ["run", "rhizome.examples:build", "--input", '{"question": "Capital of Japan?"}', *lm_args]
    )
    assert code == 0
    assert capsys.readouterr().out == "answer: Tokyo\n"


def test_run_json_has_outputs_usage_and_latency(lm_args: list[str], capsys: Capture) -> None:
    import rhizome.examples

    program = f"{rhizome.examples.__file__}:build"  # a file path works as well as a module name
    code = main(["run", program, "-i", '{"question": "Capital of Peru?"}', "--json", *lm_args])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outputs"] == {"answer": "Lima"}
    assert out["usage"]["calls"] == 1
    assert out["latency"] > 0


def test_run_reads_the_lm_from_the_environment(
    server: OpenAIServer, lm_args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.setenv("RHIZOME_BASE_URL", server.url)
    monkeypatch.setenv("RHIZOME_MODEL_NAME", "env-model")
    assert main(["run", "rhizome.examples:build", "-i", '{"question": "Capital of Italy?"}']) == 0
    assert capsys.readouterr().out == "answer: Rome\n"
    assert server.requests[0]["model"] == "env-model"


def test_run_loads_saved_parameters(
    lm_args: list[str], server: OpenAIServer, tmp_path: Path
) -> None:
    from rhizome.examples import build

    graph = build()
    graph.set_parameters({"answer.instruction": "Reply in capitals only."})
    graph.save(tmp_path / "program.json")
    args = ["run", "rhizome.examples:build", "-p", str(tmp_path / "program.json")]
    assert main([*args, "-i", '{"question": "Capital of Spain?"}', *lm_args]) == 0
    assert "Reply in capitals only." in server.requests[0]["messages"][0]["content"]


def test_inspect_shows_the_last_prompt_and_reply(lm_args: list[str], capsys: Capture) -> None:
    main(["run", "rhizome.examples:build", "-i", '{"question": "Capital of Chad?"}', *lm_args])
    capsys.readouterr()
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "── answer (Predict)" in out
    assert "[user]" in out
    assert "Capital of Chad?" in out
    assert '[reply]\n{"answer": "Lagos"}' in out
    assert main(["inspect", "--json"]) == 0
    [call] = json.loads(capsys.readouterr().out)
    assert call["node"] == "answer"
    assert call["reply"] == '{"answer": "Lagos"}'


def test_batch_writes_one_line_per_example(
    lm_args: list[str], data: Path, read_jsonl: Callable[[Path], list[dict]], capsys: Capture
) -> None:
    out = data.parent / "results.jsonl"
    assert main(["batch", "rhizome.examples:build", str(data), "--out", str(out), *lm_args]) == 0
    rows = read_jsonl(out)
    assert [r["index"] for r in rows] == list(range(6))  # sorted by index when finished
    assert rows[2]["inputs"] == {"question": "Capital of Japan?"}
    assert rows[2]["outputs"] == {"answer": "Tokyo"}
    assert all(r["error"] is None and r["usage"]["calls"] == 1 for r in rows)
    assert "6 ran (6 ok, 0 failed), 0 already done" in capsys.readouterr().err


def test_batch_resumes_skipping_examples_already_done(
    lm_args: list[str],
    data: Path,
    server: OpenAIServer,
    read_jsonl: Callable[[Path], list[dict]],
    capsys: Capture,
) -> None:
    out = data.parent / "results.jsonl"
    args = ["batch", "rhizome.examples:build", str(data), "-o", str(out), "--json", *lm_args]

    answer = server.responder

    def down_for_france(body: dict) -> object:
        if "Capital of France?" in json.dumps(body["messages"][-1]):
            return server.Reply(status=400, text="was down")
        return answer(body)

    server.responder = down_for_france
    assert main(args) == 1  # one example failed
    capsys.readouterr()
    server.responder = answer
    server.reset()
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == 5
    assert summary["ran"] == 1
    assert server.request_count == 1
    asked = [r["messages"][-1]["content"] for r in server.requests]
    assert "Capital of France?" in asked[0]
    rows = read_jsonl(out)
    assert [r["index"] for r in rows] == list(range(6))
    assert rows[0]["outputs"] == {"answer": "Paris"}
    assert rows[0]["error"] is None
    assert rows[4]["usage"] == {}  # kept from the first run, not re-run


def test_batch_refuses_a_journal_of_other_data(
    lm_args: list[str], data: Path, server: OpenAIServer, capsys: Capture
) -> None:
    out = data.parent / "results.jsonl"
    assert main(["batch", "rhizome.examples:build", str(data), "-o", str(out), *lm_args]) == 0
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    data.write_text('{"question": "something else"}\n' + "".join(lines[1:]), encoding="utf-8")
    server.reset()
    capsys.readouterr()
    assert main(["batch", "rhizome.examples:build", str(data), "-o", str(out), *lm_args]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("rhizome: error: ")
    assert "the examples changed" in err[0]
    assert "results.jsonl.journal" in err[0]
    assert err[1].startswith("hint: ")
    assert "--overwrite" in err[1]
    assert server.request_count == 0
    assert (
        main(
            ["batch", "rhizome.examples:build", str(data), "-o", str(out), "--overwrite", *lm_args]
        )
        == 0
    )


def test_batch_failures_exit_1_with_a_pointer(
    lm_args: list[str], data: Path, server: OpenAIServer, capsys: Capture
) -> None:
    server.responder = lambda body: server.Reply(status=400, text="nope")
    out = data.parent / "results.jsonl"
    code = main(
        [
            "batch",
            "rhizome.examples:build",
            str(data),
            "-o",
            str(out),
            "-q",
            "--base-url",
            server.url,
            "--model",
            "m",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "6 of 6 examples failed; see the 'error' field" in err
    assert "hint: " in err


def test_graph_prints_mermaid(capsys: Capture) -> None:
    assert main(["graph", "rhizome.examples:build_two_step"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD")
    assert 'n_think -->|"notes"| n_answer' in out


def test_graph_draws_svg_and_json(tmp_path: Path, capsys: Capture) -> None:
    assert main(["graph", "rhizome.examples:build_two_step", "-f", "svg", "-o", "g.svg"]) == 0
    svg = (tmp_path / "g.svg").read_text(encoding="utf-8")
    assert svg.startswith("<svg")
    assert svg.count('class="node"') == 3
    assert ">think<" in svg
    assert ">notes<" in svg
    assert main(["graph", "rhizome.examples:build_two_step", "-f", "json"]) == 0
    structure = json.loads(capsys.readouterr().out)
    assert structure["nodes"] == {"tidy": "FunctionNode", "think": "Predict", "answer": "Predict"}


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["run", "rhizome.examples:nope", "-i", "{}"], "has no attribute 'nope'", "--help"),
        (["run", "no_such_module:build", "-i", "{}"], "cannot import module", "--help"),
        (["run", "rhizome.examples", "-i", "{}"], "must be written MODULE:FACTORY", "--help"),
        (["run", "rhizome.examples:build", "-i", "{oops"], "--input is not valid JSON", "quote it"),
        (["run", "rhizome.examples:build", "-i", '{"q": 1}'], "question: Field required", "--help"),
        (["run", "rhizome.examples:build", "-i", '{"question": "x"}'], "have no LM", "--base-url"),
        (
            ["run", "rhizome.examples:build", "-p", "missing.json", "-i", "{}"],
            "no saved program",
            "",
        ),
        (["batch", "rhizome.examples:build", "missing.jsonl"], "no data file", "JSONL"),
        (["eval", "rhizome.examples:build", "missing.jsonl"], "no data file", "JSONL"),
        (["inspect", "nowhere.json"], "no trace at", "rhizome run"),
        (["runs", "nowhere"], "no such directory", ""),
        (["graph", "rhizome.examples:build", "-f", "png"], "needs --out", ""),
    ],
)
def test_errors_are_one_line_and_a_hint(
    argv: list[str], message: str, hint: str, capsys: Capture
) -> None:
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 2, captured.err
    assert lines[0].startswith("rhizome: error: ")
    assert message in lines[0]
    assert lines[1].startswith("hint: ")
    assert hint in lines[1]
    assert "Traceback" not in captured.err + captured.out


def test_usage_errors_exit_2(capsys: Capture) -> None:
    assert main(["bogus"]) == 2
    assert main(["run", "rhizome.examples:build"]) == 2  # --input is required
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("rhizome: error: argument COMMAND: invalid choice: 'bogus'")
    assert err[2] == "rhizome run: error: the following arguments are required: -i/--input"
    assert all(line.startswith(("rhizome", "hint: ")) for line in err)


@pytest.mark.parametrize(
    "command", ["run", "batch", "eval", "optimize", "serve", "runs", "inspect", "graph", "demo"]
)
def test_every_command_has_help_with_an_example(command: str, capsys: Capture) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out
    assert f"rhizome {command}" in out


def test_batch_without_out_streams_to_stdout(
    lm_args: list[str], data: Path, capsys: Capture
) -> None:
    assert main(["batch", "rhizome.examples:build", str(data), "-c", "2", *lm_args]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(6))
    assert {r["outputs"]["answer"] for r in rows} >= {"Paris", "Tokyo"}


def test_otel_console_exports_run_node_and_lm_spans(lm_args: list[str], capsys: Capture) -> None:
    argv = [
        "run",
        "rhizome.examples:build",
        "-i",
        '{"question": "Capital of Peru?"}',
        "--otel",
        "console",
        *lm_args,
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "answer: Lima\n"
    names = [json.loads(block)["name"] for block in _json_blocks(captured.err)]
    assert sorted(names) == ["rhizome.lm answer", "rhizome.node answer", "rhizome.run qa"]


def _json_blocks(text: str) -> list[str]:
    """Split concatenated pretty-printed JSON objects (the console exporter's output)."""
    blocks, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth, start = depth + 1, (i if depth == 0 else start)
        elif ch == "}":
            depth -= 1
            if depth == 0:
                blocks.append(text[start : i + 1])
    return blocks


def test_run_stream_prints_tokens_live_and_the_outputs_at_the_end(
    lm_args: list[str], server: OpenAIServer, capsys: Capture
) -> None:
    question = '{"question": "Capital of Japan?"}'
    assert main(["run", "rhizome.examples:build", "-i", question, "--stream", *lm_args]) == 0
    captured = capsys.readouterr()
    assert captured.out == "answer: Tokyo\n"
    assert captured.err == "answer.answer: Tokyo\n"
    assert server.requests[0]["stream"] is True
