"""Graph helpers: hypothesis checks them against brute force on random graphs.

The run order, cycle detection and upstream_failed propagation all rest on these
few functions, so each invariant is checked on many random graphs, not examples.
"""

import re

import pytest
from hypothesis import given, settings, strategies as st

from featherflow import graph

NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)


@st.composite
def dags(draw, max_nodes=25):
    """{node: deps} where deps only point to nodes earlier in a random order, dict order shuffled."""
    nodes = draw(st.lists(NAMES, unique=True, max_size=max_nodes))
    edges = {}
    for i, node in enumerate(nodes):
        edges[node] = draw(st.lists(st.sampled_from(nodes[:i]), unique=True, max_size=4)) if i else []
    order = draw(st.permutations(list(edges)))
    return {node: edges[node] for node in order}


@st.composite
def digraphs(draw, max_nodes=12):
    """Any directed graph over known nodes, self-loops included."""
    nodes = draw(st.lists(NAMES, unique=True, min_size=1, max_size=max_nodes))
    return {node: draw(st.lists(st.sampled_from(nodes), unique=True, max_size=3)) for node in nodes}


def reaches(edges, start, goal):
    """Brute force: is there a path of length >= 1 from start to goal along dependencies?"""
    seen, todo = set(), list(edges[start])
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return False


def closure(edges, roots):
    """Brute force descendants: grow the set until no task depends on anything in it."""
    found, reached = set(), set(roots)
    changed = True
    while changed:
        changed = False
        for node, deps in edges.items():
            if node not in found and reached.intersection(deps):
                found.add(node)
                reached.add(node)
                changed = True
    return found


@settings(max_examples=200)
@given(dags())
def test_topological_order_puts_every_task_after_its_dependencies(edges):
    order = graph.topological_order(edges)
    assert sorted(order) == sorted(edges)
    position = {node: i for i, node in enumerate(order)}
    for node, deps in edges.items():
        for dep in deps:
            assert position[dep] < position[node], (dep, node, order)


@given(st.lists(NAMES, unique=True, max_size=20))
def test_independent_tasks_keep_the_input_order(nodes):
    assert graph.topological_order({n: [] for n in nodes}) == nodes


@settings(max_examples=300)
@given(digraphs())
def test_find_cycle_exactly_when_one_exists(edges):
    has_cycle = any(reaches(edges, node, node) for node in edges)
    cycle = graph.find_cycle(edges)
    assert (cycle is not None) == has_cycle
    if cycle:
        assert len(cycle) >= 2 and cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1, cycle  # a simple cycle
        for node, dep in zip(cycle, cycle[1:]):
            assert dep in edges[node], (node, dep, cycle)
        with pytest.raises(ValueError, match="dependency cycle: "):
            graph.topological_order(edges)
    else:
        assert len(graph.topological_order(edges)) == len(edges)


@given(dags())
def test_find_cycle_is_none_for_dags(edges):
    assert graph.find_cycle(edges) is None


@settings(max_examples=200)
@given(dags(), st.data())
def test_descendants_match_brute_force_closure(edges, data):
    roots = data.draw(st.lists(st.sampled_from(list(edges)), unique=True, max_size=3)) if edges else []
    assert graph.descendants(edges, roots) == closure(edges, roots)


@given(dags())
def test_levels_are_longest_distance_from_a_root(edges):
    if not edges:
        return
    level = graph.levels(edges)
    for node, deps in edges.items():
        assert level[node] == (max(level[d] for d in deps) + 1 if deps else 0)


@settings(max_examples=150)
@given(dags().filter(bool))
def test_drawings_mention_every_task(edges):
    text = graph.draw_text("f", edges)
    bullets = re.findall(r"^  ● (\S+)", text, re.M)
    assert sorted(bullets) == sorted(edges)
    dot = graph.draw_dot("f", edges)
    assert dot.startswith('digraph "f" {') and dot.endswith("}")
    n_edges = sum(len(deps) for deps in edges.values())
    for node, deps in edges.items():
        assert f'  "{node}";' in dot
        for dep in deps:
            assert f'  "{dep}" -> "{node}";' in dot
    assert dot.count(" -> ") == n_edges
    mermaid = graph.draw_mermaid("f", edges)
    assert mermaid.startswith("flowchart LR")
    for node in edges:
        assert f'["{node}"]' in mermaid
    assert mermaid.count(" --> ") == n_edges


def test_text_drawing_shows_fan_in_and_fan_out():
    edges = {"lax": [], "sfo": [], "nyc": [], "agg": ["lax", "sfo", "nyc"], "report": ["agg"], "mail": ["agg"]}
    text = graph.draw_text("weather", edges)
    assert text.splitlines()[0] == "weather: 6 tasks in 3 levels"
    assert "level 1  (run in parallel)" in text
    assert "<- lax, sfo, nyc  [fan-in 3]" in text
    assert "-> report, mail  [fan-out 2]" in text


def test_dot_quotes_awkward_names():
    dot = graph.draw_dot('my "flow"', {'a"b': [], "c\\d": ['a"b']})
    assert '"a\\"b" -> "c\\\\d";' in dot and dot.startswith('digraph "my \\"flow\\"" {')
