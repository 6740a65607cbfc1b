"""The worker's own MLflow user, created (or its password reset) as the admin. Run once by the team stack's
`mlflow-users` service, before the worker starts.

Reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (worker.env: the user to create, as the worker
signs in with them) and MLFLOW_AUTH_ADMIN_PASSWORD (stack.env). The user is not an admin: it cannot manage
users or other people's permissions; what it creates (experiments, registered models) it manages.
"""

import os

from mlflow.exceptions import RestException
from mlflow.server.auth.client import AuthServiceClient

ADMIN = "admin"  # admin_username in mlflow-basic-auth.ini

username = os.environ["MLFLOW_TRACKING_USERNAME"]
password = os.environ["MLFLOW_TRACKING_PASSWORD"]
if username == ADMIN:
    raise SystemExit("worker.env: MLFLOW_TRACKING_USERNAME must be the worker's own user, not the admin")
# the client signs in with these: the admin's credentials, for this script only
os.environ["MLFLOW_TRACKING_USERNAME"] = ADMIN
os.environ["MLFLOW_TRACKING_PASSWORD"] = os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
client = AuthServiceClient(os.environ["MLFLOW_TRACKING_URI"])
try:
    client.create_user(username, password)
    print(f"created MLflow user {username!r}")
except RestException as exc:
    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
        raise
    client.update_user_password(username, password)
    print(f"MLflow user {username!r} exists; password set from worker.env")
