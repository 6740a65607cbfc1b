# The MLflow tracking server with the Postgres and S3 drivers the team stack uses.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.* boto3==1.*
