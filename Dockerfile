# syntax=docker/dockerfile:1
# The shop's one image, used by every stage. Build: docker build -t shop .

# --- build: install the shop and its dependencies into a virtualenv ----------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir . && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: the virtualenv only; no compilers, no pip caches, not root ------------------------
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHOP_ENV=production \
    SHOP_GRACEFUL_SHUTDOWN_S=20
# SHOP_ENV=production: the image refuses to start on the published development JWT key; give
# it SHOP_JWT_SECRET, SHOP_JWT_SECRET_FILE or SHOP_JWT_SECRET_ARN (the stages use the ARN).
RUN groupadd --system shop \
    && useradd --system --gid shop --home-dir /srv/shop --shell /usr/sbin/nologin shop \
    && mkdir -p /srv/shop /run/shop && chown shop:shop /srv/shop /run/shop
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/shop
USER shop
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["shop", "serve", "--host", "0.0.0.0", "--port", "8000"]
