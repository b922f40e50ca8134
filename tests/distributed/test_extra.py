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


def test_workers_rebuild_the_lm_with_its_capabilities_prices_and_cache_name() -> None:
    from rhizome.engine.client.protocol import Capabilities
    from rhizome.engine.client.usage import Prices

    caps = Capabilities(json_schema=True, tools=False, n=True, json_max_outputs=1, stream=True)
    lm = OpenAILM(
        "m",
        base_url="http://127.0.0.1:9/v1",
        api_key_env="RHIZOME_ABSENT_KEY_VAR",
        capabilities=caps,
        prices=Prices(prompt_per_million=0.5, completion_per_million=1.5),
        cache_namespace="local:m",
        cache=None,
    )
    rebuilt = LMSpec.of(lm).build()
    assert rebuilt.capabilities == caps
    assert rebuilt.prices == lm.prices
    assert rebuilt.cache_namespace == "local:m"
    assert LMSpec.secret_env(lm) == {}  # no key: nothing to pass on, nothing refused


def test_the_embedded_models_client_sends_no_key_so_workers_can_rebuild_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rhizome.tools.embedded.lm import _client_for

    class Config:
        model_name = "local-model"
        n_parallel = 2

    class Server:
        config = Config()
        base_url = "http://127.0.0.1:9/v1"

    monkeypatch.setenv("OPENAI_API_KEY", "sk-users-real-key")
    lm = _client_for(Server(), timeout=5.0, cache=None, temperature=0.0)  # type: ignore[arg-type]
    assert not lm.sends_key  # a user's OPENAI_API_KEY never reaches the loopback server
    assert LMSpec.secret_env(lm) == {}
    assert not LMSpec.of(lm).build().sends_key
