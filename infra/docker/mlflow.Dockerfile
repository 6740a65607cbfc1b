# The MLflow tracking server with the Postgres and S3 drivers the team stack uses, and the `auth` extra its
# basic-auth app needs (Flask-WTF): without it `mlflow server --app-name basic-auth` exits with an ImportError
# (found by tests/test_team_stack_postgres.py, which starts the server with the same flags).
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary==2.9.* boto3==1.*
