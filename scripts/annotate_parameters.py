"""Give every parameter of the notebooks' ``parameters`` cells a type annotation.

``papermill --help-notebook`` reads ``name: type = value  # comment`` and shows "Unknown type"
for a bare ``name = value``. The type is that of the default: ``int``, ``float``, ``str``,
``bool``, ``list`` or ``dict`` (a ``float`` parameter whose default is written ``1`` is
``float`` only if the default is ``1.0``). Already annotated lines are left alone. Run after
adding a parameter: ``python scripts/annotate_parameters.py`` (``--check``: exit 1 if a line
would change).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def annotate(source: str) -> str:
    """The parameters cell ``source`` with each top-level ``name = literal`` annotated."""
    tree = ast.parse(source)
    lines = source.split("\n")
    for node in reversed(tree.body):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            continue
        value = ast.literal_eval(node.value)
        kind = type(value).__name__
        if value is None:
            raise ValueError(f"parameter {node.targets[0].id} = None: give it a typed default")
        row = node.lineno - 1
        name = node.targets[0].id
        line = lines[row]
        head, sep, rest = line.partition("=")
        assert head.strip() == name, line
        # keep the column of the comments: take the annotation's width out of the padding after '='
        lines[row] = f"{name}: {kind} {sep}{rest}" if head.endswith(" ") else f"{name}: {kind} = {rest.lstrip()}"
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Annotate every numbered notebook in place (``--check``: report only)."""
    check = "--check" in argv
    changed = []
    for nb_path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if "parameters" not in cell.get("metadata", {}).get("tags", []):
                continue
            old = "".join(cell["source"])
            new = annotate(old)
            if new != old:
                changed.append(nb_path.name)
                split = new.split("\n")
                cell["source"] = [s + "\n" for s in split[:-1]] + ([split[-1]] if split[-1] else [])
        if nb_path.name in changed and not check:
            nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(("would annotate: " if check else "annotated: ") + (", ".join(changed) or "nothing"))
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
