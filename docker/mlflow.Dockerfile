# MLflow tracking server with the PostgreSQL driver, for docker/compose.yaml.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true

RUN pip install mlflow==3.17.2 psycopg2-binary==2.9.13 \
    && useradd --create-home --uid 1000 --user-group mlflow \
    && mkdir -p /mlartifacts \
    && chown 1000:1000 /mlartifacts
USER 1000
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --retries=12 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health')"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", \
     "--backend-store-uri", "postgresql+psycopg2://mlflow:mlflow@postgres:5432/mlflow", \
     "--artifacts-destination", "/mlartifacts"]
