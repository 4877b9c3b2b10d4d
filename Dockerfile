# The gateway as a container: `docker build -t edi-gateway .` then
# `docker run --rm -v "$PWD/edi:/edi" edi-gateway translate /edi/order.x12`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 gateway
WORKDIR /app

COPY pyproject.toml README.md ./
COPY translators ./translators
COPY gateway ./gateway
COPY partners ./partners
RUN pip install --disable-pip-version-check . && chown -R gateway:gateway /app

USER gateway
ENV GATEWAY_PARTNERS=/app/partners
ENTRYPOINT ["gateway"]
CMD ["--help"]
