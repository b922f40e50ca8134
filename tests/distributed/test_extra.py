"""The ray extra stays optional: importing rhizome never imports Ray, and its absence is named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.distributed.spec import LMSpec, ProgramSpec, factory_name
from rhizome.engine.errors import ConfigError
from tests.distributed.programs import build


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_rhizome_and_its_scale_facade_never_imports_ray() -> None:
    code = "import sys, rhizome, rhizome.scale; print('ray' in sys.modules)"
    assert run(code) == "False"


def test_a_missing_extra_names_the_pip_command() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from rhizome.scale import ray_batch, RayMissingError\n"
        "try:\n"
        "    ray_batch('tests.distributed.programs:build', [{'question': 'q'}])\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = run(code)
    assert out.startswith("RayMissingError")
    assert 'pip install "rhizome[ray]"' in out


def test_workers_get_the_key_variable_name_never_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_PROVIDER_KEY", "sk-secret-123")
    lm = OpenAILM("m", base_url="http://127.0.0.1:9/v1", api_key_env="MY_PROVIDER_KEY", cache=None)
    spec = LMSpec.of(lm)
    assert "sk-secret-123" not in repr(spec)
    assert spec.api_key_env == "MY_PROVIDER_KEY"
    assert LMSpec.secret_env(lm) == {"MY_PROVIDER_KEY": "sk-secret-123"}
    rebuilt = spec.build()
    assert rebuilt.sends_key
    assert rebuilt.base_url == lm.base_url


def test_a_key_given_only_in_code_must_move_to_the_environment() -> None:
    lm = OpenAILM("m", base_url="http://127.0.0.1:9/v1", api_key="sk-x", api_key_env="NOT_SET_X")
    with pytest.raises(ConfigError, match="set NOT_SET_X"):
        LMSpec.secret_env(lm)


def test_only_an_openai_lm_can_be_rebuilt_on_workers() -> None:
    with pytest.raises(ConfigError, match="OpenAILM"):
        LMSpec.of(FakeLM(["x"]))


def test_factories_are_named_so_workers_can_import_them() -> None:
    assert factory_name(build) == "tests.distributed.programs:build"
    with pytest.raises(ConfigError, match="module-level function"):
        factory_name(lambda: build())


def test_a_program_spec_carries_saved_parameters_as_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph = build()
    graph.set_parameters({"answer.instruction": "Answer tersely."})
    spec = ProgramSpec.of(build, graph)
    rebuilt = spec.build()
    assert rebuilt.named_parameters()["answer.instruction"] == "Answer tersely."
