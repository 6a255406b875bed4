"""Thumbnails for the shipped workflows: workflows/<name>.jpg next to workflows/<name>.json.

    python -m tools.make_thumbnails [SCREENSHOT_FOLDER]

ComfyUI's template browser shows a custom node pack's workflows with the same-name .jpg. The pictures
are screenshots of each workflow as the frontend draws it, taken by the browser test
(tests/test_browser.py) into $REENACT_BROWSER_ARTIFACTS, default $REENACT_CACHE/browser, one folder
per frontend (`frontend-<version>` or `legacy-frontend`). Without an argument the newest frontend's
folder there is used: it is what users see.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
WIDTH = 512
QUALITY = 80


def default_folder() -> Path:
    cache = Path(os.environ.get("REENACT_CACHE") or Path.home() / ".cache" / "reenact-anything")
    root = Path(os.environ.get("REENACT_BROWSER_ARTIFACTS") or cache / "browser")
    folders = [p for p in root.glob("*") if p.is_dir() and any(p.glob("*.png"))]
    if not folders:
        raise SystemExit(f"no screenshots under {root}: run the browser test first (./dev.sh test test_browser.py)")

    def newest_first(path: Path):
        match = re.fullmatch(r"frontend-(\d+)\.(\d+)\.(\d+)", path.name)
        return tuple(int(x) for x in match.groups()) if match else (-1,)

    return max(folders, key=newest_first)


def make_thumbnail(screenshot: Path, target: Path, width: int = WIDTH, quality: int = QUALITY) -> None:
    from PIL import Image

    with Image.open(screenshot) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        tmp = target.with_name(f".{target.name}.tmp")
        image.save(tmp, "JPEG", quality=quality, optimize=True, progressive=True)
    os.replace(tmp, target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, help="screenshots (<workflow>.png); default: the newest frontend's")
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--quality", type=int, default=QUALITY)
    args = parser.parse_args(argv)
    folder = args.folder or default_folder()
    missing = []
    for workflow in sorted(WORKFLOWS.glob("*.json")):
        screenshot = folder / f"{workflow.stem}.png"
        if not screenshot.is_file():
            missing.append(screenshot.name)
            continue
        target = workflow.with_suffix(".jpg")
        make_thumbnail(screenshot, target, args.width, args.quality)
        print(f"wrote {target.relative_to(REPO)} ({target.stat().st_size // 1024} KiB) from {screenshot}")
    if missing:
        print(f"missing in {folder}: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
