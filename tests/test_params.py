"""lab.infra.params: the parameters cell, its `# one of:` / range / list rules, and value parsing.

The rule tests run `runs.start` against the real notebooks' parameters cells, so a rule removed
from a notebook fails here (issue 9 case 5: out-of-range values used to finish as `done`).
"""
from pathlib import Path

import pytest

from lab import runs
from lab.infra import params
from lab.infra.params import NO_DEFAULT

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("raw, default, want", [
    ("3", NO_DEFAULT, 3), ("-2", NO_DEFAULT, -2), ("0.1", NO_DEFAULT, 0.1),
    ("1e-4", NO_DEFAULT, 1e-4), ("True", NO_DEFAULT, True),
    ("false", NO_DEFAULT, False), ("none", NO_DEFAULT, None),
    ("slerp", NO_DEFAULT, "slerp"), ("'007'", NO_DEFAULT, "007"),
    ("1", 0.5, 1.0), ("1", "a", "1"), ("true", "a", "true"), ("2", 3, 2),
    ("[8, 32]", [1], [8, 32]),
])
def test_parse_value(raw, default, want):
    got = params.parse_value(raw, default)
    assert got == want and type(got) is type(want)


# ----------------------------------------------------------------------------------------------
# The rule grammar
# ----------------------------------------------------------------------------------------------

CELL = '''steps = 3              # >= 1
lr = 0.1               # > 0
p = 0.5                # in [0, 1]
widths = [8, 16]       # non-empty list of >= 1
scales = [0.5]         # list of > 0
names = ["a"]          # non-empty list of one of: a, b, c
mode = "x"             # one of: x, y; the free text after ';' is a note
dino_size = 112        # >= 14; resolution of the DINO distance
note = 1               # plain free text is no rule
ckpt = None            # >= 1
'''


def test_rules_are_parsed_with_their_text_and_notes_are_ignored():
    d = params.parse_parameters(CELL)
    assert d["steps"].rule.text == ">= 1" and d["lr"].rule.text == "> 0"
    assert d["p"].rule.text == "in [0, 1]"
    assert d["widths"].rule.text == "non-empty list of >= 1"
    assert d["names"].rule.args[1].args == ("a", "b", "c")
    assert d["mode"].choices == ("x", "y") and d["dino_size"].rule.text == ">= 14"
    assert d["note"].rule is None and d["steps"].choices is None
    assert d["widths"].describe() == "widths = [8, 16]  # non-empty list of >= 1"


@pytest.mark.parametrize("name, value, reason", [
    ("steps", 0, None), ("steps", -5, None), ("lr", 0.0, None), ("lr", -1e-3, None),
    ("p", 1.5, None), ("p", -0.1, None),
    ("widths", [], "the list is empty"), ("widths", [0, 8], "element 0 is 0"),
    ("widths", [8, "a"], "element 1 is 'a'"), ("scales", [1.0, 0.0], "element 1 is 0.0"),
    ("names", [], "the list is empty"), ("names", ["a", "d"], "element 1 is 'd'"),
    ("dino_size", 8, None),
])
def test_each_rule_refuses_what_breaks_it(name, value, reason):
    d = params.parse_parameters(CELL)
    values = {n: p.default for n, p in d.items()}
    values[name] = value
    with pytest.raises(ValueError) as e:
        params.validate("demo", d, values)
    msg = str(e.value)
    assert f"parameter `{name}` = {value!r} breaks its rule `{d[name].rule.text}`" in msg
    if reason:
        assert reason in msg


@pytest.mark.parametrize("name, value", [
    ("steps", 1), ("lr", 1e-9), ("p", 0), ("p", 1), ("widths", [1]), ("scales", []),
    ("names", ["c", "a"]), ("ckpt", None), ("ckpt", 4), ("dino_size", 14),
])
def test_values_inside_their_rule_pass(name, value):
    d = params.parse_parameters(CELL)
    values = {n: p.default for n, p in d.items()}
    values[name] = value
    assert params.validate("demo", d, values)[name] == value


@pytest.mark.parametrize("source, needle", [
    ("steps = 0  # >= 1\n", "default 0 of `steps` breaks its rule `>= 1`"),
    ("w = []  # non-empty list of >= 1\n", "default [] of `w` breaks its rule"),
    ("steps = 3  # >= one\n", "rule `>= one`"),
    ("p = 0.5  # in [1, 0]\n", "rule `in [1, 0]`"),
    ("w = [1]  # list of many\n", "rule `list of many`"),
])
def test_bad_rules_and_defaults_outside_their_rule_are_refused(source, needle):
    with pytest.raises(ValueError, match=None) as e:
        params.parse_parameters(source)
    assert needle in str(e.value)


# ----------------------------------------------------------------------------------------------
# The notebooks' own rules, checked by runs.start before compute (issue 9 case 5)
# ----------------------------------------------------------------------------------------------

def _notebook(stem):
    return NOTEBOOKS / f"{stem}.ipynb"


@pytest.mark.parametrize("stem, name, value", [
    ("08_width", "steps", 0), ("08_width", "steps", -5), ("08_width", "widths", []),
    ("08_width", "widths", [0, 8]), ("08_width", "batch_size", 0),
    ("05_flow_matching", "n_train", 0), ("05_flow_matching", "gen_steps", 0),
    ("05_flow_matching", "gen_steps", -3), ("05_flow_matching", "batch_size", 0),
    ("06_decoder_scale", "gen_steps", 0), ("02_radial_share", "autoencoders", []),
    ("02_radial_share", "autoencoders", ["gae", "nope"]), ("07_ae_ablations", "gae_aligns", []),
])
def test_start_refuses_out_of_range_notebook_values_naming_parameter_and_rule(stem, name, value,
                                                                                 tmp_path):
    nb = _notebook(stem)
    declared = runs.read_parameters(nb)
    ns = {n: p.default for n, p in declared.items()}
    ns[name] = value
    with pytest.raises(ValueError) as e:
        runs.start(stem, ns, notebook=nb, runs_dir=tmp_path)
    rule = declared[name].rule
    assert rule is not None, f"{stem}: `{name}` declares no rule"
    assert f"parameter `{name}` = {value!r} breaks its rule `{rule.text}`" in str(e.value)
    assert not (tmp_path / stem).exists()  # refused before a run folder (or any compute) exists


def test_every_notebook_parameter_declares_a_rule():
    """Numbers and lists need a range or a rule; strings a `one of:`; only None defaults and
    bools go without (a None default takes anything, a bool has two values). The claims
    notebooks 01-08."""
    missing = []
    for nb in sorted(NOTEBOOKS.glob("0[1-8]_*.ipynb")):
        for name, p in runs.read_parameters(nb).items():
            if p.default is None or isinstance(p.default, bool):
                continue
            if p.rule is None:
                missing.append(f"{nb.stem}: {name}")
    assert missing == []


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "1e999"])
def test_non_finite_numbers_are_refused_naming_the_parameter(raw):
    """Issue 21 item 7: `lr inf` passed the `> 0` rule (inf > 0) and trained into NaNs."""
    d = params.parse_parameters(CELL)
    values = {n: p.default for n, p in d.items()}
    values["lr"] = params.parse_value(raw, d["lr"].default)
    with pytest.raises(ValueError, match=r"parameter `lr` = .* is not a finite number"):
        params.validate("demo", d, values)
    no_rule = params.parse_parameters("scale = 1.0\n")  # a float without a rule refuses it too
    with pytest.raises(ValueError, match=r"parameter `scale` = .* is not a finite number"):
        params.validate("demo", no_rule, {"scale": values["lr"]})
    assert params.parse_rule("> 0").problem(values["lr"]) is not None
