"""Directed-graph algorithms for preference graphs (responses are nodes, "chosen ≻ rejected"
records are edges): strongly connected components and one example cycle per component.
Iterative throughout, so a preference chain of any length never hits the recursion limit."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence


def strongly_connected_components(nodes: Iterable[int], succ: Mapping[int, Sequence[int]]) -> list[list[int]]:
    """Tarjan's algorithm with an explicit stack: a preference chain of any length never
    hits Python's recursion limit. Returns every component (singletons included), each
    listed in the order its nodes were popped."""
    index: dict[int, int] = {}  # visiting order
    low: dict[int, int] = {}  # lowest index reachable through the subtree and one back edge
    stack, on_stack, components = [], set(), []

    def visit(v: int) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)

    for root in nodes:
        if root in index:
            continue
        visit(root)
        work = [(root, iter(succ.get(root, ())))]  # (node, its remaining successors)
        while work:
            v, rest = work[-1]
            child = None
            for w in rest:
                if w not in index:
                    child = w
                    break
                if w in on_stack:  # a back or cross edge into the current component
                    low[v] = min(low[v], index[w])
            if child is not None:  # descend; v's iterator resumes where it stopped
                visit(child)
                work.append((child, iter(succ.get(child, ()))))
                continue
            work.pop()
            if work:  # what v's subtree reaches, its parent reaches
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:  # v is a component's root: pop the component
                comp = []
                while not comp or comp[-1] != v:
                    comp.append(stack.pop())
                    on_stack.discard(comp[-1])
                components.append(comp)
    return components


def _to_root(n: int, parent: Mapping[int, int | None]) -> list[int]:
    """[n, parent(n), ..., root] in a breadth-first tree."""
    out = [n]
    while parent[out[-1]] is not None:
        out.append(parent[out[-1]])
    return out


def _shortest_path(start: int, goal: int, succ: Mapping[int, Sequence[int]], allowed: set[int]) -> list[int] | None:
    """Breadth-first path [start, ..., goal] through `allowed` nodes, or None."""
    parent: dict[int, int | None] = {start: None}
    queue = deque([start])
    while queue:
        x = queue.popleft()
        if x == goal:
            return _to_root(x, parent)[::-1]
        for y in succ.get(x, ()):
            if y in allowed and y not in parent:
                parent[y] = x
                queue.append(y)
    return None


def _undirected_cycle(members: set[int], succ: Mapping[int, Sequence[int]]) -> list[int] | None:
    """A simple cycle of ≥ 3 nodes in a component whose edges all go both ways (so the
    directed cycle is also an undirected one), or None when the component is a tree of
    2-cycles. Breadth-first: an edge to a visited node other than the parent closes a cycle."""
    root = min(members)
    parent: dict[int, int | None] = {root: None}
    queue = deque([root])
    while queue:
        x = queue.popleft()
        for y in succ.get(x, ()):
            if y not in members:
                continue
            if y not in parent:
                parent[y] = x
                queue.append(y)
            elif y != parent[x]:
                return _join_at_common_ancestor(x, y, parent)
    return None


def _join_at_common_ancestor(x: int, y: int, parent: Mapping[int, int | None]) -> list[int]:
    """[x, ..., lca, ..., y, x]: the two tree paths up to their lowest common ancestor,
    closed by the edge y → x."""
    up_x, up_y = _to_root(x, parent), _to_root(y, parent)
    on_x = set(up_x)
    k = next(i for i, n in enumerate(up_y) if n in on_x)
    lca = up_y[k]
    return up_x[: up_x.index(lca) + 1] + up_y[:k][::-1] + [x]


def find_cycle(component: Sequence[int], edges: Collection[tuple[int, int]], succ: Mapping[int, Sequence[int]]) -> list[int] | None:
    """An example simple cycle of ≥ 3 nodes inside a strongly connected component, as
    [n0, n1, ..., n0], or None when its only cycles are 2-cycles (contradictions).

    A one-way edge u → v (no v → u) closes such a cycle with the shortest path back from
    v to u, which has ≥ 2 steps because the direct one does not exist; those are the
    purest non-transitive cycles, so they are tried first (nodes in ascending order).
    `edges`: the set (or dict) of (chosen, rejected) edges, for membership tests only, so
    the work stays linear in the component's own edges."""
    members = set(component)
    if len(members) < 3:
        return None
    for u in sorted(members):
        for v in succ.get(u, ()):
            if v not in members or (v, u) in edges:
                continue
            back = _shortest_path(v, u, succ, members)
            if back is not None:  # always, inside a strongly connected component
                return [u] + back
    return _undirected_cycle(members, succ)
