# A Prefect process worker with fineflow's locked environment. Flow runs clone the deployed commit
# (prefect.yaml's pull step) and run it with this environment, so the image only changes with uv.lock.
FROM python:3.13-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv
WORKDIR /opt/fineflow
COPY pyproject.toml uv.lock README.md ./
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_PROJECT_ENVIRONMENT=/opt/venv
RUN uv sync --frozen --no-install-project --no-dev
ENV PATH=/opt/venv/bin:$PATH
