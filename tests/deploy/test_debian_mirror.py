"""deploy/debian-mirror.sh: the image build takes its Debian archive from the machine's
apt sources, so no mirror address lives in the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "deploy" / "debian-mirror.sh"


def mirror(apt_dir: Path, suite: str = "bookworm") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), suite, str(apt_dir)], capture_output=True, text=True, check=False
    )


def test_deb822_sources_give_the_archive_not_security_or_other_suites(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.mirror.test/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.mirror.test/debian\nSuites: bookworm\n"
        "Components: main\n\n"
        "# a comment\nTypes: deb\nURIs: http://archive.mirror.test/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    found = mirror(tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout == "http://archive.mirror.test/debian\n"
    assert mirror(tmp_path, "trixie").returncode == 1


def test_one_line_sources_with_options_are_read_too(tmp_path):
    (tmp_path / "sources.list").write_text(
        "deb http://other.test/ubuntu jammy main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.mirror.test/debian bookworm main\n"
    )
    assert mirror(tmp_path).stdout == "http://one.mirror.test/debian\n"


def test_no_archive_for_the_suite_says_to_set_debian_mirror(tmp_path):
    found = mirror(tmp_path)
    assert found.returncode == 1 and "set DEBIAN_MIRROR" in found.stderr


def test_the_build_script_names_no_mirror_of_its_own():
    build = (SCRIPT.parent / "build-image.sh").read_text()
    assert "deploy/debian-mirror.sh bookworm" in build and "http" not in build
