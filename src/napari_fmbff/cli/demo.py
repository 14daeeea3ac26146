"""``fmbff demo``: the bundled sample segmented by the bundled model, in a napari window or
(``--headless``) as files."""

from __future__ import annotations

import sys

from ..inference.runtime import DEVICES
from ._common import EXIT_USAGE, CliError, _add_model_arg


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help="segment the bundled sample with the bundled model",
                          description="Open napari on a sample image with the Segment and "
                                      "Fine-tune widgets and Segment's result; --headless writes "
                                      "the mask, an overlay PNG and the Dice instead.")
    demo.add_argument("--look", choices=["endoscopy", "dermoscopy", "ultrasound"],
                      default="endoscopy")
    _add_model_arg(demo)
    demo.add_argument("--headless", action="store_true", help="no window; write files to --out")
    demo.add_argument("--out", "-o", default="fmbff-demo", help="output folder (headless)")
    demo.add_argument("--device", default="auto", choices=DEVICES)
    demo.add_argument("--screenshot", default=None,
                      help="save the window as this PNG once segmented, then close")
    demo.add_argument("--overwrite", action="store_true")


def cmd_demo(args) -> int:
    model = None if args.model == "default" else args.model
    if args.headless:
        from ..demo import run_headless

        r = run_headless(args.out, args.look, model, args.device, args.overwrite)
        print(f"fmbff demo: {r['look']} sample, model '{r['model']}' on {r['device']}: "
              f"Dice {r['dice']:.3f}, Jaccard {r['jaccard']:.3f} against the ground truth")
        print(f"fmbff demo: overlay (green = prediction, yellow = truth) in {r['overlay']}")
        return 0
    if not _has_display():  # before Qt, which would abort the process without one
        print("fmbff demo: no display (DISPLAY / WAYLAND_DISPLAY unset); run `fmbff demo "
              "--headless` to write the result as image files instead", file=sys.stderr)
        return EXIT_USAGE
    try:
        from .._widgets._demo import open_demo
    except ImportError as err:
        raise CliError(f"the demo window needs napari ({err}); pip install 'napari-fmbff[napari]' "
                       "or use --headless") from None
    open_demo(args.look, model, args.screenshot)
    return 0


def _has_display() -> bool:
    """Whether a window can open: on Linux (and other X11 systems) a display must be named."""
    import os

    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal", "vnc"))

