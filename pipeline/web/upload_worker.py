"""Analyse and enrol one uploaded photo in a short-lived process of its own (the web view's uploads).

Decoding a photo and running the detector on it can take gigabytes for an image that is small on the wire
(a PNG of one colour declaring 2500x2500 is 18 KB). The web view lives in the supervisor under
`run --web`, so it never decodes an upload itself: it saves the body to a private temporary folder and
runs ``python -m facestream.pipeline.web.upload_worker``, which reads one JSON request on stdin::

    {"config": {...}, "gallery": PATH, "name": NAME, "photo": PATH, "display": FILENAME}

enrols the photo through the same checks as `facestream enroll add` (work budget before decoding, one face,
size, sharpness) and prints one JSON line: ``{"report": {...}, "max_rss_mb": N}``. Its memory goes back to
the system when it exits, and an out-of-memory kill takes only this process. The reply never names the
temporary path: the photo is called by its (sanitised) upload name.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config


def max_rss_mb() -> float:
    """This process's own resident-set high-water mark: VmHWM, which starts afresh at exec (ru_maxrss keeps
    the high-water mark of the process that forked us, e.g. a large server)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
        return round(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024, 1)
    except (OSError, AttributeError):  # no /proc: the portable, pessimistic figure
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def enrol_upload(request: dict[str, Any]) -> dict[str, Any]:
    """Enrol the photo of `request` (see the module docstring) and return the report as a dict. The work
    budget is the stricter of detector.max_work_pixels and web.upload_max_work_pixels."""
    from ...enroll.gallery import Gallery
    from ..config import Config
    from ..domain.enrolment import enrol_image, policy_from_config

    config = Config.from_dict(request["config"], "the upload request")
    photo, display = Path(request["photo"]), str(request["display"])
    policy = policy_from_config(config, max_work=(config.web.upload_max_work_pixels, "web.upload_max_work_pixels"))
    with Gallery.from_config(config.gallery, path=Path(request["gallery"]), threads=1) as gallery:
        report = enrol_image(gallery, _Lazy(config), str(request["name"]), photo, policy).to_json()
    for key in ("image", "reason"):  # never show the server's temporary path
        report[key] = str(report[key]).replace(str(photo), display)
    return report


class _Lazy:
    """A FaceAnalyzer loaded on first use: a photo refused before decoding never loads the models."""

    def __init__(self, config: Config) -> None:
        self._config, self._analyzer = config, None

    def __getattr__(self, name: str) -> Any:
        if self._analyzer is None:
            from ...engines.faces import FaceAnalyzer

            self._analyzer = FaceAnalyzer.from_config(self._config)
        return getattr(self._analyzer, name)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="upload worker: %(message)s", stream=sys.stderr)
    try:
        request = json.loads(sys.stdin.read())
        report = enrol_upload(request)
    except Exception as error:
        logging.getLogger(__name__).exception("cannot enrol the upload")
        print(json.dumps({"error": f"{type(error).__name__}: {error}", "max_rss_mb": max_rss_mb()}), flush=True)
        return 1
    print(json.dumps({"report": report, "max_rss_mb": max_rss_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
