# dmlt container images.
#   --target trainer   the DDP trainer (dmlt-train; torch and the rest of the project's dependencies)
#   --target operator  the kopf operator (dmlt-operator; only the `operator` extra, no torch)
#   --target dashboard optuna-dashboard for the study database (dmlt-dashboard; the pinned
#                      hack/dashboard/requirements.txt, none of the project's code)
#
# BASE_IMAGE is any Debian-like image with python3 >= 3.11, venv and pip. With internet access
# the default python:3.11-slim is pulled; hack/cluster.sh passes a base made locally with
# debootstrap, because no registry is reachable there.
#
# pip may need a CA bundle (TLS-intercepting proxies): pass it as the build secret `ca`
# (buildah bud --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt, or
# docker buildx build --secret id=ca,src=...). It is mounted for single RUN steps only and
# never stored in a layer. hack/cluster/images.sh also mounts a folder of wheels it downloaded
# on the host at /wheels for the RUN steps (buildah bud -v), outside the image: when it holds
# every requirement pip installs offline from it, otherwise it downloads as usual.
ARG BASE_IMAGE=python:3.11-slim

# The requirement lists alone, in their own stage: the dependency layers below are keyed on
# their content (COPY --from), so editing pyproject.toml's other parts rebuilds nothing heavy.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN mkdir /req && python3 -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
extra = p.get('optional-dependencies', {}); \
open('/req/trainer.txt', 'w').write('\n'.join(p['dependencies'] + extra.get('postgres', [])) + '\n'); \
open('/req/operator.txt', 'w').write('\n'.join(extra.get('operator', [])) + '\n')"

FROM ${BASE_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN python3 -m venv /opt/venv \
 && groupadd --gid 10001 dmlt \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/dmlt --shell /usr/sbin/nologin dmlt

FROM base AS operator
COPY --from=requirements /req/operator.txt /tmp/requirements.txt
# Pinned versions (hack/lock.sh): a rebuild installs what the lock says, not the newest release.
COPY requirements/operator.lock.txt /tmp/constraints.txt
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    pip install --no-index --find-links /wheels -c /tmp/constraints.txt "setuptools>=69" wheel -r /tmp/requirements.txt \
    || pip install -c /tmp/constraints.txt "setuptools>=69" wheel -r /tmp/requirements.txt
COPY . /tmp/src
# --no-deps: the project's base dependencies (torch, mlflow, ...) stay out of this image.
RUN cd /tmp/src && { [ -f README.md ] || echo "# dmlt" > README.md; } \
 && pip install --no-deps --no-build-isolation --no-cache-dir /tmp/src \
 && rm -rf /tmp/src /tmp/requirements.txt /tmp/constraints.txt
USER 10001:10001
WORKDIR /home/dmlt
CMD ["dmlt-operator"]

FROM base AS trainer
COPY --from=requirements /req/trainer.txt /tmp/requirements.txt
# Pinned versions (hack/lock.sh): a rebuild installs what the lock says, not the newest release.
COPY requirements/trainer.lock.txt /tmp/constraints.txt
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    pip install --no-index --find-links /wheels -c /tmp/constraints.txt "setuptools>=69" wheel -r /tmp/requirements.txt \
    || pip install -c /tmp/constraints.txt "setuptools>=69" wheel -r /tmp/requirements.txt
COPY . /tmp/src
RUN cd /tmp/src && { [ -f README.md ] || echo "# dmlt" > README.md; } \
 && pip install --no-deps --no-build-isolation --no-cache-dir /tmp/src \
 && rm -rf /tmp/src /tmp/requirements.txt /tmp/constraints.txt
USER 10001:10001
WORKDIR /home/dmlt
CMD ["dmlt-train"]

# optuna-dashboard, the Optuna project's web UI, with the PostgreSQL driver: exact pins only
# (hack/dashboard/requirements.txt). The chart's Deployment gives it the storage URL.
FROM base AS dashboard
COPY hack/dashboard/requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    { pip install --no-cache-dir --no-index --find-links /wheels -r /tmp/requirements.txt \
      || pip install --no-cache-dir -r /tmp/requirements.txt; } \
 && rm -f /tmp/requirements.txt
USER 10001:10001
WORKDIR /home/dmlt
EXPOSE 8080
CMD ["optuna-dashboard", "--help"]
