"""infra/sky/serve.yaml, the champion on vLLM under SkyServe, checked offline by SkyPilot's own code: its
task schema, its task loader (envs substituted into the mounts) and SkyServe's service validation. No cloud
is reachable here, so nothing is launched; the values are checked against fineflow's own config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fineflow.config import load_config

SERVE_YAML = Path(__file__).resolve().parent.parent / "infra" / "sky" / "serve.yaml"


def raw_yaml() -> dict:
    return yaml.safe_load(SERVE_YAML.read_text())


def test_the_serve_yaml_passes_skypilots_schema_and_skyserve_validation():
    import sky
    from sky.serve.serve_utils import validate_service_task
    from sky.utils import common_utils, schemas

    raw = raw_yaml()
    common_utils.validate_schema(raw, schemas.get_task_schema(), "Invalid task YAML: ")
    common_utils.validate_schema(raw["service"], schemas.get_service_schema(), "Invalid service: ")
    task = sky.Task.from_yaml(str(SERVE_YAML))
    validate_service_task(task, pool=False)  # what `sky serve up` checks before launching

    assert task.service.readiness_path == "/health"  # the /v1/ routes need the API key the probe lacks
    assert (task.service.min_replicas, task.service.max_replicas) == (1, 3)
    assert task.service.target_qps_per_replica == 5
    assert {str(r.accelerators) for r in task.resources} == {"{'L4': 1}", "{'A10G': 1}"}
    assert {r.ports[0] for r in task.resources} == {task.envs["PORT"]}  # the port vLLM listens on
    assert (
        task.storage_mounts["/adapter"].source == raw["envs"]["ADAPTER_BUCKET"]
    )  # $ADAPTER_BUCKET filled in


def test_the_serve_yaml_serves_what_fineflow_serve_serves():
    config = load_config()
    envs, run = raw_yaml()["envs"], raw_yaml()["run"]
    assert envs["BASE_MODEL"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert envs["LORA_NAME"] == f"{config.registry.model_name}@champion"  # the id clients send either way
    assert int(envs["MAX_LORA_RANK"]) >= config.fine_tune.lora.r
    assert int(envs["MAX_MODEL_LEN"]) == config.serve.max_prompt_tokens + config.serve.max_new_tokens.cap
    assert int(envs["MAX_NEW_TOKENS_DEFAULT"]) == config.serve.max_new_tokens.default
    assert 'vllm serve "$BASE_MODEL"' in run and "--enable-lora" in run
    assert '--lora-modules "${LORA_NAME}=/adapter"' in run and '--port "$PORT"' in run
    used = run + raw_yaml()["setup"] + str(raw_yaml()["file_mounts"])
    unused = [name for name in envs if f"${name}" not in used and f"${{{name}}}" not in used]
    assert unused == []  # every env is a knob the task really reads


def test_a_broken_service_section_is_rejected():
    import sky
    from sky.serve.serve_utils import validate_service_task
    from sky.utils import common_utils, schemas

    raw = raw_yaml()
    raw["service"]["readyness_probe"] = raw["service"].pop("readiness_probe")  # a typo
    with pytest.raises(ValueError, match="readyness_probe"):
        common_utils.validate_schema(raw["service"], schemas.get_service_schema(), "Invalid service: ")
    no_service = {key: value for key, value in raw_yaml().items() if key != "service"}
    with pytest.raises(RuntimeError, match="Service section not found"):
        validate_service_task(sky.Task.from_yaml_config(no_service), pool=False)


def test_the_serve_yaml_requires_an_api_key_from_a_secret():
    """vLLM on 0.0.0.0 behind a public load balancer: every /v1/ request must carry the key, which comes
    from a SkyPilot secret (never an env written into the YAML), and the replica refuses to start
    without it."""
    import sky

    raw = raw_yaml()
    assert raw["secrets"] == {"VLLM_API_KEY": None}  # given at launch: --secret VLLM_API_KEY
    assert "VLLM_API_KEY" not in raw["envs"]
    run = raw["run"]
    assert '--api-key "$VLLM_API_KEY"' in run
    assert run.index("${VLLM_API_KEY:?") < run.index("vllm serve")  # an empty key stops the replica
    task = sky.Task.from_yaml_config({**raw, "secrets": {"VLLM_API_KEY": "k"}})
    assert "VLLM_API_KEY" in task.secrets and "VLLM_API_KEY" not in task.envs
