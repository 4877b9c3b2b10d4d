# The gateway as a container: `docker build -t edi-gateway .` then
# `docker run --rm -v "$PWD/edi:/edi" edi-gateway translate /edi/order.x12`.

# Build stage: a C compiler, so the translation core is compiled with mypyc and the readers' C
# paths (translators/_x12.c, translators/_edifact.c) are built (setup.py); the runtime image gets
# wheels only.
FROM python:3.11-slim AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY translators ./translators
COPY gateway ./gateway
RUN pip wheel --disable-pip-version-check --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 gateway
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --disable-pip-version-check --no-index --find-links /wheels edi-gateway && rm -rf /wheels
COPY partners ./partners
COPY gateway.example.toml ./
RUN mkdir -p /app/var && chown -R gateway:gateway /app

USER gateway
ENV GATEWAY_PARTNERS=/app/partners \
    GATEWAY_PARTNERS_DIR=/app/partners \
    GATEWAY_DATA_DIR=/app/var
EXPOSE 8080
ENTRYPOINT ["gateway"]
CMD ["--help"]
