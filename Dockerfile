# The Slipway operator image: `docker build -t slipway/operator:0.1.0 .`
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# Non-root, and nothing is written to the root filesystem (readOnlyRootFilesystem).
USER 10001:10001
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080 9100
ENTRYPOINT ["slipway"]
CMD ["run"]
