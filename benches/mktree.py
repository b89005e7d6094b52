#!/usr/bin/env python3
"""Deterministic, seeded Laravel-like release tree for backup benchmarks.

    python3 benches/mktree.py DIR [SCALE] [SEED]

SCALE 1 is about 20,000 files and 250 MB: vendor/ PHP code (compresses ~4:1 like real
code), node_modules/ JS, public/ binary assets (incompressible), a large log, symlinks
(relative, absolute, dangling), empty directories, 0755 and 0600 files. The same
arguments give a byte-identical tree with identical mtimes.
"""
import os
import random
import sys

WORDS = ("user order invoice payment queue job event listener request response cache "
         "config route model query builder schema table column index policy gate token "
         "session cookie mail notification channel broadcast storage disk file image").split()


def main():
    root = sys.argv[1]
    scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 42)
    if os.path.exists(root) and os.listdir(root):
        sys.exit(f"mktree: {root} exists and is not empty")
    base_time = 1736510400  # 2025-01-10 12:00 UTC
    dirs = set()

    def write(rel, data, mode=0o644):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        dirs.add(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        t = base_time + rng.randint(0, 86400 * 30)
        os.utime(path, (t, t))

    def code(lines):
        out = ["<?php", "", f"namespace App\\{rng.choice(WORDS).title()};", ""]
        for _ in range(lines):
            a, b, c = rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS)
            kind = rng.random()
            if kind < 0.3:
                out.append(f"    public function {a}{b.title()}(${c}) {{ return $this->{b}->{c}(${a}); }}")
            elif kind < 0.6:
                out.append(f"    protected ${a}{c.title()} = ['{b}' => {rng.randint(0, 9999)}, '{c}' => '{a}_{b}'];")
            else:
                out.append(f"    // {a} {b} {c} {rng.choice(WORDS)} {rng.randint(0, 10**6)}")
        return ("\n".join(out) + "\n").encode()

    n_vendor = int(14000 * scale)
    for i in range(n_vendor):
        pkg = f"vendor/{rng.choice(WORDS)}/{rng.choice(WORDS)}-{i % 400}"
        write(f"{pkg}/src/{rng.choice(WORDS).title()}{i}.php", code(rng.randint(20, 400)))
    n_node = int(4000 * scale)
    for i in range(n_node):
        js = "\n".join(f"export const {rng.choice(WORDS)}{j} = ({rng.choice(WORDS)}) => {rng.randint(0, 999)};"
                       for j in range(rng.randint(10, 200)))
        write(f"node_modules/{rng.choice(WORDS)}-{i % 300}/dist/{i}.js", js.encode())
    n_assets = int(1500 * scale)
    for i in range(n_assets):
        write(f"public/assets/{i % 50}/{i}.bin", rng.randbytes(rng.randint(4000, 60000)))
    for i in range(int(100 * scale)):
        write(f"app/Http/Controllers/C{i}.php", code(rng.randint(50, 300)))
    write("artisan", code(20), 0o755)
    for i in range(int(10 * scale)):
        write(f"bin/tool{i}", b"#!/bin/sh\necho tool\n", 0o755)
    write(".env", b"APP_KEY=base64:" + rng.randbytes(32).hex().encode() + b"\n", 0o600)
    log = "".join(f"[2025-01-{rng.randint(1, 28):02d}] production.ERROR: {rng.choice(WORDS)} {rng.choice(WORDS)} "
                  f"failed for id {rng.randint(0, 10**6)}\n" for _ in range(int(400000 * scale)))
    write("storage/logs/laravel.log", log.encode())
    for i in range(int(20 * scale)):
        d = os.path.join(root, f"storage/framework/empty{i}")
        os.makedirs(d, exist_ok=True)
        dirs.add(d)
    links = [("public/storage", "../storage/app/public"), ("current-env", "/srv/shared/.env"), ("dangling", "nowhere")]
    for i in range(int(42 * scale)):
        links.append((f"vendor/bin/tool{i}", f"../../bin/tool{i % 10}"))
    for rel, target in links:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.lexists(path):
            os.symlink(target, path)
    for d in sorted(dirs | {root}, key=len, reverse=True):
        t = base_time
        os.utime(d, (t, t))


if __name__ == "__main__":
    main()
