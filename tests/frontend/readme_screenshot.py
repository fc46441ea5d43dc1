"""The README's screenshot of the front end, made on the CC0 fundus photograph shipped in scikit-image's wheel.

    .venv/bin/python -m tests.frontend.readme_screenshot --image retina.jpg [--out service/static/img/screenshot.png]

Get the photograph without installing scikit-image:

    pip download scikit-image --no-deps -d /tmp/skimage
    unzip -j /tmp/skimage/scikit_image-*.whl skimage/data/retina.jpg -d /tmp

Starts ``keepfit serve`` on the default artifact with no index (so no archive image can appear in the picture:
images from ../shared are never committed, nor pictures of them), uploads the photograph in headless
Chromium, and saves the header and the diagnosis panel as a palette PNG (small enough to commit).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

from tests.frontend.harness import ROOT, chromium_context, find_chromium, running_service, wait_for


def _default_image() -> Path | None:
    try:
        import skimage  # only if someone has it installed

        candidate = Path(skimage.__file__).parent / "data" / "retina.jpg"
        return candidate if candidate.is_file() else None
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, default=None, help="skimage/data/retina.jpg (CC0)")
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--out", type=Path, default=ROOT / "service" / "static" / "img" / "screenshot.png")
    p.add_argument("--width", type=int, default=1000, help="viewport width (below 1100 px the panels stack)")
    p.add_argument("--modality", default="auto", choices=["auto", "CFP", "FFA", "OCT"])
    args = p.parse_args(argv)
    image = args.image or _default_image()
    if image is None or not image.is_file():
        p.error("pass --image PATH to skimage/data/retina.jpg (see the instructions above)")
    chromium = find_chromium()
    if chromium is None:
        p.error("Debian's chromium is not installed (apt-get install chromium)")
    assert chromium is not None and image is not None
    log = Path(tempfile.mkdtemp(prefix="keepfit-shot-")) / "serve.log"
    with (
        running_service(args.artifact.resolve(), None, log) as service,
        chromium_context(chromium, viewport=(args.width, 900)) as context,
    ):
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{service.base}/")
        wait_for(page, "document.getElementById('service-status').textContent.includes('Model')")
        page.select_option("#modality", args.modality)
        page.set_input_files("#file-input", str(image))
        page.wait_for_selector("#overlay:not([hidden])")
        wait_for(page, "!document.body.dataset.busy && document.getElementById('overlay').complete")
        box = page.locator("#diagnose").bounding_box()
        assert box is not None
        height = box["y"] + box["height"] + 16
        png = page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": args.width, "height": height})
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours, error-diffused: a photograph without visible banding at a fraction of the RGB size
    palette = shot.quantize(256, method=Image.Quantize.MEDIANCUT)
    shot.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(args.out, optimize=True)
    print(f"{args.out} ({shot.width}x{shot.height}, {args.out.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
