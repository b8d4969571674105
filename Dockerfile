# The Slipway operator image: `docker build -t slipway/operator:0.1.0 .`
#
# Only the operator and its runtime dependencies: the package is installed without the `dev`
# extra, so neither the local platform's dependencies (cryptography, the kubernetes client)
# nor the test tools are in the image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# slipway.devcluster (the local development platform behind `slipway dev ...`) is part of the
# wheel but never runs in a cluster, and its dependencies are not installed here: drop it so
# the image ships no code that cannot import. Then check that the operator still imports
# without it (`slipway run` imports devcluster nowhere; the `dev` commands import it lazily).
RUN pip install --no-cache-dir --prefix=/install . \
 && site=/install/lib/python3.11/site-packages \
 && test -d "$site/slipway/devcluster" \
 && rm -rf "$site/slipway/devcluster" \
 && PYTHONPATH="$site" python -c "import importlib.util as u, slipway.cli, slipway.runner, slipway.controllers; assert u.find_spec('slipway.devcluster') is None" \
 && PYTHONPATH="$site" python -m slipway.cli run --help >/dev/null

FROM python:3.11-slim
COPY --from=build /install /usr/local
# Non-root (numeric, so runAsNonRoot can verify it), and nothing is written to the root
# filesystem: bytecode was compiled at install time and is never written at run time, and
# HOME points at /tmp, the one writable place (the chart mounts an emptyDir there), so that
# the root filesystem can be mounted read-only (readOnlyRootFilesystem).
USER 10001:10001
# PYTHONMALLOC=malloc: see slipway.memory.use_system_malloc (`slipway run` sets it otherwise).
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp PYTHONMALLOC=malloc
# 8080: /healthz and /readyz; 9100: /metrics.
EXPOSE 8080 9100
ENTRYPOINT ["slipway"]
CMD ["run"]
