"""The layout rules of issues 7 and 20, checked on the tree: no import cycle in lab/, imports run one
way (commands -> science -> infra), no module over 450 lines, notebooks without function definitions
or imports inside loops."""
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "lab"
MAX_LINES = 450


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lab_imports(path, modules):
    """The lab modules a file imports at module level or inside functions (any import counts)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def import_graph():
    files = {module_name(p): p for p in LAB.rglob("*.py")}
    modules = set(files)
    graph = {m: lab_imports(p, modules) - {m} for m, p in files.items()}
    # importing a.b runs a/__init__ first, which is no cycle of ours; drop package edges
    return {m: {d for d in deps if not m.startswith(d + ".")} - {"lab"} for m, deps in graph.items()}


def find_cycle(graph):
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_lab():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def layer(module):
    """0 for lab.infra (plumbing), 2 for lab.commands and lab.__main__ (the CLI), 1 for the rest (the science)."""
    if module == "lab.infra" or module.startswith("lab.infra."):
        return 0
    if module in ("lab.commands", "lab.__main__") or module.startswith("lab.commands."):
        return 2
    return 1


def upward_imports(graph):
    """Every import arrow that points from a lower layer to a higher one."""
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m))


def test_layer_checker_finds_a_planted_upward_import():
    graph = {"lab.infra.cache": {"lab.data"}, "lab.data": {"lab.commands.report"}, "lab.commands.report": {"lab.data"}}
    assert upward_imports(graph) == ["lab.data -> lab.commands.report", "lab.infra.cache -> lab.data"]


def test_imports_run_one_way_commands_science_infra():
    bad = upward_imports(import_graph())
    assert not bad, "imports that point back up (commands -> science -> infra only): " + ", ".join(bad)


def test_no_lab_module_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in LAB.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def notebook_code(path):
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_notebooks_define_no_functions_and_import_nothing_in_loops():
    problems = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for src in notebook_code(nb):
            tree = ast.parse("\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    problems.append(f"{nb.name}: defines {node.name}")
                if isinstance(node, (ast.For, ast.While)):
                    if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node)):
                        problems.append(f"{nb.name}: imports inside a loop")
    assert not problems, problems


MAX_CELL_LOGIC = 16  # issue 20: a notebook reads as an experiment; loops and key plumbing belong in lab/


def test_notebook_cells_are_short():
    """No code cell but the tagged parameters cell holds more than MAX_CELL_LOGIC lines of logic
    (lines that are neither blank nor comments)."""
    long = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for k, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] != "code" or "parameters" in cell.get("metadata", {}).get("tags", []):
                continue
            logic = [l for l in "".join(cell["source"]).splitlines() if l.strip() and not l.lstrip().startswith("#")]
            if len(logic) > MAX_CELL_LOGIC:
                long.append(f"{nb.stem} cell {k}: {len(logic)} lines")
    assert not long, long


def public_definitions():
    for path in LAB.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield path, node.name


def test_every_public_function_is_used_or_documented():
    """Called by a notebook, a CLI, another module, its own module, or named in README."""
    import re
    texts = [p.read_text() for p in LAB.rglob("*.py")]
    texts += ["\n".join(notebook_code(nb)) for nb in (ROOT / "notebooks").glob("*.ipynb")]
    texts.append((ROOT / "README.md").read_text())
    corpus = "\n".join(texts)
    dead = [f"{p.relative_to(ROOT)}:{name}" for p, name in public_definitions()
            if len(re.findall(rf"\b{name}\b", corpus)) < 2]
    assert not dead, f"public names nothing uses: {dead}"
