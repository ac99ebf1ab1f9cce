"""Print the kernel matrix's results (scripts/test-kernels.sh): one row per test, one column per kernel.

Usage: python scripts/matrix_table.py RESULTS_DIR   (a folder per kernel release holding junit.xml and seconds)
Exits 1 when a test failed or a kernel produced no results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from xml.etree import ElementTree


def results(junit: Path) -> dict[str, tuple[str, str]]:
    """test name -> (state, detail) from a pytest junit file; state is pass, FAIL, skip."""
    out: dict[str, tuple[str, str]] = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        name = case.get("name", "?").removeprefix("test_")
        state, detail = "pass", ""
        for child in case:
            if child.tag in ("failure", "error"):
                state, detail = "FAIL", (child.get("message") or "").splitlines()[0][:160] if child.get("message") else ""
            elif child.tag == "skipped":
                state, detail = "skip", (child.get("message") or "")[:160]
        out[name] = (state, detail)
    return out


def main(root: Path) -> int:
    kernels = sorted((d for d in root.iterdir() if d.is_dir() and (d / "seconds").exists()), key=lambda d: d.name)
    table = {d.name: results(d / "junit.xml") if (d / "junit.xml").exists() else {} for d in kernels}
    tests = sorted({name for cells in table.values() for name in cells})
    width = max([len("test"), *map(len, tests)])
    columns = [k.name for k in kernels]
    print(f"\nKernel matrix (Debian kernels under QEMU; {root})")
    print(f"{'test':<{width}}  " + "  ".join(f"{c:<22}" for c in columns))
    for test in tests:
        print(f"{test:<{width}}  " + "  ".join(f"{table[c].get(test, ('-', ''))[0]:<22}" for c in columns))
    print(f"{'(seconds in the VM)':<{width}}  " + "  ".join(f"{(root / c / 'seconds').read_text().strip():<22}"
                                                         for c in columns))
    measured: dict[str, dict[str, object]] = {}
    for column in columns:
        path = root / column / "measurements.jsonl"
        for line in path.read_text().splitlines() if path.exists() else ():
            item = json.loads(line)
            measured.setdefault(item["name"], {})[column] = item["value"]
    if measured:
        mwidth = max(map(len, measured))
        print(f"\n{'measured (TCG: slow, compare within a column)':<{mwidth}}  " + "  ".join(f"{c:<22}" for c in columns))
        for name, values in sorted(measured.items()):
            print(f"{name:<{mwidth}}  " + "  ".join(f"{values.get(c, '-')!s:<22}" for c in columns))
    failed = False
    for column in columns:
        if not table[column]:
            print(f"{column}: no results (see {root / column}/vng.log and guest.log)")
            failed = True
        for test, (state, detail) in table[column].items():
            if state != "pass":
                print(f"{column} {test}: {state}: {detail}")
            failed |= state == "FAIL"
    return 1 if failed or not kernels else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
