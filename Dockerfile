FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home /var/lib/canaryproxy --create-home canaryproxy \
    && mkdir -p /etc/canaryproxy \
    && rm -rf /src
COPY config/example.yaml /etc/canaryproxy/config.yaml

USER canaryproxy
WORKDIR /var/lib/canaryproxy
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["canaryproxy"]
CMD ["serve", "-c", "/etc/canaryproxy/config.yaml"]
