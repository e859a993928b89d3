"""A learner's starting file, made from the reference solution: the same file with every function body emptied.

The docstrings (the task) and the imports stay; each body after its
docstring becomes ``raise NotImplementedError``. One source for both, so
the stub can never drift from the solution it is checked against.
"""
from __future__ import annotations

import ast


def _bodies(tree: ast.Module) -> list[ast.FunctionDef]:
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found.append(node)
        elif isinstance(node, ast.ClassDef):
            found.extend(n for n in node.body if isinstance(n, ast.FunctionDef))
    return found


def make_stub(source: str, exercise_id: str) -> str:
    """``source`` with each top-level function's and method's code after its docstring replaced."""
    lines = source.splitlines()
    for fn in sorted(_bodies(ast.parse(source)), key=lambda f: f.lineno, reverse=True):
        body = fn.body
        has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str)
        start = body[1].lineno if has_doc and len(body) > 1 else (None if has_doc else body[0].lineno)
        indent = " " * (body[-1].col_offset)
        stub = [f"{indent}# your code here",
                f'{indent}raise NotImplementedError("exercise {exercise_id}: {fn.name} is not written yet")']
        if start is None:  # a docstring and nothing else
            lines[body[0].end_lineno:body[0].end_lineno] = stub
        else:
            lines[start - 1:fn.end_lineno] = stub
    return "\n".join(lines) + "\n"
