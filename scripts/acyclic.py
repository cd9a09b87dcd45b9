#!/usr/bin/env python3
"""Fails when the crate's modules import each other in a cycle.

Reads the graph `cargo modules dependencies` prints (dot) on standard input and looks at the
"uses" edges between modules only. cargo-modules' own `--acyclic` (0.27, the last release for
rustc 1.95) checks the item graph, where every type and its own methods form a "cycle", so the
check is done here at the level the architecture cares about: modules.

A module may use its own descendants and its ancestors' items freely (a folder is one room);
what must not happen is two rooms that import each other, directly or round a longer loop.
"""

import re
import sys

EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[label="uses"')
NODE = re.compile(r'^\s*"([^"]+)" \[label="(?:pub(?:\([^)]*\))? )?(?:mod|crate)\|')


def room(module: str, rooms: set) -> str:
    """The module itself: each module is a node."""
    return module


def related(a: str, b: str) -> bool:
    """Whether one module contains the other (`template` and `template::body`)."""
    return a.startswith(b + "::") or b.startswith(a + "::")


def main() -> int:
    modules, edges = set(), set()
    for line in sys.stdin:
        if m := NODE.match(line):
            modules.add(m.group(1))
        elif m := EDGE.match(line):
            edges.add((m.group(1), m.group(2)))
    crate = min(modules, key=len) if modules else ""
    graph = {}
    for a, b in edges:
        ra, rb = room(a, modules), room(b, modules)
        # The crate root only declares and re-exports; a room using its own parts is no cycle.
        if ra == crate or rb == crate or ra == rb or related(ra, rb):
            continue
        graph.setdefault(ra, set()).add(rb)
    # Tarjan's strongly connected components.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    if not modules:
        print("acyclic: no modules read (is the input cargo modules' dot graph?)", file=sys.stderr)
        return 2
    if not cycles:
        print(f"acyclic: {len(graph)} modules, no import cycle")
        return 0
    for component in cycles:
        inside = set(component)
        print("import cycle between: " + ", ".join(component), file=sys.stderr)
        for a, b in sorted(edges):
            ra, rb = room(a, modules), room(b, modules)
            if ra in inside and rb in inside and ra != rb and not related(ra, rb):
                print(f"  {a} -> {b}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
