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
    lifecycle = import_object(deployments["lifecycle"]["entrypoint"])
    parameters = set(inspect.signature(lifecycle.fn).parameters)
    (trigger,) = deployments["lifecycle"]["triggers"]
    assert trigger["expect"] == ["fineflow.drift.detected"]
    assert set(trigger["parameters"]) <= parameters
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


def test_compose_takes_secrets_only_from_the_ignored_env_file():
    compose = _yaml("infra/compose.yaml")
    services = compose["services"]
    assert {"postgres", "minio", "lakefs", "mlflow", "prefect-server", "worker"} <= set(services)
    example = (ROOT / "infra/stack.env.example").read_text()
    defined = set(re.findall(r"^([A-Z_0-9]+)=", example, re.MULTILINE))
    for name, service in services.items():
        assert service.get("env_file") == "stack.env", name
        for key in service.get("environment") or {}:
            assert not re.search(r"PASSWORD|SECRET", key), f"{name}: {key} must come from stack.env"
        command = str(service.get("command", "")) + str(service.get("entrypoint", ""))
        assert set(re.findall(r"\$\$\{(\w+)\}", command)) <= defined, name
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/stack.env"], cwd=ROOT)
    assert ignored.returncode == 0, "infra/stack.env must be git-ignored"


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
        assert (compose_dir / service["env_file"]).with_suffix(".env.example").is_file(), name
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
