"""Data Docs that read offline: the scripts, styles and icon fonts GX's pages load from CDNs are served from a copy
kept in the package, and a page's status says what the pipeline decided.

Operators open Data Docs from the Airflow UI on machines that may not reach a CDN; without bootstrap-table the
index lists no validation at all, and without Font Awesome every status icon is blank."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

# The copy of the assets, fetched from the npm registry by tools/data_docs_assets.py (versions and licences in its
# README), and where it goes in the Data Docs folder: beside every site, so a page works from the plugin and from disk.
ASSETS = Path(__file__).parent / "data_docs_assets"
ASSETS_DIR = "_assets"
# transfer-rec's own stylesheet for the pages, kept apart from the fetched copy (which the fetch tool replaces whole).
EXTRA = Path(__file__).parent / "data_docs_extra"
STYLESHEET = "transfer-rec.css"


@dataclass(frozen=True)
class Asset:
    """One file a GX page loads from a CDN, and where it is in the npm package that publishes the same file."""

    url: str
    package: str
    version: str
    path: str  # inside the package's tarball, below package/

    @property
    def local(self) -> str:
        """Its place in the copy: <package>-<version>/<path>."""
        return f"{self.package.rsplit('/', 1)[-1]}-{self.version}/{self.path}"


# GX 1.x's page templates (page.j2, index_page.j2, page_minimal.j2, js_script_imports.j2), one entry per CDN address.
# Vega is left out: it draws only profiling graphs, which the pipeline's validation pages do not have; its tags are
# dropped so a page waits on nothing it cannot load.
CDN_ASSETS = (
    Asset("https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css", "bootstrap", "4.3.1",
          "dist/css/bootstrap.min.css"),
    Asset("https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js", "bootstrap", "4.3.1",
          "dist/js/bootstrap.min.js"),
    Asset("https://code.jquery.com/jquery-3.7.1.min.js", "jquery", "3.7.1", "dist/jquery.min.js"),
    Asset("https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js", "popper.js", "1.12.9",
          "dist/umd/popper.min.js"),
    Asset("https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css", "bootstrap-table", "1.19.1",
          "dist/bootstrap-table.min.css"),
    Asset("https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js", "bootstrap-table", "1.19.1",
          "dist/bootstrap-table.min.js"),
    Asset("https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
          "bootstrap-table", "1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.js"),
    # GX asks for 1.19.0's stylesheet of the 1.19.1 extension; the copy serves 1.19.1's, which matches the script
    Asset("https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
          "bootstrap-table", "1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.css"),
    Asset("https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
          "bootstrap-table", "1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.css"),
    Asset("https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css",
          "bootstrap-datepicker", "1.9.0", "dist/css/bootstrap-datepicker.min.css"),
    Asset("https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js",
          "bootstrap-datepicker", "1.9.0", "dist/js/bootstrap-datepicker.min.js"),
    Asset("https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css", "@fortawesome/fontawesome-free",
          "6.6.0", "css/all.min.css"),
    Asset("https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css",
          "@forevolve/bootstrap-dark", "1.1.0", "dist/css/bootstrap-prefers-dark.min.css"),
)  # fmt: skip
DROPPED = ("https://cdn.jsdelivr.net/npm/vega@5", "https://cdn.jsdelivr.net/npm/vega-lite@5",
           "https://cdn.jsdelivr.net/npm/vega-embed@6")  # fmt: skip

# GX's navbar logo comes from its S3 bucket; the same image is in every site's static/images/.
GX_IMAGES = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
# ...and GX's relative links to it miss by a folder on pages of dotted suite names (the favicon).
_GX_IMAGE = re.compile(rf"(?:{re.escape(GX_IMAGES)}|(?:\.\./)*static/images/)([\w.-]+)(?:\?.*)?$")
_TAG = re.compile(r"<(script|link|img)\b[^>]*>(?:\s*</script>)?", re.IGNORECASE)
_ADDRESS = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
# A local file's bytes differ from the CDN's in whitespace at most, so the CDN's integrity hash must not judge it.
_INTEGRITY = re.compile(r"""\s+(?:integrity|crossorigin)\s*=\s*["'][^"']*["']""", re.IGNORECASE)


class MissingAssetError(RuntimeError):
    """A GX page loads a remote file the copy does not hold (a GX upgrade changed its templates)."""


def remote_assets(html: str) -> list[str]:
    """The remote addresses a page still loads scripts or styles from."""
    found = []
    for tag in _TAG.finditer(html):
        address = _ADDRESS.search(tag.group(0))
        if address and re.match(r"(?:https?:)?//", address.group(1)):
            found.append(address.group(1))
    return found


def localize_page(html: str, assets_href: str, images_href: str) -> str:
    """A page's CDN scripts and styles pointed at the copy under `assets_href`, its GX images at the site's own
    under `images_href` (both relative to the page).

    Raises MissingAssetError naming any remote script or style the copy does not hold."""
    by_url = {a.url: a for a in CDN_ASSETS}

    def replace(tag: re.Match[str]) -> str:
        text = tag.group(0)
        address = _ADDRESS.search(text)
        if not address:
            return text
        url = address.group(1)
        if url in DROPPED:
            return ""
        image = _GX_IMAGE.match(url)
        if image:
            return text[: address.start(1)] + f"{images_href}/{image.group(1)}" + text[address.end(1) :]
        if url not in by_url:
            return text
        local = f"{assets_href}/{by_url[url].local}"
        text = text[: address.start(1)] + local + text[address.end(1) :]
        return _INTEGRITY.sub("", text)

    page = _mark_warnings(_TAG.sub(replace, html))
    own = f'<link rel="stylesheet" href="{assets_href}/{STYLESHEET}">'
    if own not in page:
        page = page.replace("</head>", own + "\n</head>", 1)
    left = remote_assets(page)
    if left:
        raise MissingAssetError(
            f"Data Docs page loads {left} from the network; add them to transfer_rec.ops.data_docs.CDN_ASSETS "
            "and fetch them with tools/data_docs_assets.py"
        )
    return page


_SUCCEEDED = re.compile(r'Status:</span>\s*<i class="fas fa-check-circle text-success"[^>]*></i>\s*Succeeded')
_FAILED_ICON = '<i class="fas fa-times text-danger" ></i>'
WARNING_ICON = '<i class="fas fa-exclamation-triangle text-warning" title="warning: logged; the batch passes"></i>'


def _mark_warnings(html: str) -> str:
    """On a validation page that succeeded, a failed expectation is a warning (stages.validate passes a result
    whose failures are all of warning severity): shown as a warning sign, not a red cross."""
    return html.replace(_FAILED_ICON, WARNING_ICON) if _SUCCEEDED.search(html) else html


def install_assets(root: Path) -> Path:
    """Copy the assets to <root>/_assets, once per content. Validate tasks of several platforms run at once: each
    copies to its own staging folder and renames it into place, so a reader never sees half a copy."""
    files = sorted((p.relative_to(folder).as_posix(), p) for folder in (ASSETS, EXTRA) for p in folder.rglob("*"))
    stamp = hashlib.sha256(b"".join(name.encode() + p.read_bytes() for name, p in files if p.is_file()))
    stamp_text = stamp.hexdigest()
    dest = root / ASSETS_DIR
    staging = root / f".{ASSETS_DIR}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        for _ in range(3):
            if (dest / ".stamp").is_file() and (dest / ".stamp").read_text() == stamp_text:
                return dest
            if not staging.exists():
                shutil.copytree(ASSETS, staging)
                shutil.copytree(EXTRA, staging, dirs_exist_ok=True)
                (staging / ".stamp").write_text(stamp_text)
            try:
                staging.rename(dest)
                return dest
            except OSError:  # an older copy is there: set it aside (another task may be doing the same)
                try:
                    dest.rename(staging.with_name(staging.name + ".old"))
                except FileNotFoundError:
                    pass
                shutil.rmtree(staging.with_name(staging.name + ".old"), ignore_errors=True)
        raise RuntimeError(f"could not install the Data Docs assets in {dest}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_offline(site: Path, root: Path) -> int:
    """Point every page of a Data Docs site (a folder under `root`, the Data Docs folder) at the local copy of its
    assets; returns the number of pages rewritten."""
    assets = install_assets(root)
    pages = 0
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        offline = localize_page(
            html,
            Path(os.path.relpath(assets, page.parent)).as_posix(),
            Path(os.path.relpath(site / "static" / "images", page.parent)).as_posix(),
        )
        if offline != html:
            tmp = page.with_suffix(".html.tmp")
            tmp.write_text(offline, encoding="utf-8")
            tmp.replace(page)
            pages += 1
    return pages
