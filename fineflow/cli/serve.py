"""`fineflow serve`: a registered model behind an OpenAI-compatible API, with traffic capture."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from fineflow.cli.common import ConfigOption, SetOption, console, load, one_line
from fineflow.cli.errors import exit_code
from fineflow.config import DEFAULT_CONFIG, FineflowConfig, is_loopback


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
    upstream: Annotated[
        str | None,
        typer.Option(
            "--upstream",
            help="Gateway mode: forward to this OpenAI-compatible /v1 URL (vLLM, another fineflow serve) "
            "instead of loading a model; the same API key, limits, validation, capture and metrics apply, "
            "and the registered system prompt of the version --model names (what the upstream serves).",
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
    extra |= {"serve.upstream.base_url": upstream} if upstream else {}
    loaded = load(config, set_, extra)
    settings = loaded.serve
    has_key = bool(settings.api_key_env and os.environ.get(settings.api_key_env))
    if not is_loopback(settings.host) and not has_key:
        console.print(
            f"[red]refusing to serve on {settings.host} without an API key: set serve.api_key_env to an "
            "environment variable holding one, or serve on 127.0.0.1[/red]"
        )
        raise typer.Exit(2)
    app_, names, capture = _start(loaded)
    url = f"http://{settings.host}:{settings.port}/v1"
    console.print(f"[bold green]serving[/bold green] {names} at {url}")
    if capture is not None:
        traffic = (
            f"lakefs://{loaded.store.repo}/{settings.traffic.branch}/{settings.traffic.prefix}/captured/"
        )
        console.print(f"traffic (PII masked) -> {traffic}")
    _run_until_stopped(app_, loaded, capture)


def _start(loaded: FineflowConfig):
    """(app, what it serves in words, capture or None); a start-up failure is one line and exit 1."""
    from mlflow.exceptions import MlflowException

    from fineflow.privacy.masker import get_masker
    from fineflow.serving.capture import TrafficCapture
    from fineflow.serving.loading import default_model_ref
    from fineflow.store import StoreError, open_store

    ref = default_model_ref(loaded)
    capture = None
    try:
        if (
            loaded.serve.traffic.enabled
        ):  # before the model: bad store settings fail at once, not minutes later
            capture = TrafficCapture(loaded, open_store(loaded), get_masker(loaded.data_prep.pii))
        _log_to_console("fineflow")  # request ids, token counts, latencies and traffic commits; never content
        app_, names = _app(loaded, ref, capture)
        if capture is not None:
            capture.start()  # takes the spool and commits what a crash left in it, before serving
    except (ValueError, StoreError, MlflowException, OSError) as exc:
        if exit_code(exc) == 2:  # a request that cannot be served as asked (an unknown model, ...)
            raise
        # store credentials missing, the store or the tracking server down, a download or load failed
        console.print(f"[red]cannot start serving: {one_line(exc)}[/red]")
        raise typer.Exit(1) from None
    return app_, names, capture


def _app(loaded: FineflowConfig, ref: str, capture):
    """(app, what it serves in words): the model `ref` names loaded here, or a gateway to serve.upstream."""
    from fineflow.serving.app import create_app
    from fineflow.serving.gateway import create_gateway_app
    from fineflow.serving.loading import load_served_model, served_version

    upstream = loaded.serve.upstream
    if upstream.base_url is not None:
        served = served_version(loaded, ref)  # the version the upstream serves, for its system prompt
        app_ = create_gateway_app(loaded, served, capture)
        version = f"{served.name}/{served.version}" if served.version else f"{served.name}, bare"
        prompt = served.system_prompt_uri or "no registered system prompt"
        return app_, f"{app_.state.upstream_model} ({version}, {prompt}; gateway to {upstream.base_url})"
    console.print(f"loading {ref} ...")
    served = load_served_model(loaded, ref)
    return create_app(loaded, served, capture), ", ".join(served.ids)


def _run_until_stopped(app_, loaded: FineflowConfig, capture) -> None:
    import uvicorn

    from fineflow.store import StoreError

    try:
        # uvicorn turns SIGINT/SIGTERM into a graceful shutdown: the app's lifespan commits the traffic
        uvicorn.run(
            app_,
            host=loaded.serve.host,
            port=loaded.serve.port,
            log_level="info",
            timeout_graceful_shutdown=loaded.serve.graceful_shutdown_seconds,
        )
    finally:
        if capture is not None:
            try:
                capture.close()  # whatever stopped uvicorn (a port in use...): no captured record left behind
            except StoreError as exc:
                console.print(
                    f"[red]traffic not committed ({one_line(exc)}); it stays in the spool and the next "
                    "`fineflow serve` commits it[/red]"
                )


def _log_to_console(name: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))  # as uvicorn's lines
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
