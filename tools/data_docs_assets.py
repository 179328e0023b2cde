"""Fetch the files GX's Data Docs pages load from CDNs into the package's copy (transfer_rec/ops/data_docs_assets/).

Run it when a GX upgrade changes its page templates (`make data-docs-assets`): the tarballs come from the npm
registry, are checked against the integrity hashes pinned here, and only the listed files (and each package's
licence) are kept. The pipeline itself never reaches the network for them."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import sys
import tarfile
import urllib.request
from collections import defaultdict

from transfer_rec.ops.data_docs import ASSETS, CDN_ASSETS

REGISTRY = "https://registry.npmjs.org"
# sha512 of each tarball as the registry published it (its dist.integrity).
INTEGRITY = {
    (
        "bootstrap",
        "4.3.1",
    ): "sha512-rXqOmH1VilAt2DyPzluTi2blhk17bO7ef+zLLPlWvG494pDxcM234pJ8wTc/6R40UWizAIIMgxjvxZg5kmsbag==",
    (
        "jquery",
        "3.7.1",
    ): "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
    (
        "popper.js",
        "1.12.9",
    ): "sha512-s0EEi9xiSCdqz9lV4IiVH5yIZnDX/U1t0tCjB+0jXx9jW8lrR7kOpVupiUg175ogqVoudpDXHF1p6dKATCHMeg==",
    (
        "bootstrap-table",
        "1.19.1",
    ): "sha512-WvV+l1AI/C+zThaKmfHmi/IuayVNB0qdFyEhFx1jyZhO0oLtNJNANkCR3rvJf6Dkh72dsLElxpE/bzK9seEQLA==",
    (
        "bootstrap-datepicker",
        "1.9.0",
    ): "sha512-9rYYbaVOheGYxjOr/+bJCmRPihfy+LkLSg4fIFMT9Od8WwWB/MB50w0JO1eBgKUMbb7PFHQD5uAfI3ArAxZRXA==",
    (
        "@fortawesome/fontawesome-free",
        "6.6.0",
    ): "sha512-60G28ke/sXdtS9KZCpZSHHkCbdsOGEhIUGlwq6yhY74UpTiToIh8np7A8yphhM4BWsvNFtIvLpi4co+h9Mr9Ow==",
    (
        "@forevolve/bootstrap-dark",
        "1.1.0",
    ): "sha512-A3ucpEpxPoTVO490lZZCfjPXxv832l7mm1IxX3bXyxvgwnPGXDLyh7dWrphXKO8YBAu3EswbBEu3VSW8NRMW3A==",
}
# Files a listed stylesheet loads in turn (Font Awesome's fonts; browsers that read the CSS take woff2).
EXTRA = {
    ("@fortawesome/fontawesome-free", "6.6.0"): [
        "webfonts/fa-solid-900.woff2",
        "webfonts/fa-regular-400.woff2",
        "webfonts/fa-brands-400.woff2",
        "webfonts/fa-v4compatibility.woff2",
    ],
}
# popper.js 1.12.9 ships no licence file; its package.json names the licence (MIT).
LICENCES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "package.json")


def tarball(package: str, version: str) -> bytes:
    name = package.rsplit("/", 1)[-1]
    url = f"{REGISTRY}/{package}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    pinned = INTEGRITY[(package, version)]
    if pinned and digest != pinned:
        raise SystemExit(f"{url}: integrity {digest} is not the pinned {pinned}")
    print(f"{package}@{version}: {len(data):,} bytes, {digest}")
    return data


def main() -> int:
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for asset in CDN_ASSETS:
        wanted[(asset.package, asset.version)].add(asset.path)
    for key, paths in EXTRA.items():
        wanted[key].update(paths)
    staging = ASSETS.with_name(ASSETS.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    for (package, version), paths in sorted(wanted.items()):
        folder = staging / f"{package.rsplit('/', 1)[-1]}-{version}"
        with tarfile.open(fileobj=io.BytesIO(tarball(package, version)), mode="r:gz") as archive:
            members = {m.name.removeprefix("package/"): m for m in archive.getmembers() if m.isfile()}
            licence = next((n for n in LICENCES if n in members), None)
            missing = sorted(p for p in paths if p not in members)
            if missing or not licence:
                raise SystemExit(f"{package}@{version}: no {missing or 'licence file'} in the tarball")
            for path in sorted(paths) + [licence]:
                out = folder / path
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(archive.extractfile(members[path]).read())
    shutil.rmtree(ASSETS, ignore_errors=True)
    staging.rename(ASSETS)
    print(f"wrote {sum(1 for p in ASSETS.rglob('*') if p.is_file())} files to {ASSETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
