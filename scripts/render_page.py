"""Render the prediction page (predict.py --html) of some documents to a PNG with headless Chromium: the picture
README shows (docs/demo_page.png, a synthetic demo document with gold labels; docs/PREDICT.md has how it was made).

    python scripts/render_page.py --checkpoint runs/demo/best.pt --input dataset/demo/dev.json --doc 13 \\
        --png docs/demo_page.png [--html page.html] [--width 1440]

Chromium is Debian's package (apt-get install chromium). It runs headless with a fresh profile and without its
network services; the page loads nothing. The PNG is cut a little below the page's last row and saved with a
256-colour palette (Pillow).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluation  # noqa: E402
from predict import Predictor  # noqa: E402
from rundir import atomic_write_bytes  # noqa: E402
from utils import UsageError, run_cli  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--force-device-scale-factor=1"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="best.pt of a run")
    p.add_argument("--input", required=True, help="JSON list of DocRED-format documents (with labels: marked)")
    p.add_argument("--doc", type=int, nargs="+", default=[0], help="indices of the documents to show")
    p.add_argument("--png", required=True, help="the picture to write")
    p.add_argument("--html", help="also keep the page here")
    p.add_argument("--width", type=int, default=1440, help="browser window width in pixels")
    p.add_argument("--height", type=int, default=4000, help="window height: at least the page's (cut after)")
    p.add_argument("--chromium", default="chromium", help="the browser to run")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    return p.parse_args(argv)


def screenshot(chromium, page, png, width, height):
    """Chromium's headless screenshot of the page file, cut below its content."""
    if shutil.which(chromium) is None:
        raise UsageError(f"{chromium}: not found; on Debian: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={os.path.abspath(png)}", Path(page).resolve().as_uri()]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    if proc.returncode or not os.path.exists(png):
        raise UsageError(f"{chromium} wrote no screenshot (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    from PIL import Image, ImageChops
    with Image.open(png) as img:
        img = img.convert("RGB")
        box = ImageChops.difference(img, Image.new("RGB", img.size, "white")).getbbox()
        if box is not None:
            img = img.crop((0, 0, img.width, min(img.height, box[3] + 24)))
        # a page has few colours: a 256-colour palette keeps the text sharp at a third of the size
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(png, optimize=True)


def main(argv=None):
    args = parse_args(argv)
    docs = evaluation.load_docs(args.input)
    bad = [i for i in args.doc if not 0 <= i < len(docs)]
    if bad:
        raise UsageError(f"--doc {bad[0]}: {args.input} has documents 0..{len(docs) - 1}")
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    html = predictor.page([docs[i] for i in args.doc], source=args.input)
    with tempfile.TemporaryDirectory() as folder:
        page = args.html or os.path.join(folder, "page.html")
        atomic_write_bytes(page, html.encode("utf-8"))
        screenshot(args.chromium, page, args.png, args.width, args.height)
    print(f"{args.png}{f', {args.html}' if args.html else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
