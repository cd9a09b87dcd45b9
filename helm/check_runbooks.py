"""Checks every command of the runbooks against what the chart renders and what the binary accepts.

    python helm/check_runbooks.py RENDERED.yaml path/to/switchyard docs/runbooks/*.md ...

The runbooks are read by someone paged at night, in a pod whose image has no shell. For every `kubectl` and
`switchyard` command in a code block or an inline code span (a release named "switchyard" stands for
<fullname> and <release>; <group> may be any worker group):

  - `deploy/NAME` names a Deployment the chart renders;
  - `-l key=value,...` selects the pods of at least one rendered Deployment;
  - `kubectl exec` runs `switchyard` (the image has nothing else), with the config file the containers run
    with, and without `-t` (a terminal rewrites line ends, which breaks `--out -`);
  - every `switchyard` command (except `run`) is one the binary parses: it is run against a closed port,
    and any clap error (an unknown command, flag or value) fails the check.

Exits 1 with every problem found. Run by helm/check.sh.
"""

import os
import re
import shlex
import subprocess
import sys

import yaml

RELEASE = "switchyard"
CONFIG = "/etc/switchyard/switchyard.yaml"
POD_PLACEHOLDERS = {"$pod", "POD"}


def deployments(rendered):
    """Name -> (pod labels, container args) of every rendered Deployment."""
    found = {}
    with open(rendered) as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc.get("kind") == "Deployment":
                pod = doc["spec"]["template"]
                args = pod["spec"]["containers"][0].get("args", [])
                found[doc["metadata"]["name"]] = (pod["metadata"]["labels"], args)
    return found


def commands(path):
    """(line number, command text) of every kubectl/switchyard command in a markdown file."""
    lines = open(path).read().split("\n")
    fenced = None
    pending = ""
    start = 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = None if fenced is not None else stripped[3:]
            continue
        if fenced is not None:
            if fenced == "console":
                if not stripped.startswith("$ "):
                    continue
                stripped = stripped[2:]
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text = pending + stripped
            pending = ""
            if text.startswith(("kubectl ", "switchyard ")) or "kubectl " in text.split("#")[0]:
                yield start, text
            continue
        for span in re.findall(r"`([^`]+)`", line):
            if span.startswith(("kubectl ", "switchyard ")):
                yield number, span


def words(text):
    """The words of a shell command, up to a pipe, a redirection or a comment; the placeholders of the
    runbooks stand for the names a release called "switchyard" gets."""
    text = text.replace("<fullname>", RELEASE).replace("<release>", RELEASE)
    text = text.replace("<group>", "@GROUP@").replace("<pod>", "POD")
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|><;&")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out = []
    for word in lexer:
        if word in ("|", ">", ">>", "<", ";", "&&", "||", "&"):
            break
        out.append(word)
    return out


def expand(word, groups):
    """The names a word with placeholders may stand for."""
    if "@GROUP@" in word:
        return [word.replace("@GROUP@", g) for g in groups]
    return [word]


def check_switchyard(binary, args):
    if not args or args[0] == "run":
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env["SWITCHYARD__AMQP__URL"] = "amqp://guest:guest@127.0.0.1:1/%2f"
    env["SWITCHYARD__AMQP__CONNECT_TIMEOUT"] = "1s"
    try:
        done = subprocess.run(
            [binary] + args, env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return "did not finish in 30 s"
    if "Usage: switchyard" in done.stderr or re.search(r"error: (unexpected argument|unrecognized subcommand|invalid value)", done.stderr):
        return "the binary does not accept it: " + done.stderr.strip().split("\n")[0]
    return None


def check(text, rendered, groups, binary):
    args = words(text)
    problems = []
    if args[:1] == ["switchyard"]:
        problem = check_switchyard(binary, args[1:])
        return [problem] if problem else []
    # A shell loop: check the command inside it.
    if "kubectl" not in args:
        return []
    args = args[args.index("kubectl"):]
    for i, word in enumerate(args):
        if word.startswith("deploy/"):
            names = expand(word[len("deploy/"):], groups)
            if not any(name in rendered for name in names):
                problems.append(f"{word}: the chart renders no such Deployment (it renders {sorted(rendered)})")
        if word == "-l" and i + 1 < len(args):
            pairs = [p.split("=", 1) for p in args[i + 1].split(",")]
            options = [dict((k, v) for k, v in zip([p[0] for p in pairs], combo)) for combo in _combos(pairs, groups)]
            if not any(all(labels.get(k) == v for k, v in sel.items()) for sel in options for labels, _ in rendered.values()):
                problems.append(f"-l {args[i + 1]}: selects no pod the chart renders")
    if len(args) > 1 and args[1] == "exec":
        if "--" not in args:
            problems.append("kubectl exec without `--`")
            return problems
        flags = args[2:args.index("--")]
        if any(f in ("-t", "-it", "-ti", "--tty") for f in flags):
            problems.append("kubectl exec -t: a terminal rewrites line ends; leave it out")
        target = [f for f in flags if not f.startswith("-")]
        if not target or not (target[0].startswith("deploy/") or target[0] in POD_PLACEHOLDERS):
            problems.append(f"kubectl exec: names no deploy/… or pod: {flags}")
        inner = args[args.index("--") + 1:]
        if inner[:1] != ["switchyard"]:
            problems.append(f"kubectl exec runs {inner[:1]}: the image has no shell and nothing but switchyard")
            return problems
        if "--config" not in inner or inner[inner.index("--config") + 1] != CONFIG:
            problems.append(f"kubectl exec … switchyard without --config {CONFIG} (the file the containers run with)")
        problem = check_switchyard(binary, inner[1:])
        if problem:
            problems.append(problem)
    return problems


def _combos(pairs, groups):
    values = [expand(p[1], groups) if len(p) == 2 else [""] for p in pairs]
    result = [[]]
    for choices in values:
        result = [r + [c] for r in result for c in choices]
    return result


def main():
    rendered_path, binary, *docs = sys.argv[1:]
    rendered = deployments(rendered_path)
    groups = sorted({labels.get("switchyard.io/worker-group") for labels, _ in rendered.values()} - {None})
    for name, (_, args) in rendered.items():
        if CONFIG not in args:
            print(f"check_runbooks.py: {name} does not run with {CONFIG}; the runbooks say it does", file=sys.stderr)
            sys.exit(1)
    failures = 0
    checked = 0
    for doc in docs:
        for number, text in commands(doc):
            checked += 1
            for problem in check(text, rendered, groups, binary):
                failures += 1
                print(f"{doc}:{number}: {text}\n    {problem}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"check_runbooks.py: {checked} commands of {len(docs)} files fit the chart and the binary")


if __name__ == "__main__":
    main()
