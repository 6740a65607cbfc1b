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
    assert {r.ports[0] for r in task.resources} == {task.envs["PORT"]}  # the port the gateway listens on
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
    assert '--lora-modules "${LORA_NAME}=/adapter"' in run and '--port "$VLLM_PORT"' in run
    used = run + raw_yaml()["setup"] + str(raw_yaml()["file_mounts"])
    knobs = [name for name in envs if not name.startswith("FINEFLOW__")]  # those fineflow's config reads
    unused = [name for name in knobs if f"${name}" not in used and f"${{{name}}}" not in used]
    assert unused == []  # every env is a knob the task really reads


def test_every_replica_puts_the_gateway_in_front_of_vllm_on_loopback(monkeypatch):
    """vLLM listens on the replica's loopback with a key made there; the service port is the gateway's,
    which captures traffic into the lakeFS store. The gateway's config is fineflow's own, loaded here with
    the task's FINEFLOW__ variables exactly as the replica loads it."""
    raw = raw_yaml()
    envs, run = raw["envs"], raw["run"]
    vllm, gateway = run.index("vllm serve"), run.index("fineflow serve --upstream")
    assert '--host 127.0.0.1 --port "$VLLM_PORT" --api-key "$VLLM_API_KEY"' in run[vllm:gateway]
    assert run.index("/health") < gateway  # the gateway starts once vLLM is up
    assert '"http://127.0.0.1:${VLLM_PORT}/v1" --host 0.0.0.0 --port "$PORT"' in run[gateway:]
    assert 'FINEFLOW__SERVE__UPSTREAM__MODEL="$LORA_NAME"' in run  # the id clients send, forwarded as is
    assert envs["VLLM_PORT"] != envs["PORT"]

    for name, value in envs.items():
        if name.startswith("FINEFLOW__"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("FINEFLOW__SERVE__UPSTREAM__MODEL", envs["LORA_NAME"])
    monkeypatch.setenv("FINEFLOW__SERVE__UPSTREAM__BASE_URL", f"http://127.0.0.1:{envs['VLLM_PORT']}/v1")
    config = load_config()
    assert config.serve.api_key_env == "SERVE_API_KEY" and config.serve.allowed_hosts == ["*"]
    assert config.serve.upstream.api_key_env == "VLLM_API_KEY"
    assert config.serve.traffic.enabled and config.store.backend == "lakefs"  # capture into lakeFS
    lakefs = {"LAKECTL_SERVER_ENDPOINT_URL", "LAKECTL_CREDENTIALS_ACCESS_KEY_ID"}
    assert lakefs | {"LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY"} <= set(raw["secrets"])
    # the version vLLM serves (the adapter's), whose registered system prompt the gateway reads from MLflow
    assert config.serve.model == envs["LORA_NAME"] and config.serve.follow_alias_poll_s == 0
    mlflow = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert mlflow <= set(raw["secrets"])


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
    """The gateway on 0.0.0.0 behind a public load balancer: every /v1/ request must carry the key, which
    comes from a SkyPilot secret (never an env written into the YAML), and the replica refuses to start
    without it. vLLM's key is made on the replica and never leaves it."""
    import sky

    raw = raw_yaml()
    assert raw["secrets"]["SERVE_API_KEY"] is None  # given at launch: --secret SERVE_API_KEY
    assert all(value is None for value in raw["secrets"].values())  # no secret's value in the YAML
    assert "SERVE_API_KEY" not in raw["envs"] and "VLLM_API_KEY" not in raw["envs"]
    assert raw["envs"]["FINEFLOW__SERVE__API_KEY_ENV"] == "SERVE_API_KEY"
    run = raw["run"]
    assert run.index("${SERVE_API_KEY:?") < run.index("vllm serve")  # an empty key stops the replica
    assert run.index("VLLM_API_KEY=$(") < run.index("vllm serve")
    task = sky.Task.from_yaml_config({**raw, "secrets": dict.fromkeys(raw["secrets"], "k")})
    assert "SERVE_API_KEY" in task.secrets and "SERVE_API_KEY" not in task.envs
