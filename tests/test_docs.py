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


def documented_defaults(text: str, heading: str) -> dict[str, str]:
    """The default column of the options table under `### `heading``."""
    section = text.split(f"### `{heading}`", 1)[1].split("\n### ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    return {cells[1].strip().strip("`"): cells[3].strip().strip("`") for cells in rows}


def test_documented_defaults_are_what_a_spec_without_options_gets() -> None:
    from sweep.service.search.pruners import make_pruner
    from sweep.service.search.samplers import make_sampler

    text = (reference.DOCS / "spec-reference.md").read_text()
    tpe = make_sampler({"sampler": {"name": "tpe", "seed": 0, "options": {}}})
    documented = documented_defaults(text, "tpe")
    for option in ("n_startup_trials", "n_ei_candidates", "group", "constant_liar"):
        assert documented[option] == str(getattr(tpe, f"_{option}")), option
    assert documented["n_startup_trials"] == "10"
    for name in ("median", "percentile", "threshold"):
        options = {"percentile": 25.0} if name == "percentile" else {}
        options |= {"lower": 0.1} if name == "threshold" else {}
        pruner = make_pruner({"name": name, "options": options})
        documented = documented_defaults(text, name)
        for option in ("n_warmup_steps", "interval_steps", "n_startup_trials", "n_min_trials"):
            if option in documented:
                assert documented[option] == str(getattr(pruner, f"_{option}")), (name, option)
    assert "[-1e+300, 1e+300]" in text  # bounds as numbers a reader can take in
