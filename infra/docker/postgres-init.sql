-- One database per service on the shared Postgres (the default database is POSTGRES_USER's).
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE lakefs;
