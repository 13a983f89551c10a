from __future__ import annotations

import kerve_manifest
from training import untrained_classifier


def test_publishes_once_and_says_it_is_untrained(tmp_path, capsys):
    untrained_classifier.main(["--models-dir", str(tmp_path), "--if-missing"])
    untrained_classifier.main(["--models-dir", str(tmp_path), "--if-missing"])
    assert kerve_manifest.list_versions(tmp_path / "classifier") == [1]
    manifest = kerve_manifest.read_manifest(tmp_path / "classifier" / "1")
    assert manifest.provenance["trained"] is False
    assert "UNTRAINED" in manifest.description
    assert "nothing to do" in capsys.readouterr().out
