#!/usr/bin/env python3
"""Function lengths and parameter counts of Rust sources: python3 docs/architecture-numbers.py FILE...

Comments, strings and char literals are blanked first (newlines kept). A function is `fn NAME`
followed by its parameter list and a `{` body (trait declarations ending in `;` are skipped); its
length is the lines from the `fn` line to its closing brace, both included. Parameters are the
top-level commas of the list + 1, `self` not counted. Test code: `#[test]` functions, items under
`#[cfg(test)]`, and files declared `#[cfg(test)] mod x;`. Prints `lines params test path:line name`.
"""
import os, re, sys


def blank(src):
    out, i, n = [], 0, len(src)
    keep = lambda s: re.sub(r"[^\n]", " ", s)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(keep(src[i:j])); i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j): depth += 1; j += 2
                elif src.startswith("*/", j): depth -= 1; j += 2
                else: j += 1
            out.append(keep(src[i:j])); i = j
        elif (m := re.compile(r'b?r(#*)"').match(src, i)) and (i == 0 or not (src[i-1].isalnum() or src[i-1] == "_")):
            end = '"' + m.group(1)
            j = src.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + keep(src[i+2:j])); i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(keep(src[i:j+1])); i = j + 1
        elif c == "'" and (m := re.compile(r"'(\\.[^']*|[^\\'])'").match(src, i)):
            out.append(keep(m.group(0))); i = m.end()
        else:
            out.append(c); i += 1
    return "".join(out)


def test_files(paths):
    tests = set()
    for p in paths:
        text = blank(open(p).read())
        base = os.path.dirname(p) if os.path.basename(p) in ("mod.rs", "lib.rs", "main.rs") else p[:-3]
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text):
            for cand in (f"{base}/{m.group(1)}.rs", f"{base}/{m.group(1)}/mod.rs"):
                tests.add(os.path.normpath(cand))
    return tests


def match(text, i, open_, close):
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_: depth += 1
        elif text[j] == close:
            depth -= 1
            if depth == 0: return j
    return len(text) - 1


def functions(path, whole_file_test):
    text = blank(open(path).read())
    line = lambda k: text.count("\n", 0, k) + 1
    test_spans = []  # (start, end) of items under #[cfg(test)]
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        b = text.find("{", m.end()); s = text.find(";", m.end())
        if b >= 0 and (s < 0 or b < s):
            test_spans.append((m.start(), match(text, b, "{", "}")))
    for m in re.finditer(r"\bfn\s+(\w+)\s*(<)?", text):
        k = m.end()
        if m.group(2):
            depth = 1
            while depth and k < len(text):
                depth += {"<": 1, ">": -1}.get(text[k], 0)
                if text[k] == ">" and text[k-1] == "-": depth += 1  # `->` inside generics
                k += 1
        p = text.find("(", k)
        if p < 0: continue
        q = match(text, p, "(", ")")
        params = [x for x in re.split(r",", "".join(
            ch if d == 0 else " " for ch, d in depth_map(text[p+1:q]))) if x.strip()]
        nparams = len([x for x in params if not re.fullmatch(r"\s*(&\s*('\w+\s*)?)?(mut\s+)?self\s*(:.*)?", x, re.S)])
        b = text.find("{", q); s = text.find(";", q)
        if b < 0 or (0 <= s < b): continue  # a declaration without a body
        e = match(text, b, "{", "}")
        before = text[:text.rfind("\n", 0, m.start()) + 1].split("\n")[:-1]
        attrs = []
        while before and (not before[-1].strip() or before[-1].strip().startswith("#")):
            attrs.append(before.pop())
        is_test = whole_file_test or any("#[test]" in a or "#[tokio::test" in a for a in attrs) or any(a <= m.start() <= z for a, z in test_spans)
        yield line(e) - line(m.start()) + 1, nparams, is_test, line(m.start()), m.group(1)


def depth_map(s):
    d = 0
    for i, ch in enumerate(s):
        if ch == ">" and i and s[i-1] == "-": yield ch, d; continue  # `->`
        if ch in "([{<": d += 1; yield ch, d; continue
        if ch in ")]}>": d -= 1; yield ch, d + 1; continue
        yield ch, d


if __name__ == "__main__":
    paths = [os.path.normpath(p) for p in sys.argv[1:]]
    tests = test_files(paths)
    for p in paths:
        for length, nparams, is_test, ln, name in functions(p, p in tests):
            print(length, nparams, "test" if is_test else "code", f"{p}:{ln}", name)
