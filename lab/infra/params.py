"""The parameter language of the notebooks: the parameters cell, its rules, and value parsing.

The grammar is documented for users in `lab.runs` (the module a notebook imports). Here:
- `parse_parameters` reads a parameters cell with `ast` (plain literal assignments only) and
  the rule in the comment on each assignment line;
- `parse_value` turns command-line text into a value, typed by the parameter's default (the
  one place values are parsed: `-p` of lab.commands.nbtools, `--grid` of lab.commands.batch, and
  the values in a `one of:` rule);
- `validate` checks a set of values against the declared parameters: unknown names, types,
  then rules, every problem in one ValueError naming the parameter and what is allowed.
"""
import ast
import difflib
import io
import json
import math
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

NO_DEFAULT = object()  # parse_value without a default to type against


def parse_value(raw, default=NO_DEFAULT):
    """Text -> int / float / bool / None / str / list, typed by `default`.

    Quoted text stays text; a str default keeps the text as written; `true`/`false` are bools,
    `none`/`null` None; `[...]`, `(...)`, `{...}` (or a list default) are Python literals;
    otherwise int, then float, then text. A float default takes `1` as 1.0.
    """
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if isinstance(default, str):
        return text
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if isinstance(default, (list, tuple, dict)) or text[:1] in "[({":
        try:
            return ast.literal_eval(text)  # lists of sweep values, e.g. "[8, 32]"
        except (ValueError, SyntaxError):
            return text
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return text
    return float(value) if isinstance(default, float) else value


# ----------------------------------------------------------------------------------------------
# Rules: `one of: a, b` | `>= x` | `> x` | `<= x` | `< x` | `in [lo, hi]` | `[non-empty] list [of RULE]`
# ----------------------------------------------------------------------------------------------

_RULE_START = re.compile(r"(one of\s*:|>=|<=|>|<|in\s*\[|non-empty\s+list\b|list\b)", re.I)
_ONE_OF = re.compile(r"one of\s*:(.*)$", re.I | re.S)
_BOUND = re.compile(r"(>=|<=|>|<)\s*(.+)$")
_INTERVAL = re.compile(r"in\s*\[([^,\]]+),([^,\]]+)\]$")
_LIST = re.compile(r"(non-empty\s+)?list(?:\s+of\s+(.+))?$", re.I | re.S)
_HOLDS = {">=": lambda v, x: v >= x, ">": lambda v, x: v > x,
          "<=": lambda v, x: v <= x, "<": lambda v, x: v < x}


@dataclass(frozen=True)
class Rule:
    """A parsed rule. kind: 'one of' (args: the values), '>=', '>', '<=', '<' (args: (bound,)),
    'in' (args: (lo, hi), closed) or 'list' (args: (non_empty, rule of each element or None))."""
    text: str
    kind: str
    args: tuple

    def problem(self, value):
        """None when `value` keeps the rule, else a short reason ('' when the rule says it all)."""
        if self.kind == "one of":
            return None if value in self.args else ""
        if self.kind == "list":
            non_empty, each = self.args
            if not isinstance(value, (list, tuple)):
                return "not a list"
            if non_empty and len(value) == 0:
                return "the list is empty"
            for i, v in enumerate(value):
                if each is not None and each.problem(v) is not None:
                    return f"element {i} is {v!r}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if not math.isfinite(value):  # inf > 0 holds, and an inf lr trains into NaNs
            return f"{value!r} is not a finite number"
        if self.kind == "in":
            lo, hi = self.args
            return None if lo <= value <= hi else ""
        return None if _HOLDS[self.kind](value, self.args[0]) else ""


def _number(text, rule_text):
    v = parse_value(text)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"rule `{rule_text}`: {text.strip()!r} is not a number")
    return v


def parse_rule(text, default=NO_DEFAULT):
    """A Rule from its text (see the grammar in lab.runs); ValueError naming the text if bad."""
    text = " ".join(text.split())
    m = _ONE_OF.match(text)
    if m:
        values = tuple(parse_value(s, default) for s in m.group(1).split(",") if s.strip())
        if not values:
            raise ValueError(f"rule `{text}`: list the allowed values after `one of:`")
        return Rule(text, "one of", values)
    m = _BOUND.match(text)
    if m:
        return Rule(text, m.group(1), (_number(m.group(2), text),))
    m = _INTERVAL.match(text)
    if m:
        lo, hi = _number(m.group(1), text), _number(m.group(2), text)
        if lo > hi:
            raise ValueError(f"rule `{text}`: the interval is empty")
        return Rule(text, "in", (lo, hi))
    m = _LIST.match(text)
    if m:
        each_default = default[0] if isinstance(default, (list, tuple)) and default else NO_DEFAULT
        try:
            each = parse_rule(m.group(2), each_default) if m.group(2) else None
        except ValueError:
            each = None
        if m.group(2) and each is None:
            raise ValueError(f"rule `{text}`: after `list of` write a rule for each element")
        return Rule(text, "list", (bool(m.group(1)), each))
    raise ValueError(f"rule `{text}`: write `one of: a, b`, `>= x` (or >, <=, <), "
                     "`in [lo, hi]` or `[non-empty] list [of RULE]`")


def _comment_rule(comment, default):
    """The rule of a `# RULE; note` comment, or None for a comment that is only a note."""
    text = comment.lstrip("#").strip()
    if not _RULE_START.match(text):
        return None
    return parse_rule(text.split(";", 1)[0], default)


# ----------------------------------------------------------------------------------------------
# The parameters cell
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    default: object
    rule: Rule = None

    @property
    def choices(self):
        """The allowed values of a `one of:` parameter, else None."""
        return self.rule.args if self.rule is not None and self.rule.kind == "one of" else None

    def describe(self):
        s = f"{self.name} = {self.default!r}"
        return s + (f"  # {self.rule.text}" if self.rule else "")


def _check_default(p, where):
    if p.rule is None or p.default is None or p.rule.problem(p.default) is None:
        return  # a None default means "off" and passes its rule
    if p.choices:
        raise ValueError(f"{where}: default {p.default!r} of `{p.name}` is not one of its "
                         f"choices {list(p.choices)}")
    raise ValueError(f"{where}: default {p.default!r} of `{p.name}` breaks its rule "
                     f"`{p.rule.text}`")


def parse_parameters(source, where="parameters cell"):
    """{name: Param} from the source of a parameters cell (plain literal assignments only)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"{where}: syntax error on line {e.lineno}: {e.msg}") from None
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
    params = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.value is not None:
            name, value = node.target.id, node.value
        else:
            raise ValueError(f"{where}, line {node.lineno}: the parameters cell takes plain "
                             "assignments `name = value` only")
        try:
            default = ast.literal_eval(value)
        except ValueError:
            raise ValueError(f"{where}, line {node.lineno}: the default of `{name}` must be a "
                             f"literal (number, string, bool, None, list, tuple, dict)") from None
        comment = comments.get(node.end_lineno) or comments.get(node.lineno) or ""
        try:
            rule = _comment_rule(comment, default)
        except ValueError as e:
            raise ValueError(f"{where}, line {node.lineno}, `{name}`: {e}") from None
        params[name] = Param(name, default, rule)
        _check_default(params[name], where)
    return params


def read_parameters(notebook):
    """{name: Param} from the cell tagged `parameters` of a notebook file."""
    nb = json.loads(Path(notebook).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell["source"]
            return parse_parameters("".join(src) if isinstance(src, list) else src,
                                    where=f"{notebook}: parameters cell")
    raise ValueError(f"{notebook}: no code cell tagged `parameters` (add the tag to the first cell)")


def with_choices(declared, choices):
    """Declared parameters with extra / overriding choice lists {name: [values]}."""
    out = dict(declared)
    for name, values in (choices or {}).items():
        if name not in declared:
            raise ValueError(f"choices given for `{name}`, which is not a parameter")
        values = tuple(values)
        rule = Rule("one of: " + ", ".join(map(str, values)), "one of", values)
        out[name] = Param(name, declared[name].default, rule)
        if declared[name].default not in values:
            raise ValueError(f"default {declared[name].default!r} of `{name}` is not one of "
                             f"{list(values)}")
    return out


# ----------------------------------------------------------------------------------------------
# Checking values
# ----------------------------------------------------------------------------------------------

def _problem(p, value):
    """(message or None, normalised value): int widens to float, tuples and lists are alike."""
    d = p.default
    if d is None:
        ok = True
    elif isinstance(d, bool):
        ok, want = isinstance(value, bool), "bool"
    elif isinstance(d, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "int"
    elif isinstance(d, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "float (or int)"
        value = float(value) if ok else value
    elif isinstance(d, (list, tuple)):
        ok, want = isinstance(value, (list, tuple)), "list"
        value = type(d)(value) if ok else value
    else:
        ok, want = isinstance(value, type(d)), type(d).__name__
    if not ok:
        return (f"parameter `{p.name}` = {value!r} has type {type(value).__name__}: expected "
                f"{want} (default {d!r})"), value
    if isinstance(value, float) and not math.isfinite(value):
        return f"parameter `{p.name}` = {value!r} is not a finite number: give a finite value", value
    if p.rule is None or (value is None and d is None):
        return None, value  # a None default means "off": None passes its rule
    why = p.rule.problem(value)
    if why is None:
        return None, value
    if p.choices:
        return (f"parameter `{p.name}` = {value!r} is not allowed: one of "
                f"{', '.join(map(repr, p.choices))}"), value
    return (f"parameter `{p.name}` = {value!r} breaks its rule `{p.rule.text}`"
            + (f" ({why})" if why else "")), value


def validate(experiment, declared, values, *, fill_defaults=True):
    """Check `values` against the declared parameters; return the full, normalised dict.

    Raises one ValueError listing every unknown name (with close matches) and every ill-typed,
    disallowed or out-of-rule value, followed by the allowed parameters with their defaults.
    """
    problems = []
    for name in values:
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(f'`{c}`' for c in close)}?)" if close else ""
            problems.append(f"unknown parameter `{name}`{hint}")
    params = {}
    for name, p in declared.items():
        if name not in values:
            if not fill_defaults:
                problems.append(f"parameter `{name}` is not defined: run the parameters cell first")
            params[name] = p.default
            continue
        msg, params[name] = _problem(p, values[name])
        if msg:
            problems.append(msg)
    if problems:
        allowed = "\n".join("  " + p.describe() for p in declared.values()) or "  (none)"
        hint = ("\n(the saved parameters cell of the notebook declares the parameters: save the "
                "notebook after adding one)") if any(n not in declared for n in values) else ""
        raise ValueError(f"{experiment}: " + "; ".join(problems)
                         + f"\nallowed parameters (default):\n{allowed}{hint}")
    return params


def resolve(notebook, overrides=None, choices=None):
    """The full, checked parameter dict of `notebook` with `overrides` applied."""
    notebook = Path(notebook)
    declared = with_choices(read_parameters(notebook), choices)
    return validate(notebook.stem, declared, dict(overrides or {}))
