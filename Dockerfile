# Build stage: the wheel with the hot path compiled by mypyc (gcc and the Python headers
# are here, not in the image that runs).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && python -c "from proxy.build import build; assert build() == 'compiled', build()" \
    && useradd --system --uid 10001 --home /var/lib/canaryproxy --create-home canaryproxy \
    && mkdir -p /etc/canaryproxy
COPY config/example.yaml /etc/canaryproxy/config.yaml

USER canaryproxy
WORKDIR /var/lib/canaryproxy
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["canaryproxy"]
CMD ["serve", "-c", "/etc/canaryproxy/config.yaml"]
