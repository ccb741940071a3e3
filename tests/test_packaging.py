"""What users install: the right core, from the right place, with its files."""

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import fastq
from conftest import fastq_command
from fastq import _speedups


def test_the_expected_core_is_loaded():
    # A silent fallback to the pure-Python twin must not hide a broken build.
    if os.environ.get("FASTQ_NO_EXTENSIONS"):
        assert _speedups.COMPILED is False
        assert _speedups.Runner.__module__ == "fastq._core_py"
    else:
        import fastq._core as core

        assert _speedups.COMPILED is True
        assert Path(core.__file__).suffix == ".so"
        assert _speedups.Runner.__module__ == "fastq._core"


def test_tests_import_the_installed_package():
    # In CI the suite runs against the installed wheel, never the source tree.
    if os.environ.get("FASTQ_EXPECT_INSTALLED"):
        assert "site-packages" in fastq.__file__, fastq.__file__
    assert (Path(fastq.__file__).parent / "py.typed").exists()


def test_lua_scripts_and_stubs_ship_with_the_package():
    files = resources.files("fastq")
    assert files.joinpath("broker", "lua", "fetch.lua").is_file()
    if not os.environ.get("FASTQ_NO_EXTENSIONS"):
        assert files.joinpath("_core.pyi").is_file()


def test_version_says_which_core():
    out = subprocess.run([*fastq_command(), "--version"], capture_output=True, text=True, check=True).stdout
    assert fastq.__version__ in out
    expected = "pure-Python core" if os.environ.get("FASTQ_NO_EXTENSIONS") else "compiled core"
    assert expected in out


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "fastq", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("fastq ")


def test_dashboard_assets_ship_with_the_package():
    # The dashboard is served from files in the package: no CDN, nothing fetched at run time.
    static = resources.files("fastq.dashboard").joinpath("static")
    for name in ("index.html", "app.js", "app.css"):
        assert static.joinpath(name).is_file(), name
