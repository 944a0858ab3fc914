"""Pure DAG helpers over {task: dependencies}: order, cycles, descendants, drawing.

Everything is iterative: a 1,000-task chain must not hit Python's recursion limit.
"""

from collections import deque
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set

Edges = Mapping[str, Sequence[str]]


def children(edges: Edges) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {node: [] for node in edges}
    for node, deps in edges.items():
        for dep in deps:
            out.setdefault(dep, []).append(node)
    return out


def topological_order(edges: Edges) -> List[str]:
    """Every node after all its dependencies; ties keep the input order."""
    position = {node: i for i, node in enumerate(edges)}
    waiting = {node: len(set(deps)) for node, deps in edges.items()}
    kids = children(edges)
    ready = deque(node for node in edges if waiting[node] == 0)
    order = []
    while ready:
        node = ready.popleft()
        order.append(node)
        released = []
        for kid in kids.get(node, []):
            waiting[kid] -= 1
            if waiting[kid] == 0:
                released.append(kid)
        ready.extend(sorted(released, key=position.__getitem__))
    if len(order) != len(edges):
        raise ValueError(f"dependency cycle: {' -> '.join(find_cycle(edges) or [])}")
    return order


def find_cycle(edges: Edges) -> Optional[List[str]]:
    """A cycle as a path `[a, b, c, a]` (a depends on b ...), or None."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in edges:
        if state.get(start):
            continue
        path: List[str] = [start]
        iters = [iter(edges.get(start, ()))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt) and nxt in edges:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(edges.get(nxt, ())))
    return None


def descendants(edges: Edges, roots: Iterable[str]) -> Set[str]:
    """Every node downstream of `roots` (not including the roots themselves)."""
    kids = children(edges)
    seen: Set[str] = set()
    todo = list(roots)
    while todo:
        for kid in kids.get(todo.pop(), []):
            if kid not in seen:
                seen.add(kid)
                todo.append(kid)
    return seen


def ancestors(edges: Edges, node: str) -> Set[str]:
    """Every node upstream of `node` (not including it)."""
    seen: Set[str] = set()
    todo = list(edges.get(node, ()))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(edges.get(dep, ()))
    return seen


def levels(edges: Edges) -> Dict[str, int]:
    """Longest distance from a root: the column a task is drawn in."""
    level: Dict[str, int] = {}
    for node in topological_order(edges):
        level[node] = max((level[d] + 1 for d in edges[node]), default=0)
    return level


def draw_text(name: str, edges: Edges, rules: Optional[Mapping[str, str]] = None) -> str:
    """The DAG level by level, each task with its inputs (<-) and outputs (->), and
    the rule (`rules`: run_if or cleanup) of a task that has one, in brackets."""
    rules = rules or {}
    level = levels(edges)
    kids = children(edges)
    width = max(len(node) for node in edges)
    depth = max(level.values()) + 1
    lines = [f"{name}: {len(edges)} tasks in {depth} level{'s' if depth != 1 else ''}"]
    for lvl in range(depth):
        nodes = [n for n in edges if level[n] == lvl]
        lines.append("")
        lines.append(f"level {lvl + 1}" + ("  (run in parallel)" if len(nodes) > 1 else ""))
        for node in nodes:
            deps, outs = list(edges[node]), kids[node]
            head = f"  ● {node.ljust(width)}" + (f"  [{rules[node]}]" if node in rules else "")
            parts = []
            if deps:
                fan = f"  [fan-in {len(deps)}]" if len(deps) > 1 else ""
                parts.append(f"<- {', '.join(deps)}{fan}")
            if outs:
                fan = f"  [fan-out {len(outs)}]" if len(outs) > 1 else ""
                parts.append(f"-> {', '.join(outs)}{fan}")
            if not parts:
                lines.append(head.rstrip())
            for i, part in enumerate(parts):
                lines.append((head if i == 0 else " " * len(head)) + "  " + part)
    return "\n".join(lines)


def draw_dot(name: str, edges: Edges, rules: Optional[Mapping[str, str]] = None) -> str:
    rules = rules or {}
    lines = [f"digraph {_dot_id(name)} {{", "  rankdir=LR;"]
    lines += [f"  {_dot_id(node)}"
              + (f" [label={_dot_id(node)[:-1]}\\n({rules[node]})\", style=dashed]" if node in rules else "")
              + ";" for node in edges]
    lines += [f"  {_dot_id(dep)} -> {_dot_id(node)};" for node, deps in edges.items() for dep in deps]
    return "\n".join(lines + ["}"])


def draw_mermaid(name: str, edges: Edges, rules: Optional[Mapping[str, str]] = None) -> str:
    rules = rules or {}
    ids = {node: f"t{i}" for i, node in enumerate(edges)}
    lines = ["flowchart LR"]
    lines += [f'  {ids[node]}["{node}' + (f" ({rules[node]})" if node in rules else "") + '"]' for node in edges]
    lines += [f"  {ids[dep]} --> {ids[node]}" for node, deps in edges.items() for dep in deps]
    return "\n".join(lines)


def _dot_id(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
