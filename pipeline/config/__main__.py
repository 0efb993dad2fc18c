"""``python -m facestream.pipeline.config > config.yaml``: config.yaml generated from the schema."""

import sys

from .render import render_yaml

sys.stdout.write(render_yaml())
