# region-router: the proxy and admin listeners, as `region-router run` (CONTRACT section 9).
#   docker build -t region-router .
#   docker run --rm -p 8080:8080 -v "$PWD/my-config.yaml:/etc/region-router/config.yaml:ro" region-router

# Build the wheel in a throwaway stage so the image holds no sources or build tools.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
COPY admin ./admin
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /tmp/wheels
RUN pip install --root-user-action=ignore /tmp/wheels/*.whl && rm -rf /tmp/wheels

# The repo's config.yaml is the demo config; it binds the proxy to loopback, which nothing
# outside the container can reach, so the image's copy listens on all interfaces. Admin
# stays on the container's loopback (the health check below uses it): binding it elsewhere
# needs admin.token / ROUTER_ADMIN_TOKEN. Mount your own config over this file.
COPY config.yaml /etc/region-router/config.yaml
RUN sed -i 's/^\(  proxy: \)"127\.0\.0\.1:8080"/\1"0.0.0.0:8080"/' /etc/region-router/config.yaml \
    && grep -q '^  proxy: "0\.0\.0\.0:8080"' /etc/region-router/config.yaml \
    && region-router check -c /etc/region-router/config.yaml

# Unprivileged, with its home as the working directory: state_dir ./state is written there.
RUN useradd --system --uid 10001 --user-group --create-home \
        --home-dir /var/lib/region-router --shell /usr/sbin/nologin region-router
USER region-router
WORKDIR /var/lib/region-router

EXPOSE 8080 9901
# slim has no curl: ask /healthz with the Python that is already there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["region-router", "run", "-c", "/etc/region-router/config.yaml"]
