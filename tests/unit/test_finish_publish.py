"""final/ and validation/ are published together: nothing is visible until every file is written."""

from types import SimpleNamespace

import pytest

from tilestack.workflow.finish import StagedOutputs


class Output(SimpleNamespace):
    def keys(self):
        return vars(self).keys()


def test_outputs_appear_together_or_not_at_all(tmp_path):
    final, validation = tmp_path / "final" / "L.fits", tmp_path / "validation" / "validation.json"
    final.parent.mkdir()
    validation.parent.mkdir()
    out = StagedOutputs(Output(mono=str(final), validation=str(validation)))
    open(out.mono, "w").write("stack")
    assert not final.exists()  # written, but staged under a hidden name
    with pytest.raises(RuntimeError, match="validation.json was not written"):
        out.publish()
    assert not final.exists()  # a finish that did not write everything publishes nothing
    open(out.validation, "w").write("{}")
    out.publish()
    assert final.read_text() == "stack" and validation.read_text() == "{}"
    assert not list(tmp_path.rglob("*.staged"))


def test_a_failed_finish_leaves_no_staged_files(tmp_path):
    target = tmp_path / "final" / "preview.png"
    target.parent.mkdir()
    out = StagedOutputs(Output(preview=str(target)))
    open(out.preview, "w").write("png")
    out.discard()
    assert not target.exists() and not list(tmp_path.rglob("*.staged"))
