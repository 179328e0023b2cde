"""Pointing a GX page at the local copy of its assets."""

import pytest

from transfer_rec.ops.data_docs import (
    ASSETS_DIR,
    CDN_ASSETS,
    GX_IMAGES,
    STYLESHEET,
    MissingAssetError,
    install_assets,
    localize_page,
    remote_assets,
)

HEAD = (
    '<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>\n'
    '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>\n'
    '<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" integrity="sha384-x" '
    'crossorigin="anonymous"></script>\n'
    f'<img src="{GX_IMAGES}logo-long.png?d=20261204" alt="logo">\n'
    '<a href="https://greatexpectations.io">a link, not a load</a>'
)


def test_cdn_files_point_at_the_copy_and_lose_the_cdns_integrity():
    page = localize_page(HEAD, "../../_assets", "../static/images")
    assert remote_assets(page) == []
    assert 'href="../../_assets/bootstrap-4.3.1/dist/css/bootstrap.min.css"' in page
    assert '<script src="../../_assets/bootstrap-4.3.1/dist/js/bootstrap.min.js"></script>' in page
    assert "vega" not in page
    assert 'src="../static/images/logo-long.png"' in page
    assert 'href="https://greatexpectations.io"' in page
    assert page.count("transfer-rec.css") == 0  # no </head> here: nothing to add it to
    full = localize_page(f"<html><head>{HEAD}</head></html>", "_assets", "static/images")
    assert full.count('<link rel="stylesheet" href="_assets/transfer-rec.css">') == 1
    assert localize_page(full, "_assets", "static/images") == full  # localizing twice changes nothing


def test_a_remote_file_the_copy_lacks_is_refused_by_name():
    with pytest.raises(MissingAssetError, match="https://cdn.example.org/new.js"):
        localize_page('<script src="https://cdn.example.org/new.js"></script>', "_assets", "static/images")


def test_every_listed_asset_is_in_the_copy(tmp_path):
    installed = install_assets(tmp_path)
    assert installed == tmp_path / ASSETS_DIR
    for asset in CDN_ASSETS:
        assert (installed / asset.local).is_file(), asset.url
    assert (installed / STYLESHEET).is_file()
    # installed once: a second call keeps the copy and leaves no staging folder behind
    marker = installed / "bootstrap-4.3.1" / "kept"
    marker.write_text("")
    assert install_assets(tmp_path) == installed and marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [ASSETS_DIR]
    # a copy that differs from the package's is replaced whole
    (installed / ".stamp").write_text("older")
    install_assets(tmp_path)
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == [ASSETS_DIR]
