"""The generated references in docs/ match the schema and the API they describe."""

from __future__ import annotations

import pytest

from sweep.service import reference


@pytest.mark.parametrize("name", sorted(reference.FILES))
def test_generated_reference_is_current(name: str) -> None:
    written = (reference.DOCS / name).read_text()
    assert written == reference.FILES[name](), f"run: python -m sweep.service.reference ({name})"


def test_the_reference_names_every_field_model_sampler_and_pruner() -> None:
    text = (reference.DOCS / "spec-reference.md").read_text()
    for model in reference.SPEC_MODELS:
        for name, field in model.model_fields.items():
            assert f"| `{field.alias or name}` |" in text, name
    for name in ("tpe", "cmaes", "nsga2", "hyperband", "wilcoxon", "mlp", "cnn", "synthetic"):
        assert f"`{name}`" in text
