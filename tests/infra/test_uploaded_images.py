"""Uploaded product images survive a new container: on stages without an assets bucket (1-4)
the web container keeps them in a named volume at the image's SHOP_ASSETS_DIR; from stage 5 they
are in S3 and no volume is needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from shop_infra.constructs.compute import ASSETS_VOLUME, IMAGE_ASSETS_DIR
from shop_infra.stages import STAGES

from .test_stages import _user_data

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.stack_id)
def test_web_containers_keep_uploaded_images_in_a_volume_unless_s3_has_them(synthesized, stage):
    script = _user_data(synthesized[stage.number])
    mounted = f"-v {ASSETS_VOLUME}:{IMAGE_ASSETS_DIR} " in script
    assert mounted is (not stage.edge), stage.name
    if stage.edge:
        assert "SHOP_ASSETS_BUCKET=" in script


def test_the_image_keeps_uploaded_images_where_the_volume_is_mounted():
    runtime = DOCKERFILE.read_text().split("AS runtime", 1)[1]
    assert f"SHOP_ASSETS_DIR={IMAGE_ASSETS_DIR}" in runtime
    # Created and owned by the shop user, so a new named volume starts writable by it.
    assert f"mkdir -p {IMAGE_ASSETS_DIR}" in runtime and "chown shop:shop" in runtime
