"""Copy the pinned Leaflet's dist into the package and record what was copied (run by `make vendor`).

The copied files are committed, so an install (a Jetson, CI) needs no Node.js; MANIFEST.json names the
package-lock.json entry they came from and each file's SHA-256, which tests/test_review_static.py checks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

WEB = Path(__file__).resolve().parent
SRC = WEB / "node_modules" / "leaflet"
DEST = WEB.parent / "runtime" / "serve" / "static" / "vendor" / "leaflet"
FILES = ["dist/leaflet.js", "dist/leaflet.css", "dist/images/*.png", "LICENSE"]


def main() -> int:
    lock = json.loads((WEB / "package-lock.json").read_text())["packages"]["node_modules/leaflet"]
    installed = json.loads((SRC / "package.json").read_text())["version"]
    if installed != lock["version"]:
        print(f"vendor: expected leaflet {lock['version']} (package-lock.json), found {installed} in {SRC}")
        return 1
    if DEST.exists():
        shutil.rmtree(DEST)
    sums = {}
    for pattern in FILES:
        for src in sorted(SRC.glob(pattern)):
            rel = src.relative_to(SRC / "dist") if pattern.startswith("dist/") else src.relative_to(SRC)
            (DEST / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, DEST / rel)
            sums[rel.as_posix()] = hashlib.sha256(src.read_bytes()).hexdigest()
    manifest = {
        "package": "leaflet",
        "version": lock["version"],
        "integrity": lock["integrity"],
        "sha256": sums,
    }
    (DEST / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"vendor: leaflet {lock['version']}: {len(sums)} files in {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
