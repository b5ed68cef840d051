"""The model registry: what GET /models lists and which names a run accepts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from graphs.models import ModelSettings, UnknownModel, available_models, check_model

GATED = "import:tests.graphs.scripted:gated"


def test_import_models_are_listed_after_the_configured_ones() -> None:
    settings = ModelSettings(finmatch_import_models=f" {GATED} ,")
    names = [(m.name, m.kind) for m in available_models(settings)]
    assert names == [("offline", "offline"), (GATED, "import")]
    assert check_model(GATED, settings) == GATED


def test_a_malformed_import_model_is_refused_naming_it() -> None:
    expected = r"'tests.graphs.scripted'; each entry must look like import:package"
    with pytest.raises(ValidationError, match=expected):
        ModelSettings(finmatch_import_models="tests.graphs.scripted")


def test_an_unknown_model_names_the_choices() -> None:
    with pytest.raises(UnknownModel, match="offline"):
        check_model("gpt-9", ModelSettings())


def test_a_request_may_use_only_the_listed_import_models() -> None:
    listed = ModelSettings(finmatch_import_models=GATED)
    assert check_model(GATED, listed, any_import=False) == GATED
    with pytest.raises(UnknownModel, match="'import:os:system'"):
        check_model("import:os:system", listed, any_import=False)
    assert check_model("import:os:system", listed) == "import:os:system"  # the command line
