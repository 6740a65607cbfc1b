"""The `fineflow` command line: one entry point for every lifecycle stage."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from fineflow.config import DEFAULT_CONFIG, ConfigError, FineflowConfig, is_loopback, load_config
from fineflow.runtime import prepare_environment
from fineflow.stack import use_running_stack

if TYPE_CHECKING:  # imported lazily at run time, after prepare_environment
    from tasks.data.results import DataPrepResult, PrepReport

app = typer.Typer(
    help="fineflow: the lifecycle of a fine-tuned LLM as versioned Prefect flows.", no_args_is_help=True
)
data_app = typer.Typer(help="Versioned datasets: prepare, inspect.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True)  # URIs and commit ids stay whole, for copy and paste

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: section.key=value (repeatable)."),
]


def _load(config: Path, overrides: list[str] | None, extra: dict | None = None) -> FineflowConfig:
    try:
        loaded = load_config(
            config, [*(overrides or []), *(f"{k}={json.dumps(v)}" for k, v in (extra or {}).items())]
        )
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    prepare_environment(loaded.data_dir)
    use_running_stack(loaded.data_dir)
    return loaded


@app.command("run")
def run_command(
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
    traffic_commit: Annotated[
        str | None,
        typer.Option(help="A traffic-branch commit whose reviewed records join the training data."),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why this run, recorded with it.")] = None,
) -> None:
    """The whole lifecycle: data prep -> fine-tune -> register -> evaluate -> gates -> promote."""
    loaded = _load(config, set_)
    from flows.lifecycle import StageFailedError, lifecycle

    try:
        summary = lifecycle(config=loaded, traffic_commit=traffic_commit, reason=reason)
    except StageFailedError as exc:
        console.print(f"[red]{exc}[/red]\n[red]the champion was not touched[/red]")
        raise typer.Exit(1) from None
    _print_lifecycle_summary(summary)


def _print_lifecycle_summary(summary: dict) -> None:
    _print_gates(
        f"gates: {summary['model_name']} version {summary['version']} vs {summary['baseline']}",
        summary["gates"],
    )
    table = Table(title="lifecycle run")
    table.add_column("record")
    table.add_column("value", overflow="fold")
    trained = "trained in this run" if summary["trained"] else "already registered for this lineage"
    rows = {
        "dataset commit": summary["dataset_commit"],
        "train split": summary["dataset_uri"],
        "model version": f"{summary['model_name']}/{summary['version']} ({trained})",
        "code commit": summary["code_commit"],
        "MLflow fine-tune run": summary["fine_tune_run"],
        "MLflow evaluation run": f"{summary['evaluation_run']} (report.html, decision.json)",
        "MLflow": summary["mlflow_version_url"] or f"{summary['tracking_uri']}  (see: fineflow up)",
        "Prefect flow run": summary["flow_run_url"]
        or f"{summary['flow_run_id']}  (state in {summary['data_dir']})",
    }
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)
    if summary["promoted"]:
        console.print(f"[bold green]promoted[/bold green]: version {summary['version']} is the champion")
    else:
        console.print(
            f"[bold yellow]not promoted[/bold yellow]: {summary['promotion']}; "
            f"champion stays {summary['champion'] or '(none yet)'}"
        )


@data_app.command("prep")
def data_prep_command(
    config: ConfigOption = DEFAULT_CONFIG,
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="A raw file or lakefs:// URI (repeatable); replaces data_prep.inputs."
        ),
    ] = None,
    set_: SetOption = None,
    refresh_cache: Annotated[
        bool, typer.Option(help="Recompute every step, ignoring cached results.")
    ] = False,
) -> None:
    """Ingest, validate, clean, mask PII, deduplicate, filter, split and publish a dataset commit."""
    loaded = _load(config, set_, {"data_prep.inputs": input} if input else None)
    from flows.data_prep import data_prep  # imported after prepare_environment: Prefect reads it at import
    from tasks.data.ingest import InputError, check_inputs
    from tasks.data.publish import AuditFailedError

    try:
        check_inputs(loaded.data_prep.inputs)  # before a Prefect run even starts
    except InputError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None

    try:
        result = data_prep(
            config_path=str(config), inputs=input, overrides=_overrides(set_), refresh_cache=refresh_cache
        )
    except (InputError, ConfigError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except AuditFailedError as exc:
        from fineflow.store import open_store
        from tasks.data.results import read_report

        _print_prep_summary(loaded, read_report(open_store(loaded), loaded, exc.branch), exc.branch)
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _print_prep_summary(loaded, result.report, result.commit, result)


@app.command("finetune")
def finetune_command(
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", help="lakefs://<repo>/<ref>/<train.jsonl>; default: main's split."),
    ] = None,
    compute: Annotated[str | None, typer.Option(help="local or skypilot (default from config).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
) -> None:
    """LoRA fine-tune on a dataset commit, tracked in MLflow, registered as the challenger."""
    extra = {"fine_tune.dataset": dataset} if dataset else {}
    extra |= {"fine_tune.compute": compute} if compute else {}
    loaded = _load(config, set_, extra)
    from fineflow.registry.tracking import tracking_uri
    from flows.fine_tune import fine_tune

    overrides = _overrides(set_)
    result = fine_tune(config_path=str(config), dataset=dataset, compute=compute, overrides=overrides)
    verb = "already registered (nothing trained)" if result.cached else "registered"
    console.print(
        f"[bold green]{verb}[/bold green] {result.model_name} version {result.version} as @{result.alias}"
    )
    table = Table(title="lineage")
    table.add_column("tag")
    table.add_column("value", overflow="fold")
    for key, value in [*result.lineage.model_dump().items(), ("mlflow_run_id", result.mlflow_run_id)]:
        table.add_row(key, str(value))
    console.print(table)
    if result.training:
        run = result.training
        rate = run.tokens_per_second
        console.print(f"trained {run.global_step} steps, loss {run.train_loss:.4f}, {rate:.0f} tok/s")
    console.print(
        f"load it: mlflow.pyfunc.load_model('models:/{result.model_name}@{result.alias}')"
        f"  (tracking URI {tracking_uri(loaded)})"
    )


ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="name@alias or name/version; default: the challenger.")
]


@app.command("evaluate")
def evaluate_command(
    model: ModelOption = None, config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None
) -> None:
    """Measure the challenger and its baseline (champion, else the base model) and decide the gates."""
    _load(config, set_)
    from fineflow.registry.tracking import LineageError
    from flows.evaluate import ModelRefError, evaluate

    try:
        result = evaluate(model=model, config_path=str(config), overrides=_overrides(set_))
    except (ModelRefError, LineageError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    _print_gates(
        f"{result['model_name']} version {result['version']} vs {result['baseline']}", result["gates"]
    )
    verdict = "[green]gates pass: ready to promote[/green]" if result["promote"] else "[red]gates fail[/red]"
    console.print(f"{verdict}  (report.html and decision.json in MLflow run {result['challenger_run']})")


@app.command("promote")
def promote_command(
    model: ModelOption = None, config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None
) -> None:
    """Move champion to the challenger if its recorded evaluation passes the gates (and approval if asked)."""
    _load(config, set_)
    from flows.evaluate import ModelRefError
    from flows.promote import NotEvaluatedError, promote

    try:
        result = promote(model=model, config_path=str(config), overrides=_overrides(set_))
    except (ModelRefError, NotEvaluatedError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    _print_gates(f"{result['model_name']} version {result['version']}", result["gates"])
    if result["promoted"] and result["already_champion"]:
        console.print(f"version {result['version']} is already the champion; nothing moved")
    elif result["promoted"]:
        console.print(
            f"[bold green]promoted[/bold green] version {result['version']} to champion "
            f"(previous-champion: {result['previous_champion']})"
        )
    else:
        console.print(f"[bold red]not promoted[/bold red]: {result['reason']}; no alias moved")
        raise typer.Exit(1)


def _print_gates(title: str, gates: list[dict]) -> None:
    from tasks.evaluation.eval_report import format_value

    table = Table(title=title)
    for column in ("gate", "value", "threshold", "baseline", "result", "why"):
        table.add_column(column, overflow="fold")

    for gate in gates:
        verdict = ("pass" if gate["passed"] else "FAIL") + ("" if gate["blocking"] else " (advisory)")
        colour = "green" if gate["passed"] else ("red" if gate["blocking"] else "yellow")
        table.add_row(
            gate["metric"],
            format_value(gate["value"]),
            format_value(gate["threshold"]),
            format_value(gate["champion_value"]),
            f"[{colour}]{verdict}[/{colour}]",
            gate["reason"],
        )
    console.print(table)


@app.command("rollback")
def rollback_command(config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None) -> None:
    """Move the champion alias back to the previous champion."""
    _load(config, set_)
    from flows.promote import rollback
    from tasks.evaluation.promotion import RollbackError

    try:
        result = rollback(config_path=str(config), overrides=_overrides(set_))
    except RollbackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"[bold]{result['model_name']}[/bold]: champion is now version {result['champion']}, "
        f"previous-champion version {result['previous_champion']}"
    )


@app.command("up")
def up_command(config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None) -> None:
    """Start a local Prefect server, MLflow server and worker on 127.0.0.1, and deploy prefect.yaml."""
    loaded = _load(config, set_)
    from fineflow.stack import StackError, up

    try:
        stack = up(loaded, Path.cwd(), log=lambda line: console.print(f"[dim]{line}[/dim]"))
    except StackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"[bold green]up[/bold green]: deployments {', '.join(stack.deployments)} at {stack.commit[:12]}"
    )
    console.print(f"  Prefect UI  {stack.prefect_url}   (deployments: {stack.prefect_url}/deployments)")
    console.print(f"  MLflow UI   {stack.mlflow_url}")
    console.print(f"  worker      pool {stack.work_pool}; logs in {loaded.data_dir / 'stack'}")
    console.print(
        "fineflow commands now use these servers; other tools: "
        f"export PREFECT_API_URL={stack.api_url} MLFLOW_TRACKING_URI={stack.mlflow_url}"
    )
    console.print("stop everything with: fineflow down")


@app.command("down")
def down_command(config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None) -> None:
    """Stop what `fineflow up` started, and nothing else."""
    loaded = _load(config, set_)
    from fineflow.stack import down

    stopped = down(loaded, log=lambda line: console.print(f"[dim]{line}[/dim]"))
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@data_app.command("log")
def data_log_command(
    ref: Annotated[str, typer.Argument(help="Branch, tag or commit.")] = "main",
    limit: Annotated[int, typer.Option(help="How many commits.")] = 10,
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
) -> None:
    """Commits of the dataset repository, newest first, with their lineage metadata."""
    loaded = _load(config, set_)
    from fineflow.store import StoreError, open_store

    try:
        commits = open_store(loaded).log(loaded.store.repo, ref, limit=limit)
    except StoreError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    table = Table(title=f"lakefs://{loaded.store.repo}/{ref}")
    for column in ("commit", "message", "metadata"):
        table.add_column(column)
    for commit in commits:
        meta = "\n".join(f"{k}: {v}" for k, v in sorted(commit.metadata.items()))
        table.add_row(commit.id[:12], commit.message, meta)
    console.print(table)


@app.command("serve")
def serve_command(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A registered version, name@alias or name/version (default: serve.model, else "
            "<registry.model_name>@champion). Anything else is served as a BASE MODEL ONLY, without "
            "adapter: the embedded name (smollm2-135m-instruct), a local model directory or a hub id.",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
) -> None:
    """Serve a model behind an OpenAI-compatible API (/v1/chat/completions, /v1/models), capturing traffic
    (PII masked) into the dataset store's traffic branch. Ctrl-C stops it and commits every record."""
    extra = {"serve.model": model} if model else {}
    extra |= {"serve.host": host} if host else {}
    extra |= {"serve.port": port} if port is not None else {}
    loaded = _load(config, set_, extra)
    settings = loaded.serve
    has_key = bool(settings.api_key_env and os.environ.get(settings.api_key_env))
    if not is_loopback(settings.host) and not has_key:
        console.print(
            f"[red]refusing to serve on {settings.host} without an API key: set serve.api_key_env to an "
            "environment variable holding one, or serve on 127.0.0.1[/red]"
        )
        raise typer.Exit(2)
    import uvicorn
    from mlflow.exceptions import MlflowException

    from fineflow.privacy.masker import NerModelMissingError, get_masker
    from fineflow.serving.app import create_app
    from fineflow.serving.capture import SpoolInUseError, TrafficCapture
    from fineflow.serving.loading import ServeModelError, default_model_ref, load_served_model
    from fineflow.store import StoreError, open_store

    ref = default_model_ref(loaded)
    capture = None
    try:
        if settings.traffic.enabled:  # before the model: bad store settings fail at once, not minutes later
            capture = TrafficCapture(loaded, open_store(loaded), get_masker(loaded.data_prep.pii))
        _log_to_console("fineflow")  # request ids, token counts, latencies and traffic commits; never content
        console.print(f"loading {ref} ...")
        served = load_served_model(loaded, ref)
        app_ = create_app(loaded, served, capture)
        if capture is not None:
            capture.start()  # takes the spool and commits what a crash left in it, before serving
    except (ServeModelError, NerModelMissingError, SpoolInUseError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except (ValueError, StoreError, MlflowException, OSError) as exc:
        # store credentials missing, the store or the tracking server down, a download or load failed
        console.print(f"[red]cannot start serving: {_one_line(exc)}[/red]")
        raise typer.Exit(1) from None
    url = f"http://{settings.host}:{settings.port}/v1"
    console.print(f"[bold green]serving[/bold green] {', '.join(served.ids)} at {url}")
    if capture is not None:
        traffic = (
            f"lakefs://{loaded.store.repo}/{settings.traffic.branch}/{settings.traffic.prefix}/captured/"
        )
        console.print(f"traffic (PII masked) -> {traffic}")
    try:
        # uvicorn turns SIGINT/SIGTERM into a graceful shutdown: the app's lifespan commits the traffic
        uvicorn.run(
            app_,
            host=settings.host,
            port=settings.port,
            log_level="info",
            timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        )
    finally:
        if capture is not None:
            try:
                capture.close()  # whatever stopped uvicorn (a port in use...): no captured record left behind
            except StoreError as exc:
                console.print(
                    f"[red]traffic not committed ({_one_line(exc)}); it stays in the spool and the next "
                    "`fineflow serve` commits it[/red]"
                )


def _one_line(exc: BaseException) -> str:
    """An exception as one line: MLflow's and the SDKs' messages can span many."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _log_to_console(name: str) -> None:
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))  # as uvicorn's lines
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@app.command("drift")
def drift_command(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="name@alias or name/version; default: the champion.")
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
) -> None:
    """Compare recent traffic with the champion's training prompts and re-check its golden-set quality.

    Drift is a finding, not an error: the exit code is 0 either way (2 when there is nothing to check)."""
    _load(config, set_)
    from fineflow.registry.tracking import LineageError
    from flows.drift import drift, report_path
    from flows.evaluate import ModelRefError
    from tasks.drift.report import VERDICT_COLOURS, format_number, result_label
    from tasks.drift.stats import Statistic
    from tasks.drift.traffic_window import TrafficError

    try:
        result = drift(model=model, config_path=str(config), overrides=_overrides(set_))
    except ModelRefError as exc:
        console.print(f"[red]{exc}[/red]: promote a model to champion first, or name one with --model")
        raise typer.Exit(2) from None
    except (TrafficError, LineageError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    colour = VERDICT_COLOURS[result["verdict"]]
    console.print(
        f"[bold {colour}]{result['verdict']}[/bold {colour}] for {result['model_name']} version "
        f"{result['version']}: {result['traffic_records']} traffic records, commit {result['traffic_commit']}"
    )
    for reason in result["reasons"]:
        console.print(f"  - {reason}")
    for note in result["notes"]:
        console.print(f"  [dim]{note}[/dim]")
    if result["statistics"]:
        table = Table(title="drift statistics")
        for column in ("statistic", "value", "drift when", "result", "detail"):
            table.add_column(column, overflow="fold")
        for stat in result["statistics"]:
            item = Statistic(**stat)
            style = "red" if item.drifted else "green"
            table.add_row(
                item.name,
                format_number(item.value),
                item.rule,
                f"[{style}]{result_label(item)}[/{style}]",
                item.detail,
            )
        console.print(table)
    event = f"event {result['event_id']} emitted" if result["event_emitted"] else "no event emitted"
    console.print(
        f"report: {report_path(result['report_uri'])}  (MLflow run {result['mlflow_run_id']}; {event})"
    )


def _overrides(set_: list[str] | None) -> dict:
    """--set pairs as a flow's `overrides` parameter; _load has already rejected malformed ones."""
    import yaml

    pairs = (item.split("=", 1) for item in (set_ or []) if "=" in item)
    return {key.strip(): yaml.safe_load(value) for key, value in pairs}


def _print_prep_summary(
    config: FineflowConfig, report: PrepReport, ref: str, published: DataPrepResult | None = None
) -> None:
    """The step table and counts of a report; `published` (a DataPrepResult) when the audit passed."""
    from fineflow.store.layout import dataset_layout
    from tasks.data.records import format_counts

    table = Table(title="data prep: stage counts")
    for column in ("step", "rows in", "rows out", "dropped, by reason"):
        table.add_column(column, justify="right" if column.startswith("rows") else "left")
    for step in report.steps:
        table.add_row(step.step, str(step.rows_in), str(step.rows_out), format_counts(step.dropped))
    console.print(table)
    counts = report.counts
    console.print(
        f"{counts.rows_in} rows in = {counts.train} train + {counts.eval} eval + "
        f"{counts.quarantined} quarantined + {counts.removed} removed"
    )
    console.print(f"PII masked: {format_counts(report.pii_masked_by_type, empty='none')}")
    if report.quarantined_by_reason:
        console.print("quarantined: " + format_counts(report.quarantined_by_reason))
    if published is None:
        prefix = dataset_layout(config).prefix
        console.print(f"outputs kept for inspection: lakefs://{config.store.repo}/{ref}/{prefix}/")
        return
    console.print(f"[bold green]published commit[/bold green] {published.commit}")
    console.print(f"  train: {published.train_uri}")
    console.print(f"  eval:  {published.eval_uri}")
    console.print(f"  quarantine, removed rows and report.json beside them; state under {config.data_dir}")
