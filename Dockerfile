# syntax=docker/dockerfile:1
# The shop's one image, used by every stage. Build: docker build -t shop .

# --- build: the shop and exactly the versions uv.lock names, in a virtualenv ----------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_NO_CACHE=1 UV_LINK_MODE=copy
# uv itself comes from its hashed pin, like on a laptop and in CI.
COPY tools/uv/requirements.txt /tmp/uv-requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/uv-requirements.txt
WORKDIR /src
# The dependencies first (a layer that changes only with the lock), then the shop itself.
# --locked: a lock that does not match pyproject.toml stops the build instead of re-resolving.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-install-project --no-editable
COPY app ./app
RUN uv sync --locked --no-editable && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: the virtualenv only; no compilers, no pip caches, not root ------------------------
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHOP_ENV=production \
    SHOP_GRACEFUL_SHUTDOWN_S=20 \
    SHOP_ASSETS_DIR=/srv/shop/assets
# SHOP_ENV=production: the image refuses to start on the published development JWT key; give
# it SHOP_JWT_SECRET, SHOP_JWT_SECRET_FILE or SHOP_JWT_SECRET_ARN (the stages use the ARN).
RUN groupadd --system shop \
    && useradd --system --gid shop --home-dir /srv/shop --shell /usr/sbin/nologin shop \
    && mkdir -p /srv/shop/assets /run/shop && chown shop:shop /srv/shop /srv/shop/assets /run/shop
# Uploaded product images (stages without an assets bucket): mount a volume here so they survive
# a new container; a new named volume starts with this folder's owner, the shop user.
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/shop
USER shop
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["shop", "serve", "--host", "0.0.0.0", "--port", "8000"]
