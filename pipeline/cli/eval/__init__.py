"""`facestream eval pairs` and `facestream eval video`: accuracy figures anyone can reproduce on their own data.

Wired into the `facestream` command by pipeline/cli/main.py (``add_eval_commands(commands)``). The figures
come from the pure functions of `enroll.evaluation`; `pairs.py` (the LFW verification protocol, with
`faces.py`: one cached descriptor per image, and `roc.py`: the ROC picture) and `video.py` (identification
on a video against a truth file, running the pipeline) find the faces and write the reports.
"""

from __future__ import annotations

import argparse

from .pairs import add_pairs_parser
from .video import add_video_parser


def add_eval_commands(commands: argparse._SubParsersAction) -> None:
    """Add `eval pairs` and `eval video` to the `facestream` sub-commands."""
    evaluate = commands.add_parser(
        "eval", help="measure accuracy: verification pairs (LFW protocol) or a video with ground truth",
        description="Accuracy you can check on your own data: `eval pairs` runs the LFW verification protocol, "
        "`eval video` scores identification on a video against a truth file.",
    )  # fmt: skip
    what = evaluate.add_subparsers(dest="what", metavar="WHAT", required=True)

    add_pairs_parser(what)
    add_video_parser(what)


__all__ = ["add_eval_commands"]
