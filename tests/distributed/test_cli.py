"""``rhizome batch --ray`` and ``rhizome eval --ray`` against the shared test cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rhizome.cli import main
from tests.distributed.conftest import LocalCluster, answer_for
from tests.server import OpenAIServer

pytest.importorskip("ray.data")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]

PROGRAM = "tests.distributed.programs:build"


def write_data(path: Path, n: int) -> Path:
    lines = [json.dumps({"question": f"q{i}", "answer": f"A-q{i}"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_batch_and_eval_with_ray(
    ray_cluster: LocalCluster,
    ray_server: OpenAIServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ray_server.reset()
    ray_server.responder = answer_for
    data = write_data(tmp_path / "q.jsonl", 6)
    out = tmp_path / "out.jsonl"
    lm = ["--base-url", ray_server.url, "--model", "test-model"]
    code = main(["batch", PROGRAM, str(data), "-o", str(out), "-q", *lm, "--ray"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["outputs"] for r in rows] == [{"answer": f"A-q{i}"} for i in range(6)]
    assert all(r["node"] for r in rows)
    assert "6 ran (6 ok, 0 failed)" in capsys.readouterr().err
    assert ray_server.request_count == 6

    again = main(["batch", PROGRAM, str(data), "-o", str(out), "-q", *lm, "--ray"])
    assert again == 0
    assert "0 ran (0 ok, 0 failed), 6 already done" in capsys.readouterr().err
    assert ray_server.request_count == 6  # resumed from the journal, nothing sent

    metric = ["--metric", "exact_match:answer", "--json", "-q"]
    code = main(["eval", PROGRAM, str(data), *metric, *lm, "--ray", "--actors", "1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["score"] == 1.0
    assert summary["n"] == 6
    assert ray_server.request_count == 12


def test_ray_refuses_the_local_model_on_a_cluster_elsewhere(
    ray_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_data(tmp_path / "q.jsonl", 2)
    assert main(["batch", PROGRAM, str(data), "--local", "--ray", "ray://far:10001"]) == 1
    err = capsys.readouterr().err
    assert "--local cannot be used with --ray ray://far:10001" in err
    assert "use --ray alone" in err


@pytest.mark.embedded
def test_the_embedded_model_drives_a_batch_on_local_ray(
    ray_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Workers (other processes, on the cluster's worker nodes) rebuild the embedded
    # model's client from its settings and reach its server on 127.0.0.1.
    data = tmp_path / "q.jsonl"
    data.write_text(
        json.dumps({"question": "What is the capital of France? One word."})
        + "\n"
        + json.dumps({"question": "What is 2 + 2? Digits only."})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    code = main(["batch", PROGRAM, str(data), "-o", str(out), "-q", "--local", "--ray"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["error"] for r in rows] == [None, None]
    assert "paris" in rows[0]["outputs"]["answer"].lower()
    assert "4" in rows[1]["outputs"]["answer"]
    assert all(r["node"] for r in rows)
