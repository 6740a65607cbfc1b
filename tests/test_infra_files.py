"""What runs fineflow elsewhere, checked where it cannot run: prefect.yaml's entrypoints and trigger, the
GitHub workflows, and the team stack's compose file. No Docker engine or compose plugin is installed
here, so `docker compose -f infra/compose.yaml config` cannot run in this suite. Instead the compose file
is validated against the Compose Specification's own JSON schema (tests/data/compose-spec.json, copied
from compose-spec/compose-spec at a08f8d5, 2025-10-28, Apache-2.0), the references compose would resolve
are checked (services, volumes, build files, bind mounts), and so is the wiring compose would not check
(secrets only from the env file, names that must agree across files)."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path

import yaml
from jsonschema import Draft7Validator
from prefect import Flow
from prefect.utilities.importtools import import_object

from fineflow.stack import DEPLOY_ARGS, GIT_REPOSITORY_ENV, work_pool_name

ROOT = Path(__file__).resolve().parent.parent


def _yaml(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def test_every_deployment_entrypoint_is_a_flow_and_the_trigger_fills_its_parameters():
    deployments = {d["name"]: d for d in _yaml("prefect.yaml")["deployments"]}
    for deployment in deployments.values():
        assert isinstance(import_object(deployment["entrypoint"]), Flow), deployment["entrypoint"]
    # Drift starts a review; a committed review with enough reviewed rows starts the retrain.
    expected = {"review-traffic": "fineflow.drift.detected", "lifecycle": "fineflow.traffic.reviewed"}
    for name, event in expected.items():
        flow = import_object(deployments[name]["entrypoint"])
        parameters = set(inspect.signature(flow.fn).parameters)
        (trigger,) = deployments[name]["triggers"]
        assert trigger["expect"] == [event]
        assert set(trigger["parameters"]) <= parameters
    parameters = set(inspect.signature(import_object(deployments["lifecycle"]["entrypoint"]).fn).parameters)
    for schedule in deployments["lifecycle"]["schedules"]:
        assert set(schedule["parameters"]) <= parameters


def test_deploy_workflow_runs_the_deploy_command_the_tests_run():
    workflow = _yaml(".github/workflows/deploy.yml")
    assert workflow[True]["push"]["branches"] == ["main"]  # YAML reads the key `on` as True
    job = workflow["jobs"]["deploy"]
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert f".venv/bin/prefect {' '.join(DEPLOY_ARGS)}" in runs
    assert job["env"]["PREFECT_API_URL"] == "${{ secrets.PREFECT_API_URL }}"
    assert GIT_REPOSITORY_ENV in job["env"]


def test_ci_workflow_runs_the_readme_test_command():
    runs = [step.get("run") for step in _yaml(".github/workflows/ci.yml")["jobs"]["test"]["steps"]]
    assert ".ci/run" in runs
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


ENV_FILES = ("stack.env", "worker.env", "monitoring.env")  # admins', the worker's own, Grafana's


def _env_files(service: dict) -> list[str]:
    env_file = service.get("env_file")
    return [env_file] if isinstance(env_file, str) else list(env_file or [])


def _defined(env_file: str) -> dict[str, str]:
    example = (ROOT / "infra" / env_file).with_suffix(".env.example").read_text()
    return dict(re.findall(r"^([A-Z_0-9]+)=(.*)$", example, re.MULTILINE))


def test_compose_takes_secrets_only_from_the_ignored_env_file():
    compose = _yaml("infra/compose.yaml")
    services = compose["services"]
    assert {"postgres", "minio", "lakefs", "mlflow", "prefect-server", "worker"} <= set(services)
    for name, service in services.items():
        files = _env_files(service)
        assert files and set(files) <= set(ENV_FILES), name
        defined = set().union(*(_defined(f) for f in files))
        for key in service.get("environment") or {}:
            assert not re.search(r"PASSWORD|SECRET|AUTH_STRING", key), f"{name}: {key} must come from {files}"
        command = str(service.get("command", "")) + str(service.get("entrypoint", ""))
        assert set(re.findall(r"\$\$\{(\w+)\}", command)) <= defined, name
    for env_file in ENV_FILES:
        ignored = subprocess.run(["git", "check-ignore", "-q", f"infra/{env_file}"], cwd=ROOT)
        assert ignored.returncode == 0, f"infra/{env_file} must be git-ignored"


ADMIN_KEYS = re.compile(
    r"^(POSTGRES_|MINIO_ROOT_|LAKEFS_|MLFLOW_AUTH_ADMIN|MLFLOW_BACKEND|MLFLOW_FLASK|AWS_|PREFECT_API_DATABASE|PREFECT_SERVER_)"
)


def test_compose_stack_requires_auth_binds_loopback_and_keeps_admin_keys_from_the_worker():
    services = _yaml("infra/compose.yaml")["services"]
    # every published port binds 127.0.0.1 unless FINEFLOW_BIND_ADDRESS says otherwise
    published = [(name, port) for name, service in services.items() for port in service.get("ports", [])]
    assert published
    for name, port in published:
        assert str(port).startswith("${FINEFLOW_BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
    stack, worker_env = _defined("stack.env"), _defined("worker.env")
    # Prefect: the API asks for an auth string, and the worker sends it; CSRF protection on
    prefect = services["prefect-server"]
    assert "PREFECT_SERVER_API_AUTH_STRING" in stack and _env_files(prefect) == ["stack.env"]
    assert prefect["environment"]["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    assert "*" not in prefect["environment"]["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"]
    assert "PREFECT_API_AUTH_STRING" in worker_env
    # MLflow: the basic-auth app with an admin password from the env file, and a non-admin worker user
    mlflow = services["mlflow"]
    assert "--app-name basic-auth" in mlflow["command"] and "MLFLOW_AUTH_ADMIN_PASSWORD" in stack
    ini = (ROOT / "infra/docker/mlflow-basic-auth.ini").read_text()
    assert "admin_password" not in ini.replace("# No admin_password", "")  # no password in the repo
    assert "default_permission = READ" in ini and "/var/lib/mlflow-auth/" in ini
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(worker_env)
    assert worker_env["MLFLOW_TRACKING_USERNAME"] != "admin"
    assert services["worker"]["depends_on"]["mlflow-users"] == {"condition": "service_completed_successfully"}
    # the worker: only worker.env, and no admin key in it or in its environment
    worker = services["worker"]
    assert _env_files(worker) == ["worker.env"]
    leaked = [key for key in [*worker_env, *(worker.get("environment") or {})] if ADMIN_KEYS.match(key)]
    assert leaked == [], leaked


def test_compose_worker_serves_the_pool_of_prefect_yaml():
    worker = _yaml("infra/compose.yaml")["services"]["worker"]
    assert f"--pool {work_pool_name(ROOT)}" in worker["command"]
    assert worker["environment"]["FINEFLOW__STORE__BACKEND"] == "lakefs"


def test_compose_file_follows_the_compose_specification():
    compose = _yaml("infra/compose.yaml")
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    errors = sorted(Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_references_resolve():
    compose_dir = ROOT / "infra"
    compose = _yaml("infra/compose.yaml")
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    for name, service in services.items():
        assert set(service.get("depends_on") or {}) <= set(services), name
        if "build" in service:
            context = compose_dir / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for env_file in _env_files(service):
            assert (compose_dir / env_file).with_suffix(".env.example").is_file(), name
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (compose_dir / source).exists(), f"{name}: bind mount {source} is missing"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"


def test_compose_images_are_pinned_releases():
    for name, service in _yaml("infra/compose.yaml")["services"].items():
        if "image" in service:
            image, _, tag = service["image"].rpartition(":")
            assert image and tag and tag != "latest", f"{name}: {service['image']} is not pinned to a release"


def _exposed_metrics() -> set[str]:
    """The sample names `fineflow serve` exposes on /metrics, from the server's own metrics registry."""
    from fineflow.config import load_config
    from fineflow.serving.metrics import ServingMetrics

    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    registry = ServingMetrics(load_config().serve.metrics).registry
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def test_prometheus_scrapes_fineflow_serve_with_the_scrape_key_secret():
    compose = _yaml("infra/compose.yaml")
    prometheus = compose["services"]["prometheus"]
    [job] = _yaml("infra/prometheus/prometheus.yml")["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    [secret] = prometheus["secrets"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": f"/run/secrets/{secret}"}
    assert compose["secrets"][secret]["environment"] in _defined("stack.env")
    mounts = dict(mount.split(":")[:2] for mount in prometheus["volumes"])
    assert mounts["./prometheus/prometheus.yml"] in " ".join(prometheus["command"])  # the file it reads
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]
    [target] = job["static_configs"][0]["targets"]
    assert target.startswith("host.docker.internal:")


def test_grafana_is_provisioned_with_the_serving_dashboard_on_the_stack_prometheus():
    services = _yaml("infra/compose.yaml")["services"]
    grafana = services["grafana"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" in _defined("monitoring.env")
    mounts = dict(mount.split(":")[:2] for mount in grafana["volumes"])
    [source] = _yaml("infra/grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in services and "9090:9090" in services["prometheus"]["ports"][0]
    [provider] = _yaml("infra/grafana/provisioning/dashboards/fineflow.yaml")["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"

    dashboard = json.loads((ROOT / "infra/grafana/dashboards/fineflow-serving.json").read_text())
    exposed = _exposed_metrics()
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(set(titles)) == len(titles) and len({panel["id"] for panel in dashboard["panels"]}) == len(
        titles
    )
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        for target in panel["targets"]:
            named = set(re.findall(r"\bfineflow_\w+", target["expr"]))
            assert named and named <= exposed, (panel["title"], named - exposed)
            used |= named
    # every series the server exposes is on the dashboard
    expected = {name for name in exposed if not name.endswith(("_sum", "_count"))}
    assert expected <= used, expected - used
