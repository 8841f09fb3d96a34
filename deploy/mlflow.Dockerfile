# MLflow tracking server for deploy/compose.yaml: the upstream image (python:3.11-slim +
# mlflow) plus the two clients its storage needs, which upstream does not ship:
#   psycopg2-binary  the PostgreSQL driver for the backend store (postgresql+psycopg2://)
#   boto3            the S3 client for the artifact store (MinIO, s3://<bucket>/artifacts)
# The server version is the one in requirements.lock (mlflow==3.17.2), so server and
# clients agree; tests/test_deploy.py checks that. Build context: deploy/ (nothing copied).
#   docker build -f deploy/mlflow.Dockerfile -t poimatch-mlflow:3.17.2 deploy
FROM ghcr.io/mlflow/mlflow:v3.17.2

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir psycopg2-binary==2.9.13 boto3==1.44.8 \
 && python -c "import psycopg2, boto3, mlflow" \
 && useradd --system --uid 10002 --create-home --home-dir /home/mlflow \
        --shell /usr/sbin/nologin mlflow

# The server keeps nothing on local disk (runs in PostgreSQL, artifacts in S3).
USER 10002:10002
WORKDIR /home/mlflow

EXPOSE 5000

# No curl in the image: Python asks /health, which the server exempts from host checks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]

CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
